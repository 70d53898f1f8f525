"""Sparsity training: drive whole channels of every group to zero before removing them.

`GroupLasso` is a Keras callback for plain `model.fit` (TensorFlow, JAX and
PyTorch, also on a `keras.distillation.Distiller`). After every training batch
it applies the proximal step of the group-lasso penalty
`strength * sum_c ||v_c||_2`, where `v_c` collects the weights of channel `c` of
a group: each `v_c` is scaled by `max(0, 1 - strength * lr / ||v_c||)` (`lr`,
the optimizer's current learning rate). Channels whose norm falls to the
threshold become exactly zero; the others shrink. Because the step is a plain
assignment, it is exact and independent of the backend and of the optimizer.

Which weights form `v_c` (`penalize`):

- `"normalization"`: the `BatchNormalization` gamma and beta of the channel —
  network slimming (Liu et al. 2017) with beta in the group, so that a zero
  channel outputs exactly 0 and removing it changes nothing.
- `"all"`: every weight masking would zero for the channel — the producers'
  filters and biases, normalization parameters and the consumers' input
  weights (the group norm of DepGraph's sparse learning, Fang et al. 2023).
  Groups overlap in conv kernels (a filter of one group is an input row of the
  next); all norms are computed first, then all scales applied.
- `"auto"` (default): `"normalization"` for groups with a BatchNormalization,
  `"all"` for the others.

Afterwards, `select(model, "bn_gamma" or "l2", target_flops=...)` removes the
near-zero channels; the accuracy right after pruning then stays close to the
trained model's (for channels exactly zero, identical).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import keras
import numpy as np

from kerasprune.distill import student_of
from kerasprune.errors import PruningError
from kerasprune.graph import ChannelGraph, Group, analyze
from kerasprune.groupwise import choose_groups

log = logging.getLogger(__name__)

PENALIZE = ("auto", "normalization", "all")


@dataclass(frozen=True)
class _Slice:
    variable: object
    axis: int
    onehot: np.ndarray  # (positions along axis, group size): 1 where the position is channel c
    other: np.ndarray  # (positions,): 1 where the position belongs to another group


class _GroupWeights:
    """The weights of the chosen groups' channels, and the proximal step on them."""

    def __init__(self, graph: ChannelGraph, groups: list[Group], penalize: str):
        self.groups = []
        self.slices: dict[int, list[_Slice]] = {}
        for g in groups:
            found = _slices(graph, g, penalize)
            if not found:
                log.warning("GroupLasso: group %d (%s) has no %s weights; left out", g.id, ", ".join(g.layers), penalize)
                continue
            self.groups.append(g)
            self.slices[g.id] = found
        if not self.groups:
            raise PruningError(f"GroupLasso: none of the chosen groups has weights for penalize={penalize!r}")
        self._tensors = {
            gid: [(s, keras.ops.convert_to_tensor(s.onehot), keras.ops.convert_to_tensor(s.other)) for s in lst]
            for gid, lst in self.slices.items()
        }

    def norms(self) -> dict[int, np.ndarray]:
        """`{group id: L2 norm of each channel's weights}`."""
        return {gid: keras.ops.convert_to_numpy(self._norms(gid)).astype(np.float64) for gid in self._tensors}

    def _norms(self, gid: int):
        total = None
        for s, onehot, _ in self._tensors[gid]:
            v = keras.ops.cast(s.variable.value, "float32")
            axes = [a for a in range(len(v.shape)) if a != s.axis]
            sq = keras.ops.sum(keras.ops.square(v), axis=axes) if axes else keras.ops.square(v)
            part = keras.ops.matmul(sq[None, :], onehot)[0]
            total = part if total is None else total + part
        return keras.ops.sqrt(total)

    def shrink(self, threshold: float) -> None:
        """Scale every channel's weights by `max(0, 1 - threshold / norm)` (0 for zero norms)."""
        factors: dict[int, list] = {}
        variables = {}
        for gid, lst in self._tensors.items():
            norm = self._norms(gid)
            scale = keras.ops.where(
                norm > threshold, 1.0 - threshold / keras.ops.maximum(norm, 1e-30), keras.ops.zeros_like(norm)
            )
            for s, onehot, other in lst:
                per_position = keras.ops.matmul(onehot, scale[:, None])[:, 0] + other
                shape = [1] * len(s.variable.shape)
                shape[s.axis] = -1
                factors.setdefault(id(s.variable), []).append(keras.ops.reshape(per_position, shape))
                variables[id(s.variable)] = s.variable
        for key, variable in variables.items():
            value = variable.value
            factor = factors[key][0]
            for f in factors[key][1:]:
                factor = factor * f
            variable.assign(value * keras.ops.cast(factor, value.dtype))


