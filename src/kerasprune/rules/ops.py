"""Rules for `keras.ops` calls that compute per position: element-wise, along an axis, reductions.

A Functional graph built with `ops.relu(x)`, `x * 0.5`, `ops.mean(x, axis=(1, 2))`
has nodes whose operation is a `keras.Operation`, not a layer: no weights, a
config made of its constructor arguments, and call arguments that may hold
constants. The rules here:

- `ElementwiseOpRule`: unary math, arithmetic, comparisons, `where`,
  activations, casts. Tensor operands are coupled channel by channel, as by
  `Add` (broadcasting allowed); constant operands are scalars or arrays that
  broadcast along the channel axis, or *per-channel* arrays, which are sliced
  when channels go (`rebuild_call`).
- `AxisOpRule`: operations along one axis (`softmax`, `cumsum`, `sort`,
  `glu`, `normalize`, `top_k`): per channel along any other axis; along the
  channel axis they mix channels (a barrier), except `normalize` (prunable,
  approximate, like `UnitNormalization`) and `glu` (channel `c` pairs with
  `c + C/2`: both halves lose the same channels).
- `ReduceOpRule`: `mean`, `max`, `sum`, `std`, `argmax`, `moments`, ... over
  non-channel axes keep the channels (the axis moves unless `keepdims`); over
  the channel axis, or over every axis, they are barriers that say so.
- `SpatialOpRule`: `max_pool`, `average_pool`, `image.resize`,
  `image.pad_images`, `image.crop_images`, blurs: per channel, `data_format` aware.
- `OpBarrier`: operations that mix channels or multiply by a tensor, with the reason.

Operations that move channels (reshape, transpose, slicing, split, concatenate)
are in `ops_index.py`. Op classes are found through `kerasprune._keras.op_classes`.
No operation here multiplies by a weight, so none declares MACs.
"""

from __future__ import annotations

import keras
import numpy as np

from kerasprune._keras import KerasTensor, call_arguments, op_classes
from kerasprune.rules.base import Barrier, Chan, NodeIO, NodeView, Rule, channel_axis, norm_axis
from kerasprune.rules.merging import _couple
from kerasprune.rules.registry import register_many


def operands(view: NodeView) -> list:
    """The top-level call arguments of an operation's node, positional then keyword."""
    args, kwargs = call_arguments(view.node)
    return list(args) + list(kwargs.values())


def constant_shape(value) -> tuple | None:
    """The shape of a constant operand (array, list, backend tensor), None for scalars and others."""
    if value is None or isinstance(value, (bool, int, float, complex, str, KerasTensor)):
        return None
    shape = getattr(value, "shape", None)
    if shape is None:
        try:
            shape = np.shape(value)
        except Exception:
            return None
    shape = tuple(int(d) for d in shape)
    return shape or None


def _frozen(view: NodeView) -> list[Chan] | None:
    """Frozen outputs when no input carries channels, else None."""
    if all(c.frozen for c in view.inputs):
        return [view.inputs[0] if view.inputs else Chan(None, None, "no tensor input")] * len(view.out_shapes)
    return None


def _name(view: NodeView) -> str:
    return type(view.layer).__name__


def check_config(view: NodeView) -> None:
    """A barrier when the operation cannot be re-created from its config (found now, not at removal).

    Keras builds an operation's config from its constructor arguments; one made with an
    array or another object (`ops.clip(x, np.zeros(C), 1.0)`) has none.
    """
    try:
        view.layer.get_config()
    except Exception as e:
        why = " ".join(str(e).split()).split(". ")[0][:200] or type(e).__name__
        raise Barrier(f"cannot be re-created from its config, so not in a smaller model: {why}") from None


class OperationRule(Rule):
    """Base of the `keras.ops` rules: weightless, one call at a time, re-created from config.

    Subclasses implement `channels(view, g)` (what `analyze` does for a layer rule);
    `analyze` first checks that the operation can be rebuilt when its channels can change.
    """

    couples_calls = False

    def analyze(self, view: NodeView, g) -> list[Chan]:
        if any(not c.frozen for c in view.inputs):
            check_config(view)
        return self.channels(view, g)

    def channels(self, view: NodeView, g) -> list[Chan]:  # pragma: no cover - every subclass has one
        raise NotImplementedError


