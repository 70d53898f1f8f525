"""Coverage sweep: every `keras.applications` architecture, on each backend.

For each architecture (built with `weights=None`, the smallest input it
accepts, `include_top=True` and `classifier_activation=None` where supported)
this script randomizes the BatchNorm statistics, analyzes the model, removes a
seeded random ~25% of every prunable *exact* group, and compares the smaller
model with the masked original. Where the model has prunable approximate groups
(ConvNeXt's LayerNormalization), it also removes 25% of every prunable group and
reports how far the smaller model drifts from the masked original.

Each backend runs in its own subprocess (the Keras backend is fixed per
process). Results go to `coverage.json` and `coverage.md` in a scratch folder, or in
`benchmarks/results/` with `--update` (see output.py).

Usage:
    python benchmarks/coverage.py                      # TF: all 40; JAX, torch: subset
    python benchmarks/coverage.py --backends tensorflow --models ResNet50 VGG16
    python benchmarks/coverage.py --merge-only         # rebuild the report from parts
    python benchmarks/coverage.py --update             # ... into benchmarks/results/
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from output import add_update_flag, announce, results_dir  # noqa: E402

TOL = 1e-4
TOL_F64 = 1e-9

#: name -> (family, smallest input size that builds with include_top=True)
ARCHITECTURES: dict[str, tuple[str, int]] = {
    "ConvNeXtTiny": ("ConvNeXt", 32),
    "ConvNeXtSmall": ("ConvNeXt", 32),
    "ConvNeXtBase": ("ConvNeXt", 32),
    "ConvNeXtLarge": ("ConvNeXt", 32),
    "ConvNeXtXLarge": ("ConvNeXt", 32),
    "DenseNet121": ("DenseNet", 32),
    "DenseNet169": ("DenseNet", 32),
    "DenseNet201": ("DenseNet", 32),
    "EfficientNetB0": ("EfficientNet", 32),
    "EfficientNetB1": ("EfficientNet", 32),
    "EfficientNetB2": ("EfficientNet", 32),
    "EfficientNetB3": ("EfficientNet", 32),
    "EfficientNetB4": ("EfficientNet", 32),
    "EfficientNetB5": ("EfficientNet", 32),
    "EfficientNetB6": ("EfficientNet", 32),
    "EfficientNetB7": ("EfficientNet", 32),
    "EfficientNetV2B0": ("EfficientNetV2", 32),
    "EfficientNetV2B1": ("EfficientNetV2", 32),
    "EfficientNetV2B2": ("EfficientNetV2", 32),
    "EfficientNetV2B3": ("EfficientNetV2", 32),
    "EfficientNetV2S": ("EfficientNetV2", 32),
    "EfficientNetV2M": ("EfficientNetV2", 32),
    "EfficientNetV2L": ("EfficientNetV2", 32),
    "InceptionResNetV2": ("InceptionResNetV2", 75),
    "InceptionV3": ("InceptionV3", 75),
    "MobileNet": ("MobileNet", 32),
    "MobileNetV2": ("MobileNetV2", 32),
    "MobileNetV3Small": ("MobileNetV3", 32),
    "MobileNetV3Large": ("MobileNetV3", 32),
    "NASNetMobile": ("NASNet", 32),
    "NASNetLarge": ("NASNet", 32),
    "ResNet50": ("ResNet", 32),
    "ResNet101": ("ResNet", 32),
    "ResNet152": ("ResNet", 32),
    "ResNet50V2": ("ResNetV2", 32),
    "ResNet101V2": ("ResNetV2", 32),
    "ResNet152V2": ("ResNetV2", 32),
    "VGG16": ("VGG", 32),
    "VGG19": ("VGG", 32),
    "Xception": ("Xception", 71),
}

#: One (small) member per family: what JAX and torch run, and what CI tests.
SUBSET = [
    "ConvNeXtTiny",
    "DenseNet121",
    "EfficientNetB0",
    "EfficientNetV2B0",
    "InceptionResNetV2",
    "InceptionV3",
    "MobileNet",
    "MobileNetV2",
    "MobileNetV3Small",
    "NASNetMobile",
    "ResNet50",
    "ResNet50V2",
    "VGG16",
    "Xception",
]

BACKENDS = ("tensorflow", "jax", "torch")


def build(name: str, size: int | None = None):
    """Build `keras.applications.<name>` untrained, at its smallest input size."""
    import inspect

    import keras

    ctor = getattr(keras.applications, name)
    size = size or ARCHITECTURES[name][1]
    kwargs = {"weights": None, "include_top": True, "input_shape": (size, size, 3), "classes": 10}
    if "classifier_activation" in inspect.signature(ctor).parameters:
        kwargs["classifier_activation"] = None
    return ctor(**kwargs)


def randomize_batchnorm_calibrated(model, seed: int = 0, batch: int = 16) -> None:
    """Random BN parameters and statistics that keep deep nets numerically sane.

    `kerasprune.testing.randomize_batchnorm` draws statistics unrelated to the
    activations; through the 50-80 residual blocks of the larger EfficientNets
    the activations then grow past 1e8 and no float32 (or float64) comparison
    means anything. Here gamma ~ N(1, 0.5) and beta ~ N(0, 0.5) are drawn first,
    then one forward pass in training mode with `momentum=0` sets every BN's
    moving statistics to its batch statistics on random input (non-zero means,
    non-unit variances, so a BN leak shows), and finally the means are shifted
    by N(0, 0.1) standard deviations and the variances scaled by U(0.8, 1.25).
    """
    import keras
    import numpy as np

    from kerasprune.testing import random_input

    rng = np.random.default_rng(seed)
    bns = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        for v, mean in ((layer.gamma, 1.0), (layer.beta, 0.0)):
            if v is not None:
                v.assign(rng.normal(mean, 0.5, tuple(v.shape)).astype(v.dtype))
    momenta = [layer.momentum for layer in bns]
    for layer in bns:
        layer.momentum = 0.0
    model(random_input(model, batch=batch, seed=seed + 2), training=True)
    for layer, momentum in zip(bns, momenta):
        layer.momentum = momentum
    for layer in bns:
        var = keras.ops.convert_to_numpy(layer.moving_variance)
        mean = keras.ops.convert_to_numpy(layer.moving_mean)
        shape = var.shape
        layer.moving_mean.assign((mean + rng.normal(0, 0.1, shape) * np.sqrt(var)).astype(mean.dtype))
        layer.moving_variance.assign((var * rng.uniform(0.8, 1.25, shape)).astype(var.dtype))


def randomize_scales(model, seed: int = 0) -> None:
    """Random per-channel `gamma`/`beta` for every non-BN layer that has them.

    ConvNeXt's layer scale starts at 1e-6, which would hide any error in the
    residual branches; LayerNormalization starts at gamma = 1, beta = 0.
    """
    import keras
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            continue
        for name, mean in (("gamma", 1.0), ("beta", 0.0)):
            v = getattr(layer, name, None)
            if isinstance(v, keras.Variable) and len(v.shape) == 1:
                v.assign(rng.normal(mean, 0.5, tuple(v.shape)).astype(v.dtype))


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def random_selection(graph, ratio: float, seed: int, exact_only: bool = True) -> dict:
    """`{first producer: positions}` removing `ratio` of every prunable group (seeded)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    selection = {}
    for group in graph.prunable_groups:
        if exact_only and not group.exact:
            continue
        n = int(round(group.size * ratio))
        n = min(max(n, 1), group.size - 1)
        if n <= 0:
            continue
        layer = group.layers[0]
        gids, chans = graph.channels_of(layer)
        wanted = set(rng.choice(group.size, size=n, replace=False).tolist())
        positions, seen = [], set()
        for pos, (gid, ch) in enumerate(zip(gids.tolist(), chans.tolist())):
            if gid == group.id and ch in wanted and ch not in seen:
                seen.add(ch)
                positions.append(pos)
        selection[layer] = positions
    return selection


