"""Sensitivity scan: table shape, known monotone curves, plan, plot, cache, parallel workers."""

import json
import os

import keras
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp

SCALE1 = np.arange(1, 9, dtype="float32")  # c1 filter j has weights ~ (j + 1): l1 ranks them in order
SCALE2 = np.array([1.0, 4.0, 2.0, 8.0], dtype="float32")


def _toy():
    """Positive 1x1 convs + ReLU + GAP + ones head: output = x̄ @ K1 @ K2 @ 1, monotone in every filter."""
    i = keras.Input((4, 4, 3))
    x = L.Conv2D(8, 1, use_bias=False, activation="relu", name="c1")(i)
    x = L.Conv2D(4, 1, use_bias=False, activation="relu", name="c2")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(i, L.Dense(1, use_bias=False, name="head")(x))
    rng = np.random.default_rng(0)
    k1 = rng.uniform(0.5, 1.0, (1, 1, 3, 8)).astype("float32") * SCALE1
    k2 = rng.uniform(0.5, 1.0, (1, 1, 8, 4)).astype("float32") * SCALE2
    model.get_layer("c1").set_weights([k1])
    model.get_layer("c2").set_weights([k2])
    model.get_layer("head").set_weights([np.ones((4, 1), "float32")])
    return model, k1[0, 0], k2[0, 0]


X = np.random.default_rng(1).uniform(0, 1, (16, 4, 4, 3)).astype("float32")


def mean_output(model):
    return float(np.mean(keras.ops.convert_to_numpy(model(X))))


def _expected(k1, k2, keep1, keep2):
    xbar = X.mean(axis=(1, 2))
    return float(np.mean((xbar @ k1[:, keep1] @ k2[np.ix_(keep1, keep2)]).sum(axis=1)))


