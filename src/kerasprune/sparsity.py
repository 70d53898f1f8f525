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

Which channels (`ratio`):

- `None`: every channel (plain group lasso). Caveat (docs/recovery.md): when
  a BatchNormalization follows every penalized layer, the loss does not resist
  shrinking *all* gammas of a layer together (the next BatchNormalization
  undoes the scale), so with an adaptive optimizer such as Adam every channel
  drifts towards BN's epsilon rather than only the weak ones.
- a fraction, or a schedule `epoch -> fraction` (e.g. `PolynomialSchedule`):
  only that share of each group's channels, those with the smallest norms
  (re-chosen at the start of every epoch), is penalized; the others are left
  alone. This drives exactly the channels that will be removed to zero while the
  rest of the network adapts (compare "growing regularization", Wang et al. 2021).
- `target_flops`, a fraction of the MACs or a schedule `epoch -> fraction`
  (instead of `ratio`): the channels that `select(model, criterion,
  target_flops=...)` would remove now (global ranking across groups, re-chosen
  at the start of every epoch) are penalized. The budget is then spent where
  the ranking says, not as the same share of every group, and the network
  that survives the shrinkage is the one the final `select` keeps.

Afterwards, `select(model, "bn_gamma" or "l2", target_flops=...)` removes the
near-zero channels; the accuracy right after pruning then stays close to the
trained model's (for channels exactly zero, identical).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import keras
import numpy as np

from kerasprune.allocation import select
from kerasprune.criteria import group_criterion
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
        self.active: dict[int, np.ndarray] | None = None  # None: every channel is penalized
        self._active: dict = {}

    def choose(self, ratio: float) -> dict[int, np.ndarray]:
        """Penalize only the `floor(ratio * size)` channels of each group with the smallest norms."""
        norms = self.norms()
        return self.choose_channels({
            g.id: np.argsort(norms[g.id], kind="stable")[: min(int(math.floor(ratio * g.size + 1e-9)), g.size)]
            for g in self.groups
        })

    def choose_channels(self, removed) -> dict[int, np.ndarray]:
        """Penalize exactly the given channels, `{group id: channel indices}` (other groups: none)."""
        self.active = {}
        for g in self.groups:
            mask = np.zeros(g.size, dtype=bool)
            mask[np.asarray(removed.get(g.id, ()), dtype=np.int64)] = True
            self.active[g.id] = mask
        self._active = {gid: keras.ops.convert_to_tensor(m) for gid, m in self.active.items()}
        return self.active

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
            if gid in self._active:
                scale = keras.ops.where(self._active[gid], scale, keras.ops.ones_like(scale))
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


