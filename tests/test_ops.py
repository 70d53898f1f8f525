"""Rules for keras.ops nodes and weightless layers: one hand-written topology per rule.

Every topology is pruned through the op and checked for removal == masking (random BN
statistics), with the weights or constants the rule slices compared to `np.delete`;
barriers are checked by their reasons.
"""

from __future__ import annotations

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
from kerasprune import _keras
from kerasprune.testing import copy_model, predict, random_input
from models import finish


def conv(n, name, k=3, fmt="channels_last"):
    return L.Conv2D(n, k, padding="same", data_format=fmt, name=name)


def head(x, name="head"):
    return L.Dense(2, name=name)(L.Flatten()(x))


def op_nodes(model, cls_name):
    return [n for n in _keras.nodes_in_order(model) if type(n.operation).__name__ == cls_name]


# -- topologies: (model, selection) ------------------------------------------------------------
def elementwise_chain():
    i = keras.Input((8, 8, 3))
    x = (i - 0.5) * 2.0  # preprocess arithmetic on the input: frozen, fine
    x = L.BatchNormalization(name="bn")(conv(8, "c1")(x))
    x = keras.activations.swish(ops.relu(x))
    x = ops.where(x > 0.1, x, 0.1 * x) ** 2
    x = ops.cast(-ops.abs(x) / 3.0, "float32")
    return finish(i, head(conv(4, "c2")(x))), {"c1": [0, 3, 6]}


def residual_ops():
    i = keras.Input((8, 8, 3))
    a = conv(6, "a")(i)
    b = conv(6, "b")(ops.gelu(a))
    x = ops.maximum(ops.add(a, b), ops.minimum(a, 0.5))
    return finish(i, head(conv(3, "c2")(x))), {"b": [1, 4]}


def per_channel_constants(fmt="channels_last"):
    shape = (8, 8, 3) if fmt == "channels_last" else (3, 16, 16)  # widths above 8: KERAS_CHANNELS_FIRST_BIAS_BUG
    scale = np.linspace(0.5, 2.0, 8).astype("float32")
    shift = np.arange(8, dtype="float32")
    if fmt == "channels_first":
        scale, shift = scale.reshape(8, 1, 1), shift.reshape(8, 1, 1)
    i = keras.Input(shape)
    x = conv(8, "c1", fmt=fmt)(i) * scale + shift
    return finish(i, head(conv(4, "c2", fmt=fmt)(x))), {"c1": [1, 5]}


def squeeze_excite_ops(fmt="channels_last"):
    shape, spatial = ((8, 8, 3), (1, 2)) if fmt == "channels_last" else ((3, 16, 16), (2, 3))
    gate = (-1, 1, 1, 8) if fmt == "channels_last" else (-1, 8, 1, 1)
    i = keras.Input(shape)
    x = conv(8, "c1", fmt=fmt)(i)
    s = ops.reshape(ops.mean(x, axis=spatial), gate)
    s = ops.relu(L.Conv2D(2, 1, data_format=fmt, name="se_reduce")(s))
    s = ops.sigmoid(L.Conv2D(8, 1, data_format=fmt, name="se_expand")(s))
    x = x * s - ops.max(x, axis=spatial, keepdims=True)
    return finish(i, head(conv(4, "c2", fmt=fmt)(x))), {"c1": [1, 5], "se_reduce": [0]}


def csp_split():
    i = keras.Input((8, 8, 3))
    x = conv(8, "c1")(i)
    a, b = ops.split(x, 2, axis=-1)  # CSPNet: two halves
    x = ops.concatenate([a, conv(4, "cb")(ops.silu(b))], axis=-1)
    return finish(i, head(conv(4, "c2")(x))), {"c1": [1, 5, 6], "cb": [2]}


def split_three_ways():
    i = keras.Input((8, 8, 3))
    x = conv(10, "c1")(i)
    a, b, c = ops.split(x, [3, 7], axis=3)
    y = ops.concatenate([conv(2, "ca")(a), b, conv(2, "cc")(c)], axis=-1)
    p, q, r = ops.array_split(conv(7, "c2")(y), 3, axis=-1)
    return finish(i, head(ops.concatenate([r, p * 2.0, q], axis=-1))), {"c1": [0, 4, 5, 9], "c2": [2, 3]}


