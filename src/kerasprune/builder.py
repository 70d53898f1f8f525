"""The analysis state that rules talk to while the graph is walked.

`Builder` owns the channel atoms and the union-find over them, and records, per
layer, what its rule declared (`LayerRecord`: weight slices, the channels of
every call). `ChannelGraph` (in `graph.py`) turns the finished state into groups.
Rules see the rule-facing methods only: `produce`, `expect`, `slice`, `unify`,
`block`, `inexact`, `new_atoms` (see `docs/rules.md`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from kerasprune import _keras, tracing
from kerasprune.errors import describe
from kerasprune.rules.base import Barrier, Chan, NodeView, Rule, WeightSlice, norm_axis
from kerasprune.rules.registry import find_rule
from kerasprune.rules.reshaping import Elementwise
from kerasprune.traversal import run_graph

log = logging.getLogger(__name__)
_ELEMENTWISE = Elementwise()


@dataclass
class CallRecord:
    """The channels of one call of a layer.

    Attributes:
        inputs: Per input tensor, the atoms the rule read along `in_axes[i]`
            (None: the rule did not read that input's channels).
        outputs: Per output tensor, its atoms (None: frozen / barrier output).
        in_axes, out_axes: The channel axis of each input / output (batch included).
    """

    inputs: list
    outputs: list
    in_axes: list
    out_axes: list
    in_shapes: list = field(default_factory=list)
    out_shapes: list = field(default_factory=list)

    def atoms(self) -> list[np.ndarray]:
        """Every known atom array of the call, inputs then outputs."""
        return [a for a in self.inputs + self.outputs if a is not None]


@dataclass
class LayerRecord:
    """What the analysis learned about one layer (internal to kerasprune)."""

    key: str
    layer: Any
    rule: Rule | None
    slices: list[WeightSlice] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    produces: np.ndarray | None = None
    barrier: str | None = None
    parts: dict[str, np.ndarray] = field(default_factory=dict)


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
        self._balance: list[tuple[list[np.ndarray], str]] = []
        self.records: dict[str, LayerRecord] = {}
        self._by_id: dict[int, str] = {}
        self._channelwise = set(channelwise)
        self.order: list[str] = []
        self.nested: dict[str, list] = {}
        #: key of a traced composite layer -> its trace (Functional graph) at each call
        self.traced: dict[str, list] = {}
        self.traced_layers: dict[str, Any] = {}
        self.traced_nodes: dict[str, list] = {}
        self._recreate: dict[int, str | None] = {}

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
    def produce(self, view: NodeView, n: int, part: str | None = None) -> np.ndarray:
        """`n` channels owned by the layer: its filters, or with `part`, another set it owns.

        A part (a `MultiHeadAttention`'s heads) is its own group, selected as
        `'<layer>/<part>'`; its keep mask reaches `rebuild_config` as `io.parts[part]`.
        """
        rec = self.records[view.key]
        if part is None:
            if rec.produces is None:
                rec.produces = self.new_atoms(int(n), owner=view.key)
            return rec.produces
        if part not in rec.parts:
            key = f"{view.key}/{part}"
            rec.parts[part] = self.new_atoms(int(n), owner=key)
            self.records[key] = LayerRecord(key, view.layer, None, produces=rec.parts[part])
        return rec.parts[part]

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
            view.in_axes.append(None)
        view.in_atoms[i] = atoms
        view.in_axes[i] = axis
        return atoms

    def block(self, atoms: np.ndarray, reason: str) -> None:
        if len(atoms):
            self._blocks.append((atoms, reason))

    def inexact(self, atoms: np.ndarray, reason: str) -> None:
        if len(atoms):
            self._inexact.append((atoms, reason))

    def slice(
        self, view: NodeView, index: int, axis: int, atoms: np.ndarray, zero: bool = True, along: int | None = None
    ) -> None:
        """Axis `axis` of `view.layer.weights[index]` is indexed by `atoms` (see `WeightSlice`)."""
        if view.call:
            return
        rank = len(view.layer.weights[index].shape)
        along = None if along is None else norm_axis(along, rank)
        self.records[view.key].slices.append(WeightSlice(index, norm_axis(axis, rank), atoms, zero, along))

    def balance(self, blocks: list[np.ndarray], reason: str) -> None:
        """The channels of every block must lose the same number (a grouped conv's groups).

        `reason` names the layer and says why; a plan that removes unequal numbers is
        refused with it, and `select` removes the same number from every block.
        """
        blocks = [np.asarray(b, dtype=np.int64) for b in blocks]
        if len(blocks) > 1:
            self._balance.append((blocks, reason))

    # -- graph walk ------------------------------------------------------------------
    def walk(self, fn, inputs: list[Chan], prefix: str) -> list[Chan]:
        return run_graph(
            fn, inputs, lambda op, node, ins, pre, env: self.apply(op, node, ins, pre), prefix=prefix, enter=self._enter
        )

    def _enter(self, op, prefix: str, node, ins: list[Chan], inner) -> None:
        """Remember a nested model's (or traced layer's) input channels: its `Input`s must be resized."""
        key = f"{prefix}{op.name}"
        self._by_id.setdefault(id(op), key)
        shapes = [tuple(t.shape) for t in node.input_tensors]
        self.nested.setdefault(key, []).append((shapes, ins))
        if inner is not _keras.functional_of(op):
            self.traced.setdefault(key, []).append(inner)
            self.traced_layers[key] = op
            self.traced_nodes.setdefault(key, []).append(node)

    def apply(self, op, node, ins: list[Chan], prefix: str) -> list[Chan]:
        key = f"{prefix}{op.name}"
        shared = self._by_id.get(id(op))
        rec = self.records.get(key)
        if rec is None:
            rule = _ELEMENTWISE if (op.name in self._channelwise or key in self._channelwise) else find_rule(op)
            rec = self.records[key] = LayerRecord(key, op, rule)
            self._by_id.setdefault(id(op), key)
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
                refused = tracing.refusal(op, node)
                if refused:
                    raise Barrier(f"no pruning rule is registered for this layer type, and it cannot be traced: {refused}")
                raise Barrier(
                    "no pruning rule is registered for this layer type "
                    "(register one with kerasprune.register_rule)"
                )
            if shared is not None and shared != key and getattr(op, "weights", None):
                self._block_record(self.records.get(shared), f"it is also used as '{key}'")
                raise Barrier(f"the same layer object is also used as '{shared}' (shared across nested graphs)")
            if rec.rule.passes_frozen and view.inputs and view.inputs[0].frozen:
                outs = [view.inputs[0]] * len(node.outputs)
            else:
                outs = rec.rule.analyze(view, self)
            if len(outs) != len(node.outputs):
                raise Barrier(f"rule returned {len(outs)} outputs for {len(node.outputs)} tensors")
            for c, t in zip(outs, node.outputs):
                if not c.frozen and (c.axis >= len(t.shape) or t.shape[c.axis] != c.size):
                    raise Barrier(f"rule placed {c.size} channels on axis {c.axis} of shape {t.shape}")
        except Barrier as e:
            return self._barrier(rec, view, e.reason)
        except Exception as e:  # a rule that breaks on this layer must not break the analysis
            log.debug("rule %s failed on %s", type(rec.rule).__name__, key, exc_info=True)
            return self._barrier(rec, view, f"its rule {type(rec.rule).__name__} failed: {type(e).__name__}: {e}")
        if view.call and rec.rule.couples_calls and getattr(op, "weights", None):
            first = rec.calls[0].inputs
            for a, b in zip(first, view.in_atoms):
                if a is not None and b is not None and len(a) == len(b):
                    self.unify(a, b)
        n_in = len(view.inputs)
        pad = lambda xs: (list(xs) + [None] * n_in)[:n_in]  # noqa: E731
        broken = self._cannot_recreate(op)
        if broken:
            who = describe(op) if key == op.name else f"'{key}' ({type(op).__name__})"
            why = f"layer {who} {broken}"
            for atoms in [a for a in view.in_atoms if a is not None] + [c.atoms for c in outs if not c.frozen]:
                self.block(atoms, why)
            if rec.produces is not None:
                self.block(rec.produces, why)
            for s in rec.slices:
                self.block(s.atoms, why)
        rec.calls.append(
            CallRecord(
                pad(view.in_atoms),
                [c.atoms for c in outs],
                pad(view.in_axes),
                [c.axis for c in outs],
                view.in_shapes,
                view.out_shapes,
            )
        )
        return outs

    def _inside(self, key: str) -> str:
        """`, inside traced layer 'a' (Block)` for a layer of a traced composite's graph."""
        outer = key.rsplit("/", 1)[0]
        while outer:
            layer = self.traced_layers.get(outer)
            if layer is not None:
                return f", inside traced layer '{outer}' ({type(layer).__name__})"
            if "/" not in outer:
                break
            outer = outer.rsplit("/", 1)[0]
        return ""

    def _cannot_recreate(self, op) -> str | None:
        """Why `op` cannot be re-created from its config (`from_config(get_config())`), or None.

        Removal re-creates every layer whose channels change; a user's layer whose
        `__init__` does not accept its own `get_config()` keys must be found now, not
        at rebuild time. Only classes outside Keras, and Keras layers without a
        `get_config` of their own, are checked (once per layer).
        """
        if not isinstance(op, keras.layers.Layer):
            return None
        if tracing.is_keras_class(op) and not _keras.uses_auto_config(op):
            return None
        if id(op) not in self._recreate:
            self._recreate[id(op)] = _recreate_error(op)
        return self._recreate[id(op)]

    def _block_record(self, rec: LayerRecord | None, reason: str) -> None:
        if rec is None:
            return
        why = f"layer '{rec.key}' ({type(rec.layer).__name__}) blocks it: {reason}"
        rec.barrier = rec.barrier or why
        for call in rec.calls:
            for atoms in call.atoms():
                self.block(atoms, why)
        if rec.produces is not None:
            self.block(rec.produces, why)

    def _barrier(self, rec: LayerRecord, view: NodeView, why: str) -> list[Chan]:
        reason = f"layer {describe(view.layer)} blocks it: {why}"
        if view.key != view.layer.name:
            reason = f"layer '{view.key}' ({type(view.layer).__name__}{self._inside(view.key)}) blocks it: {why}"
        rec.barrier = rec.barrier or reason
        for c in view.inputs:
            if not c.frozen:
                self.block(c.atoms, reason)
        for own in (rec.produces, *rec.parts.values()):  # made by an earlier call, or before the rule gave up
            if own is not None:
                self.block(own, reason)
        n_in, n_out = len(view.inputs), len(view.out_shapes)
        rec.calls.append(
            CallRecord([None] * n_in, [None] * n_out, [None] * n_in, [None] * n_out, view.in_shapes, view.out_shapes)
        )
        return [Chan(None, None, frozen=reason) for _ in view.out_shapes]


def _recreate_error(layer) -> str | None:
    """Try to re-create `layer` from its config as removal will; describe the failure, if any."""
    try:
        config = _keras.config_of(layer)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"has no usable config (get_config() raised {type(e).__name__}: {first}); implement get_config()"
    try:
        _keras.recreate(layer, config)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return (
            f"cannot be re-created from its config ({type(e).__name__}: {first}); make its __init__ "
            "accept every key of its get_config() (or override from_config)"
        )
    return None


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
