"""The channel-dependency graph: which channels of a model must go together.

`analyze(model)` walks the model's symbolic graph once, in topological order,
asking each layer's rule how it moves channels. Channels are atoms (integer
ids, one per filter of each producer); couplers unify atoms in a union-find,
and producers whose atoms meet form one *group*. A group's channels are the
classes of unified atoms, numbered in the order of the group's first producer.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import keras
import numpy as np

from kerasprune import _keras
from kerasprune import rules as _rules  # noqa: F401  (registers the built-in rules)
from kerasprune.builder import Builder, CallRecord, LayerRecord
from kerasprune.errors import PruningError, SelectionError, describe
from kerasprune.rules.base import Chan, WeightSlice
from kerasprune.traversal import functional_of, run_graph

__all__ = ["Balance", "CallRecord", "ChannelGraph", "Group", "LayerRecord", "analyze", "graph_for", "functional_of", "run_graph"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Balance:
    """Blocks of channels that must lose the same number of channels each.

    Attributes:
        blocks: Flat channel indices of each block (see `ChannelGraph.flat_index`).
        groups: Ids of the groups the blocks' channels belong to.
        reason: Which layer asks for it, and why.
    """

    blocks: tuple[np.ndarray, ...]
    groups: tuple[int, ...]
    reason: str

    def counts(self, removed_flat: np.ndarray) -> list[int]:
        """Channels each block loses under a flat removal mask."""
        return [int(np.count_nonzero(removed_flat[b])) for b in self.blocks]


@dataclass(frozen=True)
class Group:
    """A set of coupled channels that can only be removed together.

    Attributes:
        id: Index in `ChannelGraph.groups`.
        layers: Names of the layers whose filters/units are these channels,
            in topological order (every producer of a residual stream).
        size: Number of channels.
        prunable: Whether channels of this group may be removed.
        reason: Why not, naming the blocking layer; `None` when prunable.
        exact: Whether removal computes exactly what masking computes.
        approx_reason: Why not exact (the normalizing layer), or `None`.
        members: Every layer with weights indexed by these channels.
    """

    id: int
    layers: tuple[str, ...]
    size: int
    prunable: bool
    reason: str | None
    exact: bool
    approx_reason: str | None = None
    members: tuple[str, ...] = ()

    def __str__(self) -> str:
        state = "prunable" if self.prunable else f"blocked: {self.reason}"
        if self.prunable and not self.exact:
            state += f" (approximate: {self.approx_reason})"
        return f"group {self.id}: {self.size} channels, {', '.join(self.layers)} [{state}]"


class ChannelGraph:
    """The result of `analyze`: groups of coupled channels and how layers use them.

    Attributes:
        model: The analyzed model (never modified by kerasprune).
        groups: Every group with at least one producer, in topological order.
        options: The analysis options (`channelwise`); `analyze(other, **graph.options)`
            analyzes another model (e.g. the pruned one) the same way.
    """

    def __init__(self, model, builder: Builder, options: dict | None = None):
        self.model = model
        self.options = dict(options or {})
        self.records = builder.records
        self.nested = builder.nested
        self.traced = builder.traced
        self.traced_nodes = builder.traced_nodes
        self.order = tuple(builder.order)
        self._by_id = builder._by_id
        n = len(builder._atom_parent)
        self.atom_root, space_root = builder.roots()
        atom_space_root = space_root[np.asarray(builder._atom_space, dtype=np.int64)] if n else space_root[:0]
        # Public groups: space roots owning at least one producer, in creation order.
        owners: dict[int, list[str]] = {}
        for s, owner in enumerate(builder._space_owner):
            if owner is not None:
                owners.setdefault(int(space_root[s]), []).append(owner)
        roots = sorted(set(space_root.tolist()))
        public = [r for r in roots if r in owners]
        hidden = [r for r in roots if r not in owners]
        gid_of_root = {r: i for i, r in enumerate(public + hidden)}
        self.n_public = len(public)
        gid_by_root = np.full(len(space_root), -1, dtype=np.int64)
        gid_by_root[np.fromiter(gid_of_root, np.int64, len(gid_of_root))] = np.arange(len(gid_of_root))
        self.atom_group = gid_by_root[atom_space_root]
        # Channel index: rank of the atom's root among its group's roots.
        uroots = np.unique(self.atom_root)
        ugroup = self.atom_group[uroots]
        order = np.lexsort((uroots, ugroup))
        sizes = np.bincount(ugroup, minlength=len(roots))
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        chan_of_root = np.empty(n, dtype=np.int64)
        sorted_groups = ugroup[order]
        chan_of_root[uroots[order]] = np.arange(len(uroots)) - offsets[sorted_groups]
        self.atom_channel = chan_of_root[self.atom_root] if n else chan_of_root
        self.group_offsets = offsets
        self.group_sizes = sizes
        reasons: dict[int, str] = {}
        for atoms, why in builder._blocks:
            for gid in np.unique(self.atom_group[atoms]).tolist():
                reasons.setdefault(gid, why)
        approx: dict[int, str] = {}
        for atoms, why in builder._inexact:
            for gid in np.unique(self.atom_group[atoms]).tolist():
                approx.setdefault(gid, why)
        members: dict[int, list[str]] = {}
        for key in self.order:
            for s in self.records[key].slices:
                for gid in np.unique(self.atom_group[s.atoms]).tolist():
                    lst = members.setdefault(gid, [])
                    if not lst or lst[-1] != key:
                        lst.append(key)
        self._all_groups = tuple(
            Group(
                id=gid,
                layers=tuple(dict.fromkeys(owners.get(r, []))),
                size=int(sizes[gid]),
                prunable=gid not in reasons,
                reason=reasons.get(gid),
                exact=gid not in approx,
                approx_reason=approx.get(gid),
                members=tuple(dict.fromkeys(members.get(gid, []))),
            )
            for r, gid in gid_of_root.items()
        )
        self._all_groups = tuple(sorted(self._all_groups, key=lambda g: g.id))
        self.groups = self._all_groups[: self.n_public]
        self.balances: tuple[Balance, ...] = tuple(
            Balance(
                tuple(self.flat_index(b) for b in blocks),
                tuple(sorted(set(np.unique(self.atom_group[np.concatenate(blocks)]).tolist()))),
                why,
            )
            for blocks, why in builder._balance
        )

    # -- lookups ---------------------------------------------------------------------
    def key_of(self, layer) -> str:
        """The graph's name for `layer` (a layer object or a name).

        Nested layers are named `outer/inner`; the bare inner name works when
        it is unique.

        Raises:
            SelectionError: no such layer in the model.
        """
        if not isinstance(layer, str):
            key = self._by_id.get(id(layer))
            if key is None:
                raise SelectionError(f"Layer {describe(layer)} is not part of model '{self.model.name}'")
            return key
        if layer in self.records:
            return layer
        matches = [k for k in self.records if k.rsplit("/", 1)[-1] == layer]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise SelectionError(f"Layer name '{layer}' is ambiguous; use one of {matches}")
        near = difflib.get_close_matches(layer, list(self.records), n=3, cutoff=0.6)
        near += [k for k in self.records if layer.lower() in k.lower() and k not in near][: 5 - len(near)]
        hint = f" Did you mean {' or '.join(repr(k) for k in near)}?" if near else ""
        raise SelectionError(f"Unknown layer '{layer}' in model '{self.model.name}'.{hint}")

    def layer(self, key: str):
        return self.records[self.key_of(key)].layer

    def output_atoms(self, layer) -> np.ndarray:
        """Atoms of `layer`'s output channels (its filters or units).

        Raises:
            SelectionError: the layer has no channels of its own to select.
        """
        key = self.key_of(layer)
        rec = self.records[key]
        if rec.barrier:
            raise SelectionError(f"Cannot select channels of {rec.barrier}")
        outs = [c.outputs[0] for c in rec.calls if c.outputs and c.outputs[0] is not None]
        if rec.produces is not None:
            return rec.produces
        if not outs:
            raise SelectionError(f"Layer '{key}' ({type(rec.layer).__name__}) has no output channels to select")
        if any(not np.array_equal(self.atom_root[o], self.atom_root[outs[0]]) for o in outs[1:]):
            raise SelectionError(
                f"Layer '{key}' ({type(rec.layer).__name__}) is called on different channels at "
                "different nodes; select on the layers that produce them"
            )
        return outs[0]

    def group_of(self, layer) -> Group:
        """The group holding `layer`'s output channels (one group expected)."""
        atoms = self.output_atoms(layer)
        gids = np.unique(self.atom_group[atoms])
        if len(gids) != 1:
            raise SelectionError(
                f"Layer '{self.key_of(layer)}' outputs channels of {len(gids)} groups {gids.tolist()}"
            )
        return self._all_groups[int(gids[0])]

    def channels_of(self, layer) -> tuple[np.ndarray, np.ndarray]:
        """(group id, channel index) of each output position of `layer`."""
        atoms = self.output_atoms(layer)
        return self.atom_group[atoms], self.atom_channel[atoms]

    @property
    def n_channels(self) -> int:
        """Number of channels of all groups together (the length of a flat channel mask)."""
        return int(self.group_sizes.sum())

    def flat_index(self, atoms: np.ndarray) -> np.ndarray:
        """The *flat* channel index of each atom: `group_offsets[group] + channel`.

        Flat indices number the channels of every group in one range
        (`0 .. n_channels - 1`); plans, cost models and criteria address channels by them.
        """
        return self.group_offsets[self.atom_group[atoms]] + self.atom_channel[atoms]

    def consumers(self):
        """Every call of a layer that reads channels through weights (a conv, a dense layer).

        Yields `(layer key, call index, input atoms, input channel axis)` in topological
        order, for calls whose first input has known channels and whose rule declares MACs.
        """
        for key in self.order:
            rec = self.records[key]
            if rec.barrier or rec.rule is None:
                continue
            for i, call in enumerate(rec.calls):
                atoms = call.inputs[0] if call.inputs else None
                if atoms is None or call.in_axes[0] is None:
                    continue
                if _reads_channels(rec, call):
                    yield key, i, atoms, call.in_axes[0]

    def balances_of(self, group: Group | int) -> tuple[Balance, ...]:
        """The balance constraints that involve `group`'s channels."""
        gid = group if isinstance(group, int) else group.id
        return tuple(b for b in self.balances if gid in b.groups)

    def slices(self, group: Group | int) -> list[tuple[str, WeightSlice, np.ndarray]]:
        """Weights indexed by `group`'s channels: (layer key, slice, channel per position or -1)."""
        gid = group if isinstance(group, int) else group.id
        out = []
        for key in self._all_groups[gid].members:
            for s in self.records[key].slices:
                sel = self.atom_group[s.atoms] == gid
                if sel.any():
                    out.append((key, s, np.where(sel, self.atom_channel[s.atoms], -1)))
        return out

    @property
    def prunable_groups(self) -> tuple[Group, ...]:
        return tuple(g for g in self.groups if g.prunable)

    # -- display ---------------------------------------------------------------------
    def summary(self) -> str:
        """A readable table of the groups."""
        lines = [
            f"ChannelGraph of '{self.model.name}': {len(self.groups)} groups, "
            f"{len(self.prunable_groups)} prunable, "
            f"{sum(1 for g in self.prunable_groups if not g.exact)} approximate"
        ]
        for g in self.groups:
            lines.append(f"  {g}")
        return "\n".join(lines)

    __str__ = summary

    def __repr__(self) -> str:
        return f"<ChannelGraph '{self.model.name}': {len(self.groups)} groups>"


