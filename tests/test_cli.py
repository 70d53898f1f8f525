"""The `kerasprune` command line, through its entry point `kerasprune.cli.main`."""

from __future__ import annotations

import hashlib
import json
import os
import runpy
import subprocess
import sys
import textwrap

import keras
import matplotlib.image as mpimg
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp
import kerasprune.testing
from kerasprune.cli import main
from kerasprune.selection import Selection
from kerasprune.testing import copy_model, randomize_batchnorm


def _model() -> keras.Model:
    """Residual CNN: (c1, c2) coupled by an Add, c3 after pooling, Flatten -> head."""
    i = keras.Input((8, 8, 1))
    a = L.ReLU()(L.BatchNormalization(name="bn1")(L.Conv2D(8, 3, padding="same", name="c1")(i)))
    b = L.BatchNormalization(name="bn2")(L.Conv2D(8, 3, padding="same", name="c2")(a))
    x = L.MaxPooling2D()(L.ReLU()(L.Add(name="add")([a, b])))
    x = L.ReLU()(L.BatchNormalization(name="bn3")(L.Conv2D(12, 3, padding="same", name="c3")(x)))
    model = keras.Model(i, L.Dense(4, name="head")(L.Flatten()(x)), name="cli_cnn")
    randomize_batchnorm(model, seed=3)
    return model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "model.keras"
    _model().save(path)
    return path


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def x_batch(n=3):
    return np.random.default_rng(7).normal(size=(n, 8, 8, 1)).astype("float32")


def masked_prediction(model_file, selection, x):
    masked = copy_model(keras.saving.load_model(model_file))
    kp.mask_filters(masked, selection)
    return keras.ops.convert_to_numpy(masked(x, training=False))


def test_prune_explicit_filters(model_file, tmp_path, capsys):
    digest = sha(model_file)
    out_file = tmp_path / "pruned.keras"
    code, out, err = cli(
        capsys, "prune", model_file, "-o", out_file, "--layer", "c3", "--filters", "4,7",
        "--layer", "c2", "--filters", "-8", "--verify", "--runs", "10",
    )
    assert code == 0, err
    assert sha(model_file) == digest
    for row in ("params", "FLOPs (MACs)", "file size", "latency (batch 1, median)"):
        assert row in out
    assert "verify: max |removed - masked| =" in out and "OK" in out
    pruned = keras.saving.load_model(out_file)
    # c2 is coupled to c1 through the residual Add: both lose filter 0.
    assert [pruned.get_layer(n).filters for n in ("c1", "c2", "c3")] == [7, 7, 10]
    x = x_batch()
    expected = masked_prediction(model_file, {"c3": [4, 7], "c2": [0]}, x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pruned(x, training=False)), expected, rtol=1e-4, atol=1e-4)


def test_refuses_to_overwrite_and_never_writes_onto_input(model_file, tmp_path, capsys):
    digest = sha(model_file)
    args = ["--layer", "c3", "--filters", "1", "--runs", "0"]
    existing = tmp_path / "existing.keras"
    existing.write_bytes(b"keep me")
    code, _, err = cli(capsys, "prune", model_file, "-o", existing, *args)
    assert code == 1 and "already exists; pass --force" in err and len(lines(err)) == 1
    assert existing.read_bytes() == b"keep me"
    link = tmp_path / "link.keras"
    os.symlink(model_file, link)
    for target in (model_file, link):
        code, _, err = cli(capsys, "prune", model_file, "-o", target, "--force", *args)
        assert code == 1 and "onto the input file" in err and "Traceback" not in err
    assert sha(model_file) == digest
    code, _, err = cli(capsys, "prune", model_file, "-o", existing, "--force", *args)
    assert code == 0, err
    assert keras.saving.load_model(existing).get_layer("c3").filters == 11


