"""Attention rules: MultiHeadAttention heads/key_dim/value_dim/outputs, EinsumDense, Attention layers.

Every topology is checked for removal == masking on randomized weights, and the pruned
weights against `np.delete` of the originals.
"""

import math
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp
from conftest import assert_removal_equals_masking
from models import finish
from test_docs import python_blocks

T, C = 5, 8


def transformer(heads=4, key_dim=3, value_dim=None, norm=False, use_bias=True, name="mha"):
    """embed -> x + MHA(x, x) -> x + FFN(x) (Dense -> gelu -> Dense) -> pooled head."""
    i = keras.Input((T, C))
    x = L.Dense(C, name="embed")(i)
    a = L.MultiHeadAttention(heads, key_dim, value_dim=value_dim, use_bias=use_bias, name=name)(x, x)
    x = L.Add(name="res1")([x, a])
    if norm:
        x = L.LayerNormalization(name="ln1")(x)
    f = L.Dense(12, activation="gelu", name="ff1")(x)
    x = L.Add(name="res2")([x, L.Dense(C, name="ff2")(f)])
    return finish(i, L.Dense(3, name="head")(L.GlobalAveragePooling1D()(x)))


def weights(model, name="mha"):
    mha = model.get_layer(name)
    return {w.path.split("/", 1)[1]: keras.ops.convert_to_numpy(w) for w in mha.weights}


def test_groups_of_a_transformer_block():
    graph = kp.analyze(transformer(value_dim=5))
    assert graph.group_of("mha/heads").size == 4
    assert graph.group_of("mha/key_dim").size == 3
    assert graph.group_of("mha/value_dim").size == 5
    stream = graph.group_of("embed")
    assert stream.layers == ("embed", "mha", "ff2") and stream.prunable and stream.exact
    ffn = graph.group_of("ff1")
    assert ffn.prunable and ffn.exact and ffn.members == ("ff1", "ff2")


@pytest.mark.backend
def test_heads_are_removed_consistently_across_query_key_value_output():
    model = transformer()
    rm = [1, 3]
    pruned, _ = assert_removal_equals_masking(model, {"mha/heads": rm})
    assert pruned.get_layer("mha").num_heads == 2
    old, new = weights(model), weights(pruned)
    for proj in ("query", "key", "value"):
        np.testing.assert_array_equal(new[f"{proj}/kernel"], np.delete(old[f"{proj}/kernel"], rm, axis=1))
        np.testing.assert_array_equal(new[f"{proj}/bias"], np.delete(old[f"{proj}/bias"], rm, axis=0))
    np.testing.assert_array_equal(
        new["attention_output/kernel"], np.delete(old["attention_output/kernel"], rm, axis=0)
    )
    np.testing.assert_array_equal(new["attention_output/bias"], old["attention_output/bias"])


@pytest.mark.backend
def test_key_dim_positions_couple_query_and_key_and_keep_the_score_scale():
    model = transformer()  # key_dim == value_dim == 3: one group (see the JAX test below)
    rm = [0, 2]
    pruned, _ = assert_removal_equals_masking(model, {"mha/key_dim": rm})
    mha = pruned.get_layer("mha")
    assert (mha.key_dim, mha.value_dim) == (1, 1)
    old, new = weights(model), weights(pruned)
    factor = math.sqrt(1 / 3)  # 1/sqrt(key_dim) changes from 1/sqrt(3) to 1: the query absorbs it
    for name, scale in (("query", factor), ("key", 1.0), ("value", 1.0)):
        np.testing.assert_allclose(new[f"{name}/kernel"], np.delete(old[f"{name}/kernel"], rm, axis=2) * scale, 1e-6)
        np.testing.assert_allclose(new[f"{name}/bias"], np.delete(old[f"{name}/bias"], rm, axis=1) * scale, 1e-6)
    np.testing.assert_array_equal(new["attention_output/kernel"], np.delete(old["attention_output/kernel"], rm, 1))


def test_key_dim_alone_when_value_dim_differs():
    model = transformer(value_dim=5)
    pruned, _ = assert_removal_equals_masking(model, {"mha/key_dim": [1]})
    mha = pruned.get_layer("mha")
    assert (mha.key_dim, mha.value_dim) == (2, 5)
    np.testing.assert_array_equal(weights(pruned)["value/kernel"], weights(model)["value/kernel"])


