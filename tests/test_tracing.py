"""Composite layers and subclassed models traced through (kerasprune.tracing).

A `Layer` subclass whose `call` uses sublayers and `keras.ops` has no rule; it is
traced into a Functional graph, analyzed through, and replaced in the pruned
model by its pruned graph of plain Keras layers.
"""

import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import layers as L
from keras import ops

import kerasprune as kp
from conftest import assert_removal_equals_masking
from kerasprune import tracing
from kerasprune.testing import (
    max_output_difference,
    predict,
    random_input,
    randomize_batchnorm,
    randomize_weights,
)


class ResBlock(L.Layer):
    """conv -> BN -> relu -> conv, plus the input: the way keras_hub writes its blocks."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.c1 = L.Conv2D(filters, 3, padding="same", name="c1")
        self.bn = L.BatchNormalization(name="bn")
        self.c2 = L.Conv2D(filters, 3, padding="same", name="c2")

    def call(self, x, training=None):
        y = ops.relu(self.bn(self.c1(x), training=training))
        return x + self.c2(y)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


class LayerOnlyBlock(L.Layer):
    """A composite of layers only (no `keras.ops` nodes)."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = L.Conv2D(filters, 3, padding="same", name="conv")
        self.bn = L.BatchNormalization(name="bn")
        self.act = L.ReLU(name="act")
        self.add = L.Add(name="add")

    def call(self, x):
        return self.add([x, self.act(self.bn(self.conv(x)))])

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


class OwnScale(L.Layer):
    """Owns a per-channel weight and uses it directly in call: not traceable."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale


class Branchy(L.Layer):
    """Python control flow on a tensor value."""

    def call(self, x):
        if ops.max(x) > 0:
            return x
        return -x

    def compute_output_shape(self, input_shape):
        return input_shape


class BackendCall(L.Layer):
    """Calls NumPy instead of keras.ops."""

    def call(self, x):
        return ops.convert_to_tensor(np.maximum(np.asarray(x), 0.0))

    def compute_output_shape(self, input_shape):
        return input_shape


class Noisy(L.Layer):
    """Random even at inference: its trace would not compute what it computes."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed = keras.random.SeedGenerator(1)

    def call(self, x):
        return x + keras.random.normal((1, 1, 1, 1), seed=self.seed)


def _finish(i, x, seed=0):
    x = L.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(i, L.Dense(3, name="head")(x))
    randomize_weights(model, seed=seed)
    randomize_batchnorm(model, seed=seed + 1)
    return model


def block_model(block=ResBlock, seed=0):
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 1, name="stem")(i)
    x = block(6, name="blk")(x)
    return _finish(i, L.Conv2D(5, 3, name="tail")(x), seed)


def barrier_model(layer):
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 1, name="stem")(i)
    return _finish(i, L.Conv2D(5, 3, name="tail")(layer(x)))


def _weights(layer):
    return [keras.ops.convert_to_numpy(w) for w in layer.weights]


@pytest.mark.backend
def test_composite_block_is_traced_and_pruned_exactly():
    model = block_model()
    graph = kp.analyze(model)
    assert "blk" in graph.traced and "blk" not in graph.records
    assert {"blk/c1", "blk/bn", "blk/c2"} <= set(graph.records)
    residual = graph.group_of("stem")
    assert residual.prunable and residual.exact and residual.layers == ("stem", "blk/c2")
    assert graph.group_of("blk/c1").members == ("blk/c1", "blk/bn", "blk/c2")
    sel = {"stem": [0, 4], "blk/c1": [1, 2, 5]}
    pruned, _ = assert_removal_equals_masking(model, sel)
    new = pruned.get_layer("blk")
    assert isinstance(new, keras.Model) and not isinstance(new, ResBlock)  # plain Keras layers
    c1 = new.get_layer("c1")
    old = model.get_layer("blk").c1
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(c1.kernel),
        np.delete(np.delete(keras.ops.convert_to_numpy(old.kernel), [1, 2, 5], axis=3), [0, 4], axis=2),
    )
    assert pruned.get_layer("tail").kernel.shape == (3, 3, 4, 5)


@pytest.mark.backend
def test_masking_a_traced_layer_changes_the_original_sublayers_in_place():
    model = block_model()
    kp.mask_filters(model, {"blk/c1": [0]})
    assert np.all(_weights(model.get_layer("blk").c1)[0][..., 0] == 0)
    assert np.all(_weights(model.get_layer("blk").c2)[0][:, :, 0, :] == 0)


