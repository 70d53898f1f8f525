"""The deployment path: a pruned model exports and runs as SavedModel, TFLite/LiteRT and
ONNX with the outputs Keras computes, and the exported pruned model is smaller.

TensorFlow backend only (SavedModel and TFLite are TensorFlow formats); not part of
the `-m backend` subset.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp
from kerasprune import export
from kerasprune.testing import randomize_batchnorm, randomize_weights

TOL = 1e-4


def _cnn() -> keras.Model:
    i = keras.Input((16, 16, 3))
    x = L.ReLU()(L.BatchNormalization(name="bn1")(L.Conv2D(16, 3, padding="same", name="c1")(i)))
    y = L.BatchNormalization(name="bn2")(L.Conv2D(16, 3, padding="same", name="c2")(x))
    x = L.MaxPooling2D()(L.ReLU()(L.Add()([x, y])))
    x = L.ReLU()(L.BatchNormalization(name="bn3")(L.Conv2D(32, 3, padding="same", name="c3")(x)))
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.Dense(16, activation="relu", name="fc")(L.Flatten()(L.MaxPooling2D()(x)))
    model = keras.Model(i, L.Dense(5, name="head")(x), name="export_cnn")
    randomize_weights(model, seed=11)
    randomize_batchnorm(model, seed=12)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    if keras.backend.backend() != "tensorflow":
        pytest.fail("test_export.py runs on the TensorFlow backend only (it is not in the -m backend subset)")
    folder = tmp_path_factory.mktemp("export")
    model = _cnn()
    selection = {"c1": list(range(0, 16, 2)), "c3": list(range(0, 32, 2)), "fc": [0, 3, 5, 7, 9, 11, 13, 15]}
    pruned = kp.remove_filters(model, selection)
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype("float32")
    return {
        "model": model,
        "pruned": pruned,
        "x": x,
        "original": export.export_all(model, folder, "original"),
        "small": export.export_all(pruned, folder, "pruned"),
        "folder": folder,
    }


RUNNERS = {"saved_model": export.load_saved_model, "tflite": export.load_tflite, "onnx": export.load_onnx}


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_exported_pruned_model_matches_keras(exported, fmt):
    x, pruned = exported["x"], exported["pruned"]
    want = keras.ops.convert_to_numpy(pruned(x, training=False))
    got = RUNNERS[fmt](exported["small"][fmt])(x)
    assert got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max()))
    assert float(np.abs(got - want).max()) / scale < TOL
    # ... and the original's export still computes the original (the runs are not swapped).
    orig = RUNNERS[fmt](exported["original"][fmt])(x)
    assert float(np.abs(orig - keras.ops.convert_to_numpy(exported["model"](x, training=False))).max()) < TOL * max(
        1.0, float(np.abs(orig).max())
    )


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_exported_pruned_model_is_smaller(exported, fmt):
    small = export.exported_size(exported["small"][fmt])
    big = export.exported_size(exported["original"][fmt])
    ratio = exported["pruned"].count_params() / exported["model"].count_params()
    assert small < big
    if fmt != "saved_model":  # flatbuffers and ONNX are mostly weights
        assert small < big * (ratio + 0.25)


def test_tflite_runs_in_the_litert_interpreter():
    assert export.interpreter_name() == "ai_edge_litert"


def test_exports_refuse_to_overwrite_and_leave_no_temporary_files(exported):
    folder = exported["folder"]
    before = sorted(p.name for p in folder.iterdir())
    pruned = exported["pruned"]
    with pytest.raises(kp.ModelSaveError, match="already exists"):
        export.export_onnx(pruned, exported["small"]["onnx"])
    with pytest.raises(kp.ModelSaveError, match="already exists"):
        export.export_saved_model(pruned, exported["small"]["saved_model"])
    with pytest.raises(kp.ModelSaveError, match="already exists"):
        export.export_tflite(pruned, exported["small"]["tflite"], saved_model=str(exported["small"]["saved_model"]))
    assert sorted(p.name for p in folder.iterdir()) == before
    assert not [n for n in before if n.startswith(".")]
