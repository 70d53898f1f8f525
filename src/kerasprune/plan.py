"""The plan: which channels of which groups go, for one model — the currency of kerasprune.

Every path ends in a `Plan`: a user's selection (layer -> indices or mask) is
checked against the graph and expanded to whole groups by `make_plan`; `select`,
`sensitivity` and `SoftPruning` decide per group and build one with
`Plan.from_groups`. `mask_filters` and `remove_filters` accept a plan as it is.
`Plan.to_selection()` is the one translation back to layer names (what JSON
files and the CLI store): each removed group channel is named on the first of
the group's producers that has it.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kerasprune import _keras
from kerasprune.errors import PruningError, SelectionError, UnsupportedLayerError
from kerasprune.graph import ChannelGraph

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """Which channels of which groups go, for one model.

    Build one with `make_plan(graph, selection)` or `Plan.from_groups(graph, removed)`;
    pass it to `remove_filters`, `mask_filters` or `SoftPruning` as a selection.

    Attributes:
        graph: The analysis the plan was made against (`plan.graph.model` is the model).
        removed: Group id -> sorted channel indices (group numbering) to remove.
    """

    graph: ChannelGraph
    removed: Mapping[int, np.ndarray]
    _atom_removed: np.ndarray = field(repr=False, compare=False, default=None)

    @classmethod
    def from_groups(cls, graph: ChannelGraph, removed: Mapping[int, Any]) -> Plan:
        """A checked plan removing, in each group, the given channel indices.

        Args:
            graph: The model's `ChannelGraph`.
            removed: `{group id: channel indices}` (group numbering, `0 .. group.size - 1`).

        Raises:
            SelectionError: unknown group, bad channel indices.
            PruningError: a group is not prunable, or would lose every channel.
        """
        flat = np.zeros(graph.n_channels, dtype=bool)
        touched: dict[int, set] = {}
        for gid, chans in removed.items():
            if not isinstance(gid, (int, np.integer)) or not 0 <= int(gid) < len(graph._all_groups):
                raise SelectionError(f"Group {gid!r} does not exist (the model has {len(graph.groups)} groups)")
            g = graph._all_groups[int(gid)]
            idx = _indices(f"group {g.id}", chans, g.size, what="channel")
            if idx.size == 0:
                continue
            _check_prunable(g, f"group {g.id}")
            flat[int(graph.group_offsets[g.id]) + idx] = True
            touched.setdefault(g.id, set()).add(f"group {g.id}")
        return _finish(graph, flat, touched)

    def keep(self, atoms: np.ndarray) -> np.ndarray:
        """Boolean mask: True where the position's channel stays."""
        return ~self._atom_removed[atoms]

    def touches(self, atoms_list) -> bool:
        """Whether any of the atom arrays holds a removed channel."""
        return any(a is not None and self._atom_removed[a].any() for a in atoms_list)

    @property
    def is_empty(self) -> bool:
        return not self.removed

    @property
    def exact(self) -> bool:
        """True when every touched group is exact (removal == masking)."""
        return all(self.graph._all_groups[g].exact for g in self.removed)

    @property
    def n_removed(self) -> int:
        """Number of group channels removed (each coupled channel counted once)."""
        return int(sum(len(c) for c in self.removed.values()))

    def flat_removed(self) -> np.ndarray:
        """Boolean mask over the graph's flat channel index (see `ChannelGraph.flat_index`)."""
        out = np.zeros(self.graph.n_channels, dtype=bool)
        for gid, chans in self.removed.items():
            out[int(self.graph.group_offsets[gid]) + chans] = True
        return out

    @property
    def affected_layers(self) -> tuple[str, ...]:
        """Keys of the layers whose weights or config change (topological order).

        Weightless layers that only pass fewer channels on (activations, pooling)
        are not listed: nothing of theirs changes.
        """
        out = []
        for key in self.graph.order:
            rec = self.graph.records[key]
            if any(not self.keep(s.atoms).all() for s in rec.slices) or _config_changes(self, rec):
                out.append(key)
        return tuple(out)

    def removed_filters(self, layer) -> np.ndarray:
        """Indices of `layer`'s own output channels that the plan removes."""
        atoms = self.graph.output_atoms(layer)
        return np.flatnonzero(self._atom_removed[atoms])

    def to_selection(self) -> dict[str, list[int]]:
        """`{layer key: filter indices}` naming every removed channel through the groups' producers.

        Applying the result with `make_plan` gives this plan back. Each group channel is
        named on the first producer (in topological order) that has it, so a group that
        no single layer spans (a concatenation of several producers' outputs) is named
        through several layers.
        """
        graph, out = self.graph, {}
        for gid, chans in self.removed.items():
            todo = np.zeros(int(graph.group_sizes[gid]), dtype=bool)
            todo[chans] = True
            for key in graph._all_groups[gid].layers:
                if not todo.any():
                    break
                atoms = graph.records[key].produces
                hit = (graph.atom_group[atoms] == gid) & todo[graph.atom_channel[atoms]] if atoms is not None else None
                if hit is None or not hit.any():
                    continue
                pos = np.flatnonzero(hit)
                # a coupled channel can sit at several positions of one producer: name it once
                _, first = np.unique(graph.atom_channel[atoms[pos]], return_index=True)
                pos = np.sort(pos[first])
                out.setdefault(key, []).extend(pos.tolist())
                todo[graph.atom_channel[atoms[pos]]] = False
            if todo.any():  # pragma: no cover - every channel of a prunable group has a producer
                raise PruningError(f"Group {gid}: channels {np.flatnonzero(todo).tolist()} have no producer")
        return {k: sorted(v) for k, v in out.items()}

    def summary(self) -> str:
        """One line per touched group: its producers and channels before -> after."""
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

    __str__ = summary


