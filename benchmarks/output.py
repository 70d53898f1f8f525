"""Where the benchmark scripts write: a scratch folder, unless `--update` asks for `benchmarks/results/`.

Every script in `benchmarks/` takes `--update`; without it, results go to
`$TMPDIR/kerasprune-bench/` (printed at the end), so a trial run never replaces the
committed numbers. `--update` rewrites `benchmarks/results/<name>.{json,md}`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SCRATCH = Path(tempfile.gettempdir()) / "kerasprune-bench"


def add_update_flag(parser: argparse.ArgumentParser) -> None:
    """Add `--update` (write `benchmarks/results/`; default: the scratch folder)."""
    parser.add_argument(
        "--update",
        action="store_true",
        help=f"write benchmarks/results/ (default: the scratch folder {SCRATCH})",
    )


def results_dir(update: bool) -> Path:
    """`benchmarks/results/` with `update`, else the scratch folder (created)."""
    folder = RESULTS if update else SCRATCH
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def announce(folder: str | os.PathLike) -> None:
    """Say where the results went (and how to update the committed ones)."""
    folder = Path(folder).resolve()
    if folder == RESULTS:
        print(f"results written to {folder}")
    else:
        print(f"results written to {folder} (scratch; pass --update to write benchmarks/results/)")