def _check_target(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise PruningError(f"GroupLasso: {what} must be a fraction of the MACs in (0, 1]. Received: {value!r}")
    return float(value)


def _check_penalize(penalize: str) -> None:
    if penalize not in PENALIZE:
        raise PruningError(f"penalize must be one of {PENALIZE}. Received: penalize={penalize!r}")


class GroupLasso(keras.callbacks.Callback):
    """Proximal group-lasso step after every training batch: whole channels go to zero.

    Args:
        strength: Penalty weight `lambda` (> 0); each batch shrinks the weight
            norm of every penalized channel by `strength * learning_rate`
            (channels below become exactly zero). With Adam, whose steps are about
            `learning_rate` per weight, `strength` well above 1 is needed for a
            channel to reach zero against the loss, and the shrinkage summed over
            training (`strength * sum of learning rates`) must exceed the channels'
            norms (about 1 for BN gamma): e.g. `strength=4` over 500 steps at 1e-3-3e-3.
        ratio: `None` (every channel), a fraction in (0, 1), or a callable
            `epoch -> fraction`: the share of each group's channels, smallest
            norms first, penalized during that epoch.
        target_flops: Instead of `ratio`: a fraction of the model's MACs in
            (0, 1], or a callable `epoch -> fraction`; the channels a global
            `select(..., target_flops=...)` by `criterion` would remove are
            penalized during that epoch (1.0: none).
        criterion: Ranking for `target_flops` (default: the channel norms this
            penalty shrinks, normalized per group as `select` does).
        min_keep: For `target_flops`: never penalize a group down below this.
        penalize: `"auto"`, `"normalization"` (BN gamma and beta) or `"all"`.
        groups: Group ids or layer names (default: every prunable group).
        learning_rate: A fixed step size instead of the optimizer's current one.

    Attributes:
        graph: The `ChannelGraph` of the trained model (after training starts).

    Example:
        >>> lasso = kerasprune.GroupLasso(4.0, ratio=kerasprune.PolynomialSchedule(0.0, 0.5, begin=0, end=3))
        >>> model.fit(x, y, epochs=8, callbacks=[lasso])
        >>> sel = kerasprune.select(model, "bn_gamma", target_flops=0.25)
        >>> small = kerasprune.remove_filters(model, sel)
    """

    def __init__(
        self,
        strength: float,
        *,
        ratio: float | Callable[[int], float] | None = None,
        target_flops: float | Callable[[int], float] | None = None,
        criterion=None,
        min_keep: int = 1,
        penalize: str = "auto",
        groups: Iterable[int | str] | None = None,
        learning_rate: float | None = None,
    ):
        super().__init__()
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not strength > 0:
            raise PruningError(f"GroupLasso.strength must be a positive number. Received: strength={strength!r}")
        if learning_rate is not None and not learning_rate > 0:
            raise PruningError(f"learning_rate must be positive. Received: learning_rate={learning_rate!r}")
        if ratio is not None and not callable(ratio) and not 0.0 < ratio < 1.0:
            raise PruningError(f"GroupLasso.ratio must be in (0, 1) or a schedule. Received: ratio={ratio!r}")
        if ratio is not None and target_flops is not None:
            raise PruningError("GroupLasso: give ratio or target_flops, not both")
        if target_flops is not None and not callable(target_flops):
            _check_target(target_flops, "target_flops")
        if criterion is not None and target_flops is None:
            raise PruningError("GroupLasso: criterion= ranks channels for target_flops=; give target_flops too")
        if isinstance(min_keep, bool) or not isinstance(min_keep, int) or min_keep < 1:
            raise PruningError(f"GroupLasso.min_keep must be a positive integer. Received: min_keep={min_keep!r}")
        _check_penalize(penalize)
        self.strength = float(strength)
        self.ratio = ratio
        self.target_flops = target_flops
        self.criterion = criterion
        self.min_keep = min_keep
        self.penalize = penalize
        self.groups = None if groups is None else list(groups)
        self.learning_rate = learning_rate
        self.graph: ChannelGraph | None = None
        self._weights: _GroupWeights | None = None
        self._warned = False

    def on_train_begin(self, logs=None):
        target = student_of(self.model)
        if self.graph is None or self.graph.model is not target:
            self.graph = analyze(target)
            self._weights = _GroupWeights(self.graph, choose_groups(self.graph, self.groups), self.penalize)
            log.info(
                "GroupLasso: strength %g on %d groups (%s)", self.strength, len(self._weights.groups), self.penalize
            )

    def on_epoch_begin(self, epoch, logs=None):
        if self.target_flops is not None:
            return self._choose_for_target(epoch)
        if self.ratio is None:
            return
        ratio = float(self.ratio(epoch)) if callable(self.ratio) else float(self.ratio)
        if not 0.0 <= ratio < 1.0:
            raise PruningError(f"The GroupLasso ratio schedule gave {ratio} for epoch {epoch}; it must be in [0, 1)")
        self._sync()
        chosen = self._weights.choose(ratio)
        log.info("GroupLasso: epoch %d, %d channels penalized", epoch, sum(int(m.sum()) for m in chosen.values()))

    def _choose_for_target(self, epoch: int) -> None:
        t = self.target_flops
        t = _check_target(float(t(epoch)) if callable(t) else float(t), f"the target_flops schedule at epoch {epoch}")
        self._sync()
        weights = self._weights
        if t >= 1.0:
            chosen = weights.choose_channels({})
        else:
            norms = weights.norms()
            criterion = self.criterion or group_criterion(lambda g, ctx: norms[g.id], name="group_norm")
            quiet = logging.getLogger(select.__module__)  # its per-epoch warnings: once, below
            level = quiet.level
            quiet.setLevel(logging.ERROR)
            try:
                sel = select(
                    self.graph.model, criterion, target_flops=t, graph=self.graph, min_keep=self.min_keep,
                    include=[re.compile(re.escape(layer)) for g in weights.groups for layer in g.layers],
                )
            finally:
                quiet.setLevel(level)
            if sel.warnings and not self._warned:  # once per callback (the counts change every epoch)
                self._warned = True
                for w in sel.warnings:
                    log.warning("GroupLasso (target_flops), epoch %d: %s", epoch, w)
            chosen = weights.choose_channels(sel.plan_for(self.graph.model).removed)
        log.info(
            "GroupLasso: epoch %d, target_flops %.3g, %d channels penalized",
            epoch, t, sum(int(m.sum()) for m in chosen.values()),
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
