"""Per-rule checks: the pruned weights are the originals with exactly the removed indices deleted."""

import keras
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp
from models import concat_depthwise, conv_bn_chain, finish, residual


def w(model, name):
    return model.get_layer(name).get_weights()


def test_conv_bn_conv_weights_match_np_delete():
    model = conv_bn_chain()
    rm = [1, 6]
    pruned = kp.remove_filters(model, {"c1": rm})
    k, b = w(model, "c1")
    pk, pb = w(pruned, "c1")
    np.testing.assert_array_equal(pk, np.delete(k, rm, axis=-1))
    np.testing.assert_array_equal(pb, np.delete(b, rm))
    for orig, new in zip(w(model, "bn1"), w(pruned, "bn1")):
        np.testing.assert_array_equal(new, np.delete(orig, rm))
    np.testing.assert_array_equal(w(pruned, "c2")[0], np.delete(w(model, "c2")[0], rm, axis=-2))
    np.testing.assert_array_equal(w(pruned, "c2")[1], w(model, "c2")[1])


def test_flatten_index_map_channels_last():
    i = keras.Input((3, 2, 4))
    x = L.Conv2D(4, 1, name="c")(i)
    x = L.Flatten()(x)
    model = finish(i, L.Dense(2, name="head")(x))
    rm = [1, 2]
    pruned = kp.remove_filters(model, {"c": rm})
    k = w(model, "head")[0]
    positions = [p * 4 + c for p in range(6) for c in rm]
    np.testing.assert_array_equal(w(pruned, "head")[0], np.delete(k, positions, axis=0))


def test_flatten_index_map_channels_first_layout():
    """A channels_first tensor (channels on axis 1, built with Permute) flattened by Flatten(channels_first)."""
    i = keras.Input((3, 2, 4))
    x = L.Conv2D(4, 1, name="c")(i)
    x = L.Permute((3, 1, 2))(x)  # (4, 3, 2): channels on axis 1
    x = L.Flatten(data_format="channels_first")(x)  # Keras moves channels last first: p*C + c again
    model = finish(i, L.Dense(2, name="head")(x))
    rm = [0, 3]
    pruned = kp.remove_filters(model, {"c": rm})
    positions = [p * 4 + c for p in range(6) for c in rm]
    np.testing.assert_array_equal(w(pruned, "head")[0], np.delete(w(model, "head")[0], positions, axis=0))
    x = L.Flatten(data_format="channels_last")  # a channels_last Flatten on axis-1 channels: c*P + p
    j = keras.Input((3, 2, 4))
    y = L.Permute((3, 1, 2))(L.Conv2D(4, 1, name="c")(j))
    m2 = finish(j, L.Dense(2, name="head")(x(y)))
    p2 = kp.remove_filters(m2, {"c": rm})
    positions = [c * 6 + p for c in rm for p in range(6)]
    np.testing.assert_array_equal(w(p2, "head")[0], np.delete(w(m2, "head")[0], positions, axis=0))


def test_concat_offsets_and_duplicate_input():
    model = concat_depthwise()
    # cat = [a(4), b(5), a(4)]: removing a's filter 1 removes cat channels 1 and 10.
    pruned = kp.remove_filters(model, {"a": [1]})
    cat_rm = [1, 10]
    for orig, new in zip(w(model, "cat_bn"), w(pruned, "cat_bn")):
        np.testing.assert_array_equal(new, np.delete(orig, cat_rm))
    dk, db = w(model, "dw")  # depth_multiplier=2: channel c owns outputs 2c, 2c+1
    np.testing.assert_array_equal(w(pruned, "dw")[0], np.delete(dk, cat_rm, axis=-2))
    np.testing.assert_array_equal(w(pruned, "dw")[1], np.delete(db, [2, 3, 20, 21]))
    alpha = w(model, "prelu")[0]
    np.testing.assert_array_equal(w(pruned, "prelu")[0], np.delete(alpha, [2, 3, 20, 21], axis=-1))
    dwk, pwk, sb = w(model, "sep")  # depth_multiplier=2 inside the separable conv too
    np.testing.assert_array_equal(w(pruned, "sep")[0], np.delete(dwk, [2, 3, 20, 21], axis=-2))
    rows = [2 * c + k for c in [2, 3, 20, 21] for k in range(2)]
    np.testing.assert_array_equal(w(pruned, "sep")[1], np.delete(pwk, rows, axis=-2))