def test_value_dim_positions_couple_value_and_output():
    model = transformer(value_dim=5)
    rm = [4]
    pruned, _ = assert_removal_equals_masking(model, {"mha/value_dim": rm})
    old, new = weights(model), weights(pruned)
    np.testing.assert_array_equal(new["value/kernel"], np.delete(old["value/kernel"], rm, axis=2))
    np.testing.assert_array_equal(new["value/bias"], np.delete(old["value/bias"], rm, axis=1))
    np.testing.assert_array_equal(
        new["attention_output/kernel"], np.delete(old["attention_output/kernel"], rm, axis=1)
    )
    np.testing.assert_array_equal(new["query/kernel"], old["query/kernel"])


def test_equal_key_and_value_dims_stay_equal():
    # Keras's JAX backend cannot run a MultiHeadAttention whose key_dim and value_dim differ.
    model = transformer(key_dim=3)
    graph = kp.analyze(model)
    with pytest.raises(kp.SelectionError, match="Unknown layer 'mha/value_dim'"):
        graph.key_of("mha/value_dim")
    pruned, _ = assert_removal_equals_masking(model, {"mha/key_dim": [1]})
    assert (pruned.get_layer("mha").key_dim, pruned.get_layer("mha").value_dim) == (2, 2)


@pytest.mark.backend
def test_residual_stream_slices_the_inputs_and_the_output_projection():
    model = transformer()
    rm = [0, 5, 6]
    pruned, _ = assert_removal_equals_masking(model, {"embed": rm})
    old, new = weights(model), weights(pruned)
    for proj in ("query", "key", "value"):
        np.testing.assert_array_equal(new[f"{proj}/kernel"], np.delete(old[f"{proj}/kernel"], rm, axis=0))
    np.testing.assert_array_equal(new["attention_output/kernel"], np.delete(old["attention_output/kernel"], rm, -1))
    np.testing.assert_array_equal(new["attention_output/bias"], np.delete(old["attention_output/bias"], rm))
    assert tuple(pruned.get_layer("mha").get_config()["output_shape"]) == (5,)


def test_feed_forward_hidden_units_are_an_exact_group():
    model = transformer(norm=True)
    graph = kp.analyze(model)
    assert graph.group_of("ff1").exact
    assert not graph.group_of("embed").exact  # LayerNorm on the residual stream
    assert "ln1" in graph.group_of("embed").approx_reason and "normalizes across channels" in (
        graph.group_of("embed").approx_reason
    )
    pruned, _ = assert_removal_equals_masking(model, {"ff1": [0, 3, 11]})
    np.testing.assert_array_equal(
        pruned.get_layer("ff2").kernel.numpy(), np.delete(model.get_layer("ff2").kernel.numpy(), [0, 3, 11], 0)
    )


def test_everything_at_once_and_without_biases():
    for use_bias in (True, False):
        model = transformer(value_dim=5, use_bias=use_bias)
        sel = {"mha/heads": [2], "mha/key_dim": [1], "mha/value_dim": [0, 3], "embed": [7], "ff1": [1]}
        pruned, _ = assert_removal_equals_masking(model, sel)
        mha = pruned.get_layer("mha")
        assert (mha.num_heads, mha.key_dim, mha.value_dim) == (3, 2, 3)


