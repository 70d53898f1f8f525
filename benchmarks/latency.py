"""Inference latency: are pruned models really faster, as fast as their MACs promise?

For ResNet50, MobileNetV2 and DenseNet121 at 224x224 (`weights=None`), remove
50% of every prunable group's channels, chosen by L1 magnitude
(`kerasprune.select(model, "l1", ratio=0.5, round_to=...)`), then time the
original and the pruned model **alternately in one process** (original batch,
pruned batch, original batch, ...) after a warm-up, at batch 1 and 16, and
report:

- MAC reduction (`kerasprune.count_flops`, multiply-accumulates per sample),
- measured speed-up = median original time / median pruned time (wall clock),
- efficiency = speed-up / MAC reduction,
- the same speed-up in process CPU time (all threads), a cross-check that is
  far less sensitive to other jobs on a shared machine than wall time.

Inference paths: `model.predict_on_batch` (Keras's compiled predict function)
on each backend; optionally the LiteRT (TFLite) export of the same models,
converted with `tf.lite.TFLiteConverter` and run by `tf.lite.Interpreter`.

Each backend runs in its own process (the Keras backend is fixed per process).
Rows are merged into `latency.json` (scratch folder; `benchmarks/results/` with `--update`) (keyed by backend, path,
model, round_to, batch) and the whole table is rewritten to `latency.md`.

Usage:
    python benchmarks/latency.py                                  # TF + TFLite
    python benchmarks/latency.py --backends jax --models ResNet50
    python benchmarks/latency.py --models MobileNetV2 --round-to 8 --no-tflite
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from output import add_update_flag, announce, results_dir  # noqa: E402

MODELS = ["ResNet50", "MobileNetV2", "DenseNet121"]
#: The strongest PyTorch peer on a 2-core CPU (issue 7): (MAC reduction, speed-up b16, b1).
PEER = {"ResNet50": (3.86, 3.71, 2.40), "MobileNetV2": (3.44, 2.62, 1.44), "DenseNet121": (3.78, 3.51, 1.83)}


# -- child: one backend --------------------------------------------------------------
def l1_selection(model, ratio: float, round_to: int | None):
    """`kerasprune.select(model, "l1", ...)`."""
    import kerasprune as kp

    return kp.select(model, "l1", ratio=ratio, round_to=round_to)


def predict_runner(model, x):
    """Keras's compiled predict path; returns a blocking call."""
    return lambda: model.predict_on_batch(x)


