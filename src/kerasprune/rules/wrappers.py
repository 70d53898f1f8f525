"""Rules for layers that wrap other layers or user code.

- `TimeDistributed(inner)` applies `inner` to every time step: it delegates to
  the inner layer's rule on a view without the time axis (channel axes shifted
  by one), so a `TimeDistributed(Conv2D)` prunes like the `Conv2D` it wraps.
- `Lambda` runs arbitrary code: it is a barrier unless declared channel-wise,
  `analyze(model, channelwise=["my_lambda"])`. (`Bidirectional` and other RNN
  wrappers have no rule and are barriers.)
"""

from __future__ import annotations

from keras import layers

from kerasprune.rules.base import Barrier, Chan, NodeIO, NodeView, Rule
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


class LambdaRule(Rule):
    """`Lambda`: opaque code, a barrier unless declared channel-wise."""

    def analyze(self, view: NodeView, g) -> list[Chan]:
        raise Barrier(
            "Lambda layers run arbitrary code; if it maps channel c to channel c, declare it with "
            f"channelwise=['{view.layer.name}']"
        )


register_rule(layers.TimeDistributed, TimeDistributedRule())
register_rule(layers.Lambda, LambdaRule())