def check(name: str, ratio: float = 0.25, seed: int = 0) -> dict:
    """Analyze, mask and remove on one architecture; return its coverage row."""
    import keras

    import kerasprune as kp
    from kerasprune.testing import copy_model, max_output_difference, random_input

    row: dict = {"model": name, "family": ARCHITECTURES[name][0], "input": ARCHITECTURES[name][1]}
    row["backend"] = keras.backend.backend()
    row["keras"] = keras.__version__
    t0 = time.perf_counter()
    try:
        model = build(name)
        randomize_scales(model, seed=seed)
        randomize_batchnorm_calibrated(model, seed=seed)
        row["build_s"] = round(time.perf_counter() - t0, 2)
        t1 = time.perf_counter()
        graph = kp.analyze(model)
        row["analyze_s"] = round(time.perf_counter() - t1, 2)
        groups = graph.groups
        row["groups"] = len(groups)
        row["prunable"] = len(graph.prunable_groups)
        row["exact"] = sum(1 for g in graph.prunable_groups if g.exact)
        row["params_before"] = int(model.count_params())
        x = random_input(model, batch=2, seed=seed)
        selection = random_selection(graph, ratio, seed)
        t2 = time.perf_counter()
        pruned = kp.remove_filters(model, selection, graph=graph)
        row["remove_s"] = round(time.perf_counter() - t2, 2)
        row["params_after"] = int(pruned.count_params())
        del graph
        masked = copy_model(model)
        kp.mask_filters(masked, selection)
        row["max_diff"] = max_output_difference(pruned, masked, x)
        # How much masking changed the outputs: shows the selection is not a no-op.
        row["mask_effect"] = max_output_difference(model, masked, x)
        del pruned, masked
        if row["prunable"] > row["exact"]:
            approx = random_selection(kp.analyze(model), ratio, seed, exact_only=False)
            pruned = kp.remove_filters(model, approx)
            masked = copy_model(model)
            kp.mask_filters(masked, approx)
            row["params_after_all"] = int(pruned.count_params())
            row["approx_diff"] = max_output_difference(pruned, masked, x)
            del pruned, masked
        exact = row["max_diff"] < TOL
        if not exact and _float64_available():
            # Deep untrained nets with random BN statistics reach activations far larger
            # than their outputs; float64 tells float32 round-off from a real mismatch.
            row["max_diff_f64"] = float64_difference(name, ratio, seed)
            exact = row["max_diff_f64"] < TOL_F64
        ok = (
            exact
            and row["prunable"] > 0
            and row["params_after"] < row["params_before"]
            and row["mask_effect"] > 0
        )
        row["status"] = ("pass" if "max_diff_f64" not in row else "pass (float64)") if ok else "FAIL"
    except Exception as e:  # noqa: BLE001 - a sweep records every failure
        # Keras itself refuses some constructors on some backends (NASNet on torch):
        # recorded as not applicable, not as a kerasprune failure.
        row["status"] = "n/a (Keras)" if "is not available with the" in str(e) else "FAIL"
        row["error"] = f"{type(e).__name__}: {e}"[:500]
        row["traceback"] = traceback.format_exc()[-2000:]
    row["time_s"] = round(time.perf_counter() - t0, 2)
    keras.backend.clear_session()
    gc.collect()
    return row


