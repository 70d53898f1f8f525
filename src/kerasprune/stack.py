"""A native crash of CPU training on strided 1x1 convolutions (oneDNN), and kerasprune's guard.

The bug: the weight gradient of a 1x1 convolution with a stride > 1 on
float32 data runs oneDNN's x86 `jit_1x1` backward-weights kernel
(`jit_avx512_common_1x1_convolution_bwd_weights_t`; in TensorFlow the op
`_MklNativeConv2DBackpropFilter`). When the convolution has fewer than 16 input
channels (per group) that kernel writes past its per-thread workspace (the
input copied to unit stride), so training corrupts the heap and the process
dies: `Segmentation fault`, `munmap_chunk(): invalid pointer`, `double free or
corruption`. Whether it does on a given batch depends on how the batch splits
over threads, which is why a ragged last batch usually sets it off. It is
oneDNN issue uxlfoundation/oneDNN#6035, open. Affected: TensorFlow with oneDNN
on (its x86 default) - every tensorflow-cpu release Keras 3.15 runs on, 2.16.2
to 2.21.0 (oneDNN 3.3.4 to 3.7.3) - and PyTorch 2.13 (oneDNN 3.12), whose
Keras backend hands convolutions channels-last tensors. JAX (XLA's own CPU
convolutions) is not. Only training is: forward passes use other kernels.
Pruning produces such layers - a projection shortcut left with 11 input
channels - and a model with one crashes the same way with or without
kerasprune. Details and measurements: docs/training-crash.md.

The guard: `safe_training(model)` runs every such layer of `model`, while it is
active, as a strided slice of its input followed by the same convolution at
unit stride. That computes the same products and sums (a 1x1 kernel reads one
input pixel per output pixel, `"same"` and `"valid"` padding add nothing) and
its gradient takes oneDNN's unit-stride path, which has no workspace. The
layer's config and weights are untouched, so checkpoints saved meanwhile are
the real model. kerasprune's own training - every `model.fit` of
`prune_and_finetune` and any `model.fit` with a `SoftPruning` callback - runs
under it; where nothing is at risk (another backend, oneDNN off, another CPU,
no such layer) it does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from collections.abc import Callable, Iterator

import keras

log = logging.getLogger(__name__)

#: oneDNN's input-channel block for f32 on AVX-512 (AVX2 uses 8): fewer input channels are at risk.
MIN_SAFE_CHANNELS = 16

#: (where, model name, layer names) already warned about: once each per process.
_WARNED: set[tuple] = set()


def onednn_training_bug() -> bool:
    """True when this process trains convolutions with the affected oneDNN kernel.

    That is: an x86 CPU, and either the TensorFlow backend with TensorFlow's
    oneDNN optimizations on (its default there; `TF_ENABLE_ONEDNN_OPTS=0` before
    TensorFlow is imported turns them off), or the PyTorch backend with
    `torch.backends.mkldnn.enabled`. No release is known to be fixed, so
    versions are not consulted.
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    backend = keras.backend.backend()
    if backend == "tensorflow":
        try:
            from tensorflow.python.util import _pywrap_util_port

            return bool(_pywrap_util_port.IsMklEnabled())
        except (ImportError, AttributeError):  # pragma: no cover - a TensorFlow without the probe
            return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() not in ("0", "false")
    if backend == "torch":
        import torch

        return bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)
    return False


def _switch_off() -> str:
    if keras.backend.backend() == "torch":
        return "set torch.backends.mkldnn.enabled = False"
    return "set TF_ENABLE_ONEDNN_OPTS=0 before importing TensorFlow"


