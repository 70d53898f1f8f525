"""What the commands read: user code (`--import`), model files, `.npz` data; and output checks.

Everything here runs before any work, so a typo in a path or an existing output file
costs nothing: `check_outputs` refuses existing files (unless `--force`) and the input
file itself (always), `check_plots` refuses a folder that already holds the PNGs.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from kerasprune._cli.console import CliError, quiet_stderr
from kerasprune._cli.words import cli_words


def import_code(specs: Iterable[str] | None, *, debug: bool = False) -> list[str]:
    """Import each `--import` value: a dotted module name, or a path to a `.py` file.

    A file is imported as a module named after it, with its folder on `sys.path` (so it
    can import its neighbours). Returns the module names imported.

    Raises:
        CliError: the module or file does not exist, or importing it fails.
    """
    names = []
    for spec in specs or ():
        path = Path(spec)
        try:
            with quiet_stderr(not debug):
                if spec.endswith(".py") or path.is_file():
                    if not path.is_file():
                        raise CliError(f"--import {spec}: file not found")
                    name = f"kerasprune_user_{path.stem}"
                    folder = str(path.resolve().parent)
                    if folder not in sys.path:
                        sys.path.insert(0, folder)
                    module_spec = importlib.util.spec_from_file_location(name, path)
                    module = importlib.util.module_from_spec(module_spec)
                    sys.modules[name] = module
                    module_spec.loader.exec_module(module)
                else:
                    name = importlib.import_module(spec).__name__
        except CliError:
            raise
        except ModuleNotFoundError as e:
            raise CliError(f"--import {spec}: {e} (give a module on the Python path or a .py file)") from e
        except Exception as e:  # the user's code failed: say where
            raise CliError(f"--import {spec} failed: {type(e).__name__}: {e}") from e
        names.append(name)
    return names


def load_model(path: Path, *, unsafe: bool, compile: bool = False):
    """The model in `path` (`kerasprune.io.load_model`: one-line errors)."""
    from kerasprune.io import load_model as load

    return load(path, safe_mode=not unsafe, compile=compile)


def read_data(path: Path, *, model, x_key: str = "x", y_key: str = "y", option: str = "--data"):
    """`(x, y)` arrays of an `.npz` file, checked against `model`'s input.

    Raises:
        CliError: unreadable file, missing keys (naming `--x-key`/`--y-key`), or inputs that
            do not fit the model.
    """
    from kerasprune.data import batches, load_arrays
    from kerasprune.errors import PruningError

    try:
        x, y = load_arrays(path, x_key=x_key, y_key=y_key)
        next(batches(x, model=model, batch_size=len(x) or 1, where=f"{option} {path}"))
    except PruningError as e:
        text = str(e)
        if "missing" in text:
            text += "; name them with --x-key/--y-key"
        where = option if str(path) in text else f"{option} {path}"
        raise CliError(cli_words(f"{where}: {text}")) from None
    return x, y


def check_outputs(inputs: Sequence[Path], outputs: Sequence[tuple[Path | None, str]], force: bool) -> None:
    """Refuse to write onto an input file (always) or over an existing file (without `--force`)."""
    from kerasprune.io import same_file

    for path, what in outputs:
        if path is None:
            continue
        for source in inputs:
            if same_file(path, source):
                raise CliError(f"Refusing to write the {what} onto the input file {source}, even with --force")
        if path.exists() and not force:
            raise CliError(f"{what.capitalize()} {path} already exists; pass --force to replace it")


def check_plots(folder: Path | None, force: bool, *, scores: bool = True) -> None:
    """Refuse a `--plots` folder that already holds the PNGs (without `--force`)."""
    if folder is None:
        return
    from kerasprune.plots import plot_names

    if folder.exists() and not folder.is_dir():
        raise CliError(f"--plots {folder} is a file, not a folder")
    existing = [n for n in plot_names(scores=scores) if (folder / n).exists()]
    if existing and not force:
        raise CliError(f"--plots {folder} already holds {', '.join(existing)}; pass --force to replace them")
