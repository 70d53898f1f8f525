"""Regression tests for what the unseen-model zoo found (benchmarks/zoo.py, docs/zoo.md)."""

import keras
import numpy as np
import pytest
from keras import layers

import kerasprune as kp
from conftest import assert_removal_equals_masking
from kerasprune.testing import max_output_difference, random_input


def test_shared_nested_head_called_at_two_sizes_is_rebuilt():
    """A nested head (RetinaNet's) applied to feature maps of several sizes keeps its open dims."""
    head = keras.Sequential(
        [keras.Input((None, None, 8)), layers.Conv2D(6, 3, padding="same"), layers.ReLU(), layers.Conv2D(2, 1)],
        name="head",
    )
    inp = keras.Input((16, 16, 3))
    a = layers.Conv2D(8, 3, padding="same", name="a")(inp)
    b = layers.Conv2D(8, 3, strides=2, padding="same", name="b")(a)
    out = layers.Concatenate(axis=1)([layers.Reshape((-1, 2))(head(a)), layers.Reshape((-1, 2))(head(b))])
    model = keras.Model(inp, out)
    pruned, masked = assert_removal_equals_masking(model, {"head/conv2d": [0, 1], "a": [3]})
    assert pruned.get_layer("head").inputs[0].shape == (None, None, None, 7)
    assert max_output_difference(model, masked, random_input(model)) > 0


def test_select_on_a_variable_length_model():
    """`select` by ratio or parameters works when MACs depend on a `None` length (text, audio)."""
    inp = keras.Input((None,), dtype="int64")
    x = layers.Embedding(50, 8)(inp)
    x = layers.Conv1D(6, 3, activation="relu")(x)
    x = layers.GlobalMaxPooling1D()(x)
    model = keras.Model(inp, layers.Dense(1)(layers.Dense(5, activation="relu")(x)))
    sel = kp.select(model, "l1", ratio=0.5)
    assert sel.flops_before is None and sel.params_after < sel.params_before
    assert kp.select(model, "l1", target_params=0.7).params_ratio <= 0.7 + 0.03
    with pytest.raises(kp.PruningError, match="target_flops needs the model's MACs.*'embedding' \\(Embedding\\)"):
        kp.select(model, "l1", target_flops=0.5)
    x = np.random.default_rng(0).integers(0, 50, size=(3, 12))
    assert_removal_equals_masking(model, sel, x=x)


@pytest.mark.backend
def test_dot_couples_both_towers_approximately():
    """A cosine-similarity `Dot` couples its inputs' channels; the group is prunable, approximate."""
    tower_in = keras.Input((6,))
    tower = keras.Model(tower_in, layers.Dense(5, name="emb")(layers.Dense(7, activation="relu")(tower_in)))
    a, b = keras.Input((6,)), keras.Input((6,))
    score = layers.Dot(axes=1, normalize=False, name="dot")([tower(a), tower(b)])
    model = keras.Model([a, b], layers.Dense(1)(score))
    graph = kp.analyze(model)
    group = graph.group_of("emb")
    assert group.prunable and not group.exact and "'dot' (Dot)" in group.approx_reason
    # A linear producer gives exact zeros at the Dot, so here removal equals masking.
    pruned, _ = assert_removal_equals_masking(model, {"emb": [1, 3]})
    assert pruned.get_layer(tower.name).get_layer("emb").units == 3


def test_dot_over_another_axis_is_a_barrier_with_its_reason():
    inp = keras.Input((4, 6))
    x = layers.Dense(5, name="proj")(inp)
    model = keras.Model(inp, layers.Flatten()(layers.Dot(axes=1, name="gram")([x, x])))
    reason = kp.analyze(model).group_of("proj").reason
    assert "'gram' (Dot)" in reason and "contracts axes (1, 1)" in reason and "axes=-1" in reason


@pytest.mark.backend
def test_repeat_vector_moves_channels_to_the_time_axis():
    inp = keras.Input((6,))
    x = layers.Dense(5, activation="relu", name="enc")(inp)
    x = layers.RepeatVector(3)(x)
    x = layers.Conv1D(4, 2, name="dec")(x)
    model = keras.Model(inp, layers.Dense(2)(layers.Flatten()(x)))
    pruned, _ = assert_removal_equals_masking(model, {"enc": [0, 4], "dec": [1]})
    assert pruned.get_layer("dec").kernel.shape == (2, 3, 3)


@pytest.mark.parametrize("kind", ["Average", "Max"])
def test_adaptive_pooling_is_channelwise(kind):
    cls = getattr(layers, f"Adaptive{kind}Pooling2D", None)
    if cls is None:  # pragma: no cover - Keras < 3.12
        pytest.skip("this Keras has no adaptive pooling layers")
    inp = keras.Input((9, 9, 3))
    x = layers.Conv2D(6, 3, name="conv")(inp)
    x = cls((2, 2))(x)
    model = keras.Model(inp, layers.Dense(2)(layers.Flatten()(x)))
    pruned, _ = assert_removal_equals_masking(model, {"conv": [0, 5]})
    assert pruned.get_layer("conv").filters == 4


