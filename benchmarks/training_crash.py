"""Issue 11: the native crash when training strided 1x1 convolutions with oneDNN, and what the guard costs.

Every case runs in its own child process (a native crash kills the process that
trains) and is reported as ok, or as the signal and the C library's last words.

Sections:
    repro     The issue's plain-Keras ResNet (widths 11,14,15,27,16,30; 1,347 random
              samples; batch 64; 3 epochs) and its controls, under this interpreter and
              under any `--python` given (other tensorflow-cpu releases); then the
              README's `prune_and_finetune` example and `SoftPruning` on the same model
              with kerasprune's guard.
    kernels   The kernel alone: the weight gradient of a 1x1 stride-2 convolution on
              NHWC float32 data (TensorFlow `Conv2DBackpropFilter`, PyTorch `conv2d` on a
              channels-last tensor) over batch sizes, input/output channels, threads;
              each result checked against numpy.
    layers    Keras layers trained for two epochs on a ragged last batch, with and
              without `kerasprune.stack.safe_training`: which crash, which the guard
              flags (`at_risk_layers`), and that every crash is flagged and fixed.
    speed     What the fixes cost: median `fit` step and `predict_on_batch` latency
              (batch 1 and 32), wall and process CPU time, per model under: the default
              stack, the guard, oneDNN off (`TF_ENABLE_ONEDNN_OPTS=0` /
              `torch.backends.mkldnn.enabled = False`) and XLA (`jit_compile=True`),
              interleaved over `--rounds` child processes, medians.

Usage:
    python benchmarks/training_crash.py [repro kernels layers speed] [--python PY ...]
        [--rounds 3] [--backends tensorflow torch] [--update]

Without `--update` the results go to a scratch directory (printed); with it, to
benchmarks/results/training_crash.json (sections merged) and training_crash.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from output import add_update_flag, results_dir  # noqa: E402

CRASH_WIDTHS = (11, 14, 15, 27, 16, 30)
ALIGNED_WIDTHS = (16, 16, 16, 32, 32, 32)


# ------------------------------------------------------------------------------ child
def _child(task: dict) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT / "tests"))
    kind = task["task"]
    if kind == "op":
        return _op(task)
    if kind == "repro":
        return _repro(task)
    if kind == "workflow":
        return _workflow(task)
    if kind == "layer":
        return _layer(task)
    if kind == "speed":
        return _speed(task)
    if kind == "guard_ab":
        return _guard_ab(task)
    raise SystemExit(f"unknown task {kind}")


def _versions() -> dict:
    import keras

    out = {"keras": keras.__version__, "backend": keras.backend.backend()}
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        out["tensorflow"] = tf.__version__
    if keras.backend.backend() == "torch":
        import torch

        out["torch"] = torch.__version__
    return out


def _op(t: dict) -> dict:
    """Weight gradient of a 1x1 stride-s conv on NHWC float32 data, `iters` times; max relative error."""
    import numpy as np

    n, h, ic, oc, s = t["n"], t["h"], t["ic"], t["oc"], t["stride"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, h, h, ic)).astype("float32")
    ho = (h - 1) // s + 1
    dy = rng.normal(size=(n, ho, ho, oc)).astype("float32")
    ref = np.einsum("nhwc,nhwo->co", x[:, ::s, ::s].astype("float64"), dy.astype("float64"))
    if t["framework"] == "tensorflow":
        import tensorflow as tf

        @tf.function
        def grad(x, dy):
            return tf.raw_ops.Conv2DBackpropFilter(
                input=x, filter_sizes=[1, 1, ic, oc], out_backprop=dy, strides=[1, s, s, 1], padding="VALID"
            )

        run = lambda: grad(tf.constant(x), tf.constant(dy)).numpy()[0, 0]  # noqa: E731
        version = tf.__version__
    else:
        import torch

        if t.get("threads"):
            torch.set_num_threads(t["threads"])
        xt = torch.tensor(x).permute(0, 3, 1, 2)  # NCHW view of NHWC memory, as Keras's torch backend passes it
        dyt = torch.tensor(dy).permute(0, 3, 1, 2)
        w = torch.zeros((oc, ic, 1, 1), requires_grad=True)

        def run():
            y = torch.nn.functional.conv2d(xt, w, stride=s)
            (g,) = torch.autograd.grad(y, w, dyt)
            return g.numpy()[:, :, 0, 0].T

        version = torch.__version__
    worst = 0.0
    for _ in range(t["iters"]):
        worst = max(worst, float(np.abs(run() - ref).max() / np.abs(ref).max()))
    return {"max_rel_error": worst, "version": version}


def _repro(t: dict) -> dict:
    """The issue's plain-Keras reproduction (no kerasprune imported)."""
    import keras

    from train_native import resnet

    keras.utils.set_random_seed(0)
    model = resnet(tuple(t["widths"]))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=t.get("xla", False))
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(t["samples"], 16, 16, 1)).astype("float32")
    y = rng.integers(0, 10, t["samples"])
    h = model.fit(x, y, batch_size=64, epochs=t["epochs"], verbose=0)
    if "kerasprune" in sys.modules:
        raise SystemExit("the plain-Keras reproduction imported kerasprune")
    return {"losses": h.history["loss"], **_versions()}


