"""The README's code blocks run as written, so the front page cannot drift from the code.

* The first block is the two-command contract: `make demo` and `make test`, and CI runs `make test`.
* Every ```python block runs, in order, as one script in a child process (some train or export:
  a native crash must fail this test, not kill the run), from an empty working directory.
* Every `kerasprune ...` line of the ```bash blocks after the first runs through the installed
  entry point in a folder holding `model.keras` (a small trained CNN) and `data.npz` (`x`, `y`),
  the two files those lines name; each must exit 0 and write what it says it writes.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def commands(block: str) -> list[str]:
    """The command lines of a shell block (comments stripped)."""
    lines = [line.split("  #")[0].split(" # ")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("KERAS_BACKEND", "tensorflow")
    env["COLUMNS"] = "160"
    return env


def test_first_block_is_the_two_commands_and_ci_runs_the_second():
    first = blocks("bash")[0]
    assert commands(first) == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in commands(ci)
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_readme_links_resolve():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(((?!https?:)[^)#]+)", text)
    assert targets, "the README links its docs"
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


@pytest.mark.backend
def test_python_blocks_run_in_order(tmp_path):
    code = blocks("python")
    assert len(code) >= 3, "the README shows the library in Python"
    script = "\n\n".join(code) + "\nprint('README-OK')\n"
    (tmp_path / "readme_blocks.py").write_text(script, encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "readme_blocks.py"], cwd=tmp_path, env=child_env(),
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0 and "README-OK" in run.stdout, (
        f"README python blocks failed (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    )


def make_files(folder: Path) -> None:
    """model.keras and data.npz, the files the README's command lines name."""
    import keras

    rng = np.random.default_rng(0)
    x = rng.random((64, 16, 16, 3), dtype=np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype("int64")
    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(16, 3, padding="same", name="conv")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(16, 3, padding="same", name="conv_2")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(h))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(folder / "model.keras")
    np.savez(folder / "data.npz", x=x, y=y)


def written(command: list[str]) -> list[str]:
    """The files a command line says it writes (`-o FILE` / `--out FILE`)."""
    return [command[i + 1] for i, word in enumerate(command[:-1]) if word in ("-o", "--out", "--output")]


def test_cli_lines_run(tmp_path):
    lines = [c for block in blocks("bash")[1:] for c in commands(block) if c.startswith("kerasprune ")]
    assert lines, "the README shows the command line"
    make_files(tmp_path)
    entry = Path(sys.executable).with_name("kerasprune")
    for line in lines:
        argv = shlex.split(line)
        run = subprocess.run(
            [str(entry), *argv[1:]], cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=600,
        )
        assert run.returncode == 0, f"`{line}` exited {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        for path in written(argv):
            assert (tmp_path / path).exists(), f"`{line}` did not write {path}"