def slicing():
    i = keras.Input((8, 8, 3))
    x = conv(10, "c1")(i)
    parts = [x[..., :4], x[:, :, :, 4:], x[..., ::3], x[:, 1:-1, 1:-1, 7:8], ops.flip(x, -1)[..., ::2], x[..., 1::3]]
    ys = [conv(2, f"p{k}")(L.ZeroPadding2D(1)(p) if k == 3 else p) for k, p in enumerate(parts)]
    return finish(i, head(ops.concatenate(ys, axis=-1))), {"c1": [1, 4, 5, 6]}


def slicing_joined():  # the slices joined again: one consumer (cheap on JAX, where each conv shape traces)
    i = keras.Input((8, 8, 3))
    x = conv(10, "c1")(i)
    y = ops.concatenate([x[..., :4], x[..., ::3], x[:, :, :, 7:8], ops.flip(x, -1)[..., ::2], x[..., 1::3]], -1)
    return finish(i, head(conv(3, "c2")(y))), {"c1": [1, 4, 5, 6]}


def slice_and_take():
    i = keras.Input((4, 4, 3), batch_size=2)  # ops.slice takes the full shape, batch included
    x = conv(8, "c1")(i)
    a = ops.slice(x, [0, 0, 0, 2], [2, 4, 4, 5])
    b = ops.take(x, np.array([5, 0, 2, 2, 7]), axis=-1)
    c = ops.take(ops.take(x, 2, axis=1), [0, 2, 2], axis=1)
    x = ops.concatenate([conv(2, "ca")(a), conv(2, "cb")(b)], axis=-1)
    return finish(i, L.Dense(2, name="head")(ops.concatenate([L.Flatten()(x), L.Flatten()(c)], -1))), {"c1": [0, 3, 4]}


def moving_axes():
    i = keras.Input((8, 6, 3))
    x = conv(6, "c1")(i)
    x = ops.transpose(x, (0, 3, 1, 2))  # channels first
    x = L.Conv2D(5, 3, padding="same", data_format="channels_first", name="cf")(ops.relu(x))
    x = ops.swapaxes(ops.moveaxis(x, 1, -1), 1, 2)  # channels last again, H and W swapped
    x = ops.squeeze(ops.expand_dims(x, 1), axis=1)
    return finish(i, head(conv(4, "c2")(x))), {"c1": [1, 5], "cf": [0]}


def spatial_ops_and_layers():
    i = keras.Input((8, 8, 3))
    x = conv(6, "c1")(i)
    x = ops.pad(x, ((0, 0), (1, 1), (2, 2), (0, 0)), mode="reflect")
    x = ops.image.resize(x, (6, 6))
    x = ops.image.crop_images(ops.image.pad_images(x, 1, 1, 1, 1), 1, 1, 1, 1)
    x = ops.max_pool(ops.average_pool(x, 2, 1, padding="same"), 2)
    x = L.CenterCrop(2, 2)(L.Resizing(4, 4)(L.RandomFlip()(x)))
    x = ops.flip(ops.roll(ops.flip(x, axis=1), 2, axis=-1), axis=-1)
    return finish(i, head(conv(4, "c2")(x))), {"c1": [1, 4, 5]}


def tile_repeat_stack():
    i = keras.Input((4, 4, 3))
    x = conv(5, "c1")(i)
    y = ops.repeat(ops.tile(x, (1, 2, 1, 1)), 2, axis=2)
    z = ops.repeat(x, [1, 2, 3, 1, 1], axis=-1)  # per-channel repeats: sliced
    s = ops.sum(ops.stack([x, conv(5, "c2")(i)], axis=1), axis=1)
    a, b, c, d = ops.unstack(s, axis=1)
    ys = [conv(2, "cy")(y), conv(2, "cz")(z), L.Conv1D(2, 1, name="cs")(a + b * c - d)]
    return finish(i, L.Dense(2, name="head")(ops.concatenate([L.Flatten()(t) for t in ys], -1))), {"c1": [1, 3]}


