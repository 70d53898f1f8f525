"""Rules for attention: `MultiHeadAttention`, `EinsumDense`, `Attention`, `AdditiveAttention`.

`MultiHeadAttention` (Keras 3) projects its inputs with four `EinsumDense`
sublayers: query and key kernels `(dim, num_heads, key_dim)`, value kernel
`(dim, num_heads, value_dim)`, biases `(num_heads, key_dim|value_dim)`, and the
output kernel `(num_heads, value_dim, *output_shape)` with a bias `output_shape`
(`use_gate=True` adds a gate kernel shaped like the value's). It owns four sets
of channels, each a group:

- its output channels (the last axis of `output_shape`; by default the query's
  width): selected on the layer itself, `{"mha": [...]}`. A rebuilt layer states
  `output_shape` explicitly, so the output need not keep the query's width.
- `"<layer>/heads"`: head `h` is a unit across the query, key, value (and gate)
  projections and the output projection's first axis.
- `"<layer>/key_dim"`: position `p` of every head's query and key. Removing one
  changes the `1/sqrt(key_dim)` scale of the scores; the rebuilt layer's query
  kernel and bias are multiplied by `sqrt(new_key_dim / key_dim)`, so it computes
  exactly what the masked layer computes.
- `"<layer>/value_dim"`: position `p` of every head's value and the output
  projection's second axis. When `value_dim == key_dim` (the default) the two
  are one group, `"<layer>/key_dim"`: Keras's JAX backend cannot run a layer
  whose sizes differ (`KERAS_JAX_HEAD_DIMS`), so a pruned layer keeps them equal.

Its `query`, `value` and `key` inputs are consumed through the kernels' first
axis, like `Dense` inputs. The attention scores (`return_attention_scores`)
carry the heads. MACs: the four projections, plus the score product
(`queries x keys x heads x key_dim`) and the weighted sum (`... x value_dim`),
counted through the query and value biases, which have exactly `heads x key_dim`
and `heads x value_dim` entries (without biases these two products are not counted).
"""

from __future__ import annotations

import math
import re

import numpy as np
from keras import layers

from kerasprune import _keras
from kerasprune.rules.arguments import argument_roles, roles_for_shapes
from kerasprune.rules.base import Barrier, Chan, NodeIO, NodeView, Rule, kept, weight_index
from kerasprune.rules.registry import register_many, register_rule

#: Keras 3.15.1, JAX backend: `MultiHeadAttention` fails ("cannot reshape array") when
#: `key_dim != value_dim` (its fused attention assumes one head size). A layer with equal
#: sizes (the default) keeps them equal: its key_dim and value_dim positions are one group.
KERAS_JAX_HEAD_DIMS = "keras==3.15.1 JAX backend MultiHeadAttention needs key_dim == value_dim"

_MHA_METHODS = ("call", "_compute_attention", "_masked_softmax", "build", "_make_output_dense")


def _prod(dims) -> int:
    return math.prod(int(d) for d in dims)


def _check_dense(sub, owner: str) -> None:
    if getattr(sub, "lora_enabled", False) or getattr(sub, "lora_rank", None):
        raise Barrier(f"its {owner} projection has LoRA enabled")
    if getattr(sub, "quantization_mode", None):
        raise Barrier(f"its {owner} projection is quantized")


def _projections(layer) -> dict:
    """The layer's `EinsumDense` projections by role (the gate only with `use_gate=True`)."""
    subs = {"query": layer.query_dense, "key": layer.key_dense, "value": layer.value_dense}
    subs["output"] = layer.output_dense
    gate = _keras.attention_gate(layer)
    if gate is not None:
        subs["gate"] = gate
    return subs


