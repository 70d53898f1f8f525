"""Rules for layers that wrap other layers or user code.

- `TimeDistributed(inner)` applies `inner` to every time step: it delegates to
  the inner layer's rule on a view without the time axis (channel axes shifted
  by one), so a `TimeDistributed(Conv2D)` prunes like the `Conv2D` it wraps.
- `Bidirectional(rnn)` holds a forward and a backward copy of a recurrent
  layer (see `rules/recurrent.py`). Keras gives both directions one width (a
  concatenated output is `2 * units` wide), so unit `u` of both directions is
  one channel: `merge_mode="concat"` places the forward units then the backward
  units side by side (channel `u` at positions `u` and `units + u`); `sum`,
  `mul`, `ave` and `None` (two outputs) carry the units as they are.
- `Lambda` runs arbitrary code: it is a barrier unless declared channel-wise,
  `analyze(model, channelwise=["my_lambda"])`.
"""

from __future__ import annotations

import numpy as np
from keras import layers

from kerasprune.rules import recurrent
from kerasprune.rules.arguments import argument_roles, roles_for_shapes
from kerasprune.rules.base import Barrier, Chan, NodeIO, NodeView, Rule, kept
from kerasprune.rules.registry import find_rule, register_rule


def _shift(c: Chan, by: int) -> Chan:
    if c.frozen or c.axis is None:
        return c
    return Chan(c.axis + by, c.atoms)


def _shift_axes(axes: list[int | None], by: int) -> list[int | None]:
    return [None if a is None else a + by for a in axes]


class TimeDistributedRule(Rule):
    """`TimeDistributed`: the inner layer's rule, one axis to the right.

    The wrapper's weights are the inner layer's (same variables, same order),
    so the inner rule's weight slices apply to the wrapper as they are.
    """

    def analyze(self, view: NodeView, g) -> list[Chan]:
        inner = view.layer.layer
        rule = find_rule(inner)
        if rule is None:
            raise Barrier(
                f"no pruning rule is registered for the wrapped layer '{inner.name}' ({type(inner).__name__})"
            )
        for c in view.inputs:
            if not c.frozen and c.axis == 1:
                raise Barrier("its input carries channels on the time axis")
        inner_view = NodeView(
            layer=inner,
            key=view.key,
            inputs=[_shift(c, -1) for c in view.inputs],
            in_shapes=[s[:1] + s[2:] for s in view.in_shapes],
            out_shapes=[s[:1] + s[2:] for s in view.out_shapes],
            node=view.node,
            call=view.call,
        )
        outs = rule.analyze(inner_view, g)
        view.in_atoms[:] = inner_view.in_atoms
        view.in_axes[:] = [None if a is None else a + 1 for a in inner_view.in_axes]
        return [_shift(c, 1) for c in outs]

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        inner = layer.layer
        rule = find_rule(inner)
        serialized = dict(config["layer"])
        inner_io = NodeIO(
            inputs=list(io.inputs),
            outputs=list(io.outputs),
            in_axes=_shift_axes(list(io.in_axes), -1),
            out_axes=_shift_axes(list(io.out_axes), -1),
        )
        serialized["config"] = rule.rebuild_config(inner, dict(serialized["config"]), inner_io)
        # The inner layer must be built by the wrapper for its new input shape.
        serialized.pop("build_config", None)
        return {**config, "layer": serialized}

    def macs(self, layer, in_shapes, out_shapes):
        rule = find_rule(layer.layer)
        if rule is None:
            return []
        steps = int(in_shapes[0][1])
        drop = lambda shapes: [s[:1] + s[2:] for s in shapes]  # noqa: E731
        return [(v, n * steps) for v, n in rule.macs(layer.layer, drop(in_shapes), drop(out_shapes))]


class BidirectionalRule(Rule):
    """`Bidirectional`: both directions' units are one set of channels (see the module docstring)."""

    def analyze(self, view: NodeView, g) -> list[Chan]:
        layer = view.layer
        fwd, bwd = layer.forward_layer, layer.backward_layer
        (cf, gf), (cb, gb) = recurrent.cell_of(fwd), recurrent.cell_of(bwd)
        n = recurrent.units_of(cf)
        if recurrent.units_of(cb) != n or gf != gb:
            raise Barrier(f"its directions differ ({type(fwd).__name__} {n} units, {type(bwd).__name__} "
                          f"{recurrent.units_of(cb)} units)")
        if layer.merge_mode == "concat" and recurrent.channels_first(cf):
            raise Barrier("concatenates channels_first outputs on their last (spatial) axis")
        recurrent.check_quantization(cf)
        recurrent.check_quantization(cb)
        roles = argument_roles(view.node, layer)
        recurrent.check_roles(roles)
        concat = layer.merge_mode == "concat"
        widths = [2 * n if concat else n] + [n] * (len(view.out_shapes) - 1)
        axes = recurrent.output_axes(view, cf, widths)
        units = g.produce(view, n)
        ins = recurrent.read_inputs(view, g, cf, roles, units)
        recurrent.declare_cell(view, g, cf, gf, ins, units)
        recurrent.declare_cell(view, g, cb, gb, ins, units)
        both = np.concatenate([units, units])
        return [Chan(axis, both if i == 0 and concat else units) for i, axis in enumerate(axes)]

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        n = kept(io.outputs[0])
        if n is not None and layer.merge_mode == "concat":
            n //= 2
        new = dict(config)
        for key in ("layer", "backward_layer"):
            if isinstance(config.get(key), dict):
                inner = dict(config[key])
                inner["config"] = recurrent.new_width(dict(inner["config"]), n)
                inner.pop("build_config", None)  # built by the wrapper for its new input
                new[key] = inner
        return new

    def macs(self, layer, in_shapes, out_shapes):
        roles = roles_for_shapes(layer, in_shapes)
        if roles and roles[0] not in ("sequences", "inputs"):
            return []
        terms = []
        for inner in (layer.forward_layer, layer.backward_layer):
            terms += recurrent.cell_macs(inner, inner.cell, in_shapes, out_shapes)
        return terms


class LambdaRule(Rule):
    """`Lambda`: opaque code, a barrier unless declared channel-wise."""

    def analyze(self, view: NodeView, g) -> list[Chan]:
        raise Barrier(
            "Lambda layers run arbitrary code; if it maps channel c to channel c, declare it with "
            f"channelwise=['{view.layer.name}']"
        )


register_rule(layers.TimeDistributed, TimeDistributedRule())
register_rule(layers.Bidirectional, BidirectionalRule())
register_rule(layers.Lambda, LambdaRule())
