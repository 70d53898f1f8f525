"""Options shared by the commands, how help shows them, and parsing of option values.

A command declares a shared option by its alias (`imports: Imports = None`), so that an
option means the same on every command and a new command gets it in one line. `Command`
and `Group` are the click classes of the app: help shows `MODEL` (not `{model}`), flags
without a `<bool>` type, and options a command requires in practice as required.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup

from kerasprune._cli.console import CliError

LOADING = "Loading the model"
DATA = "Data"
OUTPUT = "Output"
MEASURE = "Measurement"

#: Fewer timed runs than this give a median that is mostly noise.
MIN_RUNS = 10

# -- shared options ----------------------------------------------------------------------
Model = Annotated[Path, typer.Argument(metavar="MODEL", help="Model file (.keras or .h5).", show_default=False)]
Imports = Annotated[
    list[str] | None,
    typer.Option(
        "--import", metavar="MODULE_OR_FILE", rich_help_panel=LOADING,
        help="Import this module or .py file first: code that registers custom layers, objects or rules (repeatable).",
    ),
]  # fmt: skip
Channelwise = Annotated[
    list[str] | None,
    typer.Option(
        "--channelwise", metavar="NAME", rich_help_panel=LOADING,
        help="Treat layer NAME (e.g. a Lambda) as element-wise: channel c in, channel c out (repeatable).",
    ),
]  # fmt: skip
Unsafe = Annotated[
    bool,
    typer.Option("--unsafe", rich_help_panel=LOADING, help="Load Lambda layers (runs Python code stored in the file)."),
]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks and framework debug logs.")]
Force = Annotated[
    bool, typer.Option("--force", rich_help_panel=OUTPUT, help="Replace existing output files (never the input).")
]
Data = Annotated[
    Path | None,
    typer.Option("--data", metavar="FILE.npz", rich_help_panel=DATA, help=".npz file with arrays x and y."),
]
XKey = Annotated[str, typer.Option("--x-key", metavar="KEY", rich_help_panel=DATA, help="Name of the inputs in the .npz file.")]
YKey = Annotated[str, typer.Option("--y-key", metavar="KEY", rich_help_panel=DATA, help="Name of the labels in the .npz file.")]
BatchSize = Annotated[
    int, typer.Option("--batch-size", metavar="N", rich_help_panel=DATA, help="Batch size for data-driven criteria and evaluation.")
]
Runs = Annotated[
    int,
    typer.Option(
        "--runs", metavar="N", rich_help_panel=MEASURE,
        help=f"Timed batches for the latency figure (median; at least {MIN_RUNS}; 0 skips it).",
    ),
]  # fmt: skip
Plots = Annotated[
    Path | None, typer.Option("--plots", metavar="DIR", rich_help_panel=OUTPUT, help="Folder for PNG plots.")
]
Criterion = Annotated[
    str | None,
    typer.Option(
        "--criterion", metavar="NAME",
        help="Importance criterion: l1, l2, mean, bn_gamma, fpgm, zero, random, apoz, mean_activation, taylor.",
    ),
]  # fmt: skip
Loss = Annotated[str | None, typer.Option("--loss", metavar="NAME", help="Keras loss name (for --criterion taylor, and training).")]


# -- help rendering ----------------------------------------------------------------------
class Command(TyperCommand):
    """A command whose help shows `MODEL` (not `{model}`) and flags without `<bool>`.

    `shown_required` names options that help marks required although the command checks
    them itself (`prune`'s `-o`, which `--dry-run` does without).
    """

    shown_required: tuple[str, ...] = ()

    def collect_usage_pieces(self, ctx) -> list[str]:
        return [re.sub(r"^\{(.*)\}$", r"\1", piece) for piece in super().collect_usage_pieces(ctx)]

    def format_help(self, ctx, formatter) -> None:
        params = self.get_params(ctx)
        saved = [(p, p.metavar, p.required) for p in params]
        for p in params:
            if getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""
            if p.name in self.shown_required:
                p.required = True
        try:
            super().format_help(ctx, formatter)
        finally:
            for p, metavar, required in saved:
                p.metavar, p.required = metavar, required


def command(*, required: tuple[str, ...] = ()) -> type[Command]:
    """A `Command` class marking the options `required` (parameter names) as required in help."""
    return type("Command", (Command,), {"shown_required": tuple(required)})


class Group(TyperGroup):
    """The app: flags without `<bool>` in the top-level help too."""

    def format_help(self, ctx, formatter) -> None:
        params = self.get_params(ctx)
        saved = [(p, p.metavar) for p in params]
        for p in params:
            if getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""
        try:
            super().format_help(ctx, formatter)
        finally:
            for p, metavar in saved:
                p.metavar = metavar


# -- values --------------------------------------------------------------------------------
_RANGE = re.compile(r"^(-?\d+)-(-?\d+)$")


def parse_indices(text: str, layer: str) -> list[int]:
    """`"0-3,7,-1"` -> `[0, 1, 2, 3, 7, -1]`: indices and inclusive ranges (both ends of one sign).

    Raises:
        CliError: not integers or ranges, a reversed range, a range across zero.
    """
    out: list[int] = []
    for token in text.replace(" ", "").split(","):
        if token == "":
            continue
        if re.fullmatch(r"-?\d+", token):
            out.append(int(token))
            continue
        m = _RANGE.match(token)
        if m is None:
            raise CliError(
                f"--filters for layer '{layer}' must be comma-separated integers or ranges like 0-31. "
                f"Received: {text!r}"
            )
        a, b = int(m.group(1)), int(m.group(2))
        if (a < 0) != (b < 0) or a > b:
            raise CliError(
                f"--filters for layer '{layer}': range {token!r} must go upwards with both ends of one "
                "sign (e.g. 0-31 or -4--1)"
            )
        out.extend(range(a, b + 1))
    return out


def explicit(layers: list[str], filters: list[str]) -> dict[str, list[int]]:
    """`--layer NAME --filters 4,7` pairs as `{layer: indices}`.

    Raises:
        CliError: unpaired options, a layer given twice, bad indices.
    """
    if len(layers) != len(filters):
        raise CliError(
            f"--layer and --filters come in pairs (e.g. --layer conv2d_1 --filters 4,7). "
            f"Received {len(layers)} --layer and {len(filters)} --filters"
        )
    out: dict[str, list[int]] = {}
    for name, text in zip(layers, filters):
        if name in out:
            raise CliError(f"--layer {name} is given twice; list all its filters in one --filters")
        out[name] = parse_indices(text, name)
    return out


def check_runs(runs: int) -> None:
    """`--runs` is 0 (no latency) or enough runs for a median that means something."""
    if runs != 0 and not MIN_RUNS <= runs:
        raise CliError(
            f"--runs must be 0 (skip the latency measurement) or at least {MIN_RUNS}: the median of "
            f"fewer timed batches is mostly noise. Received: --runs {runs}"
        )
