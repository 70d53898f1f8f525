"""The `kerasprune` command line: inspect, prune, finetune, report, export, demo.

Exit codes: 0 success; 1 usage or validation error (a one-line message, no
traceback unless `--debug`); 2 internal error. Results go to stdout as rich
tables; progress, warnings and errors go to stderr.

Layout: one function per command, each thin — options, then calls into `kerasprune._cli`
(`options`: shared options and help rendering; `loading`: `--import`, models, data, output
checks; `pruning`: choosing and applying filters, the JSON report; `training`: compiling for
`finetune`; `render`: what is printed; `console`: consoles, logging, quiet start; `words`:
library messages in CLI words), and `main`, the entry point. Nothing here imports Keras at
import time: `kerasprune --help` starts without a backend. To add a command: a function with
`@app.command(cls=Command)` whose first line is `setup(debug)`; to add an option shared by
several commands: an alias in `_cli/options.py`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from kerasprune._cli import loading, pruning, render, training
from kerasprune._cli.console import CliError, absorbed, out, run, setup, steps, warn
from kerasprune._cli.options import (
    DATA,
    MEASURE,
    OUTPUT,
    BatchSize,
    Channelwise,
    Command,
    Criterion,
    Data,
    Debug,
    Force,
    Group,
    Imports,
    Loss,
    Model,
    Plots,
    Runs,
    Unsafe,
    XKey,
    YKey,
    check_runs,
    command,
)

TARGET_SLACK = 0.03  # as kerasprune.allocation.TARGET_SLACK (not imported: it loads Keras)

app = typer.Typer(
    name="kerasprune",
    help="Remove filters from trained Keras 3 models - exactly, on any architecture.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=Group,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        import kerasprune

        try:
            keras_version = version("keras")
        except PackageNotFoundError:  # pragma: no cover
            keras_version = "not installed"
        typer.echo(f"kerasprune {kerasprune.__version__} (keras {keras_version})")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Remove filters from trained Keras 3 models - exactly, on any architecture."""


def _model(path: Path, *, imports, unsafe: bool, debug: bool, step, compile: bool = False):
    loading.import_code(imports, debug=debug)
    with step(f"Loading {path}"):
        return loading.load_model(path, unsafe=unsafe, compile=compile)


# ---------------------------------------------------------------------------- inspect
@app.command(cls=Command)
def inspect(
    model: Model,
    criterion: Annotated[str, typer.Option(metavar="NAME", help="Criterion for the filter-score summary.")] = "l1",
    data: Data = None,
    x_key: XKey = "x",
    y_key: YKey = "y",
    loss: Loss = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    imports: Imports = None,
    channelwise: Channelwise = None,
    unsafe: Unsafe = False,
    debug: Debug = False,
) -> None:
    """Layers, coupled channel groups, params and MACs, and filter scores of MODEL."""
    setup(debug)
    pruning.check_criterion(criterion, data, loss)
    import kerasprune as kp

    with steps() as step:
        m = _model(model, imports=imports, unsafe=unsafe, debug=debug, step=step)
        xy = loading.read_data(data, model=m, x_key=x_key, y_key=y_key) if data is not None else None
        with step("Analyzing channel groups"):
            graph = kp.analyze(m, channelwise=channelwise or ())
        with step(f"Scoring filters ({criterion})"):
            scores = kp.score(m, criterion, graph=graph, data=xy, loss=loss)
        doc = render.inspect_doc(m, graph, criterion, scores)
    if json_:
        out().print_json(json.dumps(doc))
    else:
        render.print_inspection(doc)


