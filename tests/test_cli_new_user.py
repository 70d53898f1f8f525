"""What a new user trips over (issue 13), through the `kerasprune` entry point: exit codes and output."""

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
from kerasprune.cli import main
from kerasprune.selection import Selection
from kerasprune.testing import randomize_batchnorm
from models import scale_layer_source

ROOT = Path(__file__).resolve().parent.parent
LONG = "a_rather_long_layer_name_from_a_keras_hub_backbone_block_conv"  # 61 characters


def _model() -> keras.Model:
    """c1 -> BN -> ReLU -> pool -> c3 (long name) -> BN -> ReLU -> Flatten -> head."""
    i = keras.Input((8, 8, 1), name="image")
    x = L.ReLU(name="relu1")(L.BatchNormalization(name="bn1")(L.Conv2D(12, 3, padding="same", name="c1")(i)))
    x = L.MaxPooling2D(name="pool")(x)
    x = L.ReLU(name="relu2")(L.BatchNormalization(name="bn2")(L.Conv2D(8, 3, padding="same", name=LONG)(x)))
    model = keras.Model(i, L.Dense(4, name="head")(L.Flatten(name="flat")(x)), name="new_user_cnn")
    randomize_batchnorm(model, seed=2)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("newuser")
    keras.utils.set_random_seed(0)
    _model().save(folder / "model.keras")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 8, 8, 1)).astype("float32"), rng.integers(0, 4, 16)
    np.savez(folder / "data.npz", x=x, y=y)
    np.savez(folder / "other_keys.npz", images=x, labels=y)
    return folder


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def first_column(table: str) -> str:
    """The first column of a rich table, its folded lines joined."""
    return "".join(line.split("│")[1].strip() for line in table.splitlines() if line.count("│") > 1)