def _workflow(t: dict) -> dict:
    """The README's fine-tuning example / SoftPruning on the crashing case, with kerasprune."""
    import keras
    import numpy as np

    import kerasprune as kp
    from train_native import resnet

    keras.utils.set_random_seed(0)
    model = resnet(CRASH_WIDTHS)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1347, 16, 16, 1)).astype("float32")
    y = rng.integers(0, 10, 1347)
    xv, yv = x[:300], y[:300]
    if t["workflow"] == "prune_and_finetune":
        small, history = kp.prune_and_finetune(
            model, criterion="l1", target_flops=0.5, steps=2, train_data=(x, y), val_data=(xv, yv),
            epochs_per_step=3, monitor="val_accuracy", mode="max", fit_options={"batch_size": 64},
        )  # fmt: skip
        out = {"val_accuracy": [r.val_metric for r in history.rows], "params": small.count_params()}
    else:
        pruning = kp.SoftPruning("l1", schedule=kp.PolynomialSchedule(0.0, 0.5, begin=0, end=2), frequency="batch")
        h = model.fit(x, y, epochs=3, batch_size=64, callbacks=[pruning], verbose=0)
        out = {"losses": h.history["loss"], "params": pruning.finalize().count_params()}
    return {**out, "rerouted": [layer.name for layer in kp.stack.at_risk_layers(model)], **_versions()}


LAYER_CASES = [
    # (name, layer class, kwargs, input shape): 1x1 stride 2 unless said otherwise
    ("Conv2D", "Conv2D", {}, (16, 16)),
    ("Conv2D padding=same", "Conv2D", {"padding": "same"}, (15, 15)),
    ("Conv1D", "Conv1D", {}, (64,)),
    ("Conv3D", "Conv3D", {}, (8, 8, 8)),
    ("Conv2D strides=(1, 2)", "Conv2D", {"strides": (1, 2)}, (16, 16)),
    ("Conv2D groups=2", "Conv2D", {"groups": 2}, (16, 16)),
    ("Conv2D channels_first", "Conv2D", {"data_format": "channels_first"}, (16, 16)),
    ("Conv2D mixed_bfloat16", "Conv2D", {"dtype": "mixed_bfloat16"}, (16, 16)),
    ("Conv2D 3x3", "Conv2D", {"kernel_size": 3}, (16, 16)),
    ("Conv2D stride 1", "Conv2D", {"strides": 1}, (16, 16)),
    ("Conv2DTranspose", "Conv2DTranspose", {}, (8, 8)),
    ("SeparableConv2D", "SeparableConv2D", {}, (16, 16)),
    ("DepthwiseConv2D", "DepthwiseConv2D", {}, (16, 16)),
]