class ElementwiseOpRule(OperationRule):
    """An element-wise operation (`x + 3.0`, `ops.relu(x)`, `ops.where(c, x, y)`).

    Tensor operands are coupled like `Add`'s inputs. A constant operand must
    broadcast along the channel axis (size 1) or hold one value per channel; a
    per-channel constant is sliced in the smaller model.
    """

    def channels(self, view: NodeView, g) -> list[Chan]:
        if len(view.out_shapes) != 1:
            raise Barrier("has several outputs")
        (out,) = _couple(view, g)
        if out.frozen:
            return [out]
        if out.atoms is None:
            return [Chan(None, None, frozen=f"channels of '{view.key}' come from a constant operand")]
        rank = len(view.out_shapes[0])
        for shape in filter(None, map(constant_shape, operands(view))):
            ax = out.axis - (rank - len(shape))
            dim = shape[ax] if ax >= 0 else 1
            if dim not in (1, out.size):
                raise Barrier(f"a constant operand of shape {shape} does not broadcast along the channel axis")
        return [out]

    def rebuild_call(self, op, args: tuple, kwargs: dict, io: NodeIO):
        keep = io.outputs[0] if io.outputs else None
        axis = io.out_axes[0] if io.out_axes else None
        if keep is None or axis is None or keep.all() or len(keep) < 2:
            return op(*args, **kwargs)
        values = list(args) + list(kwargs.values())
        rank = max(len(v.shape) if isinstance(v, KerasTensor) else len(constant_shape(v) or ()) for v in values)

        def sliced(v):
            shape = constant_shape(v)
            if not shape:
                return v
            ax = axis - (rank - len(shape))
            if ax < 0 or shape[ax] != len(keep):
                return v
            return np.compress(keep, np.asarray(keras.ops.convert_to_numpy(v)), axis=ax)

        return op(*[sliced(v) for v in args], **{k: sliced(v) for k, v in kwargs.items()})


#: Kept for callers of the former `kerasprune.rules.merging.OpRule`.
OpRule = ElementwiseOpRule


def _axes_of(op, view: NodeView, attr: str = "axis", default=None) -> list[int] | None:
    axis = getattr(op, attr, default)
    if axis is None:
        return None
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    return sorted({norm_axis(int(a), view.rank()) for a in axes})


class AxisOpRule(OperationRule):
    """An operation along one axis: per channel unless that axis holds the channels.

    Args:
        what: Name used in barrier reasons ("softmax").
        on_channels: What happens along the channel axis: `"barrier"` (mixes
            channels), `"inexact"` (normalizes across channels) or `"halves"` (`glu`).
        default_axis: The axis when the operation has no `axis` attribute (`top_k`: -1).
    """

    def __init__(self, what: str, on_channels: str = "barrier", default_axis: int | None = None):
        self.what, self.on_channels, self.default_axis = what, on_channels, default_axis

    def channels(self, view: NodeView, g) -> list[Chan]:
        frozen = _frozen(view)
        if frozen:
            return frozen
        c = view.inputs[0]
        axes = _axes_of(view.layer, view, default=self.default_axis)
        if axes is None:
            raise Barrier(f"{self.what} over the flattened tensor mixes channels")
        if any(len(s) != view.rank() for s in view.out_shapes):
            raise Barrier(f"{self.what} changes the tensor's rank")
        atoms = g.expect(view, 0, c.axis)
        if c.axis not in axes:
            return [Chan(c.axis, atoms) for _ in view.out_shapes]
        if self.on_channels == "inexact":
            g.inexact(atoms, f"'{view.key}' ({self.what}) normalizes across channels")
            return [Chan(c.axis, atoms) for _ in view.out_shapes]
        if self.on_channels == "halves" and len(atoms) % 2 == 0:
            half = len(atoms) // 2
            g.unify(atoms[:half], atoms[half:])
            return [Chan(c.axis, atoms[:half])]
        raise Barrier(f"{self.what} over the channel axis mixes channels")