@pytest.mark.backend
def test_untouched_traced_layer_keeps_its_class_and_weights():
    model = block_model()
    pruned, _ = assert_removal_equals_masking(model, {"tail": [0, 1]})
    kept = pruned.get_layer("blk")
    assert isinstance(kept, ResBlock) and kept is not model.get_layer("blk")
    for a, b in zip(_weights(kept), _weights(model.get_layer("blk"))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.backend
def test_composite_inside_a_nested_model():
    inner_in = keras.Input((8, 8, 6))
    sub = keras.Model(inner_in, ResBlock(6, name="blk")(L.ReLU()(inner_in)), name="sub")
    i = keras.Input((8, 8, 3))
    x = sub(L.Conv2D(6, 1, name="stem")(i))
    model = _finish(i, L.Conv2D(4, 3, name="tail")(x), seed=3)
    graph = kp.analyze(model)
    assert "sub/blk" in graph.traced and "sub/blk/c1" in graph.records
    assert graph.group_of("stem").layers == ("stem", "sub/blk/c2")
    pruned, _ = assert_removal_equals_masking(model, {"stem": [1], "sub/blk/c1": [0, 3]})
    assert pruned.get_layer("sub").get_layer("blk").get_layer("c1").filters == 4


@pytest.mark.backend
def test_composite_used_twice_is_one_shared_block():
    block = ResBlock(6, name="blk")
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 1, name="stem")(i)
    x = block(block(x))
    model = _finish(i, L.Conv2D(4, 3, name="tail")(x), seed=4)
    graph = kp.analyze(model)
    assert len(graph.traced["blk"]) == 2 and len(graph.records["blk/c1"].calls) == 2
    sel = {"blk/c1": [2], "stem": [0, 5]}
    pruned, _ = assert_removal_equals_masking(model, sel)
    assert [type(layer).__name__ for layer in pruned.layers].count("Functional") == 1  # still shared


@pytest.mark.backend
def test_traced_layer_with_layers_only_works_for_select_flops_and_activation_criteria():
    model = block_model(LayerOnlyBlock, seed=5)
    by_layer = kp.flops_by_layer(model)
    assert by_layer["blk/conv"] == 8 * 8 * 3 * 3 * 6 * 6
    x = random_input(model, batch=4)
    for criterion in ("l1", "apoz"):
        selection = kp.select(model, criterion, ratio=0.3, data=[x])
        pruned = kp.remove_filters(model, selection)
        assert pruned.count_params() < model.count_params()


@pytest.mark.parametrize(
    "layer, why",
    [
        (OwnScale(name="odd"), r"owns weights '.*scale' used directly in call"),
        (Branchy(name="odd"), "Python control flow on tensor values"),
        (BackendCall(name="odd"), "backend or NumPy functions"),
        (Noisy(name="odd"), "computes something else"),
    ],
    ids=["own-weight", "control-flow", "numpy-call", "random"],
)
def test_untraceable_layer_is_a_barrier_that_says_why(layer, why):
    model = barrier_model(layer)
    group = kp.analyze(model).group_of("stem")
    assert not group.prunable
    assert "layer 'odd'" in group.reason and "cannot be traced" in group.reason
    assert "register_rule" in group.reason
    assert re.search(why, group.reason), group.reason
    assert kp.analyze(model).group_of("tail").prunable  # what comes after is unaffected


def test_a_registered_rule_wins_over_tracing():
    kp.register_rule(ResBlock, kp.Elementwise())
    try:
        graph = kp.analyze(block_model())
        assert "blk" in graph.records and not graph.traced
    finally:
        kp.unregister_rule(ResBlock)


def test_keras_own_layers_are_never_traced():
    assert not tracing.traceable(L.MultiHeadAttention(num_heads=1, key_dim=2))
    assert not tracing.traceable(L.Conv2D(2, 1))
    assert tracing.traceable(ResBlock(2))


