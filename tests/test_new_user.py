"""What a new user trips over (issue 13), library side: data forms, quiet imports, files, checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp
from kerasprune import plots, report
from kerasprune.changes import changes_table, layer_changes
from kerasprune.data import for_keras, labelled
from kerasprune.errors import ModelLoadError, ModelSaveError, PruningError
from kerasprune.io import write_text
from kerasprune.testing import randomize_batchnorm
from kerasprune.verify import verify_removal

ROOT = Path(__file__).resolve().parent.parent


def cnn() -> keras.Model:
    i = keras.Input((8, 8, 1), name="image")
    x = L.ReLU()(L.BatchNormalization(name="bn1")(L.Conv2D(8, 3, padding="same", name="c1")(i)))
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Conv2D(6, 3, padding="same", name="c2")(x)
    model = keras.Model(i, L.Dense(3, activation="softmax", name="head")(L.Flatten()(x)), name="cnn")
    randomize_batchnorm(model, seed=1)
    return model


def xy(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8, 8, 1)).astype("float32"), rng.integers(0, 3, n)


def run_python(code: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=timeout)


# -- 1. data in every form -----------------------------------------------------------------
@pytest.mark.backend
def test_accuracy_and_compare_take_every_labelled_form(tmp_path):
    model = cnn()
    x, y = xy()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    reference = report.accuracy(model, (x, y))
    pred = keras.ops.convert_to_numpy(model(x, training=False)).argmax(-1)
    assert reference == pytest.approx(float(np.mean(pred == y)))
    forms = {
        "npz path": tmp_path / "d.npz",
        "mapping": {"x": x, "y": y},
        "list of (x, y)": [(x[:5], y[:5]), (x[5:], y[5:])],
        "generator": ((x[i : i + 4], y[i : i + 4]) for i in range(0, 12, 4)),
    }
    for name, data in forms.items():
        assert report.accuracy(model, data) == pytest.approx(reference), name
    gen = ((x[i : i + 4], y[i : i + 4]) for i in range(0, 12, 4))
    comparison = kp.compare(model, model, data=gen, latency=False)  # a generator, read once for both
    assert comparison.before.accuracy == comparison.after.accuracy == pytest.approx(reference)
    with pytest.raises(PruningError, match="no labels"):
        report.accuracy(model, x)
    with pytest.raises(PruningError, match="model input 'image' expects"):
        report.accuracy(model, (x[:, :4], y))


def test_for_keras_forms_and_shape_errors(tmp_path):
    model = cnn()
    x, y = xy()
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    got = for_keras(tmp_path / "d.npz", model=model, x_key="images", y_key="labels")
    assert isinstance(got, tuple) and np.array_equal(got[0], x) and np.array_equal(got[1], y)
    assert for_keras((x, y), model=model)[0] is x
    batches = for_keras((b for b in [(x[:6], y[:6]), (x[6:], y[6:])]), model=model)
    assert isinstance(batches, keras.utils.PyDataset) and len(batches) == 2
    assert np.array_equal(batches[1][0], x[6:])
    gen = iter([(x, y)])
    assert for_keras(gen, model=model, keep_iterators=True) is gen
    with pytest.raises(PruningError, match="val_data: a batch has shape .* model input 'image'"):
        for_keras((x[:, :5], y), model=model, where="val_data")
    model.save(tmp_path / "m.keras")
    with pytest.raises(PruningError, match="is a model file, not data"):
        labelled(tmp_path / "m.keras", model=model)


def test_prune_and_finetune_takes_files_and_batches(tmp_path):
    """Training runs in a subprocess: val data as a generator (read once, evaluated every step)."""
    code = """
        import json, numpy as np, keras, kerasprune as kp
        from keras import layers as L
        keras.utils.set_random_seed(0)
        i = keras.Input((8, 8, 1))
        x = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(i)
        m = keras.Model(i, L.Dense(3, activation="softmax")(L.GlobalAveragePooling2D()(x)))
        m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(32, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 32)
        np.savez("train.npz", x=x, y=y)
        val = ((x[k:k + 8], y[k:k + 8]) for k in range(0, 32, 8))
        small, hist = kp.prune_and_finetune(m, target_ratio=0.5, steps=2, train_data="train.npz",
                                            val_data=val, epochs_per_step=1, fit_options={"batch_size": 8})
        json.dump({"filters": small.get_layer("c1").filters, "rows": len(hist.rows)}, open("out.json", "w"))
    """
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "out.json").read_text()) == {"filters": 4, "rows": 3}


@pytest.mark.backend
def test_select_takes_a_torch_dataloader():
    torch = pytest.importorskip("torch")  # installed with the dev extra: runs by default
    model = cnn()
    x, y = xy(24)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y)), batch_size=8)
    reference = kp.score(model, "apoz", data=(x, y))
    scores = kp.score(model, "apoz", data=loader)
    assert reference.keys() == scores.keys() and reference
    for gid in reference:
        np.testing.assert_allclose(scores[gid], reference[gid], rtol=1e-5)
    assert sum(map(len, kp.select(model, "apoz", ratio=0.25, data=loader).values())) > 0


# -- 2. no silent clamps ---------------------------------------------------------------------
def test_select_says_when_an_option_overrides_the_request(caplog):
    model = cnn()  # prunable groups: c1 (8, with bn1) and c2 (6)
    cases = {
        "threshold": (dict(criterion="mean", threshold=1e9), "min_keep=1 changed the channels removed in 2 groups"),
        "count": (dict(criterion="l1", count=1000), "group 0 [c1] 1000 -> 7"),
        "round_to": (dict(criterion="l1", ratio=0.4, round_to=4), "round_to=4 changed the channels removed"),
        "ratio 0": (dict(criterion="l1", ratio=0.1), "ratio=0.1 removes no filters: it rounds down to 0 of 8"),
    }
    for name, (options, message) in cases.items():
        caplog.clear()
        with caplog.at_level("WARNING", logger="kerasprune"):
            sel = kp.select(model, **options)
        assert any(message in w for w in sel.warnings), (name, sel.warnings)
        logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert sum(message in m for m in logged) == 1, (name, logged)  # logged once
        assert message in str(sel), name  # and printed with the selection
    assert [g.kept for g in kp.select(model, "l1", count=1000).groups] == [1, 1]  # what the warning says
    assert kp.select(model, "l1", ratio=0.5).warnings == ()
    missed = kp.select(model, "l1", target_flops=0.5, round_to=4)
    assert missed.flops_ratio < 0.5 - 0.03
    assert any(f"target_flops=0.5 asked for, {missed.flops_ratio:.1%} kept" in w for w in missed.warnings), missed.warnings


def test_a_failing_user_criterion_names_the_layer():
    i = keras.Input((8, 8, 1))
    x = L.Dense(10, name="hidden")(L.GlobalAveragePooling2D()(L.Conv2D(4, 3, name="conv")(i)))
    model = keras.Model(i, L.Dense(2, name="out")(x))
    with pytest.raises(PruningError, match=r"Criterion 'per_conv' failed on layer 'hidden' \(Dense\), kernel of shape \(4, 10\)"):
        kp.select(model, lambda_named("per_conv", lambda w: np.abs(w).sum(axis=(0, 1, 2))), ratio=0.25)
    with pytest.raises(TypeError, match="expects an instance of kerasprune.Rule"):
        kp.register_rule(L.Dense, kp.Rule)
    with pytest.raises(TypeError, match="does not implement analyze"):
        kp.register_rule(L.Dense, type("NoAnalyze", (kp.Rule,), {})())


def lambda_named(name, fn):
    fn.__name__ = name
    return fn


# -- 5. files -------------------------------------------------------------------------------
def test_plots_and_text_never_overwrite_without_force(tmp_path):
    model = cnn()
    pruned = kp.remove_filters(model, {"c1": [0, 1]})
    plan = kp.make_plan(kp.analyze(model), {"c1": [0, 1]})
    written = plots.plot_pruning(tmp_path, model, pruned, plan=plan, scores=kp.score(model, "l1"))
    assert set(written) == {"channels", "scores", "stages", "overview"}
    before = {p: p.read_bytes() for p in written.values()}
    with pytest.raises(ModelSaveError, match="already holds channels.png.*--force"):
        plots.plot_pruning(tmp_path, model, pruned, plan=plan)
    assert {p: p.read_bytes() for p in written.values()} == before
    assert set(plots.plot_pruning(tmp_path, model, pruned, plan=plan, overwrite=True)) == {"channels", "stages", "overview"}
    write_text("mine", tmp_path / "notes.txt")
    with pytest.raises(ModelSaveError, match="already exists"):
        write_text("theirs", tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_npz_is_not_mistaken_for_a_renamed_model(tmp_path):
    x, y = xy()
    np.savez(tmp_path / "data.npz", x=x, y=y)
    with pytest.raises(ModelLoadError, match="NumPy data file, not a model.*--data"):
        kp.load_model(tmp_path / "data.npz")
    (tmp_path / "data.keras").write_bytes((tmp_path / "data.npz").read_bytes())
    with pytest.raises(ModelLoadError, match=r"\.npz data file renamed to \.keras"):
        kp.load_model(tmp_path / "data.keras")
    (tmp_path / "zipped.bin").write_bytes((tmp_path / "data.npz").read_bytes())
    with pytest.raises(ModelLoadError, match="NumPy data file"):
        kp.load_model(tmp_path / "zipped.bin")


def test_h5_file_size_row_has_the_optimizer_caveat(tmp_path):
    model = cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    model.save(tmp_path / "trained.h5")
    kp.remove_filters(cnn(), {"c1": [0]}).save(tmp_path / "pruned.keras")  # uncompiled: no optimizer
    comparison = kp.compare(tmp_path / "trained.h5", tmp_path / "pruned.keras", latency=False)
    assert comparison.before.optimizer_in_file and not comparison.after.optimizer_in_file
    assert any(r[0] == "file size (only one file holds optimizer state)" for r in comparison.rows())


# -- 6. per-layer table; 8. stages, verify ---------------------------------------------------
def test_layer_changes_filters_macs_and_shares():
    model = cnn()
    pruned = kp.remove_filters(model, {"c1": [0, 1, 2, 3]})
    changes = {c.layer: c for c in layer_changes(model, pruned)}
    macs_before, macs_after = kp.flops_by_layer(model), kp.flops_by_layer(pruned)
    c1, c2 = changes["c1"], changes["c2"]
    assert (c1.filters_before, c1.filters_after, c2.filters_before, c2.filters_after) == (8, 4, 6, 6)
    assert (c2.macs_before, c2.macs_after) == (macs_before["c2"], macs_after["c2"]) and c2.macs_after < c2.macs_before
    assert c1.share_before == pytest.approx(macs_before["c1"] / sum(macs_before.values()))
    assert sum(c.share_after for c in changes.values()) == pytest.approx(1.0)
    assert changes["head"].changed is False and {"bn1", "pool"}.isdisjoint(changes)
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(changes_table(list(changes.values())))
    text = console.export_text()
    assert "8 -> 4" in text and "share of MACs" in text and "head" not in text and "unchanged layers" in text


def test_stage_breakdown_has_no_empty_stages():
    i = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3, padding="same", name="c1")(i)
    x = L.ZeroPadding2D(1, name="pad")(x)  # 10x10, no weights
    x = L.Conv2D(4, 3, name="c2")(x)  # back to 8x8
    x = L.MaxPooling2D(name="pool")(x)  # 4x4, no weights
    x = L.Conv2D(4, 3, padding="same", name="c3")(x)
    model = keras.Model(i, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x)))
    stages = report.stage_breakdown(model)
    assert list(stages) == ["stage 1 (8x8)", "stage 2 (4x4)", "head"]
    assert all(p or m for p, m in stages.values())
    assert sum(p for p, _ in stages.values()) == model.count_params()
    assert sum(m for _, m in stages.values()) == kp.count_flops(model)


@pytest.mark.backend
def test_verify_warns_when_the_output_ignores_the_input():
    model = cnn()
    head = model.get_layer("head")
    head.set_weights([np.zeros_like(head.kernel.numpy()), np.array([0.1, 0.2, 0.3], "float32")])
    plan = kp.make_plan(kp.analyze(model), {"c1": [1, 2]})
    check = verify_removal(model, plan)
    assert not check.input_dependent and check.ok
    assert check.layers_compared >= 2 and check.feature_error < 1e-4
    assert "does not depend on its input" in check.warnings[0]
    other = cnn()
    normal = verify_removal(other, kp.make_plan(kp.analyze(other), {"c1": [1, 2]}))
    assert normal.input_dependent and normal.ok and normal.warnings == () and normal.feature_error is None


# -- 7. a quiet, fast start ----------------------------------------------------------------
def test_importing_the_package_and_the_cli_loads_no_backend(tmp_path):
    done = run_python(
        """
        import sys
        import kerasprune, kerasprune.cli
        from kerasprune.cli import main
        assert main(["--help"]) == 0 and main(["prune", "--help"]) == 0
        heavy = sorted({m.split(".")[0] for m in sys.modules} & {"keras", "tensorflow", "jax", "torch", "numpy"})
        assert not heavy, heavy
        assert callable(kerasprune.sensitivity) and kerasprune.__version__
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]


def test_lazy_exports_match_all():
    assert set(kp.__all__) == set(kp._EXPORTS) | {"criteria"}
    for name in kp.__all__:
        assert getattr(kp, name) is not None
    from kerasprune.sensitivity import SensitivityResult  # the submodule does not shadow the function

    assert callable(kp.sensitivity) and SensitivityResult is kp.SensitivityResult
    assert kp.report.compare is kp.compare
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kp.nope  # noqa: B018
