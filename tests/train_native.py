"""Child process for tests/test_training_native.py: prune a BatchNorm model to odd widths and train it.

A native crash inside TensorFlow (issue 11: oneDNN's strided 1x1 weight gradient
on fewer than 16 input channels) kills the process that trains, so the tests
run this script in a subprocess and read its last line. It builds a model,
removes filters so that the widths are odd (the residual model's 1x1 stride-2
projection is left with 11 input channels), then trains the pruned model on a
data set that does not divide by the batch size (a ragged last batch of 3):

1. `model.fit` with a `SoftPruning` callback (frequency "batch"),
2. `prune_and_finetune` (one more step, one epoch),
3. plain `model.fit` inside `kerasprune.stack.safe_training`,

and prints `TRAINED {json}` with the widths, the layers the guard rerouted and
the losses. Usage: `python tests/train_native.py KIND [KIND ...]` with kinds
`resnet`, `depthwise`, `dense`, run in that order (`START kind` before each, so
a parent can tell in which one the process died).

The builders are shared with benchmarks/training_crash.py.
"""

from __future__ import annotations

import json
import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers as L  # noqa: E402

BATCH = 16
SAMPLES = 4 * BATCH + 3  # a ragged last batch of 3


def _bn_conv(x, filters, kernel, name, strides=1, relu=True):
    x = L.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=name)(x)
    x = L.BatchNormalization(name=f"{name}_bn")(x)
    return L.ReLU(name=f"{name}_relu")(x) if relu else x


def resnet(widths=(16, 16, 16, 32, 32, 32), shape=(16, 16, 1), classes=10) -> keras.Model:
    """The issue's ResNet: stem (w0), two identity blocks (mid w1, w2), a stride-2 block with a
    1x1 projection (mid w3, out w4), an identity block (mid w5), GAP, Dense softmax."""
    w0, w1, w2, w3, w4, w5 = widths
    inp = keras.Input(shape)
    x = _bn_conv(inp, w0, 3, "stem")
    for name, mid in (("b1", w1), ("b2", w2)):
        y = _bn_conv(_bn_conv(x, mid, 3, f"{name}_a"), w0, 3, f"{name}_b", relu=False)
        x = L.ReLU(name=f"{name}_out")(L.Add(name=f"{name}_add")([x, y]))
    y = _bn_conv(_bn_conv(x, w3, 3, "c_a", strides=2), w4, 3, "c_b", relu=False)
    p = _bn_conv(x, w4, 1, "c_proj", strides=2, relu=False)
    x = L.ReLU(name="c_out")(L.Add(name="c_add")([p, y]))
    y = _bn_conv(_bn_conv(x, w5, 3, "d_a"), w4, 3, "d_b", relu=False)
    x = L.ReLU(name="d_out")(L.Add(name="d_add")([x, y]))
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(classes, activation="softmax", name="head")(x), name="resnet")


def depthwise(shape=(16, 16, 3), classes=10) -> keras.Model:
    """MobileNet-like: stem, a depthwise-separable residual block, an expanded stride-2 depthwise block."""
    inp = keras.Input(shape)
    x = _bn_conv(inp, 32, 3, "stem", strides=2)
    y = L.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw1")(x)
    y = L.ReLU(name="dw1_relu")(L.BatchNormalization(name="dw1_bn")(y))
    y = _bn_conv(y, 32, 1, "pw1", relu=False)
    x = L.Add(name="add1")([x, y])
    x = _bn_conv(x, 64, 1, "expand")
    x = L.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, name="dw2")(x)
    x = L.ReLU(name="dw2_relu")(L.BatchNormalization(name="dw2_bn")(x))
    x = _bn_conv(x, 24, 1, "pw2")
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(classes, activation="softmax", name="head")(x), name="depthwise")