def glu_normalize_softmax():
    i = keras.Input((4, 4, 3))
    x = ops.glu(conv(8, "c1")(i), axis=-1)  # channel c pairs with c + 4
    x = ops.softmax(ops.log_softmax(x, axis=1), axis=2)
    x = ops.cumsum(ops.sort(x, axis=1), axis=2)
    x = ops.normalize(conv(6, "c2")(x), axis=-1)  # prunable, approximate
    return finish(i, head(conv(3, "c3")(x))), {"c1": [0, 2]}


def reversed_slices():  # negative steps: PyTorch's getitem refuses them, so TensorFlow/JAX only
    i = keras.Input((8, 8, 3))
    x = conv(10, "c1")(i)
    ys = [conv(2, f"p{k}")(p) for k, p in enumerate([x[..., ::-1], x[..., 8:2:-2], x[..., ::-3]])]
    return finish(i, head(ops.concatenate(ys, axis=-1))), {"c1": [0, 4, 6]}


def reshape_flatten():
    i = keras.Input((4, 4, 3))
    x = ops.reshape(conv(5, "c1")(i), (-1, 80))
    return finish(i, L.Dense(2, name="d")(x)), {"c1": [0, 3]}


TOPOLOGIES = {
    "elementwise_chain": elementwise_chain,
    "residual_ops": residual_ops,
    "per_channel_constants": per_channel_constants,
    "per_channel_constants_cf": lambda: per_channel_constants("channels_first"),
    "squeeze_excite_ops": squeeze_excite_ops,
    "squeeze_excite_ops_cf": lambda: squeeze_excite_ops("channels_first"),
    "csp_split": csp_split,
    "split_three_ways": split_three_ways,
    "slicing": slicing,
    "slicing_joined": slicing_joined,
    "slice_and_take": slice_and_take,
    "moving_axes": moving_axes,
    "spatial_ops_and_layers": spatial_ops_and_layers,
    "tile_repeat_stack": tile_repeat_stack,
    "glu_normalize_softmax": glu_normalize_softmax,
    "reshape_flatten": reshape_flatten,
    "reversed_slices": reversed_slices,
}
CORE = ("elementwise_chain", "per_channel_constants", "squeeze_excite_ops", "csp_split", "slicing_joined")


def _check(build):
    model, sel = build()
    graph = kp.analyze(model)
    for layer in sel:
        assert graph.group_of(layer).prunable, graph.summary()
    return (model, sel, *assert_removal_equals_masking(model, sel))


@pytest.mark.parametrize("name", sorted(set(TOPOLOGIES) - set(CORE)))
def test_removal_through_ops_equals_masking(name):
    _check(TOPOLOGIES[name])


@pytest.mark.backend
@pytest.mark.parametrize("name", CORE)
def test_removal_through_ops_equals_masking_core(name):
    _check(TOPOLOGIES[name])


# -- what the rules rewrite, against np.delete --------------------------------------------------
@pytest.mark.backend
def test_per_channel_constant_operands_are_sliced():
    model, sel, pruned, _ = _check(per_channel_constants)
    originals = [a for n in op_nodes(model, "Multiply") + op_nodes(model, "Add") for a in _keras.call_arguments(n)[0]]
    smaller = [a for n in op_nodes(pruned, "Multiply") + op_nodes(pruned, "Add") for a in _keras.call_arguments(n)[0]]
    consts = [np.asarray(a) for a in originals if not isinstance(a, _keras.KerasTensor)]
    new = [np.asarray(a) for a in smaller if not isinstance(a, _keras.KerasTensor)]
    assert len(consts) == len(new) == 2
    for a, b in zip(consts, new):
        np.testing.assert_array_equal(b, np.delete(a, sel["c1"], axis=-1))
    np.testing.assert_array_equal(
        pruned.get_layer("c2").kernel.numpy(), np.delete(model.get_layer("c2").kernel.numpy(), sel["c1"], axis=2)
    )


