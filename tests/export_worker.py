"""Run in a child process by tests/test_export.py: export a model and its pruned version in
every format, run the artifacts, and print one JSON line of what the tests check.

In a subprocess because exporting and running LiteRT/ONNX go through native code: a crash
there must fail a test, not kill the test run.
"""

import json
import sys
from pathlib import Path

import keras
import numpy as np
from keras import layers as L

import kerasprune as kp
from kerasprune import export
from kerasprune.testing import randomize_batchnorm, randomize_weights


def cnn() -> keras.Model:
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


RUNNERS = {"saved_model": export.load_saved_model, "tflite": export.load_tflite, "onnx": export.load_onnx}


def main(folder: Path) -> dict:
    model = cnn()
    selection = {"c1": list(range(0, 16, 2)), "c3": list(range(0, 32, 2)), "fc": [0, 3, 5, 7, 9, 11, 13, 15]}
    pruned = kp.remove_filters(model, selection)
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype("float32")
    paths = {"original": export.export_all(model, folder, "original"), "pruned": export.export_all(pruned, folder, "pruned")}
    out = {"params_ratio": pruned.count_params() / model.count_params(), "interpreter": export.interpreter_name()}
    for name, m in (("original", model), ("pruned", pruned)):
        want = keras.ops.convert_to_numpy(m(x, training=False))
        for fmt, path in paths[name].items():
            got = RUNNERS[fmt](path)(x)
            out[f"{name}/{fmt}/shape_ok"] = got.shape == want.shape
            out[f"{name}/{fmt}/diff"] = float(np.abs(got - want).max()) / max(1.0, float(np.abs(want).max()))
            out[f"{name}/{fmt}/size"] = export.exported_size(path)
    before = sorted(p.name for p in folder.iterdir())
    refused = []
    for call in (
        lambda: export.export_onnx(pruned, paths["pruned"]["onnx"]),
        lambda: export.export_saved_model(pruned, paths["pruned"]["saved_model"]),
        lambda: export.export_tflite(pruned, paths["pruned"]["tflite"], saved_model=str(paths["pruned"]["saved_model"])),
    ):
        try:
            call()
            refused.append("written")
        except kp.ModelSaveError as e:
            refused.append(str(e))
    out["refused"] = refused
    out["files_unchanged"] = sorted(p.name for p in folder.iterdir()) == before
    out["hidden_files"] = [n for n in before if n.startswith(".")]
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(Path(sys.argv[1]))))
