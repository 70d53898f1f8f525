"""Bad selections and unprunable layers raise kerasprune errors that name the layer and the reason."""

import keras
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp
from models import finish, residual


@pytest.fixture(scope="module")
def model():
    return residual()


@pytest.mark.backend
@pytest.mark.parametrize(
    "selection, error, match",
    [
        ({"nope": [0]}, kp.SelectionError, "Unknown layer 'nope'"),
        ({"stem": [8]}, kp.SelectionError, "index 8 is out of range for layer 'stem' with 8 filters"),
        ({"stem": [-9]}, kp.SelectionError, "out of range"),
        ({"stem": [1, 1]}, kp.SelectionError, "given twice"),
        ({"stem": [1.0]}, kp.SelectionError, "integer"),
        ({"stem": [np.nan]}, kp.SelectionError, "integer"),
        ({"stem": "1,2"}, kp.SelectionError, "integers or a boolean mask"),
        ({"stem": np.ones(5, dtype=bool)}, kp.SelectionError, r"shape \(8,\)"),
        ({"stem": list(range(8))}, kp.PruningError, "removes all 8 channels of group"),
        ({"head": [0]}, kp.PruningError, "model output"),
        ({"add": [0]}, kp.SelectionError, "b0_add|Unknown"),
    ],
)
def test_bad_selection(model, selection, error, match):
    weights = [v.numpy().copy() for v in model.weights]
    with pytest.raises(error, match=match):
        kp.remove_filters(model, selection)
    with pytest.raises(error, match=match):
        kp.mask_filters(model, selection)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(weights, model.weights))


def test_errors_are_value_errors():
    assert issubclass(kp.PruningError, ValueError)
    assert issubclass(kp.SelectionError, kp.PruningError)


def test_selection_must_be_mapping(model):
    with pytest.raises(kp.SelectionError, match="mapping"):
        kp.remove_filters(model, [("stem", [0])])


def test_layer_without_filters(model):
    # A pass-through layer (BN) selects its input's channels; an Add has no rule-less meaning here.
    pruned = kp.remove_filters(model, {"stem_bn": [0]})
    assert pruned.get_layer("stem").filters == 7
    i = keras.Input((4, 4, 3))
    x = L.Conv2D(4, 1, name="c")(i)
    out = L.Dense(2, name="head")(L.Flatten(name="flat")(L.Lambda(lambda t: t * 2.0, name="lam")(x)))
    m = keras.Model(i, out)
    with pytest.raises(kp.SelectionError, match="lam"):
        kp.remove_filters(m, {"lam": [0]})


def test_removing_all_channels_via_union(model):
    sel = {"stem": [0, 1, 2, 3], "b1_b": [4, 5, 6, 7]}
    with pytest.raises(kp.PruningError, match=r"removes all 8 channels .*b1_b"):
        kp.remove_filters(model, sel)


def _assert_blocked(builder, match):
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1, name="c")(i)
    x = builder(x)
    x = L.GlobalAveragePooling2D()(x) if len(x.shape) == 4 else L.Flatten()(x)
    m = finish(i, L.Dense(2, name="head")(x))
    g = kp.analyze(m).group_of("c")
    assert not g.prunable
    assert match in g.reason
    with pytest.raises(kp.PruningError, match="not prunable"):
        kp.remove_filters(m, {"c": [0]})


def test_lambda_is_a_barrier_unless_declared():
    lam = L.Lambda(lambda t: t * 2.0, name="lam")
    _assert_blocked(lam, "'lam' (Lambda)")
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1, name="c")(i)
    x = L.Lambda(lambda t: t * 2.0, name="lam")(x)
    m = finish(i, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x)))
    assert kp.analyze(m, channelwise=["lam"]).group_of("c").prunable


def test_reshape_that_mixes_channels_is_a_barrier():
    _assert_blocked(L.Reshape((6, 12, 2), name="mix"), "'mix' (Reshape)")


def test_custom_layer_without_rule_is_a_barrier():
    class Mystery(L.Layer):
        """Cannot be traced either: it uses its own weight directly in call."""

        def build(self, input_shape):
            self.flip = self.add_weight(shape=(), initializer="ones", name="flip")

        def call(self, x):
            return x[..., ::-1] * self.flip

    _assert_blocked(Mystery(name="myst"), "'myst' (Mystery)")


def test_softmax_over_channels_is_a_barrier():
    _assert_blocked(L.Softmax(name="sm"), "'sm' (Softmax)")


def test_attention_that_overrides_its_computation_is_a_barrier():
    class CustomAttention(L.MultiHeadAttention):  # plain MultiHeadAttention has a rule
        def _compute_attention(self, query, key, value, *args, **kwargs):
            return super()._compute_attention(query, key, value, *args, **kwargs)

    def attn(x):
        x = L.Reshape((36, 4))(x)
        return CustomAttention(num_heads=1, key_dim=2, name="mha")(x, x)

    _assert_blocked(attn, "'mha' (CustomAttention)")


def test_channel_reaching_output_cannot_be_removed():
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1, name="c")(i)
    y = L.Conv2D(4, 1, name="d")(x)
    m = finish(i, [L.GlobalAveragePooling2D()(x), y])
    graph = kp.analyze(m)
    assert "model output" in graph.group_of("c").reason
    with pytest.raises(kp.PruningError, match="model output"):
        kp.remove_filters(m, {"c": [0]})


def test_unbuilt_or_subclassed_model_is_refused():
    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(kp.PruningError, match=r"Subclassed model .*\(Sub\).*not built"):
        kp.analyze(Sub())
    with pytest.raises(kp.PruningError, match="Functional or Sequential"):
        kp.analyze("model.keras")