class MultiHeadAttentionRule(Rule):
    """`MultiHeadAttention`: output channels, heads, key_dim and value_dim (see the module docstring)."""

    def analyze(self, view: NodeView, g) -> list[Chan]:
        layer = view.layer
        for name in _MHA_METHODS:
            if getattr(type(layer), name) is not getattr(layers.MultiHeadAttention, name):
                raise Barrier(
                    f"it overrides MultiHeadAttention.{name}; kerasprune cannot know how it uses heads "
                    "(register a rule for it)"
                )
        subs = _projections(layer)
        for owner, sub in subs.items():
            _check_dense(sub, owner)
        roles = argument_roles(view.node, layer)
        where = {r: i for i, r in reversed(list(enumerate(roles)))}
        if "query" not in where or "value" not in where:
            raise Barrier("its query and value inputs cannot be told apart")
        q_i, v_i = where["query"], where["value"]
        k_i = where.get("key", v_i)
        reads = {}
        for role, i in (("query", q_i), ("value", v_i), ("key", k_i)):
            reads[role] = g.expect(view, i, len(view.in_shapes[i]) - 1)
        for i, role in enumerate(roles):
            if i not in (q_i, v_i, k_i) and not view.inputs[i].frozen:
                g.block(view.inputs[i].atoms, f"'{view.key}' reads this tensor as its {role!r} argument")
        out_shape = view.out_shapes[0]
        scores_axis = len(view.in_shapes[q_i]) - len(layer.attention_axes) - 1
        if len(view.out_shapes) > 1:  # attention scores: (batch, ..., heads, queries..., keys...)
            scores = view.out_shapes[1]
            if not 0 < scores_axis < len(scores) or scores[scores_axis] != layer.num_heads:
                raise Barrier(f"its attention scores {scores} do not hold the heads on axis {scores_axis}")
        heads = g.produce(view, layer.num_heads, part="heads")
        key_dim = g.produce(view, layer.key_dim, part="key_dim")
        if layer.value_dim == layer.key_dim:  # see KERAS_JAX_HEAD_DIMS
            value_dim = key_dim
        else:
            value_dim = g.produce(view, layer.value_dim, part="value_dim")
        out = g.produce(view, int(out_shape[-1]))
        per_head = {"query": key_dim, "key": key_dim, "value": value_dim, "gate": value_dim}
        for owner, sub in subs.items():
            k, b = weight_index(layer, sub.kernel), sub.bias
            if owner == "output":
                g.slice(view, k, 0, heads)
                g.slice(view, k, 1, value_dim)
                g.slice(view, k, -1, out)
                if b is not None:
                    g.slice(view, weight_index(layer, b), -1, out)
                continue
            g.slice(view, k, 0, reads["query" if owner == "gate" else owner])
            g.slice(view, k, 1, heads)
            g.slice(view, k, 2, per_head[owner])
            if b is not None:
                g.slice(view, weight_index(layer, b), 0, heads)
                g.slice(view, weight_index(layer, b), 1, per_head[owner])
        return [Chan(len(out_shape) - 1, out)] + [Chan(scores_axis, heads) for _ in view.out_shapes[1:]]

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        new = dict(config)
        for part, key in (("heads", "num_heads"), ("key_dim", "key_dim"), ("value_dim", "value_dim")):
            if part in io.parts:
                new[key] = kept(io.parts[part])
        if "value_dim" not in io.parts and "key_dim" in io.parts:
            new["value_dim"] = new["key_dim"]
        n = kept(io.outputs[0])
        if n is not None:
            shape = list(config.get("output_shape") or [int(layer.output_dense.kernel.shape[-1])])
            new["output_shape"] = shape[:-1] + [n]
        return new

    def rebuild_weights(self, layer, weights: list, io: NodeIO) -> list:
        dense = layer.query_dense
        k = weight_index(layer, dense.kernel)
        new_key_dim = int(weights[k].shape[-1])
        if new_key_dim == layer.key_dim:
            return weights
        factor = math.sqrt(new_key_dim / layer.key_dim)
        out = list(weights)
        indices = [k] + ([weight_index(layer, dense.bias)] if dense.bias is not None else [])
        for i in indices:
            arr = np.asarray(out[i])
            out[i] = (arr * factor).astype(arr.dtype)
        return out

    def macs(self, layer, in_shapes, out_shapes):
        roles = roles_for_shapes(layer, in_shapes) or ["query", "value", "key"][: len(in_shapes)]
        where = {r: i for i, r in reversed(list(enumerate(roles)))}
        q = in_shapes[where.get("query", 0)]
        v = in_shapes[where.get("value", min(1, len(in_shapes) - 1))]
        k = in_shapes[where.get("key", where.get("value", 0))]
        n_q, n_kv = _prod(q[1:-1]), _prod(v[1:-1])
        subs = _projections(layer)
        positions = {"query": n_q, "key": _prod(k[1:-1]), "value": n_kv, "output": n_q, "gate": n_q}
        terms = [(sub.kernel, positions[owner]) for owner, sub in subs.items()]
        # Every query position meets the keys along the attention axes.
        keys = _prod(v[a] for a in layer.attention_axes)
        for dense in (layer.query_dense, layer.value_dense):  # scores, then the weighted sum
            if dense.bias is not None:
                terms.append((dense.bias, n_q * keys))
        return terms


# -- EinsumDense ---------------------------------------------------------------------------------
_EQUATION = re.compile(r"^(\.\.\.)?([a-zA-Z]+),([a-zA-Z]+)->(\.\.\.)?([a-zA-Z]+)$")


def _parse(equation: str):
    m = _EQUATION.match(equation.replace(" ", ""))
    if m is None or bool(m.group(1)) != bool(m.group(4)):
        raise Barrier(f"its equation {equation!r} is not of the form 'ab,bc->ac' or '...b,bc->...c'")
    return m.group(2), m.group(3), m.group(5), bool(m.group(1))


