"""Model shapes beyond a single chain: nested models, shared layers, several inputs and
outputs, TimeDistributed video models, 1-D / 3-D convolutions and channels_first."""

import keras
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp
from conftest import assert_removal_equals_masking
from kerasprune.testing import randomize_batchnorm, randomize_weights
from test_core import random_selection


def _finish(inputs, outputs, name=None):
    model = keras.Model(inputs, outputs, name=name)
    randomize_weights(model, seed=3)
    randomize_batchnorm(model, seed=4)
    return model


def _weight(model, path_end):
    """The value of the one weight whose path ends with `path_end`."""
    found = [w for w in model.weights if w.path.endswith(path_end)]
    assert len(found) == 1, [w.path for w in model.weights]
    return keras.ops.convert_to_numpy(found[0])


def backbone_in_head():
    backbone = keras.applications.MobileNet(
        weights=None, include_top=False, input_shape=(32, 32, 3), alpha=0.25, name="backbone"
    )
    i = keras.Input((32, 32, 3))
    x = backbone(i)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(12, activation="relu", name="neck")(x)
    return _finish(i, L.Dense(3, name="head")(x), name="classifier")


def sequential_in_functional():
    block = keras.Sequential(
        [
            keras.Input((8, 8, 4)),
            L.Conv2D(6, 3, padding="same", name="seq_conv"),
            L.BatchNormalization(name="seq_bn"),
            L.ReLU(),
        ],
        name="block",
    )
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 1, name="stem")(i)
    x = block(x)
    x = L.Flatten()(x)
    return _finish(i, L.Dense(3, name="head")(x))


def shared_layer():
    i = keras.Input((8, 8, 3))
    a = L.Conv2D(6, 3, padding="same", name="branch_a")(i)
    b = L.Conv2D(6, 1, name="branch_b")(i)
    shared = L.Conv2D(5, 3, padding="same", name="shared")
    x = L.Concatenate(name="cat")([shared(a), shared(b)])
    x = L.BatchNormalization(name="cat_bn")(x)
    x = L.GlobalAveragePooling2D()(x)
    return _finish(i, L.Dense(2, name="head")(x))


def two_in_two_out():
    img = keras.Input((8, 8, 3), name="image")
    vec = keras.Input((5,), name="features")
    x = L.Conv2D(6, 3, name="img_conv")(img)
    x = L.BatchNormalization(name="img_bn")(x)
    x = L.GlobalAveragePooling2D()(x)
    v = L.Dense(7, activation="relu", name="vec_dense")(vec)
    j = L.Concatenate(name="joint_cat")([x, v])
    j = L.Dense(8, activation="relu", name="joint")(j)
    cls = L.Dense(3, name="cls")(j)
    reg = L.Dense(1, name="reg")(L.Add(name="mix")([j, L.Dense(8, name="skip")(v)]))
    return _finish([img, vec], [cls, reg])


def video():
    i = keras.Input((3, 8, 8, 2))
    x = L.TimeDistributed(L.Conv2D(6, 3, padding="same"), name="frame_conv")(i)
    x = L.BatchNormalization(name="bn")(x)
    x = L.TimeDistributed(L.MaxPooling2D(), name="frame_pool")(x)
    x = L.TimeDistributed(L.Conv2D(5, 3), name="frame_conv2")(x)
    x = L.TimeDistributed(L.Flatten(), name="frame_flat")(x)
    x = L.TimeDistributed(L.Dense(4), name="frame_dense")(x)
    x = L.GlobalAveragePooling1D()(x)
    return _finish(i, L.Dense(2, name="head")(x))


def text_conv1d():
    i = keras.Input((12,), dtype="int32")
    x = L.Embedding(20, 8, name="emb")(i)
    x = L.Conv1D(6, 3, padding="same", name="c1")(x)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.MaxPooling1D()(x)
    x = L.Conv1D(5, 3, name="c2")(x)
    x = L.GlobalMaxPooling1D()(x)
    return _finish(i, L.Dense(2, name="head")(x))


def audio_conv1d():
    i = keras.Input((32, 1))
    x = L.Conv1D(4, 5, strides=2, name="c1")(i)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU()(x)
    x = L.SeparableConv1D(6, 3, depth_multiplier=2, name="sep")(x)
    x = L.UpSampling1D()(x)
    x = L.Cropping1D(1)(x)
    x = L.Flatten()(x)
    return _finish(i, L.Dense(2, name="head")(x))


