"""Turning a user's selection into a checked removal plan.

A selection maps layers (names or objects) to the channels to remove: a
sequence of integer indices (negatives allowed) or a boolean mask of the
layer's width (True = remove). Selecting a channel on any layer of a group
removes it from the whole group.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kerasprune.errors import PruningError, SelectionError
from kerasprune.graph import ChannelGraph

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """Which channels of which groups go, for one model.

    Attributes:
        graph: The analysis the plan was made against.
        removed: Group id -> sorted channel indices (group numbering) to remove.
    """

    graph: ChannelGraph
    removed: Mapping[int, np.ndarray]
    _atom_removed: np.ndarray = field(repr=False, compare=False, default=None)

    def keep(self, atoms: np.ndarray) -> np.ndarray:
        """Boolean mask: True where the position's channel stays."""
        return ~self._atom_removed[atoms]

    def touches(self, atoms_list) -> bool:
        return any(a is not None and self._atom_removed[a].any() for a in atoms_list)

    @property
    def is_empty(self) -> bool:
        return not self.removed

    @property
    def exact(self) -> bool:
        """True when every touched group is exact (removal == masking)."""
        return all(self.graph._all_groups[g].exact for g in self.removed)

    @property
    def affected_layers(self) -> tuple[str, ...]:
        """Names of every layer whose weights or config change."""
        out = []
        for key in self.graph.order:
            rec = self.graph.records[key]
            atoms = [s.atoms for s in rec.slices]
            for call in rec.calls:
                atoms += [a for a in call[0] + call[1] if a is not None]
            if self.touches(atoms):
                out.append(key)
        return tuple(out)

    def removed_filters(self, layer) -> np.ndarray:
        """Indices of `layer`'s own output channels that the plan removes."""
        atoms = self.graph.output_atoms(layer)
        return np.flatnonzero(self._atom_removed[atoms])

    def summary(self) -> str:
        if not self.removed:
            return "empty selection: nothing to remove"
        lines = []
        for gid, chans in self.removed.items():
            g = self.graph._all_groups[gid]
            tag = "" if g.exact else " (approximate)"
            lines.append(
                f"group {gid} [{', '.join(g.layers)}]: remove {len(chans)} of {g.size} -> "
                f"{g.size - len(chans)}{tag}"
            )
        return "\n".join(lines)


def _indices(key: str, value: Any, n: int) -> np.ndarray:
    """Validate one selection entry; return sorted non-negative indices."""
    if isinstance(value, (str, bytes)):
        raise SelectionError(f"Filters for layer '{key}' must be integers or a boolean mask. Received: {value!r}")
    try:
        arr = np.asarray(value)
    except Exception as e:  # ragged, exotic objects
        raise SelectionError(f"Filters for layer '{key}' could not be read as indices: {e}") from None
    if arr.dtype != bool and isinstance(value, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in value):
        raise SelectionError(
            f"Filters for layer '{key}' mix booleans and integers; give integer indices or a full boolean "
            f"mask of {n} entries. Received: {value!r}"[:300]
        )
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise SelectionError(
                f"Boolean mask for layer '{key}' must have shape ({n},) (one entry per filter). "
                f"Received shape {arr.shape}"
            )
        return np.flatnonzero(arr)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise SelectionError(f"Filters for layer '{key}' must be a flat list. Received shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == object and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in arr):
            big = [int(v) for v in arr if not -(2**62) < int(v) < 2**62]
            if big:  # beyond int64: report it as out of range instead of overflowing
                raise SelectionError(
                    f"Filter index {big[0]} is out of range for layer '{key}' with {n} filters "
                    f"(valid: {-n} .. {n - 1})"
                )
            arr = arr.astype(np.int64)
        else:
            raise SelectionError(
                f"Filters for layer '{key}' must be integer indices or a boolean mask. "
                f"Received dtype {arr.dtype}: {value!r}"[:300]
            )
    bad = arr[(arr < -n) | (arr >= n)]
    if bad.size:
        raise SelectionError(
            f"Filter index {int(bad[0])} is out of range for layer '{key}' with {n} filters "
            f"(valid: {-n} .. {n - 1})"
        )
    idx = np.where(arr < 0, arr + n, arr).astype(np.int64)
    uniq, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        raise SelectionError(f"Filter index {int(uniq[counts > 1][0])} is given twice for layer '{key}'")
    return uniq


def make_plan(graph: ChannelGraph, selection: Mapping) -> Plan:
    """Check `selection` against `graph` and expand it to whole groups.

    Raises:
        SelectionError: unknown layer, bad indices or mask.
        PruningError: a touched group is not prunable, or would lose every channel.
    """
    if selection is None:
        selection = {}
    if not isinstance(selection, Mapping):
        raise SelectionError(
            "selection must be a mapping {layer name or layer: indices or boolean mask}. "
            f"Received: {type(selection).__name__}"
        )
    n_chan = int(graph.group_sizes.sum())
    removed_flat = np.zeros(n_chan, dtype=bool)
    touched: dict[int, set] = {}
    for layer, value in selection.items():
        key = graph.key_of(layer)
        atoms = graph.output_atoms(key)
        idx = _indices(key, value, len(atoms))
        if idx.size == 0:
            continue
        gids = graph.atom_group[atoms[idx]]
        for gid in np.unique(gids).tolist():
            g = graph._all_groups[gid]
            if not g.prunable:
                raise PruningError(
                    f"Cannot remove filters of layer '{key}': its channels (group {gid}, "
                    f"{g.size} channels, layers {list(g.layers)}) are not prunable: {g.reason}"
                )
        flat = graph.group_offsets[gids] + graph.atom_channel[atoms[idx]]
        removed_flat[flat] = True
        for gid in np.unique(gids).tolist():
            touched.setdefault(gid, set()).add(key)
    removed = {}
    for gid in sorted(touched):
        off, size = int(graph.group_offsets[gid]), int(graph.group_sizes[gid])
        chans = np.flatnonzero(removed_flat[off : off + size])
        if len(chans) == size:
            g = graph._all_groups[gid]
            raise PruningError(
                f"Selection removes all {size} channels of group {gid} (layers {list(g.layers)}, "
                f"selected through {sorted(touched[gid])}); at least one must remain"
            )
        removed[gid] = chans
    atom_removed = removed_flat[graph.group_offsets[graph.atom_group] + graph.atom_channel]
    for gid in removed:  # a producer owning only part of a group (Concatenate) must keep a filter
        for key in graph._all_groups[gid].layers:
            own = graph.records[key].produces
            if own is not None and len(own) and atom_removed[own].all():
                raise PruningError(
                    f"Selection removes all {len(own)} filters of layer '{key}' "
                    f"({type(graph.records[key].layer).__name__}) through group {gid} "
                    f"(selected through {sorted(touched[gid])}); at least one must remain"
                )
    plan = Plan(graph, removed, atom_removed)
    if plan.is_empty:
        log.info("kerasprune: empty selection, nothing to remove")
    return plan