class ReduceOpRule(OperationRule):
    """A reduction (`mean`, `max`, `sum`, `argmax`, `moments`, ...) over the axes in `op.axis`.

    Over non-channel axes the channels survive (their axis moves down by the
    number of reduced axes before it unless `keepdims`); over the channel axis,
    or over every axis (`axis=None`), the channels mix: a barrier.
    """

    def __init__(self, what: str, attr: str = "axis"):
        self.what, self.attr = what, attr

    def channels(self, view: NodeView, g) -> list[Chan]:
        frozen = _frozen(view)
        if frozen:
            return frozen
        c = view.inputs[0]
        axes = _axes_of(view.layer, view, self.attr)
        if axes is None:
            raise Barrier(f"{self.what} over every axis mixes channels")
        if c.axis in axes:
            raise Barrier(f"{self.what} over the channel axis mixes channels")
        keepdims = bool(getattr(view.layer, "keepdims", False))
        if 0 in axes and not keepdims:
            raise Barrier(f"{self.what} over the batch axis leaves no batch axis")
        atoms = g.expect(view, 0, c.axis)
        axis = c.axis if keepdims else c.axis - sum(1 for a in axes if a < c.axis)
        expected = view.rank() - (0 if keepdims else len(axes))
        return [Chan(axis + len(s) - expected, atoms) for s in view.out_shapes]


class SpatialOpRule(OperationRule):
    """Pooling, resizing, padding, cropping, blurring images: per channel, `data_format` aware.

    Tensor operands other than the image (an affine transform's parameters)
    are read as values: their channels may not be removed.
    """

    def channels(self, view: NodeView, g) -> list[Chan]:
        frozen = _frozen(view)
        for i, c in enumerate(view.inputs[1:], start=1):
            if not c.frozen:
                g.block(g.expect(view, i, c.axis), f"'{view.key}' ({_name(view)}) reads them as parameters")
        if view.inputs[0].frozen:
            return frozen or [view.inputs[0]] * len(view.out_shapes)
        fmt = getattr(view.layer, "data_format", None) or keras.config.image_data_format()
        if len(view.out_shapes) != 1 or len(view.out_shapes[0]) != view.rank():
            raise Barrier("changes the tensor's rank")
        axis = channel_axis(fmt, view.rank())
        return [Chan(axis, g.expect(view, 0, axis))]


class OpBarrier(Rule):
    """An operation whose channels cannot be followed, with the reason why."""

    couples_calls = False

    def __init__(self, reason: str):
        self.reason = reason

    def analyze(self, view: NodeView, g) -> list[Chan]:
        raise Barrier(self.reason)


# -- registration ------------------------------------------------------------------------------
_NUMPY_ELEMENTWISE = [
    # unary math
    "Abs", "Absolute", "Fabs", "Negative", "Square", "Sqrt", "Cbrt", "Exp", "Exp2", "Expm1",
    "Log", "Log1p", "Log2", "Log10", "Sin", "Cos", "Tan", "Sinh", "Cosh", "Tanh", "Arcsin",
    "Arccos", "Arctan", "Arcsinh", "Arccosh", "Arctanh", "Ceil", "Floor", "Round", "Trunc",
    "Sign", "Signbit", "Reciprocal", "Sinc", "I0", "Deg2rad", "Rad2deg", "Copy", "Conjugate",
    "Real", "Imag", "Isfinite", "Isinf", "Isnan", "Isneginf", "Isposinf", "Isreal", "NanToNum",
    "LogicalNot", "BitwiseInvert", "BitwiseNot", "Clip",
    # binary and ternary, broadcasting
    "Add", "Subtract", "Multiply", "Divide", "TrueDivide", "DivideNoNan", "FloorDivide", "Mod",
    "Fmod", "Power", "Maximum", "Minimum", "Fmax", "Fmin", "Arctan2", "Hypot", "Logaddexp",
    "Logaddexp2", "Heaviside", "Nextafter", "Ldexp", "Gcd", "Lcm", "Equal", "NotEqual", "Greater",
    "GreaterEqual", "Less", "LessEqual", "Isclose", "LogicalAnd", "LogicalOr", "LogicalXor",
    "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseLeftShift", "BitwiseRightShift",
    "LeftShift", "RightShift", "Where",
]  # fmt: skip
_NN_ELEMENTWISE = [
    "Relu", "Relu6", "Sigmoid", "SparseSigmoid", "HardSigmoid", "Silu", "HardSilu", "Gelu",
    "Elu", "Selu", "Celu", "Softplus", "Softsign", "SoftShrink", "SparsePlus", "Squareplus",
    "LogSigmoid", "LeakyRelu", "TanhShrink", "HardTanh", "HardShrink", "Threshold",
]  # fmt: skip
_REDUCTIONS = [
    "Mean", "Max", "Min", "Sum", "Prod", "Amax", "Amin", "Std", "Var", "Median", "Any", "All",
    "Argmax", "Argmin", "CountNonzero", "Ptp", "Average", "Quantile", "Percentile", "Nanmean",
    "Nanmax", "Nanmin", "Nansum", "Nanprod", "Nanstd", "Nanvar", "Nanmedian", "Nanargmax",
    "Nanargmin", "Nanquantile", "Nanpercentile",
]  # fmt: skip
_MULTIPLIES = "multiplies by a tensor operand (matmul/einsum/dot/conv by a tensor are not followed; use a Dense, EinsumDense or Conv layer)"  # noqa: E501