TORCH_CASES = ("Conv2D", "Conv1D", "Conv3D", "Conv2D groups=2", "Conv2D channels_first", "Conv2DTranspose")


def _layer(t: dict) -> dict:
    """One Keras layer (after a conv stem giving it `cin` channels) trained on a ragged last batch."""
    import keras
    import numpy as np

    import kerasprune as kp

    name, cls, kwargs, size = next(c for c in LAYER_CASES if c[0] == t["case"])
    kwargs = dict(kwargs)
    cf = kwargs.get("data_format") == "channels_first"
    rank = len(size)
    shape = (t["cin"], *size) if cf else (*size, t["cin"])
    layer_kwargs = {"kernel_size": kwargs.pop("kernel_size", 1), "strides": kwargs.pop("strides", 2), **kwargs}
    if cls != "DepthwiseConv2D":
        layer_kwargs["filters"] = 16
    inp = keras.Input(shape)
    x = getattr(keras.layers, cls)(name="probe", **layer_kwargs)(inp)
    pool = {1: keras.layers.GlobalAveragePooling1D, 2: keras.layers.GlobalAveragePooling2D,
            3: keras.layers.GlobalAveragePooling3D}[rank]  # fmt: skip
    x = pool(data_format="channels_first" if cf else "channels_last")(x)
    model = keras.Model(inp, keras.layers.Dense(4, dtype="float32")(x))
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    n = 35  # batches of 16, 16 and a ragged 3
    xs, ys = rng.normal(size=(n, *shape)).astype("float32"), rng.integers(0, 4, n)
    flagged = [layer.name for layer in kp.stack.at_risk_layers(model)]
    if t["guard"]:
        with kp.stack.safe_training(model):
            h = model.fit(xs, ys, batch_size=16, epochs=2, verbose=0)
    else:
        h = model.fit(xs, ys, batch_size=16, epochs=2, verbose=0)
    return {"flagged": flagged, "losses": h.history["loss"], **_versions()}


SPEED_MODELS = {
    # name: (builder, kwargs, batch)
    "resnet 11,14,15,27,16,30 (at risk)": ("resnet", {"widths": CRASH_WIDTHS}, 64),
    "resnet 16,16,16,32,32,32": ("resnet", {"widths": ALIGNED_WIDTHS}, 64),
    "MobileNetV2 96x96": ("MobileNetV2", {"input_shape": (96, 96, 3), "weights": None, "classes": 10}, 32),
    "ResNet50 64x64": ("ResNet50", {"input_shape": (64, 64, 3), "weights": None, "classes": 10}, 32),
}


def _speed(t: dict) -> dict:
    import keras
    import numpy as np

    builder, kwargs, batch = SPEED_MODELS[t["model"]]
    if t["setting"] == "onednn off" and keras.backend.backend() == "torch":
        import torch

        torch.backends.mkldnn.enabled = False
    keras.utils.set_random_seed(0)
    if builder == "resnet":
        from train_native import resnet

        model = resnet(tuple(kwargs["widths"]))
    else:
        model = getattr(keras.applications, builder)(**kwargs)
    model.compile("adam", "sparse_categorical_crossentropy", jit_compile=t["setting"] == "xla")
    shape = tuple(model.input_shape[1:])
    steps = t["steps"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * steps, *shape)).astype("float32")
    y = rng.integers(0, 10, len(x))

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.wall, self.cpu = [], []

        def on_train_batch_begin(self, b, logs=None):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, b, logs=None):
            self.wall.append(time.perf_counter() - self.t0)
            self.cpu.append(time.process_time() - self.c0)

    import contextlib

    guard = contextlib.nullcontext()
    if t["setting"] == "guard":
        import kerasprune as kp

        guard = kp.stack.safe_training(model)
    timer = Timer()
    with guard:
        model.fit(x[: 3 * batch], y[: 3 * batch], batch_size=batch, epochs=1, verbose=0)  # trace, warm up
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=[timer])  # full batches only
    med = statistics.median
    out = {"fit_ms": 1e3 * med(timer.wall[2:]), "fit_cpu_ms": 1e3 * med(timer.cpu[2:]), "batch": batch}
    for b in (1, 32):
        xb = x[:b]
        for _ in range(5):
            model.predict_on_batch(xb)
        wall, cpu = [], []
        for _ in range(t["predict_runs"]):
            t0, c0 = time.perf_counter(), time.process_time()
            model.predict_on_batch(xb)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out[f"predict_b{b}_ms"], out[f"predict_b{b}_cpu_ms"] = 1e3 * med(wall), 1e3 * med(cpu)
    return {**out, **_versions()}


