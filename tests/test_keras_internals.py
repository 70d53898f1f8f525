"""Keras internals kerasprune relies on: a Keras upgrade that renames one fails here, by name."""

import keras

from kerasprune import _keras


def test_every_keras_internal_is_present():
    assert _keras.missing() == []


def test_op_classes_are_registered_operations():
    found = _keras.op_classes("numpy", ["Add", "Multiply"]) + _keras.op_classes("nn", ["Relu"])
    assert [c.__name__ for c in found] == ["Add", "Multiply", "Relu"]
    assert all(issubclass(c, _keras.Operation) for c in found)


def test_a_missing_name_is_reported_not_raised():
    before = list(_keras._MISSING)
    try:
        assert _keras.op_classes("numpy", ["NoSuchOperationInKeras"]) == []
        assert "keras.src.ops.numpy.NoSuchOperationInKeras" in _keras.missing()
    finally:
        _keras._MISSING[:] = before


def test_nodes_in_order_visits_inputs_first():
    inp = keras.Input((4,))
    a = keras.layers.Dense(3, name="a")(inp)
    b = keras.layers.Dense(2, name="b")(a)
    model = keras.Model(inp, b)
    names = [n.operation.name for n in _keras.nodes_in_order(model) if not n.is_input]
    assert names == ["a", "b"]
    assert _keras.producer_of(b).name == "b"
