"""The `kerasprune` command line: inspect, prune, report, export, demo.

Exit codes: 0 success; 1 usage or validation error (a one-line message, no
traceback unless `--debug`); 2 internal error. Results go to stdout as rich
tables; progress and errors go to stderr.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated  # noqa: E402

import numpy as np  # noqa: E402
import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

try:  # typer >= 0.22 vendors click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer with click installed
    from click.exceptions import ClickException, NoArgsIsHelpError

from kerasprune.errors import PruningError  # noqa: E402

log = logging.getLogger(__name__)

app = typer.Typer(
    name="kerasprune",
    help="Remove filters from trained Keras 3 models - exactly, on any architecture.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


class CliError(Exception):
    """A usage or validation problem found by the CLI itself (exit code 1)."""


def _out() -> Console:
    return Console(highlight=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


@contextmanager
def _steps():
    """A transient rich progress display on stderr; `step(text)` marks the work under way."""
    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=_err(), transient=True
    )
    with progress:

        @contextmanager
        def step(text: str):
            task = progress.add_task(text, total=None)
            try:
                yield
            finally:
                progress.remove_task(task)

        yield step


def _load(path: Path, unsafe: bool):
    from kerasprune.io import load_model

    return load_model(path, safe_mode=not unsafe)


def _fmt(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


# ---------------------------------------------------------------------------- inspect
@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="Model file (.keras or .h5).")],
    criterion: Annotated[str, typer.Option(help="Criterion for the filter-score summary.")] = "l1",
    data: Annotated[Path | None, typer.Option(help=".npz with x and y, for data-driven criteria.")] = None,
    loss: Annotated[str | None, typer.Option(help="Keras loss name for --criterion taylor.")] = None,
    unsafe: Annotated[bool, typer.Option("--unsafe", help="Load Lambda layers (runs code from the file).")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    """Layers, coupled channel groups, params and FLOPs, and filter scores of MODEL."""
    import kerasprune as kp
    from kerasprune._keras import weights_of
    from kerasprune.flops import flops_by_layer
    from kerasprune.report import load_data

    out = _out()
    with _steps() as step:
        with step(f"Loading {model}"):
            m = _load(model, unsafe)
        with step("Analyzing channel groups"):
            graph = kp.analyze(m)
            macs = flops_by_layer(m)
        with step(f"Scoring filters ({criterion})"):
            xy = load_data(data) if data is not None else None
            scores = kp.score(m, criterion, graph=graph, data=_batches(xy) if xy is not None else None, loss=loss)
    out.print(
        f"[bold]{escape(m.name)}[/]: {_fmt(kp.count_params(m))} params, {_fmt(kp.count_flops(m))} MACs, "
        f"{len(graph.groups)} groups ({len(graph.prunable_groups)} prunable)"
    )
    layers = Table(title="Layers with weights")
    for col in ("layer", "class", "filters", "params", "MACs"):
        layers.add_column(col, justify="left" if col in ("layer", "class") else "right")
    for key in graph.order:
        rec = graph.records[key]
        params = sum(int(np.prod(v.shape)) for v in weights_of(rec.layer))
        if params or rec.produces is not None:
            width = "-" if rec.produces is None else str(len(rec.produces))
            layers.add_row(escape(key), type(rec.layer).__name__, width, _fmt(params), _fmt(macs.get(key)))
    out.print(layers)
    groups = Table(title=f"Channel groups (filter scores: {criterion})")
    for col in ("group", "layers", "size", "prunable", "exact", "score min / median / max", "reason"):
        groups.add_column(col, justify="right" if col in ("group", "size") else "left", overflow="fold")
    for g in graph.groups:
        s = scores.get(g.id)
        summary = "-" if s is None or not len(s) else f"{s.min():.3g} / {np.median(s):.3g} / {s.max():.3g}"
        groups.add_row(
            str(g.id),
            escape(", ".join(g.layers)),
            str(g.size),
            "yes" if g.prunable else "[red]no[/]",
            "yes" if g.exact else f"[yellow]no[/] ({escape(str(g.approx_reason))})",
            summary,
            escape(g.reason or ""),
        )
    out.print(groups)


# ------------------------------------------------------------------------------ prune
def _explicit(layers: list[str], filters: list[str]) -> dict[str, list[int]]:
    if len(layers) != len(filters):
        raise CliError(
            f"--layer and --filters come in pairs (e.g. --layer conv2d_1 --filters 4,7). "
            f"Received {len(layers)} --layer and {len(filters)} --filters"
        )
    out: dict[str, list[int]] = {}
    for name, text in zip(layers, filters):
        if name in out:
            raise CliError(f"--layer {name} is given twice; list all its filters in one --filters")
        try:
            out[name] = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
        except ValueError:
            raise CliError(f"--filters for layer '{name}' must be comma-separated integers. Received: {text!r}") from None
    return out


def _check_output(path: Path | None, source: Path, force: bool, what: str) -> None:
    from kerasprune.io import same_file

    if path is None:
        return
    if same_file(path, source):
        raise CliError(f"Refusing to write the {what} onto the input file {source}, even with --force")
    if path.exists() and not force:
        raise CliError(f"{what.capitalize()} {path} already exists; pass --force to replace it")


def _batches(data, size: int = 64):
    x, y = data
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


@app.command()
def prune(
    model: Annotated[Path, typer.Argument(help="Model file (.keras or .h5).")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Pruned model to write (.keras).")] = None,
    layer: Annotated[list[str] | None, typer.Option("--layer", help="Layer to remove filters from (repeatable).")] = None,
    filters: Annotated[list[str] | None, typer.Option("--filters", help="Indices for the preceding --layer, e.g. 4,7.")] = None,
    criterion: Annotated[str | None, typer.Option(help="Importance criterion: l1, l2, mean, bn_gamma, fpgm, zero, random, apoz, mean_activation, taylor.")] = None,
    ratio: Annotated[float | None, typer.Option(help="Fraction of each group's filters to remove.")] = None,
    count: Annotated[int | None, typer.Option(help="Number of filters to remove per group.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Remove filters whose score is below this.")] = None,
    global_: Annotated[bool, typer.Option("--global", help="Rank normalized scores across groups.")] = False,
    round_to: Annotated[int | None, typer.Option(help="Keep channel counts multiples of N.")] = None,
    min_keep: Annotated[int, typer.Option(help="Never keep fewer than N channels in a group.")] = 1,
    include: Annotated[list[str] | None, typer.Option(help="Only prune these layers (name or regex).")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Never prune these layers (name or regex).")] = None,
    target_flops: Annotated[float | None, typer.Option(help="Fraction of the MACs to keep, e.g. 0.5.")] = None,
    target_params: Annotated[float | None, typer.Option(help="Fraction of the parameters to keep.")] = None,
    plan: Annotated[Path | None, typer.Option(help="Apply a saved plan (JSON from --save-plan).")] = None,
    save_plan: Annotated[Path | None, typer.Option(help="Write the selection as JSON.")] = None,
    data: Annotated[Path | None, typer.Option(help=".npz with x and y: data-driven criteria and accuracy.")] = None,
    loss: Annotated[str | None, typer.Option(help="Keras loss name for --criterion taylor.")] = None,
    mask: Annotated[bool, typer.Option("--mask", help="Keep the architecture; zero the filters instead.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; write nothing else.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Check removed == masked on random input.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace existing output files (never the input).")] = False,
    plots: Annotated[Path | None, typer.Option(help="Folder for PNG plots.")] = None,
    report: Annotated[Path | None, typer.Option(help="Write a JSON report here.")] = None,
    runs: Annotated[int, typer.Option(help="Timed batches for the latency measurement (0: skip).")] = 20,
    unsafe: Annotated[bool, typer.Option("--unsafe", help="Load Lambda layers (runs code from the file).")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    """Remove filters from MODEL and write the smaller model to OUT.

    Choose the filters one way: explicitly (--layer NAME --filters 4,7), by a
    criterion (--criterion l1 --ratio 0.3, --target-flops 0.5, ...), or from a
    saved plan (--plan plan.json).
    """
    import kerasprune as kp
    from kerasprune.io import save_model, write_text
    from kerasprune.report import channel_counts, compare, load_data, stage_breakdown
    from kerasprune.selection import Selection
    from kerasprune.testing import copy_model, max_output_difference, random_input

    by_criterion = any(v is not None for v in (criterion, ratio, count, threshold, target_flops, target_params))
    modes = [name for name, on in (("--layer/--filters", bool(layer or filters)), ("--criterion", by_criterion), ("--plan", plan is not None)) if on]
    if len(modes) != 1:
        raise CliError(
            "Choose the filters one way: --layer NAME --filters 4,7, --criterion/--ratio/--target-flops, or --plan FILE"
            + (f" (received {' and '.join(modes)})" if modes else "")
        )
    if output is None and not dry_run:
        raise CliError("Missing -o/--output OUT.keras (or use --dry-run to only print the plan)")
    if output is not None and output.suffix != ".keras":
        raise CliError(f"Output {output} must end in .keras")
    for path, what in ((None if dry_run else output, "output"), (save_plan, "plan file"), (report, "report")):
        _check_output(path, model, force, what)
    out = _out()
    with _steps() as step:
        with step(f"Loading {model}"):
            m = _load(model, unsafe)
            xy = load_data(data) if data is not None else None
        with step("Analyzing channel groups"):
            graph = kp.analyze(m)
        with step("Selecting filters"):
            if plan is not None:
                selection = Selection.load(plan)
            elif by_criterion:
                selection = kp.select(
                    m, criterion or "l1", ratio=ratio, count=count, threshold=threshold,
                    scope="global" if global_ else "local", target_flops=target_flops,
                    target_params=target_params, round_to=round_to, min_keep=min_keep,
                    include=include or None, exclude=exclude or None,
                    data=_batches(xy) if xy is not None else None, loss=loss, graph=graph,
                )
            else:
                selection = Selection(_explicit(layer or [], filters or []))
            the_plan = kp.make_plan(graph, selection)
    out.print(selection.table() if selection.groups or selection.skipped else the_plan.summary(), markup=False)
    if the_plan.is_empty:
        raise CliError("The selection removes no filters; nothing to do")
    out.print(f"Layers affected: {', '.join(the_plan.affected_layers)}", markup=False)
    if save_plan is not None:
        write_text(selection.to_json(), save_plan, overwrite=force)
        out.print(f"Plan written to {save_plan}")
    if dry_run:
        return
    with _steps() as step:
        with step("Masking" if mask else "Removing filters"):
            if mask:
                result = copy_model(m)
                kp.mask_filters(result, selection)
            else:
                result = kp.remove_filters(m, selection, graph=graph)
        max_error = None
        if verify:
            with step("Verifying removed == masked"):
                other = kp.remove_filters(m, selection, graph=graph) if mask else copy_model(m)
                if not mask:
                    kp.mask_filters(other, selection)
                max_error = max_output_difference(result, other, random_input(m, batch=4))
            if the_plan.exact and max_error >= 1e-4:
                raise RuntimeError(
                    f"verification failed: removed and masked models differ by {max_error:.3g}; nothing was written"
                )
        with step(f"Writing {output}"):
            save_model(result, output, overwrite=force, source=model)
        with step("Measuring params, FLOPs and latency"):
            comparison = compare(
                m, result, data=xy, latency=runs > 0, runs=max(runs, 1), before_path=model, after_path=output
            )
    if max_error is not None:
        verdict = "[green]OK[/]" if max_error < 1e-4 else "[yellow]approximate groups: expected[/]"
        out.print(f"verify: max |removed - masked| = {max_error:.2e} (relative to output scale) {verdict}")
    out.print(comparison.table(title=escape(f"{'Masked' if mask else 'Pruned'} model written to {output}")))
    files = {"model": str(output)}
    if plots is not None:
        from kerasprune.plots import write_plots

        with _steps() as step, step("Plotting"):
            before = channel_counts(m)
            after = {k: v - len(the_plan.removed_filters(k)) for k, v in before.items()}
            scores = kp.score(
                m, criterion or "l1", graph=graph, data=_batches(xy) if xy is not None else None, loss=loss
            )
            label = {g.id: g.layers[0] for g in graph.groups}
            written = write_plots(
                plots,
                channels=(before, after),
                stages=(stage_breakdown(m), stage_breakdown(result)),
                scores={label[g]: s for g, s in scores.items()},
                removed={label[g]: idx for g, idx in the_plan.removed.items() if g in label},
            )
        files.update({k: str(v) for k, v in written.items()})
        out.print(f"Plots written to {plots}")
    if report is not None:
        doc = {
            "input": str(model),
            "output": str(output),
            "mode": "mask" if mask else "remove",
            "selection": json.loads(selection.to_json()),
            "affected_layers": list(the_plan.affected_layers),
            "exact": the_plan.exact,
            "verify_max_error": max_error,
            "comparison": comparison.to_dict(),
            "files": files,
        }
        write_text(json.dumps(doc, indent=2, default=str), report, overwrite=force)
        out.print(f"Report written to {report}")


# ----------------------------------------------------------------------------- report
@app.command("report")
def report_cmd(
    before: Annotated[Path, typer.Argument(help="Original model file.")],
    after: Annotated[Path, typer.Argument(help="Pruned model file.")],
    data: Annotated[Path | None, typer.Option(help=".npz with arrays x and y, for accuracy.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the comparison as JSON.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Folder for PNG plots.")] = None,
    runs: Annotated[int, typer.Option(help="Timed batches for the latency measurement (0: skip).")] = 20,
    batch_size: Annotated[int, typer.Option(help="Batch size for the latency measurement.")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --json file.")] = False,
    unsafe: Annotated[bool, typer.Option("--unsafe", help="Load Lambda layers (runs code from the file).")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    """Compare two model files: params, FLOPs, file size, latency, accuracy."""
    from kerasprune.io import write_text
    from kerasprune.report import channel_counts, compare, stage_breakdown

    for path in (before, after):
        _check_output(json_out, path, force, "report")
    with _steps() as step:
        with step("Loading models"):
            a, b = _load(before, unsafe), _load(after, unsafe)
        with step("Measuring"):
            comparison = compare(
                a, b, data=data, latency=runs > 0, runs=max(runs, 1), batch_size=batch_size,
                before_path=before, after_path=after,
            )
    _out().print(comparison.table(title=escape(f"{before} vs {after}")))
    if plots is not None:
        from kerasprune.plots import write_plots

        write_plots(plots, channels=(channel_counts(a), channel_counts(b)), stages=(stage_breakdown(a), stage_breakdown(b)))
        _out().print(f"Plots written to {plots}")
    if json_out is not None:
        write_text(json.dumps(comparison.to_dict(), indent=2), json_out, overwrite=force)
        _out().print(f"Report written to {json_out}")


# ----------------------------------------------------------------------------- export
_SUFFIX = {"tflite": ".tflite", "onnx": ".onnx", "savedmodel": None}


def _layer_count(model) -> int:
    return sum(1 + (_layer_count(la) if hasattr(la, "layers") else 0) for la in model.layers)


@app.command("export")
def export_cmd(
    model: Annotated[Path, typer.Argument(help="Model file (.keras or .h5).")],
    to: Annotated[str, typer.Option("--to", help="Format: tflite (LiteRT), onnx or savedmodel.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="File (.tflite, .onnx) or SavedModel folder to write.")],
    fold_bn: Annotated[bool, typer.Option("--fold-bn", help="Fold BatchNorm and other per-channel affine layers into the convolutions first (exact).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output (never the input).")] = False,
    unsafe: Annotated[bool, typer.Option("--unsafe", help="Load Lambda layers (runs code from the file).")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    """Export MODEL for deployment: a LiteRT (TFLite) flatbuffer, ONNX, or a TensorFlow SavedModel."""
    from kerasprune import export
    from kerasprune.deploy import fold_batchnorm

    if to not in _SUFFIX:
        raise CliError(f"--to must be one of {', '.join(_SUFFIX)}. Received: {to!r}")
    if _SUFFIX[to] is not None and output.suffix != _SUFFIX[to]:
        raise CliError(f"Output {output} must end in {_SUFFIX[to]} for --to {to}")
    _check_output(output, model, force, "output")
    with _steps() as step:
        with step(f"Loading {model}"):
            m = _load(model, unsafe)
        folded = 0
        if fold_bn:
            with step("Folding BatchNorm into the convolutions"):
                new = fold_batchnorm(m)
                folded, m = _layer_count(m) - _layer_count(new), new
        with step(f"Exporting {to}"):
            if to == "savedmodel":
                path = export.export_saved_model(m, output, overwrite=force)
            elif to == "tflite":
                path = export.export_tflite(m, output, overwrite=force)
            else:
                path = export.export_onnx(m, output, overwrite=force)
    size = export.exported_size(path)
    note = f"; {folded} layer(s) folded into their convolutions" if fold_bn else ""
    _out().print(f"Exported {escape(str(model))} to {escape(str(path))} ({to}, {size / 1e6:.2f} MB){note}")


# ------------------------------------------------------------------------------- demo
@app.command()
def demo(
    quick: Annotated[bool, typer.Option("--quick", help="Fewer epochs and timing runs.")] = False,
    out: Annotated[Path, typer.Option("--out", help="Folder for models, plots and report.json.")] = Path("kerasprune-demo"),
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    """Train a small CNN on scikit-learn's digits, prune it three classic ways and by criterion, report and plot."""
    from kerasprune import demo as demo_module

    demo_module.run(quick=quick, out_dir=out, console=_out())


