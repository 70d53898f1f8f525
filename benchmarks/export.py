"""Deployment benchmark: exported size and latency, original vs pruned, per format.

A small CNN (32x32x3 input, residual block, depthwise conv, Flatten->Dense) is
pruned by 50% of the filters in every prunable group (L1 criterion), then both
models are exported as SavedModel, TFLite (run by the LiteRT interpreter) and
ONNX (run by onnxruntime). For each format the script records the exported
size, the largest output difference to Keras, and the median latency of a
batch-1 call (after warm-up). Keras eager latency is recorded too.

Usage:
    python benchmarks/export.py [--runs 200]

Writes export.json and export.md to a scratch folder, or to benchmarks/results/ with `--update`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers as L  # noqa: E402

import kerasprune as kp  # noqa: E402
from kerasprune import export  # noqa: E402
from kerasprune.testing import randomize_batchnorm, randomize_weights  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from output import add_update_flag, announce, results_dir  # noqa: E402


def build_cnn() -> keras.Model:
    i = keras.Input((32, 32, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(32, 3, padding="same", name="c1")(i)))
    y = L.BatchNormalization()(L.Conv2D(32, 3, padding="same", name="c2")(x))
    x = L.MaxPooling2D()(L.ReLU()(L.Add()([x, y])))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(64, 3, padding="same", name="c3")(x)))
    x = L.ReLU()(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same", name="dw")(x)))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(64, 1, name="pw")(x)))
    x = L.MaxPooling2D()(x)
    x = L.Dense(64, activation="relu", name="fc")(L.Flatten()(x))
    model = keras.Model(i, L.Dense(10, name="head")(x), name="export_cnn")
    randomize_weights(model, seed=0)
    randomize_batchnorm(model, seed=1)
    return model


def latency_ms(fn, x, runs: int) -> tuple[float, float]:
    """(median, minimum) milliseconds per call; the minimum is robust to a busy machine."""
    for _ in range(10):
        fn(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3), float(np.min(times) * 1e3)


def _lat(fn, x, runs: int) -> dict:
    med, low = latency_ms(fn, x, runs)
    return {"latency_ms": med, "latency_min_ms": low}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    add_update_flag(ap)
    args = ap.parse_args(argv)
    folder = results_dir(args.update)

    model = build_cnn()
    selection = kp.select(model, "l1", ratio=0.5)
    pruned = kp.remove_filters(model, selection)
    x = np.random.default_rng(0).normal(size=(1, 32, 32, 3)).astype("float32")
    rows = []
    loaders = {"saved_model": export.load_saved_model, "tflite": export.load_tflite, "onnx": export.load_onnx}
    with tempfile.TemporaryDirectory() as tmp:
        for name, m in (("original", model), ("pruned", pruned)):
            want = keras.ops.convert_to_numpy(m(x, training=False))
            rows.append(
                {
                    "model": name,
                    "format": "keras (eager)",
                    "params": m.count_params(),
                    "size_bytes": None,
                    "max_abs_diff_vs_keras": 0.0,
                    **_lat(lambda a, m=m: m(a, training=False), x, args.runs),
                }
            )
            paths = export.export_all(m, tmp, name)
            for fmt, path in paths.items():
                run = loaders[fmt](path)
                rows.append(
                    {
                        "model": name,
                        "format": fmt,
                        "params": m.count_params(),
                        "size_bytes": export.exported_size(path),
                        "max_abs_diff_vs_keras": float(np.abs(run(x) - want).max()),
                        **_lat(run, x, args.runs),
                    }
                )
    result = {
        "rows": rows,
        "selection": "kp.select(model, 'l1', ratio=0.5)",
        "batch": 1,
        "runs": args.runs,
        "tflite_interpreter": export.interpreter_name(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "command": f"python benchmarks/export.py --runs {args.runs}",
    }
    (folder / "export.json").write_text(json.dumps(result, indent=2) + "\n")
    by = {(r["model"], r["format"]): r for r in rows}
    lines = [
        "# Deployment: exported size and latency, original vs pruned",
        "",
        f"`{result['command']}`; 32x32x3 CNN, 50% of the filters of every prunable group removed "
        f"(L1); batch 1, {args.runs} timed calls; TFLite run by `{result['tflite_interpreter']}`, "
        "ONNX by onnxruntime (CPU). Shared 2-core machine: latencies are indicative.",
        "",
        "| format | size original | size pruned | latency original (ms, median / min) "
        "| latency pruned (ms, median / min) | speed-up (min) | max abs diff vs Keras (pruned) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for fmt in ["keras (eager)", *export.FORMATS]:
        a, b = by[("original", fmt)], by[("pruned", fmt)]
        size = lambda r: "-" if r["size_bytes"] is None else f"{r['size_bytes'] / 1024:.0f} KiB"  # noqa: E731
        lines.append(
            f"| {fmt} | {size(a)} | {size(b)} | {a['latency_ms']:.3f} / {a['latency_min_ms']:.3f} "
            f"| {b['latency_ms']:.3f} / {b['latency_min_ms']:.3f} "
            f"| {a['latency_min_ms'] / b['latency_min_ms']:.2f}x | {b['max_abs_diff_vs_keras']:.2e} |"
        )
    lines += ["", f"Parameters: {model.count_params():,} -> {pruned.count_params():,}."]
    (folder / "export.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    announce(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
