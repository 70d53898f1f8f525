"""The demo a new user runs first (`kerasprune demo`).

It trains a small residual CNN on scikit-learn's bundled `load_digits` images
(8x8, no download), then:

1. removes filters the three ways the classic recipe does - an index, a
   threshold on the mean kernel weight, a boolean mask - and shows that the
   masked and the physically removed models agree exactly, while the classic
   recipe (zero the kernel slice and bias only) leaks through BatchNorm;
2. prunes by a criterion (global L1 down to half the MACs), fine-tunes, and
   prints the before/after table and writes plots, models and a JSON report.

`run()` returns a `DemoResult` with every number shown; output goes to the
rich `console` given (none by default: library code does not print).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
from keras import layers

from kerasprune.errors import ModelSaveError
from kerasprune.io import save_model, write_text
from kerasprune.masking import mask_filters
from kerasprune.report import Comparison, accuracy, compare, predict
from kerasprune.surgery import remove_filters
from kerasprune.testing import copy_model

SEED = 0


@dataclass(frozen=True)
class DemoRow:
    """One way of selecting filters, applied four ways to the trained model.

    Attributes:
        way: How the filters were chosen.
        selection: Layer -> removed indices as given by the user.
        params_before: Parameters of the trained model (= the masked model's).
        params_removed: Parameters after physical removal.
        acc_classic: Test accuracy after the classic recipe (kernel + bias zeroed).
        acc_masked: Test accuracy after `kerasprune.mask_filters`.
        acc_removed: Test accuracy after `kerasprune.remove_filters`.
        masked_vs_removed: Largest |difference| of predicted probabilities, masked vs removed.
        classic_vs_removed: The same for the classic recipe (the BatchNorm leak).
    """

    way: str
    selection: Mapping[str, tuple[int, ...]]
    params_before: int
    params_removed: int
    acc_classic: float
    acc_masked: float
    acc_removed: float
    masked_vs_removed: float
    classic_vs_removed: float


@dataclass(frozen=True)
class DemoResult:
    """Everything the demo measured.

    Attributes:
        rows: The three classic selections (`DemoRow`).
        accuracy_trained: Test accuracy of the trained model.
        accuracy_pruned: Test accuracy right after criterion pruning.
        accuracy_finetuned: Test accuracy after fine-tuning the pruned model.
        comparison: Trained vs pruned-and-fine-tuned (`report.Comparison`).
        files: Name -> path of every file written (models, plots, report).
        seconds: Wall time of the whole demo.
    """

    rows: tuple[DemoRow, ...]
    accuracy_trained: float
    accuracy_pruned: float
    accuracy_finetuned: float
    comparison: Comparison
    files: Mapping[str, Path] = field(default_factory=dict)
    seconds: float = 0.0


def load_data(seed: int = SEED):
    """Digits as `(x_train, y_train), (x_test, y_test)`; images 8x8x1 scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int64")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
    return (x_tr, y_tr), (x_te, y_te)


def _block(x, filters: int, name: str):
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def build_model() -> keras.Model:
    """conv-BN-ReLU x2 with a residual Add, pooling, conv-BN-ReLU, Flatten -> Dense(10)."""
    inp = keras.Input((8, 8, 1), name="image")
    a = _block(inp, 32, "block1")
    b = _block(a, 32, "block2")
    x = layers.Add(name="residual")([a, b])
    x = layers.MaxPooling2D(name="pool")(x)
    x = _block(x, 64, "block3")
    x = layers.Flatten(name="flatten")(x)
    out = layers.Dense(10, activation="softmax", name="classifier")(x)
    return keras.Model(inp, out, name="digits_cnn")


def _compile(model: keras.Model, lr: float) -> None:
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy", metrics=["accuracy"])


def classic_zero(model: keras.Model, selection: Mapping[str, np.ndarray]) -> None:
    """The classic recipe, in place: zero each named conv's kernel slice and bias - nothing else."""
    for name, idx in selection.items():
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        kernel[..., idx] = 0.0
        bias[idx] = 0.0
        layer.set_weights([kernel, bias])


def _three_ways(model: keras.Model, x_test, y_test) -> list[DemoRow]:
    """Index, mean-weight threshold and boolean mask - each classic-zeroed, masked and removed."""
    means = model.get_layer("block2_conv").get_weights()[0].mean(axis=(0, 1, 2))
    threshold = float(np.sort(means)[4])  # the 4 filters with the lowest mean weight fall below
    mask = np.zeros(64, dtype=bool)
    mask[::8] = True
    ways = [
        ("block3_conv[4]", {"block3_conv": np.array([4])}),
        (f"block2_conv mean<{threshold:.3f}", {"block2_conv": np.flatnonzero(means < threshold)}),
        ("mask on block3_conv", {"block3_conv": mask}),
    ]
    data = (x_test, y_test)
    rows = []
    for way, sel in ways:
        removed = remove_filters(model, sel)
        masked = copy_model(model)
        mask_filters(masked, sel)
        classic = copy_model(model)
        classic_zero(classic, {k: np.flatnonzero(v) if v.dtype == bool else v for k, v in sel.items()})
        p_removed = predict(removed, x_test)
        rows.append(
            DemoRow(
                way=way,
                selection={k: tuple(int(i) for i in (np.flatnonzero(v) if v.dtype == bool else v)) for k, v in sel.items()},
                params_before=model.count_params(),
                params_removed=removed.count_params(),
                acc_classic=accuracy(classic, data),
                acc_masked=accuracy(masked, data),
                acc_removed=accuracy(removed, data),
                masked_vs_removed=float(np.abs(predict(masked, x_test) - p_removed).max()),
                classic_vs_removed=float(np.abs(predict(classic, x_test) - p_removed).max()),
            )
        )
    return rows


#: What the demo writes into its folder.
FILES = ("original.keras", "pruned.keras", "report.json")


def existing_files(out_dir: str | os.PathLike) -> list[str]:
    """The names of the demo's files (models, report, plots) already in `out_dir`."""
    from kerasprune.plots import plot_names

    out = Path(out_dir)
    return [n for n in (*FILES, *plot_names()) if (out / n).exists()]


def run(
    quick: bool = False,
    out_dir: str | os.PathLike = "kerasprune-demo",
    *,
    console=None,
    target_flops: float = 0.5,
    overwrite: bool = False,
) -> DemoResult:
    """Train, prune three classic ways and by criterion, fine-tune, report and plot.

    Args:
        quick: Fewer epochs and timing runs (for the test suite); same steps.
        out_dir: Folder for `original.keras`, `pruned.keras`, the PNG plots and
            `report.json` (created if needed).
        console: A `rich.console.Console` to print to; None prints nothing.
        target_flops: Fraction of the MACs the criterion-pruned model keeps.
        overwrite: Replace the demo's files when `out_dir` already holds some; without
            it nothing is trained or written in that case.

    Returns:
        A `DemoResult`.

    Raises:
        ModelSaveError: `out_dir` already holds one of the demo's files and `overwrite`
            is False (checked before anything runs).

    Example:
        >>> result = kerasprune.demo.run(quick=True, out_dir="demo-out")
    """
    from rich.console import Console

    import kerasprune as kp
    from kerasprune.criteria import score
    from kerasprune.plots import plot_pruning

    t0 = time.perf_counter()
    con = console if console is not None else Console(quiet=True)
    out = Path(out_dir)
    existing = existing_files(out)
    if existing and not overwrite:
        raise ModelSaveError(
            f"{out} already holds {', '.join(existing)}; pass --force (overwrite=True) to replace them, "
            "or choose another folder with --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    epochs, ft_epochs, runs = (2, 1, 5) if quick else (5, 2, 30)
    keras.utils.set_random_seed(SEED)
    (x_tr, y_tr), (x_te, y_te) = load_data()
    test = (x_te, y_te)

    con.rule("[bold]kerasprune demo")
    con.print(f"Digits (scikit-learn, 8x8): {len(x_tr)} training and {len(x_te)} test images; backend {keras.backend.backend()}")
    model = build_model()
    _compile(model, 3e-3)
    with con.status(f"Training a residual CNN for {epochs} epochs..."):
        model.fit(x_tr, y_tr, epochs=epochs, batch_size=32, verbose=0)
    acc_trained = accuracy(model, test)
    con.print(f"Trained [bold]{model.name}[/]: {model.count_params():,} params, test accuracy {acc_trained:.2%}")

    con.rule("1. The classic recipe vs kerasprune")
    rows = _three_ways(model, x_te, y_te)
    con.print(f"Three classic selections; the trained model has {model.count_params():,} params.")
    con.print(_rows_table(rows))
    con.print(
        "classic = zero the filter's kernel and bias only: BatchNorm still emits "
        "beta - gamma*mean/sqrt(var+eps), and the residual partner of block2_conv keeps the channel, so "
        "the filter still acts (last column). kerasprune masks BN, partners and consumers too: "
        "masked == removed."
    )

    con.rule(f"2. Prune by criterion: global L1 to {target_flops:.0%} of the FLOPs, then fine-tune")
    graph = kp.analyze(model)
    with con.status("Selecting filters..."):
        selection = kp.select(model, "l1", scope="global", target_flops=target_flops, graph=graph)
        pruned = remove_filters(model, selection, graph=graph)
    acc_pruned = accuracy(pruned, test)
    _compile(pruned, 1e-3)
    with con.status(f"Fine-tuning for {ft_epochs} epoch(s)..."):
        pruned.fit(x_tr, y_tr, epochs=ft_epochs, batch_size=32, verbose=0)
    acc_ft = accuracy(pruned, test)
    con.print(f"Test accuracy: trained {acc_trained:.2%} -> pruned {acc_pruned:.2%} -> fine-tuned {acc_ft:.2%}")

    files = {
        "original": save_model(model, out / "original.keras", overwrite=overwrite),
        "pruned": save_model(pruned, out / "pruned.keras", overwrite=overwrite),
    }
    with con.status("Measuring latency..."):
        comparison = compare(
            model, pruned, data=test, runs=runs, before_path=files["original"], after_path=files["pruned"]
        )
    comparison = Comparison(
        replace(comparison.before, name="trained"), replace(comparison.after, name="pruned + fine-tuned")
    )
    con.print(comparison.table(title="Before / after"))

    plan = kp.make_plan(graph, selection)
    files.update(plot_pruning(out, model, pruned, plan=plan, scores=score(model, "l1", graph=graph), overwrite=overwrite))
    seconds = time.perf_counter() - t0
    result = DemoResult(tuple(rows), acc_trained, acc_pruned, acc_ft, comparison, files, seconds)
    report = {
        "classic_vs_kerasprune": [asdict(r) for r in rows],
        "accuracy": {"trained": acc_trained, "pruned": acc_pruned, "finetuned": acc_ft},
        "comparison": comparison.to_dict(),
        "selection": json.loads(selection.to_json()),
        "seconds": seconds,
    }
    files["report"] = write_text(json.dumps(report, indent=2, default=_jsonable), out / "report.json", overwrite=overwrite)
    con.print(f"Wrote {', '.join(str(p) for p in files.values())}")
    con.print(f"Done in {seconds:.1f} s. Next: [bold]kerasprune inspect {files['original']}[/]")
    return result


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _rows_table(rows: list[DemoRow]):
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True, caption="acc: test accuracy. |dp|: largest change of a predicted probability vs the removed model")
    for col in (
        "filters removed",
        "params",
        "acc\nclassic",
        "acc\nmasked",
        "acc\nremoved",
        "|dp|\nmasked",
        "|dp|\nclassic",
    ):
        first = col == "filters removed"
        table.add_column(col, justify="left" if first else "right", no_wrap=first)
    for r in rows:
        table.add_row(
            r.way,
            f"{r.params_removed:,}",
            f"{r.acc_classic:.1%}",
            f"{r.acc_masked:.1%}",
            f"{r.acc_removed:.1%}",
            f"[green]{r.masked_vs_removed:.0e}[/]",
            f"[red]{r.classic_vs_removed:.0e}[/]",
        )
    return table
