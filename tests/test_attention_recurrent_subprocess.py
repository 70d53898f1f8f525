"""Pruned transformer and recurrent models load and train in plain Keras, in a fresh process."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp
from kerasprune.testing import copy_model, predict
from models import finish

T, C = 6, 8


def _transformer():
    i = keras.Input((T, C))
    x = L.Dense(C, name="embed")(i)
    a = L.MultiHeadAttention(4, 3, name="mha")(x, x)
    x = L.LayerNormalization(name="ln")(L.Add()([x, a]))
    f = L.Dense(16, activation="gelu", name="ff1")(x)
    x = L.Add()([x, L.Dense(C, name="ff2")(f)])
    return finish(i, L.Dense(3, name="head")(L.GlobalAveragePooling1D()(x)), name="transformer")


def _recurrent():
    i = keras.Input((T, C))
    x = L.Dense(C, name="embed")(i)
    x = L.Bidirectional(L.LSTM(5, return_sequences=True), name="bi")(x)
    x = L.GRU(4, name="gru")(x)
    return finish(i, L.Dense(3, name="head")(x), name="recurrent")


CASES = {
    "transformer": (_transformer, {"mha/heads": [1], "mha/key_dim": [0], "ff1": [0, 9]}),
    "recurrent": (_recurrent, {"bi": [0, 3], "gru": [1], "embed": [2]}),
}


def _run(script: str) -> None:
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}
    subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=True, timeout=300, env=env)


@pytest.mark.backend
def test_saved_pruned_models_load_and_train_without_kerasprune(tmp_path):
    x = np.random.default_rng(0).normal(size=(3, T, C)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    expected = {}
    for name, (build, sel) in CASES.items():
        model = build()
        pruned = kp.remove_filters(model, sel)
        masked = copy_model(model)
        kp.mask_filters(masked, sel)
        pruned.save(tmp_path / f"{name}.keras")
        expected[name] = predict(masked, x)[0]
    # One fresh process (importing Keras dominates): load, predict, then train a few steps.
    _run(
        f"""
        import sys, numpy as np, keras
        x = np.load({str(tmp_path / 'x.npy')!r})
        rng = np.random.default_rng(0)
        xt = rng.normal(size=(12, {T}, {C})).astype("float32")
        yt = rng.integers(0, 3, size=(12,))
        for name in {sorted(CASES)!r}:
            m = keras.saving.load_model({str(tmp_path)!r} + f"/{{name}}.keras")
            np.save({str(tmp_path)!r} + f"/{{name}}_y.npy", keras.ops.convert_to_numpy(m(x, training=False)))
            before = [keras.ops.convert_to_numpy(w).copy() for w in m.trainable_weights]
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            m.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
            losses = m.fit(xt, yt, batch_size=6, epochs=1, verbose=0).history["loss"]  # two steps, one shape
            assert all(np.isfinite(losses)), (name, losses)
            after = [keras.ops.convert_to_numpy(w) for w in m.trainable_weights]
            assert any(not np.array_equal(a, b) for a, b in zip(before, after)), name
        assert "kerasprune" not in sys.modules
        """
    )
    for name, want in expected.items():
        got = np.load(tmp_path / f"{name}_y.npy")
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))