def _float64_available() -> bool:
    import keras

    if keras.backend.backend() != "jax":
        return True
    import jax

    return bool(jax.config.jax_enable_x64)


def float64_difference(name: str, ratio: float = 0.25, seed: int = 0) -> float:
    """`check`'s removed-vs-masked difference with the model built in float64."""
    import keras
    import numpy as np

    import kerasprune as kp
    from kerasprune.testing import copy_model, max_output_difference, random_input

    previous = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        model = build(name)
        randomize_scales(model, seed=seed)
        randomize_batchnorm_calibrated(model, seed=seed)
        graph = kp.analyze(model)
        selection = random_selection(graph, ratio, seed)
        pruned = kp.remove_filters(model, selection, graph=graph)
        masked = copy_model(model)
        kp.mask_filters(masked, selection)
        x = np.asarray(random_input(model, batch=2, seed=seed), dtype="float64")
        return max_output_difference(pruned, masked, x)
    finally:
        keras.config.set_floatx(previous)


def run_backend(models: list[str], out: Path) -> None:
    """Run `models` in this process (its backend) and write rows to `out` as they finish.

    Rows of other models already in `out` are kept, so single models can be re-run.
    """
    rows = json.loads(out.read_text()) if out.exists() else []
    for name in models:
        row = check(name)
        rows = [r for r in rows if r["model"] != name] + [row]
        print(
            f"[{row['backend']}] {name}: {row['status']} {row.get('max_diff', row.get('error', ''))} "
            f"({row['time_s']} s)",
            flush=True,
        )
        _write_atomic(out, json.dumps(rows, indent=1))


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _fmt(v, spec: str = "") -> str:
    if v is None:
        return "–"
    return format(v, spec) if spec else str(v)