def test_cross_attention_with_a_mask_input_and_explicit_output_shape():
    q_in, kv_in = keras.Input((4, 6)), keras.Input((7, 5))
    mask = keras.Input((4, 7), dtype="bool")
    q = L.Dense(6, name="q_proj")(q_in)
    kv = L.Dense(5, name="kv_proj")(kv_in)
    a = L.MultiHeadAttention(2, 4, output_shape=(3, 6), name="mha")(q, kv, attention_mask=mask)
    model = finish([q_in, kv_in, mask], L.Dense(2, name="head")(L.Flatten()(a)))
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(2, 4, 6)).astype("float32"), rng.normal(size=(2, 7, 5)).astype("float32"),
         rng.random((2, 4, 7)) > 0.3]  # fmt: skip
    graph = kp.analyze(model)
    assert graph.group_of("q_proj").members == ("q_proj", "mha")  # read by the query kernel only
    assert graph.group_of("kv_proj").members == ("kv_proj", "mha")
    sel = {"q_proj": [1], "kv_proj": [0, 4], "mha": [2], "mha/heads": [0]}
    pruned, _ = assert_removal_equals_masking(model, sel, x=x)
    old, new = weights(model), weights(pruned)
    np.testing.assert_array_equal(new["query/kernel"], np.delete(old["query/kernel"][:, 1:], [1], axis=0))
    np.testing.assert_array_equal(new["key/kernel"], np.delete(old["key/kernel"][:, 1:], [0, 4], axis=0))
    assert new["attention_output/kernel"].shape == (1, 4, 3, 5)
    assert tuple(pruned.get_layer("mha").get_config()["output_shape"]) == (3, 5)


def test_shared_layer_and_separate_key_input():
    i = keras.Input((T, C))
    x = L.Dense(C, name="embed")(i)
    k = L.Dense(C, name="key_proj")(i)
    mha = L.MultiHeadAttention(2, 3, name="mha")
    y = mha(x, x, k)
    y = mha(y, y, k)  # a second call: the same heads, its inputs coupled to the first call's
    model = finish(i, L.Dense(2, name="head")(L.GlobalAveragePooling1D()(y)))
    graph = kp.analyze(model)
    assert graph.group_of("embed").layers == ("embed", "mha")
    assert_removal_equals_masking(model, {"mha/heads": [1], "embed": [2], "key_proj": [0, 7]})


def test_gate_and_four_dimensional_attention_axes():
    i = keras.Input((3, 4, 6))
    x = L.Dense(6, name="embed")(i)
    a = L.MultiHeadAttention(2, 2, value_dim=3, use_gate=True, attention_axes=(1, 2), name="mha")(x, x)
    x = L.Add()([x, a])
    model = finish(i, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x)))
    pruned, _ = assert_removal_equals_masking(model, {"mha/heads": [0], "mha/value_dim": [1], "embed": [3]})
    old, new = weights(model), weights(pruned)
    np.testing.assert_array_equal(new["gate/kernel"], np.delete(old["gate/kernel"][:, 1:], [3], axis=0)[..., [0, 2]])


def test_query_mask_from_an_embedding():
    i = keras.Input((6,), dtype="int32")
    x = L.Embedding(10, 8, mask_zero=True, name="emb")(i)
    a = L.MultiHeadAttention(2, 4, name="mha")(x, x)
    x = L.Add()([x, a])
    model = finish(i, L.Dense(2, name="head")(L.GlobalAveragePooling1D()(x)))
    x = np.array([[3, 4, 5, 0, 0, 0], [1, 2, 9, 8, 7, 0]], dtype="int32")
    assert_removal_equals_masking(model, {"emb": [0, 5], "mha/heads": [1], "mha/key_dim": [3]}, x=x)


def test_attention_scores_carry_the_heads():
    i = keras.Input((T, C))
    x = L.Dense(C, name="embed")(i)
    a, scores = L.MultiHeadAttention(3, 2, name="mha")(x, x, return_attention_scores=True)
    model = finish(i, [L.Dense(2, name="head")(a), scores])
    graph = kp.analyze(model)
    heads = graph.group_of("mha/heads")
    assert not heads.prunable and "reach the model output" in heads.reason
    j = keras.Input((T, C))
    y = L.Dense(C, name="embed")(j)
    _, s = L.MultiHeadAttention(3, 2, name="mha")(y, y, return_attention_scores=True)
    s = L.Permute((2, 3, 1))(s)  # heads last: (T, T, heads)
    model = finish(j, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(s)))
    pruned, _ = assert_removal_equals_masking(model, {"mha/heads": [1]})
    assert pruned.get_layer("head").kernel.shape == (2, 2)