def test_criterion_plan_plots_report_then_mask_from_plan(model_file, tmp_path, capsys):
    pruned_file, plan, plots, rep = (tmp_path / n for n in ("p.keras", "plan.json", "plots", "report.json"))
    code, out, err = cli(
        capsys, "prune", model_file, "-o", pruned_file, "--criterion", "l1", "--ratio", "0.5", "--global",
        "--save-plan", plan, "--plots", plots, "--report", rep, "--runs", "10",
    )
    assert code == 0, err
    selection = Selection.load(plan)
    assert selection.criterion == "l1" and sum(len(v) for v in selection.values()) > 0
    doc = json.loads(rep.read_text())
    assert doc["mode"] == "remove" and doc["selection"]["filters"] == {k: list(v) for k, v in selection.items()}
    assert doc["comparison"]["after"]["params"] == keras.saving.load_model(pruned_file).count_params()
    assert doc["comparison"]["flops_ratio"] < 1
    for name in ("channels", "scores", "stages", "overview"):
        png = plots / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and mpimg.imread(png).ndim == 3
        assert doc["files"][name] == str(png)

    masked_file = tmp_path / "masked.keras"
    code, out, err = cli(capsys, "prune", model_file, "-o", masked_file, "--plan", plan, "--mask", "--verify", "--runs", "0")
    assert code == 0, err
    assert "OK" in out
    masked, pruned = keras.saving.load_model(masked_file), keras.saving.load_model(pruned_file)
    assert masked.count_params() == keras.saving.load_model(model_file).count_params()
    x = x_batch()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(masked(x, training=False)), keras.ops.convert_to_numpy(pruned(x, training=False)), rtol=1e-4, atol=1e-4
    )


def test_dry_run_writes_nothing(model_file, tmp_path, capsys):
    code, out, err = cli(capsys, "prune", model_file, "--target-flops", "0.5", "--dry-run", "-o", tmp_path / "o.keras")
    assert code == 0, err
    assert "MACs" in out and "Layers affected" in out
    assert list(tmp_path.iterdir()) == []


USAGE_ERRORS = [
    (["-o", "{tmp}/o.keras"], "Choose the filters one way"),
    (["--layer", "c1", "--filters", "1"], "Missing -o/--output"),
    (["-o", "{tmp}/o.keras", "--bogus"], "No such option: --bogus"),
    (["-o", "{tmp}/o.keras", "--ratio", "lots"], "Invalid value for '--ratio'"),
    (["-o", "{tmp}/o.keras", "--layer", "c1", "--filters", "a,b"], "must be comma-separated integers"),
    (["-o", "{tmp}/o.keras", "--layer", "c1", "--filters", "1", "--layer", "c2"], "come in pairs"),
    (["-o", "{tmp}/o.keras", "--layer", "nope", "--filters", "1"], "Unknown layer 'nope'"),
    (["-o", "{tmp}/o.keras", "--layer", "c1", "--filters", "99"], "out of range for layer 'c1'"),
    (["-o", "{tmp}/o.keras", "--layer", "head", "--filters", "0"], "reach the model output"),
    (["-o", "{tmp}/o.h5", "--layer", "c1", "--filters", "0"], r"must end in .keras"),
    (["-o", "{tmp}/o.keras", "--criterion", "nonsense", "--ratio", "0.3"], "Unknown criterion 'nonsense'"),
    (["-o", "{tmp}/o.keras", "--plan", "{tmp}/missing.json"], "Cannot read selection file"),
]


def test_usage_and_validation_errors_exit_1_with_one_line(model_file, tmp_path, capsys):
    digest = sha(model_file)
    for args, message in USAGE_ERRORS:
        code, out, err = cli(capsys, "prune", model_file, *[a.format(tmp=tmp_path) for a in args])
        assert code == 1, (args, err)
        assert len(lines(err)) == 1, err
        assert message in err and err.lstrip().startswith("Error:"), (message, err)
        assert "Traceback" not in err + out
        assert list(tmp_path.iterdir()) == []
    assert sha(model_file) == digest