def test_separable_and_transpose_filters():
    model = concat_depthwise()
    pruned = kp.remove_filters(model, {"sep": [0, 5], "tconv": [2]})
    dwk, pwk, sb = w(model, "sep")
    np.testing.assert_array_equal(w(pruned, "sep")[1], np.delete(pwk, [0, 5], axis=-1))
    np.testing.assert_array_equal(w(pruned, "sep")[2], np.delete(sb, [0, 5]))
    tk, tb = w(model, "tconv")  # transpose kernel: (..., filters, in)
    np.testing.assert_array_equal(w(pruned, "tconv")[0], np.delete(np.delete(tk, [2], -2), [0, 5], -1))
    np.testing.assert_array_equal(w(pruned, "tconv")[1], np.delete(tb, [2]))


def test_residual_add_removes_from_every_producer():
    model = residual()
    pruned = kp.remove_filters(model, {"b0_b": [3]})
    for name in ("stem", "b0_b", "b1_b"):
        k = w(model, name)[0]
        np.testing.assert_array_equal(w(pruned, name)[0], np.delete(k, [3], axis=-1))
    for name in ("b0_a", "b1_a"):
        np.testing.assert_array_equal(w(pruned, name)[0], np.delete(w(model, name)[0], [3], axis=-2))
    np.testing.assert_array_equal(w(pruned, "head")[0], np.delete(w(model, "head")[0], [3], axis=0))


def test_grouped_conv_keeps_groups_balanced():
    i = keras.Input((6, 6, 4))
    x = L.Conv2D(8, 1, name="pre")(i)
    x = L.Conv2D(8, 3, groups=2, padding="same", name="g")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = finish(i, L.Dense(2, name="head")(x))
    graph = kp.analyze(model)
    # The grouped conv's input channels are prunable group-wise (issue 17): balanced only.
    assert graph.group_of("pre").prunable
    pruned = kp.remove_filters(model, {"g": [0, 4]})  # one per group of 4
    assert pruned.get_layer("g").filters == 6
    with pytest.raises(kp.PruningError, match=r"groups=2.*removes \[2, 0\]"):
        kp.remove_filters(model, {"g": [0, 1]})


def test_group_normalization_per_channel_is_exact():
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(6, 1, name="c")(i)
    x = L.GroupNormalization(groups=6, name="gn")(x)
    y = L.Conv2D(4, 1, name="c2")(x)
    y = L.GroupNormalization(groups=2, name="gn2")(y)
    x = L.Concatenate()([x, y])
    x = L.GlobalAveragePooling2D()(x)
    model = finish(i, L.Dense(2, name="head")(x))
    graph = kp.analyze(model)
    assert graph.group_of("c").exact and not graph.group_of("c2").exact
    pruned = kp.remove_filters(model, {"c": [1], "c2": [0, 3]})
    assert pruned.get_layer("gn").groups == 5 and pruned.get_layer("gn2").groups == 2
    with pytest.raises(kp.PruningError, match="divisible"):
        kp.remove_filters(model, {"c2": [0]})


def test_dropout_noise_shape_and_reshape_resized():
    i = keras.Input((4, 4, 3))
    x = L.Conv2D(6, 1, name="c")(i)
    x = L.Dropout(0.2, noise_shape=(None, 1, 1, 6), name="drop")(x)
    s = L.GlobalAveragePooling2D()(x)
    s = L.Reshape((1, 1, 6), name="rs")(s)
    x = L.Multiply()([x, s])
    x = L.Reshape((16, 6), name="rs2")(x)
    x = L.Flatten()(x)
    model = finish(i, L.Dense(2, name="head")(x))
    pruned = kp.remove_filters(model, {"c": [0, 2]})
    assert tuple(pruned.get_layer("drop").noise_shape) == (None, 1, 1, 4)
    assert tuple(pruned.get_layer("rs").target_shape) == (1, 1, 4)
    assert tuple(pruned.get_layer("rs2").target_shape) == (16, 4)


def test_permute_moves_channel_axis():
    i = keras.Input((4, 5, 3))
    x = L.Conv2D(6, 1, name="c")(i)
    x = L.Permute((3, 1, 2))(x)
    x = L.Permute((2, 3, 1))(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = finish(i, L.Dense(2, name="head")(x))
    assert kp.analyze(model).group_of("c").members == ("c", "bn", "head")
    from conftest import assert_removal_equals_masking

    assert_removal_equals_masking(model, {"c": [5]})
