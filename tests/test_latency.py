"""Latency: runtimes, group tables and their predictor, latency-targeted selection, breakdown.

The planner logic runs against a deterministic fake runtime (latency = overhead + cost
per MAC, optionally a penalty), so the tests assert exact predictions and targets without
timing anything. One smoke test times a small model on the real Keras runtime and checks
only what must hold: the selection carries a measured latency and the guard holds.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass, field

import keras
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp
from kerasprune import latency_model
from kerasprune.errors import PruningError, SelectionError
from kerasprune.latency import LatencyResult, paired_ratio
from kerasprune.latency_model import GroupTable, build_latency_model, group_subgraph
from kerasprune.runtimes import KerasRuntime, Runtime, get_runtime
from kerasprune.testing import randomize_batchnorm, randomize_weights


def _net(channels: int = 32, size: int = 12) -> keras.Model:
    """conv -> BN -> ReLU -> [conv -> BN -> ReLU -> conv -> BN] + skip -> conv -> pool -> Dense."""
    i = keras.Input((size, size, 3))
    x = L.ReLU()(L.BatchNormalization(name="bn0")(L.Conv2D(channels, 3, padding="same", name="c0")(i)))
    y = L.ReLU()(L.BatchNormalization(name="bn1")(L.Conv2D(channels, 3, padding="same", name="c1")(x)))
    y = L.BatchNormalization(name="bn2")(L.Conv2D(channels, 3, padding="same", name="c2")(y))
    x = L.ReLU()(L.Add(name="add")([x, y]))
    x = L.Conv2D(2 * channels, 3, padding="same", activation="relu", name="c3")(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(i, L.Dense(5, name="head")(x), name="latency_net")
    randomize_weights(model, seed=3)
    randomize_batchnorm(model, seed=4)
    return model


def _widths(model) -> list[int]:
    return [int(layer.filters) for layer in model.layers if isinstance(layer, L.Conv2D)]


@dataclass(frozen=True)
class MacRuntime(Runtime):
    """Deterministic stand-in: `overhead + per_mac * MACs * batch`, plus `penalty(model)`.

    `sub_scale` scales the MAC cost of group sub-graphs (named `group_*`), to make the
    tables disagree with whole models the way a real runtime can.
    """

    name = "fake"
    overhead: float = 2.0
    per_mac: float = 1e-5
    sub_scale: float = 1.0
    penalty: object = None
    calls: list = field(default_factory=list, compare=False)

    def measure(self, models, *, batch_size, warmup, runs, seed=0, prepared=None):
        self.calls.append(len(models))
        out = []
        for m in models:
            scale = self.sub_scale if m.name.startswith("group_") else 1.0
            ms = self.overhead + scale * self.per_mac * kp.count_flops(m) * batch_size
            ms += self.penalty(m) if self.penalty else 0.0
            out.append(LatencyResult(ms, ms, ms, batch_size, runs, warmup, keras.backend.backend(), "fake", times_ms=(ms,) * runs))
        return out


def _removed(graph, selection) -> np.ndarray:
    return kp.make_plan(graph, selection).flat_removed()


@pytest.fixture(autouse=True)
def _fresh_cache():
    latency_model.clear_cache()
    yield
    latency_model.clear_cache()


# -- tables and prediction -----------------------------------------------------------------
def test_group_table_interpolates_monotone_and_extrapolates():
    t = GroupTable(0, 40, (10, 20, 30, 40), (6.0, 4.0, 2.0, 0.0))
    assert [t.saving(k) for k in (40, 30, 25, 20, 10)] == pytest.approx([0, 2, 3, 4, 6])
    assert t.saving(5) == pytest.approx(7.0)  # the last segment's slope, below the narrowest width
    assert t.saving(45) == 0.0
    noisy = GroupTable(0, 40, (10, 20, 30, 40), (3.0, 4.0, -1.0, 0.0))  # noise: narrower measured slower
    assert noisy.saving(30) == 0.0 and noisy.saving(10) == pytest.approx(4.0)
    assert all(noisy.saving(k) >= noisy.saving(k + 1) for k in range(0, 40))


@pytest.mark.parametrize("subgraphs", [True, False], ids=["subgraphs", "whole-model"])
def test_prediction_is_exact_for_a_mac_linear_runtime(subgraphs):
    """With time linear in MACs, the tables plus the shared-layer correction predict every plan
    exactly; the plain sum of savings counts convolutions between two pruned groups twice."""
    model = _net()
    graph = kp.analyze(model)
    rt = MacRuntime()
    lm = build_latency_model(model, runtime=rt, graph=graph, widths=(0.75, 0.5, 0.25), subgraphs=subgraphs)
    assert lm.before == pytest.approx(rt.overhead + rt.per_mac * kp.count_flops(model))
    assert set(lm.tables) == {g.id for g in graph.prunable_groups}
    assert {t.source for t in lm.tables.values()} == {"subgraph" if subgraphs else "model"}
    for ratio, scope in ((0.3, "local"), (0.6, "global"), (0.45, "local")):
        sel = kp.select(model, "l1", ratio=ratio, scope=scope, graph=graph)
        pruned = kp.remove_filters(model, sel, graph=graph)
        truth = rt.measure([pruned], batch_size=1, warmup=0, runs=1)[0].median_ms
        flat = _removed(graph, sel)
        assert lm.predict(flat) == pytest.approx(truth, rel=1e-6)
        assert lm.predict_additive(flat) < truth  # double counting: too optimistic
    assert lm.predict(np.zeros_like(flat)) == pytest.approx(lm.before)


def test_group_subgraph_holds_the_groups_layers_and_leaves_the_model_alone():
    model = _net()
    graph = kp.analyze(model)
    nodes = {layer.name: len(layer._inbound_nodes) for layer in model.layers}
    weights = [w.numpy().copy() for w in model.weights]
    residual = graph.group_of("c0")
    sub = group_subgraph(graph, residual.id)
    names = {layer.name for layer in sub.layers if not isinstance(layer, keras.layers.InputLayer)}
    # producers c0, c2 (and their BNs), the Add, the consumers c1 and c3, and the ReLUs between
    assert {"c0", "bn0", "c1", "c2", "bn2", "add", "c3"} <= names
    assert not names & {"bn1", "dw", "head"}
    smaller = kp.remove_filters(sub, {"c0": list(range(8))})
    assert kp.count_flops(smaller) < kp.count_flops(sub)
    assert {layer.name: len(layer._inbound_nodes) for layer in model.layers} == nodes
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(weights, model.weights))


# -- targets, refinement, guard, cache -------------------------------------------------------
@pytest.mark.parametrize("batch_size", [pytest.param(1, marks=pytest.mark.backend), 4])
def test_latency_target_met_and_reported(batch_size):
    model = _net()
    rt = MacRuntime()
    sel = kp.select(model, "l1", target_latency=0.5, runtime=rt, latency_batch_size=batch_size)
    calls = len(rt.calls)
    pruned = kp.remove_filters(model, sel)
    truth = rt.measure([model, pruned], batch_size=batch_size, warmup=0, runs=1)
    assert sel.runtime == "fake" and sel.latency_batch_size == batch_size
    assert sel.latency_before_ms == pytest.approx(truth[0].median_ms)
    assert sel.latency_after_ms == pytest.approx(truth[1].median_ms)
    assert sel.latency_ratio <= 0.5 and sel.latency_ratio == pytest.approx(0.5, abs=0.025)
    assert sel.latency_predicted_ms == pytest.approx(sel.latency_after_ms, rel=1e-6)
    assert "latency (fake, batch" in sel.table()
    # one baseline, one call per group table, one measured candidate: the prediction was exact
    assert calls == 1 + len(kp.analyze(model).prunable_groups) + 1


def test_refinement_recalibrates_wrong_tables():
    """Tables that see half the real saving lead the first candidate astray; the measured
    candidate recalibrates the predictor, and the returned plan meets the target."""
    model = _net()
    rt = MacRuntime(sub_scale=0.5)
    sel = kp.select(model, "l1", target_latency=0.6, runtime=rt, latency_options={"max_refine": 3})
    tables = 1 + len(kp.analyze(model).prunable_groups)
    assert len(rt.calls) - tables >= 2  # at least one recalibration
    assert sel.latency_ratio == pytest.approx(0.6, rel=0.05)


def _misaligned_penalty(model) -> float:
    return 100.0 if any(w % 8 for w in _widths(model)) else 0.0


def test_guard_never_returns_a_plan_measured_slower(caplog):
    model = _net()
    rt = MacRuntime(penalty=_misaligned_penalty)  # tables (widths 24/16/8) never see the penalty
    with caplog.at_level(logging.WARNING, logger="kerasprune.latency_search"):
        sel = kp.select(model, "l1", target_latency=0.5, runtime=rt, latency_options={"max_refine": 0})
    assert len(sel) == 0 and sel.latency_after_ms == sel.latency_before_ms
    assert "no candidate was measured faster" in caplog.text
    aligned = kp.select(model, "l1", target_latency=0.5, runtime=rt, round_to=8)
    assert all(w % 8 == 0 for w in _widths(kp.remove_filters(model, aligned)))
    assert aligned.latency_ratio == pytest.approx(0.5, abs=0.1) and aligned.latency_ratio < 1


def test_unreachable_latency_target_says_what_was_measured():
    model = _net()
    rt = MacRuntime(overhead=1e4)  # the runtime's overhead dwarfs the model
    with pytest.raises(PruningError, match=r"target_latency=0.5 is unreachable on fake .* measured to keep 9\d\.\d%"):
        kp.select(model, "l1", target_latency=0.5, runtime=rt)


def test_tables_are_cached_in_memory_and_on_disk(tmp_path):
    model = _net()
    rt = MacRuntime()
    first = build_latency_model(model, runtime=rt, cache_dir=tmp_path)
    n = len(rt.calls)
    assert n == 1 + len(first.tables) and len(list(tmp_path.glob("*.json"))) == 1
    again = build_latency_model(model, runtime=rt)  # memory
    assert len(rt.calls) == n and again.tables == first.tables
    latency_model.clear_cache()
    from_disk = build_latency_model(model, runtime=rt, cache_dir=tmp_path)
    assert len(rt.calls) == n and from_disk.tables == first.tables and from_disk.before == first.before
    build_latency_model(model, runtime=rt, batch_size=2)  # another batch size: measured anew
    assert len(rt.calls) == 2 * n
    sel = kp.select(model, "l1", target_latency=0.5, runtime=rt)  # reuses the batch-1 tables
    assert len(rt.calls) == 2 * n + 1 and sel.latency_ratio < 1


def test_latency_options_are_checked():
    model = _net()
    with pytest.raises(PruningError, match="Unknown latency options"):
        kp.select(model, "l1", target_latency=0.5, runtime=MacRuntime(), latency_options={"wdiths": (0.5,)})
    with pytest.raises(PruningError, match=r"target_latency is the fraction to keep"):
        kp.select(model, "l1", target_latency=1.5)
    with pytest.raises(PruningError, match="Give only one of"):
        kp.select(model, "l1", ratio=0.5, target_latency=0.5)
    with pytest.raises(PruningError, match="runtime must be one of"):
        kp.select(model, "l1", target_latency=0.5, runtime="tvm")
    with pytest.raises(PruningError, match="statistic must be 'median' or 'min'"):
        kp.select(model, "l1", target_latency=0.5, runtime=MacRuntime(), latency_options={"statistic": "mean"})
    with pytest.raises(PruningError, match=r"widths are kept fractions"):
        build_latency_model(model, runtime=MacRuntime(), widths=(1.5,))
    with pytest.raises(PruningError, match="takes options"):
        get_runtime("litert", threads=2)


def test_selection_json_keeps_latency_fields_and_old_files_load():
    model = _net()
    sel = kp.select(model, "l1", target_latency=0.5, runtime=MacRuntime())
    back = kp.Selection.from_json(sel.to_json())
    for name in ("runtime", "latency_batch_size", "latency_before_ms", "latency_predicted_ms", "latency_after_ms"):
        assert getattr(back, name) == getattr(sel, name)
    assert dict(back.runtime_info) == dict(sel.runtime_info) and back.runtime_info["runtime"] == "fake"
    assert sel.runtime_info["statistic"] == "median" and sel.runtime_info["runs"] >= 20
    doc = json.loads(sel.to_json())
    old = {k: v for k, v in doc.items() if "latency" not in k and not k.startswith("runtime")}
    plain = kp.Selection.from_json(json.dumps(old))
    assert plain.runtime is None and plain.latency_ratio is None and dict(plain) == dict(sel)
    with pytest.raises(SelectionError, match="latency_after_ms"):
        kp.Selection.from_json(json.dumps({**doc, "latency_after_ms": "fast"}))


def test_next_macs_interpolates_between_measured_plans():
    from kerasprune.latency_search import _next_macs

    assert _next_macs([(1.0, 1.0)], 0.5) == (0.5, 0.5)  # nothing measured: proportional
    x, expect = _next_macs([(1.0, 1.0), (0.4, 0.3)], 0.5)  # bracketed: regula falsi
    assert x == pytest.approx(0.4 + 0.2 / 0.7 * 0.6) and expect == 0.5
    x, _ = _next_macs([(1.0, 1.0), (0.6, 0.8)], 0.5)  # not yet: the chord from (1, 1), extended
    assert x == pytest.approx(0.6 - 0.3 / 0.5)
    x, _ = _next_macs([(1.0, 1.0), (0.5, 0.6), (0.45, 0.595)], 0.5)  # two close, noisy plans
    assert x == pytest.approx(0.45 - 0.095 / (0.405 / 0.55))  # not the wild local secant
    assert _next_macs([(1.0, 1.0), (0.4, 0.7)], 0.5)[0] == pytest.approx(0.0)  # at 0: the planner's limit decides
    # noise: the cheaper plan measured slower; pooled to 0.5 over both, the crossing is at 0.5
    x, _ = _next_macs([(1.0, 1.0), (0.5, 0.4), (0.3, 0.6)], 0.5)
    assert x == pytest.approx(0.5)


def test_paired_ratio_uses_rounds():
    a = LatencyResult(2.0, 1.0, 9.0, 1, 3, 0, "tensorflow", times_ms=(1.0, 9.0, 2.0))
    b = LatencyResult(4.0, 2.0, 18.0, 1, 3, 0, "tensorflow", times_ms=(2.0, 18.0, 4.0))
    assert paired_ratio(a, b) == pytest.approx(0.5)


# -- the real Keras runtime -------------------------------------------------------------------
def _fold():
    if importlib.util.find_spec("kerasprune.deploy") is None:
        pytest.skip("kerasprune.deploy.fold_batchnorm is not in this checkout (issue 14, item 1)")
    from kerasprune.deploy import fold_batchnorm

    return fold_batchnorm


@pytest.mark.backend
@pytest.mark.parametrize("fold", [False, True], ids=["unfolded", "folded"])
def test_keras_runtime_measures_and_states_threads(fold):
    model = _net(channels=16, size=8)
    rt = KerasRuntime(transform=_fold() if fold else None)
    lat = kp.measure_latency(model, runtime=rt, batch_size=2, warmup=1, runs=3)
    assert lat.runtime == "keras" and lat.batch_size == 2 and len(lat.times_ms) == 3
    assert lat.threads >= 1 and lat.versions["keras"] == keras.__version__
    assert keras.backend.backend() in lat.versions
    assert rt.info()["transform"] == (None if not fold else "kerasprune.deploy.fold_batchnorm")
    with pytest.raises(PruningError, match="x= is supported on the 'keras' runtime only"):
        kp.measure_latency(model, runtime=MacRuntime(), x=np.zeros((1, 8, 8, 3), "float32"))
    if keras.backend.backend() != "tensorflow":
        with pytest.raises(PruningError, match="'litert' runtime exports the model, which needs the TensorFlow"):
            kp.measure_latency(model, runtime="litert")


@pytest.mark.backend
def test_latency_target_smoke_on_keras():
    """Real timing: nothing about speed is asserted beyond the guard.

    On a loaded machine (tests run on parallel workers) a model this small may measure no faster
    even with every removable channel gone; then the answer is the clear refusal, with the
    measurement, never a plan measured slower than the original.
    """
    model = _net(channels=48, size=24)
    try:
        sel = kp.select(
            model, "l1", target_latency=0.8, runtime="keras", latency_batch_size=2,
            latency_options={"widths": (0.5,), "runs": 3, "warmup": 1, "measure_runs": 5, "max_refine": 1},
        )
    except PruningError as e:
        assert "is unreachable on keras (batch 2)" in str(e) and "was measured to keep" in str(e)
        return
    assert sel.runtime == "keras" and sel.latency_before_ms > 0 and sel.latency_after_ms > 0
    assert sel.latency_predicted_ms is not None and sel.runtime_info["threads"] >= 1
    assert len(sel) == 0 or sel.latency_after_ms < sel.latency_before_ms  # the guard


# -- breakdown --------------------------------------------------------------------------------
def _small() -> keras.Model:
    i = keras.Input((8, 8, 3))
    x = L.ReLU()(L.BatchNormalization(name="bn0")(L.Conv2D(16, 3, padding="same", name="c0")(i)))
    x = L.Conv2D(32, 3, padding="same", activation="relu", name="c3")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(i, L.Dense(5, name="head")(x))
    randomize_batchnorm(model, seed=1)
    return model


@pytest.mark.backend
def test_latency_breakdown_has_a_row_per_layer_with_weights():
    model = _small()
    pruned = kp.remove_filters(model, {"c0": list(range(8)), "c3": list(range(16))})
    bd = kp.latency_breakdown(model, pruned, batch_size=2, warmup=1, runs=3)
    assert [r.key for r in bd.rows] == ["c0", "bn0", "c3", "head"]
    macs = kp.flops_by_layer(model)
    for r in bd.rows:
        assert np.isfinite([r.before_ms, r.after_ms, r.time_ratio, r.work_ratio]).all()
        assert r.before_ms >= 0 and r.after_ms >= 0 and r.macs_before == macs.get(r.key, 0)
        assert not r.flagged or r.time_ratio > bd.slack * r.work_ratio
    rows = {r.key: r for r in bd.rows}
    assert rows["c3"].work_ratio == pytest.approx(0.5 * 0.5)  # input and output halved
    assert rows["head"].work_ratio == pytest.approx(0.5)
    assert rows["bn0"].work_ratio == pytest.approx(0.5)  # no MACs: output size
    assert bd.total_before_ms > 0 and bd.overhead_ms >= 0 and bd.runtime["runtime"] == "keras"
    json.dumps(bd.to_dict())
    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(bd.table())
    assert "whole model" in console.export_text()


@dataclass(frozen=True)
class CopyRuntime(MacRuntime):
    """`MacRuntime` plus a cost per input element (the data moved in and out of a call)."""

    per_value: float = 1e-3

    def measure(self, models, *, batch_size, warmup, runs, seed=0, prepared=None):
        out = super().measure(models, batch_size=batch_size, warmup=warmup, runs=runs)
        for i, m in enumerate(models):
            ms = out[i].median_ms + self.per_value * batch_size * int(np.prod(m.inputs[0].shape[1:]))
            out[i] = LatencyResult(ms, ms, ms, batch_size, runs, warmup, "fake", "fake", times_ms=(ms,) * runs)
        return out


def test_breakdown_subtracts_each_models_own_overhead():
    # A pruned layer reads a narrower input: its dispatch overhead is smaller than the original's.
    model = _small()
    pruned = kp.remove_filters(model, {"c0": list(range(8)), "c3": list(range(16))})
    bd = kp.latency_breakdown(model, pruned, runtime=CopyRuntime(per_mac=1e-4), batch_size=2, runs=1)
    rows = {r.key: r for r in bd.rows}
    assert rows["bn0"].before_ms == 0 and rows["bn0"].after_ms == 0  # no MACs: all of its time is overhead
    for key in ("c3", "head"):  # MAC-linear compute: the time falls exactly with the MACs
        assert rows[key].time_ratio == pytest.approx(rows[key].work_ratio)
        assert not rows[key].flagged


def test_compare_with_breakdown():
    model = _net(channels=8, size=8)
    pruned = kp.remove_filters(model, {"c0": [0, 1, 2, 3]})
    comp = kp.compare(model, pruned, runs=2, warmup=1, breakdown=True)
    assert comp.breakdown is not None and len(comp.breakdown.rows) == len([m for m in model.layers if m.weights])
    doc = json.loads(json.dumps(comp.to_dict()))
    assert doc["breakdown"]["rows"][0]["key"] == "c0" and doc["before"]["latency"]["runtime"] == "keras"
    assert kp.compare(model, pruned, latency=False).breakdown is None


# -- CLI --------------------------------------------------------------------------------------
def test_cli_report_breakdown_and_prune_target_latency(tmp_path, capsys, monkeypatch):
    from kerasprune.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    model = _small()
    before, after = tmp_path / "a.keras", tmp_path / "b.keras"
    model.save(before)
    kp.remove_filters(model, {"c3": list(range(16))}).save(after)
    code = main(["report", str(before), str(after), "--runs", "10", "--breakdown", "--json", str(tmp_path / "r.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Per-layer latency (keras, batch 1)" in out and "whole model" in out and "Layers whose time" in out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [r["key"] for r in doc["breakdown"]["rows"]] == ["c0", "bn0", "c3", "head"]
    code = main(["report", str(before), str(after), "--runs", "10", "--runtime", "tvm"])
    out, err = capsys.readouterr()
    assert code == 1 and "runtime must be one of" in err
    code = main(["prune", str(before), "--target-latency", "1.0", "--dry-run", "--latency-batch-size", "2"])
    out, err = capsys.readouterr()
    assert code == 1 and "removes no filters" in err  # a target of 100% keeps everything
    assert "latency (keras, batch 2)" in out  # ... measured all the same