def render(rows: list[dict]) -> str:
    """The Markdown report."""
    versions = f"keras {rows[0].get('keras')}" if rows else ""
    lines = [
        "# kerasprune coverage: keras.applications",
        "",
        "Generated by `python benchmarks/coverage.py` "
        f"({platform.machine()}, {os.cpu_count()} CPUs shared; {versions}).",
        "",
        "Each model: `weights=None`, smallest input it accepts, `include_top=True`, "
        "`classifier_activation=None`, 10 classes; random BatchNorm gamma/beta with moving statistics "
        "calibrated on random data and then perturbed (`randomize_batchnorm_calibrated`), random "
        "LayerNorm/LayerScale gamma/beta. A seeded "
        "random 25% of every prunable exact group is removed; *max diff* is the largest "
        "|removed - masked| output difference relative to the output magnitude (pass: < 1e-4). "
        "*approx diff*: the same with 25% of every prunable group, approximate ones "
        "(LayerNormalization over channels) included. *mask effect*: how much masking changed the "
        "original's outputs (relative), to show the removal is not a no-op. Where the float32 "
        "difference exceeds 1e-4 (deep untrained nets with random BN statistics reach "
        "activations far larger than their outputs), the row is re-run in float64: "
        "*pass (float64 diff …)* means removal and masking agree to < 1e-9 there, so the float32 "
        "gap is round-off. Times are wall-clock seconds for the whole row.",
        "",
        "| model | backend | input | groups | prunable | exact | params before | params after "
        "| max diff | mask effect | approx diff | time (s) | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {n: i for i, n in enumerate(ARCHITECTURES)}
    for r in sorted(rows, key=lambda r: (BACKENDS.index(r["backend"]), order.get(r["model"], 0))):
        if r["status"] == "pass":
            status = "pass"
        elif r["status"].startswith("pass"):
            status = f"pass (float64 diff {r['max_diff_f64']:.1e})"
        elif r["status"].startswith("n/a"):
            status = f"n/a: {r.get('error', '')}"[:160]
        else:
            status = f"**FAIL** {r.get('error', '')}"[:160]
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['input']} | {_fmt(r.get('groups'))} "
            f"| {_fmt(r.get('prunable'))} | {_fmt(r.get('exact'))} | {_fmt(r.get('params_before'), ',')} "
            f"| {_fmt(r.get('params_after'), ',')} | {_fmt(r.get('max_diff'), '.1e')} "
            f"| {_fmt(r.get('mask_effect'), '.1e')} "
            f"| {_fmt(r.get('approx_diff'), '.1e')} | {_fmt(r.get('time_s'))} | {status} |"
        )
    n_pass = sum(r["status"].startswith("pass") for r in rows)
    n_na = sum(r["status"].startswith("n/a") for r in rows)
    lines += ["", f"{n_pass} of {len(rows) - n_na} rows pass" + (f" ({n_na} not applicable: Keras cannot build the model on that backend)." if n_na else ".")]
    return "\n".join(lines) + "\n"


def render_support(rows: list[dict]) -> str:
    """The README's support table: one line per architecture, its TF status and other backends."""
    by_model: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["backend"]] = r
    lines = [
        "| family | architecture | input | groups (prunable / exact) | params at 25% removed "
        "| TensorFlow | JAX | PyTorch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, (family, size) in ARCHITECTURES.items():
        got = by_model.get(name, {})
        tf = got.get("tensorflow")
        cells = []
        for backend in BACKENDS:
            r = got.get(backend)
            cells.append(
                "–"
                if r is None
                else "pass"
                if r["status"].startswith("pass")
                else "n/a (Keras)"
                if r["status"].startswith("n/a")
                else "**FAIL**"
            )
        if tf is not None and "groups" in tf:
            groups = f"{tf['groups']} ({tf['prunable']} / {tf['exact']})"
            params = (
                f"{tf['params_before'] / 1e6:.1f}M → {tf['params_after'] / 1e6:.1f}M"
                if "params_after" in tf
                else "–"
            )
        else:
            groups = params = "not measured"
        lines.append(f"| {family} | {name} | {size} | {groups} | {params} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def merge(folder: Path) -> list[dict]:
    rows = []
    for backend in BACKENDS:
        part = folder / f"coverage_{backend}.json"
        if part.exists():
            rows += json.loads(part.read_text())
    _write_atomic(folder / "coverage.json", json.dumps(rows, indent=1))
    _write_atomic(
        folder / "coverage.md",
        render(rows) + "\n## Support table (for the README)\n\n" + render_support(rows),
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--models", nargs="+", help="architectures (default: all on TF, the subset elsewhere)")
    p.add_argument("--merge-only", action="store_true", help="only rebuild coverage.md/json from parts")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    add_update_flag(p)
    args = p.parse_args(argv)
    folder = results_dir(args.update)
    if args.worker:
        models = args.models or (list(ARCHITECTURES) if args.worker == "tensorflow" else SUBSET)
        run_backend(models, folder / f"coverage_{args.worker}.json")
        return 0
    if not args.merge_only:
        for backend in args.backends:
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
            cmd = [sys.executable, __file__, "--worker", backend] + (["--update"] if args.update else [])
            if args.models:
                cmd += ["--models", *args.models]
            print(f"== {backend}", flush=True)
            subprocess.run(cmd, env=env, check=False)
    rows = merge(folder)
    announce(folder)
    failed = [f"{r['model']}/{r['backend']}" for r in rows if r["status"] == "FAIL"]
    print(f"{len(rows) - len(failed)} of {len(rows)} pass" + (f"; failing: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
