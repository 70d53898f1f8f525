"""count_flops / flops_by_layer / count_params against hand-computed and published figures."""

import keras
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp
from kerasprune.errors import PruningError
from kerasprune.flops import CostModel


@pytest.mark.backend
def test_hand_computed_small_model():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same", name="c1")(i)  # 8*8 positions * 3*3*3*4
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(x)  # 8*8 * 3*3*4*2
    x = L.SeparableConv2D(6, 3, strides=2, padding="valid", name="sep")(x)  # 3*3 * (3*3*8 + 8*6)
    x = L.Conv2DTranspose(5, 2, strides=2, name="tr")(x)  # input 3*3 positions * 2*2*5*6
    x = L.BatchNormalization()(x)
    x = L.Flatten()(x)  # 6*6*5 = 180
    x = L.Dense(7, name="d1")(x)  # 180*7
    o = L.Dense(2, use_bias=False, name="d2")(x)  # 7*2
    m = keras.Model(i, o)
    expected = {
        "c1": 64 * 27 * 4,
        "dw": 64 * 9 * 4 * 2,
        "sep": 9 * (9 * 8 + 8 * 6),
        "tr": 9 * 4 * 5 * 6,
        "d1": 180 * 7,
        "d2": 14,
    }
    assert kp.flops_by_layer(m) == expected
    assert kp.count_flops(m) == sum(expected.values())
    assert kp.count_params(m) == sum(int(np.prod(w.shape)) for w in m.weights)


def test_conv1d_dense_3d_nested_and_shared():
    inner_in = keras.Input((None, 4))
    inner = keras.Model(inner_in, L.Conv1D(3, 3, padding="valid", name="k")(inner_in), name="inner")
    i = keras.Input((10, 4))
    shared = L.Dense(4, name="shared")
    a = shared(i)  # 10 positions * 4*4
    b = shared(a)  # again
    y = inner(b)  # nested: 8 output positions * 3*4*3 (inner shapes recomputed from 10 steps)
    o = L.Dense(2, name="out")(L.Flatten()(y))  # 24*2
    m = keras.Model(i, o)
    assert kp.flops_by_layer(m) == {"shared": 2 * 10 * 16, "inner/k": 8 * 36, "out": 48}


def test_channels_first_conv():
    i = keras.Input((3, 6, 6))
    o = L.Conv2D(2, 3, data_format="channels_first", name="c")(i)
    assert kp.count_flops(keras.Model(i, o)) == 4 * 4 * 27 * 2


def test_unknown_input_size_is_an_error():
    i = keras.Input((None, None, 3))
    m = keras.Model(i, L.Conv2D(2, 3, name="c")(i))
    with pytest.raises(PruningError, match="'c'.*not fully known"):
        kp.count_flops(m)


def test_not_a_functional_model():
    with pytest.raises(PruningError, match="Functional or Sequential"):
        kp.count_flops(object())


@pytest.mark.slow
def test_published_mobilenetv2():
    m = keras.applications.MobileNetV2(weights=None)
    assert kp.count_flops(m) == pytest.approx(0.30e9, rel=0.02)
    assert kp.count_params(m) == m.count_params()


def _residual():
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="stem")(i)
    x = L.BatchNormalization(name="stem_bn")(x)
    y = L.Conv2D(6, 1, name="a")(L.ReLU()(x))
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(y)
    y = L.Conv2D(8, 1, name="b")(y)
    x = L.Add()([x, y])
    x = L.concatenate([x, L.Conv2D(4, 3, padding="same", name="side")(x)])
    x = L.SeparableConv2D(5, 3, name="sep")(x)
    o = L.Dense(3, name="head")(L.Flatten()(x))
    return keras.Model(i, o)


def test_cost_model_matches_rebuilt_model():
    """The analytic count used by targets equals counting the actually pruned model."""
    m = _residual()
    graph = kp.analyze(m)
    cost = CostModel(graph)
    assert cost.flops_before == kp.count_flops(m)
    rng = np.random.default_rng(0)
    for _ in range(3):
        sel = {}
        for g in graph.prunable_groups:
            k = int(rng.integers(0, g.size))
            sel[g.layers[0]] = sorted(rng.choice(g.size, size=k, replace=False).tolist())
        plan = kp.make_plan(graph, sel)
        removed = np.zeros(cost.n_channels, dtype=bool)
        for gid, chans in plan.removed.items():
            removed[graph.group_offsets[gid] + chans] = True
        pruned = kp.remove_filters(m, sel, graph=graph)
        assert cost.flops(removed) == kp.count_flops(pruned)
        assert cost.params(removed) == kp.count_params(pruned)


def test_einsum_dense_with_an_unknown_output_axis_is_counted_and_so_are_its_consumers():
    """`EinsumDense(output_shape=(None, d))` leaves the sequence axis unknown in Keras's symbolic
    shapes although the input fixes it; MACs come from the concrete shapes."""
    inputs = keras.Input((6, 8))
    x = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 16), bias_axes="d", name="ed")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4, name="d2")(x))
    assert model.get_layer("ed").output.shape[1] is None
    assert kp.flops_by_layer(model) == {"ed": 6 * 8 * 16, "d2": 6 * 16 * 4}
    sel = kp.select(model, "l1", target_flops=0.5)
    assert sel.flops_after == kp.count_flops(kp.remove_filters(model, sel)) <= 0.5 * kp.count_flops(model)
