"""Rules for layers whose weights create and read channels.

Weight layouts (Keras 3):
- `Conv*`: kernel `kernel_size + (in // groups, filters)`, bias `(filters,)`.
- `Conv*Transpose`: kernel `kernel_size + (filters, in)`.
- `DepthwiseConv*`: kernel `kernel_size + (in, depth_multiplier)`; output
  channel `c * m + k` belongs to input channel `c`.
- `SeparableConv*`: depthwise `kernel_size + (in, m)`, pointwise
  `(1,) * n + (in * m, filters)`.
- `Dense`: kernel `(in, units)`; acts on the last axis of any rank.
- `Embedding`: embeddings `(input_dim, output_dim)`.
"""

from __future__ import annotations

import math

import numpy as np
from keras import layers

from kerasprune.rules.base import (
    Barrier,
    Chan,
    NodeIO,
    NodeView,
    Rule,
    channel_axis,
    kept,
    weight_index,
)
from kerasprune.rules.registry import register_many, register_rule


def _spatial(layer, shape) -> int:
    """Number of spatial positions of a tensor of `shape` for `layer`'s data format."""
    dims = shape[2:] if _data_format(layer) == "channels_first" else shape[1:-1]
    return math.prod(int(d) for d in dims)


def _data_format(layer) -> str:
    return getattr(layer, "data_format", None) or "channels_last"


def _is_depthwise(layer) -> bool:
    """A grouped convolution with one input channel per group."""
    groups = int(getattr(layer, "groups", 1) or 1)
    return groups > 1 and int(layer.kernel.shape[-2]) == 1



def _outputs(view: NodeView, g, out) -> list[Chan]:
    """The bias sliced by the output channels `out`, and the output `Chan` on the channel axis."""
    layer = view.layer
    if layer.use_bias:
        g.slice(view, weight_index(layer, layer.bias), 0, out)
    return [Chan(channel_axis(_data_format(layer), len(view.out_shapes[0])), out)]