def tflite_runner(model, batch: int, threads: int):
    """Convert `model` to LiteRT (TFLite) at a fixed batch; returns a blocking call."""
    import numpy as np
    import tensorflow as tf

    shape = (batch,) + tuple(model.inputs[0].shape[1:])
    fn = tf.function(lambda t: model(t, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec(shape, tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], fn)
    blob = converter.convert()
    interp = tf.lite.Interpreter(model_content=blob, num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]["index"]
    out = interp.get_output_details()[0]["index"]
    x = np.random.default_rng(0).normal(size=shape).astype("float32")

    def run():
        interp.set_tensor(inp, x)
        interp.invoke()
        return interp.get_tensor(out)

    return run, len(blob)


def alternate(fa, fb, reps: int, warmup: int) -> dict:
    """Time `fa` and `fb` alternately; wall and process-CPU seconds per call."""
    for _ in range(warmup):
        fa()
        fb()
    wall = {"a": [], "b": []}
    cpu = {"a": [], "b": []}
    for i in range(reps):
        # Alternate which goes first, so neither always follows the other.
        order = (("a", fa), ("b", fb)) if i % 2 == 0 else (("b", fb), ("a", fa))
        for k, f in order:
            c0, t0 = time.process_time(), time.perf_counter()
            f()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {"wall": wall, "cpu": cpu}


def summarize(t: dict, mac_reduction: float) -> dict:
    med = statistics.median
    wa, wb = med(t["wall"]["a"]), med(t["wall"]["b"])
    ca, cb = med(t["cpu"]["a"]), med(t["cpu"]["b"])
    pairs = [a / b for a, b in zip(t["wall"]["a"], t["wall"]["b"])]
    speedup = wa / wb
    return {
        "original_ms": 1000 * wa,
        "pruned_ms": 1000 * wb,
        "speedup": speedup,
        "speedup_pairs_median": med(pairs),
        "efficiency": speedup / mac_reduction,
        "cpu_original_ms": 1000 * ca,
        "cpu_pruned_ms": 1000 * cb,
        "cpu_speedup": ca / cb,
        "cpu_efficiency": (ca / cb) / mac_reduction,
        "reps": len(t["wall"]["a"]),
        "raw_wall_s": t["wall"],
    }


def child(args) -> None:
    import keras
    import numpy as np

    import kerasprune as kp
    from kerasprune.export import runtime_versions
    from kerasprune.flops import count_flops

    sys.path.insert(0, str(HERE))
    from surgery import conditions  # noqa: E402

    backend = keras.backend.backend()
    cond = conditions()
    out_path = Path(args.child_out)
    rows: list[dict] = []

    def flush():
        out_path.write_text(json.dumps({"conditions": cond, "rows": rows}))

    threads = os.cpu_count() or 1
    # TF's pools default to every core; the LiteRT interpreter is given the same count.
    cond["threads"] = {"tensorflow": threads, "litert": threads}
    cond["versions"] = runtime_versions()
    for name in args.models:
        for round_to in args.round_to:
            rt = round_to or None
            model = getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3))
            t0 = time.perf_counter()
            sel = l1_selection(model, args.ratio, rt)
            pruned = kp.remove_filters(model, sel)
            surgery_s = time.perf_counter() - t0
            macs_a, macs_b = count_flops(model), count_flops(pruned)
            base = {
                "backend": backend,
                "model": name,
                "ratio": args.ratio,
                "round_to": rt,
                "macs_original": macs_a,
                "macs_pruned": macs_b,
                "mac_reduction": macs_a / macs_b,
                "params_original": model.count_params(),
                "params_pruned": pruned.count_params(),
                "select_and_remove_s": surgery_s,
            }
            for batch in args.batches:
                reps = args.reps if batch > 1 else max(args.reps, 30)
                x = np.random.default_rng(0).normal(size=(batch, 224, 224, 3)).astype("float32")
                if not args.tflite_only:
                    t = alternate(predict_runner(model, x), predict_runner(pruned, x), reps, args.warmup)
                    rows.append(
                        {
                            **base,
                            "path": "predict_on_batch",
                            "batch": batch,
                            **summarize(t, base["mac_reduction"]),
                        }
                    )
                    print(_line(rows[-1]), flush=True)
                    flush()
                if args.tflite and backend == "tensorflow":
                    try:
                        fa, size_a = tflite_runner(model, batch, threads)
                        fb, size_b = tflite_runner(pruned, batch, threads)
                    except Exception as e:  # converter failures are reported, not fatal
                        rows.append(
                            {
                                **base,
                                "path": "tflite",
                                "batch": batch,
                                "error": f"{type(e).__name__}: {e}"[:500],
                            }
                        )
                        flush()
                        continue
                    t = alternate(fa, fb, reps, args.warmup)
                    rows.append(
                        {
                            **base,
                            "path": "tflite",
                            "batch": batch,
                            "tflite_bytes_original": size_a,
                            "tflite_bytes_pruned": size_b,
                            **summarize(t, base["mac_reduction"]),
                        }
                    )
                    print(_line(rows[-1]), flush=True)
                    flush()
                    del fa, fb
            del model, pruned
            keras.backend.clear_session()
            gc.collect()
    flush()


def _line(r: dict) -> str:
    return (
        f"{r['backend']:10s} {r['path']:16s} {r['model']:12s} rt={r['round_to']} b={r['batch']:2d} "
        f"MACs/{r['mac_reduction']:.2f} orig {r['original_ms']:.1f} ms pruned {r['pruned_ms']:.1f} ms "
        f"speed-up {r['speedup']:.2f}x eff {r['efficiency']:.2f} (cpu {r['cpu_speedup']:.2f}x)"
    )


# -- parent: merge and report ------------------------------------------------------------
def _key(r: dict) -> tuple:
    return (r["backend"], r["path"], r["model"], r.get("round_to"), r["batch"])


