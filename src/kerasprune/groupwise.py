"""Group-wise choices from per-channel scores, shared by `sensitivity` and `SoftPruning`.

Both rank each group's channels on their own (the same fraction of every
group, as in Li et al. 2017 and soft filter pruning) and express the removed
group channels as a `{producer layer: filter indices}` selection.
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


def producers(graph: ChannelGraph, group) -> tuple[tuple[str, np.ndarray], ...]:
    """(layer, group channel per output position, -1 elsewhere) for the group's producers."""
    out = []
    for layer in group.layers:
        gids, chans = graph.channels_of(layer)
        out.append((layer, np.where(gids == group.id, chans, -1)))
    return tuple(out)


def lowest(scores: np.ndarray, ratio: float, n: int | None = None) -> np.ndarray:
    """Indices of the `n` (default `floor(ratio * size)`) lowest scores, ties by index."""
    scores = np.asarray(scores, dtype=np.float64)
    if n is None:
        n = min(int(math.floor(ratio * len(scores) + 1e-9)), len(scores) - 1)
    return np.sort(np.argsort(scores, kind="stable")[:n])


def group_selection(channels, removed: Mapping[int, np.ndarray]) -> dict[str, list[int]]:
    """{layer: positions} removing the given group channels, selected through the producers.

    `channels` maps group id -> `producers(graph, group)`; a group channel is selected on
    the first producer that has it (selecting it anywhere removes it from the whole group).
    """
    selection: dict[str, list[int]] = {}
    for gid, chans in removed.items():
        todo = set(int(c) for c in chans)
        for layer, chan_of_pos in channels[gid]:
            if not todo:
                break
            pos = [i for i, c in enumerate(chan_of_pos.tolist()) if c in todo]
            if pos:
                selection.setdefault(layer, []).extend(pos)
                todo -= {int(chan_of_pos[i]) for i in pos}
    return {k: sorted(set(v)) for k, v in selection.items()}
