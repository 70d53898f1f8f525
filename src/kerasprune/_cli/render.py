"""What the commands print: inspection tables (and their JSON), selections, comparisons.

Layer names are never cut: on a narrow terminal they fold onto more lines while the
short columns (classes, numbers) keep their width. Library text (selection tables, warnings) is printed
in CLI words.
"""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from kerasprune._cli.console import out, warn
from kerasprune._cli.words import cli_words


def _fmt(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


# -- inspect -------------------------------------------------------------------------------
def inspect_doc(model, graph, criterion: str, scores) -> dict:
    """Everything `inspect` shows, as JSON-ready data (`inspect --json` prints it)."""
    import numpy as np

    import kerasprune as kp
    from kerasprune._keras import weights_of

    macs = kp.flops_by_layer(model)
    layers = []
    for key in graph.order:
        rec = graph.records[key]
        params = sum(int(np.prod(v.shape)) for v in weights_of(rec.layer))
        if params or rec.produces is not None:
            layers.append({
                "layer": key,
                "class": type(rec.layer).__name__,
                "filters": None if rec.produces is None else len(rec.produces),
                "params": params,
                "macs": macs.get(key),
            })  # fmt: skip
    groups = []
    for g in graph.groups:
        s = scores.get(g.id)
        stats = None if s is None or not len(s) else {
            "min": float(s.min()), "median": float(np.median(s)), "max": float(s.max())
        }  # fmt: skip
        groups.append({
            "id": g.id, "layers": list(g.layers), "size": g.size, "prunable": g.prunable,
            "exact": g.exact, "approx_reason": g.approx_reason, "reason": g.reason, "scores": stats,
        })  # fmt: skip
    return {
        "model": model.name,
        "params": kp.count_params(model),
        "macs": kp.count_flops(model),
        "criterion": criterion,
        "layers": layers,
        "groups": groups,
    }


def _name_column(table: Table, header: str) -> None:
    """A column of layer names: folded onto more lines when narrow, never cut."""
    table.add_column(header, overflow="fold", min_width=10)


def print_inspection(doc: dict) -> None:
    con = out()
    prunable = sum(1 for g in doc["groups"] if g["prunable"])
    con.print(
        f"[bold]{escape(doc['model'])}[/]: {_fmt(doc['params'])} params, {_fmt(doc['macs'])} MACs, "
        f"{len(doc['groups'])} groups ({prunable} prunable)"
    )
    layers = Table(title="Layers with weights")
    _name_column(layers, "layer")
    layers.add_column("class", overflow="fold")
    for col in ("filters", "params", "MACs"):
        layers.add_column(col, justify="right", no_wrap=True)
    for r in doc["layers"]:
        width = "-" if r["filters"] is None else str(r["filters"])
        layers.add_row(escape(r["layer"]), r["class"], width, _fmt(r["params"]), _fmt(r["macs"]))
    con.print(layers)
    groups = Table(title=f"Channel groups (filter scores: {doc['criterion']})")
    for col in ("group", "layers", "size", "prunable", "exact", "score min / median / max", "reason"):
        groups.add_column(col, justify="right" if col in ("group", "size") else "left", overflow="fold")
    for g in doc["groups"]:
        s = g["scores"]
        summary = "-" if s is None else f"{s['min']:.3g} / {s['median']:.3g} / {s['max']:.3g}"
        groups.add_row(
            str(g["id"]),
            escape(", ".join(g["layers"])),
            str(g["size"]),
            "yes" if g["prunable"] else "[red]no[/]",
            "yes" if g["exact"] else f"[yellow]no[/] ({escape(str(g['approx_reason']))})",
            summary,
            escape(cli_words(g["reason"] or "")),
        )
    con.print(groups)


# -- prune / report ------------------------------------------------------------------------
def print_selection(selection) -> None:
    """The selection table (groups, before -> after, MACs/params, warnings) in CLI words."""
    out().print(cli_words(selection.table()), markup=False, soft_wrap=True)


def print_affected(plan) -> None:
    names = plan.affected_layers
    out().print(f"Layers affected ({len(names)}, weights or config change): {', '.join(names)}", markup=False,
                soft_wrap=True)


def print_verification(check) -> None:
    if check.exact:
        verdict = "[green]OK[/]" if check.ok else "[red]MISMATCH[/]"
    else:
        verdict = "[yellow]approximate groups: expected[/]"
    out().print(f"verify: max |removed - masked| = {check.max_error:.2e} (relative to output scale) {verdict}")
    if check.feature_error is not None:
        out().print(f"verify: kept channels of {check.layers_compared} changed feature maps differ by at most "
                    f"{check.feature_error:.2e}")
    for w in check.warnings:
        warn(f"--verify: {w}")


def latency_note(comparison) -> str | None:
    """The spread of both latency figures, and whether their difference is within it."""
    b, a = comparison.before.latency, comparison.after.latency
    if b is None or a is None:
        return None
    note = (
        f"latency: median of {b.runs} timed batches after {b.warmup} warm-up; range "
        f"{b.min_ms:.2f}-{b.max_ms:.2f} ms before, {a.min_ms:.2f}-{a.max_ms:.2f} ms after"
    )
    if b.min_ms <= a.median_ms <= b.max_ms and a.min_ms <= b.median_ms <= a.max_ms:
        note += "; [yellow]noisy[/]: each median lies within the other's range, so the change may be noise"
    return note


def print_comparison(comparison, title: str) -> None:
    out().print(comparison.table(title=escape(title)))
    note = latency_note(comparison)
    if note:
        out().print(note, soft_wrap=True)


def print_changes(before, after, title: str = "Per layer") -> None:
    """Filters, MACs and share of MACs of every changed layer, before -> after."""
    from kerasprune.changes import changes_table, layer_changes

    changes = layer_changes(before, after)
    if any(c.changed for c in changes):
        out().print(changes_table(changes, title=title))
    else:
        out().print(f"{title}: no layer's filters or MACs changed")
