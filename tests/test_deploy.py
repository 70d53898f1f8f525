"""`fold_batchnorm`: per-channel affine layers folded into their neighbours, exactly.

Every model has random weights and randomized BatchNorm statistics (fresh BN layers
are the identity and would hide a wrong fold). The folded model must compute the
unfolded one's outputs to 1e-5 (relative to the output scale), lose exactly the
folded layers and nothing else, and leave the original untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter

import keras
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp
from kerasprune import _keras
from kerasprune.testing import max_output_difference, random_input, randomize_batchnorm, randomize_weights
from test_applications import FAMILIES, build
from test_core import random_selection

TOL = 1e-5
AFFINE = ("BatchNormalization", "LayerScale", "Normalization", "Rescaling")
TARGETS = (L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose,
           L.DepthwiseConv1D, L.DepthwiseConv2D, L.SeparableConv1D, L.SeparableConv2D, L.Dense)


def flat(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from flat(layer)


def classes(model) -> Counter:
    return Counter(type(la).__name__ for la in flat(model))


def finish(i, y, seed=0, name=None) -> keras.Model:
    model = keras.Model(i, y, name=name)
    randomize_weights(model, seed)
    randomize_batchnorm(model, seed + 1)
    return model


def check_fold(model, folded_count: int, x=None) -> keras.Model:
    """Fold; same outputs, exactly `folded_count` affine layers fewer, original unchanged."""
    before = [np.array(w) for w in model.get_weights()]
    layers_before = classes(model)
    folded = kp.fold_batchnorm(model)
    x = random_input(model, batch=3, seed=4) if x is None else x
    diff = max_output_difference(model, folded, x)
    assert diff <= TOL, f"folded model differs by {diff:.3g}"
    assert classes(model) == layers_before
    assert all(np.array_equal(a, np.array(b)) for a, b in zip(before, model.get_weights())), "original modified"
    lost = layers_before - classes(folded)
    assert set(lost) <= set(AFFINE), f"lost non-affine layers: {lost}"
    assert not classes(folded) - layers_before, "layers were added"
    assert sum(lost.values()) == folded_count, lost
    return folded


# -- each foldable layer type -------------------------------------------------------------------
def after(layer, rank=2, channels_first=False, bn=None):
    # Not cubic: TF's channels_first Conv3DTranspose adds its bias on the wrong axis when the
    # output's channel and spatial sizes are all equal (plain Keras 3.15 / TF 2.21, oneDNN).
    size = {1: (10,), 2: (9, 9), 3: (5, 4, 3)}[rank]
    i = keras.Input((4, *size) if channels_first else (*size, 4))
    y = layer(i)
    y = (bn or L.BatchNormalization(axis=1 if channels_first else -1))(y)
    return finish(i, L.ReLU()(y))


AFTER = {
    "conv2d": lambda: after(L.Conv2D(6, 3, padding="same")),
    "conv2d_no_bias_strided": lambda: after(L.Conv2D(6, 3, strides=2, use_bias=False)),
    "conv2d_grouped": lambda: after(L.Conv2D(6, 3, groups=2, use_bias=False)),
    "conv2d_channels_first": lambda: after(L.Conv2D(6, 3, data_format="channels_first"), channels_first=True),
    "conv1d_causal": lambda: after(L.Conv1D(6, 3, padding="causal", use_bias=False), rank=1),
    "conv3d": lambda: after(L.Conv3D(6, 3, padding="same"), rank=3),
    "conv3d_channels_first": lambda: after(L.Conv3D(6, 2, data_format="channels_first"), rank=3, channels_first=True),
    "depthwise2d_multiplier": lambda: after(L.DepthwiseConv2D(3, depth_multiplier=3, use_bias=False)),
    "depthwise1d": lambda: after(L.DepthwiseConv1D(3, depth_multiplier=2, padding="same"), rank=1),
    "separable2d": lambda: after(L.SeparableConv2D(6, 3, depth_multiplier=2, use_bias=False)),
    "separable1d": lambda: after(L.SeparableConv1D(6, 3, padding="same"), rank=1),
    "conv2d_transpose": lambda: after(L.Conv2DTranspose(6, 3, strides=2, use_bias=False)),
    "conv1d_transpose": lambda: after(L.Conv1DTranspose(6, 3, padding="same"), rank=1),
    "conv3d_transpose_channels_first": lambda: after(
        L.Conv3DTranspose(6, 2, data_format="channels_first"), rank=3, channels_first=True
    ),
    "dense_on_4d": lambda: after(L.Dense(6, use_bias=False)),
    "dense_bn_no_scale_no_center": lambda: after(L.Dense(6), bn=L.BatchNormalization(scale=False, center=False)),
    "conv2d_rescaling": lambda: after(L.Conv2D(6, 3), bn=L.Rescaling(0.5, offset=-1.0)),
}


#: re-run on JAX and PyTorch (one per kernel layout; JAX compiles every eager op, so not all)
ON_EVERY_BACKEND = {"conv2d_grouped", "conv3d_channels_first", "depthwise2d_multiplier", "separable1d",
                    "conv2d_transpose", "dense_on_4d", "conv2d_grouped_valid", "depthwise_valid",
                    "separable_valid", "dense"}


def _params(names):
    return [pytest.param(n, marks=[pytest.mark.backend] if n in ON_EVERY_BACKEND else [], id=n) for n in names]


@pytest.mark.parametrize("name", _params(AFTER))
def test_fold_after_each_layer_type(name):
    folded = check_fold(AFTER[name](), 1)
    absorbing = next(la for la in flat(folded) if isinstance(la, TARGETS))
    assert absorbing.use_bias  # a bias is created where the layer had none


def before(layer, bn=None, rank=2):
    i = keras.Input({1: (10, 4), 2: (9, 9, 4)}[rank])
    x = L.ReLU()(i)
    return finish(i, layer((bn or L.BatchNormalization())(x)))


BEFORE = {
    "conv2d_valid": lambda: before(L.Conv2D(6, 3, strides=2)),
    "conv2d_grouped_valid": lambda: before(L.Conv2D(6, 3, groups=2, use_bias=False)),
    "conv2d_same_1x1": lambda: before(L.Conv2D(6, 1, padding="same")),
    "conv1d_valid_dilated": lambda: before(L.Conv1D(6, 3, dilation_rate=2), rank=1),
    "depthwise_valid": lambda: before(L.DepthwiseConv2D(3, depth_multiplier=2)),
    "separable_valid": lambda: before(L.SeparableConv2D(5, 3, depth_multiplier=2)),
    "dense": lambda: before(L.Dense(5)),
    "dense_after_normalization": lambda: before(
        L.Dense(5), bn=L.Normalization(mean=[0.1, 0.2, -0.3, 0.4], variance=[1.0, 2.0, 0.5, 4.0])
    ),
}


@pytest.mark.parametrize("name", _params(BEFORE))
def test_fold_before_a_layer_without_zero_border(name):
    check_fold(BEFORE[name](), 1)


@pytest.mark.backend
def test_conv_bn_bn_chain_folds_completely_and_layer_scale_folds():
    i = keras.Input((8, 8, 3))
    x = L.BatchNormalization()(L.BatchNormalization()(L.Conv2D(4, 3, use_bias=False)(i)))
    scale = _keras.application_class("convnext", "LayerScale")(0.5, 5)
    y = L.Add()([L.Dense(5)(x), scale(L.Dense(5)(x))])
    check_fold(finish(i, y), 3)


def two_consumers():
    i = keras.Input((8, 8, 3))
    c = L.Conv2D(4, 3, padding="same", name="conv")(i)
    return finish(i, L.Add()([L.BatchNormalization(name="bn")(c), c]))


def shared_conv():
    i = keras.Input((8, 8, 3))
    conv = L.Conv2D(3, 3, padding="same")
    return finish(i, L.Add()([L.BatchNormalization()(conv(i)), conv(conv(i))]))


def activation_between():
    i = keras.Input((8, 8, 3))
    return finish(i, L.BatchNormalization()(L.Conv2D(4, 3, activation="relu")(i)))


def other_axis():
    i = keras.Input((8, 6, 3))
    return finish(i, L.BatchNormalization(axis=1)(L.Conv2D(4, 3, padding="same")(i)))


def same_padding_after():
    i = keras.Input((8, 8, 3))
    return finish(i, L.Conv2D(4, 3, padding="same")(L.BatchNormalization()(L.ReLU()(i))))


def training_call():
    i = keras.Input((8, 8, 3))
    return finish(i, L.BatchNormalization()(L.Conv2D(4, 3)(i), training=True))


@pytest.mark.parametrize(
    "builder",
    [pytest.param(two_consumers, marks=pytest.mark.backend), shared_conv, activation_between, other_axis,
     pytest.param(same_padding_after, marks=pytest.mark.backend), training_call],
)
def test_inexact_or_unknown_cases_are_left_unfolded(builder):
    model = builder()
    x = random_input(model, batch=3)
    folded = check_fold(model, 0, x=x)
    assert folded is not model


@pytest.mark.backend
def test_sequential_nested_and_shared_models():
    rng_cnn = keras.Sequential(
        [keras.Input((8, 8, 3)), L.Conv2D(4, 3), L.BatchNormalization(), L.ReLU(), L.Flatten(), L.Dense(3)],
        name="seq",
    )
    randomize_weights(rng_cnn, 1)
    randomize_batchnorm(rng_cnn, 2)
    folded = check_fold(rng_cnn, 1)
    assert isinstance(folded, keras.Sequential)
    # A backbone (nested Functional, itself holding a nested Sequential) under a new head,
    # called twice: folds inside the nested models apply to both calls.
    inner_in = keras.Input((8, 8, 4))
    block = keras.Sequential([keras.Input((8, 8, 6)), L.Conv2D(6, 1, use_bias=False), L.BatchNormalization()])
    y = block(L.BatchNormalization()(L.Conv2D(6, 3, padding="same")(inner_in)))
    backbone = keras.Model(inner_in, L.ReLU()(y), name="backbone")
    i = keras.Input((8, 8, 4))
    z = L.Concatenate()([backbone(i), backbone(L.ReLU()(i))])
    z = L.BatchNormalization()(L.Dense(5)(L.GlobalAveragePooling2D()(z)))
    model = finish(i, z)
    folded = check_fold(model, 3)
    assert isinstance(folded.get_layer("backbone"), keras.Model)


def test_folded_pruned_model_equals_pruned_model():
    model = build("MobileNetV3Small")
    graph = kp.analyze(model)
    pruned = kp.remove_filters(model, random_selection(graph, fraction=0.4, seed=3), graph=graph)
    bns = classes(pruned)["BatchNormalization"]
    folded = check_fold(pruned, bns, x=random_input(model, batch=2, seed=5))
    assert folded.count_params() < pruned.count_params()
    assert kp.count_flops(folded) <= kp.count_flops(pruned)


#: every family of keras.applications (test_applications.py's, plus the core four)
APPS = {"VGG16": 32, "ResNet50": 32, "MobileNetV2": 32, "DenseNet121": 32, **FAMILIES}
for _name in ("InceptionResNetV2", "NASNetMobile"):  # the patterns of InceptionV3 / Xception, 3-4x the layers
    APPS.pop(_name)


@pytest.mark.slow
@pytest.mark.parametrize("name", APPS)
def test_applications_fold_exactly(name, monkeypatch):
    monkeypatch.setitem(FAMILIES, name, APPS[name])
    model = build(name)
    folded = kp.fold_batchnorm(model)
    x = random_input(model, batch=2, seed=6)
    assert max_output_difference(model, folded, x) <= TOL
    lost = classes(model) - classes(folded)
    assert set(lost) <= set(AFFINE) and not classes(folded) - classes(model)
    # What is left cannot be folded: no BN right after a layer that could absorb it.
    for bn in (la for la in flat(folded) if isinstance(la, L.BatchNormalization)):
        assert not isinstance(_keras.producer_of(bn.input), TARGETS), bn.name
    if name == "ConvNeXtTiny":
        assert lost["LayerScale"] == 18
    elif name != "VGG16":
        assert lost["BatchNormalization"] > 0


def test_folded_model_saves_and_loads_without_kerasprune(tmp_path):
    model = AFTER["separable2d"]()
    folded = kp.fold_batchnorm(model)
    x = random_input(model, batch=3)
    folded.save(tmp_path / "folded.keras")
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import sys
        import keras, numpy as np
        model = keras.saving.load_model({str(tmp_path / "folded.keras")!r})
        y = keras.ops.convert_to_numpy(model(np.load({str(tmp_path / "x.npy")!r}), training=False))
        np.save({str(tmp_path / "y.npy")!r}, y)
        assert not any(m.startswith("kerasprune") for m in sys.modules), "kerasprune was imported"
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    want = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, rtol=1e-5, atol=1e-5)


@pytest.mark.backend
def test_refuses_models_it_cannot_rebuild():
    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(kp.PruningError, match="Functional or Sequential"):
        kp.fold_batchnorm(Sub())
    with pytest.raises(kp.PruningError, match="not built"):
        kp.fold_batchnorm(keras.Sequential([L.Dense(2)]))
