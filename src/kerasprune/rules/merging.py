"""Rules for layers and operations that combine several tensors.

- Couplers (`Add`, `Subtract`, `Multiply`, `Average`, `Maximum`, `Minimum`)
  tie channel `c` of every input together (the `+ - * /` operations on
  symbolic tensors share the coupling: `rules/ops.py`). An input whose channel
  dimension is 1 is broadcast (as the gate of a spatial-attention block) and
  is not coupled.
- `Concatenate` on the channel axis places each input's channels at an offset;
  on any other axis it couples its inputs like `Add`.
"""

from __future__ import annotations

import numpy as np
from keras import layers

from kerasprune.rules.base import Barrier, Chan, NodeView, Rule, norm_axis
from kerasprune.rules.registry import register_many, register_rule


def _couple(view: NodeView, g) -> list[Chan]:
    """Unify the channels of all inputs aligned from the right (broadcasting)."""
    live = [(i, c) for i, c in enumerate(view.inputs) if not c.frozen]
    if not live:
        return [view.inputs[0]]
    out_shape = view.out_shapes[0]
    out_rank = len(out_shape)
    out_axes = {c.axis + out_rank - len(view.in_shapes[i]) for i, c in live}
    if len(out_axes) != 1:
        raise Barrier("its inputs carry channels on different axes")
    out_axis = out_axes.pop()
    size = out_shape[out_axis]
    ref = None
    for i, c in enumerate(view.inputs):
        ax = out_axis - (out_rank - len(view.in_shapes[i]))
        dim = view.in_shapes[i][ax] if ax >= 1 else 1
        if dim == size:
            atoms = g.expect(view, i, ax)
            if ref is None:
                ref = atoms
            else:
                g.unify(ref, atoms)
        elif dim == 1:
            if not c.frozen and c.axis != ax:
                raise Barrier("broadcasts an input whose channels are on another axis")
        else:
            raise Barrier(f"input shapes {view.in_shapes} do not broadcast on the channel axis")
    return [Chan(out_axis, ref)]


class CouplerRule(Rule):
    """Element-wise combination of several tensors (`Add`, `Multiply`, ...)."""

    couples_calls = False

    def analyze(self, view: NodeView, g) -> list[Chan]:
        return _couple(view, g)


class ConcatenateRule(Rule):
    """`Concatenate`: offsets on the channel axis, coupling on any other axis."""

    couples_calls = False

    def analyze(self, view: NodeView, g) -> list[Chan]:
        live = [c for c in view.inputs if not c.frozen]
        if not live:
            return [view.inputs[0]]
        axis = norm_axis(int(view.layer.axis), len(view.out_shapes[0]))
        if any(c.axis != live[0].axis for c in live):
            raise Barrier("its inputs carry channels on different axes")
        if live[0].axis != axis:
            return _couple(view, g)
        parts = [g.expect(view, i, axis) for i in range(len(view.inputs))]
        return [Chan(axis, np.concatenate(parts))]


register_many(
    [layers.Add, layers.Subtract, layers.Multiply, layers.Average, layers.Maximum, layers.Minimum],
    CouplerRule(),
)
register_rule(layers.Concatenate, ConcatenateRule())
