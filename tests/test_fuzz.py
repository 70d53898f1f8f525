"""Property-based fuzzing over random architectures, and the regressions it found.

The generator (tests/strategies.py) builds random valid models from the whole
supported vocabulary; every example checks removal == masking, the original
left bit-for-bit unchanged, the group sizes `analyze` reports after removal,
and a `.keras` save/load round trip. CI runs a fixed, derandomized budget;
benchmarks/fuzz.py runs thousands of models.
"""

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kerasprune as kp
from kerasprune.testing import randomize_batchnorm, randomize_weights
from strategies import check_pruning_properties, draw_case

L = keras.layers
FUZZ = settings(
    max_examples=80,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@FUZZ
@given(data=st.data())
def test_random_models_satisfy_every_property(data, tmp_path_factory):
    model, blocks, selection, removed = draw_case(data)
    check_pruning_properties(model, selection, removed, tmp_dir=tmp_path_factory.getbasetemp())


@pytest.mark.backend
@settings(FUZZ, max_examples=8 if keras.backend.backend() == "tensorflow" else 3)  # JAX/torch: slow eager
@given(data=st.data())
def test_random_models_on_this_backend(data, tmp_path_factory):
    model, blocks, selection, removed = draw_case(data)
    check_pruning_properties(model, selection, removed, tmp_dir=tmp_path_factory.getbasetemp())


# -- regressions found by the fuzzer -------------------------------------------------------
def _concat_residual_model():
    """conv_a (5) and conv_b (6) concatenated, then added to conv_c (11): one 11-channel group."""
    inp = keras.Input((8, 8, 1))
    a = L.Conv2D(5, 3, padding="same", name="conv_a")(inp)
    b = L.Conv2D(6, 3, padding="same", name="conv_b")(a)
    cat = L.Concatenate(name="cat")([a, b])
    c = L.Conv2D(11, 3, padding="same", name="conv_c")(cat)
    x = L.Maximum(name="max")([cat, c])
    x = L.GlobalMaxPooling2D(keepdims=True, name="gmp")(x)
    x = L.Flatten(name="flat")(x)
    model = keras.Model(inp, L.Dense(3, name="out")(x))
    randomize_weights(model, seed=3)
    return model


def test_selection_that_empties_one_producer_of_a_concatenated_group_is_refused():
    # Found by benchmarks/fuzz.py (seed 111): removing channels 0-4 of the 11-channel group
    # left conv_a with filters=0 and failed deep inside Keras instead of naming the problem.
    model = _concat_residual_model()
    graph = kp.analyze(model)
    assert graph.group_of("conv_c").layers == ("conv_a", "conv_b", "conv_c")
    with pytest.raises(kp.PruningError, match=r"all 5 filters of layer 'conv_a'.*at least one must remain"):
        kp.remove_filters(model, {"conv_c": [0, 1, 2, 3, 4, 6]})


def test_concatenated_group_keeps_one_filter_per_producer():
    model = _concat_residual_model()
    selection = {"conv_c": [0, 1, 2, 3, 6, 7]}  # conv_a keeps channel 4, conv_b keeps 8..10
    check_pruning_properties(model, selection, {"conv_a": 6})
    pruned = kp.remove_filters(model, selection)
    assert pruned.get_layer("conv_a").filters == 1
    assert pruned.get_layer("conv_b").filters == 4


def _se_1d_channels_first(channels: int):
    inp = keras.Input((3, 32))
    x = L.Conv1D(channels, 3, padding="same", data_format="channels_first", name="conv")(inp)
    s = L.GlobalAveragePooling1D(data_format="channels_first", name="gap")(x)
    s = L.Reshape((channels, 1), name="reshape")(s)
    s = L.Conv1D(2, 1, data_format="channels_first", activation="relu", name="se_reduce")(s)
    s = L.Conv1D(channels, 1, data_format="channels_first", activation="sigmoid", name="se_expand")(s)
    x = L.Multiply(name="scale")([s, x])
    x = L.Flatten(data_format="channels_first", name="flat")(x)
    model = keras.Model(inp, L.Dense(3, name="out")(L.Dense(4, name="hidden")(x)))
    randomize_weights(model, seed=5)
    return model


def test_single_channel_squeeze_excite_stays_analyzable():
    # Found by benchmarks/fuzz.py (seed 48): once the SE channels went down to one, the gate's
    # `(N, 1, 1)` tensor put its single channel on the last axis and `se_reduce`
    # (channels_first) became a barrier, so the pruned model lost a prunable group.
    model = _se_1d_channels_first(3)
    check_pruning_properties(model, {"se_expand": [1, 2]}, {"conv": 2})
    graph = kp.analyze(_se_1d_channels_first(1))
    assert graph.group_of("se_reduce").prunable
    assert graph.group_of("conv").reason is None
    assert graph.group_of("conv").layers == ("conv", "se_expand")


def test_residual_with_the_same_tensor_concatenated_twice():
    inp = keras.Input((8, 8, 2))
    x = L.Conv2D(4, 3, padding="same", name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    cat = L.Concatenate(name="cat")([x, x])
    y = L.Conv2D(8, 1, name="conv8")(cat)
    z = L.Add(name="add")([cat, y])
    model = keras.Model(inp, L.Dense(2, name="out")(L.GlobalAveragePooling2D(name="gap")(z)))
    randomize_weights(model, seed=7)
    randomize_batchnorm(model, seed=8)
    graph = kp.analyze(model)
    # conv8's channel c and c+4 both equal conv's channel c: one group of 4 channels.
    assert graph.group_of("conv8").size == 4
    check_pruning_properties(model, {"conv8": [1, 6]}, {"conv": 2})
    pruned = kp.remove_filters(model, {"conv8": [1, 6]})
    assert pruned.get_layer("conv8").filters == 4
    np.testing.assert_array_equal(
        pruned.get_layer("conv8").kernel.numpy(),
        np.delete(np.delete(model.get_layer("conv8").kernel.numpy(), [1, 2, 5, 6], axis=3), [1, 2, 5, 6], axis=2),
    )