def test_bad_model_files_exit_1(model_file, tmp_path, capsys):
    (tmp_path / "text.keras").write_text("not a model")
    (tmp_path / "trunc.keras").write_bytes(model_file.read_bytes()[:2000])
    i = keras.Input((4,))
    keras.Model(i, L.Dense(2)(L.Lambda(lambda t: t + 1.0, name="shift")(L.Dense(3, name="d1")(i)))).save(
        tmp_path / "lam.keras"
    )
    cases = [
        ("missing.keras", "Model file not found"),
        ("text.keras", "not a Keras model file"),
        ("trunc.keras", "truncated or corrupted"),
        ("lam.keras", "--unsafe"),
]
    for name, message in cases:
        code, _, err = cli(capsys, "inspect", tmp_path / name)
        assert code == 1 and message in err and len(lines(err)) == 1, err
    code, _, err = cli(capsys, "inspect", tmp_path / "trunc.keras", "--debug")
    assert code == 1 and "Traceback" in err
    code, out, err = cli(capsys, "inspect", tmp_path / "lam.keras", "--unsafe")
    assert code == 0, err
    assert "'shift' (Lambda) blocks it" in out  # the Lambda makes d1's group unprunable


def test_internal_error_exits_2(model_file, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(kp, "remove_filters", broken)
    code, _, err = cli(capsys, "prune", model_file, "-o", tmp_path / "o.keras", "--layer", "c1", "--filters", "1")
    assert code == 2
    assert "Internal error: RuntimeError: boom" in err and "--debug" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(kerasprune.testing, "max_output_difference", lambda a, b, x: 0.5)
    code, _, err = cli(capsys, "prune", model_file, "-o", tmp_path / "o.keras", "--layer", "c1", "--filters", "1", "--verify")
    assert code == 2 and "verification failed" in err
    assert list(tmp_path.iterdir()) == []


def test_inspect(model_file, capsys):
    code, out, err = cli(capsys, "inspect", model_file, "--criterion", "l2")
    assert code == 0, err
    model = keras.saving.load_model(model_file)
    assert f"{model.count_params():,} params" in out and f"{kp.count_flops(model):,} MACs" in out
    assert "c1, c2" in out  # the residual group
    assert "channels reach the model output" in out
    assert "filter scores: l2" in out


def test_report_command(model_file, tmp_path, capsys):
    small = tmp_path / "small.keras"
    kp.remove_filters(keras.saving.load_model(model_file), {"c3": [0, 1, 2]}).save(small)
    x = x_batch(12)
    y = np.arange(12) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out_json = tmp_path / "cmp.json"
    code, out, err = cli(capsys, "report", model_file, small, "--data", tmp_path / "d.npz", "--json", out_json, "--runs", "10")
    assert code == 0, err
    assert "accuracy" in out and "latency" in out
    doc = json.loads(out_json.read_text())
    assert doc["after"]["params"] == keras.saving.load_model(small).count_params()
    expected = np.mean(keras.ops.convert_to_numpy(keras.saving.load_model(small)(x, training=False)).argmax(-1) == y)
    assert doc["after"]["accuracy"] == pytest.approx(expected)
    code, _, err = cli(capsys, "report", model_file, small, "--json", out_json, "--runs", "0")
    assert code == 1 and "already exists" in err


def test_module_entry_point_output_loads_in_plain_keras(model_file, tmp_path, monkeypatch, capsys):
    """`python -m kerasprune prune ...`; its output loads in a fresh process without kerasprune."""
    out_file = tmp_path / "pruned.keras"
    argv = ["kerasprune", "prune", str(model_file), "-o", str(out_file), "--layer", "c1", "--filters", "2,5",
            "--layer", "c3", "--filters", "0", "--runs", "10"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("kerasprune", run_name="__main__")
    assert exit_info.value.code == 0, capsys.readouterr().err
    assert "Pruned model written to" in capsys.readouterr().out
    x = x_batch(4)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(
        f"""
        import sys
        import keras, numpy as np
        model = keras.saving.load_model({str(out_file)!r})
        np.save({str(tmp_path / "y.npy")!r}, keras.ops.convert_to_numpy(model(np.load({str(tmp_path / "x.npy")!r}), training=False)))
        assert not any(m.startswith("kerasprune") for m in sys.modules), "kerasprune was imported"
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    plain = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert plain.returncode == 0, plain.stderr[-2000:]
    expected = masked_prediction(model_file, {"c1": [2, 5], "c3": [0]}, x)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-4, atol=1e-4)