def _guard_ab(t: dict) -> dict:
    """The guard's own cost, in one process: the at-risk resnet and a copy under `safe_training`,
    one `train_on_batch` (full batch of 64) / `predict_on_batch` each in turn, medians and their ratio."""
    import keras
    import numpy as np

    import kerasprune as kp
    from train_native import resnet

    keras.utils.set_random_seed(0)
    plain = resnet(CRASH_WIDTHS)
    guarded = keras.models.clone_model(plain)
    guarded.set_weights(plain.get_weights())
    for m in (plain, guarded):
        m.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16, 16, 1)).astype("float32")
    y = rng.integers(0, 10, 64)
    med = statistics.median
    out = {}
    with kp.stack.safe_training(guarded) as rerouted:
        for what, call in (("fit", lambda m: m.train_on_batch(x, y)), ("predict_b1", lambda m: m.predict_on_batch(x[:1])),
                           ("predict_b32", lambda m: m.predict_on_batch(x[:32]))):  # fmt: skip
            for _ in range(5):
                call(plain), call(guarded)
            times = {"plain": [], "guarded": []}
            for i in range(t["reps"]):
                for name, m in ((("plain", plain), ("guarded", guarded)) if i % 2 == 0 else
                                (("guarded", guarded), ("plain", plain))):  # fmt: skip
                    t0 = time.perf_counter()
                    call(m)
                    times[name].append(time.perf_counter() - t0)
            out[what] = {k: 1e3 * med(v) for k, v in times.items()}
            out[what]["ratio_pairs"] = med(g / p for g, p in zip(times["guarded"], times["plain"]))
    return {"rerouted": rerouted, "reps": t["reps"], **out, **_versions()}