def _slices(graph: ChannelGraph, group: Group, penalize: str) -> list[_Slice]:
    out = []
    items = [(key, s, chan) for key, s, chan in graph.slices(group) if s.zero]
    norm = [it for it in items if isinstance(graph.records[it[0]].layer, keras.layers.BatchNormalization)]
    if penalize == "normalization" or (penalize == "auto" and norm):
        items = norm
    for key, s, chan in items:
        variable = graph.records[key].layer.weights[s.index]
        onehot = np.zeros((len(chan), group.size), dtype="float32")
        pos = np.flatnonzero(chan >= 0)
        onehot[pos, chan[pos]] = 1.0
        out.append(_Slice(variable, s.axis, onehot, (chan < 0).astype("float32")))
    return out


def group_norms(
    model: keras.Model, *, penalize: str = "auto", groups: Iterable[int | str] | None = None
) -> dict[int, np.ndarray]:
    """The L2 norm of every channel's weights, per prunable group (what `GroupLasso` shrinks).

    Args:
        model: A built model (not modified).
        penalize: `"auto"`, `"normalization"` or `"all"` (see the module docs).
        groups: Group ids or layer names (default: every prunable group).

    Returns:
        `{group id: norms}`, one norm per channel of the group.

    Example:
        >>> norms = kerasprune.group_norms(model)
        >>> sum(int((n < 1e-6).sum()) for n in norms.values())  # channels at zero
    """
    _check_penalize(penalize)
    graph = analyze(model)
    return _GroupWeights(graph, choose_groups(graph, groups), penalize).norms()


def _check_penalize(penalize: str) -> None:
    if penalize not in PENALIZE:
        raise PruningError(f"penalize must be one of {PENALIZE}. Received: penalize={penalize!r}")


class GroupLasso(keras.callbacks.Callback):
    """Proximal group-lasso step after every training batch: whole channels go to zero.

    Args:
        strength: Penalty weight `lambda` (> 0); each batch shrinks every
            channel's weight norm by `strength * learning_rate` (channels below
            become exactly zero). With Adam at `lr=1e-3`, 0.5-5 over a few epochs
            is a usual range; larger zeroes more channels.
        penalize: `"auto"`, `"normalization"` (BN gamma and beta) or `"all"`.
        groups: Group ids or layer names (default: every prunable group).
        learning_rate: A fixed step size instead of the optimizer's current one.

    Attributes:
        graph: The `ChannelGraph` of the trained model (after training starts).

    Example:
        >>> model.fit(x, y, epochs=5, callbacks=[kerasprune.GroupLasso(1.0)])
        >>> sel = kerasprune.select(model, "bn_gamma", target_flops=0.25)
        >>> small = kerasprune.remove_filters(model, sel)
    """

    def __init__(
        self,
        strength: float,
        *,
        penalize: str = "auto",
        groups: Iterable[int | str] | None = None,
        learning_rate: float | None = None,
    ):
        super().__init__()
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not strength > 0:
            raise PruningError(f"GroupLasso.strength must be a positive number. Received: strength={strength!r}")
        if learning_rate is not None and not learning_rate > 0:
            raise PruningError(f"learning_rate must be positive. Received: learning_rate={learning_rate!r}")
        _check_penalize(penalize)
        self.strength = float(strength)
        self.penalize = penalize
        self.groups = None if groups is None else list(groups)
        self.learning_rate = learning_rate
        self.graph: ChannelGraph | None = None
        self._weights: _GroupWeights | None = None

    def on_train_begin(self, logs=None):
        target = student_of(self.model)
        if self.graph is None or self.graph.model is not target:
            self.graph = analyze(target)
            self._weights = _GroupWeights(self.graph, choose_groups(self.graph, self.groups), self.penalize)
            log.info(
                "GroupLasso: strength %g on %d groups (%s)", self.strength, len(self._weights.groups), self.penalize
            )

    def on_train_batch_end(self, batch, logs=None):
        self._sync()
        self._weights.shrink(self.threshold())

    def threshold(self) -> float:
        """The shrinkage of this step: `strength * learning rate`."""
        lr = self.learning_rate
        if lr is None:
            optimizer = getattr(self.model, "optimizer", None)
            if optimizer is None:
                raise PruningError("GroupLasso needs a compiled model (its optimizer's learning rate) or learning_rate=")
            lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        return self.strength * lr

    def norms(self) -> dict[int, np.ndarray]:
        """Current `{group id: channel norms}` of the trained model."""
        if self._weights is None:
            raise PruningError("GroupLasso.norms() is available once training has started")
        self._sync()
        return self._weights.norms()

    def _sync(self) -> None:
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()
