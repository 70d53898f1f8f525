"""Internals of the fast surgery path (`kerasprune.surgery`).

`rebuild` lets new layers create their variables with zeros (the values are
overwritten right away) and hands untouched weights over as backend tensors.
These tests pin what that must not change: the pruned model's config, its
initializers, and the independence of its variables from the original's.
"""

import keras
import numpy as np
import pytest

import kerasprune as kp
from conftest import assert_removal_equals_masking
from kerasprune.surgery import _defer_initializers, _restore_initializers
from kerasprune.testing import randomize_batchnorm

WIDTH_KEYS = {"filters", "units"}


def _model():
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(
        8, 3, padding="same", kernel_initializer=keras.initializers.RandomNormal(0.0, 0.3, seed=3), name="c1"
    )(inp)
    x = keras.layers.BatchNormalization(gamma_initializer=keras.initializers.Constant(1.5), name="bn1")(x)
    x = keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.2), shared_axes=[1, 2], name="pr")(
        x
    )
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.SeparableConv2D(6, 3, padding="same", name="sep")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(5, bias_initializer="ones", name="d1")(x)
    out = keras.layers.Dense(2, name="out")(x)
    model = keras.Model(inp, out)
    randomize_batchnorm(model)
    return model


@pytest.mark.backend
def test_pruned_config_equals_original_except_widths():
    model = _model()
    pruned, _ = assert_removal_equals_masking(model, {"c1": [0, 5], "sep": [1], "d1": [4]})
    for old, new in zip(model.layers[1:], pruned.layers[1:]):
        a, b = old.get_config(), new.get_config()
        assert set(a) == set(b), old.name
        changed = {k for k in a if a[k] != b[k]}
        assert changed <= WIDTH_KEYS, (old.name, changed)
    assert pruned.get_layer("c1").filters == 6
    assert pruned.get_layer("sep").filters == 5
    assert pruned.get_layer("d1").units == 4


@pytest.mark.backend
def test_rebuilt_layers_keep_their_initializers():
    model = _model()
    pruned = kp.remove_filters(model, {"c1": [2]})
    init = pruned.get_layer("c1").kernel_initializer
    assert isinstance(init, keras.initializers.RandomNormal)
    assert init.get_config() == model.get_layer("c1").kernel_initializer.get_config()
    assert isinstance(pruned.get_layer("bn1").gamma_initializer, keras.initializers.Constant)
    assert isinstance(pruned.get_layer("d1").bias_initializer, keras.initializers.Ones)
    # A clone of the pruned model re-initializes with the restored initializers.
    fresh = keras.models.clone_model(pruned)
    gamma = keras.ops.convert_to_numpy(fresh.get_layer("bn1").gamma)
    np.testing.assert_allclose(gamma, np.full(gamma.shape, 1.5))


@pytest.mark.backend
def test_pruned_variables_are_independent_of_the_original():
    model = _model()
    pruned = kp.remove_filters(model, {"c1": [1]})
    # "out" is untouched: same values, but its own storage.
    old, new = model.get_layer("out"), pruned.get_layer("out")
    before = keras.ops.convert_to_numpy(old.kernel).copy()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(new.kernel), before)
    new.kernel.assign(np.zeros(new.kernel.shape, dtype="float32"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(old.kernel), before)


def test_defer_and_restore_initializers_round_trip():
    layer = keras.layers.Conv2D(4, 3, kernel_initializer="he_normal", bias_initializer="ones")
    before = dict(vars(layer))
    swapped: list = []
    _defer_initializers(layer, swapped)
    assert isinstance(layer.kernel_initializer, keras.initializers.Zeros)
    assert isinstance(layer.bias_initializer, keras.initializers.Zeros)
    _restore_initializers(swapped)
    assert all(vars(layer)[k] is v for k, v in before.items())


class _Fragile(keras.layers.Dense):
    """A Dense layer whose rebuilt copy refuses to build (when `fail` is set)."""

    fail = False

    def build(self, input_shape):
        if _Fragile.fail:
            raise RuntimeError("refused to build")
        super().build(input_shape)


def test_initializers_restored_when_rebuild_fails(monkeypatch):
    from kerasprune import surgery

    inp = keras.Input((6,))
    x = keras.layers.Dense(4, name="d0")(inp)
    out = _Fragile(3, name="fragile")(x)
    model = keras.Model(inp, out)
    restored = []
    original = surgery._restore_initializers

    def spy(swapped):
        restored.append([(layer.name, name) for layer, name, _ in swapped])
        original(swapped)

    monkeypatch.setattr(surgery, "_restore_initializers", spy)
    monkeypatch.setattr(_Fragile, "fail", True)
    with pytest.raises(kp.PruningError, match="Rebuilding the pruned model failed.*refused to build"):
        kp.remove_filters(model, {"d0": [1]})
    assert ("d0", "kernel_initializer") in restored[0]


def _union_find_roots(n, a, b):
    """Reference: a plain union-find that links the larger root under the smaller."""
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(a, b):
        rx, ry = find(int(x)), find(int(y))
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    return np.array([find(i) for i in range(n)])


@pytest.mark.parametrize("seed", range(6))
def test_components_match_union_find(seed):
    from kerasprune.builder import _components

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    m = int(rng.integers(0, 2 * n))
    a, b = rng.integers(0, n, m), rng.integers(0, n, m)
    np.testing.assert_array_equal(_components(n, a, b), _union_find_roots(n, a, b))


def test_components_of_a_long_chain():
    from kerasprune.builder import _components

    n = 5000
    perm = np.random.default_rng(1).permutation(n)
    roots = _components(n, perm[:-1], perm[1:])
    assert (roots == 0).all()