def _reads_channels(rec: LayerRecord, call: CallRecord) -> bool:
    """Whether a call multiplies its input by weights (its rule declares MACs for it)."""
    fix = lambda shapes: [tuple(1 if d is None else d for d in s) for s in shapes]  # noqa: E731
    try:
        return bool(rec.rule.macs(rec.layer, fix(call.in_shapes), fix(call.out_shapes)))
    except Exception:  # a user rule that cannot cost this call: not a consumer
        return False


def analyze(model, *, channelwise: Iterable[str] = ()) -> ChannelGraph:
    """Build the channel-dependency graph of a Keras model.

    The model is only read. Sequential and Functional models are supported,
    including nested models and shared layers.

    Args:
        model: A built `keras.Model` (Functional or Sequential).
        channelwise: Names of layers (e.g. `Lambda`s) to treat as element-wise,
            channel-preserving operations.

    Returns:
        A `ChannelGraph`; `graph.groups` lists every coupled set of channels.

    Raises:
        PruningError: the model is not a built Functional/Sequential model.

    Example:
        >>> graph = kerasprune.analyze(model)
        >>> print(graph.summary())
    """
    fn = functional_of(model) if isinstance(model, keras.Model) else None
    if fn is None:
        raise PruningError(
            f"kerasprune needs a built Functional or Sequential keras.Model. Received: {type(model).__name__}"
        )
    channelwise = tuple(channelwise)
    b = Builder(channelwise)
    ins = [Chan(None, None, frozen=f"channels come from model input '{t.name}'") for t in fn.inputs]
    outs = b.walk(fn, ins, "")
    for c, t in zip(outs, fn.outputs):
        if not c.frozen:
            op = _keras.producer_of(t)
            name = t.name if op is None else op.name
            b.block(c.atoms, f"channels reach the model output (layer '{name}')")
    graph = ChannelGraph(model, b, {"channelwise": channelwise} if channelwise else {})
    log.debug("analyzed %s: %d groups", model.name, len(graph.groups))
    return graph


def graph_for(model, graph: ChannelGraph | None = None, **options) -> ChannelGraph:
    """`graph` when it was built for `model`, else `analyze(model, **options)`.

    The one place every entry point (`select`, `remove_filters`, `mask_filters`, the
    workflow functions) turns "a model and maybe its graph" into a graph.

    Raises:
        PruningError: `graph` was built for another model, or `options` contradict it.
    """
    if graph is None:
        return analyze(model, **options)
    if graph.model is not model:
        raise PruningError(
            f"The graph was built for a different model ('{graph.model.name}', not "
            f"'{getattr(model, 'name', model)}'); analyze this model or pass its own graph"
        )
    given = {k: tuple(v) for k, v in options.items() if v}
    if given and any(tuple(graph.options.get(k, ())) != v for k, v in given.items()):
        raise PruningError(f"Options {given} differ from those the graph was built with: {graph.options}")
    return graph