def run_cli(*args, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(PYTHONPATH=str(ROOT / "src"), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "kerasprune", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=timeout)


# -- 7. quiet, fast start; help ------------------------------------------------------------
def test_help_shows_model_flags_without_types_and_required_output(capsys):
    code, out, _ = cli(capsys, "prune", "--help")
    assert code == 0
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert "MODEL" in usage and "{" not in usage
    assert "<bool>" not in out
    output_row = next(line for line in out.splitlines() if "--output" in line)
    assert "*" in output_row and "[required]" in output_row
    assert "--selection" in out and "--save-selection" in out
    assert "--plan " not in out and "--save-plan" not in out  # old names: hidden aliases
    for option in ("--import", "--channelwise", "--x-key", "--y-key", "--debug"):
        assert option in out
    code, out, _ = cli(capsys, "--help")
    assert code == 0 and "finetune" in out and "<bool>" not in out and "--version" in out


def test_version(capsys):
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.strip().startswith(f"kerasprune {kp.__version__} (keras {keras.__version__}")


def test_commands_start_quietly_unless_debug(files):
    """A fresh process: no TensorFlow/absl lines on stderr (--debug logs: the test below, in process)."""
    quiet = run_cli("inspect", files / "model.keras", cwd=files)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert quiet.stderr.strip() == "", quiet.stderr[-2000:]
    assert "Channel groups" in quiet.stdout


def test_debug_shows_tracebacks_and_logs(files, capsys):
    code, _, err = cli(capsys, "inspect", files / "missing.keras")
    assert code == 1 and "Traceback" not in err
    code, _, err = cli(capsys, "inspect", files / "missing.keras", "--debug")
    assert code == 1 and "Traceback" in err
    code, _, err = cli(capsys, "inspect", files / "model.keras", "--debug")
    assert code == 0 and "DEBUG kerasprune" in err and "kerasprune.io: loaded" in err


# -- 4. the CLI opens every model the library can; messages in CLI words -------------------
CUSTOM = scale_layer_source("newuser")


def test_import_registers_custom_layers_and_rules(tmp_path, capsys):
    (tmp_path / "scale_layer.py").write_text(CUSTOM)
    namespace: dict = {}
    exec(compile(CUSTOM, "scale_layer.py", "exec"), namespace)
    scale_cls = namespace["Scale"]
    i = keras.Input((8, 8, 1))
    x = scale_cls(6, name="scale")(L.Conv2D(6, 3, padding="same", name="conv")(i))
    keras.Model(i, L.Conv2D(2, 3, name="out")(x)).save(tmp_path / "custom.keras")
    del keras.saving.get_custom_objects()["newuser>Scale"]  # a fresh session: the class is unknown
    kp.unregister_rule(scale_cls)
    try:
        code, _, err = cli(capsys, "inspect", tmp_path / "custom.keras")
        assert code == 1 and "not registered: newuser>Scale" in err and "--import MODULE_OR_FILE" in err
        assert "custom_objects" not in err and len(lines(err)) == 1
        out_file = tmp_path / "small.keras"
        code, out, err = cli(capsys, "prune", tmp_path / "custom.keras", "--import", tmp_path / "scale_layer.py",
                             "-o", out_file, "--layer", "conv", "--filters", "0-1", "--runs", "0")
        assert code == 0, err
        assert "Layers affected (3" in out  # conv, scale, out
        code, _, err = cli(capsys, "inspect", tmp_path / "custom.keras", "--import", "no_such_module_kp")
        assert code == 1 and "--import no_such_module_kp: No module named" in err
    finally:
        for cls in [c for c in kp.rules.registered() if c.__name__ == "Scale"]:
            kp.unregister_rule(cls)
        keras.saving.get_custom_objects().pop("newuser>Scale", None)
    reloaded = kp.load_model(out_file, custom_objects={"newuser>Scale": scale_cls})
    assert reloaded.get_layer("conv").filters == 4 and reloaded.get_layer("scale").channels == 4


def test_channelwise_and_messages_name_cli_options(tmp_path, files, capsys):
    i = keras.Input((8, 8, 1))
    x = L.Lambda(lambda t: t * 2.0, name="double")(L.Conv2D(6, 3, padding="same", name="conv")(i))
    keras.Model(i, L.Conv2D(2, 3, name="out")(x)).save(tmp_path / "lam.keras")
    base = ["prune", tmp_path / "lam.keras", "--unsafe", "-o", tmp_path / "o.keras", "--layer", "conv",
            "--filters", "0", "--runs", "0"]
    code, _, err = cli(capsys, *base)
    assert code == 1 and "declare it with --channelwise double" in err and "channelwise=" not in err
    code, out, err = cli(capsys, *base, "--channelwise", "double")
    assert code == 0, err
    assert keras.saving.load_model(tmp_path / "o.keras", safe_mode=False).get_layer("conv").filters == 5
    model = files / "model.keras"
    cases = [
        (["--criterion", "apoz", "--ratio", "0.3"], "pass --data FILE.npz"),
        (["--criterion", "taylor", "--ratio", "0.3", "--data", files / "data.npz"], "needs --loss NAME"),
        (["--criterion", "l1", "--ratio", "1.5"], "--ratio must be a number in [0, 1). Received: --ratio 1.5"),
        (["--criterion", "l1", "--target-flops", "2"], "--target-flops is the fraction to keep"),
        (["--criterion", "l1", "--ratio", "0.3", "--count", "2"], "Give one amount"),
        (["--criterion", "l1", "--ratio", "0.3", "--data", files / "other_keys.npz"], "--x-key/--y-key"),
        (["--criterion", "l1", "--target-flops", "0.5", "--round-to", "8"], "Target --target-flops 0.5 is unreachable"),
        (["--layer", "c1", "--filters", "5-2"], "must go upwards"),
        (["--layer", "c11", "--filters", "1"], "Unknown layer 'c11' in model 'new_user_cnn'. Did you mean 'c1'"),
        (["--layer", "c1", "--filters", "1", "--runs", "5"], "--runs must be 0"),
    ]
    for args, message in cases:
        code, out, err = cli(capsys, "prune", model, "--dry-run", *args)
        assert code == 1, (args, err)
        assert message in err and len(lines(err)) == 1, (message, err)
        for python_word in ("data=", "loss=", "ratio=", "target_flops", "round_to", "x_key"):
            assert python_word not in err, (python_word, err)


# -- 2. no silent clamps: the option that cancelled a removal is named, warnings once -------
def test_round_to_cancelling_every_removal_is_named_once(files, capsys):
    code, out, err = cli(capsys, "prune", files / "model.keras", "--criterion", "l1", "--ratio", "0.2",
                         "--round-to", "4", "--dry-run")
    assert code == 1
    assert "The selection removes no filters: --round-to 4 changed the channels removed" in err
    assert (out + err).count("changed the channels removed") == 2  # the table's warning line, and the error
    assert "round_to" not in out + err
    code, out, err = cli(capsys, "prune", files / "model.keras", "--criterion", "l1", "--ratio", "0.01", "--dry-run")
    assert code == 1 and "--ratio 0.01 of the groups' channels rounds down to 0" in err


def test_missed_target_is_warned_in_cli_words(files, capsys):
    code, out, err = cli(capsys, "prune", files / "model.keras", "--criterion", "l1", "--target-flops", "0.5",
                         "--round-to", "4", "--dry-run")
    assert code == 0, err
    assert (out + err).count("--target-flops 0.5 asked for") == 1
    # with --round-to 4 the MACs kept can only be 100, 67.5, 66.3, 44.6, 34.9 or 22.9%: 50% is missed
    assert "warning: --target-flops 0.5 asked for" in out
    assert "target_flops" not in out + err and "round_to" not in out + err


# -- 3 + 8. every selection prints its plan; affected layers; names never cut ----------------
def test_explicit_selection_prints_groups_costs_and_changed_layers(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    model = kp.load_model(files / "model.keras")
    sel_file = tmp_path / "sel.json"
    code, out, err = cli(capsys, "prune", files / "model.keras", "--layer", "c1", "--filters", "0-3,7",
                         "--layer", LONG, "--filters", "0", "--dry-run", "--save-selection", sel_file)
    assert code == 0, err
    plan = kp.make_plan(kp.analyze(model), {"c1": [0, 1, 2, 3, 7], LONG: [0]})
    shown = Selection.from_plan(plan)
    assert f"MACs: {shown.flops_before:,} -> {shown.flops_after:,}" in out
    c1_row = next(line for line in out.splitlines() if line.split()[1:2] == ["c1"])
    assert c1_row.split()[2:4] == ["12", "7"]  # group 0: before, after
    affected = plan.affected_layers
    assert f"Layers affected ({len(affected)}, weights or config change)" in out
    assert set(affected) == {"c1", "bn1", LONG, "bn2", "head"}
    for name in ("relu1", "pool", "relu2", "flat"):
        assert name not in out.split("Layers affected")[1]
    assert LONG in out.replace("\n", "")  # not cut, even 60 columns wide
    assert Selection.load(sel_file)["c1"] == (0, 1, 2, 3, 7)
    code, out, err = cli(capsys, "inspect", files / "model.keras")
    layer_table = out.split("Channel groups")[0]
    assert code == 0 and LONG in first_column(layer_table) and "…" not in layer_table  # folded, not cut


@pytest.mark.backend
def test_prune_prints_per_layer_table_and_latency_spread(files, tmp_path, capsys):
    out_file = tmp_path / "p.keras"
    code, out, err = cli(capsys, "prune", files / "model.keras", "-o", out_file, "--layer", "c1",
                         "--filters", "0-5", "--runs", "10", "--data", files / "data.npz")
    assert code == 0, err
    assert "share of MACs" in out and "12 -> 6" in out
    assert "latency: median of 10 timed batches" in out and "ms before" in out
    code, out, err = cli(capsys, "report", files / "model.keras", out_file, "--runs", "0",
                         "--data", files / "other_keys.npz", "--x-key", "images", "--y-key", "labels")
    assert code == 0, err
    assert "accuracy" in out and "share of MACs" in out and "12 -> 6" in out
    code, out, err = cli(capsys, "report", files / "model.keras", out_file, "--runs", "0", "--json", "-")
    assert code == 0 and json.loads(out)["after"]["params"] == kp.load_model(out_file).count_params()


def test_verify_warns_on_a_model_whose_output_ignores_its_input(tmp_path, capsys):
    model = _model()
    head = model.get_layer("head")
    head.set_weights([np.zeros(head.kernel.shape, "float32"), np.ones(4, "float32")])
    model.save(tmp_path / "constant.keras")
    code, out, err = cli(capsys, "prune", tmp_path / "constant.keras", "-o", tmp_path / "o.keras", "--layer", "c1",
                         "--filters", "0,1", "--verify", "--runs", "0")
    assert code == 0, err
    assert "does not depend on its input" in err and "kept channels of" in out


# -- 6. inspect --json; finetune -------------------------------------------------------------
def test_inspect_json(files, capsys):
    code, out, err = cli(capsys, "inspect", files / "model.keras", "--json", "--criterion", "l2")
    assert code == 0, err
    doc = json.loads(out)
    model = kp.load_model(files / "model.keras")
    graph = kp.analyze(model)
    assert doc["params"] == kp.count_params(model) and doc["macs"] == kp.count_flops(model)
    assert [g["layers"] for g in doc["groups"]] == [list(g.layers) for g in graph.groups]
    c1 = next(r for r in doc["layers"] if r["layer"] == "c1")
    assert c1 == {"layer": "c1", "class": "Conv2D", "filters": 12, "params": 120, "macs": kp.flops_by_layer(model)["c1"]}
    scores = kp.score(model, "l2", graph=graph)[0]
    assert doc["groups"][0]["scores"]["max"] == pytest.approx(float(scores.max()))


def test_finetune_from_files(tmp_path, capsys):
    """Prune-and-fine-tune from .npz files, in a subprocess (it trains; the refusal does not)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0).astype("int64")
    np.savez(tmp_path / "train.npz", x=x[:48], y=y[:48])
    np.savez(tmp_path / "val.npz", x=x[48:], y=y[48:])
    i = keras.Input((8, 8, 1))
    h = L.Conv2D(8, 3, padding="same", activation="relu", name="c1")(i)
    h = L.Conv2D(8, 3, padding="same", activation="relu", name="c2")(h)
    model = keras.Model(i, L.Dense(2, activation="softmax", name="head")(L.GlobalAveragePooling2D()(h)))
    model.save(tmp_path / "uncompiled.keras")
    code, _, err = cli(capsys, "finetune", tmp_path / "uncompiled.keras", "--data", tmp_path / "train.npz",
                       "--val", tmp_path / "val.npz", "-o", tmp_path / "small.keras", "--target-flops", "0.5")
    assert code == 1 and "no training configuration" in err and "--loss NAME" in err and len(lines(err)) == 1, err
    assert not (tmp_path / "small.keras").exists()
    done = run_cli("finetune", "uncompiled.keras", "--data", "train.npz", "--val", "val.npz", "-o", "small.keras",
                   "--target-flops", "0.5", "--steps", "2", "--epochs", "1", "--batch-size", "16",
                   "--loss", "sparse_categorical_crossentropy", "--metric", "accuracy", "--report", "ft.json",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((tmp_path / "ft.json").read_text())
    assert [r["step"] for r in doc["history"]["rows"]] == [0, 1, 2]
    assert doc["history"]["monitor"] == "val_accuracy"
    assert doc["comparison"]["flops_ratio"] <= 0.55
    assert "share of MACs" in done.stdout
    assert all(line.startswith("warning: --target-flops 0.5") for line in lines(done.stderr)), done.stderr
    small = keras.saving.load_model(tmp_path / "small.keras")
    assert small.count_params() == doc["comparison"]["after"]["params"] < model.count_params()


# -- 5. never overwrite without --force ------------------------------------------------------
def test_demo_and_plots_refuse_to_replace_files(files, tmp_path, capsys):
    mine = tmp_path / "demo"
    mine.mkdir()
    (mine / "report.json").write_text('{"mine": true}')
    code, _, err = cli(capsys, "demo", "--quick", "--out", mine)
    assert code == 1 and "already holds report.json" in err and "--force" in err
    assert (mine / "report.json").read_text() == '{"mine": true}' and sorted(os.listdir(mine)) == ["report.json"]
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "stages.png").write_bytes(b"my own plot")
    base = ["prune", files / "model.keras", "--layer", "c1", "--filters", "0", "--runs", "0", "--plots", plots]
    code, _, err = cli(capsys, *base, "-o", tmp_path / "a.keras")
    assert code == 1 and "already holds stages.png" in err
    assert not (tmp_path / "a.keras").exists() and (plots / "stages.png").read_bytes() == b"my own plot"
    code, out, err = cli(capsys, *base, "-o", tmp_path / "a.keras", "--force")
    assert code == 0, err
    assert (plots / "stages.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_benchmarks_write_to_scratch_unless_update():
    scripts = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name != "output.py")
    assert scripts
    for script in scripts:
        text = script.read_text()
        assert "add_update_flag(" in text and "results_dir(" in text, script.name
    code = textwrap.dedent(
        f"""
        import sys; sys.path.insert(0, {str(ROOT / "benchmarks")!r})
        import argparse, output
        p = argparse.ArgumentParser(); output.add_update_flag(p)
        assert output.results_dir(p.parse_args([]).update) == output.SCRATCH
        assert output.results_dir(p.parse_args(["--update"]).update) == output.RESULTS
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