# ----------------------------------------------------------------------------- parent
def run_child(task: dict, env: dict | None = None, python: str = sys.executable, timeout: int = 900) -> dict:
    """Run one task in a fresh interpreter; `{"status": "ok", ...}` or the crash."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    t0 = time.perf_counter()
    try:
        p = subprocess.run(
            [python, __file__, "--child", json.dumps(task)], env=full_env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "wall_s": timeout}
    wall = round(time.perf_counter() - t0, 1)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode == 0 and lines:
        return {"status": "ok", "wall_s": wall, **json.loads(lines[-1][7:])}
    code = p.returncode
    sig = -code if code < 0 else (code - 128 if code > 128 else 0)
    said = [ln for ln in p.stderr.splitlines() if ln.strip() and "port.cc" not in ln and "absl::" not in ln]
    status = f"crash ({signal.Signals(sig).name})" if sig else f"error (exit {code})"
    return {"status": status, "wall_s": wall, "last_words": said[-1][:200] if said else ""}


def python_versions(python: str) -> str:
    code = "import tensorflow as tf, keras; print(tf.__version__, keras.__version__)"
    p = subprocess.run([python, "-c", code], capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return p.stdout.strip() or p.stderr.strip().splitlines()[-1]


def section_repro(args) -> dict:
    rows = []
    for py in [sys.executable, *args.python]:
        tf_keras = python_versions(py)
        cases = [
            ("widths 11,14,15,27,16,30, 1,347 samples", {"widths": CRASH_WIDTHS, "samples": 1347}, {}),
            ("same, 1,344 samples (no ragged batch)", {"widths": CRASH_WIDTHS, "samples": 1344}, {}),
            ("widths 16,16,16,32,32,32, 1,347 samples", {"widths": ALIGNED_WIDTHS, "samples": 1347}, {}),
            ("crashing case, TF_ENABLE_ONEDNN_OPTS=0", {"widths": CRASH_WIDTHS, "samples": 1347},
             {"TF_ENABLE_ONEDNN_OPTS": "0"}),
        ]  # fmt: skip
        if py != sys.executable:
            cases = cases[:1]
        for label, task, env in cases:
            for attempt in range(args.repeats):
                r = run_child({"task": "repro", "epochs": 3, **task}, env={"KERAS_BACKEND": "tensorflow", **env},
                              python=py)  # fmt: skip
                rows.append({"stack": tf_keras, "case": label, "attempt": attempt, **r})
                print(f"repro [{tf_keras}] {label}: {r['status']}", flush=True)
    for wf in ("prune_and_finetune", "SoftPruning"):
        r = run_child({"task": "workflow", "workflow": wf}, env={"KERAS_BACKEND": "tensorflow"})
        rows.append({"stack": python_versions(sys.executable), "case": f"kerasprune {wf} on the crashing case", **r})
        print(f"workflow {wf}: {r['status']}", flush=True)
    return {"rows": rows}


def section_kernels(args) -> dict:
    rows = []
    grid = [
        {"n": n, "h": 16, "ic": 11, "oc": 16} for n in (1, 2, 3, 4, 16, 33, 64)
    ] + [{"n": 3, "h": 16, "ic": ic, "oc": 16} for ic in (1, 3, 8, 15, 16, 17, 32)] + [
        {"n": 3, "h": 16, "ic": 11, "oc": oc} for oc in (8, 30, 64)
    ] + [{"n": 3, "h": h, "ic": 11, "oc": 16} for h in (8, 17, 32)]
    for framework in args.backends:
        for threads in (1, 2, 4) if framework == "tensorflow" else (2,):
            for case in (grid if framework == "tensorflow" else grid[:14]) if threads == 2 else grid[:7]:
                task = {"task": "op", "framework": framework, "stride": 2, "iters": 20, **case}
                env = {"KERAS_BACKEND": framework}
                if framework == "tensorflow":
                    env["TF_NUM_INTRAOP_THREADS"] = str(threads)
                else:
                    env["OMP_NUM_THREADS"] = str(threads)
                    task["threads"] = threads
                r = run_child(task, env=env, timeout=300)
                rows.append({"framework": framework, "threads": threads, **case, **r})
                print(f"kernel {framework} threads={threads} {case}: {r['status']}", flush=True)
    return {"rows": rows}


def section_layers(args) -> dict:
    rows = []
    for backend in args.backends:
        for case in LAYER_CASES if backend == "tensorflow" else [c for c in LAYER_CASES if c[0] in TORCH_CASES]:
            for cin in (3, 11, 16) if case[0] == "Conv2D" else (11, 16):
                for guard in (False, True):
                    task = {"task": "layer", "case": case[0], "cin": cin, "guard": guard}
                    r = run_child(task, env={"KERAS_BACKEND": backend}, timeout=300)
                    rows.append({"backend": backend, "case": case[0], "cin": cin, "guard": guard, **r})
                    print(f"layer {backend} {case[0]} cin={cin} guard={guard}: {r['status']}", flush=True)
    return {"rows": rows}


def section_speed(args) -> dict:
    settings = {"tensorflow": ["default", "guard", "onednn off", "xla"], "torch": ["default", "guard", "onednn off"]}
    runs = []
    for rnd in range(args.rounds):
        for backend in args.backends:
            for model in args.models or list(SPEED_MODELS):
                for setting in settings[backend]:
                    if setting == "xla" and not model.startswith("resnet "):
                        continue  # XLA's CPU compile of the applications takes many minutes; the small ones tell
                    env = {"KERAS_BACKEND": backend}
                    if setting == "onednn off" and backend == "tensorflow":
                        env["TF_ENABLE_ONEDNN_OPTS"] = "0"
                    task = {"task": "speed", "model": model, "setting": setting, "steps": args.steps,
                            "predict_runs": 30}  # fmt: skip
                    r = run_child(task, env=env)
                    runs.append({"round": rnd, "backend": backend, "model": model, "setting": setting, **r})
                    print(f"speed round {rnd} {backend} {model} {setting}: {r['status']} "
                          f"{r.get('fit_ms', 0):.1f} ms", flush=True)  # fmt: skip
    table = []
    keys = ("fit_ms", "fit_cpu_ms", "predict_b1_ms", "predict_b1_cpu_ms", "predict_b32_ms", "predict_b32_cpu_ms")
    for backend in args.backends:
        for model in args.models or list(SPEED_MODELS):
            for setting in settings[backend]:
                ok = [r for r in runs if (r["backend"], r["model"], r["setting"]) == (backend, model, setting)
                      and r["status"] == "ok"]  # fmt: skip
                if not any((r["backend"], r["model"], r["setting"]) == (backend, model, setting) for r in runs):
                    continue
                row = {"backend": backend, "model": model, "setting": setting, "runs": len(ok)}
                for k in keys:
                    row[k] = round(statistics.median(r[k] for r in ok), 2) if ok else None
                table.append(row)
    return {"runs": runs, "table": table, "rounds": args.rounds, "steps": args.steps}


def section_guard(args) -> dict:
    rows = []
    for backend in args.backends:
        for rnd in range(args.rounds):
            r = run_child({"task": "guard_ab", "reps": 60}, env={"KERAS_BACKEND": backend})
            rows.append({"backend": backend, "round": rnd, **r})
            print(f"guard A/B {backend} round {rnd}: {r['status']} {r.get('fit')}", flush=True)
    return {"rows": rows}


def conditions() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu, "cores": os.cpu_count(),
            "load_avg": round(os.getloadavg()[0], 1), "python": platform.python_version()}  # fmt: skip


def write_md(data: dict, path: Path) -> None:
    lines = ["# Training crash (issue 11): reproduction, kernel, guard cost", "",
             "Produced by `python benchmarks/training_crash.py`; every case in its own process. "
             "Details: docs/training-crash.md.", ""]  # fmt: skip
    sections = [(name, data[name]) for name in ("repro", "kernels", "layers", "guard") if name in data]
    sections += [("speed", sec) for _, sec in sorted(data.get("speed", {}).items())]
    for name, sec in sections:
        c = sec["conditions"]
        lines += [f"## {name}", "", f"`{sec['command']}`: {c['date']}, {c['cpu']}, {c['cores']} cores "
                  f"(load average {c['load_avg']} at start).", ""]  # fmt: skip
        if name == "guard":
            lines += ["The guard's own cost in one process: the at-risk resnet (batch 64) and a copy of it inside "
                      "`safe_training`, called in turn; medians of 60 calls each, ms, and the median of the "
                      "guarded/unguarded ratios of the pairs.", "",
                      "| backend | round | rerouted | train_on_batch | predict b1 | predict b32 |",
                      "|---|---:|---|---:|---:|---:|"]  # fmt: skip
            for r in sec["rows"]:
                if r["status"] != "ok":
                    lines.append(f"| {r['backend']} | {r['round']} | {r['status']} | | | |")
                    continue
                cells = [f"{r[k]['plain']:.2f} → {r[k]['guarded']:.2f} (×{r[k]['ratio_pairs']:.3f})"
                         for k in ("fit", "predict_b1", "predict_b32")]  # fmt: skip
                lines.append(f"| {r['backend']} | {r['round']} | {', '.join(r['rerouted'])} | " + " | ".join(cells) + " |")
        elif name == "repro":
            lines += ["| stack (tensorflow keras) | case | result | last words |", "|---|---|---|---|"]
            lines += [f"| {r['stack']} | {r['case']} | {r['status']} | {r.get('last_words', '')} |" for r in sec["rows"]]
        elif name == "kernels":
            lines += ["| framework | threads | batch | H=W | in ch | out ch | result | max rel. error |",
                      "|---|---:|---:|---:|---:|---:|---|---:|"]  # fmt: skip
            for r in sec["rows"]:
                err = f"{r['max_rel_error']:.1e}" if "max_rel_error" in r else "-"
                lines.append(f"| {r['framework']} | {r['threads']} | {r['n']} | {r['h']} | {r['ic']} | {r['oc']} "
                             f"| {r['status']} | {err} |")  # fmt: skip
        elif name == "layers":
            lines += ["| backend | layer (1x1, stride 2 unless said) | in ch | flagged at risk | without guard "
                      "| with guard |", "|---|---|---:|---|---|---|"]  # fmt: skip
            rows = sec["rows"]
            for r in rows:
                if r["guard"]:
                    continue
                g = next(x for x in rows if x["guard"] and (x["backend"], x["case"], x["cin"]) ==
                         (r["backend"], r["case"], r["cin"]))  # fmt: skip
                flagged = "yes" if g.get("flagged") else ("no" if "flagged" in g else "-")
                lines.append(f"| {r['backend']} | {r['case']} | {r['cin']} | {flagged} | {r['status']} "
                             f"| {g['status']} |")  # fmt: skip
        else:
            lines += [f"Medians over {sec['rounds']} child processes per cell (interleaved), each the median of "
                      f"{sec['steps'] - 2} timed full-batch `fit` steps and 30 `predict_on_batch` calls; ms, wall "
                      "(process CPU time in parentheses).", "",
                      "| backend | model | setting | fit step | predict b1 | predict b32 |",
                      "|---|---|---|---:|---:|---:|"]  # fmt: skip
            for r in sec["table"]:
                if r["fit_ms"] is None:
                    lines.append(f"| {r['backend']} | {r['model']} | {r['setting']} | failed | | |")
                    continue
                cells = [f"{r[k]:.1f} ({r[k.replace('_ms', '_cpu_ms')]:.1f})"
                         for k in ("fit_ms", "predict_b1_ms", "predict_b32_ms")]  # fmt: skip
                lines.append(f"| {r['backend']} | {r['model']} | {r['setting']} | " + " | ".join(cells) + " |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sections", nargs="*", default=["repro", "kernels", "layers", "guard", "speed"])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--python", nargs="*", default=[], help="other interpreters (tensorflow-cpu releases) for repro")
    ap.add_argument("--backends", nargs="*", default=["tensorflow", "torch"])
    ap.add_argument("--models", nargs="*", default=None, help="subset of the speed models")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=22)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each repro case")
    add_update_flag(ap)
    args = ap.parse_args(argv)
    if args.child:
        result = _child(json.loads(args.child))
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    out = results_dir(args.update)
    path = out / "training_crash.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    command = "python benchmarks/training_crash.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for name in args.sections:
        cond = conditions()
        sec = {"repro": section_repro, "kernels": section_kernels, "layers": section_layers,
               "speed": section_speed, "guard": section_guard}[name](args)  # fmt: skip
        sec = {**sec, "conditions": cond, "command": command.strip()}
        if name == "speed":  # one entry per backend, so backends can be measured by separate commands
            for b in args.backends:
                data.setdefault("speed", {})[b] = {**sec, "table": [r for r in sec["table"] if r["backend"] == b]}
        else:
            data[name] = sec
        path.write_text(json.dumps(data, indent=1) + "\n")
        write_md(data, out / "training_crash.md")
    print(f"wrote {path} and {out / 'training_crash.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
