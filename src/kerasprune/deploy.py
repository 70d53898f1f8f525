"""Deploy-time graph simplifications that compute exactly what the model computes.

`fold_batchnorm(model)` folds per-channel affine layers into the weights of the
layer next to them, so the deployed graph runs one convolution where it ran a
convolution and a normalization:

- **after** a Conv1D/2D/3D (grouped too), DepthwiseConv1D/2D (any
  `depth_multiplier`), SeparableConv1D/2D (into the pointwise kernel),
  Conv1D/2D/3DTranspose or Dense (on tensors of any rank) with a linear
  activation, when the affine layer is the only consumer of that output and
  acts on its channel axis: `s * (W x + b) + t == (s W) x + (s b + t)`;
- **before** a Conv, DepthwiseConv or SeparableConv with `padding="valid"` (or
  1-sized kernels) or a Dense, when the affine layer's output feeds only that
  layer: `W (s x + t) + b == (W s) x + (b + W t)`. With `"same"`/`"causal"`
  padding the zero border would be scaled and shifted too, so that case is left.

The affine layers: `BatchNormalization` (inference statistics:
`s = gamma / sqrt(var + eps)`, `t = beta - mean * s`), ConvNeXt's `LayerScale`,
`Normalization` and `Rescaling` with scalar or per-channel constants. Layers are
matched by exact class (a subclass may compute something else), and anything
else — a shared layer, a second consumer, a non-linear activation in between,
another axis, a mixed dtype policy — is left as it is: unfolded, never wrong.

The result is a plain Keras model built with `keras.models.clone_model` (a
`clone_function` that rebuilds each layer, with `use_bias=True` where a fold
creates a bias, and a `call_function` that skips the folded layers); nested models
are folded inside and stay nested. It saves as `.keras` and loads without
kerasprune. Folding uses inference statistics: the result is for inference (and
fine-tuning without BatchNorm), not for training the BatchNorm layers further.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import keras
import numpy as np

from kerasprune import _keras
from kerasprune.errors import PruningError, describe

__all__ = ["fold_batchnorm"]

log = logging.getLogger(__name__)

_L = keras.layers
_CONVS = (_L.Conv1D, _L.Conv2D, _L.Conv3D)
_TRANSPOSED = (_L.Conv1DTranspose, _L.Conv2DTranspose, _L.Conv3DTranspose)
_DEPTHWISE = (_L.DepthwiseConv1D, _L.DepthwiseConv2D)
_SEPARABLE = (_L.SeparableConv1D, _L.SeparableConv2D)
_TARGETS = (*_CONVS, *_TRANSPOSED, *_DEPTHWISE, *_SEPARABLE, _L.Dense)
_LAYER_SCALE = _keras.application_class("convnext", "LayerScale")


# -- per-channel affine layers: y = s * x + t along one axis --------------------------------------
@dataclass(frozen=True)
class _Affine:
    scale: np.ndarray  # (C,) float64, or a scalar array: the same for every channel
    shift: np.ndarray
    axis: int | None  # the channel axis (non-negative); None for scalars (any axis)

    def along(self, size: int) -> tuple[np.ndarray, np.ndarray] | None:
        """`(s, t)` as `(size,)` vectors, or None when the sizes disagree."""
        if self.scale.ndim and self.scale.shape != (size,):
            return None
        return np.broadcast_to(self.scale, (size,)), np.broadcast_to(self.shift, (size,))


def _array(value) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)


def _affine(layer, rank: int) -> _Affine | None:
    """The affine map `layer` applies to a rank-`rank` tensor in inference, or None."""
    kind = type(layer)
    if kind is _L.BatchNormalization:
        var = _array(layer.moving_variance)
        s = (_array(layer.gamma) if layer.scale else np.ones_like(var)) / np.sqrt(var + layer.epsilon)
        beta = _array(layer.beta) if layer.center else np.zeros_like(var)
        return _Affine(s, beta - _array(layer.moving_mean) * s, layer.axis % rank)
    if _LAYER_SCALE is not None and kind is _LAYER_SCALE:
        gamma = _array(layer.gamma)
        return _Affine(gamma, np.zeros_like(gamma), rank - 1)
    if kind is _L.Rescaling:
        scale, offset = np.asarray(layer.scale, np.float64), np.asarray(layer.offset, np.float64)
        if scale.ndim == 0 and offset.ndim == 0:
            return _Affine(scale, offset, None)
        if max(scale.ndim, offset.ndim) == 1 and keras.config.image_data_format() == "channels_last":
            n = max(scale.size, offset.size)
            return _Affine(np.broadcast_to(scale, (n,)), np.broadcast_to(offset, (n,)), rank - 1)
        return None
    if kind is _L.Normalization and layer.mean is not None:
        axes = tuple(a % rank for a in layer.axis)
        mean, var = _array(layer.mean).reshape(-1), _array(layer.variance).reshape(-1)
        std = np.maximum(np.sqrt(var), keras.config.epsilon())
        s, t = (std, mean) if layer.invert else (1.0 / std, -mean / std)
        if mean.size == 1:
            return _Affine(s.reshape(()), t.reshape(()), None)
        return _Affine(s, t, axes[0]) if len(axes) == 1 else None
    return None


# -- layers that absorb an affine map into their weights ------------------------------------------
def _channel_axis(layer, rank: int) -> int:
    """The channel axis of `layer`'s input and output (Dense: the last)."""
    return 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else rank - 1


