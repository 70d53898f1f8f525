"""The criteria framework: what a criterion is, what it may look at, and how scores are asked for.

A criterion is a `Criterion` object; `score_groups(groups, context)` returns
`{group id: scores}` (higher = more important). Two small adapters turn plain
functions into criteria (`layer_criterion`, `group_criterion`); built-in
criteria register themselves by name with `register_criterion`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from kerasprune.errors import PruningError
from kerasprune.graph import ChannelGraph, Group, graph_for
from kerasprune.replicas import mean_across_workers

log = logging.getLogger(__name__)

#: name -> criterion; filled by the criteria modules with `register_criterion`.
CRITERIA: dict[str, Criterion] = {}
#: name -> one-line description (CLI help, docs).
DESCRIPTIONS: dict[str, str] = {}


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
        data: Data for the data-driven criteria, in any form `kerasprune.data.batches`
            takes (`x`, `(x, y)`, a list of batches, a generator, a dataset).
        loss: Loss for `taylor` (Keras loss, its name, or `fn(y_true, y_pred)`).
        seed: Seed for `random`.
        batch_size: Batch size for in-memory arrays.
    """

    graph: ChannelGraph
    data: Any = None
    loss: Any = None
    seed: int = 0
    batch_size: int = 32
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
            if s.along is None and self._owns(key, s.atoms) and not self._is_bias(key, s.index):
                out.append((key, np.moveaxis(self.weight(key, s.index), s.axis, -1), chan))
        return out

    def biases(self, group: Group) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Producers' biases: `(layer key, bias, channel per filter)`."""
        out = []
        for key, s, chan in self.graph.slices(group):
            if s.along is None and self._owns(key, s.atoms) and self._is_bias(key, s.index):
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
            try:
                s = np.asarray(self.fn(w), dtype=np.float64).reshape(-1)
            except Exception as e:
                layer = ctx.graph.records[key].layer
                raise PruningError(
                    f"Criterion '{self.name}' failed on layer '{key}' ({type(layer).__name__}), kernel of shape "
                    f"{w.shape} (filters on the last axis): {type(e).__name__}: {e}"
                ) from e
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
        try:
            s = np.asarray(self.fn(group, ctx), dtype=np.float64).reshape(-1)
        except (CriterionSkip, PruningError):
            raise
        except Exception as e:
            raise PruningError(
                f"Criterion '{self.name}' failed on group {group.id} (layers {list(group.layers)}): "
                f"{type(e).__name__}: {e}"
            ) from e
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


def register_criterion(criterion: Criterion, description: str = "") -> Criterion:
    """Make `criterion` available by its name to `select`, `score` and the CLI."""
    CRITERIA[criterion.name] = criterion
    DESCRIPTIONS[criterion.name] = description
    return criterion


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
    graph: ChannelGraph,
    criterion,
    groups: list[Group],
    *,
    data=None,
    loss=None,
    seed: int = 0,
    batch_size: int = 32,
) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Scores of `groups` and the reasons of those that could not be scored."""
    crit = get_criterion(criterion)
    if crit.needs_data and data is None:
        raise PruningError(
            f"Criterion '{crit.name}' is data-driven: pass data= (x, (x, y), a list of batches, a generator "
            "or a dataset)"
        )
    if crit.needs_loss and loss is None:
        raise PruningError(f"Criterion '{crit.name}' needs loss=<a Keras loss or fn(y_true, y_pred)>")
    ctx = ScoringContext(graph, data=data, loss=loss, seed=seed, batch_size=batch_size)
    scores, skipped = {}, {}
    for gid, s in crit.score_groups(list(groups), ctx).items():
        if isinstance(s, CriterionSkip):
            skipped[gid] = f"criterion '{crit.name}': {s.reason}"
        else:
            scores[gid] = np.nan_to_num(np.asarray(s, dtype=np.float64), nan=0.0)
    if crit.needs_data:  # each worker of a multi-worker job read its own shard: agree on the mean
        scores = mean_across_workers(scores, graph.model)
    return scores, skipped


def score(
    model,
    criterion,
    *,
    data=None,
    loss=None,
    seed: int = 0,
    batch_size: int = 32,
    graph: ChannelGraph | None = None,
    channelwise=(),
) -> dict[int, np.ndarray]:
    """Importance of every channel of every prunable group (higher = more important).

    Args:
        model: A built Functional or Sequential model (not modified).
        criterion: A name (`'l1'`, `'l2'`, `'mean'`, `'bn_gamma'`, `'fpgm'`, `'zero'`,
            `'random'`, `'apoz'`, `'mean_activation'`, `'taylor'`) or a callable
            (see `layer_criterion` / `group_criterion`).
        data: Data for data-driven criteria: `x`, `(x, y)`, a list of batches, a
            generator, a `tf.data.Dataset`, a `keras.utils.PyDataset` or a torch
            `DataLoader` (see `kerasprune.data.batches`); read once, batch by batch.
        loss: Loss for `'taylor'`.
        seed: Seed for `'random'`.
        batch_size: Batch size for in-memory arrays.
        graph: A `ChannelGraph` of `model` to reuse.
        channelwise: Layer names to treat as element-wise (as in `analyze`), when
            `graph` is not given.

    Returns:
        `{group id: scores}`; groups the criterion cannot score are left out.

    Raises:
        PruningError: unknown criterion, missing data or loss.

    Example:
        >>> scores = kerasprune.score(model, "l1")
        >>> {gid: s.argmin() for gid, s in scores.items()}  # the weakest channel of every group
    """
    graph = graph_for(model, graph, channelwise=channelwise)
    scores, _ = score_groups(
        graph, criterion, list(graph.prunable_groups), data=data, loss=loss, seed=seed, batch_size=batch_size
    )
    return scores
