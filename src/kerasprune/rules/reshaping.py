"""Rules for weightless layers that keep, move or rearrange channels.

- Element-wise layers (activations, dropout, noise) hand channels on unchanged.
- Spatial layers (pooling, padding, cropping, up-sampling) work per channel on
  the other axes; their `data_format` must agree with where channels are.
- `Flatten`, `Reshape` and `Permute` are handled by one mechanism: lay the
  channel atoms out over the tensor's shape, apply the layer's rearrangement,
  and read off where the atoms went.
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
    compress_list,
    kept,
    norm_axis,
)
from kerasprune.rules.ops import OpBarrier
from kerasprune.rules.registry import register_many, register_rule

_CHANNEL_MIXING_ACTIVATIONS = {"softmax", "log_softmax", "sparsemax", "glu"}


class Elementwise(Rule):
    """A layer that maps channel `c` to channel `c` with no weights.

    Register it for a user layer that is channel-wise, or declare a `Lambda`
    channel-wise with `analyze(model, channelwise=[name])`.
    """

    couples_calls = False

    def analyze(self, view: NodeView, g) -> list[Chan]:
        if view.in_shapes and view.out_shapes and tuple(view.in_shapes[0]) != tuple(view.out_shapes[0]):
            raise Barrier(
                f"declared element-wise but changes shape {view.in_shapes[0]} -> {view.out_shapes[0]}"
            )
        return self.same(view)


class ActivationRule(Elementwise):
    """`Activation`: element-wise unless the activation mixes channels."""

    def analyze(self, view: NodeView, g) -> list[Chan]:
        act = view.layer.activation
        name = getattr(act, "__name__", str(act))
        if name in _CHANNEL_MIXING_ACTIVATIONS:
            c = view.inputs[0]
            if c.frozen or c.axis == view.rank() - 1:
                raise Barrier(f"activation '{name}' mixes channels")
        return super().analyze(view, g)


class SoftmaxRule(Elementwise):
    """`Softmax`: a barrier when it normalizes the channel axis."""

    def analyze(self, view: NodeView, g) -> list[Chan]:
        c = view.inputs[0]
        axes = view.layer.axis if isinstance(view.layer.axis, (list, tuple)) else [view.layer.axis]
        if c.frozen or c.axis in [norm_axis(int(a), view.rank()) for a in axes]:
            raise Barrier("softmax over the channel axis mixes channels")
        return self.same(view)


class DropoutRule(Elementwise):
    """`Dropout`: element-wise; a `noise_shape` entry on the channel axis is resized."""

    def analyze(self, view: NodeView, g) -> list[Chan]:
        c = view.inputs[0]
        ns = getattr(view.layer, "noise_shape", None)
        if not c.frozen and ns is not None and ns[c.axis] not in (None, 1):
            g.expect(view, 0, c.axis)
        return self.same(view)

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        ns = config.get("noise_shape")
        keep = io.inputs[0] if io.inputs else None
        if ns is None or keep is None:
            return config
        ns = list(ns)
        for i, d in enumerate(ns):
            if d == len(keep):
                ns[i] = kept(keep)
        return {**config, "noise_shape": tuple(ns)}


class SpatialRule(Rule):
    """Pooling, padding, cropping, up-sampling: per channel, same rank."""

    couples_calls = False

    def analyze(self, view: NodeView, g) -> list[Chan]:
        axis = channel_axis(getattr(view.layer, "data_format", None), view.rank())
        atoms = g.expect(view, 0, axis)
        return [Chan(axis, atoms)]


class GlobalPoolRule(Rule):
    """`Global*Pooling*D`: channels survive; the axis moves unless `keepdims`."""

    passes_frozen = True
    couples_calls = False

    def analyze(self, view: NodeView, g) -> list[Chan]:
        fmt = getattr(view.layer, "data_format", None)
        atoms = g.expect(view, 0, channel_axis(fmt, view.rank()))
        out_rank = len(view.out_shapes[0])
        return [Chan(channel_axis(fmt, out_rank), atoms)]


#: Largest tensor (elements) whose channels are mapped through a grid.
GRID_LIMIT = 50_000_000


def channel_grid(values: np.ndarray, axis: int, shape) -> np.ndarray:
    """`values` (one per channel) laid out along `axis` of `shape`, broadcast over the other axes.

    The atom-grid mechanism shared by `Flatten`, `Reshape` and the `keras.ops`
    operations that move channels (`rules/ops_index.py`): apply the rearrangement
    to the grid and read off where the channels went (`read_channel_axis`).
    """
    shape = tuple(shape)
    if any(d is None for d in shape):
        raise Barrier(f"needs a static shape, got {shape}")
    if math.prod(shape) > GRID_LIMIT:
        raise Barrier("tensor too large to map channels through")
    idx = [1] * len(shape)
    idx[axis] = shape[axis]
    return np.broadcast_to(np.asarray(values).reshape(idx), shape)


def read_channel_axis(grid: np.ndarray, offset: int = 1) -> Chan:
    """The one axis of `grid` along which its values vary, and the values along it.

    Args:
        grid: A rearranged `channel_grid`.
        offset: Added to the axis found (1 for a batch-less grid, 0 for a full one).

    Raises:
        Barrier: the values vary along several axes (channels mixed with others).
    """
    if grid.ndim == 1:
        return Chan(offset, np.ascontiguousarray(grid))
    for ax in range(grid.ndim - 1, -1, -1):
        sel = [0] * grid.ndim
        sel[ax] = slice(None)
        line = grid[tuple(sel)]
        shape = [1] * grid.ndim
        shape[ax] = grid.shape[ax]
        if np.array_equal(np.broadcast_to(line.reshape(shape), grid.shape), grid):
            if grid.shape[ax] == 1 and any(d > 1 for d in grid.shape):
                continue
            return Chan(ax + offset, np.ascontiguousarray(line))
    raise Barrier("moves channels onto several axes")


def _grid(view: NodeView) -> np.ndarray:
    """The input's atoms broadcast over its (batch-less) shape."""
    c = view.inputs[0]
    return channel_grid(c.atoms, c.axis - 1, view.in_shapes[0][1:])


