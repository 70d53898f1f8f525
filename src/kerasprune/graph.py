"""The channel-dependency graph: which channels of a model must go together.

`analyze(model)` walks the model's symbolic graph once, in topological order,
asking each layer's rule how it moves channels. Channels are atoms (integer
ids, one per filter of each producer); couplers unify atoms in a union-find,
and producers whose atoms meet form one *group*. A group's channels are the
classes of unified atoms, numbered in the order of the group's first producer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from kerasprune import _keras
from kerasprune import rules as _rules  # noqa: F401  (registers the built-in rules)
from kerasprune.errors import PruningError, SelectionError, describe
from kerasprune.rules.base import Barrier, Chan, NodeView, Rule, WeightSlice, norm_axis
from kerasprune.rules.registry import find_rule
from kerasprune.rules.reshaping import Elementwise

log = logging.getLogger(__name__)
_ELEMENTWISE = Elementwise()


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


@dataclass
class LayerRecord:
    """What the analysis learned about one layer (internal to kerasprune)."""

    key: str
    layer: Any
    rule: Rule | None
    slices: list[WeightSlice] = field(default_factory=list)
    calls: list[tuple[list, list, list, list]] = field(default_factory=list)
    produces: np.ndarray | None = None
    barrier: str | None = None


class Builder:
    """The analysis state that rules talk to (see `kerasprune.rules.base`)."""

    def __init__(self, channelwise: Iterable[str] = ()):
        self._atom_parent: list[int] = []
        self._atom_space: list[int] = []
        self._space_parent: list[int] = []
        self._space_owner: list[str | None] = []
        self._blocks: list[tuple[np.ndarray, str]] = []
        self._inexact: list[tuple[np.ndarray, str]] = []
        self._pairs: list[tuple[np.ndarray, np.ndarray]] = []
        self.records: dict[str, LayerRecord] = {}
        self._by_id: dict[int, str] = {}
        self._channelwise = set(channelwise)
        self.order: list[str] = []
        self.nested: dict[str, list] = {}

    # -- union-find ------------------------------------------------------------------
    def new_atoms(self, n: int, owner: str | None = None, blocked: str | None = None) -> np.ndarray:
        start = len(self._atom_parent)
        space = len(self._space_parent)
        self._space_parent.append(space)
        self._space_owner.append(owner)
        self._atom_parent.extend(range(start, start + n))
        self._atom_space.extend([space] * n)
        atoms = np.arange(start, start + n, dtype=np.int64)
        if blocked:
            self._blocks.append((atoms, blocked))
        return atoms

    @staticmethod
    def _find(parent: list[int], x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        """Declare channel `a[i]` and `b[i]` to be the same channel, for every i."""
        if len(a) != len(b):  # pragma: no cover - rules check shapes first
            raise Barrier(f"cannot couple {len(a)} channels with {len(b)}")
        # Recorded now, resolved at once (vectorized) by `roots()`: nothing asks
        # for a root during the walk.
        self._pairs.append((np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)))

    def roots(self) -> tuple[np.ndarray, np.ndarray]:
        """Root (smallest member) of every atom's class and of every space's class."""
        n = len(self._atom_parent)
        if self._pairs:
            a = np.concatenate([p[0] for p in self._pairs])
            b = np.concatenate([p[1] for p in self._pairs])
        else:
            a = b = np.zeros(0, dtype=np.int64)
        space = np.asarray(self._atom_space, dtype=np.int64)
        return _components(n, a, b), _components(len(self._space_parent), space[a], space[b])

    # -- rule-facing API -------------------------------------------------------------
    def produce(self, view: NodeView, n: int) -> np.ndarray:
        rec = self.records[view.key]
        if rec.produces is None:
            rec.produces = self.new_atoms(int(n), owner=view.key)
        return rec.produces

    def expect(self, view: NodeView, i: int, axis: int) -> np.ndarray:
        """Atoms of input `i` along `axis`; a barrier if channels are elsewhere."""
        c = view.inputs[i]
        shape = view.in_shapes[i]
        axis = norm_axis(axis, len(shape))
        if not 0 < axis < len(shape):
            raise Barrier(f"expects channels on axis {axis} of a rank-{len(shape)} input")
        if c.frozen:
            n = shape[axis]
            if n is None:
                raise Barrier(f"channel dimension of input {i} is not static")
            atoms = self.new_atoms(int(n), blocked=c.frozen)
        elif c.axis != axis and not (c.size == 1 and shape[axis] == 1 and shape[c.axis] == 1):
            # (a single channel on a size-1 axis sits on every size-1 axis, e.g. `(N, 1, 1)`)
            raise Barrier(f"expects channels on axis {axis}, but they are on axis {c.axis}")
        else:
            atoms = c.atoms
        while len(view.in_atoms) <= i:
            view.in_atoms.append(None)
        view.in_atoms[i] = atoms
        return atoms

    def block(self, atoms: np.ndarray, reason: str) -> None:
        if len(atoms):
            self._blocks.append((atoms, reason))

    def inexact(self, atoms: np.ndarray, reason: str) -> None:
        if len(atoms):
            self._inexact.append((atoms, reason))

    def slice(self, view: NodeView, index: int, axis: int, atoms: np.ndarray, zero: bool = True) -> None:
        if view.call:
            return
        rank = len(view.layer.weights[index].shape)
        self.records[view.key].slices.append(WeightSlice(index, norm_axis(axis, rank), atoms, zero))

    # -- graph walk ------------------------------------------------------------------
    def walk(self, fn, inputs: list[Chan], prefix: str) -> list[Chan]:
        return run_graph(
            fn, inputs, lambda op, node, ins, pre, env: self.apply(op, node, ins, pre), prefix=prefix, enter=self._enter
        )

    def _enter(self, op, prefix: str, node, ins: list[Chan]) -> None:
        """Remember a nested model's input channels: its `Input`s must be resized."""
        key = f"{prefix}{op.name}"
        self._by_id.setdefault(id(op), key)
        shapes = [tuple(t.shape) for t in node.input_tensors]
        self.nested.setdefault(key, []).append((shapes, ins))

    def apply(self, op, node, ins: list[Chan], prefix: str) -> list[Chan]:
        key = f"{prefix}{op.name}"
        rec = self.records.get(key)
        if rec is None:
            rule = _ELEMENTWISE if (op.name in self._channelwise or key in self._channelwise) else find_rule(op)
            rec = self.records[key] = LayerRecord(key, op, rule)
            self._by_id[id(op)] = key
            self.order.append(key)
        view = NodeView(
            layer=op,
            key=key,
            inputs=ins,
            in_shapes=[tuple(t.shape) for t in node.input_tensors],
            out_shapes=[tuple(t.shape) for t in node.outputs],
            node=node,
            call=len(rec.calls),
        )
        try:
            if rec.rule is None:
                raise Barrier(
                    "no pruning rule is registered for this layer type "
                    "(register one with kerasprune.register_rule)"
                )
            outs = rec.rule.analyze(view, self)
            if len(outs) != len(node.outputs):
                raise Barrier(f"rule returned {len(outs)} outputs for {len(node.outputs)} tensors")
            for c, t in zip(outs, node.outputs):
                if not c.frozen and (c.axis >= len(t.shape) or t.shape[c.axis] != c.size):
                    raise Barrier(f"rule placed {c.size} channels on axis {c.axis} of shape {t.shape}")
        except Barrier as e:
            return self._barrier(rec, view, e.reason)
        if view.call and rec.rule.couples_calls and getattr(op, "weights", None):
            first = rec.calls[0][0]
            for a, b in zip(first, view.in_atoms):
                if a is not None and b is not None and len(a) == len(b):
                    self.unify(a, b)
        rec.calls.append(
            (list(view.in_atoms), [c.atoms for c in outs], [None] * 0, [c.axis for c in outs])
        )
        return outs

    def _barrier(self, rec: LayerRecord, view: NodeView, why: str) -> list[Chan]:
        reason = f"layer {describe(view.layer)} blocks it: {why}"
        if view.key != view.layer.name:
            reason = f"layer '{view.key}' ({type(view.layer).__name__}) blocks it: {why}"
        rec.barrier = rec.barrier or reason
        for c in view.inputs:
            if not c.frozen:
                self.block(c.atoms, reason)
        rec.calls.append(([None] * len(view.inputs), [None] * len(view.out_shapes), [], []))
        return [Chan(None, None, frozen=reason) for _ in view.out_shapes]


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of `n` nodes joined by edges `a[i] - b[i]`.

    Returns each node's root: the smallest node of its component (what a
    union-find that always links the larger root under the smaller gives).
    Vectorized hook-and-jump: roots of every edge's ends are hooked under the
    smaller one, then pointers are jumped until every node points at a root.
    """
    parent = np.arange(n, dtype=np.int64)
    if not len(a):
        return parent
    while True:
        pa, pb = parent[a], parent[b]
        lo, hi = np.minimum(pa, pb), np.maximum(pa, pb)
        differ = lo != hi
        if not differ.any():
            return parent
        np.minimum.at(parent, hi[differ], lo[differ])
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


def run_graph(fn, values: list, call, *, prefix: str = "", enter=None) -> list:
    """Walk a Functional graph node by node in topological order, nested models expanded.

    The one traversal shared by the analysis, the FLOPs counter and the activation
    runner of the data-driven criteria; each tracks its own kind of value per tensor
    (channels, shapes, tensors).

    Args:
        fn: A Functional graph (`Functional` model or a Sequential's `_functional`).
        values: One value per input of `fn`.
        call: `call(op, node, input_values, prefix, env) -> output values` for every
            layer/operation call (`env` maps `id(tensor)` to its value so far).
        prefix: Key prefix of the layers of `fn` (`outer/` inside nested models).
        enter: Optional `enter(model, prefix, node, input_values)`, told before a
            nested model is walked.

    Returns:
        The values of `fn`'s outputs.
    """
    env = {id(t): v for t, v in zip(fn.inputs, values)}
    for node in _keras.nodes_in_order(fn):
        op = node.operation
        if op is None or node.is_input or any(id(t) not in env for t in node.input_tensors):
            continue
        ins = [env[id(t)] for t in node.input_tensors]
        inner = functional_of(op)
        if inner is not None:
            if enter is not None:
                enter(op, prefix, node, ins)
            outs = run_graph(inner, ins, call, prefix=f"{prefix}{op.name}/", enter=enter)
        else:
            outs = call(op, node, ins, prefix, env)
        for t, v in zip(node.outputs, outs):
            env[id(t)] = v
    return [env[id(t)] for t in fn.outputs]


def functional_of(op):
    """The Functional graph behind a nested model, or None for a plain layer.

    Raises:
        PruningError: `op` is a Sequential model that was never built.
    """
    try:
        return _keras.functional_of(op)
    except ValueError as e:
        raise PruningError(str(e)) from None


class ChannelGraph:
    """The result of `analyze`: groups of coupled channels and how layers use them.

    Attributes:
        model: The analyzed model (never modified by kerasprune).
        groups: Every group with at least one producer, in topological order.
    """

    def __init__(self, model, builder: Builder):
        self.model = model
        self.records = builder.records
        self.nested = builder.nested
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
        near = [k for k in self.records if layer.lower() in k.lower()][:5]
        hint = f" Similar: {near}." if near else ""
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
        outs = [c[1][0] for c in rec.calls if c[1] and c[1][0] is not None]
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
    b = Builder(channelwise)
    ins = [Chan(None, None, frozen=f"channels come from model input '{t.name}'") for t in fn.inputs]
    outs = b.walk(fn, ins, "")
    for c, t in zip(outs, fn.outputs):
        if not c.frozen:
            op = _keras.producer_of(t)
            name = t.name if op is None else op.name
            b.block(c.atoms, f"channels reach the model output (layer '{name}')")
    graph = ChannelGraph(model, b)
    log.debug("analyzed %s: %d groups", model.name, len(graph.groups))
    return graph