def test_subclass_that_changes_the_computation_is_a_barrier():
    class Rotary(L.MultiHeadAttention):
        def _compute_attention(self, query, key, value, *args, **kwargs):
            return super()._compute_attention(query, key, value, *args, **kwargs)

    i = keras.Input((T, C))
    x = L.Dense(C, name="embed")(i)
    y = Rotary(2, 4, name="mha")(x, x)
    model = finish(i, L.Dense(2, name="head")(L.GlobalAveragePooling1D()(y)))
    g = kp.analyze(model).group_of("embed")
    assert not g.prunable and "overrides MultiHeadAttention._compute_attention" in g.reason


# -- criteria and costs ----------------------------------------------------------------------------
@pytest.mark.backend
@pytest.mark.parametrize("criterion", ["l1", "l2", "fpgm", "zero"])
def test_weight_criteria_score_each_head(criterion):
    model = transformer(value_dim=5)
    graph = kp.analyze(model)
    # Make head 2 clearly the weakest in every projection.
    mha = model.get_layer("mha")
    for dense, axis in ((mha._query_dense, 1), (mha._key_dense, 1), (mha._value_dense, 1), (mha._output_dense, 0)):
        k = keras.ops.convert_to_numpy(dense.kernel).copy()
        index = [slice(None)] * k.ndim
        index[axis] = 2
        k[tuple(index)] *= 1e-3
        dense.kernel.assign(k)
    scores = kp.score(model, criterion, graph=graph)
    heads = scores[graph.group_of("mha/heads").id]
    assert heads.shape == (4,) and int(np.argmin(heads)) == 2
    assert scores[graph.group_of("mha/key_dim").id].shape == (3,)
    sel = kp.select(model, criterion, count=1, include=["mha/heads"], graph=graph)
    assert {k: list(v) for k, v in sel.items()} == {"mha/heads": [2]}


@pytest.mark.parametrize("criterion", ["taylor", "apoz", "mean_activation"])
def test_data_criteria_score_the_streams_and_say_why_heads_are_skipped(criterion):
    model = transformer()
    rng = np.random.default_rng(0)
    data = [(rng.normal(size=(4, T, C)).astype("float32"), rng.normal(size=(4, 3)).astype("float32"))]
    graph = kp.analyze(model)
    scores = kp.score(model, criterion, data=data, loss="mse", graph=graph)
    assert scores[graph.group_of("embed").id].shape == (C,)
    assert scores[graph.group_of("ff1").id].shape == (12,)
    sel = kp.select(model, criterion, ratio=0.25, data=data, loss="mse", graph=graph)
    why = {s.layers[0]: s.reason for s in sel.skipped}
    assert "internal to a layer" in why["mha/heads"] and "weight criterion" in why["mha/heads"]


def test_macs_count_projections_scores_and_weighted_sum():
    model = transformer(heads=4, key_dim=3, value_dim=5)
    h, kd, vd = 4, 3, 5
    projections = T * C * h * (kd + kd + vd) + T * h * vd * C
    attention = T * T * h * (kd + vd)
    assert kp.flops_by_layer(model)["mha"] == projections + attention
    sel = {"mha/heads": [0], "mha/key_dim": [2], "embed": [1, 2]}
    pruned = kp.remove_filters(model, sel)
    graph = kp.analyze(model)
    plan = kp.make_plan(graph, sel)
    cost = kp.flops.CostModel(graph)
    assert cost.flops(plan.flat_removed()) == kp.count_flops(pruned)
    assert cost.params(plan.flat_removed()) == kp.count_params(pruned)


def test_select_meets_a_flops_target_on_a_transformer():
    model = transformer(value_dim=5)
    sel = kp.select(model, "l1", target_flops=0.6)
    pruned = kp.remove_filters(model, sel)
    assert kp.count_flops(pruned) <= 0.6 * kp.count_flops(model) * 1.03
    assert_removal_equals_masking(model, sel)