@pytest.mark.backend
def test_table_shape_and_known_monotone_curves(tmp_path):
    model, k1, k2 = _toy()
    before = [w.numpy().copy() for w in model.weights]
    res = kp.sensitivity(model, mean_output, ratios=[0.25, 0.5, 0.75], criterion="l1", progress=False)
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(before, model.weights))
    assert len(res.rows) == 2 * 3 and res.groups == (0, 1)
    assert [r.layers for r in res.rows[:3]] == [("c1",)] * 3
    assert [r.removed for r in res.rows] == [2, 4, 6, 1, 2, 3]
    # independent numpy: c1 loses its weakest filters (0, 1, ...), c2 loses 0, then 2, then 1
    assert res.baseline == pytest.approx(_expected(k1, k2, list(range(8)), list(range(4))), rel=1e-5)
    for r, n in zip(res.rows[:3], (2, 4, 6)):
        assert r.metric == pytest.approx(_expected(k1, k2, list(range(n, 8)), list(range(4))), rel=1e-5)
    for r, keep in zip(res.rows[3:], ([1, 2, 3], [1, 3], [3])):
        assert r.metric == pytest.approx(_expected(k1, k2, list(range(8)), keep), rel=1e-5)
    for gid in res.groups:
        ratios, values = res.curve(gid)
        assert ratios.tolist() == [0.0, 0.25, 0.5, 0.75]
        assert np.all(np.diff(values) < 0)  # more removal hurts more
    assert all(r.drop == pytest.approx(res.baseline - r.metric) for r in res.rows)
    # outputs: dict, plain table, PNG
    d = res.to_dict()
    assert d["criterion"] == "l1" and len(d["rows"]) == 6 and json.dumps(d)
    text = res.table()
    assert len(text.splitlines()) == 2 + 6 and "c2" in text
    png = res.plot(tmp_path / "s.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plan_from_tolerance_feeds_remove_filters():
    model, k1, k2 = _toy()
    res = kp.sensitivity(model, mean_output, ratios=[0.25, 0.5, 0.75], progress=False)
    drops = {gid: [r.drop for r in res.rows if r.group == gid] for gid in res.groups}
    tol = (drops[0][1] + drops[0][2]) / 2  # c1 tolerates 50%; c2's first drop decides for it
    ratios = res.ratios_for(tol)
    assert ratios[0] == 0.5
    ok = [d <= tol for d in drops[1]]
    n_ok = ok.index(False) if False in ok else len(ok)
    assert ratios[1] == [0.0, 0.25, 0.5, 0.75][n_ok]
    sel = res.plan(tol)
    assert isinstance(sel, kp.Selection)
    assert list(sel["c1"]) == [0, 1, 2, 3]
    small = kp.remove_filters(model, sel)
    assert small.get_layer("c1").filters == 4
    assert res.plan(0.0) == {} or all(len(v) == 0 for v in res.plan(0.0).values())
    with pytest.raises(kp.PruningError, match="tolerance must be"):
        res.plan(-1.0)


def test_cache_resumes_without_reevaluating(tmp_path):
    model, _, _ = _toy()
    cache = tmp_path / "scan.json"
    calls = []

    def metric(m):
        calls.append(1)
        return mean_output(m)

    first = kp.sensitivity(model, metric, ratios=[0.5], cache=cache, progress=False)
    assert len(calls) == 3  # baseline + one per group
    content = json.loads(cache.read_text())
    assert len(content["results"]) == 3
    # an interrupted scan: drop one entry, resume -> only that one is evaluated again
    key = sorted(k for k in content["results"] if k.endswith("g1:r0.5"))[0]
    del content["results"][key]
    cache.write_text(json.dumps(content))
    calls.clear()
    second = kp.sensitivity(model, metric, ratios=[0.5], cache=cache, progress=False)
    assert len(calls) == 1
    assert [r.metric for r in second.rows] == [r.metric for r in first.rows]
    # different weights -> different fingerprint -> nothing reused
    model.get_layer("head").set_weights([2 * np.ones((4, 1), "float32")])
    calls.clear()
    kp.sensitivity(model, metric, ratios=[0.5], cache=cache, progress=False)
    assert len(calls) == 3


def test_named_metric_on_compiled_model_and_parallel_workers():
    model, _, _ = _toy()
    model.compile(loss="mse", metrics=["mae"])
    y = np.zeros((len(X), 1), "float32")
    serial = kp.sensitivity(model, "loss", val_data=(X, y), ratios=[0.25, 0.75], progress=False)
    assert serial.mode == "min"  # lower loss is better: removing positive filters lowers the output -> loss
    assert all(r.drop < 0 for r in serial.rows)  # ...falls towards the zero target: negative drop
    parallel = kp.sensitivity(model, "loss", val_data=(X, y), ratios=[0.25, 0.75], n_jobs=2, progress=False)
    assert [r.metric for r in parallel.rows] == pytest.approx([r.metric for r in serial.rows], rel=1e-5)
    assert parallel.baseline == pytest.approx(serial.baseline, rel=1e-5)


def test_sensitivity_errors():
    model, _, _ = _toy()
    with pytest.raises(kp.PruningError, match=r"ratios must be numbers in \(0, 1\)"):
        kp.sensitivity(model, mean_output, ratios=[0.5, 1.0], progress=False)
    with pytest.raises(kp.PruningError, match="needs val_data"):
        kp.sensitivity(model, "accuracy", progress=False)
    with pytest.raises(kp.PruningError, match="needs a compiled model"):
        kp.sensitivity(model, "accuracy", val_data=(X, X), progress=False)
    with pytest.raises(kp.PruningError, match="'head' .*not prunable|not prunable"):
        kp.sensitivity(model, mean_output, groups=["head"], progress=False)
    with pytest.raises(kp.PruningError, match="must return a number"):
        kp.sensitivity(model, lambda m: "good", ratios=[0.5], progress=False)
    bad = os.fspath(os.path.join(os.path.dirname(__file__), "conftest.py"))
    with pytest.raises(kp.PruningError, match="not a readable JSON cache"):
        kp.sensitivity(model, mean_output, ratios=[0.5], cache=bad, progress=False)