def volume_conv3d():
    i = keras.Input((6, 6, 6, 1))
    x = L.Conv3D(4, 3, padding="same", name="c1")(i)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.MaxPooling3D()(x)
    x = L.Conv3D(6, 2, name="c2")(x)
    x = L.Flatten()(x)
    return _finish(i, L.Dense(2, name="head")(x))


def channels_first():
    # TF on CPU runs channels_first convolutions only through oneDNN, which adds the
    # bias along the wrong axis when `filters` equals the output width (a TF bug, seen
    # with TF 2.21): widths 12 and 6 here never equal a filter count before or after pruning.
    i = keras.Input((3, 12, 12))
    x = L.Conv2D(8, 3, padding="same", data_format="channels_first", name="c1")(i)
    x = L.BatchNormalization(axis=1, name="bn1")(x)
    x = L.MaxPooling2D(data_format="channels_first")(x)
    x = L.Conv2D(5, 1, data_format="channels_first", name="c2")(x)
    x = L.Flatten()(x)  # default data_format: flattens (C, H, W) in that order
    return _finish(i, L.Dense(2, name="head")(x))


def grouped_depthwise():
    # A depthwise convolution written as Conv2D(groups=in_channels), as in ConvNeXt,
    # with two filters per input channel.
    i = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 1, name="c1")(i)
    x = L.Conv2D(8, 3, groups=4, padding="same", name="dw")(x)
    x = L.BatchNormalization(name="dw_bn")(x)
    x = L.Conv2D(3, 1, name="c2")(x)
    return _finish(i, L.Dense(2, name="head")(L.Flatten()(x)))