# -- EinsumDense and the Keras attention layers ----------------------------------------------------------
def test_einsum_dense_projections_as_transformers_write_them():
    i = keras.Input((T, C))
    x = L.EinsumDense("abc,cd->abd", output_shape=(T, 6), bias_axes="d", name="proj")(i)
    x = L.EinsumDense("abc,cde->abde", output_shape=(T, 2, 4), bias_axes="de", name="heads")(x)
    x = L.EinsumDense("abcd,cde->abe", output_shape=(T, 5), bias_axes="e", name="merge")(x)
    x = L.EinsumDense("...b,bc->...c", output_shape=7, bias_axes="c", name="ellipsis")(x)
    x = L.EinsumDense("abc,c->abc", output_shape=(T, 7), bias_axes="c", name="scale")(x)
    model = finish(i, L.Dense(2, name="head")(L.GlobalAveragePooling1D()(x)))
    graph = kp.analyze(model)
    assert [graph.group_of(n).prunable for n in ("proj", "heads", "merge", "ellipsis")] == [True] * 4
    assert graph.group_of("ellipsis").members == ("ellipsis", "scale", "head")
    sel = {"proj": [0, 5], "heads": [1, 2], "merge": [4], "ellipsis": [0, 6]}
    pruned, _ = assert_removal_equals_masking(model, sel)
    w = lambda m, n: m.get_layer(n).kernel.numpy()  # noqa: E731
    np.testing.assert_array_equal(w(pruned, "heads"), np.delete(np.delete(w(model, "heads"), [0, 5], 0), [1, 2], 2))
    np.testing.assert_array_equal(w(pruned, "merge"), np.delete(np.delete(w(model, "merge"), [1, 2], 1), [4], 2))
    np.testing.assert_array_equal(w(pruned, "scale"), np.delete(w(model, "scale"), [0, 6]))
    assert kp.flops_by_layer(model)["heads"] == T * 6 * 2 * 4
    assert kp.flops_by_layer(pruned)["merge"] == T * 2 * 2 * 4


def test_einsum_dense_that_moves_channels_is_a_barrier():
    i = keras.Input((T, C))
    x = L.Dense(C, name="d")(i)
    x = L.EinsumDense("abc,cd->adb", output_shape=(4, T), name="swap")(x)
    model = finish(i, L.Dense(2)(L.Flatten()(x)))
    group = kp.analyze(model).group_of("d")
    assert not group.prunable and "'swap' (EinsumDense)" in group.reason and "not a kernel dimension" in group.reason


@pytest.mark.parametrize("kind", ["dot", "concat", "additive"])
def test_keras_attention_layers(kind):
    i = keras.Input((T, C))
    q = L.Dense(4, name="q")(i)
    k = L.Dense(4, name="k")(i)
    v = L.Dense(6, name="v")(i)
    if kind == "additive":
        layer = L.AdditiveAttention(name="att")
    else:
        layer = L.Attention(use_scale=True, score_mode=kind, name="att")
    y = layer([q, v, k])
    model = finish(i, L.Dense(2, name="head")(L.GlobalAveragePooling1D()(y)))
    graph = kp.analyze(model)
    qk = graph.group_of("q")
    assert qk.layers == ("q", "k") and qk.prunable
    assert qk.exact == (kind == "additive")
    pruned, _ = assert_removal_equals_masking(model, {"q": [1], "v": [0, 5]})
    assert pruned.get_layer("head").kernel.shape == (4, 2)
    if kind == "additive":
        np.testing.assert_array_equal(
            pruned.get_layer("att").scale.numpy(), np.delete(model.get_layer("att").scale.numpy(), [1])
        )


def test_docs_examples_run():
    blocks = python_blocks(Path(__file__).resolve().parent.parent / "docs" / "attention-recurrent.md")
    assert len(blocks) == 2
    for i, block in enumerate(blocks):
        exec(compile(block, f"attention-recurrent.md[{i}]", "exec"), {})


def test_attention_inside_a_nested_model():
    inner_in = keras.Input((T, C))
    a = L.MultiHeadAttention(2, 3, name="mha")(inner_in, inner_in)
    encoder = keras.Model(inner_in, L.Add()([inner_in, a]), name="enc")
    i = keras.Input((T, C))
    y = encoder(L.Dense(C, name="embed")(i))
    model = finish(i, L.Dense(2, name="head")(L.GlobalAveragePooling1D()(y)))
    graph = kp.analyze(model)
    assert graph.key_of("heads") == "enc/mha/heads"  # the bare name works when unique
    assert graph.group_of("embed").layers == ("embed", "enc/mha")
    pruned, _ = assert_removal_equals_masking(model, {"enc/mha/heads": [0], "embed": [1]})
    assert pruned.get_layer("enc").get_layer("mha").num_heads == 1
