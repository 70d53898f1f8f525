"""`kerasprune export MODEL --to FORMAT [--fold-bn] -o OUT`, and `fold_bn=` in `kerasprune.export`.

Exports run in subprocesses (the converters are native code; a crash must fail the
test, not the run): the command through `python -m kerasprune`, and one checker that
runs every artifact next to Keras. Usage errors are checked in-process (they stop
before anything is exported). TensorFlow backend only, like test_export.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest
from keras import layers as L

from kerasprune.cli import main
from kerasprune.testing import randomize_batchnorm, randomize_weights

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow", "COLUMNS": "200"}


def _model() -> keras.Model:
    i = keras.Input((12, 12, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, use_bias=False, name="c1")(i)))
    x = L.ReLU()(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same", name="dw")(x)))
    x = L.GlobalAveragePooling2D()(L.BatchNormalization()(L.Conv2D(6, 1, name="c2")(x)))
    model = keras.Model(i, L.Dense(4, name="head")(x), name="export_cli")
    randomize_weights(model, seed=1)
    randomize_batchnorm(model, seed=2)
    return model


def kerasprune(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "kerasprune", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout
    )


CHECK = """
import json, os, sys
import keras, numpy as np
from kerasprune import export
folder, names = sys.argv[1], sys.argv[2:]
model = keras.saving.load_model(os.path.join(folder, "model.keras"))
x = np.random.default_rng(0).normal(size=(3, 12, 12, 3)).astype("float32")
want = keras.ops.convert_to_numpy(model(x, training=False))
lib = {  # the library's fold_bn (export_tflite goes through export_saved_model(fold_bn=True))
    "tflite": export.export_tflite(model, os.path.join(folder, "lib.tflite"), fold_bn=True),
    "onnx": export.export_onnx(model, os.path.join(folder, "lib.onnx"), fold_bn=True),
}
plain = export.export_onnx(model, os.path.join(folder, "plain.onnx"))
runners = {"tflite": export.load_tflite, "onnx": export.load_onnx, "savedmodel": export.load_saved_model}
out = {}
for name in names:
    fmt = name.split("_")[0]
    path = os.path.join(folder, name)
    out[name] = float(np.abs(runners[fmt](path)(x) - want).max())
for fmt, path in lib.items():
    out["lib_" + fmt] = float(np.abs(runners[fmt](path)(x) - want).max())
import onnx
out["nodes"] = {n: len(onnx.load(os.path.join(folder, n)).graph.node) for n in ("onnx_folded.onnx", "plain.onnx")}
out["plain"] = float(np.abs(export.load_onnx(plain)(x) - want).max())
run = export.load_tflite(os.path.join(folder, "tflite_folded.tflite"))
out["threads"] = [run.num_threads, export.load_onnx(os.path.join(folder, "onnx_folded.onnx"), num_threads=1).num_threads]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    if keras.backend.backend() != "tensorflow":
        pytest.fail("test_cli_export.py runs on the TensorFlow backend only (it is not in the -m backend subset)")
    folder = tmp_path_factory.mktemp("cli_export")
    _model().save(folder / "model.keras")
    (folder / "tflite_folded.tflite").write_bytes(b"stale")  # replaced with --force
    runs = {
        "tflite_folded.tflite": kerasprune("export", folder / "model.keras", "--to", "tflite", "--fold-bn",
                                           "-o", folder / "tflite_folded.tflite", "--force"),
        "onnx_folded.onnx": kerasprune("export", folder / "model.keras", "--to", "onnx", "--fold-bn",
                                       "-o", folder / "onnx_folded.onnx"),
        "savedmodel_folded": kerasprune("export", folder / "model.keras", "--to", "savedmodel", "--fold-bn",
                                        "-o", folder / "savedmodel_folded"),
    }
    for name, run in runs.items():
        assert run.returncode == 0, (name, run.stderr[-3000:])
    check = subprocess.run([sys.executable, "-c", textwrap.dedent(CHECK), str(folder), *runs],
                           capture_output=True, text=True, env=ENV, timeout=900)
    assert check.returncode == 0, check.stderr[-3000:]
    return {"folder": folder, "runs": runs, "check": json.loads(check.stdout.strip().splitlines()[-1])}


def test_export_command_writes_every_format_and_reports_the_fold(exported):
    runs = exported["runs"]
    for name, run in runs.items():
        assert "Exported" in run.stdout and name in run.stdout.replace("\n", ""), run.stdout
        assert ("3 layer(s) folded" in run.stdout) == ("folded" in name), run.stdout
        assert "Traceback" not in run.stderr
    assert (exported["folder"] / "savedmodel_folded" / "saved_model.pb").is_file()


def test_exported_artifacts_compute_the_keras_outputs(exported):
    check = exported["check"]
    for name in (*exported["runs"], "lib_tflite", "lib_onnx", "plain"):
        assert check[name] < 1e-4, (name, check[name])


def test_folded_onnx_graph_has_fewer_nodes_and_runners_use_every_core(exported):
    nodes = exported["check"]["nodes"]
    assert nodes["onnx_folded.onnx"] < nodes["plain.onnx"], nodes
    assert exported["check"]["threads"] == [os.cpu_count(), 1]


@pytest.fixture()
def model_file(tmp_path):
    path = tmp_path / "model.keras"
    _model().save(path)
    return path


def test_export_usage_errors_exit_1_with_one_line(model_file, tmp_path, capsys):
    (tmp_path / "taken.onnx").write_bytes(b"x")
    cases = [
        (["--to", "coreml", "-o", tmp_path / "o.mlmodel"], "--to must be one of tflite, onnx, savedmodel"),
        (["--to", "tflite", "-o", tmp_path / "o.onnx"], "must end in .tflite"),
        (["--to", "onnx", "-o", tmp_path / "taken.onnx"], "already exists; pass --force"),
        (["--to", "savedmodel", "-o", model_file, "--force"], "onto the input file"),
        (["-o", tmp_path / "o.tflite"], "--to"),
    ]
    for args, message in cases:
        code = main(["export", str(model_file), *map(str, args)])
        out, err = capsys.readouterr()
        assert code == 1, (args, err)
        assert message in err and len([line for line in err.splitlines() if line.strip()]) == 1, (message, err)
        assert "Traceback" not in out + err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras", "taken.onnx"]
    assert (tmp_path / "taken.onnx").read_bytes() == b"x"


def test_runner_thread_count_is_checked(tmp_path):
    from kerasprune import export
    from kerasprune.errors import PruningError

    with pytest.raises(PruningError, match="num_threads must be a positive integer"):
        export.load_onnx(tmp_path / "never-read.onnx", num_threads=0)


def test_report_fold_bn_compares_the_folded_models_too(tmp_path, capsys, monkeypatch):
    """`report --fold-bn`: the deploy-time latency (BatchNorm folded) next to the unfolded one."""
    monkeypatch.setenv("COLUMNS", "200")
    import kerasprune as kp

    model = _model()
    before, after = tmp_path / "a.keras", tmp_path / "b.keras"
    model.save(before)
    kp.remove_filters(model, {"c1": [0, 1, 2]}).save(after)
    code = main(["report", str(before), str(after), "--runs", "10", "--fold-bn", "--json", str(tmp_path / "r.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "With BatchNorm folded" in out
    doc = json.loads((tmp_path / "r.json").read_text())
    unfolded, folded = doc["after"], doc["folded"]["after"]
    assert folded["params"] < unfolded["params"]  # the BatchNorm parameters are gone
    assert folded["flops"] == unfolded["flops"] and folded["latency"]["median_ms"] > 0