# ------------------------------------------------------------------------------- main
def _quiet_backends(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kerasprune").setLevel(logging.DEBUG if debug else logging.WARNING)
    if not debug:
        for name in ("absl", "tensorflow", "h5py", "matplotlib"):
            logging.getLogger(name).setLevel(logging.ERROR)
        import warnings

        warnings.filterwarnings("ignore")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 usage/validation error, 2 internal error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    _quiet_backends(debug)
    err = _err()
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=args, prog_name="kerasprune", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except NoArgsIsHelpError as e:
        Console(stderr=True).print(e.format_message(), markup=False, highlight=False)
        return 1
    except (ClickException, CliError, PruningError) as e:
        message = e.format_message() if isinstance(e, ClickException) else _one_line(e)
        err.print(f"[red]Error:[/] {escape(' '.join(message.split()))}", markup=True, highlight=False, soft_wrap=True)
        if debug:
            err.print(traceback.format_exc(), markup=False, highlight=False)
        return 1
    except (KeyboardInterrupt, typer.Abort):
        err.print("Interrupted; no output was written partially.", markup=False)
        return 130
    except Exception as e:  # a bug, not the user's fault
        err.print(
            f"[red]Internal error:[/] {type(e).__name__}: {escape(_one_line(e))}"
            + ("" if debug else " (run with --debug for the traceback)"),
            markup=True, highlight=False, soft_wrap=True,
        )
        if debug:
            err.print(traceback.format_exc(), markup=False, highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