def _spatial(kernel: np.ndarray) -> tuple[int, ...]:
    return tuple(range(kernel.ndim - 2))


def _fold_after(layer, w: dict, s: np.ndarray, t: np.ndarray) -> None:
    """`w` (float64 arrays by variable name) of `layer` followed by `y = s * x + t`."""
    if isinstance(layer, _SEPARABLE):
        w["pointwise_kernel"] = w["pointwise_kernel"] * s
    elif isinstance(layer, _TRANSPOSED):
        w["kernel"] = w["kernel"] * s[:, None]
    elif isinstance(layer, _DEPTHWISE):
        w["kernel"] = w["kernel"] * s.reshape(w["kernel"].shape[-2:])
    else:  # Conv (kernel ... x in/groups x filters) and Dense (in x units)
        w["kernel"] = w["kernel"] * s
    w["bias"] = w["bias"] * s + t


def _fold_before(layer, w: dict, s: np.ndarray, t: np.ndarray) -> None:
    """`w` of `layer` preceded by `x -> s * x + t` on its input channels."""
    if isinstance(layer, _L.Dense):
        w["bias"] = w["bias"] + t @ w["kernel"]
        w["kernel"] = w["kernel"] * s[:, None]
        return
    if isinstance(layer, (*_DEPTHWISE, *_SEPARABLE)):
        key = "depthwise_kernel" if isinstance(layer, _SEPARABLE) else "kernel"
        dw = w[key]
        shifted = (t[:, None] * dw.sum(axis=_spatial(dw))).reshape(-1)  # constant per depthwise output
        if isinstance(layer, _SEPARABLE):
            pw = w["pointwise_kernel"]
            shifted = shifted @ pw.reshape(pw.shape[-2:])
        w["bias"] = w["bias"] + shifted
        w[key] = dw * s[:, None]
        return
    kernel = w["kernel"]  # Conv: input channel of kernel row j in group g is g * (in / groups) + j
    cin, filters = kernel.shape[-2:]
    group = np.arange(filters) // (filters // layer.groups)
    idx = group[None, :] * cin + np.arange(cin)[:, None]
    w["bias"] = w["bias"] + (kernel.sum(axis=_spatial(kernel)) * t[idx]).sum(axis=0)
    w["kernel"] = kernel * s[idx]


def _can_absorb_before(layer) -> bool:
    if isinstance(layer, _L.Dense):
        return True
    if isinstance(layer, _TRANSPOSED):  # border outputs see fewer taps: the shift is not uniform
        return False
    return layer.padding == "valid" or all(k == 1 for k in layer.kernel_size)