def test_squeeze_excite_reshape_gets_the_new_count():
    model, sel, pruned, _ = _check(squeeze_excite_ops)
    (node,) = op_nodes(pruned, "Reshape")
    assert tuple(node.operation.newshape) == (-1, 1, 1, 6)
    expand = pruned.get_layer("se_expand").kernel.numpy()
    np.testing.assert_array_equal(
        expand, np.delete(np.delete(model.get_layer("se_expand").kernel.numpy(), [0], axis=2), [1, 5], axis=3)
    )


def test_split_and_slices_follow_the_kept_channels():
    model, sel, pruned, _ = _check(csp_split)
    assert pruned.get_layer("cb").kernel.shape[2] == 2  # second half 4..7 lost 5 and 6
    assert pruned.get_layer("c2").kernel.shape[2] == 3 + 3  # first half lost 1; cb lost one filter
    model, sel, pruned, _ = _check(slicing)
    kept = np.delete(np.arange(10), sel["c1"])
    for k, part in enumerate([slice(0, 4), slice(4, None), slice(None, None, 3), slice(7, 8), slice(None, None, -2)]):
        want = [c for c in np.arange(10)[part] if c in kept]
        got = pruned.get_layer(f"p{k}").kernel.numpy()
        full = model.get_layer(f"p{k}").kernel.numpy()
        rows = [list(np.arange(10)[part]).index(c) for c in want]
        np.testing.assert_array_equal(got, full[:, :, rows])
    # x[..., ::3] keeps 0 3 9 and x[..., ::-2] keeps 9 7 3: no longer strides in the smaller tensor
    assert len(op_nodes(pruned, "Take")) == 2


def test_per_channel_repeats_and_take_indices_are_rewritten():
    model, sel, pruned, _ = _check(tile_repeat_stack)
    (node,) = [n for n in op_nodes(pruned, "Repeat") if np.size(n.operation.repeats) > 1]
    assert list(node.operation.repeats) == [1, 3, 1]
    model, sel, pruned, _ = _check(slice_and_take)
    takes = [np.asarray(_keras.call_arguments(n)[0][1]) for n in op_nodes(pruned, "Take")]
    # take([5, 0, 2, 2, 7]) without channels 0, 3, 4: [5, 2, 2, 7] at their new positions
    assert [2, 1, 1, 4] in [t.tolist() for t in takes]
    assert [0, 2, 2] in [t.tolist() for t in takes]  # along a spatial axis: unchanged


def test_normalize_over_channels_is_prunable_but_approximate():
    model, _ = glu_normalize_softmax()
    graph = kp.analyze(model)
    g = graph.group_of("c2")
    assert g.prunable and not g.exact and "normalize" in g.approx_reason
    assert graph.group_of("c1").size == 4  # glu: channel c and c + 4 are one channel


# -- barriers and their reasons ---------------------------------------------------------------
def _after_conv(fn, shape=(8, 8, 4)):
    i = keras.Input(shape)
    x = fn(conv(6, "c1")(i))
    return finish(i, L.Dense(2, name="head")(L.Flatten()(x)))


BARRIERS = {
    "softmax over the channel axis mixes channels": lambda x: ops.softmax(x),
    "mean over the channel axis mixes channels": lambda x: ops.mean(x, axis=-1),
    "max over every axis mixes channels": lambda x: ops.expand_dims(ops.max(x), 0) * ops.ones((1, 1)),
    "argmax over the channel axis": lambda x: ops.cast(ops.argmax(x, axis=-1), "float32"),
    "reshape mixes the channel axis with other axes": lambda x: ops.reshape(x, (-1, 8, 24, 2)),
    "pads the channel axis": lambda x: ops.pad(x, ((0, 0), (0, 0), (0, 0), (1, 0))),
    "multiplies by a tensor operand": lambda x: ops.matmul(x, np.ones((6, 3), "float32")),
    "moves channels to spatial positions": lambda x: ops.depth_to_space(ops.concatenate([x, x], -1), 2),
    "takes channel 3 alone, without a channel axis": lambda x: x[..., 3],
    "cumsum over the channel axis mixes channels": lambda x: ops.cumsum(x, axis=-1),
    "cannot be re-created from its config": lambda x: ops.clip(x, np.zeros(6, "float32"), 1.0),
}


