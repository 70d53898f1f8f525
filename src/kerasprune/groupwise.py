"""Group-wise choices from per-channel scores, shared by `select`, `sensitivity` and `SoftPruning`.

Each group's channels are ranked on their own scores; a group with balance
constraints (a grouped convolution's groups, a GroupNormalization's groups)
is split into equal *cells* that each lose the same number of channels, the
lowest-scoring of each cell.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np

from kerasprune.errors import PruningError, SelectionError
from kerasprune.graph import ChannelGraph

log = logging.getLogger(__name__)


def choose_groups(graph: ChannelGraph, groups) -> list:
    """The prunable groups named by ids or layer names (default: every prunable group)."""
    if groups is None:
        chosen = list(graph.prunable_groups)
        if not chosen:
            raise PruningError(f"Model '{graph.model.name}' has no prunable group")
        return chosen
    chosen = []
    for item in groups:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not 0 <= int(item) < len(graph.groups):
                raise SelectionError(f"Group {item} does not exist (the model has {len(graph.groups)} groups)")
            g = graph.groups[int(item)]
        else:
            g = graph.group_of(item)
        if not g.prunable:
            raise PruningError(f"Group {g.id} ({', '.join(g.layers)}) is not prunable: {g.reason}")
        if g not in chosen:
            chosen.append(g)
    return chosen


def scored(chosen: list, scores: Mapping[int, np.ndarray], criterion) -> list:
    """The chosen groups that the criterion could score (others are logged and left out)."""
    kept = [g for g in chosen if g.id in scores]
    for g in chosen:
        if g.id not in scores:
            log.warning("criterion %r cannot score group %d (%s); left out", criterion, g.id, ", ".join(g.layers))
    if not kept:
        raise PruningError(f"Criterion {criterion!r} could score none of the requested groups")
    return kept


def cells(graph: ChannelGraph, group) -> tuple[np.ndarray, ...] | None:
    """The group's channels split into the equal cells its balance constraints ask for.

    Returns None for an unconstrained group. Every cell must lose the same number of
    channels for every constraint to hold (the cells are the common refinement of the
    constraints' blocks).

    Raises:
        PruningError: the constraints reach other groups, or do not split the group into
            equal cells; its channels can still be chosen explicitly.
    """
    balances = graph.balances_of(group)
    if not balances:
        return None
    off, size = int(graph.group_offsets[group.id]), group.size
    signature = np.zeros((size, len(balances)), dtype=np.int64)
    for j, b in enumerate(balances):
        where = np.full(size, -1, dtype=np.int64)
        for k, block in enumerate(b.blocks):
            inside = block[(block >= off) & (block < off + size)] - off
            if len(inside) != len(block):
                raise PruningError(f"{b.reason}: its groups span several channel groups; select the channels explicitly")
            where[inside] = k
        if (where < 0).any():
            raise PruningError(f"{b.reason}: it covers only part of group {group.id}; select the channels explicitly")
        signature[:, j] = where
    _, cell_of = np.unique(signature, axis=0, return_inverse=True)
    out = tuple(np.flatnonzero(cell_of.reshape(-1) == c) for c in range(int(cell_of.max()) + 1))
    sizes = {len(c) for c in out}
    per_block = {(j, k): 0 for j, b in enumerate(balances) for k in range(len(b.blocks))}
    for c in out:
        for j in range(len(balances)):
            per_block[(j, int(signature[c[0], j]))] += 1
    if len(sizes) != 1 or any(len({v for (jj, _), v in per_block.items() if jj == j}) != 1 for j in range(len(balances))):
        raise PruningError(
            f"group {group.id}: its balance constraints ({'; '.join(b.reason for b in balances)}) do not split "
            "it into equal cells; select the channels explicitly"
        )
    return out


def removable(size: int, n: int, cell_list=None, *, min_keep: int = 1, round_to: int | None = None) -> int:
    """How many of `n` requested channels a group of `size` may lose.

    At least `min_keep` channels stay; the kept count is rounded up to a multiple of
    `round_to` and of the number of cells (each cell keeps the same number).
    """
    kept = max(size - int(n), min_keep)
    step = len(cell_list) if cell_list else 1
    if round_to:
        step = math.lcm(step, int(round_to))
    kept = int(math.ceil(kept / step) * step)
    return max(0, size - min(kept, size))


def lowest(scores: np.ndarray, ratio: float, n: int | None = None, cell_list=None) -> np.ndarray:
    """Indices of the `n` (default `floor(ratio * size)`) lowest scores, ties by index.

    With `cell_list` (see `cells`), `n` is first made balanced (`removable`) and each
    cell loses its own lowest-scoring channels.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if n is None:
        n = min(int(math.floor(ratio * len(scores) + 1e-9)), len(scores) - 1)
    if not cell_list:
        return np.sort(np.argsort(scores, kind="stable")[:n])
    n = removable(len(scores), n, cell_list)
    per = n // len(cell_list)
    if not per:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate([c[np.argsort(scores[c], kind="stable")[:per]] for c in cell_list]))