def _config_changes(plan: Plan, rec) -> bool:
    if rec.rule is None or rec.barrier or not rec.calls:
        return False
    if not plan.touches([a for call in rec.calls for a in call.atoms()]):
        return False
    from kerasprune.surgery import new_config

    try:
        return new_config(plan, rec, rec.layer) != _keras.config_of(rec.layer)
    except PruningError:
        return True


def _indices(key: str, value: Any, n: int, what: str = "filter") -> np.ndarray:
    """Validate one selection entry; return sorted non-negative indices.

    `key` is a layer key, or `"group N"` for group-level plans.
    """
    where = key if key.startswith("group ") else f"layer '{key}'"
    if isinstance(value, (str, bytes)):
        raise SelectionError(f"Filters for {where} must be integers or a boolean mask. Received: {value!r}")
    try:
        arr = np.asarray(value)
    except Exception as e:  # ragged, exotic objects
        raise SelectionError(f"Filters for {where} could not be read as indices: {e}") from None
    if arr.dtype != bool and isinstance(value, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in value):
        raise SelectionError(
            f"Filters for {where} mix booleans and integers; give integer indices or a full boolean "
            f"mask of {n} entries. Received: {value!r}"[:300]
        )
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise SelectionError(
                f"Boolean mask for {where} must have shape ({n},) (one entry per filter). "
                f"Received shape {arr.shape}"
            )
        return np.flatnonzero(arr)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise SelectionError(f"Filters for {where} must be a flat list. Received shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == object and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in arr):
            big = [int(v) for v in arr if not -(2**62) < int(v) < 2**62]
            if big:  # beyond int64: report it as out of range instead of overflowing
                raise SelectionError(
                    f"Filter index {big[0]} is out of range for {where} with {n} filters "
                    f"(valid: {-n} .. {n - 1})"
                )
            arr = arr.astype(np.int64)
        else:
            raise SelectionError(
                f"Filters for {where} must be integer indices or a boolean mask. "
                f"Received dtype {arr.dtype}: {value!r}"[:300]
            )
    bad = arr[(arr < -n) | (arr >= n)]
    if bad.size:
        raise SelectionError(
            f"Filter index {int(bad[0])} is out of range for {where} with {n} filters "
            f"(valid: {-n} .. {n - 1})"
        )
    idx = np.where(arr < 0, arr + n, arr).astype(np.int64)
    uniq, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        raise SelectionError(f"Filter index {int(uniq[counts > 1][0])} is given twice for {where}")
    return uniq


def _check_prunable(g, through: str) -> None:
    if not g.prunable:
        raise UnsupportedLayerError(
            f"Cannot remove filters of {through}: its channels (group {g.id}, {g.size} channels, "
            f"layers {list(g.layers)}) are not prunable: {g.reason}"
        )


def make_plan(graph: ChannelGraph, selection) -> Plan:
    """Check a selection against `graph` and expand it to whole groups.

    Args:
        graph: The model's `ChannelGraph` (from `analyze`).
        selection: A `Plan` (returned as is when it was made for `graph`'s model), or a
            mapping `{layer or layer name: indices or boolean mask}` (a `Selection` is
            one); selecting a channel on any layer of a group removes it from the group.

    Returns:
        A checked `Plan`.

    Raises:
        SelectionError: unknown layer, bad, duplicated or out-of-range indices, wrong
            mask length, or a plan made for another model.
        UnsupportedLayerError: a touched group is not prunable (names the blocking layer).
        PruningError: a group, or a producer of it, would lose every channel.

    Example:
        >>> plan = kerasprune.make_plan(kerasprune.analyze(model), {"conv2d_1": [4, 7]})
        >>> print(plan.summary())
        >>> smaller = kerasprune.remove_filters(model, plan)
    """
    if isinstance(selection, Plan):
        if selection.graph.model is not graph.model:
            raise SelectionError(
                f"The plan was made for model '{selection.graph.model.name}', not for '{graph.model.name}'"
            )
        return selection
    cached = getattr(selection, "plan_for", None)
    if cached is not None:
        plan = cached(graph.model)
        if plan is not None:
            return plan
    if selection is None:
        selection = {}
    if not isinstance(selection, Mapping):
        raise SelectionError(
            "selection must be a mapping {layer name or layer: indices or boolean mask} or a Plan. "
            f"Received: {type(selection).__name__}"
        )
    removed_flat = np.zeros(graph.n_channels, dtype=bool)
    touched: dict[int, set] = {}
    for layer, value in selection.items():
        key = graph.key_of(layer)
        atoms = graph.output_atoms(key)
        idx = _indices(key, value, len(atoms))
        if idx.size == 0:
            continue
        gids = graph.atom_group[atoms[idx]]
        for gid in np.unique(gids).tolist():
            _check_prunable(graph._all_groups[gid], f"layer '{key}'")
        removed_flat[graph.flat_index(atoms[idx])] = True
        for gid in np.unique(gids).tolist():
            touched.setdefault(gid, set()).add(key)
    return _finish(graph, removed_flat, touched)


def group_parts(graph: ChannelGraph) -> list[tuple[int, str, np.ndarray]]:
    """The parts of groups that one tensor carries: `(group id, layer key, channels)`.

    A slice or split of a group (`x[..., :4]`, one output of `ops.split`) or a
    producer owning part of a group (`Concatenate`) must keep a channel: removal
    cannot leave a tensor with no channels. Only proper parts (fewer channels
    than the group) within one group are listed; computed once per graph.
    """
    cached = graph.__dict__.get("_group_parts")
    if cached is not None:
        return cached
    seen, out = set(), []
    for key in graph.order:
        rec = graph.records[key]
        tensors = [rec.produces] if rec.produces is not None else [o for c in rec.calls for o in c.outputs]
        for atoms in tensors:
            if atoms is None or not len(atoms):
                continue
            gids = np.unique(graph.atom_group[atoms])
            if len(gids) != 1:
                continue
            gid = int(gids[0])
            chans = np.unique(graph.atom_channel[atoms])
            if len(chans) < graph.group_sizes[gid] and (gid, chans.tobytes()) not in seen:
                seen.add((gid, chans.tobytes()))
                out.append((gid, key, chans))
    graph.__dict__["_group_parts"] = out
    return out


def _finish(graph: ChannelGraph, removed_flat: np.ndarray, touched: dict[int, set]) -> Plan:
    """Group-wise checks shared by every way of making a plan."""
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
    atom_removed = removed_flat[graph.flat_index(np.arange(len(graph.atom_group)))] if len(graph.atom_group) else (
        np.zeros(0, dtype=bool)
    )
    for gid in removed:  # a producer owning only part of a group (Concatenate) must keep a filter
        for key in graph._all_groups[gid].layers:
            own = graph.records[key].produces
            if own is not None and len(own) and atom_removed[own].all():
                raise PruningError(
                    f"Selection removes all {len(own)} filters of layer '{key}' "
                    f"({type(graph.records[key].layer).__name__}) through group {gid} "
                    f"(selected through {sorted(touched[gid])}); at least one must remain"
                )
    for b in graph.balances:
        if not any(gid in removed for gid in b.groups):
            continue
        counts = b.counts(removed_flat)
        if len(set(counts)) > 1:
            raise PruningError(
                f"{b.reason}: every group must lose the same number of channels, but the selection "
                f"removes {counts} (one count per group); remove whole per-group slots or the same number "
                "from each group"
            )
    if removed:  # a part of a group (`x[..., :4]`, one output of `ops.split`) must keep a channel too
        for gid, key, chans in group_parts(graph):
            if gid in removed and np.isin(chans, removed[gid]).all():
                rec = graph.records[key]
                raise PruningError(
                    f"Selection removes all {len(chans)} channels of group {gid} that the output of '{key}' "
                    f"({type(rec.layer).__name__}) carries; at least one must remain"
                )
    plan = Plan(graph, removed, atom_removed)
    if plan.is_empty:
        log.debug("kerasprune: empty selection, nothing to remove")
    return plan
