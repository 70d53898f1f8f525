"""The deployment path: a pruned model exports and runs as SavedModel, TFLite/LiteRT and
ONNX with the outputs Keras computes, and the exported pruned model is smaller.

The export and the runs happen in a child process (`tests/export_worker.py`): a native
crash in a converter or runtime fails these tests instead of killing the test run.
TensorFlow backend only (SavedModel and TFLite are TensorFlow formats); not part of the
`-m backend` subset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from kerasprune import export

TOL = 1e-4
WORKER = Path(__file__).with_name("export_worker.py")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    if keras.backend.backend() != "tensorflow":
        pytest.fail("test_export.py runs on the TensorFlow backend only (it is not in the -m backend subset)")
    folder = tmp_path_factory.mktemp("export")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(folder)], capture_output=True, text=True, timeout=900, env=env
    )
    assert proc.returncode == 0, f"export worker died (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_exported_pruned_model_matches_keras(exported, fmt):
    for name in ("pruned", "original"):  # ... and the original's export computes the original
        assert exported[f"{name}/{fmt}/shape_ok"]
        assert exported[f"{name}/{fmt}/diff"] < TOL, (name, fmt, exported[f"{name}/{fmt}/diff"])


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_exported_pruned_model_is_smaller(exported, fmt):
    small, big = exported[f"pruned/{fmt}/size"], exported[f"original/{fmt}/size"]
    assert small < big
    if fmt != "saved_model":  # flatbuffers and ONNX are mostly weights
        assert small < big * (exported["params_ratio"] + 0.25)


def test_tflite_runs_in_the_litert_interpreter(exported):
    assert exported["interpreter"] == "ai_edge_litert"


def test_exports_refuse_to_overwrite_and_leave_no_temporary_files(exported):
    assert all("already exists" in r for r in exported["refused"]), exported["refused"]
    assert exported["files_unchanged"]
    assert exported["hidden_files"] == []