class EinsumDenseRule(Rule):
    """`EinsumDense` whose input channels (its last axis) are contracted or kept as the last axis.

    - `"abc,cd->abd"`, `"abc,cde->abde"`, `"...b,bc->...c"`: reads the input's
      channels through the kernel and produces the output's last axis when it
      is a kernel dimension (its entry in `output_shape` shrinks).
    - `"abc,c->abc"` style (the channel letter in input, kernel and output):
      a per-channel scale, the output carries the input's channels.
    """

    def analyze(self, view: NodeView, g) -> list[Chan]:
        layer = view.layer
        _check_dense(layer, "einsum")
        x, w, y, _ = _parse(layer.equation)
        rank = view.rank()
        ch = x[-1]
        if x.count(ch) != 1 or w.count(ch) != 1:
            raise Barrier(f"its input channels ({ch!r}) are not read once by the kernel in {layer.equation!r}")
        last = y[-1]
        through = last == ch
        if not through and ch in y:
            raise Barrier(f"its equation {layer.equation!r} moves the channels off the last axis")
        if not through and (last not in w or last in x):
            raise Barrier(f"its output's last axis {last!r} is not a kernel dimension in {layer.equation!r}")
        ins = g.expect(view, 0, rank - 1)
        out = ins if through else g.produce(view, int(view.out_shapes[0][-1]))
        k = weight_index(layer, layer.kernel)
        g.slice(view, k, w.index(ch), ins)
        if not through:
            g.slice(view, k, w.index(last), out)
        self._bias(view, g, y, last, out)
        return [Chan(len(view.out_shapes[0]) - 1, out)]

    @staticmethod
    def _bias(view, g, y: str, letter: str, atoms) -> None:
        layer = view.layer
        axes = layer.bias_axes or ""
        if layer.bias is None or letter not in axes:
            return
        first = min(y.find(c) for c in axes)
        g.slice(view, weight_index(layer, layer.bias), y[first:].index(letter), atoms)

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        x, w, y, elided = _parse(layer.equation)
        shape = list(config["output_shape"]) if isinstance(config["output_shape"], (list, tuple)) else [
            config["output_shape"]
        ]
        n = kept(io.outputs[0])
        i = len(y) - 1 if elided else len(y) - 2  # partial output_shape: no batch, no ellipsis
        if n is not None and 0 <= i < len(shape) and shape[i] is not None:
            shape[i] = n
        return {**config, "output_shape": shape}

    def macs(self, layer, in_shapes, out_shapes):
        x, w, y, elided = _parse(layer.equation)
        xs, ys = in_shapes[0], out_shapes[0]
        dims = dict(zip(y, ys[len(ys) - len(y) :]))
        dims.update(zip(x, xs[len(xs) - len(x) :]))  # Keras leaves `output_shape=(None, d)` axes unknown
        batch = None if elided else y[0]
        lead = xs[1 : len(xs) - len(x)] if elided else ()
        # Every position of the letters outside the kernel (batch excepted) multiplies the whole kernel.
        return [(layer.kernel, _prod(lead) * _prod(d for c, d in dims.items() if c not in w and c != batch))]


# -- Attention and AdditiveAttention -----------------------------------------------------------------
class DotAttentionRule(Rule):
    """`Attention` and `AdditiveAttention` on `[query, value]` or `[query, value, key]`.

    Scores compare query channel `c` with key channel `c` (one channel), the
    output carries the value's channels. `AdditiveAttention(use_scale=True)`
    weights each channel's score term by `scale[c]`, which masking zeroes: exact.
    `Attention` reads the query and key without weights, so removal equals
    masking only where masking leaves those channels zero: approximate.
    """

    def analyze(self, view: NodeView, g) -> list[Chan]:
        layer = view.layer
        roles = argument_roles(view.node, layer)
        idx = [i for i, r in enumerate(roles) if r == "inputs"]
        if len(idx) not in (2, 3):
            raise Barrier("expects inputs=[query, value] or [query, value, key]")
        q = g.expect(view, idx[0], len(view.in_shapes[idx[0]]) - 1)
        v = g.expect(view, idx[1], len(view.in_shapes[idx[1]]) - 1)
        k = g.expect(view, idx[2], len(view.in_shapes[idx[2]]) - 1) if len(idx) == 3 else v
        if len(q) != len(k):
            raise Barrier(f"its query ({len(q)}) and key ({len(k)}) widths differ")
        g.unify(q, k)
        for i, role in enumerate(roles):
            if i not in idx and not view.inputs[i].frozen:
                g.block(view.inputs[i].atoms, f"'{view.key}' reads this tensor as its {role!r} argument")
        scale = getattr(layer, "scale", None)
        if isinstance(layer, layers.AdditiveAttention) and scale is not None and len(scale.shape) == 1:
            g.slice(view, weight_index(layer, scale), 0, q)
        else:
            g.inexact(
                q,
                f"'{view.key}' ({type(layer).__name__}) compares query and key channels without weights: "
                "removal equals masking only where masking leaves them zero",
            )
        outs = [Chan(len(view.out_shapes[0]) - 1, v)]
        outs += [Chan(None, None, frozen=f"attention scores of '{view.key}'") for _ in view.out_shapes[1:]]
        return outs


register_rule(layers.MultiHeadAttention, MultiHeadAttentionRule())
register_rule(layers.EinsumDense, EinsumDenseRule())
register_many([layers.Attention, layers.AdditiveAttention], DotAttentionRule())