def _plain(layer) -> bool:
    """Built, not quantized, no LoRA: its weights are exactly what the layer multiplies by."""
    return (
        layer.built
        and getattr(layer, "quantization_mode", None) is None
        and not getattr(layer, "lora_enabled", False)
    )


# -- finding the folds ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Fold:
    affine: object  # the layer that disappears
    target: object  # the layer that absorbs it
    before: bool  # the affine layer precedes the target
    s: np.ndarray
    t: np.ndarray


def _count_calls(fn, counts: Counter, seen: set) -> None:
    """How many nodes call each operation, over `fn` and every nested model (each once)."""
    for node in _keras.nodes_in_order(fn):
        op = node.operation
        if op is None or node.is_input:
            continue
        counts[id(op)] += 1
        inner = _keras.functional_of(op)
        if inner is not None and id(op) not in seen:
            seen.add(id(op))
            _count_calls(inner, counts, seen)


def _find_folds(fn, calls: Counter, folds: dict, seen: set) -> None:
    """Fill `folds` (`id(affine) -> _Fold`) for `fn` and its nested models."""
    nodes = [n for n in _keras.nodes_in_order(fn) if n.operation is not None and not n.is_input]
    made_by = {id(t): n for n in nodes for t in n.outputs}
    used_by: dict[int, list] = {}
    for n in nodes:
        for t in n.input_tensors:
            used_by.setdefault(id(t), []).append(n)
    outputs = {id(t) for t in fn.outputs}
    claimed = {id(f.target) for f in folds.values()}

    def sole_consumer(tensor):
        users = used_by.get(id(tensor), [])
        return users[0] if len(users) == 1 and id(tensor) not in outputs else None

    def candidate(node, other) -> bool:
        return (
            other is not None
            and type(other.operation) in _TARGETS
            and calls[id(other.operation)] == 1
            and id(other.operation) not in claimed
            and len(other.outputs) == 1
            and len(other.input_tensors) == 1
            and _plain(other.operation)
            and other.operation.dtype_policy.name == node.operation.dtype_policy.name
        )

    for before in (False, True):  # folds into the preceding layer first
        for node in nodes:
            op = node.operation
            inner = _keras.functional_of(op)
            if inner is not None:
                if not before and id(op) not in seen:
                    seen.add(id(op))
                    _find_folds(inner, calls, folds, seen)
                continue
            if id(op) in folds or calls[id(op)] != 1 or len(node.input_tensors) != 1 or len(node.outputs) != 1:
                continue
            if _keras.call_arguments(node)[1].get("training") is True:
                continue
            x, y = node.input_tensors[0], node.outputs[0]
            if x.dtype != y.dtype or len(x.shape) < 2:
                continue
            affine = _affine(op, len(x.shape))
            if affine is None:
                continue
            if before:
                other = sole_consumer(y)
                ok = candidate(node, other) and _can_absorb_before(other.operation)
            else:
                other = made_by.get(id(x))
                ok = (
                    candidate(node, other)
                    and sole_consumer(x) is node
                    and other.operation.get_config().get("activation", "linear") == "linear"
                )
            if not ok:
                continue
            axis = _channel_axis(other.operation, len(x.shape))
            if (affine.axis is not None and affine.axis != axis) or x.shape[axis] is None:
                continue
            st = affine.along(int(x.shape[axis]))
            if st is None:
                continue
            folds[id(op)] = _Fold(op, other.operation, before, *st)
            claimed.add(id(other.operation))