SHAPES = {
    "grouped_depthwise": grouped_depthwise,
    "backbone_in_head": backbone_in_head,
    "sequential_in_functional": sequential_in_functional,
    "shared_layer": shared_layer,
    "two_in_two_out": two_in_two_out,
    "video": video,
    "text_conv1d": text_conv1d,
    "audio_conv1d": audio_conv1d,
    "volume_conv3d": volume_conv3d,
    "channels_first": channels_first,
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_random_removal_equals_masking(name):
    model = SHAPES[name]()
    graph = kp.analyze(model)
    assert graph.prunable_groups, graph.summary()
    assert all(g.exact for g in graph.prunable_groups)
    sel = random_selection(graph, fraction=0.3, seed=1)
    assert_removal_equals_masking(model, sel)


def test_backbone_channels_cross_into_the_head():
    model = backbone_in_head()
    graph = kp.analyze(model)
    # The backbone's last pointwise conv feeds GAP -> Dense outside the nested model.
    group = graph.group_of("conv_pw_13")
    assert group.prunable
    assert "neck" in group.members and "backbone/conv_pw_13_bn" in group.members
    inner = model.get_layer("backbone").get_layer("conv_pw_13")
    assert graph.key_of(inner) == "backbone/conv_pw_13"
    pruned, _ = assert_removal_equals_masking(model, {"conv_pw_13": [0, 5, 9], "backbone/conv_pw_1": [2]})
    new_backbone = pruned.get_layer("backbone")
    assert new_backbone.get_layer("conv_pw_13").filters == inner.filters - 3
    assert (
        new_backbone.get_layer("conv_pw_1").filters
        == model.get_layer("backbone").get_layer("conv_pw_1").filters - 1
    )
    expected = np.delete(_weight(model, "neck/kernel"), [0, 5, 9], axis=0)
    np.testing.assert_array_equal(_weight(pruned, "neck/kernel"), expected)


@pytest.mark.backend
def test_sequential_block_is_rebuilt_inside_the_functional_model():
    model = sequential_in_functional()
    pruned, _ = assert_removal_equals_masking(model, {"stem": [1], "seq_conv": [0, 4]})
    block = pruned.get_layer("block")
    assert isinstance(block, keras.Sequential)
    assert block.get_layer("seq_conv").kernel.shape == (3, 3, 3, 4)
    assert block.get_layer("seq_bn").gamma.shape == (4,)
    # Flatten after the block: channel c of 8x8 positions sits at p * 6 + c.
    rows = [p * 6 + c for p in range(64) for c in (0, 4)]
    np.testing.assert_array_equal(
        _weight(pruned, "head/kernel"), np.delete(_weight(model, "head/kernel"), rows, axis=0)
    )


@pytest.mark.backend
def test_shared_layer_couples_its_callers():
    model = shared_layer()
    graph = kp.analyze(model)
    group = graph.group_of("branch_a")
    assert set(group.layers) == {"branch_a", "branch_b"}
    pruned, _ = assert_removal_equals_masking(model, {"branch_a": [2], "shared": [1, 3]})
    assert pruned.get_layer("branch_b").filters == 5
    assert pruned.get_layer("shared").kernel.shape == (3, 3, 5, 3)
    # The concatenation holds the shared layer's channels twice: both copies go.
    assert pruned.get_layer("cat_bn").gamma.shape == (6,)
    np.testing.assert_array_equal(
        _weight(pruned, "cat_bn/gamma"), np.delete(_weight(model, "cat_bn/gamma"), [1, 3, 6, 8])
    )


@pytest.mark.backend
def test_two_inputs_two_outputs():
    model = two_in_two_out()
    graph = kp.analyze(model)
    assert not graph.group_of("cls").prunable and "model output" in graph.group_of("cls").reason
    assert set(graph.group_of("joint").layers) == {"joint", "skip"}
    pruned, _ = assert_removal_equals_masking(model, {"img_conv": [0, 1], "vec_dense": [3], "joint": [5]})
    assert [tuple(o.shape) for o in pruned.outputs] == [(None, 3), (None, 1)]
    # joint_cat = [img (6), vec (7)]: rows 0, 1 and 6 + 3 of `joint` go.
    np.testing.assert_array_equal(
        _weight(pruned, "joint/kernel"),
        np.delete(np.delete(_weight(model, "joint/kernel"), [0, 1, 9], 0), 5, 1),
    )


@pytest.mark.backend
def test_time_distributed_conv_is_pruned_like_its_inner_layer():
    model = video()
    graph = kp.analyze(model)
    assert {g.layers[0] for g in graph.prunable_groups} == {"frame_conv", "frame_conv2", "frame_dense"}
    pruned, _ = assert_removal_equals_masking(model, {"frame_conv": [1, 4], "frame_conv2": [0]})
    inner = pruned.get_layer("frame_conv").layer
    assert inner.filters == 4
    kernel = keras.ops.convert_to_numpy(model.get_layer("frame_conv2").layer.kernel)
    expected = np.delete(np.delete(kernel, [1, 4], axis=2), [0], axis=3)
    new_kernel = keras.ops.convert_to_numpy(pruned.get_layer("frame_conv2").layer.kernel)
    np.testing.assert_array_equal(new_kernel, expected)


@pytest.mark.backend
def test_channels_first_flatten_rows():
    model = channels_first()
    graph = kp.analyze(model)
    assert graph.group_of("c1").prunable and graph.group_of("c2").prunable
    pruned, _ = assert_removal_equals_masking(model, {"c1": [2], "c2": [1, 3]})
    assert pruned.get_layer("bn1").gamma.shape == (7,)
    # (C=5, H=6, W=6) flattened channel-major: channel c owns rows c*36 ... c*36+35.
    rows = [c * 36 + p for c in (1, 3) for p in range(36)]
    np.testing.assert_array_equal(
        _weight(pruned, "head/kernel"), np.delete(_weight(model, "head/kernel"), rows, axis=0)
    )


def test_embedding_and_conv1d_weights_are_deleted():
    model = text_conv1d()
    pruned, _ = assert_removal_equals_masking(model, {"emb": [0, 7], "c1": [5]})
    np.testing.assert_array_equal(
        _weight(pruned, "emb/embeddings"), np.delete(_weight(model, "emb/embeddings"), [0, 7], axis=1)
    )
    np.testing.assert_array_equal(
        _weight(pruned, "c2/kernel"), np.delete(_weight(model, "c2/kernel"), 5, axis=1)
    )


@pytest.mark.backend
def test_grouped_conv_with_one_channel_per_group_passes_channels_through():
    model = grouped_depthwise()
    graph = kp.analyze(model)
    assert graph.group_of("dw_bn").layers == ("c1",)
    pruned, _ = assert_removal_equals_masking(model, {"c1": [1, 2]})
    dw = pruned.get_layer("dw")
    assert (dw.groups, dw.filters) == (2, 4)
    # Input channel c owns filters 2c and 2c + 1.
    np.testing.assert_array_equal(
        _weight(pruned, "dw/kernel"), np.delete(_weight(model, "dw/kernel"), [2, 3, 4, 5], axis=3)
    )