class ConvRule(Rule):
    """`Conv1D/2D/3D`: a producer of `filters` channels, a consumer of its input.

    With `groups == in_channels` (a depthwise convolution written as `Conv2D`,
    as in ConvNeXt) it is a pass-through: filter `j` reads only input channel
    `j // (filters // groups)`, so removing an input channel removes its
    filters and one group. With other `groups > 1` the input channels cannot be
    removed (the group structure of the kernel would break); output filters may
    be removed when every group loses the same number, which keeps `filters`
    divisible by `groups`.
    """

    def analyze(self, view: NodeView, g) -> list[Chan]:
        layer = view.layer
        rank = view.rank()
        axis = channel_axis(_data_format(layer), rank)
        ins = g.expect(view, 0, axis)
        groups = int(getattr(layer, "groups", 1) or 1)
        k = weight_index(layer, layer.kernel)
        if _is_depthwise(layer):
            out = np.repeat(ins, layer.filters // groups)
            g.slice(view, k, -1, out)
            return _outputs(view, g, out)
        out = g.produce(view, layer.filters)
        if groups > 1:
            # Row p of the kernel is input channel `group * in_per + p` for the filters of `group`.
            in_per, out_per = len(ins) // groups, layer.filters // groups
            per_group = ins.reshape(groups, in_per)
            g.slice(view, k, -2, per_group[np.arange(layer.filters) // out_per].T, along=-1)
            what = f"Layer '{view.key}' ({type(layer).__name__}) has groups={groups}"
            g.balance(list(per_group), f"{what} (input channels of each group)")
            g.balance(list(out.reshape(groups, out_per)), f"{what} (filters of each group)")
        else:
            g.slice(view, k, -2, ins)
        g.slice(view, k, -1, out)
        return _outputs(view, g, out)

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        n = kept(io.outputs[0])
        groups = int(config.get("groups", 1) or 1)
        if _is_depthwise(layer):
            return {**config, "filters": n, "groups": kept(io.inputs[0])}
        if groups > 1 and n is not None:
            per = layer.filters // groups
            counts = [int(np.count_nonzero(io.outputs[0][i * per : (i + 1) * per])) for i in range(groups)]
            if len(set(counts)) != 1:
                from kerasprune.errors import PruningError

                raise PruningError(
                    f"Layer '{layer.name}' ({type(layer).__name__}) has groups={groups}: every group "
                    f"must keep the same number of filters. Kept per group: {counts}"
                )
        return {**config, "filters": n}

    def macs(self, layer, in_shapes, out_shapes):
        return [(layer.kernel, _spatial(layer, out_shapes[0]))]


class ConvTransposeRule(Rule):
    """`Conv*Transpose`: kernel `kernel_size + (filters, in)`."""

    def analyze(self, view: NodeView, g) -> list[Chan]:
        layer = view.layer
        axis = channel_axis(_data_format(layer), view.rank())
        ins = g.expect(view, 0, axis)
        out = g.produce(view, layer.filters)
        k = weight_index(layer, layer.kernel)
        g.slice(view, k, -1, ins)
        g.slice(view, k, -2, out)
        return _outputs(view, g, out)

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        return {**config, "filters": kept(io.outputs[0])}

    def macs(self, layer, in_shapes, out_shapes):
        # Each input position is multiplied by the whole kernel.
        return [(layer.kernel, _spatial(layer, in_shapes[0]))]


class DepthwiseRule(Rule):
    """`DepthwiseConv1D/2D`: channel `c` owns outputs `c*m ... c*m+m-1`."""

    def analyze(self, view: NodeView, g) -> list[Chan]:
        layer = view.layer
        axis = channel_axis(_data_format(layer), view.rank())
        ins = g.expect(view, 0, axis)
        m = int(layer.depth_multiplier)
        out = np.repeat(ins, m) if m > 1 else ins
        g.slice(view, weight_index(layer, layer.kernel), -2, ins)
        return _outputs(view, g, out)

    def macs(self, layer, in_shapes, out_shapes):
        return [(layer.kernel, _spatial(layer, out_shapes[0]))]


class SeparableRule(Rule):
    """`SeparableConv1D/2D`: depthwise then pointwise; produces `filters`."""

    def analyze(self, view: NodeView, g) -> list[Chan]:
        layer = view.layer
        axis = channel_axis(_data_format(layer), view.rank())
        ins = g.expect(view, 0, axis)
        m = int(layer.depth_multiplier)
        out = g.produce(view, layer.filters)
        g.slice(view, weight_index(layer, layer.depthwise_kernel), -2, ins)
        pw = weight_index(layer, layer.pointwise_kernel)
        g.slice(view, pw, -2, np.repeat(ins, m) if m > 1 else ins)
        g.slice(view, pw, -1, out)
        return _outputs(view, g, out)

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        return {**config, "filters": kept(io.outputs[0])}

    def macs(self, layer, in_shapes, out_shapes):
        n = _spatial(layer, out_shapes[0])
        return [(layer.depthwise_kernel, n), (layer.pointwise_kernel, n)]


class DenseRule(Rule):
    """`Dense` on the last axis of a tensor of any rank (ConvNeXt uses 4-D)."""

    def analyze(self, view: NodeView, g) -> list[Chan]:
        layer = view.layer
        if getattr(layer, "lora_enabled", False):
            raise Barrier("LoRA-enabled Dense layers are not supported")
        if getattr(layer, "quantization_mode", None):
            raise Barrier("quantized Dense layers are not supported")
        ins = g.expect(view, 0, view.rank() - 1)
        out = g.produce(view, layer.units)
        k = weight_index(layer, layer.kernel)
        g.slice(view, k, 0, ins)
        g.slice(view, k, 1, out)
        if layer.use_bias:
            g.slice(view, weight_index(layer, layer.bias), 0, out)
        return [Chan(len(view.out_shapes[0]) - 1, out)]

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        return {**config, "units": kept(io.outputs[0])}

    def macs(self, layer, in_shapes, out_shapes):
        return [(layer.kernel, math.prod(int(d) for d in out_shapes[0][1:-1]))]


class EmbeddingRule(Rule):
    """`Embedding`: produces `output_dim` channels from integer ids."""

    couples_calls = False

    def analyze(self, view: NodeView, g) -> list[Chan]:
        layer = view.layer
        if getattr(layer, "quantization_mode", None):
            raise Barrier("quantized Embedding layers are not supported")
        out = g.produce(view, layer.output_dim)
        g.slice(view, weight_index(layer, layer.embeddings), 1, out)
        return [Chan(len(view.out_shapes[0]) - 1, out)]

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        return {**config, "output_dim": kept(io.outputs[0])}


register_many([layers.Conv1D, layers.Conv2D, layers.Conv3D], ConvRule())
register_many([layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose], ConvTransposeRule())
register_many([layers.DepthwiseConv1D, layers.DepthwiseConv2D], DepthwiseRule())
register_many([layers.SeparableConv1D, layers.SeparableConv2D], SeparableRule())
register_rule(layers.Dense, DenseRule())
register_rule(layers.Embedding, EmbeddingRule())