# -- rebuilding -----------------------------------------------------------------------------------
class _Rebuild:
    """clone_function / call_function pair that drops folded layers (one pass)."""

    def __init__(self, folds: dict):
        self.folds = folds
        self.into = {id(f.target): f for f in folds.values()}
        self.cache: dict[int, object] = {}
        self.pairs: list = []

    def clone(self, layer):
        if id(layer) in self.cache:
            return self.cache[id(layer)]
        if id(layer) in self.folds:
            new = layer  # never called: `call` skips it
        elif _keras.functional_of(layer) is not None:
            new = self.model(layer)
        else:
            config = layer.get_config()
            if id(layer) in self.into:
                config["use_bias"] = True
            with _keras.trusted_deserialization():  # the caller's live config, not a file
                new = layer.__class__.from_config(config)
            self.pairs.append((layer, new))
        self.cache[id(layer)] = new
        return new

    def call(self, layer, *args, **kwargs):
        if id(layer) in self.folds:
            return args[0]
        return layer(*args, **kwargs)

    def model(self, model):
        if isinstance(model, keras.Sequential):  # clone_model takes no call_function here
            layers = [self.clone(la) for la in model.layers if id(la) not in self.folds]
            t = model.inputs[0]
            head = keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name)
            new = keras.Sequential([head, *layers], name=model.name, trainable=model.trainable)
            if model.compiled:
                new.compile_from_config(model.get_compile_config())
            return new
        return keras.models.clone_model(model, clone_function=self.clone, call_function=self.call)

    def set_weights(self) -> None:
        for layer, new in self.pairs:
            if not getattr(layer, "weights", None):
                continue
            fold = self.into.get(id(layer))
            if fold is None:
                # A copy: on JAX, `assign` keeps the very array it is given.
                new.set_weights([keras.ops.copy(v.value) for v in layer.weights])
                continue
            w = {v.name: _array(v) for v in layer.weights}
            if "bias" not in w:
                w["bias"] = np.zeros(new.bias.shape, np.float64)
            (_fold_before if fold.before else _fold_after)(layer, w, fold.s, fold.t)
            new.set_weights([w[v.name].astype(v.dtype) for v in new.weights])


def _plan(model) -> dict:
    """`id(affine layer) -> _Fold` for every fold possible in `model` now."""
    fn = _keras.functional_of(model)
    calls: Counter = Counter()
    _count_calls(fn, calls, set())
    folds: dict = {}
    _find_folds(fn, calls, folds, set())
    return folds


def _apply(model, folds: dict) -> keras.Model:
    rebuild = _Rebuild(folds)
    try:
        new = rebuild.model(model)
        rebuild.set_weights()
    except Exception as e:  # a layer refused its own config or weights
        raise PruningError(
            f"Rebuilding {describe(model)} with its affine layers folded failed: {type(e).__name__}: {e}"
        ) from e
    return new


def fold_batchnorm(model: keras.Model) -> keras.Model:
    """A new model with BatchNorm (and other per-channel affine layers) folded into the weights.

    Each `BatchNormalization` (inference statistics), ConvNeXt `LayerScale`,
    `Normalization` or `Rescaling` that sits right after a Conv / Depthwise /
    Separable / transposed Conv / Dense layer on its channel axis (or right
    before one whose padding adds no zero border) and is its only link is merged
    into that layer's kernel and bias (a bias is added where the layer had none).
    Chains (Conv -> BN -> BN) fold completely. Everything else is copied unchanged.

    Args:
        model: A built Functional or Sequential model; nested models are folded too.
            It is not modified.

    Returns:
        A new plain Keras model computing the same outputs in inference mode
        (up to float rounding), with one layer fewer per fold.

    Raises:
        PruningError: `model` is not a built Functional or Sequential model, or a
            layer cannot be rebuilt from its config.

    Example:
        >>> deployed = kerasprune.fold_batchnorm(pruned)
        >>> deployed.save("deployed.keras")
    """
    try:
        fn = _keras.functional_of(model)
    except ValueError as e:
        raise PruningError(str(e)) from None
    if fn is None:
        raise PruningError(f"fold_batchnorm needs a Functional or Sequential model. Received {describe(model)}")
    folds = _plan(model)
    new, total = _apply(model, folds), len(folds)
    while folds:  # one fold can enable the next (Conv -> BN -> BN)
        folds = _plan(new)
        if folds:
            new, total = _apply(new, folds), total + len(folds)
    log.info("kerasprune.fold_batchnorm: folded %d layer(s) of %s", total, model.name)
    return new