# ------------------------------------------------------------------------------ prune
@app.command(cls=command(required=("output",)))
def prune(
    model: Model,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", metavar="OUT.keras", help="Pruned model to write (not needed with --dry-run)."),
    ] = None,
    layer: Annotated[list[str] | None, typer.Option("--layer", metavar="NAME", help="Layer to remove filters from (repeatable).")] = None,
    filters: Annotated[list[str] | None, typer.Option("--filters", metavar="INDICES", help="Filters of the preceding --layer: 4,7 or ranges 0-31,40.")] = None,
    criterion: Criterion = None,
    ratio: Annotated[float | None, typer.Option(help="Fraction of each group's filters to remove.")] = None,
    count: Annotated[int | None, typer.Option(help="Number of filters to remove per group.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Remove filters whose score is below this.")] = None,
    global_: Annotated[bool, typer.Option("--global", help="Rank normalized scores across groups.")] = False,
    round_to: Annotated[int | None, typer.Option(metavar="N", help="Keep channel counts multiples of N.")] = None,
    min_keep: Annotated[int, typer.Option(metavar="N", help="Never keep fewer than N channels in a group.")] = 1,
    include: Annotated[list[str] | None, typer.Option(metavar="REGEX", help="Only prune these layers (name or regex).")] = None,
    exclude: Annotated[list[str] | None, typer.Option(metavar="REGEX", help="Never prune these layers (name or regex).")] = None,
    target_flops: Annotated[float | None, typer.Option(help="Fraction of the MACs to keep, e.g. 0.5.")] = None,
    target_params: Annotated[float | None, typer.Option(help="Fraction of the parameters to keep.")] = None,
    target_latency: Annotated[float | None, typer.Option(help="Fraction of the latency to keep on --runtime, measured (docs/latency.md).")] = None,
    runtime: Annotated[str, typer.Option(metavar="keras|litert|onnx", rich_help_panel=MEASURE, help="Runtime for latency: the target and the report.")] = "keras",
    latency_batch_size: Annotated[int, typer.Option(metavar="N", rich_help_panel=MEASURE, help="Batch size for latency: the target and the report.")] = 1,
    selection: Annotated[Path | None, typer.Option("--selection", metavar="FILE", help="Apply a saved selection (JSON from --save-selection).")] = None,
    save_selection: Annotated[Path | None, typer.Option("--save-selection", metavar="FILE", rich_help_panel=OUTPUT, help="Write the selection as JSON.")] = None,
    plan: Annotated[Path | None, typer.Option("--plan", hidden=True)] = None,
    save_plan: Annotated[Path | None, typer.Option("--save-plan", hidden=True)] = None,
    data: Data = None,
    x_key: XKey = "x",
    y_key: YKey = "y",
    batch_size: BatchSize = 32,
    loss: Loss = None,
    mask: Annotated[bool, typer.Option("--mask", help="Keep the architecture; zero the filters instead.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the selection; write nothing else.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Check removed == masked on random input.")] = False,
    force: Force = False,
    plots: Plots = None,
    report: Annotated[Path | None, typer.Option(metavar="FILE", rich_help_panel=OUTPUT, help="Write a JSON report here.")] = None,
    runs: Runs = 20,
    imports: Imports = None,
    channelwise: Channelwise = None,
    unsafe: Unsafe = False,
    debug: Debug = False,
) -> None:
    """Remove filters from MODEL and write the smaller model to OUT.keras.

    Choose the filters one way: explicitly (--layer NAME --filters 4,7), by a
    criterion (--criterion l1 --ratio 0.3, --target-flops 0.5, ...), or from a
    saved selection (--selection selection.json).
    """
    setup(debug)
    if plan is not None and selection is not None or save_plan is not None and save_selection is not None:
        raise CliError("--plan and --save-plan are the old names of --selection and --save-selection; give one")
    how = pruning.How(
        layers=tuple(layer or ()), filters=tuple(filters or ()), criterion=criterion, ratio=ratio, count=count,
        threshold=threshold, target_flops=target_flops, target_params=target_params, global_=global_,
        target_latency=target_latency, runtime=runtime, latency_batch_size=latency_batch_size,
        round_to=round_to, min_keep=min_keep, include=tuple(include or ()), exclude=tuple(exclude or ()),
        selection_file=selection or plan, loss=loss, batch_size=batch_size,
    )  # fmt: skip
    save_selection = save_selection or save_plan
    if how.way == "criterion":
        pruning.check_criterion(criterion or "l1", data, loss)
    if output is None and not dry_run:
        raise CliError("Missing -o/--output OUT.keras (or use --dry-run to only print the selection)")
    if output is not None and output.suffix != ".keras":
        raise CliError(f"Output {output} must end in .keras")
    check_runs(runs)
    outputs = [(None if dry_run else output, "output"), (save_selection, "selection file"), (report, "report")]
    loading.check_outputs([model], outputs, force)
    loading.check_plots(None if dry_run else plots, force)
    import kerasprune as kp
    from kerasprune.io import save_model, write_text

    with steps() as step:
        m = _model(model, imports=imports, unsafe=unsafe, debug=debug, step=step)
        xy = loading.read_data(data, model=m, x_key=x_key, y_key=y_key) if data is not None else None
        with step("Analyzing channel groups"):
            graph = kp.analyze(m, channelwise=channelwise or ())
        with step("Selecting filters"):
            chosen = pruning.choose(m, graph, how, xy)
            the_plan = kp.make_plan(graph, chosen)
    render.print_selection(chosen)
    if the_plan.is_empty:
        raise CliError(pruning.why_empty(chosen, how))
    render.print_affected(the_plan)
    if save_selection is not None:
        write_text(chosen.to_json(), save_selection, overwrite=force)
        out().print(f"Selection written to {save_selection}")
    if dry_run:
        return
    from kerasprune.report import compare
    from kerasprune.verify import verify_removal

    with steps() as step:
        with step("Masking" if mask else "Removing filters"):
            result = pruning.apply(m, graph, chosen, mask=mask)
        check = None
        if verify:
            with step("Verifying removed == masked"):
                check = verify_removal(m, the_plan, **({"masked": result} if mask else {"pruned": result}))
            if not check.ok:
                raise RuntimeError(
                    f"verification failed: removed and masked models differ by {check.max_error:.3g}; nothing was written"
                )
        with step(f"Writing {output}"):
            save_model(result, output, overwrite=force, source=model)
        with step("Measuring params, MACs" + (" and latency" if runs else "")):
            comparison = compare(
                m, result, data=xy, latency=runs > 0, runs=max(runs, 1), before_path=model, after_path=output,
                runtime=runtime, batch_size=latency_batch_size,
            )  # fmt: skip
    if check is not None:
        render.print_verification(check)
    render.print_comparison(comparison, f"{'Masked' if mask else 'Pruned'} model written to {output}")
    render.print_changes(m, result)
    files = {"model": output}
    if plots is not None:
        from kerasprune.plots import plot_pruning

        with steps() as step, step("Plotting"):
            scores = kp.score(m, criterion or "l1", graph=graph, data=xy, loss=loss)
            files.update(plot_pruning(plots, m, result, plan=the_plan, scores=scores, overwrite=force))
        out().print(f"Plots written to {plots}")
    if report is not None:
        doc = pruning.report_doc(
            model_path=model, output=output, mask=mask, selection=chosen, plan=the_plan, check=check,
            comparison=comparison, files=files,
        )  # fmt: skip
        write_text(json.dumps(doc, indent=2, default=str), report, overwrite=force)
        out().print(f"Report written to {report}")


