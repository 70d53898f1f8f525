"""Recurrent rules: LSTM/GRU/SimpleRNN/ConvLSTM units, RNN(cell), Bidirectional, states and masks.

Removal == masking on randomized weights, and pruned weights against `np.delete` of the
originals: unit `u` owns columns `u + k * units` of the kernel, recurrent kernel and bias,
and row `u` of the recurrent kernel.
"""

import keras
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp
from conftest import assert_removal_equals_masking
from kerasprune.testing import randomize_weights
from models import finish

T, C, U = 5, 6, 4


def sequence_model(rnn, pool=True):
    """embed (Dense) -> rnn -> (pooled) -> head; every output of the RNN reaches the head."""
    i = keras.Input((T, C))
    x = L.Dense(C, name="embed")(i)
    outs = rnn(x)
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    flat = [L.GlobalAveragePooling1D()(o) if len(o.shape) == 3 and pool else o for o in outs]
    x = flat[0] if len(flat) == 1 else L.Concatenate(name="cat")(flat)
    if len(x.shape) > 2:
        x = L.Flatten()(x)
    return finish(i, L.Dense(3, name="head")(x))


def gate_columns(units, removed, gates):
    return [u + k * units for k in range(gates) for u in removed]


def cell_weights(model, name="rnn"):
    return [keras.ops.convert_to_numpy(w) for w in model.get_layer(name).weights]


@pytest.mark.backend
@pytest.mark.parametrize(
    "make, gates",
    [
        (lambda: L.LSTM(U, return_sequences=True, name="rnn"), 4),
        (lambda: L.GRU(U, name="rnn"), 3),  # reset_after=True: bias (2, 3 * units)
        (lambda: L.GRU(U, reset_after=False, return_sequences=True, name="rnn"), 3),
        (lambda: L.SimpleRNN(U, name="rnn"), 1),
        (lambda: L.RNN(L.LSTMCell(U), name="rnn"), 4),
    ],
    ids=["lstm", "gru", "gru_reset_before", "simple_rnn", "rnn_lstm_cell"],
)
def test_units_remove_their_gate_columns(make, gates):
    model = sequence_model(make())
    assert kp.analyze(model).group_of("rnn").prunable
    rm = [0, 2]
    pruned, _ = assert_removal_equals_masking(model, {"rnn": rm})
    (k, r, b), (pk, pr, pb) = cell_weights(model), cell_weights(pruned)
    cols = gate_columns(U, rm, gates)
    np.testing.assert_array_equal(pk, np.delete(k, cols, axis=1))
    np.testing.assert_array_equal(pr, np.delete(np.delete(r, cols, axis=1), rm, axis=0))
    np.testing.assert_array_equal(pb, np.delete(b, cols, axis=-1))
    np.testing.assert_array_equal(
        pruned.get_layer("head").kernel.numpy(), np.delete(model.get_layer("head").kernel.numpy(), rm, axis=0)
    )


@pytest.mark.backend
def test_input_channels_are_the_kernel_rows():
    model = sequence_model(L.LSTM(U, name="rnn"))
    rm = [1, 4]
    pruned, _ = assert_removal_equals_masking(model, {"embed": rm})
    (k, r, b), (pk, pr, pb) = cell_weights(model), cell_weights(pruned)
    np.testing.assert_array_equal(pk, np.delete(k, rm, axis=0))
    np.testing.assert_array_equal(pr, r)
    np.testing.assert_array_equal(pb, b)


def test_return_state_outputs_carry_the_units():
    model = sequence_model(L.LSTM(U, return_state=True, name="rnn"))
    graph = kp.analyze(model)
    assert graph.group_of("rnn").members == ("rnn", "head")
    pruned, _ = assert_removal_equals_masking(model, {"rnn": [3]})
    assert pruned.get_layer("head").kernel.shape == (3 * (U - 1), 3)  # output, h and c side by side


def test_initial_state_couples_the_encoder_to_the_decoder():
    enc_in, dec_in = keras.Input((T, C)), keras.Input((T, C))
    _, h, c = L.LSTM(U, return_state=True, name="encoder")(enc_in)
    h = L.Dense(U, name="bridge")(h)  # a producer whose units become the decoder's state
    y = L.LSTM(U, return_sequences=True, name="decoder")(dec_in, initial_state=[h, c])
    model = finish([enc_in, dec_in], L.Dense(2, name="head")(y))
    graph = kp.analyze(model)
    assert graph.group_of("decoder").layers == ("encoder", "bridge", "decoder")
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(2, T, C)).astype("float32") for _ in range(2)]
    pruned, _ = assert_removal_equals_masking(model, {"decoder": [0, 3]}, x=x)
    assert pruned.get_layer("encoder").units == pruned.get_layer("decoder").units == 2


