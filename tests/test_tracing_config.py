"""Layers that cannot be re-created from their config (found at analysis time, not at rebuild)."""

import logging

import keras
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp
from kerasprune import _keras
from kerasprune.testing import max_output_difference, random_input, randomize_weights


class StrictScale(L.Layer):
    """A per-channel scale whose `__init__` refuses the keys of its own `get_config()`."""

    def __init__(self, channels):  # no **kwargs: `name`, `trainable`, `dtype` are refused
        super().__init__()
        self.channels = channels

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(self.channels,), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


class DerivedKeys(L.Layer):
    """`get_config()` adds a derived value that `__init__` does not take (as keras_hub's ViT embedding)."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(self.channels,), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "twice": 2 * self.channels}


@pytest.fixture
def rules():
    for cls in (StrictScale, DerivedKeys):
        kp.register_rule(cls, kp.ChannelParams(("scale",), config_key="channels"))
    yield
    for cls in (StrictScale, DerivedKeys):
        kp.unregister_rule(cls)


def model_with(layer, seed=0):
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, name="c1")(i)
    x = layer(x)
    x = L.Conv2D(5, 3, name="c2")(x)
    model = keras.Model(i, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x)))
    randomize_weights(model, seed=seed)
    return model


def removal_equals_masking(build, selection):
    """`remove_filters` == `mask_filters` on a second build (`clone_model` cannot copy these layers)."""
    model, masked = build(), build()
    masked.set_weights(model.get_weights())
    pruned = kp.remove_filters(model, selection)
    kp.mask_filters(masked, selection)
    x = random_input(model)
    assert max_output_difference(pruned, masked, x) < 1e-5
    assert max_output_difference(model, masked, x) > 1e-3
    return model, pruned


def test_touched_layer_that_cannot_be_recreated_is_reported_by_analyze(rules):
    model = model_with(StrictScale(6))
    group = kp.analyze(model).group_of("c1")
    assert not group.prunable
    assert "(StrictScale) cannot be re-created from its config" in group.reason
    assert "TypeError" in group.reason and "__init__" in group.reason
    with pytest.raises(kp.PruningError, match="not prunable"):
        kp.remove_filters(model, {"c1": [0]})


def test_untouched_layer_that_cannot_be_recreated_does_not_break_removal(rules, caplog):
    with caplog.at_level(logging.WARNING, logger="kerasprune"):
        model, pruned = removal_equals_masking(lambda: model_with(StrictScale(6), seed=1), {"c2": [1, 3]})
    assert pruned.get_layer("c2").filters == 3
    # It could not be copied: the pruned model reuses it, and the warning says what that means.
    assert any(layer is model.layers[2] for layer in pruned.layers)
    assert "cannot be re-created from its config" in caplog.text and "shares its 1 weights" in caplog.text


def test_derived_config_keys_are_tolerated_when_the_copy_is_faithful(rules):
    build = lambda: model_with(DerivedKeys(6, name="derived"), seed=2)  # noqa: E731
    group = kp.analyze(build()).group_of("c1")
    assert group.prunable and "derived" in group.members
    model, pruned = removal_equals_masking(build, {"c1": [0, 5]})
    new = pruned.get_layer("derived")
    assert new is not model.get_layer("derived") and new.channels == 4
    model, untouched = removal_equals_masking(build, {"c2": [0]})
    assert untouched.get_layer("derived") is not model.get_layer("derived")


def test_recreate_refuses_a_copy_that_differs():
    class Renamed(L.Layer):
        def __init__(self, n=3, **kwargs):
            super().__init__(**kwargs)
            self.n = n

        def get_config(self):
            return {**super().get_config(), "count": self.n}  # `n` comes back as `count`

    layer = Renamed(5)
    with pytest.raises(TypeError):
        _keras.recreate(layer, layer.get_config())


def test_identity_with_a_dtype_policy_has_a_config_and_prunes_through():
    """keras_hub writes `keras.layers.Identity(dtype=self.dtype_policy)`, whose get_config() raises."""
    identity = L.Identity(dtype=keras.DTypePolicy("float32"), name="ident")
    with pytest.raises(NotImplementedError):
        identity.get_config()
    assert _keras.config_of(identity) == {"name": "ident", "trainable": True, "dtype": "float32"}
    build = lambda: model_with(L.Identity(dtype=keras.DTypePolicy("float32"), name="ident"), seed=3)  # noqa: E731
    assert kp.analyze(build()).group_of("c1").prunable
    _, pruned = removal_equals_masking(build, {"c1": [2]})
    assert pruned.get_layer("ident").get_config()["dtype"]["config"]["name"] == "float32"
    np.testing.assert_array_equal(pruned.get_layer("c2").kernel.shape, (3, 3, 5, 5))
