"""docs/cli.md runs as written: its command examples through the entry point, its Python block."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp
from kerasprune.cli import main
from kerasprune.testing import randomize_batchnorm
from models import scale_layer_source

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"

MY_LAYERS = scale_layer_source("docs")


def documented_commands() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- run by tests/test_cli_docs.py -->\n```bash\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/cli.md lost its tested examples"
    return [line for block in blocks for line in block.splitlines() if line.startswith("kerasprune ")]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def _model() -> keras.Model:
    i = keras.Input((8, 8, 1))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same", name="conv2d")(i)))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same", name="conv2d_1")(x)))
    x = L.MaxPooling2D()(x)
    x = L.ReLU()(L.Conv2D(16, 3, padding="same", name="conv2d_2")(x))
    model = keras.Model(i, L.Dense(4, activation="softmax", name="dense")(L.GlobalAveragePooling2D()(x)))
    randomize_batchnorm(model, seed=4)
    return model


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "160")
    _model().save("model.keras")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(24, 8, 8, 1)).astype("float32"), rng.integers(0, 4, 24)
    np.savez("data.npz", x=x, y=y)
    np.savez("other_names.npz", images=x, labels=y)
    i = keras.Input((8, 8, 1))
    lam = L.Lambda(lambda t: t * 2.0, name="double")(L.Conv2D(6, 3, padding="same", name="conv")(i))
    keras.Model(i, L.Conv2D(2, 3, name="out")(lam)).save("lambda.keras")
    Path("my_layers.py").write_text(MY_LAYERS)
    namespace: dict = {}
    exec(compile(MY_LAYERS, "my_layers.py", "exec"), namespace)
    h = namespace["Scale"](6, name="scale")(L.Conv2D(6, 3, padding="same", name="conv")(i))
    keras.Model(i, L.Conv2D(2, 3, name="out")(h)).save("custom.keras")
    keras.saving.get_custom_objects().pop("docs>Scale", None)  # as in a fresh session
    kp.unregister_rule(namespace["Scale"])
    yield tmp_path
    for cls in [c for c in kp.rules.registered() if c.__name__ == "Scale"]:
        kp.unregister_rule(cls)
    keras.saving.get_custom_objects().pop("docs>Scale", None)


def test_command_examples_run_as_written(workdir, capsys):
    commands = documented_commands()
    assert len(commands) >= 8
    for line in commands:
        code = main(shlex.split(line)[1:])
        out, err = capsys.readouterr()
        assert code == 0, f"{line}\n{err}"
    assert kp.load_model("p1.keras").get_layer("conv2d_1").filters == 11
    assert kp.load_model("p2.keras").count_params() == kp.load_model("model.keras").count_params()  # masked
    for name in ("channels", "scores", "stages", "overview"):
        assert (workdir / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert (workdir / "report.json").exists() and (workdir / "cmp.json").exists()


def test_python_block_runs_as_written(workdir):
    (block,) = python_blocks()
    exec(compile(block, "docs/cli.md", "exec"), {})
    assert (workdir / "pruned.keras").exists() and (workdir / "plots" / "overview.png").exists()
