"""kerasprune.report (latency, comparison, stages) and kerasprune.plots (valid PNGs)."""

from __future__ import annotations

import dataclasses
import json

import keras
import matplotlib.image as mpimg
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp
from kerasprune import plots, report
from kerasprune.errors import PruningError
from kerasprune.testing import randomize_batchnorm

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _model() -> keras.Model:
    """8x8x1 -> conv(4) -> BN -> ReLU -> pool -> conv(6) -> Flatten -> Dense(3)."""
    i = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3, padding="same", name="c1")(i)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU()(x)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Conv2D(6, 3, padding="same", name="c2")(x)
    x = L.Flatten(name="flat")(x)
    model = keras.Model(i, L.Dense(3, activation="softmax", name="head")(x))
    randomize_batchnorm(model)
    return model


def assert_png(path, min_size=50):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > min_size and img.shape[1] > min_size
    assert img[..., :3].std() > 0.01, f"{path} is blank"


@pytest.mark.backend
def test_measure_latency():
    model = _model()
    lat = report.measure_latency(model, batch_size=4, warmup=1, runs=5)
    assert lat.min_ms <= lat.median_ms <= lat.max_ms
    assert lat.min_ms > 0
    assert (lat.batch_size, lat.runs, lat.warmup) == (4, 5, 1)
    assert lat.backend == keras.backend.backend()
    assert lat.per_sample_ms == pytest.approx(lat.median_ms / 4)
    x = np.zeros((3, 8, 8, 1), "float32")
    assert report.measure_latency(model, x=x, warmup=0, runs=1).batch_size == 3
    with pytest.raises(PruningError, match="runs >= 1"):
        report.measure_latency(model, runs=0)


@pytest.mark.backend
def test_compare_pruned_model(tmp_path):
    model = _model()
    pruned = kp.remove_filters(model, {"c1": [0, 2], "c2": [5]})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, 20)
    comp = report.compare(model, pruned, data=(x, y), runs=2, warmup=1)
    # Hand-computed: c1 3*3*1*4 + 4, bn 4*4, c2 3*3*4*6 + 6, head 4*4*6*3 + 3.
    assert comp.before.params == 40 + 16 + 222 + 291
    assert comp.after.params == 20 + 8 + 3 * 3 * 2 * 5 + 5 + 80 * 3 + 3
    # MACs: c1 64 positions * 36, c2 16 * 216, head 288.
    assert comp.before.flops == 64 * 36 + 16 * 216 + 288
    assert comp.after.flops == 64 * 18 + 16 * 90 + 240
    assert comp.flops_ratio == pytest.approx(comp.after.flops / comp.before.flops)
    expected = np.mean(keras.ops.convert_to_numpy(model(x, training=False)).argmax(-1) == y)
    assert comp.before.accuracy == pytest.approx(expected)
    assert comp.speedup == pytest.approx(comp.before.latency.median_ms / comp.after.latency.median_ms)
    doc = json.loads(json.dumps(comp.to_dict()))
    assert doc["before"]["params"] == comp.before.params and doc["flops_ratio"] == comp.flops_ratio
    labels = [r[0] for r in comp.rows()]
    assert labels[:2] == ["params", "FLOPs (MACs)"] and "accuracy" in labels
    with pytest.raises(dataclasses.FrozenInstanceError):
        comp.before = comp.after


def test_compare_files_and_npz_data(tmp_path):
    model = _model()
    pruned = kp.remove_filters(model, {"c2": [1, 2, 3]})
    model.save(tmp_path / "a.keras")
    pruned.save(tmp_path / "b.keras")
    x = np.random.default_rng(1).normal(size=(10, 8, 8, 1)).astype("float32")
    y = np.eye(3)[np.random.default_rng(2).integers(0, 3, 10)]  # one-hot labels
    np.savez(tmp_path / "d.npz", x=x, y=y)
    comp = report.compare(tmp_path / "a.keras", tmp_path / "b.keras", data=tmp_path / "d.npz", latency=False)
    assert comp.before.file_size == (tmp_path / "a.keras").stat().st_size
    assert comp.after.file_size == (tmp_path / "b.keras").stat().st_size
    assert comp.before.latency is None and comp.speedup is None
    expected = np.mean(keras.ops.convert_to_numpy(pruned(x, training=False)).argmax(-1) == y.argmax(-1))
    assert comp.after.accuracy == pytest.approx(expected)
    np.savez(tmp_path / "bad.npz", x=x)
    with pytest.raises(PruningError, match=r"missing \['y'\]"):
        report.load_data(tmp_path / "bad.npz")
    with pytest.raises(PruningError, match="not found"):
        report.load_data(tmp_path / "none.npz")


def test_channel_counts_and_stages():
    model = _model()
    assert report.channel_counts(model) == {"c1": 4, "c2": 6, "head": 3}
    stages = report.stage_breakdown(model)
    assert list(stages) == ["stage 1 (8x8)", "stage 2 (4x4)", "head"]
    assert stages["stage 1 (8x8)"] == (40 + 16, 64 * 36)
    assert stages["stage 2 (4x4)"] == (222, 16 * 216)
    assert stages["head"] == (291, 288)
    assert sum(p for p, _ in stages.values()) == model.count_params()


def test_plots_are_valid_pngs(tmp_path):
    model = _model()
    pruned = kp.remove_filters(model, {"c1": [1], "c2": [0, 4]})
    before, after = report.channel_counts(model), report.channel_counts(pruned)
    assert_png(plots.plot_channels(before, after, tmp_path / "c.png"))
    scores = {"c1": np.array([0.3, 0.1, 0.5, 0.4]), "c2": np.linspace(0, 1, 6)}
    assert_png(plots.plot_scores(scores, tmp_path / "s.png", removed={"c1": [1], "c2": [0, 4]}))
    stages = (report.stage_breakdown(model), report.stage_breakdown(pruned))
    assert_png(plots.plot_stages(*stages, tmp_path / "st.png"))
    written = plots.write_plots(
        tmp_path / "all", channels=(before, after), stages=stages, scores=scores, removed={"c1": [1]}
    )
    assert set(written) == {"channels", "scores", "stages", "overview"}
    for path in written.values():
        assert_png(path)
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == [
        "channels.png",
        "overview.png",
        "scores.png",
        "stages.png",
    ]
    no_scores = plots.write_plots(tmp_path / "ns", channels=(before, after), stages=stages)
    assert set(no_scores) == {"channels", "stages", "overview"}
    assert_png(no_scores["overview"])


@pytest.mark.isolated  # trains
def test_file_size_row_flags_optimizer_state(tmp_path):
    """A trained .keras file also stores optimizer variables; the table says so instead of
    crediting pruning with the size difference."""
    import keras
    import numpy as np

    from kerasprune.report import _has_optimizer_state, model_stats

    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2)(inp))
    plain = tmp_path / "plain.keras"
    model.save(plain)
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.zeros((4, 4)), np.zeros((4, 2)), verbose=0, epochs=1)
    trained = tmp_path / "trained.keras"
    model.save(trained)
    assert _has_optimizer_state(trained) and not _has_optimizer_state(plain)
    before = model_stats(model, path=trained, latency=False)
    after = model_stats(model, path=plain, latency=False)
    from kerasprune.report import Comparison

    rows = Comparison(before=before, after=after).rows()
    assert any("optimizer state" in r[0] for r in rows)
