"""Side by side with Torch-Pruning, in one run: MACs, params, surgery time and latency.

For ResNet50, MobileNetV2 and DenseNet121 at 224x224 (`weights=None` on both
sides), remove 50% of the channels of every prunable group by L1 magnitude
(local ratio 0.5):

- **peer**: Torch-Pruning `MagnitudePruner(importance=MagnitudeImportance(p=1),
  pruning_ratio=0.5, ignored_layers=[classifier])` on the torchvision model, run by
  PyTorch eager (`torch.inference_mode`);
- **kerasprune**: `select(model, "l1", ratio=0.5)` + `remove_filters` on the
  keras.applications model, run by Keras on TensorFlow (`predict_on_batch`),
  unfolded and folded (`fold_batchnorm`), and — folded — as a LiteRT flatbuffer
  and as ONNX in ONNX Runtime (`kerasprune.export`).

Every engine runs in its own worker process (PyTorch and TensorFlow in one process
fight over their thread pools); the parent drives them in turn, one call at a time:
per round every engine runs the original and the pruned model (which goes first
alternates), so slow phases of a shared machine hit all engines alike. Times are
medians over `--reps` rounds after `--warmup` rounds. Every engine gets the same
number of threads, `--threads` (default: every core): `torch.set_num_threads`, TF's
intra-/inter-op pools, LiteRT `num_threads`, ONNX Runtime `intra_op_num_threads`;
threads and library versions are recorded. On a machine shared with other jobs,
PyTorch's OpenMP barriers stall whenever one of its threads is descheduled (MobileNetV2
batch 1 measured 32 ms with one thread and 320-2800 ms with two on two busy cores),
so there `--threads 1` is the fair setting.

Efficiency = speed-up / MAC reduction (each side's own MAC count: kerasprune
`count_flops`, Torch-Pruning `count_ops_and_params`).

Needs the `bench-peer` extra (torch, torchvision, torch-pruning) next to the `deploy`
one; exits 0 with a message when they are missing.

Usage:
    python benchmarks/peer.py                          # full run, results to a scratch folder
    python benchmarks/peer.py --update                 # ... and to benchmarks/results/peer.{json,md}
    python benchmarks/peer.py --models MobileNetV2 --batches 1 --reps 3 --warmup 1   # quick check
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from output import add_update_flag, results_dir  # noqa: E402

#: keras.applications name -> (torchvision constructor, attribute path of its classifier)
MODELS = {
    "ResNet50": ("resnet50", "fc"),
    "MobileNetV2": ("mobilenet_v2", "classifier.1"),
    "DenseNet121": ("densenet121", "classifier"),
}
KERAS_ENGINES = ("keras_tf", "keras_tf_folded", "litert_folded", "onnx_folded")
SHIPPED = ("keras_tf_folded", "litert_folded", "onnx_folded")  # what kerasprune deploys
LABEL = {
    "torch": "Torch-Pruning, PyTorch eager",
    "keras_tf": "kerasprune, Keras TF",
    "keras_tf_folded": "kerasprune, Keras TF, folded",
    "litert_folded": "kerasprune, LiteRT, folded",
    "onnx_folded": "kerasprune, ONNX Runtime, folded",
}
PEER_PACKAGES = {"torch": "torch", "torchvision": "torchvision", "torch_pruning": "torch-pruning"}


def _median(xs):
    return statistics.median(xs) if xs else None


def _versions(names) -> dict:
    from importlib import metadata

    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


# -- workers --------------------------------------------------------------------------------------
def _serve(runners: dict, make_input, ready: dict, out) -> None:
    """Send `ready`, then answer `{"engine", "variant", "batch"}` requests with the seconds one call took."""
    out.write(json.dumps({"ready": ready}) + "\n")
    out.flush()
    inputs: dict = {}
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("quit"):
            break
        run = runners[(req["engine"], req["variant"])]
        x = inputs.get(req["batch"])
        if x is None:
            x = inputs[req["batch"]] = make_input(req["batch"])
        t0 = time.perf_counter()
        run(x)
        out.write(json.dumps({"s": time.perf_counter() - t0}) + "\n")
        out.flush()


def torch_worker(name: str, threads: int, rounds: int, out) -> None:
    import copy

    import numpy as np
    import torch
    import torch_pruning as tp
    import torchvision

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)
    ctor, head = MODELS[name]
    model = getattr(torchvision.models, ctor)(weights=None).eval()
    example = torch.randn(1, 3, 224, 224)
    macs_a, params_a = tp.utils.count_ops_and_params(model, example)

    def prune():
        """A pruned copy, and the seconds Torch-Pruning took (graph tracing, scoring, removal)."""
        m = copy.deepcopy(model)
        classifier = m
        for part in head.split("."):
            classifier = classifier[int(part)] if part.isdigit() else getattr(classifier, part)
        t0 = time.perf_counter()
        pruner = tp.pruner.MagnitudePruner(
            m, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
            ignored_layers=[classifier],
        )
        pruner.step()
        return m.eval(), time.perf_counter() - t0

    pruned, surgery_s = prune()
    warm = [prune()[1] for _ in range(rounds)]
    macs_b, params_b = tp.utils.count_ops_and_params(pruned, example)

    def runner(m):
        def run(x):
            with torch.inference_mode():
                return m(x)

        return run

    info = {
        "macs_original": int(macs_a), "macs_pruned": int(macs_b),
        "params_original": int(params_a), "params_pruned": int(params_b),
        "surgery_s": surgery_s, "surgery_warm_s": _median(warm),
        "threads": {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads()},
        "versions": _versions(["torch", "torchvision", "torch-pruning", "numpy"]),
    }
    runners = {("torch", "original"): runner(model), ("torch", "pruned"): runner(pruned)}
    rng = np.random.default_rng(0)
    _serve(runners, lambda b: torch.from_numpy(rng.normal(size=(b, 3, 224, 224)).astype("float32")), info, out)


def keras_worker(name: str, threads: int, scratch: Path, rounds: int, out) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras
    import numpy as np

    import kerasprune as kp
    from kerasprune import export
    from kerasprune.testing import max_output_difference, randomize_batchnorm

    model = getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3))
    randomize_batchnorm(model, seed=0)  # so that the fold check below means something
    t0 = time.perf_counter()
    graph = kp.analyze(model)
    selection = kp.select(model, "l1", ratio=0.5, graph=graph)
    pruned = kp.remove_filters(model, selection, graph=graph)
    surgery_s = time.perf_counter() - t0
    remove, clone, warm = [], [], []
    for _ in range(rounds):  # remove_filters end to end (analysis included) next to a plain clone
        t0 = time.perf_counter()
        keras.models.clone_model(model)
        clone.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        kp.remove_filters(model, selection)
        remove.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        kp.remove_filters(model, kp.select(model, "l1", ratio=0.5))
        warm.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    folded = {"original": kp.fold_batchnorm(model), "pruned": kp.fold_batchnorm(pruned)}
    fold_s = (time.perf_counter() - t0) / 2
    x = np.random.default_rng(1).normal(size=(2, 224, 224, 3)).astype("float32")
    fold_diff = max(max_output_difference(model, folded["original"], x),
                    max_output_difference(pruned, folded["pruned"], x))
    runners = {
        ("keras_tf", "original"): model.predict_on_batch,
        ("keras_tf", "pruned"): pruned.predict_on_batch,
        ("keras_tf_folded", "original"): folded["original"].predict_on_batch,
        ("keras_tf_folded", "pruned"): folded["pruned"].predict_on_batch,
    }
    sizes, export_diff = {}, {}
    for variant, m in folded.items():
        want = keras.ops.convert_to_numpy(m(x, training=False))
        path = export.export_tflite(m, scratch / f"{name}_{variant}.tflite", overwrite=True)
        runners[("litert_folded", variant)] = run = export.load_tflite(path, num_threads=threads)
        litert_threads = run.num_threads
        export_diff[f"litert_{variant}"] = float(np.abs(run(x) - want).max())
        sizes[f"litert_{variant}"] = export.exported_size(path)
        path = export.export_onnx(m, scratch / f"{name}_{variant}.onnx", overwrite=True)
        runners[("onnx_folded", variant)] = run = export.load_onnx(path, num_threads=threads)
        onnx_threads, providers = run.num_threads, run.providers
        export_diff[f"onnx_{variant}"] = float(np.abs(run(x) - want).max())
        sizes[f"onnx_{variant}"] = export.exported_size(path)
    ready = {
        "macs_original": kp.count_flops(model), "macs_pruned": kp.count_flops(pruned),
        "macs_folded_original": kp.count_flops(folded["original"]), "macs_folded_pruned": kp.count_flops(folded["pruned"]),
        "params_original": model.count_params(), "params_pruned": pruned.count_params(),
        "surgery_s": surgery_s, "surgery_warm_s": _median(warm), "remove_filters_s": _median(remove), "clone_model_s": _median(clone),
        "remove_over_clone": _median([r / c for r, c in zip(remove, clone)]),
        "fold_s": fold_s, "fold_max_diff": fold_diff, "export_max_diff": export_diff, "bytes": sizes,
        "layers": {"original": len(model.layers), "pruned": len(pruned.layers),
                   "folded_original": len(folded["original"].layers)},
        "threads": {
            "tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            "litert": litert_threads, "onnxruntime_intra_op": onnx_threads, "onnxruntime_providers": providers,
        },
        "versions": {**export.runtime_versions(), "numpy": np.__version__, "kerasprune": kp.__version__},
    }
    rng = np.random.default_rng(0)
    _serve(runners, lambda b: rng.normal(size=(b, 224, 224, 3)).astype("float32"), ready, out)


class Worker:
    def __init__(self, kind: str, name: str, args):
        cmd = [sys.executable, __file__, "--worker", kind, "--models", name, "--scratch", str(args.scratch),
               "--clone-rounds", str(args.clone_rounds), "--threads", str(args.threads)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
        self.kind = kind
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{kind} worker for {name} died during setup (exit {self.proc.wait()})")
        self.info = json.loads(line)["ready"]

    def call(self, engine: str, variant: str, batch: int) -> float:
        self.proc.stdin.write(json.dumps({"engine": engine, "variant": variant, "batch": batch}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} worker died (exit {self.proc.wait()})")
        return json.loads(line)["s"]

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=120)


# -- parent ---------------------------------------------------------------------------------------
def measure(name: str, args) -> dict:
    print(f"{name}: setting up kerasprune (prune, fold, export) ...", flush=True)
    kw = Worker("keras", name, args)
    print(f"{name}: setting up Torch-Pruning ...", flush=True)
    tw = Worker("torch", name, args)
    engines = [("torch", tw)] + [(e, kw) for e in KERAS_ENGINES]
    times: dict = {}
    try:
        for batch in args.batches:
            reps = args.reps if batch > 1 else max(args.reps, 2 * args.reps)
            t = {e: {"original": [], "pruned": []} for e, _ in engines}
            for r in range(args.warmup + reps):
                order = engines[r % len(engines):] + engines[: r % len(engines)]
                for engine, worker in order:
                    variants = ("original", "pruned") if r % 2 == 0 else ("pruned", "original")
                    for v in variants:
                        s = worker.call(engine, v, batch)
                        if r >= args.warmup:
                            t[engine][v].append(s)
                        time.sleep(args.pause)
            times[str(batch)] = t
            print(_progress(name, batch, t), flush=True)
    finally:
        kw.close()
        tw.close()
    return {"keras": kw.info, "torch": tw.info, "times": times}


def _progress(name, batch, t) -> str:
    parts = [f"{e} {1000 * _median(v['original']):.1f}->{1000 * _median(v['pruned']):.1f} ms" for e, v in t.items()]
    return f"{name} bs{batch}: " + ", ".join(parts)


def summarize(row: dict) -> dict:
    """Medians, speed-ups and efficiencies per batch and engine; the targets of issue 14."""
    k, p = row["keras"], row["torch"]
    red = {"torch": p["macs_original"] / p["macs_pruned"]}
    for e in KERAS_ENGINES:
        red[e] = k["macs_original"] / k["macs_pruned"]
    out = {"mac_reduction": red, "batches": {}}
    for batch, t in row["times"].items():
        b = {}
        for e, v in t.items():
            a, z = _median(v["original"]), _median(v["pruned"])
            b[e] = {"original_ms": 1000 * a, "pruned_ms": 1000 * z, "speedup": a / z, "efficiency": a / z / red[e],
                    "reps": len(v["pruned"])}
        best = min(SHIPPED, key=lambda e: b[e]["pruned_ms"])
        b["best_shipped"] = best
        b["faster_than_peer"] = b[best]["pruned_ms"] < b["torch"]["pruned_ms"]
        out["batches"][batch] = b
    return out


def markdown(data: dict) -> str:
    c = data["conditions"]
    lines = [
        "# kerasprune next to Torch-Pruning (issue 14)",
        "",
        "50% of the channels of every prunable group removed by L1 magnitude (local ratio 0.5), 224x224, "
        "`weights=None`. Each engine runs in its own worker process, driven in turn one call at a time "
        "(original and pruned alternate); times are medians. Speed-up = original / pruned; efficiency = "
        "speed-up / MAC reduction (each side's own MAC count). *Folded*: `kerasprune.fold_batchnorm`.",
        "",
        f"- Command: `{c['command']}`; {c['date']}; {c['cpu']}, {c['cpus']} cores"
        f" (load average {c['loadavg_start'][0]:.1f} at start, {c['loadavg_end'][0]:.1f} at end"
        + (": **shared with other jobs**" if c["loadavg_start"][0] > 0.5 * c["cpus"] else "") + ").",
        f"- Threads: {json.dumps(c['threads'])}.",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in c['versions'].items() if v)}; Python {c['python']}.",
        "",
        "Surgery: the first call in the process (cold) and the median of `--clone-rounds` more (warm); "
        "kerasprune: analyze + select + remove_filters, Torch-Pruning: pruner construction (tracing) + `step()`. "
        "remove_filters / clone_model: median of per-round ratios (analysis included).",
        "",
        "| model | side | MACs before → after (reduction) | params before → after | surgery cold / warm "
        "| remove_filters / clone_model |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in data["models"].items():
        k, p = row["keras"], row["torch"]
        lines.append(
            f"| {name} | kerasprune | {k['macs_original'] / 1e9:.2f} G → {k['macs_pruned'] / 1e9:.2f} G "
            f"({k['macs_original'] / k['macs_pruned']:.2f}×) | {k['params_original'] / 1e6:.2f} M → "
            f"{k['params_pruned'] / 1e6:.2f} M | {k['surgery_s']:.2f} s / {k['surgery_warm_s']:.2f} s | "
            f"{k['remove_filters_s']:.2f} s / {k['clone_model_s']:.2f} s = {k['remove_over_clone']:.2f}× |"
        )
        lines.append(
            f"| {name} | Torch-Pruning | {p['macs_original'] / 1e9:.2f} G → {p['macs_pruned'] / 1e9:.2f} G "
            f"({p['macs_original'] / p['macs_pruned']:.2f}×) | {p['params_original'] / 1e6:.2f} M → "
            f"{p['params_pruned'] / 1e6:.2f} M | {p['surgery_s']:.2f} s / {p['surgery_warm_s']:.2f} s | - |"
        )
    lines += ["", "| model | batch | engine | original | pruned | speed-up | efficiency | reps |",
              "|---|---|---|---|---|---|---|---|"]
    for name, row in data["models"].items():
        s = row["summary"]
        for batch, b in s["batches"].items():
            for e in ("torch", *KERAS_ENGINES):
                r = b[e]
                mark = " **(best shipped)**" if e == b["best_shipped"] else ""
                lines.append(
                    f"| {name} | {batch} | {LABEL[e]}{mark} | {r['original_ms']:.1f} ms | {r['pruned_ms']:.1f} ms "
                    f"| {r['speedup']:.2f}× | {r['efficiency']:.2f} | {r['reps']} |"
                )
    lines += ["", "## Targets", "", "| model | target | measured | met |", "|---|---|---|---|"]
    for name, row in data["models"].items():
        s, k = row["summary"], row["keras"]
        for batch, b in s["batches"].items():
            best, peer = b[b["best_shipped"]], b["torch"]
            lines.append(
                f"| {name} | bs{batch}: best shipped runtime (folded) faster than the peer's pruned model "
                f"| {LABEL[b['best_shipped']]} {best['pruned_ms']:.1f} ms vs {peer['pruned_ms']:.1f} ms "
                f"| {'yes' if b['faster_than_peer'] else '**no**'} |"
            )
        if "16" in s["batches"]:
            b = s["batches"]["16"]
            best, peer = b[b["best_shipped"]], b["torch"]
            need = 0.9 if name == "ResNet50" else peer["efficiency"]
            others = ", ".join(f"{e.split('_')[0]} {b[e]['efficiency']:.3f}" for e in SHIPPED if e != b["best_shipped"])
            lines.append(
                f"| {name} | bs16 efficiency (best shipped runtime, folded → folded) ≥ {need:.3f}"
                f"{'' if name == 'ResNet50' else ' (the peer)'} | {best['efficiency']:.3f} "
                f"({b['best_shipped'].split('_')[0]}; other runtimes: {others}) "
                f"| {'yes' if best['efficiency'] >= need else '**no**'} |"
            )
        lines.append(
            f"| {name} | remove_filters ≤ 1.2× clone_model | {k['remove_over_clone']:.2f}× "
            f"| {'yes' if k['remove_over_clone'] <= 1.2 else '**no**'} |"
        )
    lines += ["", "Fold and export checks (max |difference| on random input, randomized BN statistics):", ""]
    for name, row in data["models"].items():
        k = row["keras"]
        diffs = ", ".join(f"{e} {d:.1e}" for e, d in k["export_max_diff"].items())
        lines.append(f"- {name}: fold {k['fold_max_diff']:.1e} ({k['fold_s']:.2f} s per model); export {diffs}.")
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batches", nargs="*", type=int, default=[16, 1])
    ap.add_argument("--reps", type=int, default=10, help="timed rounds (batch 1: twice as many)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--clone-rounds", type=int, default=5,
                    help="rounds of surgery timing (remove_filters next to clone_model; Torch-Pruning again)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads for every engine (default: every core; on a loaded machine, 1 keeps "
                    "PyTorch's OpenMP barriers from stalling)")
    ap.add_argument("--pause", type=float, default=0.01, help="seconds between calls (lets idle pools sleep)")
    add_update_flag(ap)
    ap.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "kerasprune-peer")
    ap.add_argument("--worker", choices=["keras", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
        sys.stdout = sys.stderr  # library chatter must not reach the protocol stream
        if args.worker == "torch":
            torch_worker(args.models[0], args.threads, args.clone_rounds, out)
        else:
            keras_worker(args.models[0], args.threads, args.scratch, args.clone_rounds, out)
        return 0
    missing = [pkg for mod, pkg in PEER_PACKAGES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        print(f"benchmarks/peer.py needs {', '.join(missing)} (pip install -e '.[bench-peer,deploy]'); skipped.")
        return 0
    args.scratch.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", "benchmarks/peer.py", *sys.argv[1:]])
    conditions = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command, "cpu": _cpu_name(),
                  "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "python": platform.python_version()}
    models = {}
    for name in args.models:
        row = measure(name, args)
        row["summary"] = summarize(row)
        models[name] = row
    conditions["loadavg_end"] = os.getloadavg()
    first = next(iter(models.values()))
    conditions["threads"] = {"torch": first["torch"]["threads"], "kerasprune": first["keras"]["threads"]}
    conditions["versions"] = {**first["keras"]["versions"], **first["torch"]["versions"]}
    data = {"conditions": conditions, "models": models}
    text = markdown(data)
    folder = results_dir(args.update)
    for suffix, body in ((".json", json.dumps(data, indent=2)), (".md", text)):
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".peer", suffix=suffix)
        with os.fdopen(fd, "w") as f:
            f.write(body)
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / f"peer{suffix}")
    print(text)
    print(f"Results written to {folder / 'peer.json'} and {folder / 'peer.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
