"""Per-layer before/after: filters, MACs and share of the model's MACs, layer by layer.

`layer_changes(before, after)` matches the layers of two models by key (a pruned model
keeps its layers' names) and returns one frozen `LayerChange` per layer that has filters
or MACs; `changes_table` renders them as a rich table (the changed layers, by default),
which `kerasprune prune` and `kerasprune report` print.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kerasprune.flops import flops_by_layer

__all__ = ["LayerChange", "changes_table", "layer_changes"]


@dataclass(frozen=True)
class LayerChange:
    """One layer in two models.

    Attributes:
        layer: The layer key (`outer/inner` inside nested models).
        cls: The layer's class name.
        filters_before, filters_after: Output channels (filters, units) it produces in
            each model; None for layers that produce none (or are missing).
        macs_before, macs_after: Its multiply-accumulates for one sample.
        share_before, share_after: Its fraction of the model's MACs.
    """

    layer: str
    cls: str
    filters_before: int | None
    filters_after: int | None
    macs_before: int
    macs_after: int
    share_before: float
    share_after: float

    @property
    def changed(self) -> bool:
        """Whether its filters or MACs differ between the two models."""
        return self.filters_before != self.filters_after or self.macs_before != self.macs_after


def _widths(model) -> tuple[dict[str, int], dict[str, str], list[str]]:
    from kerasprune.graph import analyze

    graph = analyze(model)
    widths = {k: len(r.produces) for k, r in graph.records.items() if r.produces is not None}
    classes = {k: type(r.layer).__name__ for k, r in graph.records.items()}
    return widths, classes, list(graph.order)


def layer_changes(before, after) -> tuple[LayerChange, ...]:
    """Filters and MACs of every layer of `before` (then those only in `after`), in both models.

    Args:
        before: The original model.
        after: The pruned model (layers matched by name).

    Returns:
        One `LayerChange` per layer with filters or MACs, in `before`'s topological order.

    Raises:
        PruningError: a model that cannot be analyzed or counted (see `analyze`, `count_flops`).

    Example:
        >>> [c.layer for c in kerasprune.changes.layer_changes(model, smaller) if c.changed]
        ['conv', 'batch_normalization', 'conv_2']
    """
    macs_b, macs_a = flops_by_layer(before), flops_by_layer(after)
    (wb, cb, order_b), (wa, ca, order_a) = _widths(before), _widths(after)
    total_b, total_a = max(sum(macs_b.values()), 1), max(sum(macs_a.values()), 1)
    keys = [k for k in order_b if k in wb or k in macs_b]
    seen = set(keys)
    keys += [k for k in order_a if (k in wa or k in macs_a) and k not in seen]
    return tuple(
        LayerChange(
            layer=k,
            cls=cb.get(k) or ca.get(k, "?"),
            filters_before=wb.get(k),
            filters_after=wa.get(k),
            macs_before=macs_b.get(k, 0),
            macs_after=macs_a.get(k, 0),
            share_before=macs_b.get(k, 0) / total_b,
            share_after=macs_a.get(k, 0) / total_a,
        )
        for k in keys
    )


def _arrow(a, b, fmt=str) -> str:
    a_s, b_s = ("-" if a is None else fmt(a)), ("-" if b is None else fmt(b))
    return a_s if a == b else f"{a_s} -> {b_s}"


def changes_table(changes: Sequence[LayerChange], *, only_changed: bool = True, title: str | None = None):
    """A `rich.table.Table` of `changes`: layer, class, filters, MACs, share of MACs.

    Layer names are never cut: on a narrow terminal they fold onto more lines while the
    other columns keep their width.

    Args:
        changes: From `layer_changes`.
        only_changed: Show only the layers whose filters or MACs changed (a caption counts
            the others).
        title: Table title.
    """
    from rich.markup import escape
    from rich.table import Table

    rows = [c for c in changes if c.changed] if only_changed else list(changes)
    hidden = len(changes) - len(rows)
    table = Table(
        title=title,
        caption=f"{hidden} unchanged layers not shown" if hidden and rows else None,
    )
    table.add_column("layer", overflow="fold", min_width=10)
    table.add_column("class", overflow="fold")
    for col in ("filters", "MACs", "share of MACs"):
        table.add_column(col, justify="right", no_wrap=True)
    for c in rows:
        table.add_row(
            escape(c.layer),
            c.cls,
            _arrow(c.filters_before, c.filters_after),
            _arrow(c.macs_before, c.macs_after, lambda n: f"{n:,}"),
            _arrow(round(c.share_before, 3), round(c.share_after, 3), lambda v: f"{v:.1%}"),
        )
    return table
