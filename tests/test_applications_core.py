"""The contract on the keras.applications models named by the core issue (weights=None, small inputs)."""

import keras
import pytest

import kerasprune as kp
from conftest import assert_removal_equals_masking
from kerasprune.testing import randomize_batchnorm, randomize_weights
from test_core import random_selection

BUILDERS = {
    "VGG16": lambda: keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=10),
    "ResNet50": lambda: keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10),
    "MobileNetV2": lambda: keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10),
    "DenseNet121": lambda: keras.applications.DenseNet121(weights=None, input_shape=(32, 32, 3), classes=10),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_application_removal_equals_masking(name):
    model = BUILDERS[name]()
    randomize_weights(model, seed=1)
    randomize_batchnorm(model, seed=2)
    graph = kp.analyze(model)
    assert len(graph.prunable_groups) > 3
    assert all(g.exact for g in graph.prunable_groups)
    sel = random_selection(graph, fraction=0.25, seed=0)
    pruned, _ = assert_removal_equals_masking(model, sel)
    assert pruned.count_params() < 0.85 * model.count_params()


def test_resnet50_residual_stages_are_single_groups():
    model = BUILDERS["ResNet50"]()
    graph = kp.analyze(model)
    stage = graph.group_of("conv2_block1_0_conv")
    # The projection shortcut and every block's last conv of the stage feed one residual stream.
    assert set(stage.layers[:2]) == {"conv2_block1_0_conv", "conv2_block1_3_conv"}
    assert stage.layers[2:] == ("conv2_block2_3_conv", "conv2_block3_3_conv")
    assert stage.size == 256 and stage.prunable
