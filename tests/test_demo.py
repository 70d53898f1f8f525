"""`kerasprune demo --quick` runs end to end: every step, its claims, and its files."""

from __future__ import annotations

import json

import keras
import matplotlib.image as mpimg
import numpy as np
import pytest

from kerasprune import demo
from kerasprune.cli import main

pytestmark = pytest.mark.isolated  # trains: a native crash must fail the test, not the run


def test_demo_model_has_the_promised_topology():
    model = demo.build_model()
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"Conv2D", "BatchNormalization", "ReLU", "Add", "Flatten", "Dense"} <= kinds
    assert model.output_shape == (None, 10)
    (x_tr, y_tr), (x_te, y_te) = demo.load_data()
    assert x_tr.shape[1:] == (8, 8, 1) and len(x_tr) + len(x_te) == 1797
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0 and set(np.unique(y_te)) == set(range(10))


def test_demo_quick_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out_dir = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    for text in ("The classic recipe vs kerasprune", "Before / after", "params", "FLOPs (MACs)", "latency"):
        assert text in out

    report = json.loads((out_dir / "report.json").read_text())
    rows = report["classic_vs_kerasprune"]
    assert len(rows) == 3
    n_test = 540
    for row in rows:
        assert row["params_removed"] < row["params_before"]
        # kerasprune: masking computes exactly what removal computes ...
        assert row["masked_vs_removed"] < 1e-4
        assert abs(row["acc_masked"] - row["acc_removed"]) <= 1 / n_test
        # ... while the classic recipe (kernel + bias zeroed) still lets the filters act.
        assert row["classic_vs_removed"] > 100 * max(row["masked_vs_removed"], 1e-7)
    assert max(r["classic_vs_removed"] for r in rows) > 1e-2

    acc = report["accuracy"]
    assert acc["trained"] > 0.8  # digits are easy; two epochs suffice
    cmp = report["comparison"]
    assert cmp["flops_ratio"] <= 0.55 and cmp["params_ratio"] < 1
    assert cmp["after"]["accuracy"] == acc["finetuned"]

    original = keras.saving.load_model(out_dir / "original.keras")
    pruned = keras.saving.load_model(out_dir / "pruned.keras")
    assert pruned.count_params() == cmp["after"]["params"] < original.count_params() == cmp["before"]["params"]
    kept = {k: original.get_layer(k).filters - len(v) for k, v in report["selection"]["filters"].items()}
    assert kept == {k: pruned.get_layer(k).filters for k in kept}
    for name in ("channels", "scores", "stages", "overview"):
        png = out_dir / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert mpimg.imread(png).shape[0] > 100