@pytest.mark.parametrize("reason", sorted(BARRIERS))
def test_ops_that_mix_channels_are_barriers_with_their_reason(reason):
    graph = kp.analyze(_after_conv(BARRIERS[reason]))
    g = graph.group_of("c1")
    assert not g.prunable and reason in g.reason, g.reason
    with pytest.raises(kp.PruningError, match="not prunable"):
        kp.remove_filters(graph.model, {"c1": [0]})


def test_colour_conversion_layers_are_barriers():
    i = keras.Input((8, 8, 3))
    x = L.RandomGrayscale(factor=0.5)(conv(3, "c1")(i))
    graph = kp.analyze(finish(i, head(x)))
    assert "converts colours: mixes the channels" in graph.group_of("c1").reason


def test_emptying_a_slice_is_refused_up_front():
    i = keras.Input((4, 4, 3))
    x = conv(8, "c1")(i)
    model = finish(i, head(ops.concatenate([conv(3, "a")(x[..., :2]), conv(3, "b")(x[..., 2:])], -1)))
    with pytest.raises(kp.PruningError, match=r"all 2 channels of group 0 that the output of 'get_item.*at least one"):
        kp.make_plan(kp.analyze(model), {"c1": [0, 1]})
    assert_removal_equals_masking(model, {"c1": [0, 2]})


def test_select_keeps_a_channel_in_every_split_part(caplog):
    model, _ = csp_split()
    low_first_half = kp.criteria.layer_criterion(lambda w: np.arange(w.shape[-1], dtype=float))  # 0..3 lowest
    sel = kp.select(model, low_first_half, ratio=0.5, include=["c1"])
    assert list(sel["c1"]) == [0, 1, 2, 4]  # channel 3 keeps the first half alive; 4 goes instead
    assert not sel.warnings
    assert_removal_equals_masking(model, sel)
    sel = kp.select(model, low_first_half, count=7, include=["c1"])
    assert list(sel["c1"]) == [0, 1, 2, 4, 5, 6]
    assert any("a slice, split or concatenation carries" in w for w in sel.warnings), sel.warnings


def test_ops_inside_a_nested_model():
    inner_in = keras.Input((8, 8, 6))
    y = ops.relu(L.Conv2D(6, 3, padding="same", name="inner")(inner_in))
    inner = keras.Model(inner_in, ops.concatenate(ops.split(y, 2, axis=-1)[::-1], axis=-1), name="block")
    i = keras.Input((8, 8, 3))
    model = finish(i, head(conv(4, "c2")(inner(ops.sigmoid(conv(6, "c1")(i))))))
    pruned, _ = assert_removal_equals_masking(model, {"c1": [0, 5], "inner": [1, 4]})
    assert pruned.get_layer("block").get_layer("inner").kernel.shape == (3, 3, 4, 4)


@pytest.mark.backend
def test_saved_pruned_ops_model_loads_without_kerasprune(tmp_path):
    model, sel = slicing_joined()
    pruned = kp.remove_filters(model, sel)
    masked = copy_model(model)
    kp.mask_filters(masked, sel)
    x = random_input(model, batch=3)
    pruned.save(tmp_path / "pruned.keras")
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, keras
        m = keras.saving.load_model({str(tmp_path / 'pruned.keras')!r})
        np.save({str(tmp_path / 'y.npy')!r}, keras.ops.convert_to_numpy(m(np.load({str(tmp_path / 'x.npy')!r}))))
        assert not any(k.startswith("kerasprune") for k in sys.modules), "kerasprune was imported"
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = predict(masked, x)[0]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(expected).max()))
