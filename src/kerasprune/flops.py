"""Counting multiply-accumulates (MACs) and parameters, before and after pruning.

Convention: `count_flops` returns **multiply-accumulates for one sample** at the
model's input size (the figure papers quote as "FLOPs" for VGG16 = 15.5 G,
ResNet50 = 3.9 G, MobileNetV2 = 0.30 G). Only layers that multiply by a weight
tensor count: `Conv1D/2D/3D`, `Conv*Transpose`, `DepthwiseConv*`,
`SeparableConv*` (depthwise + pointwise) and `Dense` (on inputs of any rank).
Biases, normalization, activations, pooling and merges are ignored. A layer's
MACs are `positions * kernel.size`: output positions for convolutions, input
positions for transposed convolutions (each input pixel is multiplied by the
whole kernel), leading positions for `Dense`. Layers inside nested models and
every call of a shared layer are counted.

`CostModel` evaluates MACs and parameters of a *pruned* model analytically from
a `ChannelGraph` (a kernel's size is a product of the kept counts along its
channel-indexed axes), so planners can try thousands of candidate removals
without rebuilding a model.

What a layer costs is part of its rule (`Rule.macs`, see `kerasprune.rules`): a
user's own multiplying layer is counted once its rule says so, with no second
registration.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import keras
import numpy as np

from kerasprune import _keras
from kerasprune.errors import PruningError
from kerasprune.rules.registry import find_rule
from kerasprune.traversal import functional_of as _functional
from kerasprune.traversal import run_graph


# -- walking the graph with shapes ------------------------------------------------------
@dataclass(frozen=True)
class Call:
    """One call of a layer, with static shapes (batch dimension included)."""

    key: str
    index: int
    layer: object
    node: object
    in_shapes: list
    out_shapes: list


def iter_calls(model) -> Iterator[Call]:
    """Every layer call of `model` in topological order, nested models expanded.

    Keys and call indices match `ChannelGraph` (`outer/inner` for nested layers).
    Shapes inside nested models are recomputed from the shapes they are called on.

    Raises:
        PruningError: `model` is not a built Functional or Sequential model.
    """
    fn = _functional(model) if isinstance(model, keras.Model) else None
    if fn is None:
        raise PruningError(
            f"kerasprune needs a built Functional or Sequential keras.Model. Received: {type(model).__name__}"
        )
    counter: dict[str, int] = {}
    calls: list[Call] = []

    def call(op, node, ins, prefix, env):
        outs = [tuple(s) for s in _out_shapes(op, node, ins)]
        key = f"{prefix}{op.name}"
        index = counter.get(key, 0)
        counter[key] = index + 1
        calls.append(Call(key, index, op, node, ins, outs))
        return outs

    run_graph(fn, [tuple(t.shape) for t in fn.inputs], call)
    yield from calls


def _known(shape) -> bool:
    return all(d is not None for d in tuple(shape)[1:])


def _out_shapes(op, node, ins: list) -> list:
    recorded = [tuple(t.shape) for t in node.input_tensors]
    if all(tuple(a[1:]) == tuple(b[1:]) for a, b in zip(ins, recorded)):
        outs = [tuple(t.shape) for t in node.outputs]
    else:
        values = {id(t): keras.KerasTensor(s, dtype=t.dtype) for t, s in zip(node.input_tensors, ins)}
        args, kwargs = _keras.fill_in(node, values)
        spec = op.compute_output_spec(*args, **kwargs)
        outs = [tuple(s.shape) for s in keras.tree.flatten(spec)]
    if all(_known(s) for s in outs) or not all(_known(s) for s in ins):
        return outs
    return _concrete_shapes(op, node, ins) or outs


def _concrete_shapes(op, node, ins: list) -> list | None:
    """Output shapes from one call on zeros, for layers that leave an axis unknown although
    their inputs are known (`EinsumDense(output_shape=(None, d))`); None when that fails."""
    try:
        values = {
            id(t): keras.ops.zeros((1, *s[1:]), dtype=t.dtype) for t, s in zip(node.input_tensors, ins)
        }
        args, kwargs = _keras.fill_in(node, values)
        out = keras.tree.flatten(op(*args, **kwargs))
    except Exception:
        return None
    return [(None, *tuple(keras.ops.shape(o))[1:]) for o in out]


def _call_macs(call: Call) -> list[tuple[object, int]]:
    rule = find_rule(call.layer)
    if rule is None:
        return []
    for shape in call.in_shapes[:1] + call.out_shapes[:1]:
        if any(d is None for d in shape[1:]):
            raise PruningError(
                f"Cannot count MACs of layer '{call.key}' ({type(call.layer).__name__}): its shape "
                f"{shape} is not fully known; build the model with a fixed input size"
            )
    try:
        return rule.macs(call.layer, call.in_shapes, call.out_shapes)
    except Exception as e:
        raise PruningError(
            f"Cannot count MACs of layer '{call.key}' ({type(call.layer).__name__}): its rule "
            f"{type(rule).__name__}.macs failed: {type(e).__name__}: {e}"
        ) from e


def flops_by_layer(model) -> dict[str, int]:
    """Multiply-accumulates per layer for one sample (layers with MACs only).

    Args:
        model: A built Functional or Sequential `keras.Model` with static input shapes.

    Returns:
        `{layer key: MACs}`. Keys are layer keys as in `ChannelGraph` (`outer/inner`
        inside nested models); a shared layer's calls are summed.

    Raises:
        PruningError: not a Functional/Sequential model, or a shape is not static.

    Example:
        >>> kerasprune.flops_by_layer(model)["conv2d"]
        884736
    """
    out: dict[str, int] = {}
    for call in iter_calls(model):
        terms = _call_macs(call)
        if terms:
            macs = sum(int(n) * math.prod(int(d) for d in v.shape) for v, n in terms)
            out[call.key] = out.get(call.key, 0) + macs
    return out


def count_flops(model) -> int:
    """Multiply-accumulates (MACs) of `model` for one sample at its input size.

    See the module docstring for the convention (biases and non-multiplying
    layers are ignored; 1 MAC = one multiply + one add).

    Args:
        model: A built Functional or Sequential `keras.Model` with static input shapes.

    Returns:
        The number of MACs (int).

    Raises:
        PruningError: not a Functional/Sequential model, or an input size is unknown.

    Example:
        >>> kerasprune.count_flops(keras.applications.ResNet50(weights=None))
        3864...
    """
    return int(sum(flops_by_layer(model).values()))


def count_params(model) -> int:
    """Number of scalars in all of `model`'s weights (trainable or not, each counted once).

    Args:
        model: Any built `keras.Model` (or layer).

    Returns:
        The parameter count (int); a variable shared by several layers counts once.

    Raises:
        AttributeError: `model` has no `weights` (not a Keras model or layer).

    Example:
        >>> kerasprune.count_params(model) == model.count_params()
        True
    """
    seen: dict[int, int] = {}
    for v in model.weights:
        seen[id(v)] = math.prod(int(d) for d in v.shape)
    return int(sum(seen.values()))


# -- analytic cost of a pruned model ----------------------------------------------------
class CostModel:
    """MACs and parameters of `graph.model` after removing channels, without rebuilding.

    Channels are addressed by their *flat* index `graph.group_offsets[gid] + channel`.
    Each weight (or each MAC term) is `coef * prod(kept positions along each
    channel-indexed axis)`.
    """

    def __init__(self, graph):
        self.graph = graph
        self.n_channels = graph.n_channels
        self.params_before = count_params(graph.model)
        self.flops_before = 0
        var_axes: dict[int, list[np.ndarray]] = {}
        p_terms = []
        for key in graph.order:
            rec = graph.records[key]
            for i, v in enumerate(_keras.weights_of(rec.layer)):
                axes = [self._flat(s.atoms.reshape(-1)) for s in rec.slices if s.index == i]
                var_axes.setdefault(id(v), axes)
                if axes:
                    p_terms.append((math.prod(int(d) for d in v.shape), axes))
        f_terms = []
        for call in iter_calls(graph.model):
            for v, n in _call_macs(call):
                size = int(n) * math.prod(int(d) for d in v.shape)
                self.flops_before += size
                axes = var_axes.get(id(v), [])
                if axes:
                    f_terms.append((size, axes))
        self._params = self._compile(p_terms)
        self._flops = self._compile(f_terms)

    def _flat(self, atoms: np.ndarray) -> np.ndarray:
        return self.graph.flat_index(atoms)

    @staticmethod
    def _compile(terms):
        idx, seg, lengths, term_of_seg = [], [], [], []
        sizes = np.array([t[0] for t in terms], dtype=np.float64)
        for t, (_, axes) in enumerate(terms):
            for a in axes:
                seg.append(np.full(len(a), len(lengths), dtype=np.int64))
                idx.append(a)
                lengths.append(len(a))
                term_of_seg.append(t)
        if not terms:
            return None
        return (
            sizes,
            np.concatenate(idx),
            np.concatenate(seg),
            np.asarray(lengths, dtype=np.float64),
            np.asarray(term_of_seg, dtype=np.int64),
        )

    @staticmethod
    def _eval(compiled, removed: np.ndarray) -> float:
        """Total reduction of the terms for boolean `removed` over flat channels."""
        if compiled is None:
            return 0.0
        sizes, idx, seg, lengths, term_of_seg = compiled
        gone = np.bincount(seg, weights=removed[idx].astype(np.float64), minlength=len(lengths))
        frac = (lengths - gone) / lengths
        kept = np.ones(len(sizes))
        np.multiply.at(kept, term_of_seg, frac)
        return float(np.sum(sizes * (1.0 - kept)))

    def flops(self, removed: np.ndarray) -> int:
        """MACs after removing the flat channels where `removed` is True."""
        return int(round(self.flops_before - self._eval(self._flops, removed)))

    def params(self, removed: np.ndarray) -> int:
        """Parameters after removing the flat channels where `removed` is True."""
        return int(round(self.params_before - self._eval(self._params, removed)))