register_many(op_classes("numpy", _NUMPY_ELEMENTWISE), ElementwiseOpRule())
register_many(op_classes("nn", _NN_ELEMENTWISE), ElementwiseOpRule())
register_many(op_classes("math", ["Rsqrt", "Erf", "Erfc", "Erfinv"]), ElementwiseOpRule())
register_many(op_classes("core", ["Cast", "SaturateCast", "StopGradient", "ConvertToTensor"]), ElementwiseOpRule())
for _cls in op_classes("numpy", _REDUCTIONS):
    register_many([_cls], ReduceOpRule(_cls.__name__.lower()))
register_many(op_classes("math", ["Logsumexp"]), ReduceOpRule("logsumexp"))
register_many(op_classes("nn", ["Moments"]), ReduceOpRule("moments", attr="axes"))
for _cls, _what in zip(op_classes("nn", ["Softmax", "LogSoftmax", "Sparsemax"]), ["softmax", "log_softmax", "sparsemax"]):
    register_many([_cls], AxisOpRule(_what))
register_many(op_classes("nn", ["Normalize"]), AxisOpRule("normalize", on_channels="inexact"))
register_many(op_classes("nn", ["Glu"]), AxisOpRule("glu", on_channels="halves"))
for _cls in op_classes("numpy", ["Cumsum", "Cumprod", "Nancumsum", "Nancumprod", "Sort", "Argsort", "Diff"]):
    register_many([_cls], AxisOpRule(_cls.__name__.lower()))
register_many(op_classes("math", ["TopK"]), AxisOpRule("top_k", default_axis=-1))
register_many(
    op_classes("nn", ["MaxPool", "AveragePool", "AdaptiveMaxPool", "AdaptiveAveragePool"])
    + op_classes("image", ["Resize", "PadImages", "CropImages", "GaussianBlur", "AffineTransform"]),
    SpatialOpRule(),
)
register_many(
    op_classes("numpy", ["Matmul", "Einsum", "Dot", "Tensordot", "Inner", "Outer", "Kron", "Vdot", "Cross"])
    + op_classes("nn", ["Conv", "DepthwiseConv", "SeparableConv", "ConvTranspose"]),
    OpBarrier(_MULTIPLIES),
)
register_many(op_classes("image", ["RGBToGrayscale", "RGBToHSV", "HSVToRGB"]), OpBarrier("converts colours: mixes the channels"))
register_many(op_classes("nn", ["DepthToSpace"]), OpBarrier("moves channels to spatial positions (depth_to_space)"))
register_many(
    op_classes("nn", ["SpaceToDepth"]) + op_classes("image", ["ExtractPatches"]),
    OpBarrier("moves spatial positions into the channel axis"),
)

__all__ = ["AxisOpRule", "ElementwiseOpRule", "OpBarrier", "OpRule", "OperationRule", "ReduceOpRule", "SpatialOpRule"]
