"""The LiteRT and ONNX runtimes: timed exports, threads and versions stated, group tables and a
per-layer breakdown from exported sub-graphs. Exports run in a subprocess (a native crash in a
converter or interpreter fails this test instead of killing the run); TensorFlow backend only,
like tests/test_export.py (not part of the `-m backend` subset)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest

from kerasprune.runtimes import available_cores

SCRIPT = textwrap.dedent(
    """
    import json, os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from keras import layers as L
    import kerasprune as kp
    from kerasprune.latency_model import build_latency_model

    i = keras.Input((8, 8, 3))
    x = L.ReLU()(L.BatchNormalization(name="bn0")(L.Conv2D(16, 3, padding="same", name="c0")(i)))
    x = L.Conv2D(16, 3, padding="same", activation="relu", name="c1")(x)
    model = keras.Model(i, L.Dense(4, name="head")(L.GlobalAveragePooling2D()(x)))
    out = {}
    for rt in ("litert", "onnx"):
        lat = kp.measure_latency(model, runtime=rt, batch_size=3, warmup=1, runs=3)
        out[rt] = {"runtime": lat.runtime, "threads": lat.threads, "versions": dict(lat.versions),
                   "runs": len(lat.times_ms), "median": lat.median_ms, "batch": lat.batch_size}
    lm = build_latency_model(model, runtime="litert", batch_size=2, widths=(0.5,), runs=2, warmup=1)
    out["tables"] = {str(g): [t.kept, t.source] for g, t in lm.tables.items()}
    out["groups"] = [g.id for g in kp.analyze(model).prunable_groups]
    pruned = kp.remove_filters(model, {"c0": list(range(8))})
    bd = kp.latency_breakdown(model, pruned, runtime="onnx", runs=2, warmup=1)
    out["breakdown"] = [[r.key, r.work_ratio, r.time_ratio] for r in bd.rows]
    print("RESULT" + json.dumps(out))
    """
)


def test_litert_and_onnx_runtimes_in_a_subprocess():
    if keras.backend.backend() != "tensorflow":
        pytest.fail("test_latency_export.py runs on the TensorFlow backend only (it is not in the -m backend subset)")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    out = json.loads(line[len("RESULT"):])
    litert, onnx = out["litert"], out["onnx"]
    assert litert["runtime"] == "litert" and litert["threads"] == available_cores()
    assert "ai_edge_litert" in litert["versions"] and litert["versions"]["keras"] == keras.__version__
    assert onnx["runtime"] == "onnx" and {"onnxruntime", "tf2onnx"} <= set(onnx["versions"])
    assert litert["runs"] == onnx["runs"] == 3 and litert["batch"] == 3 and litert["median"] > 0
    assert sorted(int(g) for g in out["tables"]) == out["groups"]
    assert all(source == "subgraph" and kept[-1] == 2 * kept[0] for kept, source in out["tables"].values())
    assert [row[0] for row in out["breakdown"]] == ["c0", "bn0", "c1", "head"]
    assert dict((k, w) for k, w, _ in out["breakdown"])["c1"] == pytest.approx(0.5)