# --------------------------------------------------------------------------- finetune
@app.command(cls=Command)
def finetune(
    model: Model,
    data: Annotated[Path, typer.Option("--data", metavar="TRAIN.npz", rich_help_panel=DATA, help="Training data: .npz with x and y.")],
    val: Annotated[Path, typer.Option("--val", metavar="VAL.npz", rich_help_panel=DATA, help="Validation data: .npz with x and y.")],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="OUT.keras", help="Pruned, fine-tuned model to write.")],
    criterion: Criterion = None,
    target_flops: Annotated[float | None, typer.Option(help="Fraction of the MACs to keep in the end, e.g. 0.5.")] = None,
    ratio: Annotated[float | None, typer.Option(help="Fraction of each group's filters to remove in the end.")] = None,
    steps_: Annotated[int, typer.Option("--steps", metavar="N", help="Prune / fine-tune rounds.")] = 3,
    epochs: Annotated[int, typer.Option(metavar="N", help="Fine-tuning epochs after each removal.")] = 1,
    batch_size: BatchSize = 32,
    monitor: Annotated[str | None, typer.Option(metavar="NAME", help="Validation metric that picks each step's best epoch (default: val accuracy, else val_loss).")] = None,
    mode: Annotated[str | None, typer.Option(metavar="max|min", help="Whether a higher or lower --monitor is better.")] = None,
    loss: Loss = None,
    optimizer: Annotated[str | None, typer.Option(metavar="NAME", help="Keras optimizer name (default: the file's, else adam).")] = None,
    learning_rate: Annotated[float | None, typer.Option(metavar="LR", help="Learning rate for fine-tuning.")] = None,
    metric: Annotated[list[str] | None, typer.Option(metavar="NAME", help="Metric to compile with (repeatable; default: the file's).")] = None,
    global_: Annotated[bool, typer.Option("--global", help="Rank normalized scores across groups (default with --target-flops).")] = False,
    round_to: Annotated[int | None, typer.Option(metavar="N", help="Keep channel counts multiples of N.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(metavar="REGEX", help="Never prune these layers (name or regex).")] = None,
    x_key: XKey = "x",
    y_key: YKey = "y",
    report: Annotated[Path | None, typer.Option(metavar="FILE", rich_help_panel=OUTPUT, help="Write the history and comparison as JSON.")] = None,
    force: Force = False,
    runs: Runs = 0,
    imports: Imports = None,
    channelwise: Channelwise = None,
    unsafe: Unsafe = False,
    debug: Debug = False,
) -> None:
    """Prune MODEL in --steps rounds towards a target, fine-tuning on --data after each.

    The model is fine-tuned with the loss, optimizer and metrics stored in its file
    (or --loss/--optimizer/--learning-rate/--metric); each step keeps its best epoch
    by --monitor on --val.
    """
    setup(debug)
    if (target_flops is None) == (ratio is None):
        raise CliError("Give one target: --target-flops F (fraction of the MACs to keep) or --ratio R")
    if output.suffix != ".keras":
        raise CliError(f"Output {output} must end in .keras")
    pruning.check_criterion(criterion or "l1", data, loss)
    check_runs(runs)
    loading.check_outputs([model, data, val], [(output, "output"), (report, "report")], force)
    import kerasprune as kp
    from kerasprune.io import save_model, write_text
    from kerasprune.report import compare

    with steps() as step:
        m = _model(model, imports=imports, unsafe=unsafe, debug=debug, step=step, compile=True)
        train_xy = loading.read_data(data, model=m, x_key=x_key, y_key=y_key, option="--data")
        val_xy = loading.read_data(val, model=m, x_key=x_key, y_key=y_key, option="--val")
        training.compiled(m, loss=loss, optimizer=optimizer, learning_rate=learning_rate, metrics=metric, path=model)
        name, direction = training.pick_monitor(m, val_xy, monitor, mode)
        with step(f"Pruning in {steps_} steps, fine-tuning {epochs} epoch(s) each"), absorbed("kerasprune.allocation"):
            # the per-step targets are internal; whether the final one is met is said below
            options = {"round_to": round_to, "exclude": exclude or None, "batch_size": batch_size}
            result, history = kp.prune_and_finetune(
                m, criterion=criterion or "l1", target_flops=target_flops, target_ratio=ratio, steps=steps_,
                train_data=train_xy, val_data=val_xy, epochs_per_step=epochs, monitor=name, mode=direction,
                scope="global" if global_ or target_flops is not None else "local", data=train_xy, loss=loss,
                select_options={k: v for k, v in options.items() if v is not None},
                fit_options={"batch_size": batch_size}, channelwise=channelwise or (),
            )  # fmt: skip
        with step(f"Writing {output}"):
            save_model(result, output, overwrite=force, source=model)
        with step("Measuring"):
            comparison = compare(m, result, data=val_xy, latency=runs > 0, runs=max(runs, 1), before_path=model, after_path=output)
    out().print(history.table(), markup=False)
    if target_flops is not None and comparison.flops_ratio < target_flops - TARGET_SLACK:
        warn(f"--target-flops {target_flops:g} asked for, {comparison.flops_ratio:.1%} of the MACs kept: "
             "the smallest removal steps that meet it remove more")
    render.print_comparison(comparison, f"Pruned and fine-tuned model written to {output}")
    render.print_changes(m, result)
    if report is not None:
        doc = {"input": str(model), "output": str(output), "history": history.to_dict(), "comparison": comparison.to_dict()}
        write_text(json.dumps(doc, indent=2, default=str), report, overwrite=force)
        out().print(f"Report written to {report}")


# ----------------------------------------------------------------------------- report
@app.command("report", cls=Command)
def report_cmd(
    before: Annotated[Path, typer.Argument(metavar="BEFORE", help="Original model file.", show_default=False)],
    after: Annotated[Path, typer.Argument(metavar="AFTER", help="Pruned model file.", show_default=False)],
    data: Data = None,
    x_key: XKey = "x",
    y_key: YKey = "y",
    json_out: Annotated[Path | None, typer.Option("--json", metavar="FILE", rich_help_panel=OUTPUT, help="Write the comparison as JSON (- for stdout).")] = None,
    plots: Plots = None,
    runs: Runs = 20,
    batch_size: Annotated[int, typer.Option(metavar="N", rich_help_panel=MEASURE, help="Batch size for the latency measurement.")] = 1,
    runtime: Annotated[str, typer.Option(metavar="keras|litert|onnx", rich_help_panel=MEASURE, help="Runtime to time the models on.")] = "keras",
    breakdown: Annotated[bool, typer.Option("--breakdown", rich_help_panel=MEASURE, help="Time every layer alone; flag layers not faster with their MACs.")] = False,
    fold_bn: Annotated[bool, typer.Option("--fold-bn", rich_help_panel=MEASURE, help="Also compare both models with BatchNorm folded into the convolutions (as export --fold-bn deploys them).")] = False,
    force: Force = False,
    imports: Imports = None,
    channelwise: Channelwise = None,
    unsafe: Unsafe = False,
    debug: Debug = False,
) -> None:
    """Compare two model files: params, MACs, file size, latency, accuracy, per-layer changes."""
    setup(debug)
    check_runs(runs)
    to_stdout = json_out is not None and str(json_out) == "-"
    loading.check_outputs([before, after], [(None if to_stdout else json_out, "report")], force)
    loading.check_plots(plots, force, scores=False)
    from kerasprune.io import write_text
    from kerasprune.report import compare

    with steps() as step:
        loading.import_code(imports, debug=debug)
        with step("Loading models"):
            a = loading.load_model(before, unsafe=unsafe)
            b = loading.load_model(after, unsafe=unsafe)
        xy = loading.read_data(data, model=a, x_key=x_key, y_key=y_key) if data is not None else None
        with step("Measuring"):
            comparison = compare(
                a, b, data=xy, latency=runs > 0, runs=max(runs, 1), batch_size=batch_size,
                before_path=before, after_path=after, runtime=runtime, breakdown=breakdown,
            )  # fmt: skip
        folded = None
        if fold_bn:
            from kerasprune.deploy import fold_batchnorm

            with step("Measuring both models with BatchNorm folded"):
                folded = compare(
                    fold_batchnorm(a), fold_batchnorm(b), latency=runs > 0, runs=max(runs, 1),
                    batch_size=batch_size, runtime=runtime,
                )  # fmt: skip
    doc = comparison.to_dict() | ({"folded": folded.to_dict()} if folded is not None else {})
    if to_stdout:
        out().print_json(json.dumps(doc))
        return
    render.print_comparison(comparison, f"{before} vs {after}")
    render.print_changes(a, b)
    if comparison.breakdown is not None:
        render.print_breakdown(comparison.breakdown)
    if folded is not None:
        render.print_comparison(folded, "With BatchNorm folded (as export --fold-bn deploys them)")
    if plots is not None:
        from kerasprune.plots import plot_pruning

        plot_pruning(plots, a, b, overwrite=force)
        out().print(f"Plots written to {plots}")
    if json_out is not None:
        write_text(json.dumps(doc, indent=2), json_out, overwrite=force)
        out().print(f"Report written to {json_out}")


# ----------------------------------------------------------------------------- export
_SUFFIX = {"tflite": ".tflite", "onnx": ".onnx", "savedmodel": None}


def _layer_count(model) -> int:
    return sum(1 + (_layer_count(la) if hasattr(la, "layers") else 0) for la in model.layers)


@app.command("export", cls=Command)
def export_cmd(
    model: Model,
    to: Annotated[str, typer.Option("--to", metavar="tflite|onnx|savedmodel", help="Format: tflite (LiteRT), onnx or savedmodel.")],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="PATH", rich_help_panel=OUTPUT, help="File (.tflite, .onnx) or SavedModel folder to write.")],
    fold_bn: Annotated[bool, typer.Option("--fold-bn", help="Fold BatchNorm and other per-channel affine layers into the convolutions first (exact).")] = False,
    force: Force = False,
    imports: Imports = None,
    unsafe: Unsafe = False,
    debug: Debug = False,
) -> None:
    """Export MODEL for deployment: a LiteRT (TFLite) flatbuffer, ONNX, or a TensorFlow SavedModel."""
    setup(debug)
    if to not in _SUFFIX:
        raise CliError(f"--to must be one of {', '.join(_SUFFIX)}. Received: {to!r}")
    if _SUFFIX[to] is not None and output.suffix != _SUFFIX[to]:
        raise CliError(f"Output {output} must end in {_SUFFIX[to]} for --to {to}")
    loading.check_outputs([model], [(output, "output")], force)
    from kerasprune import export
    from kerasprune.deploy import fold_batchnorm

    with steps() as step:
        m = _model(model, imports=imports, unsafe=unsafe, debug=debug, step=step)
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
    out().print(f"Exported {model} to {path} ({to}, {size / 1e6:.2f} MB){note}", markup=False)


# ------------------------------------------------------------------------------- demo
@app.command(cls=Command)
def demo(
    quick: Annotated[bool, typer.Option("--quick", help="Fewer epochs and timing runs.")] = False,
    out_dir: Annotated[Path, typer.Option("--out", metavar="DIR", help="Folder for models, plots and report.json.")] = Path("kerasprune-demo"),
    force: Annotated[bool, typer.Option("--force", help="Replace the demo's files already in --out.")] = False,
    debug: Debug = False,
) -> None:
    """Train a small CNN on scikit-learn's digits, prune it three classic ways and by criterion, report and plot."""
    setup(debug)
    from kerasprune import demo as demo_module

    existing = demo_module.existing_files(out_dir)
    if existing and not force:
        raise CliError(
            f"{out_dir} already holds {', '.join(existing)} (from an earlier demo, or your own files); "
            "pass --force to replace them, or --out NEW_DIR"
        )
    demo_module.run(quick=quick, out_dir=out_dir, console=out(), overwrite=force)


# ------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 usage/validation error, 2 internal error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return run(typer.main.get_command(app), args, prog_name="kerasprune")


if __name__ == "__main__":
    sys.exit(main())