def test_barrier_inside_a_traced_layer_names_the_layer_around_it():
    class WithOwnScale(L.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = L.Conv2D(6, 1, name="conv")
            self.odd = OwnScale(name="odd")

        def call(self, x):
            return self.odd(self.conv(x))

    model = barrier_model(WithOwnScale(name="wrap"))
    reason = kp.analyze(model).group_of("wrap/conv").reason
    assert "'wrap/odd' (OwnScale, inside traced layer 'wrap' (WithOwnScale))" in reason


@pytest.mark.backend
def test_traced_layer_is_checked_once_per_signature(monkeypatch):
    model = block_model()
    kp.analyze(model)
    calls = []
    monkeypatch.setattr(tracing, "_check", lambda *a: calls.append(a) or 0.0)
    kp.analyze(model)
    kp.flops_by_layer(model)
    assert calls == []  # the trace and its numerical check are cached


class SubModel(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stem = L.Conv2D(6, 3, padding="same", name="stem")
        self.bn = L.BatchNormalization(name="bn")
        self.block = ResBlock(6, name="blk")
        self.gap = L.GlobalAveragePooling2D(name="gap")
        self.head = L.Dense(3, name="head")

    def call(self, x, training=None):
        x = ops.relu(self.bn(self.stem(x), training=training))
        return self.head(self.gap(self.block(x)))


@pytest.mark.backend
def test_subclassed_model_is_traced_into_a_functional_model():
    model = SubModel()
    model(np.zeros((1, 8, 8, 3), "float32"))
    randomize_weights(model, seed=6)
    graph = kp.analyze(model)
    assert graph.model is model and graph.group_of("stem").layers == ("stem", "blk/c2")
    sel = {"stem": [0, 3], "blk/c1": [4]}
    pruned = kp.remove_filters(model, sel, graph=graph)
    assert type(pruned) is keras.Model or type(pruned).__name__ == "Functional"
    x = random_input(pruned)
    before = predict(model, x)
    kp.mask_filters(model, sel)  # in place, on the subclassed model's own variables
    assert max(np.abs(a - b).max() for a, b in zip(before, predict(model, x))) > 1e-3
    assert max_output_difference(pruned, model, x) < 1e-4


def test_unbuilt_subclassed_model_is_refused_clearly():
    with pytest.raises(kp.PruningError, match=r"'sub_model.*' \(SubModel\).*not built"):
        kp.analyze(SubModel())


@pytest.mark.backend
def test_pruned_traced_model_loads_without_kerasprune_or_the_block_class(tmp_path):
    model = block_model(seed=7)
    sel = {"stem": [2], "blk/c1": [0, 1]}
    pruned, masked = assert_removal_equals_masking(model, sel)
    x = random_input(model, batch=3)
    path = tmp_path / "pruned.keras"
    pruned.save(path)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, keras
        m = keras.saving.load_model({str(path)!r})
        y = keras.ops.convert_to_numpy(m(np.load({str(tmp_path / 'x.npy')!r}), training=False))
        np.save({str(tmp_path / 'y.npy')!r}, y)
        assert "kerasprune" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    expected = predict(masked, x)[0]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.backend
def test_composite_shared_across_inputs_of_different_sizes_becomes_one_graph():
    """A prediction head applied to two resolutions (as detectors do on every pyramid level)."""
    head = ResBlock(6, name="head_blk")
    i = keras.Input((8, 8, 3))
    a = L.Conv2D(6, 1, name="stem")(i)
    b = L.MaxPooling2D(name="down")(a)
    ya = L.GlobalAveragePooling2D()(head(a))
    yb = L.GlobalAveragePooling2D()(head(b))
    model = keras.Model(i, L.Dense(3, name="out")(L.Concatenate()([ya, yb])))
    randomize_weights(model, seed=8)
    randomize_batchnorm(model, seed=9)
    graph = kp.analyze(model)
    assert len({id(t) for t in graph.traced["head_blk"]}) == 2  # one trace per input size
    pruned, _ = assert_removal_equals_masking(model, {"stem": [0], "head_blk/c1": [1, 2]})
    inner = pruned.get_layer("head_blk")
    assert isinstance(inner, keras.Model) and inner.inputs[0].shape[1:3] == (None, None)


class StochasticBlock(L.Layer):
    """Stochastic depth written as a Python branch on `training`: traced on its inference path."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = L.Conv2D(filters, 3, padding="same", name="conv")

    def call(self, x, training=None):
        y = self.conv(x)
        if training:
            y = y * ops.cast(keras.random.uniform((1,)) > 0.2, y.dtype)
        return x + y

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


def test_a_branch_on_training_is_found_and_removal_warns(caplog):
    model = block_model(StochasticBlock, seed=10)
    graph = kp.analyze(model)
    assert tracing.trace_node(model.get_layer("blk"), graph.traced_nodes["blk"][0]).branches_on_training
    with caplog.at_level("WARNING", logger="kerasprune"):
        assert_removal_equals_masking(model, {"stem": [1]})
    assert "follows its inference path" in caplog.text and "'blk' (StochasticBlock)" in caplog.text


def test_plain_block_has_no_training_branch():
    model = block_model()
    graph = kp.analyze(model)
    assert not tracing.trace_node(model.get_layer("blk"), graph.traced_nodes["blk"][0]).branches_on_training


def test_sublayer_shared_with_the_outer_model_is_a_barrier():
    shared = L.Conv2D(6, 1, name="shared")

    class UsesShared(L.Layer):
        def call(self, x):
            return shared(x)

    i = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 1, name="stem")(i)
    x = UsesShared(name="wrap")(shared(x))
    model = _finish(i, L.Conv2D(4, 3, name="tail")(x))
    graph = kp.analyze(model)
    reason = graph.group_of("stem").reason
    assert not graph.group_of("stem").prunable and "also used as" in reason


def test_model_with_unbuilt_sublayers_is_refused_without_changing_it():
    class Lazy(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = L.Conv2D(4, 3)

        def call(self, x):
            return self.conv(x)

    model = Lazy()
    with pytest.warns(UserWarning):
        model.build((None, 8, 8, 3))  # Keras marks it built; its conv is not
    with pytest.raises(kp.PruningError, match="sublayer .* is not built"):
        kp.analyze(model)
    assert not model.weights
