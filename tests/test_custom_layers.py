"""Users' own layers: registering a rule, barriers when none is registered, Lambda layers."""

import keras
import numpy as np
import pytest
from keras import layers as L
from keras.src.saving.serialization_lib import SafeModeScope

import kerasprune as kp
from conftest import assert_removal_equals_masking
from kerasprune.testing import copy_model, max_output_difference, random_input, randomize_weights


class MyScale(keras.layers.Layer):
    """A learned per-channel scale: the example of the README."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(self.channels,), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


class MyShift(MyScale):
    """A per-channel shift, registered with the decorator form."""

    def call(self, x):
        return x + self.scale


class MyConv(L.Conv2D):
    """A subclass of a supported layer: found through the class hierarchy."""


@pytest.fixture
def registered_scale():
    kp.register_rule(MyScale, kp.ChannelParams(("scale",), config_key="channels"))
    yield
    kp.unregister_rule(MyScale)


def scale_model(layer_cls=MyScale):
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, name="c1")(i)
    x = layer_cls(6, name="scale")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(5, 3, name="c2")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(i, L.Dense(2, name="head")(x))
    randomize_weights(model, seed=5)
    return model


def lambda_model(fn=lambda t: t * 2.0 + 1.0):
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, name="c1")(i)
    x = L.Lambda(fn, name="my_lambda")(x)
    x = L.Conv2D(5, 3, name="c2")(x)
    x = L.Flatten()(x)
    model = keras.Model(i, L.Dense(2, name="head")(x))
    randomize_weights(model, seed=6)
    return model


@pytest.mark.backend
def test_registered_custom_layer_is_pruned(registered_scale):
    model = scale_model()
    graph = kp.analyze(model)
    group = graph.group_of("c1")
    assert group.prunable and group.exact
    assert "scale" in group.members
    pruned, _ = assert_removal_equals_masking(model, {"c1": [1, 4]})
    new = pruned.get_layer("scale")
    assert isinstance(new, MyScale) and new.channels == 4
    old_scale = keras.ops.convert_to_numpy(model.get_layer("scale").scale)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(new.scale), np.delete(old_scale, [1, 4]))


def test_rule_is_found_through_the_class_hierarchy(registered_scale):
    # MyShift inherits MyScale's rule; MyConv inherits Conv2D's.
    i = keras.Input((8, 8, 3))
    x = MyConv(6, 3, name="c1")(i)
    x = MyShift(6, name="shift")(x)
    x = L.Conv2D(4, 1, name="c2")(x)
    model = keras.Model(i, L.Flatten()(x))
    randomize_weights(model, seed=7)
    graph = kp.analyze(model)
    assert graph.group_of("c1").members == ("c1", "shift", "c2")
    pruned, _ = assert_removal_equals_masking(model, {"c1": [0]})
    assert isinstance(pruned.get_layer("c1"), MyConv) and pruned.get_layer("c1").filters == 5


def test_decorator_registration_of_a_rule_subclass():
    @kp.register_rule(MyShift)
    class ShiftRule(kp.ChannelParams):
        def __init__(self):
            super().__init__(("scale",), config_key="channels")

    try:
        i = keras.Input((8, 8, 3))
        x = L.Conv2D(6, 3, name="c1")(i)
        x = MyShift(6, name="shift")(x)
        model = keras.Model(i, L.Dense(2, name="head")(L.Flatten()(x)))
        randomize_weights(model, seed=8)
        assert isinstance(kp.rules.find_rule(model.get_layer("shift")), ShiftRule)
        pruned, _ = assert_removal_equals_masking(model, {"c1": [2, 3]})
        assert pruned.get_layer("shift").channels == 4
    finally:
        kp.unregister_rule(MyShift)


@pytest.mark.backend
def test_unregistered_custom_layer_is_a_named_barrier():
    model = scale_model()
    graph = kp.analyze(model)
    group = graph.group_of("c1")
    assert not group.prunable
    assert "'scale' (MyScale)" in group.reason and "register_rule" in group.reason
    # The layer after the barrier still owns prunable filters.
    assert graph.group_of("c2").prunable
    with pytest.raises(kp.PruningError, match=r"'scale' \(MyScale\).*no pruning rule"):
        kp.remove_filters(model, {"c1": [0]})
    with pytest.raises(kp.PruningError, match=r"'scale' \(MyScale\)"):
        kp.mask_filters(copy_model(model), {"c1": [0]})
    assert_removal_equals_masking(model, {"c2": [1, 2]})


def test_unregistering_restores_the_barrier(registered_scale):
    assert kp.analyze(scale_model()).group_of("c1").prunable
    kp.unregister_rule(MyScale)
    assert not kp.analyze(scale_model()).group_of("c1").prunable


@pytest.mark.backend
def test_lambda_is_a_barrier_unless_declared_channelwise():
    model = lambda_model()
    group = kp.analyze(model).group_of("c1")
    assert not group.prunable
    assert "'my_lambda' (Lambda)" in group.reason and "channelwise=['my_lambda']" in group.reason
    with pytest.raises(kp.PruningError, match="my_lambda"):
        kp.remove_filters(model, {"c1": [0]})

    declared = kp.analyze(model, channelwise=["my_lambda"]).group_of("c1")
    assert declared.prunable and declared.members == ("c1", "c2")
    sel = {"c1": [0, 5], "c2": [3]}
    pruned = kp.remove_filters(model, sel, channelwise=["my_lambda"])
    with SafeModeScope(False):  # Keras's own clone_model refuses Python lambdas by default
        masked = copy_model(model)
    kp.mask_filters(masked, sel, channelwise=["my_lambda"])
    x = random_input(model)
    assert max_output_difference(pruned, masked, x) < 1e-4
    assert max_output_difference(model, masked, x) > 1e-3  # the removal did something
    assert pruned.get_layer("c2").kernel.shape == (3, 3, 4, 4)


def test_declared_lambda_that_changes_shape_stays_a_barrier():
    model = lambda_model(fn=lambda t: t[..., :4])
    group = kp.analyze(model, channelwise=["my_lambda"]).group_of("c1")
    assert not group.prunable
    assert "'my_lambda' (Lambda)" in group.reason and "changes shape" in group.reason


def test_time_distributed_unregistered_inner_layer_is_named():
    i = keras.Input((2, 8, 8, 3))
    x = L.TimeDistributed(L.Conv2D(6, 3), name="frames")(i)
    x = L.TimeDistributed(MyScale(6), name="td_scale")(x)
    model = keras.Model(i, L.Flatten()(x))
    group = kp.analyze(model).group_of("frames")
    assert not group.prunable
    assert "'td_scale' (TimeDistributed)" in group.reason and "(MyScale)" in group.reason