def dense(features=20, classes=10) -> keras.Model:
    """Dense layers with BatchNorm and a dense softmax head."""
    inp = keras.Input((features,))
    x = inp
    for name, units in (("d1", 64), ("d2", 48)):
        x = L.Dense(units, use_bias=False, name=name)(x)
        x = L.ReLU(name=f"{name}_relu")(L.BatchNormalization(name=f"{name}_bn")(x))
    return keras.Model(inp, L.Dense(classes, activation="softmax", name="head")(x), name="dense")


#: kind -> (builder, {layer: removed channel count}, {layer: expected filters after removal})
KINDS = {
    # the crashing widths 11, 14, 15, 27, 16, 30 from 16, 16, 16, 32, 32, 32
    "resnet": (resnet, {"stem": 5, "b1_a": 2, "b2_a": 1, "c_a": 5, "c_proj": 16, "d_a": 2},
               {"stem": 11, "b1_b": 11, "c_proj": 16, "b1_a": 14, "b2_a": 15, "c_a": 27, "d_a": 30}),
    "depthwise": (depthwise, {"stem": 11, "expand": 19, "pw2": 11}, {"stem": 21, "pw1": 21, "expand": 45, "pw2": 13}),
    "dense": (dense, {"d1": 27, "d2": 19}, {"d1": 37, "d2": 29}),
}  # fmt: skip


def data(model: keras.Model, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *model.input_shape[1:])).astype("float32")
    return x, rng.integers(0, model.output_shape[-1], n)


def compile_model(model: keras.Model) -> keras.Model:
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def pruned(kind: str) -> keras.Model:
    """The model of `kind` with the odd widths of `KINDS` (the lowest-index filters removed)."""
    import kerasprune as kp

    build, removed, expected = KINDS[kind]
    keras.utils.set_random_seed(0)
    model = build()
    small = kp.remove_filters(model, {name: list(range(k)) for name, k in removed.items()})
    widths = {name: _width(small.get_layer(name)) for name in expected}
    if widths != expected:
        raise SystemExit(f"unexpected widths {widths}, expected {expected}")
    return compile_model(small)


def _width(layer) -> int:
    return int(layer.filters if hasattr(layer, "filters") else layer.units)


def main(kind: str) -> None:
    import kerasprune as kp

    small = pruned(kind)
    widths = {layer.name: _width(layer) for layer in small.layers if hasattr(layer, "filters") or hasattr(layer, "units")}
    at_risk = [layer.name for layer in kp.stack.at_risk_layers(small)]
    x, y = data(small, SAMPLES)
    xv, yv = data(small, 2 * BATCH + 5, seed=1)

    pruning = kp.SoftPruning("l1", ratio=0.25, frequency="batch", verbose=0)
    soft = small.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[pruning], verbose=0).history["loss"]
    soft_small = pruning.finalize()

    tuned, history = kp.prune_and_finetune(
        small, criterion="l1", target_ratio=0.2, steps=1, epochs_per_step=1, train_data=(x, y),
        val_data=(xv, yv), monitor="val_loss", mode="min", fit_options={"batch_size": BATCH}, verbose=0,
    )  # fmt: skip

    with kp.stack.safe_training(tuned) as rerouted:
        plain = tuned.fit(x, y, batch_size=BATCH, epochs=1, verbose=0).history["loss"]

    losses = [*soft, *history.rows[-1].epochs, *plain]
    report = {
        "kind": kind,
        "backend": keras.backend.backend(),
        "widths": widths,
        "at_risk": at_risk,
        "guarded": kp.stack.onednn_training_bug(),
        "rerouted": rerouted,
        "params": small.count_params(),
        "soft_params": soft_small.count_params(),
        "tuned_params": tuned.count_params(),
        "losses": losses,
        "finite": all(math.isfinite(v) for v in losses),
    }
    print("TRAINED " + json.dumps(report), flush=True)


if __name__ == "__main__":
    for kind in sys.argv[1:]:
        print(f"START {kind}", flush=True)
        main(kind)
