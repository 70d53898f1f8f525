"""keras.applications coverage: one architecture per family, plus the patterns each brings.

VGG16, ResNet50, MobileNetV2 and DenseNet121 run in test_applications_core.py; the
other families run here. Every model is untrained (`weights=None`) at the smallest input
it accepts, with randomized BatchNorm statistics and layer scales. The full sweep of all
40 constructors is `benchmarks/coverage.py` (results in benchmarks/results/coverage.md).
"""

import inspect

import keras
import numpy as np
import pytest

import kerasprune as kp
from conftest import assert_removal_equals_masking
from kerasprune.testing import copy_model, max_output_difference, random_input, randomize_batchnorm
from test_core import random_selection

#: family representative -> smallest input size it accepts with include_top=True
FAMILIES = {
    "ResNet50V2": 32,
    "InceptionV3": 75,
    "InceptionResNetV2": 75,
    "Xception": 71,
    "MobileNet": 32,
    "MobileNetV3Small": 32,
    "NASNetMobile": 32,
    "EfficientNetB0": 32,
    "EfficientNetV2B0": 32,
    "ConvNeXtTiny": 32,
}
#: also run on JAX and torch (JAX builds applications slowly; the coverage script runs more)
ON_EVERY_BACKEND = {"ConvNeXtTiny"}


def build(name):
    ctor = getattr(keras.applications, name)
    size = FAMILIES[name]
    kwargs = {"weights": None, "input_shape": (size, size, 3), "classes": 10}
    if "classifier_activation" in inspect.signature(ctor).parameters:
        kwargs["classifier_activation"] = None
    model = ctor(**kwargs)
    randomize_batchnorm(model, seed=1)
    rng = np.random.default_rng(2)
    for layer in model.layers:  # ConvNeXt's layer scale starts at 1e-6; LayerNorm at 1 / 0
        if not isinstance(layer, keras.layers.BatchNormalization):
            for name_, mean in (("gamma", 1.0), ("beta", 0.0)):
                v = getattr(layer, name_, None)
                if isinstance(v, keras.Variable):
                    v.assign(rng.normal(mean, 0.5, tuple(v.shape)).astype("float32"))
    return model


def _params(name):
    marks = [pytest.mark.backend] if name in ON_EVERY_BACKEND else []
    return pytest.param(name, marks=marks, id=name)


def check_convnext(model, graph, pruned):
    approx = [g for g in graph.prunable_groups if not g.exact]
    # One residual stream per stage, each normalized by LayerNormalization.
    assert len(approx) == 4
    assert all("LayerNormalization" in g.approx_reason for g in approx)
    # The depthwise conv (a Conv2D with groups == channels) passes channels through.
    stream = graph.group_of("convnext_tiny_stage_0_block_0_depthwise_conv")
    assert stream.prunable and stream in approx
    # Approximate groups still give a valid smaller model; the outputs drift.
    sel = random_selection(graph, fraction=0.25, seed=0, exact_only=False)
    smaller = kp.remove_filters(model, sel, graph=graph)
    masked = copy_model(model)
    kp.mask_filters(masked, sel)
    diff = max_output_difference(smaller, masked, random_input(model))
    assert np.isfinite(diff) and diff > 0
    assert smaller.count_params() < pruned.count_params()
    dw = smaller.get_layer("convnext_tiny_stage_0_block_0_depthwise_conv")
    assert dw.groups == dw.filters == stream.size - len(sel[stream.layers[0]])


def check_mobilenet_v3(model, graph, pruned):
    # hard_sigmoid(x) = ReLU(6)(x + 3) * (1/6) is built from symbolic ops, inside the
    # squeeze-excite gate: GAP -> Conv -> ReLU -> Conv -> hard_sigmoid -> Multiply.
    ops = {type(graph.records[k].layer).__module__ for k in graph.order}
    assert "keras.src.ops.numpy" in ops
    assert graph.group_of("expanded_conv_squeeze_excite_conv").prunable
    # The excite conv's channels gate the depthwise stream: one group with it.
    gate = graph.group_of("expanded_conv_squeeze_excite_conv_1")
    assert gate is graph.group_of("expanded_conv_depthwise_bn") and gate.prunable
    assert "expanded_conv_project" in gate.members


def check_efficientnet(model, graph, pruned):
    types = {type(graph.records[k].layer).__name__ for k in graph.order}
    assert {"Rescaling", "Normalization", "Dropout"} <= types
    # Stochastic depth: Dropout(noise_shape=(None, 1, 1, 1)) is kept as it is.
    drops = [
        layer for layer in pruned.layers if isinstance(layer, keras.layers.Dropout) and layer.noise_shape
    ]
    assert drops and all(tuple(d.noise_shape) == (None, 1, 1, 1) for d in drops)


def check_inception_resnet(model, graph, pruned):
    # CustomScaleLayer computes x + r * scale: the residual branches' convs join the stream.
    stream = graph.group_of("block35_1_conv")
    assert {"block35_1_conv", "block35_2_conv"} <= set(stream.layers)
    assert stream.prunable and stream.exact
    assert pruned.get_layer("block35_1_conv").filters < model.get_layer("block35_1_conv").filters


def check_nasnet(model, graph, pruned):
    types = {type(graph.records[k].layer).__name__ for k in graph.order}
    assert {"Cropping2D", "ZeroPadding2D", "Concatenate", "SeparableConv2D"} <= types
    assert len(graph.prunable_groups) == len(graph.groups) - 1  # all but the classifier


CHECKS = {
    "ConvNeXtTiny": check_convnext,
    "MobileNetV3Small": check_mobilenet_v3,
    "EfficientNetB0": check_efficientnet,
    "InceptionResNetV2": check_inception_resnet,
    "NASNetMobile": check_nasnet,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", [_params(n) for n in FAMILIES])
def test_family_removal_equals_masking(name):
    model = build(name)
    graph = kp.analyze(model)
    exact = [g for g in graph.prunable_groups if g.exact]
    assert len(exact) > 5, graph.summary()
    sel = random_selection(graph, fraction=0.25, seed=0)
    pruned, masked = assert_removal_equals_masking(model, sel)
    assert pruned.count_params() < 0.9 * model.count_params()
    # The removal is not a no-op: masking changed the original's outputs.
    assert max_output_difference(model, masked, random_input(model)) > 1e-3
    if name in CHECKS:
        CHECKS[name](model, graph, pruned)
