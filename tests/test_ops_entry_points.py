"""Every entry point of kerasprune on graphs with keras.ops nodes and weightless layers.

Regression: `select` (every mode), `score`, the cost model, sensitivity, SoftPruning,
prune_and_finetune, the reports and the CLI read `layer.weights` of every node and
crashed with `AttributeError: 'Relu' object has no attribute 'weights'` on any model with
a keras.ops call on a symbolic tensor (`x = ops.relu(Conv2D(8, 3)(inp))`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import layers as L
from keras import ops

import kerasprune as kp
from kerasprune.cli import main
from kerasprune.flops import CostModel
from kerasprune.report import channel_counts, stage_breakdown
from kerasprune.testing import copy_model, max_output_difference, random_input
from models import finish

CRITERIA = ("l1", "l2", "mean", "fpgm", "bn_gamma", "zero", "random", "apoz", "mean_activation", "taylor")
LOSS = "sparse_categorical_crossentropy"


def ops_model() -> keras.Model:
    """Preprocessing arithmetic, ops.relu between convs, swish, ops.pad, a CSP-style ops.split."""
    i = keras.Input((8, 8, 3))
    x = (i / 127.5) - 1.0
    x = L.BatchNormalization(name="bn1")(L.Conv2D(8, 3, padding="same", name="c1")(x))
    x = ops.relu(x)
    x = keras.activations.swish(L.Conv2D(8, 3, padding="same", name="c2")(x))
    x = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    a, b = ops.split(x, 2, axis=-1)
    x = ops.concatenate([a, L.Conv2D(4, 3, padding="same", name="c3")(b)], axis=-1)
    x = L.Activation("relu")(L.Dropout(0.1)(x))  # weightless layers
    x = L.GlobalAveragePooling2D()(x)
    return finish(i, L.Dense(3, name="head")(x), name="ops_net")


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 3)).astype("float32") * 50, rng.integers(0, 3, n)


def test_the_minimal_case_selects_and_prunes():
    i = keras.Input((8, 8, 3))
    x = ops.relu(L.Conv2D(8, 3, name="c1")(i))
    model = finish(i, L.Dense(2, name="head")(L.Flatten()(L.Conv2D(4, 3, name="c2")(x))))
    sel = kp.select(model, "l1", ratio=0.25)
    assert len(sel["c1"]) == 2
    assert kp.remove_filters(model, sel).get_layer("c1").filters == 6


@pytest.mark.backend
def test_every_criterion_selects_on_an_ops_model():
    model = ops_model()
    x, y = _data()
    data = [(x[:8], y[:8]), (x[8:], y[8:])]
    graph = kp.analyze(model)
    assert [g.layers for g in graph.prunable_groups] == [("c1",), ("c2",), ("c3",)]
    for crit in CRITERIA:
        want = ["c1"] if crit == "bn_gamma" else ["c1", "c2", "c3"]  # only c1 has a BatchNormalization
        sel = kp.select(model, crit, ratio=0.25, data=data, loss=LOSS, graph=graph)
        assert sorted(sel) == want, (crit, sel.skipped)
        scores = kp.score(model, crit, data=data, loss=LOSS, graph=graph)
        assert len(scores) == len(want) and all(np.isfinite(s).all() for s in scores.values())
    for scope in ("local", "global"):
        assert kp.select(model, "l2", count=1, scope=scope, graph=graph)
    assert kp.select(model, "l1", threshold=0.5, graph=graph) is not None


@pytest.mark.backend
def test_targets_and_the_cost_model_agree_with_the_pruned_model():
    model = ops_model()
    assert set(kp.flops_by_layer(model)) == {"c1", "c2", "c3", "head"}
    sel = kp.select(model, "l1", target_flops=0.6, round_to=2)
    pruned = kp.remove_filters(model, sel)
    cost = CostModel(kp.analyze(model))
    flat = sel.plan_for(model).flat_removed()
    assert cost.flops(flat) == kp.count_flops(pruned) <= 0.6 * kp.count_flops(model) * 1.03
    assert cost.params(flat) == kp.count_params(pruned) == pruned.count_params()
    masked = copy_model(model)
    kp.mask_filters(masked, sel)
    assert max_output_difference(pruned, masked, random_input(model)) < 1e-4


def test_sensitivity_and_reports_on_an_ops_model():
    model = ops_model()
    x, _ = _data(8)
    result = kp.sensitivity(
        model, lambda m: float(np.mean(np.asarray(m.predict(x, verbose=0)))), ratios=(0.5,), progress=False
    )
    assert {r.group for r in result.rows} == {g.id for g in kp.analyze(model).prunable_groups}
    pruned = kp.remove_filters(model, result.plan(tolerance=1e9))
    stages = stage_breakdown(model)
    assert sum(p for p, _ in stages.values()) == model.count_params()
    assert sum(m for _, m in stages.values()) == kp.count_flops(model)
    assert channel_counts(model) == {"c1": 8, "c2": 8, "c3": 4, "head": 3}
    comparison = kp.compare(model, pruned, latency=False)
    assert comparison.to_dict()["after"]["params"] == pruned.count_params()


def test_fold_batchnorm_on_an_ops_model():
    from kerasprune.deploy import fold_batchnorm

    model = ops_model()
    folded = fold_batchnorm(model)
    assert "bn1" not in [layer.name for layer in folded.layers]
    assert max_output_difference(model, folded, random_input(model)) < 1e-5


@pytest.fixture()
def model_file(tmp_path):
    path = tmp_path / "ops_net.keras"
    ops_model().save(path)
    x, y = _data()
    np.savez(tmp_path / "data.npz", x=x, y=y)
    return path


def test_cli_inspect_prune_report_on_an_ops_model(model_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    data = tmp_path / "data.npz"
    assert main(["inspect", str(model_file), "--criterion", "taylor", "--data", str(data), "--loss", LOSS]) == 0
    out = capsys.readouterr().out
    assert "ops_net" in out and "3 prunable" in out
    out_file = tmp_path / "pruned.keras"
    code = main(["prune", str(model_file), "-o", str(out_file), "--criterion", "apoz", "--ratio", "0.25",
                 "--data", str(data), "--verify", "--runs", "0", "--report", str(tmp_path / "r.json")])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "verify: max |removed - masked|" in out and "OK" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["comparison"]["after"]["params"] < report["comparison"]["before"]["params"]
    assert main(["report", str(model_file), str(out_file), "--runs", "0"]) == 0
    assert "params" in capsys.readouterr().out


def test_soft_pruning_and_prune_and_finetune_on_an_ops_model(tmp_path):
    """Training runs in a subprocess (a native crash fails this test instead of the run)."""
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import numpy as np, keras
        import kerasprune as kp
        from test_ops_entry_points import ops_model, _data
        x, y = _data(32)
        model = ops_model()
        model.compile(optimizer="adam", loss="{LOSS}", metrics=["accuracy"])
        soft = kp.SoftPruning("l1", ratio=0.25)
        model.fit(x, y, epochs=2, batch_size=16, callbacks=[soft], verbose=0)
        small = soft.finalize()
        small_ft, hist = kp.prune_and_finetune(
            model, target_ratio=0.25, steps=1, train_data=(x, y), val_data=(x, y), epochs_per_step=1,
            fit_options={{"batch_size": 16, "verbose": 0}},
        )
        print(json.dumps({{"soft": [small.get_layer(n).filters for n in ("c1", "c2", "c3")],
                           "ft": [small_ft.get_layer(n).filters for n in ("c1", "c2", "c3")],
                           "rows": len(hist.rows)}}))
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"soft": [6, 6, 3], "ft": [6, 6, 3], "rows": 2}
