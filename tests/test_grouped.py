"""Grouped convolutions and GroupNormalization: every group loses the same number of channels."""

import keras
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp
from conftest import assert_removal_equals_masking
from kerasprune.testing import copy_model, randomize_batchnorm, randomize_weights


def resnext_block(groups=4, width=16):
    """conv1x1 -> BN -> grouped 3x3 -> BN -> conv1x1, with a residual stream (ResNeXt)."""
    i = keras.Input((8, 8, 3))
    s = L.Conv2D(12, 1, name="stem")(i)
    x = L.ReLU()(L.BatchNormalization(name="stem_bn")(s))
    y = L.Conv2D(width, 1, name="reduce")(x)
    y = L.ReLU()(L.BatchNormalization(name="reduce_bn")(y))
    y = L.Conv2D(width, 3, groups=groups, padding="same", name="grouped")(y)
    y = L.ReLU()(L.BatchNormalization(name="grouped_bn")(y))
    y = L.Conv2D(12, 1, name="expand")(y)
    x = L.Add()([x, L.BatchNormalization(name="expand_bn")(y)])
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(i, L.Dense(3, name="head")(x))
    randomize_weights(model, seed=3)
    randomize_batchnorm(model, seed=4)
    return model


def kernel(model, name):
    return keras.ops.convert_to_numpy(model.get_layer(name).kernel)


@pytest.mark.backend
def test_input_channels_of_a_grouped_conv_are_pruned_group_wise():
    model = resnext_block()
    graph = kp.analyze(model)
    assert graph.group_of("reduce").prunable
    # 16 input channels in 4 groups of 4: remove channel 1 of every group.
    removed = [1, 5, 9, 13]
    pruned, _ = assert_removal_equals_masking(model, {"reduce": removed})
    g = pruned.get_layer("grouped")
    assert g.groups == 4 and g.filters == 16 and g.kernel.shape == (3, 3, 3, 16)
    old, new = kernel(model, "grouped"), kernel(pruned, "grouped")
    for f in range(16):  # each filter keeps its own group's rows
        np.testing.assert_array_equal(new[..., f], np.delete(old[..., f], [1], axis=-1))
    np.testing.assert_array_equal(kernel(pruned, "reduce"), np.delete(kernel(model, "reduce"), removed, axis=-1))


def test_output_filters_and_both_sides_together():
    model = resnext_block()
    sel = {"reduce": [0, 4, 8, 12], "grouped": [2, 3, 6, 7, 10, 11, 14, 15]}
    pruned, _ = assert_removal_equals_masking(model, sel)
    g = pruned.get_layer("grouped")
    assert (g.groups, g.filters, g.kernel.shape) == (4, 8, (3, 3, 3, 8))


@pytest.mark.parametrize("selection", [{"reduce": [1]}, {"grouped": [0, 1]}])
def test_unequal_removal_is_refused_up_front(selection):
    model = resnext_block()
    graph = kp.analyze(model)
    with pytest.raises(kp.PruningError, match=r"'grouped' \(Conv2D\) has groups=4.*same number"):
        kp.make_plan(graph, selection)
    with pytest.raises(kp.PruningError, match="groups=4"):
        kp.mask_filters(copy_model(model), selection)


@pytest.mark.parametrize(
    "options", [dict(ratio=0.5), dict(ratio=0.3, scope="global"), dict(target_flops=0.5), dict(ratio=0.5, round_to=8)]
)
def test_select_keeps_every_group_equal(options):
    model = resnext_block()
    sel = kp.select(model, "l1", **options)
    pruned, _ = assert_removal_equals_masking(model, sel)
    g = pruned.get_layer("grouped")
    assert g.filters % 4 == 0 and g.kernel.shape[-2] * 4 == pruned.get_layer("reduce").filters
    assert kp.count_flops(pruned) == sel.flops_after
    if "round_to" in options:
        assert g.filters % 8 == 0


def test_group_normalization_loses_channels_group_wise():
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(8, 1, name="c")(i)
    x = L.GroupNormalization(groups=4, name="gn")(x)
    x = L.Conv2D(4, 1, name="c2")(x)
    model = keras.Model(i, L.Dense(2, name="head")(L.Flatten()(x)))
    randomize_weights(model, seed=1)
    sel = kp.select(model, "l1", ratio=0.5)
    assert len(sel["c"]) == 4
    assert sorted(np.asarray(sel["c"]) // 2) == [0, 1, 2, 3]  # one channel from each GN group
    pruned = kp.remove_filters(model, sel)
    assert pruned.get_layer("gn").groups == 4 and pruned.get_layer("c").filters == 4
    with pytest.raises(kp.PruningError, match="groups=4.*divisible"):
        kp.remove_filters(model, {"c": [0]})


@pytest.mark.isolated  # trains
def test_soft_pruning_masks_balanced_groups():
    model = resnext_block()
    pruning = kp.SoftPruning("l1", ratio=0.5)
    pruning.set_model(model)
    pruning.on_train_begin()
    pruning.on_epoch_begin(0)
    smaller = pruning.finalize(model)
    assert smaller.get_layer("grouped").filters % 4 == 0


def test_sensitivity_scans_grouped_groups_balanced_and_prints_its_plan():
    model = resnext_block()
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    ref = keras.ops.convert_to_numpy(model(x))

    def closeness(m):
        return -float(np.abs(keras.ops.convert_to_numpy(m(x)) - ref).mean())

    graph = kp.analyze(model)
    gid = graph.group_of("grouped").id
    result = kp.sensitivity(model, closeness, ratios=[0.25, 0.5], groups=["grouped"], progress=False)
    assert [r.removed for r in result.rows if r.group == gid] == [4, 8]  # one / two per conv group
    selection = result.plan(tolerance=1e9)
    assert len(selection["grouped"]) == 8
    text = str(selection)
    assert "grouped" in text and "MACs:" in text and "params:" in text
    pruned = kp.remove_filters(model, selection)
    assert pruned.get_layer("grouped").filters == 8