@pytest.mark.backend
def test_masked_time_steps():
    i = keras.Input((T,), dtype="int32")
    x = L.Embedding(10, C, mask_zero=True, name="emb")(i)
    x = L.GRU(U, return_sequences=True, name="rnn")(x)
    x = L.LSTM(3, name="rnn2")(x)
    model = finish(i, L.Dense(2, name="head")(x))
    x = np.array([[4, 2, 7, 0, 0], [1, 9, 3, 5, 0]], dtype="int32")
    assert_removal_equals_masking(model, {"emb": [1, 5], "rnn": [2], "rnn2": [0]}, x=x)
    j = keras.Input((T, C))
    y = L.Masking(0.0)(j)
    y = L.SimpleRNN(U, name="rnn")(y)
    model = finish(j, L.Dense(2, name="head")(y))
    x = np.random.default_rng(0).normal(size=(2, T, C)).astype("float32")
    x[0, 3:] = 0.0
    assert_removal_equals_masking(model, {"rnn": [0, 1]}, x=x)


def test_stateful_layer_is_rebuilt_with_fresh_states():
    i = keras.Input((T, C), batch_size=2)
    x = L.LSTM(U, stateful=True, name="rnn")(L.Dense(C, name="embed")(i))
    model = finish(i, L.Dense(2, name="head")(x))
    pruned, _ = assert_removal_equals_masking(model, {"rnn": [1], "embed": [0]})
    assert pruned.get_layer("rnn").stateful and pruned.get_layer("rnn").units == U - 1


@pytest.mark.parametrize("merge", ["concat", "sum", "mul", "ave", None])
def test_bidirectional_directions_lose_the_same_units(merge):
    inner = L.LSTM(U, return_sequences=True) if merge != "mul" else L.GRU(U, return_sequences=True)
    model = sequence_model(L.Bidirectional(inner, merge_mode=merge, name="rnn"))
    rm = [1, 2]
    pruned, _ = assert_removal_equals_masking(model, {"rnn": rm})
    gates = 3 if merge == "mul" else 4
    old, new = cell_weights(model), cell_weights(pruned)
    cols = gate_columns(U, rm, gates)
    for d in (0, 3):  # forward then backward: kernel, recurrent kernel, bias
        np.testing.assert_array_equal(new[d], np.delete(old[d], cols, axis=1))
        np.testing.assert_array_equal(new[d + 1], np.delete(np.delete(old[d + 1], cols, axis=1), rm, axis=0))
        np.testing.assert_array_equal(new[d + 2], np.delete(old[d + 2], cols, axis=-1))
    head = model.get_layer("head").kernel.numpy()
    gone = rm + [U + u for u in rm] if merge in ("concat", None) else rm
    np.testing.assert_array_equal(pruned.get_layer("head").kernel.numpy(), np.delete(head, gone, axis=0))


@pytest.mark.backend
def test_bidirectional_with_states_and_initial_states():
    i = keras.Input((T, C))
    h = [L.Dense(U, name=f"s{k}")(L.GlobalAveragePooling1D()(i)) for k in range(4)]
    out = L.Bidirectional(L.LSTM(U, return_state=True), name="rnn")(L.Dense(C, name="embed")(i), initial_state=h)
    model = finish(i, L.Dense(2, name="head")(L.Concatenate()(list(out))))
    graph = kp.analyze(model)
    assert graph.group_of("rnn").layers == ("s0", "s1", "s2", "s3", "rnn")
    pruned, _ = assert_removal_equals_masking(model, {"rnn": [0], "embed": [2, 3]})
    assert pruned.get_layer("rnn").forward_layer.units == pruned.get_layer("rnn").backward_layer.units == 3


@pytest.mark.parametrize("rank, fmt", [(1, "channels_last"), (2, "channels_last"), (2, "channels_first"),
                                       (3, "channels_last")])  # fmt: skip