def at_risk_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers of `model` (nested models included) whose weight gradient hits the bug.

    Trainable `Conv1D` / `Conv2D` / `Conv3D` layers with a 1x1 kernel, a stride
    above 1, either data format (TensorFlow runs channels_first as NHWC on CPU),
    float32 compute and fewer than
    `MIN_SAFE_CHANNELS` input channels per group. Which build is affected is
    `onednn_training_bug()`'s question, not this one's.
    """
    found, seen = [], set()
    for layer in _walk(model, seen):
        if _is_at_risk(layer):
            found.append(layer)
    return found


def _walk(layer, seen: set) -> Iterator:
    if id(layer) in seen:
        return
    seen.add(id(layer))
    yield layer
    for sub in getattr(layer, "layers", None) or ():
        yield from _walk(sub, seen)
    inner = getattr(layer, "layer", None)  # TimeDistributed, Bidirectional-style wrappers
    if isinstance(inner, keras.layers.Layer):
        yield from _walk(inner, seen)


def _is_at_risk(layer) -> bool:
    if not isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
        return False
    if not layer.trainable or not layer.built:  # channels_first too: TensorFlow runs it as NHWC on CPU
        return False
    if any(k != 1 for k in layer.kernel_size) or all(s == 1 for s in layer.strides):
        return False
    if keras.backend.standardize_dtype(layer.compute_dtype) != "float32":
        return False
    return int(layer.kernel.shape[-2]) < MIN_SAFE_CHANNELS


@contextlib.contextmanager
def safe_training(model: keras.Model, *, where: str = "training") -> Iterator[list[str]]:
    """Train `model` inside this block without the oneDNN crash (see the module docstring).

    Yields the names of the layers it reroutes (empty where nothing is at risk).
    The model's train function is remade (untraced) on entry, and its train,
    test and predict functions on exit, so later calls trace the layers as they are.

    Example:
        >>> with kerasprune.stack.safe_training(small):
        ...     small.fit(x, y, epochs=3)
    """
    restore = guard(model, where=where)
    try:
        yield list(restore.layers)
    finally:
        restore()


class _Restore:
    def __init__(self, model, layers: list, undo: list[Callable[[], None]]):
        self.model, self.layers, self._undo = model, [layer.name for layer in layers], undo

    def __call__(self) -> None:
        if not self._undo:
            return
        for undo in self._undo:
            undo()
        self._undo = []
        _reset_train_function(self.model)
        for name in ("test_function", "predict_function"):  # traced meanwhile (validation): made anew
            if getattr(self.model, name, None) is not None:
                setattr(self.model, name, None)


def guard(model: keras.Model, *, where: str = "training") -> _Restore:
    """Reroute `model`'s at-risk layers now; returns a callable that undoes it.

    The building block of `safe_training`, for code that starts and ends
    training in different places (a callback's `on_train_begin` / `on_train_end`).
    Logs a warning naming the layers, once per model name and layers (the
    successive models of `prune_and_finetune` share them).
    """
    if not onednn_training_bug():
        return _Restore(model, [], [])
    layers = at_risk_layers(model)
    if not layers:
        return _Restore(model, [], [])
    if _first_time(where, model, layers):
        log.warning(
            "%s: %s of model '%s' %s a 1x1 convolution with stride > 1 and fewer than %d input channels; "
            "training it with oneDNN's kernels crashes the process (oneDNN bug, docs/training-crash.md). "
            "kerasprune runs %s as a strided slice + unit-stride convolution (same result) while it trains. "
            "Outside kerasprune, train this model inside kerasprune.stack.safe_training(model), or %s.",
            where, _names(layers), model.name, "is" if len(layers) == 1 else "are", MIN_SAFE_CHANNELS,
            "it" if len(layers) == 1 else "them", _switch_off(),
        )
    undo = {layer.name: _reroute(layer) for layer in layers}
    left = [layer for layer in layers if undo[layer.name] is None]
    if left:
        log.warning(
            "%s: cannot reroute %s of model '%s' (subclassed convolutions); training may crash there. %s.",
            where, _names(left), model.name, _switch_off().capitalize(),
        )
    done = [layer for layer in layers if undo[layer.name] is not None]
    _reset_train_function(model)
    return _Restore(model, done, [u for u in undo.values() if u is not None])


def warn_if_at_risk(model: keras.Model, *, where: str) -> list[str]:
    """Warn (once per model) when training `model` outside the guard would crash; returns the layer names."""
    if not onednn_training_bug():
        return []
    layers = at_risk_layers(model)
    if layers and _first_time(f"{where} returned", model, layers):
        log.warning(
            "%s: the returned model '%s' has %s with stride > 1 and fewer than %d input channels; training "
            "it with oneDNN outside kerasprune crashes the process (oneDNN bug, docs/training-crash.md): train "
            "it inside kerasprune.stack.safe_training(model), or %s.",
            where, model.name, _names(layers, "1x1 convolution"), MIN_SAFE_CHANNELS, _switch_off(),
        )
    return [layer.name for layer in layers]


def _first_time(where: str, model, layers) -> bool:
    key = (where, model.name, tuple(layer.name for layer in layers))
    if key in _WARNED:
        return False
    _WARNED.add(key)
    return True


def _names(layers, noun: str = "layer") -> str:
    shown = ", ".join(f"'{layer.name}' ({int(layer.kernel.shape[-2])} input channels)" for layer in layers[:4])
    more = f" and {len(layers) - 4} more" if len(layers) > 4 else ""
    return f"{noun}{'s' if len(layers) > 1 else ''} {shown}{more}"


_CONVS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def _reroute(layer) -> Callable[[], None] | None:
    """Make `layer` slice its input by its strides and convolve at unit stride; returns the undo.

    Only the stock `Conv1D`/`Conv2D`/`Conv3D` classes (a subclass may compute
    differently): `convolution_op` is replaced on the instance, and `Conv1D`,
    whose `call` convolves by itself, gets the base class's `call`, which goes
    through `convolution_op` (its causal padding is nothing for a 1x1 kernel).
    Nothing is mutated while a call runs, so replicas may trace concurrently.
    Returns None for a layer it cannot reroute.
    """
    if type(layer) not in _CONVS:
        return None
    data_format = layer.data_format
    spatial = tuple(slice(None, None, int(s)) for s in layer.strides)
    index = (slice(None), *spatial, slice(None)) if data_format == "channels_last" else (slice(None), slice(None), *spatial)

    def convolution_op(inputs, kernel):
        return keras.ops.conv(inputs[index], kernel, strides=1, padding="valid", data_format=data_format)

    patched = {"convolution_op": convolution_op}
    if type(layer) is keras.layers.Conv1D:
        patched["call"] = super(keras.layers.Conv1D, layer).call
    own = vars(layer)
    saved = {name: own[name] for name in patched if name in own}
    for name, value in patched.items():
        setattr(layer, name, value)

    def undo() -> None:
        for name in patched:
            if name in saved:
                setattr(layer, name, saved[name])
            else:
                delattr(layer, name)

    return undo


def _reset_train_function(model) -> None:
    """A fresh, untraced train function (`fit` may already hold the model: it calls it by attribute)."""
    if getattr(model, "train_function", None) is not None:
        model.make_train_function(force=True)
