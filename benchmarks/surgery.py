"""Surgery speed: `analyze`, `remove_filters` and `mask_filters` next to `clone_model`.

For ResNet50, MobileNetV2, DenseNet121 and EfficientNetB0 at 224x224
(`weights=None`), each timed round runs, in this order: a plain
`keras.models.clone_model`, `kerasprune.analyze`, `remove_filters` removing a
seeded random 50% of every prunable group (the choice of channels does not
matter for speed), `remove_filters` removing one filter of one layer,
`mask_filters` of the same 50% (on a copy, end to end: analysis included) and
`kerasprune.select(model, "l1", ratio=0.5)` (weight-based scoring). The table
reports medians over rounds, and the ratio remove/clone as the median of the
per-round ratios: the machine is shared, so absolute times drift, and
the clone measured next to each removal is the fair yardstick.

Also measured:
- scaling with depth: ResNet50 -> ResNet101 -> ResNet152 (time per layer);
- `analyze` of the largest applications (EfficientNetB7, ConvNeXtXLarge, NASNetLarge);
- memory: in a fresh process per model, the peak resident memory (sampled
  every millisecond) during `remove_filters` (cold, then warm), above the level
  just before it, next to the bytes of the new model's weights and to what a
  plain `clone_model` adds beyond its own weights. Python allocations (NumPy
  included) are also traced with `tracemalloc`.

Results go to `surgery.json` and `surgery.md` in a scratch folder, or in `benchmarks/results/`
with `--update` (see output.py).

Usage:
    python benchmarks/surgery.py                 # everything (~5 min on 2 busy cores)
    python benchmarks/surgery.py --rounds 3 --models ResNet50 --no-scaling --no-big --no-memory
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kerasprune as kp  # noqa: E402
from kerasprune.testing import copy_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from output import RESULTS, add_update_flag, announce, results_dir, write_atomic  # noqa: E402

MODELS = ["ResNet50", "MobileNetV2", "DenseNet121", "EfficientNetB0"]
SCALING = ["ResNet50", "ResNet101", "ResNet152"]
BIG = ["EfficientNetB7", "ConvNeXtXLarge", "NASNetLarge"]


# -- shared helpers (also used by latency.py) -----------------------------------------
def conditions() -> dict:
    """The conditions a timing was taken under."""
    import tensorflow as tf

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "command": os.environ.get("KP_BENCH_COMMAND") or " ".join(["python"] + sys.argv),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def half_selection(graph, ratio: float = 0.5, seed: int = 0) -> dict[str, list[int]]:
    """A seeded random `ratio` of every prunable group, selected on its first producer."""
    rng = np.random.default_rng(seed)
    sel = {}
    for g in graph.prunable_groups:
        layer = g.layers[0]
        n = len(graph.output_atoms(layer))
        k = min(int(n * ratio), n - 1)
        if k > 0:
            sel[layer] = sorted(rng.choice(n, size=k, replace=False).tolist())
    return sel


def build(name: str, size: int | None = 224):
    kwargs = {"weights": None}
    if size is not None:
        kwargs["input_shape"] = (size, size, 3)
    return getattr(keras.applications, name)(**kwargs)


def weight_bytes(model) -> int:
    return int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in model.weights))


def write_results(stem: str, data: dict, markdown: str, folder: Path | None = None) -> None:
    """Write `<stem>.json` and `<stem>.md` atomically into `folder` (default: the scratch folder)."""
    folder = folder or results_dir(False)
    for suffix, text in ((".json", json.dumps(data, indent=2, default=_jsonable)), (".md", markdown)):
        write_atomic(folder / f"{stem}{suffix}", text)


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def med(values) -> float:
    return float(statistics.median(values))


# -- surgery timings ---------------------------------------------------------------------
def one_filter_selection(graph) -> dict[str, list[int]]:
    groups = graph.prunable_groups
    return {groups[len(groups) // 2].layers[0]: [0]}


def bench_model(name: str, rounds: int) -> dict:
    model = build(name)
    graph = kp.analyze(model)
    sel = half_selection(graph)
    one = one_filter_selection(graph)
    masked = copy_model(model)
    has_select = hasattr(kp, "select")
    # Warm-up: first calls pay one-time costs (kernel registration, imports).
    keras.models.clone_model(model)
    kp.remove_filters(model, sel, graph=graph)
    pruned = kp.remove_filters(model, sel, graph=graph)
    times: dict[str, list[float]] = {
        k: [] for k in ("clone", "analyze", "remove_half", "remove_one", "mask_half", "select_l1")
    }
    for _ in range(rounds):
        times["clone"].append(timed(keras.models.clone_model, model)[0])
        times["analyze"].append(timed(kp.analyze, model)[0])
        times["remove_half"].append(timed(kp.remove_filters, model, sel)[0])
        times["remove_one"].append(timed(kp.remove_filters, model, one)[0])
        times["mask_half"].append(timed(kp.mask_filters, masked, sel)[0])
        if has_select:
            times["select_l1"].append(timed(kp.select, model, "l1", ratio=0.5)[0])
        gc.collect()
    row = {
        "model": name,
        "layers": len(model.layers),
        "params_before": model.count_params(),
        "params_after": pruned.count_params(),
        "groups": len(graph.groups),
        "prunable_groups": len(graph.prunable_groups),
        "one_filter_layer": next(iter(one)),
        "rounds": rounds,
        "times": times,
    }
    for k, v in times.items():
        if v:
            row[f"{k}_s"] = med(v)
    c = np.array(times["clone"])
    row["remove_half_over_clone"] = float(np.median(np.array(times["remove_half"]) / c))
    row["remove_one_over_clone"] = float(np.median(np.array(times["remove_one"]) / c))
    return row


def bench_scaling(rounds: int) -> list[dict]:
    rows = []
    for name in SCALING:
        model = build(name)
        graph = kp.analyze(model)
        sel = half_selection(graph)
        kp.remove_filters(model, sel, graph=graph)  # warm-up
        clone, remove, analyze = [], [], []
        for _ in range(rounds):
            clone.append(timed(keras.models.clone_model, model)[0])
            analyze.append(timed(kp.analyze, model)[0])
            remove.append(timed(kp.remove_filters, model, sel)[0])
        n = len(model.layers)
        rows.append(
            {
                "model": name,
                "layers": n,
                "clone_s": med(clone),
                "analyze_s": med(analyze),
                "remove_half_s": med(remove),
                "remove_ms_per_layer": 1000 * med(remove) / n,
                "remove_half_over_clone": float(np.median(np.array(remove) / np.array(clone))),
            }
        )
        print(f"  scaling {name}: {rows[-1]}", flush=True)
        del model, graph
        keras.backend.clear_session()
        gc.collect()
    return rows


def bench_big(rounds: int) -> list[dict]:
    rows = []
    for name in BIG:
        t_build, model = timed(build, name, None)
        times = [timed(kp.analyze, model)[0] for _ in range(rounds)]
        graph = kp.analyze(model)
        rows.append(
            {
                "model": name,
                "layers": len(model.layers),
                "params": model.count_params(),
                "groups": len(graph.groups),
                "prunable_groups": len(graph.prunable_groups),
                "build_s": t_build,
                "analyze_first_s": times[0],
                "analyze_s": med(times),
            }
        )
        print(f"  big {name}: {rows[-1]}", flush=True)
        del model, graph
        keras.backend.clear_session()
        gc.collect()
    return rows


# -- memory (one fresh process per model) -------------------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_increase(fn):
    """Run `fn()`; return its result and the peak RSS above the level before it (bytes)."""
    gc.collect()
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        out = fn()
    finally:
        stop.set()
        thread.join()
    return out, max(peak[0], _rss()) - base, base


def memory_child(name: str) -> dict:
    """Cold removal, then a plain clone, then a warm removal, in one fresh process."""
    model = build(name)
    graph = kp.analyze(model)
    sel = half_selection(graph)
    tracemalloc.start()
    pruned, cold, base = _peak_rss_increase(lambda: kp.remove_filters(model, sel, graph=graph))
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    clone, clone_inc, _ = _peak_rss_increase(lambda: keras.models.clone_model(model))
    del clone
    _, warm, _ = _peak_rss_increase(lambda: kp.remove_filters(model, sel, graph=graph))
    new = weight_bytes(pruned)
    largest = max(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights)
    mb = 2**20
    return {
        "model": name,
        "original_weight_mb": weight_bytes(model) / mb,
        "new_weight_mb": new / mb,
        "rss_before_mb": base / mb,
        "rss_peak_increase_mb": cold / mb,
        "extra_over_new_weights_mb": (cold - new) / mb,
        "warm_rss_peak_increase_mb": warm / mb,
        "warm_extra_over_new_weights_mb": (warm - new) / mb,
        "clone_rss_peak_increase_mb": clone_inc / mb,
        "clone_extra_over_its_weights_mb": (clone_inc - weight_bytes(model)) / mb,
        "numpy_traced_peak_mb": traced_peak / mb,
        "largest_original_variable_mb": largest / mb,
    }


def bench_memory(models: list[str]) -> list[dict]:
    rows = []
    for name in models:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", name],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            rows.append({"model": name, "error": out.stderr[-500:]})
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  memory {name}: {rows[-1]}", flush=True)
    return rows


# -- report ----------------------------------------------------------------------------
def markdown(data: dict) -> str:
    c = data["conditions"]
    lines = [
        "# Surgery speed",
        "",
        f"Command: `{c['command']}`  ",
        f"{c['date']}, {c['cpu']}, {c['cpus']} cores shared with other jobs "
        f"(load average {c['loadavg'][0]:.1f} at start, {data['loadavg_end'][0]:.1f} at end), "
        f"Keras {c['keras']} on {c['backend']} {c['tensorflow']}, Python {c['python']}.",
        "Times are medians over rounds; ratios are medians of per-round ratios "
        "(clone measured in the same round).",
        "",
        "| model | layers | params before → after | analyze | remove 50% | clone_model "
        "| remove/clone | remove 1 filter | 1 filter/clone | mask_filters 50% | select l1 50% |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["models"]:
        sel = f"{r['select_l1_s']:.2f} s" if "select_l1_s" in r else "n/a"
        lines.append(
            f"| {r['model']} | {r['layers']} | {r['params_before'] / 1e6:.2f} M → {r['params_after'] / 1e6:.2f} M "
            f"| {r['analyze_s']:.3f} s | {r['remove_half_s']:.2f} s | {r['clone_s']:.2f} s "
            f"| {r['remove_half_over_clone']:.2f}× | {r['remove_one_s']:.2f} s | {r['remove_one_over_clone']:.2f}× "
            f"| {r['mask_half_s']:.2f} s | {sel} |"
        )
    if data.get("scaling"):
        lines += [
            "",
            "## Scaling with depth",
            "",
            "| model | layers | analyze | remove 50% | clone_model | remove/clone | ms per layer |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in data["scaling"]:
            lines.append(
                f"| {r['model']} | {r['layers']} | {r['analyze_s']:.3f} s | {r['remove_half_s']:.2f} s "
                f"| {r['clone_s']:.2f} s | {r['remove_half_over_clone']:.2f}× | {r['remove_ms_per_layer']:.2f} |"
            )
    if data.get("big"):
        lines += [
            "",
            "## `analyze` on the largest applications (default input size)",
            "",
            "| model | layers | params | groups (prunable) | build model | analyze (first) | analyze (median) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in data["big"]:
            lines.append(
                f"| {r['model']} | {r['layers']} | {r['params'] / 1e6:.0f} M | {r['groups']} ({r['prunable_groups']}) "
                f"| {r['build_s']:.1f} s | {r['analyze_first_s']:.2f} s | {r['analyze_s']:.2f} s |"
            )
    if data.get("memory"):
        lines += [
            "",
            "## Memory during `remove_filters` (fresh process per model)",
            "",
            "Peak resident memory above the level just before the call (sampled every ms). "
            "*Cold*: first removal in the process (includes one-time costs); *warm*: a second one. "
            "A plain `clone_model` (which creates a full-size copy of the weights) is shown for "
            "its overhead beyond its own weights: Keras's Python objects for the new layers.",
            "",
            "| model | original weights | new weights | remove (cold): peak increase | extra beyond new weights "
            "| remove (warm): extra | clone_model: extra beyond its weights | Python traced peak (cold) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in data["memory"]:
            if "error" in r:
                lines.append(f"| {r['model']} | error: {r['error'][:80]} | | | | | |")
                continue
            lines.append(
                f"| {r['model']} | {r['original_weight_mb']:.1f} MB | {r['new_weight_mb']:.1f} MB "
                f"| {r['rss_peak_increase_mb']:.1f} MB | {r['extra_over_new_weights_mb']:.1f} MB "
                f"| {r['warm_extra_over_new_weights_mb']:.1f} MB | {r['clone_extra_over_its_weights_mb']:.1f} MB "
                f"| {r['numpy_traced_peak_mb']:.1f} MB |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--no-big", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help="rerun only the memory rows (others kept)")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    add_update_flag(ap)
    args = ap.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child)))
        return
    folder = results_dir(args.update)
    data: dict = {"conditions": conditions(), "models": [], "scaling": [], "big": [], "memory": []}
    if args.memory_only:
        previous = folder / "surgery.json" if (folder / "surgery.json").exists() else RESULTS / "surgery.json"
        data = json.loads(previous.read_text())
        data["memory"] = bench_memory(args.models)
        data["memory_command"] = conditions()["command"]
        data["loadavg_end"] = os.getloadavg()
        write_results("surgery", data, markdown(data), folder)
        print(markdown(data))
        announce(folder)
        return

    def save():
        data["loadavg_end"] = os.getloadavg()
        write_results("surgery", data, markdown(data), folder)

    for name in args.models:
        row = bench_model(name, args.rounds)
        data["models"].append(row)
        print(f"{name}: " + ", ".join(f"{k}={v:.3f}" for k, v in row.items() if k.endswith(("_s", "_clone"))))
        keras.backend.clear_session()
        gc.collect()
        save()
    if not args.no_scaling:
        data["scaling"] = bench_scaling(max(3, args.rounds // 2))
        save()
    if not args.no_big:
        data["big"] = bench_big(3)
        save()
    if not args.no_memory:
        data["memory"] = bench_memory(args.models)
        save()
    print(markdown(data))
    announce(folder)


if __name__ == "__main__":
    main()