def _read_axis(grid: np.ndarray, key: str) -> Chan:
    """Find the one axis of `grid` (batch-less) along which atoms vary."""
    return read_channel_axis(grid, offset=1)


class FlattenRule(Rule):
    """`Flatten`: channel `c` lands at flat positions `p*C + c` (channels_last).

    With `data_format='channels_first'` Keras first moves channels last, so
    the mapping is the same; both are derived, not assumed.
    """

    passes_frozen = True
    passes_frozen = True
    couples_calls = False

    def analyze(self, view: NodeView, g) -> list[Chan]:
        c = view.inputs[0]
        g.expect(view, 0, c.axis)
        grid = _grid(view)
        if view.layer.data_format == "channels_first" and grid.ndim > 1:
            grid = np.moveaxis(grid, 0, -1)
        return [Chan(1, np.ascontiguousarray(grid).reshape(-1))]


class ReshapeRule(Rule):
    """`Reshape`: allowed when channels stay on one axis, or are flattened."""

    couples_calls = False

    def analyze(self, view: NodeView, g) -> list[Chan]:
        c = view.inputs[0]
        g.expect(view, 0, c.axis)
        out_shape = view.out_shapes[0][1:]
        if any(d is None for d in out_shape):
            raise Barrier(f"output shape {tuple(view.out_shapes[0])} is not static")
        grid = np.ascontiguousarray(_grid(view)).reshape(out_shape)
        try:
            return [_read_axis(grid, view.key)]
        except Barrier:
            raise Barrier(
                f"reshape {tuple(view.in_shapes[0])} -> {tuple(view.out_shapes[0])} mixes the channel axis"
            ) from None

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        out, axis = io.outputs[0], io.out_axes[0]
        if out is None or axis is None:
            return config
        target = list(config["target_shape"])
        if target[axis - 1] != -1:
            target[axis - 1] = kept(out)
        return {**config, "target_shape": tuple(target)}


class PermuteRule(Rule):
    """`Permute`: channels move to the axis the permutation sends them to."""

    passes_frozen = True
    passes_frozen = True
    couples_calls = False

    def analyze(self, view: NodeView, g) -> list[Chan]:
        c = view.inputs[0]
        atoms = g.expect(view, 0, c.axis)
        dims = list(view.layer.dims)  # 1-based over batch-less axes
        return [Chan(dims.index(c.axis) + 1, atoms)]


register_many(
    [
        layers.ReLU,
        layers.LeakyReLU,
        layers.ELU,
        layers.Identity,
        layers.GaussianNoise,
        layers.GaussianDropout,
        layers.AlphaDropout,
        layers.ActivityRegularization,
        getattr(layers, "Masking", None),
    ],
    Elementwise(),
)
register_rule(layers.Activation, ActivationRule())
register_rule(layers.Softmax, SoftmaxRule())
register_rule(layers.Dropout, DropoutRule())
register_many(
    [
        layers.SpatialDropout1D,
        layers.SpatialDropout2D,
        layers.SpatialDropout3D,
        layers.MaxPooling1D,
        layers.MaxPooling2D,
        layers.MaxPooling3D,
        layers.AveragePooling1D,
        layers.AveragePooling2D,
        layers.AveragePooling3D,
        layers.ZeroPadding1D,
        layers.ZeroPadding2D,
        layers.ZeroPadding3D,
        layers.Cropping1D,
        layers.Cropping2D,
        layers.Cropping3D,
        layers.UpSampling1D,
        layers.UpSampling2D,
        layers.UpSampling3D,
    ],
    SpatialRule(),
)
# Preprocessing layers that work per channel on the spatial axes (the random ones are the
# identity at inference), and those that convert colours across the channel axis.
register_many(
    [
        getattr(layers, name, None)
        for name in (
            "Resizing", "CenterCrop", "RandomCrop", "RandomFlip", "RandomRotation", "RandomZoom",
            "RandomTranslation", "RandomShear", "RandomPerspective", "RandomElasticTransform",
            "RandomContrast", "RandomBrightness", "Solarization", "RandomInvert", "RandomPosterization",
            "RandomSharpness", "RandomGaussianBlur", "RandomErasing", "AutoContrast", "Equalization",
        )
    ],
    SpatialRule(),
)  # fmt: skip
register_many(
    [
        getattr(layers, name, None)
        for name in (
            "RandomGrayscale", "RandomHue", "RandomSaturation", "RandomColorJitter",
            "RandomColorDegeneration", "AugMix", "RandAugment",
        )
    ],
    OpBarrier("converts colours: mixes the channels"),
)  # fmt: skip
register_many(
    [
        layers.GlobalAveragePooling1D,
        layers.GlobalAveragePooling2D,
        layers.GlobalAveragePooling3D,
        layers.GlobalMaxPooling1D,
        layers.GlobalMaxPooling2D,
        layers.GlobalMaxPooling3D,
    ],
    GlobalPoolRule(),
)
register_rule(layers.Flatten, FlattenRule())
register_rule(layers.Reshape, ReshapeRule())
register_rule(layers.Permute, PermuteRule())

__all__ = ["Elementwise", "SpatialRule", "compress_list"]
