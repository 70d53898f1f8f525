"""Importance criteria: one score per channel of a group, higher = more important.

A criterion is a `Criterion` object; `score_groups(groups, context)` returns
`{group id: scores}`. Two small adapters turn plain functions into criteria:

- `layer_criterion(fn)`: `fn(kernel) -> scores`, where `kernel` is a producer's
  kernel (numpy) with the output channels on the **last** axis. A group's score
  is the mean over its producers (all layers whose filters are the group's
  channels, e.g. every conv feeding a residual `Add`).
- `group_criterion(fn)`: `fn(group, context) -> scores` with full access to the
  `ChannelGraph` through `ScoringContext`.

A plain callable passed to `select`/`score` is wrapped by its number of
required positional parameters: one -> `layer_criterion`, two -> `group_criterion`.

Per-layer scores are *size-normalized*: magnitudes are averages over a
filter's weights (`l1` = mean |w|, `l2` = root mean square), so a 1x1 conv and
a 3x3 conv of the same residual group are comparable, and averaging over the
group's producers is meaningful. Within one layer the ranking equals the
ranking by the plain L1/L2 norm.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from kerasprune import _keras
from kerasprune.errors import PruningError
from kerasprune.graph import ChannelGraph, Group, functional_of, run_graph

log = logging.getLogger(__name__)


class CriterionSkip(Exception):
    """Raised by a criterion for a group it cannot score; the group is skipped with `reason`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class ScoringContext:
    """What a criterion may look at.

    Attributes:
        graph: The model's `ChannelGraph` (`graph.model` is the model).
        data: Iterable of batches `x` or `(x, y)` (data-driven criteria only).
        loss: Loss for `taylor` (Keras loss, its name, or `fn(y_true, y_pred)`).
        seed: Seed for `random`.
    """

    graph: ChannelGraph
    data: Iterable | None = None
    loss: Any = None
    seed: int = 0
    rng: np.random.Generator = field(init=False)

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)

    @property
    def model(self):
        return self.graph.model

    def weight(self, key: str, index: int) -> np.ndarray:
        """`layer.weights[index]` of the layer `key`, as numpy."""
        return keras.ops.convert_to_numpy(self.graph.records[key].layer.weights[index])

    def kernels(self, group: Group) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Producers' kernels: `(layer key, kernel with filters on the last axis, channel per filter)`.

        `channel[i]` is the group channel of filter `i` (-1: another group's).
        """
        out = []
        for key, s, chan in self.graph.slices(group):
            if self._owns(key, s.atoms) and not self._is_bias(key, s.index):
                out.append((key, np.moveaxis(self.weight(key, s.index), s.axis, -1), chan))
        return out

    def biases(self, group: Group) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Producers' biases: `(layer key, bias, channel per filter)`."""
        out = []
        for key, s, chan in self.graph.slices(group):
            if self._owns(key, s.atoms) and self._is_bias(key, s.index):
                out.append((key, np.moveaxis(self.weight(key, s.index), s.axis, -1), chan))
        return out

    def _owns(self, key: str, atoms: np.ndarray) -> bool:
        """Whether every position of a weight axis is a channel the layer creates (filters, units, heads)."""
        rec = self.graph.records[key]
        own = [a for a in (rec.produces, *rec.parts.values()) if a is not None]
        return bool(own) and bool(np.isin(atoms, np.concatenate(own)).all())

    def _is_bias(self, key: str, index: int) -> bool:
        w = self.graph.records[key].layer.weights[index]
        return len(w.shape) == 1 or w.name == "bias"


def gather(size: int, parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Average per-position values into group channels: `parts` of (values, channel or -1)."""
    total = np.zeros(size)
    count = np.zeros(size)
    for values, chan in parts:
        ok = chan >= 0
        total += np.bincount(chan[ok], weights=np.asarray(values, dtype=np.float64)[ok], minlength=size)
        count += np.bincount(chan[ok], minlength=size)
    if not count.any():
        raise CriterionSkip("no weights to score")
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


class Criterion:
    """Base class: scores every given group. Subclasses override `score_group` or `score_groups`.

    Attributes:
        name: Shown in reports.
        needs_data: Whether `data` is required.
        needs_loss: Whether `loss` is required.
    """

    name = "criterion"
    needs_data = False
    needs_loss = False

    def score_group(self, group: Group, ctx: ScoringContext) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def score_groups(self, groups: list[Group], ctx: ScoringContext) -> dict[int, np.ndarray | CriterionSkip]:
        out: dict[int, np.ndarray | CriterionSkip] = {}
        for g in groups:
            try:
                out[g.id] = self.score_group(g, ctx)
            except CriterionSkip as e:
                out[g.id] = e
        return out

    def __repr__(self) -> str:
        return f"<criterion {self.name}>"


class _LayerFn(Criterion):
    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], name: str):
        self.fn, self.name = fn, name

    def score_group(self, group, ctx):
        parts = []
        for key, w, chan in ctx.kernels(group):
            s = np.asarray(self.fn(w), dtype=np.float64).reshape(-1)
            if s.shape != (w.shape[-1],):
                raise PruningError(
                    f"Criterion '{self.name}' returned {s.shape[0]} scores for layer '{key}' with "
                    f"{w.shape[-1]} filters"
                )
            parts.append((s, chan))
        if not parts:
            raise CriterionSkip("no producer kernel to score")
        return gather(group.size, parts)


class _GroupFn(Criterion):
    def __init__(self, fn: Callable, name: str, needs_data: bool = False, needs_loss: bool = False):
        self.fn, self.name, self.needs_data, self.needs_loss = fn, name, needs_data, needs_loss

    def score_group(self, group, ctx):
        s = np.asarray(self.fn(group, ctx), dtype=np.float64).reshape(-1)
        if s.shape != (group.size,):
            raise PruningError(
                f"Criterion '{self.name}' returned {s.shape[0]} scores for group {group.id} of size {group.size}"
            )
        return s


def layer_criterion(fn: Callable[[np.ndarray], np.ndarray], *, name: str | None = None) -> Criterion:
    """Criterion from `fn(kernel) -> one score per filter` (filters on the kernel's last axis).

    Example:
        >>> crit = kerasprune.criteria.layer_criterion(lambda w: np.abs(w).max(axis=tuple(range(w.ndim - 1))))
        >>> sel = kerasprune.select(model, crit, ratio=0.25)
    """
    return _LayerFn(fn, name or getattr(fn, "__name__", "layer_criterion"))


def group_criterion(
    fn: Callable[[Group, ScoringContext], np.ndarray],
    *,
    name: str | None = None,
    needs_data: bool = False,
    needs_loss: bool = False,
) -> Criterion:
    """Criterion from `fn(group, context) -> one score per group channel`."""
    return _GroupFn(fn, name or getattr(fn, "__name__", "group_criterion"), needs_data, needs_loss)


# -- weight-based criteria ------------------------------------------------------------
def _flat(w: np.ndarray) -> np.ndarray:
    return w.reshape(-1, w.shape[-1]).astype(np.float64)


def _l1(w):
    return np.abs(_flat(w)).mean(axis=0)


def _l2(w):
    return np.sqrt((_flat(w) ** 2).mean(axis=0))


def _mean(w):
    return _flat(w).mean(axis=0)


def _fpgm(w):
    f = _flat(w).T  # (filters, d)
    n, d = f.shape
    if n < 2:
        return np.zeros(n)
    sq = (f**2).sum(axis=1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0.0))
    np.fill_diagonal(dist, 0.0)
    return dist.sum(axis=1) / (n - 1) / np.sqrt(d)


def _zero(group, ctx):
    # A filter's kernel slice and bias are summed (keyed by layer and channel layout).
    parts = {(key, chan.tobytes()): [np.abs(_flat(w)).sum(axis=0), chan] for key, w, chan in ctx.kernels(group)}
    for key, b, chan in ctx.biases(group):
        b = np.abs(_flat(b)).sum(axis=0)
        if (key, chan.tobytes()) in parts:
            parts[key, chan.tobytes()][0] = parts[key, chan.tobytes()][0] + b
        else:
            parts[key, chan.tobytes()] = [b, chan]
    return gather(group.size, [tuple(p) for p in parts.values()])


def _bn_gamma(group, ctx):
    parts = []
    for key, s, chan in ctx.graph.slices(group):
        layer = ctx.graph.records[key].layer
        gamma = getattr(layer, "gamma", None)
        if isinstance(layer, keras.layers.BatchNormalization) and gamma is not None:
            if layer.weights[s.index] is gamma:
                parts.append((np.abs(ctx.weight(key, s.index)), chan))
    if not parts:
        raise CriterionSkip("no BatchNormalization with a gamma follows its layers")
    return gather(group.size, parts)


def _random(group, ctx):
    return ctx.rng.random(group.size)


# -- data-driven criteria -------------------------------------------------------------
def _batches(ctx: ScoringContext, name: str):
    if ctx.data is None:
        raise PruningError(f"Criterion '{name}' is data-driven: pass data=<iterable of batches x or (x, y)>")
    n = 0
    for batch in ctx.data:
        multi = len(ctx.model.inputs) > 1
        if (
            isinstance(batch, (tuple, list))
            and len(batch) in (2, 3)
            and (not multi or isinstance(batch[0], (list, tuple, dict)))
        ):
            x, y = batch[0], batch[1]
        else:
            x, y = batch, None
        n += 1
        yield x, y
    if n == 0:
        raise PruningError(f"Criterion '{name}': data yielded no batches")


def _split(graph: ChannelGraph, groups: list[Group], flat_values: np.ndarray, seen: np.ndarray, reason: str):
    out: dict[int, np.ndarray | CriterionSkip] = {}
    for g in groups:
        off = int(graph.group_offsets[g.id])
        if seen[off : off + g.size].any():
            out[g.id] = flat_values[off : off + g.size].copy()
        elif g.layers and all(not graph.records[k].calls for k in g.layers):  # parts: heads of an attention
            out[g.id] = CriterionSkip(
                f"its channels ({', '.join(g.layers)}) are internal to a layer and no tensor of the model "
                "carries them; score them with a weight criterion (l1, l2, fpgm)"
            )
        else:
            out[g.id] = CriterionSkip(reason)
    return out


def _run(fn, values: list, prefix: str, counter: dict, visit) -> list:
    """Execute a Functional graph node by node (nested models expanded), calling
    `visit(key, call_index, input_values)` before each layer call."""

    def call(op, node, ins, pre, env):
        key = f"{pre}{op.name}"
        idx = counter.get(key, 0)
        counter[key] = idx + 1
        visit(key, idx, ins)
        args, kwargs = _keras.fill_in(node, env)
        return keras.tree.flatten(op(*args, **kwargs))

    return run_graph(fn, values, call, prefix=prefix)


class _ActivationStats(Criterion):
    """Statistics of the activations that consumers (convs, dense layers) read."""

    needs_data = True

    def __init__(self, name: str):
        self.name = name

    def score_groups(self, groups, ctx):
        graph = ctx.graph
        wanted = np.zeros(len(graph.group_sizes), dtype=bool)
        wanted[[g.id for g in groups]] = True
        taps = {
            (key, index): (axis, graph.flat_index(atoms))
            for key, index, atoms, axis in graph.consumers()
            if wanted[graph.atom_group[atoms]].any()
        }
        n = graph.n_channels
        zeros, total, count = np.zeros(n), np.zeros(n), np.zeros(n)

        def visit(key, idx, ins):
            tap = taps.get((key, idx))
            if tap is None:
                return
            axis, flat = tap
            x = keras.ops.convert_to_numpy(ins[0])
            x = np.moveaxis(x, axis, -1).reshape(-1, len(flat))
            zeros[:] += np.bincount(flat, weights=(x == 0).sum(axis=0), minlength=n)
            total[:] += np.bincount(flat, weights=x.sum(axis=0, dtype=np.float64), minlength=n)
            count[:] += np.bincount(flat, minlength=n) * x.shape[0]

        fn = functional_of(ctx.model)
        for x, _ in _batches(ctx, self.name):
            xs = keras.tree.flatten(x)
            _run(fn, [keras.ops.convert_to_tensor(v) for v in xs], "", {}, visit)
        c = np.maximum(count, 1)
        values = 1.0 - zeros / c if self.name == "apoz" else total / c
        return _split(graph, groups, values, count > 0, "no convolution or dense layer reads its channels")


_GRADIENT = {}


def _grad_tensorflow(f, values):
    import tensorflow as tf

    vals = [tf.convert_to_tensor(v) for v in values]
    with tf.GradientTape() as tape:
        tape.watch(vals)
        loss = f(vals)
    return tape.gradient(loss, vals)


def _grad_jax(f, values):
    import jax

    return jax.grad(f)(list(values))


def _grad_torch(f, values):
    import torch

    vals = [v.detach().clone().requires_grad_(True) for v in values]
    return torch.autograd.grad(f(vals), vals, allow_unused=True)


_GRADIENT.update(tensorflow=_grad_tensorflow, jax=_grad_jax, torch=_grad_torch)


class _Taylor(Criterion):
    """First-order Taylor: |sum of activation x gradient| for each channel.

    Scaling channel `c` of the activation a consumer reads is the same as
    scaling the consumer's input weights for `c`, so
    `sum(a_c * dL/da_c) = sum(W_c * dL/dW_c)` over the consumer's input slice.
    Summed over every consumer of the group, this is the first-order change of
    the loss when the channel is removed. Absolute value per batch, mean over batches.
    """

    name = "taylor"
    needs_data = True
    needs_loss = True

    def score_groups(self, groups, ctx):
        graph, model = ctx.graph, ctx.model
        backend = keras.backend.backend()
        if backend not in _GRADIENT:
            raise PruningError(
                f"Criterion 'taylor' supports the tensorflow, jax and torch backends, not {backend!r}"
            )
        if ctx.loss is None:
            raise PruningError(
                "Criterion 'taylor' needs loss=<a Keras loss, its name, or fn(y_true, y_pred)>"
            )
        loss_fn = keras.losses.get(ctx.loss) if isinstance(ctx.loss, str) else ctx.loss
        wanted = {g.id for g in groups}
        terms = []  # (variable, axis, flat channel per position)
        for key, index, ins, _ in graph.consumers():
            if index:
                continue  # a shared layer's weights are read once
            rec = graph.records[key]
            for s in rec.slices:
                var = rec.layer.weights[s.index]
                if len(var.shape) >= 2 and np.array_equal(s.atoms, ins):
                    if set(graph.atom_group[s.atoms].tolist()) & wanted:
                        terms.append((var, s.axis, graph.flat_index(s.atoms)))
        n = graph.n_channels
        acc, seen = np.zeros(n), np.zeros(n, dtype=bool)
        for _, _, flat in terms:
            seen[flat] = True
        tv, ntv = model.trainable_variables, model.non_trainable_variables
        where = {id(v): ("t", i) for i, v in enumerate(tv)}
        where.update({id(v): ("n", i) for i, v in enumerate(ntv)})
        targets = [where[id(var)] for var, _, _ in terms]
        batches = 0
        for x, y in _batches(ctx, self.name):
            if y is None:
                raise PruningError("Criterion 'taylor' needs labelled batches (x, y)")
            x = keras.tree.map_structure(keras.ops.convert_to_tensor, x)
            y = keras.ops.convert_to_tensor(y)

            def f(vals, x=x, y=y):
                t_vals, n_vals = [v.value for v in tv], [v.value for v in ntv]
                for (kind, i), v in zip(targets, vals):
                    (t_vals if kind == "t" else n_vals)[i] = v
                pred, _ = model.stateless_call(t_vals, n_vals, x, training=False)
                return keras.ops.mean(loss_fn(y, pred))

            grads = _GRADIENT[backend](f, [var.value for var, _, _ in terms])
            batch = np.zeros(n)
            for (var, axis, flat), g in zip(terms, grads):
                if g is None:
                    continue
                w = keras.ops.convert_to_numpy(var)
                prod = np.moveaxis(w * keras.ops.convert_to_numpy(g), axis, -1)
                batch += np.bincount(flat, weights=prod.reshape(-1, len(flat)).sum(axis=0), minlength=n)
            acc += np.abs(batch)
            batches += 1
        return _split(
            graph, groups, acc / max(batches, 1), seen, "no convolution or dense layer reads its channels"
        )


# -- registry -------------------------------------------------------------------------
CRITERIA: dict[str, Criterion] = {
    "l1": layer_criterion(_l1, name="l1"),
    "l2": layer_criterion(_l2, name="l2"),
    "mean": layer_criterion(_mean, name="mean"),
    "fpgm": layer_criterion(_fpgm, name="fpgm"),
    "bn_gamma": group_criterion(_bn_gamma, name="bn_gamma"),
    "zero": group_criterion(_zero, name="zero"),
    "random": group_criterion(_random, name="random"),
    "apoz": _ActivationStats("apoz"),
    "mean_activation": _ActivationStats("mean_activation"),
    "taylor": _Taylor(),
}

DESCRIPTIONS = {
    "l1": "mean absolute weight of the filter (L1 norm / filter size)",
    "l2": "root mean square of the filter's weights (L2 norm / sqrt(filter size))",
    "mean": "mean kernel weight of the filter (the classic threshold recipe)",
    "bn_gamma": "|gamma| of the BatchNormalization that follows (network slimming)",
    "fpgm": "mean distance to the layer's other filters (geometric-median redundancy)",
    "zero": "0 for dead filters (kernel slice and bias all zero), else their L1 sum",
    "random": "uniform random scores (seeded); a baseline",
    "apoz": "1 - average percentage of zeros in the activations consumers read (data)",
    "mean_activation": "mean of the activations consumers read (data)",
    "taylor": "|activation x gradient| of a loss, first-order loss change (data, loss)",
}


def get_criterion(criterion) -> Criterion:
    """A `Criterion` from a name, a `Criterion`, or a plain callable (see module docs).

    Raises:
        PruningError: unknown name, or a callable with an unsupported signature.
    """
    if isinstance(criterion, Criterion):
        return criterion
    if isinstance(criterion, str):
        crit = CRITERIA.get(criterion.lower())
        if crit is None:
            raise PruningError(f"Unknown criterion '{criterion}'. Known: {sorted(CRITERIA)}")
        return crit
    if callable(criterion):
        try:
            params = inspect.signature(criterion).parameters.values()
        except (TypeError, ValueError):
            return layer_criterion(criterion)
        required = [
            p
            for p in params
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
        if len(required) == 1:
            return layer_criterion(criterion)
        if len(required) == 2:
            return group_criterion(criterion)
        raise PruningError(
            "A criterion callable takes (kernel) or (group, context); wrap it with "
            f"kerasprune.criteria.layer_criterion/group_criterion. Received {len(required)} required arguments"
        )
    raise PruningError(f"criterion must be a name or a callable. Received: {criterion!r}")


def score_groups(
    graph: ChannelGraph, criterion, groups: list[Group], *, data=None, loss=None, seed: int = 0
) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Scores of `groups` and the reasons of those that could not be scored."""
    crit = get_criterion(criterion)
    if crit.needs_data and data is None:
        raise PruningError(f"Criterion '{crit.name}' is data-driven: pass data=<iterable of batches>")
    if crit.needs_loss and loss is None:
        raise PruningError(f"Criterion '{crit.name}' needs loss=<a Keras loss or fn(y_true, y_pred)>")
    ctx = ScoringContext(graph, data=data, loss=loss, seed=seed)
    scores, skipped = {}, {}
    for gid, s in crit.score_groups(list(groups), ctx).items():
        if isinstance(s, CriterionSkip):
            skipped[gid] = f"criterion '{crit.name}': {s.reason}"
        else:
            scores[gid] = np.nan_to_num(np.asarray(s, dtype=np.float64), nan=0.0)
    return scores, skipped


def score(
    model, criterion, *, data=None, loss=None, seed: int = 0, graph: ChannelGraph | None = None
) -> dict[int, np.ndarray]:
    """Importance of every channel of every prunable group (higher = more important).

    Args:
        model: A built Functional or Sequential model (not modified).
        criterion: A name (`'l1'`, `'l2'`, `'mean'`, `'bn_gamma'`, `'fpgm'`, `'zero'`,
            `'random'`, `'apoz'`, `'mean_activation'`, `'taylor'`) or a callable
            (see `layer_criterion` / `group_criterion`).
        data: Iterable of batches `x` or `(x, y)`, read once, batch by batch.
        loss: Loss for `'taylor'`.
        seed: Seed for `'random'`.
        graph: A `ChannelGraph` of `model` to reuse.

    Returns:
        `{group id: scores}`; groups the criterion cannot score are left out.

    Raises:
        PruningError: unknown criterion, missing data or loss.
    """
    from kerasprune.graph import analyze

    graph = graph if graph is not None else analyze(model)
    if graph.model is not model:
        raise PruningError("graph was built for a different model")
    scores, _ = score_groups(graph, criterion, list(graph.prunable_groups), data=data, loss=loss, seed=seed)
    return scores