def test_conv_lstm_filters_remove_their_gate_blocks(rank, fmt):
    size = (7,) * rank  # wider than every channel count: see strategies.KERAS_CHANNELS_FIRST_BIAS_BUG
    shape = (3, *size, 2) if fmt == "channels_last" else (3, 2, *size)
    conv, rnn = getattr(L, f"Conv{rank}D"), getattr(L, f"ConvLSTM{rank}D")
    i = keras.Input(shape)
    x = L.TimeDistributed(conv(5, 1, data_format=fmt), name="pre")(i)
    x = rnn(U, 3, padding="same", data_format=fmt, return_sequences=rank == 1, name="rnn")(x)
    model = finish(i, L.Dense(2, name="head")(L.Flatten()(x)))
    rm = [1, 3]
    pruned, _ = assert_removal_equals_masking(model, {"rnn": rm, "pre": [0]})
    (k, r, b), (pk, pr, pb) = cell_weights(model), cell_weights(pruned)
    cols = gate_columns(U, rm, 4)
    np.testing.assert_array_equal(pk, np.delete(np.delete(k, cols, axis=-1), [0], axis=-2))
    np.testing.assert_array_equal(pr, np.delete(np.delete(r, cols, axis=-1), rm, axis=-2))
    np.testing.assert_array_equal(pb, np.delete(b, cols))


def test_sequential_model_and_shared_layer():
    model = keras.Sequential([keras.Input((T, C)), L.LSTM(U, return_sequences=True, name="a"),
                              L.GRU(3, name="b"), L.Dense(2, name="head")])  # fmt: skip
    randomize_weights(model, seed=4)
    assert_removal_equals_masking(model, {"a": [0], "b": [2]})
    i, j = keras.Input((T, C)), keras.Input((T, C))
    shared = L.LSTM(U, name="rnn")
    x = L.Concatenate()([shared(L.Dense(C, name="da")(i)), shared(L.Dense(C, name="db")(j))])
    model = finish([i, j], L.Dense(2, name="head")(x))
    assert set(kp.analyze(model).group_of("da").layers) == {"da", "db"}  # one kernel reads both
    rng = np.random.default_rng(1)
    assert_removal_equals_masking(model, {"rnn": [1], "da": [0]}, x=[rng.normal(size=(2, T, C)).astype("float32")] * 2)


def test_refused_recurrent_layers_say_why():
    i = keras.Input((T, C))
    x = L.Dense(C, name="embed")(i)
    y = L.RNN([L.LSTMCell(3), L.GRUCell(3)], name="stacked")(x)
    model = finish(i, L.Dense(2)(y))
    group = kp.analyze(model).group_of("embed")
    assert not group.prunable and "'stacked' (RNN)" in group.reason and "stacked cells" in group.reason

    class MyCell(L.SimpleRNNCell):
        pass

    z = L.RNN(MyCell(3), name="custom")(L.Dense(C, name="embed2")(i))
    group = kp.analyze(finish(i, L.Dense(2)(z))).group_of("embed2")
    assert not group.prunable and "MyCell is not an LSTMCell" in group.reason


# -- costs and criteria --------------------------------------------------------------------------
def test_macs_and_the_cost_model_follow_the_gate_blocks():
    model = sequence_model(L.Bidirectional(L.LSTM(U, return_sequences=True), name="rnn"))
    per_direction = T * (C * 4 * U + U * 4 * U)
    assert kp.flops_by_layer(model)["rnn"] == 2 * per_direction
    sel = {"rnn": [0], "embed": [1, 2]}
    graph = kp.analyze(model)
    plan = kp.make_plan(graph, sel)
    cost = kp.flops.CostModel(graph)
    pruned = kp.remove_filters(model, sel)
    assert cost.flops(plan.flat_removed()) == kp.count_flops(pruned)
    assert cost.params(plan.flat_removed()) == kp.count_params(pruned)
    assert kp.flops_by_layer(pruned)["rnn"] == 2 * T * ((C - 2) * 4 * (U - 1) + (U - 1) * 4 * (U - 1))


@pytest.mark.parametrize("criterion", ["l1", "l2", "fpgm", "zero", "taylor", "apoz", "mean_activation"])
def test_criteria_give_one_score_per_unit(criterion):
    model = sequence_model(L.LSTM(U, return_sequences=True, name="rnn"), pool=True)
    rnn = model.get_layer("rnn")
    k = rnn.cell.kernel.numpy()
    k[:, [1 + g * U for g in range(4)]] *= 1e-3  # unit 1: tiny input weights in every gate
    rnn.cell.kernel.assign(k)
    rng = np.random.default_rng(0)
    data = [(rng.normal(size=(4, T, C)).astype("float32"), rng.normal(size=(4, 3)).astype("float32"))]
    graph = kp.analyze(model)
    scores = kp.score(model, criterion, data=data, loss="mse", graph=graph)
    units = scores[graph.group_of("rnn").id]
    assert units.shape == (U,)
    if criterion in ("l1", "l2"):
        assert int(np.argmin(units)) == 1