def test_rms_normalization_is_prunable_and_approximate():
    if getattr(layers, "RMSNormalization", None) is None:  # pragma: no cover - Keras < 3.9
        pytest.skip("this Keras has no RMSNormalization")
    inp = keras.Input((4, 6))
    x = layers.Dense(8, name="up")(inp)
    x = layers.RMSNormalization(name="rms")(x)
    model = keras.Model(inp, layers.Dense(3)(x))
    model.get_layer("rms").scale.assign(np.random.default_rng(0).normal(1, 0.5, 8).astype("float32"))
    graph = kp.analyze(model)
    group = graph.group_of("up")
    assert group.prunable and not group.exact and "'rms' (RMSNormalization)" in group.approx_reason
    pruned = kp.remove_filters(model, {"up": [2, 5]})
    np.testing.assert_array_equal(
        pruned.get_layer("rms").scale.numpy(), np.delete(model.get_layer("rms").scale.numpy(), [2, 5])
    )
    assert pruned.count_params() < model.count_params()


def test_untouched_lambda_using_a_module_global_survives_removal():
    """A Lambda's function rebuilt from its config's bytecode loses its globals (`ops`): keep the live one."""
    inp = keras.Input((8,))
    x = layers.Dense(6, name="d1")(inp)
    x = layers.Lambda(lambda t: t / (1e-9 + keras.ops.sum(t, axis=-1, keepdims=True)), name="norm")(x)
    model = keras.Model(inp, layers.Dense(2)(layers.Dense(4, activation="relu", name="d2")(x)))
    x = random_input(model)
    pruned = kp.remove_filters(model, {"d2": [0, 3]})
    kp.mask_filters(model, {"d2": [0, 3]})  # in place: clone_model cannot copy the Lambda
    assert pruned.get_layer("d2").units == 2
    assert max_output_difference(pruned, model, x) < 1e-5


class HeadsByBatch(layers.Layer):
    """Reshapes with `ops.shape(x)[0]` as the batch size (keras_hub's SegFormer attention, MixFFN)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fc1 = layers.Dense(12)
        self.dw = layers.DepthwiseConv2D(3, padding="same")
        self.fc2 = layers.Dense(8)

    def call(self, x):
        x = self.fc1(x)
        b, c = keras.ops.shape(x)[0], x.shape[2]
        x = self.dw(keras.ops.reshape(x, (b, 4, 4, c)))
        x = keras.ops.reshape(x, (b, -1, c))  # None and -1 together
        return self.fc2(keras.ops.nn.gelu(x))


class IdentityAtInference(layers.Layer):
    """Returns its input at inference (keras_hub's DropPath), used on two differently shaped inputs."""

    def call(self, x, training=None):
        return x * 0.5 if training else x


class ResidualPair(layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.mlp, self.drop = HeadsByBatch(), IdentityAtInference()
        self.dense = layers.Dense(8)

    def call(self, x):
        x = x + self.drop(self.dense(x))  # (None, 16, 8)
        return x + self.drop(self.mlp(x))  # (None, None, 8): the mlp's reshape leaves the length open


@pytest.mark.backend
def test_reshape_with_the_symbolic_batch_size_is_traced_and_pruned():
    """`ops.reshape(x, (ops.shape(x)[0], ...))` traces to a graph that runs: its hidden units prune exactly."""
    inp = keras.Input((16, 4))
    x = layers.Dense(8, name="embed")(inp)
    x = ResidualPair(name="block")(x)
    model = keras.Model(inp, layers.Dense(2)(layers.GlobalAveragePooling1D()(x)))
    graph = kp.analyze(model)
    hidden = [g for g in graph.prunable_groups if g.exact and any("fc1" in k or "dense_" in k for k in g.members)]
    assert any(k.endswith("heads_by_batch") for k in graph.traced)
    plan = kp.make_plan(graph, {"embed": [1, 6]})  # the residual stream: through the identity DropPath
    x_in = random_input(model)
    pruned = kp.remove_filters(model, plan)
    assert pruned.count_params() < model.count_params() and hidden
    kp.mask_filters(model, plan)
    assert max_output_difference(pruned, model, x_in) < 1e-4


@pytest.mark.backend
def test_keras_activations_on_symbolic_tensors_are_element_wise():
    """`keras.activations.relu(x)` records its own ReLU operation: channels pass through it."""
    inp = keras.Input((8,))
    x = keras.activations.relu(layers.Dense(6, name="d1")(inp))
    model = keras.Model(inp, layers.Dense(2)(x))
    pruned, _ = assert_removal_equals_masking(model, {"d1": [0, 4]})
    assert pruned.get_layer("d1").units == 4