def markdown(data: dict) -> str:
    lines = [
        "# Inference latency: original vs 50% channels removed",
        "",
        "L1-magnitude selection of 50% of every prunable group (`kerasprune.select(model, 'l1', "
        "ratio=0.5, round_to=...)`), 224x224 input, `weights=None`. Original and pruned are timed "
        "alternately in one process after a warm-up; times are medians. Speed-up = median original "
        "/ median pruned wall time; efficiency = speed-up / MAC reduction. The CPU-time columns "
        "divide process CPU time (all threads) instead: other jobs on the shared cores inflate wall "
        "times, hardly CPU times.",
        "",
    ]
    for run in data.get("runs", []):
        c = run["conditions"]
        lines.append(
            f"- `{c['command']}`: {c['date']}, backend {c['backend']}, {c['cpu']}, {c['cpus']} cores "
            f"shared with other jobs (load average {c['loadavg'][0]:.1f} at start), Keras {c['keras']}, "
            f"TensorFlow {c['tensorflow']}"
            + (f", threads {c['threads']}" if "threads" in c else "")
            + (f", {', '.join(f'{k} {v}' for k, v in c['versions'].items() if v)}" if "versions" in c else "")
            + "."
        )
    lines += [
        "",
        "| backend | path | model | round_to | batch | MAC reduction | original | pruned | speed-up "
        "| efficiency | CPU-time speed-up | CPU-time efficiency | reps |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {m: i for i, m in enumerate(MODELS)}
    rows = sorted(
        data["rows"],
        key=lambda r: (
            r["backend"],
            r["path"],
            order.get(r["model"], 99),
            r.get("round_to") or 0,
            -r["batch"],
        ),
    )
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['backend']} | {r['path']} | {r['model']} | {r.get('round_to') or '-'} | {r['batch']} "
                f"| {r['mac_reduction']:.2f}× | error: {r['error'][:100]} | | | | | | |"
            )
            continue
        lines.append(
            f"| {r['backend']} | {r['path']} | {r['model']} | {r.get('round_to') or '-'} | {r['batch']} "
            f"| {r['mac_reduction']:.2f}× | {r['original_ms']:.1f} ms | {r['pruned_ms']:.1f} ms "
            f"| {r['speedup']:.2f}× | {r['efficiency']:.2f} | {r['cpu_speedup']:.2f}× | {r['cpu_efficiency']:.2f} "
            f"| {r['reps']} |"
        )
    lines += ["", "Peer (Torch-Pruning, PyTorch, 2-core CPU, from issue 7):", ""]
    lines += ["| model | MAC reduction | speed-up b16 | efficiency b16 | speed-up b1 | efficiency b1 |"]
    lines += ["|---|---|---|---|---|---|"]
    for m, (red, s16, s1) in PEER.items():
        lines.append(f"| {m} | {red:.2f}× | {s16:.2f}× | {s16 / red:.2f} | {s1:.2f}× | {s1 / red:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", nargs="*", default=["tensorflow"])
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--batches", nargs="*", type=int, default=[16, 1])
    ap.add_argument("--round-to", nargs="*", type=int, default=[0], help="0 = no rounding")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-tflite", dest="tflite", action="store_false")
    ap.add_argument("--tflite-only", action="store_true")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per backend process")
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    add_update_flag(ap)
    args = ap.parse_args()
    if args.child_out:
        child(args)
        return
    from surgery import write_results

    folder = results_dir(args.update)
    path = folder / "latency.json"
    data = json.loads(path.read_text()) if path.exists() else {"runs": [], "rows": []}
    for backend in args.backends:
        fd, tmp = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        cmd = [sys.executable, __file__, "--child-out", tmp] + sys.argv[1:]
        command = " ".join(["python", "benchmarks/latency.py"] + sys.argv[1:])
        env = {**os.environ, "KERAS_BACKEND": backend, "KP_BENCH_COMMAND": command}
        try:
            subprocess.run(cmd, env=env, timeout=args.timeout, check=False)
        except subprocess.TimeoutExpired:
            print(f"{backend}: timed out after {args.timeout} s; keeping the rows measured so far")
        try:
            part = json.loads(Path(tmp).read_text())
        except (OSError, ValueError):
            print(f"{backend}: no results")
            continue
        finally:
            Path(tmp).unlink(missing_ok=True)
        new = {_key(r) for r in part["rows"]}
        data["rows"] = [r for r in data["rows"] if _key(r) not in new] + part["rows"]
        data["runs"].append({"conditions": part["conditions"], "rows": sorted(map(list, new))})
        data["runs"] = [
            run
            for run in data["runs"]
            if any(tuple(k) in {_key(r) for r in data["rows"]} for k in run["rows"])
        ]
        write_results("latency", data, markdown(data), folder)
    print(markdown(data))
    announce(folder)


if __name__ == "__main__":
    main()
