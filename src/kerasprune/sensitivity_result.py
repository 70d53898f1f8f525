"""The result of a sensitivity scan: rows, curves, a table, a plot, and the plan it implies.

`kerasprune.sensitivity` (the scan) returns a `SensitivityResult`; this module is the
record and what is read off it, as `selection.py` is for `allocation.select`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from kerasprune.errors import PruningError, SelectionError
from kerasprune.graph import ChannelGraph
from kerasprune.groupwise import cells, lowest
from kerasprune.io import atomic_path
from kerasprune.plan import Plan
from kerasprune.selection import Selection


@dataclass(frozen=True)
class SensitivityRow:
    """One evaluation: `ratio` of group `group` removed, everything else intact."""

    group: int
    layers: tuple[str, ...]
    size: int
    ratio: float
    removed: int
    metric: float
    drop: float

    def to_dict(self) -> dict:
        return {
            "group": self.group,
            "layers": list(self.layers),
            "size": self.size,
            "ratio": self.ratio,
            "removed": self.removed,
            "metric": self.metric,
            "drop": self.drop,
        }


@dataclass(frozen=True)
class SensitivityResult:
    """The table produced by `sensitivity`.

    Attributes:
        baseline: Metric of the unpruned model.
        rows: One `SensitivityRow` per (group, ratio), groups in topological order.
        criterion: Name of the criterion that ranked the channels.
        metric_name: Name of the metric.
        mode: `"max"` when higher metric values are better, else `"min"`.
        scores: Group id -> channel scores used for the ranking (higher = kept longer).
        graph: The analysis of the scanned model (`plan` builds its plans on it).
    """

    baseline: float
    rows: tuple[SensitivityRow, ...]
    criterion: str
    metric_name: str
    mode: str
    scores: Mapping[int, np.ndarray] = field(repr=False)
    graph: ChannelGraph = field(repr=False, compare=False)

    @property
    def groups(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(r.group for r in self.rows))

    def curve(self, group: int) -> tuple[np.ndarray, np.ndarray]:
        """(ratios, metric values) of one group, ratio 0 (the baseline) included."""
        rows = sorted((r for r in self.rows if r.group == group), key=lambda r: r.ratio)
        if not rows:
            raise SelectionError(f"Group {group} was not part of the scan (scanned: {list(self.groups)})")
        return np.array([0.0] + [r.ratio for r in rows]), np.array([self.baseline] + [r.metric for r in rows])

    def to_dict(self) -> dict:
        return {
            "baseline": self.baseline,
            "criterion": self.criterion,
            "metric": self.metric_name,
            "mode": self.mode,
            "rows": [r.to_dict() for r in self.rows],
        }

    def table(self) -> str:
        """A plain-text table, one line per evaluation."""
        head = f"{'group':>5}  {'layers':<28} {'size':>5} {'ratio':>6} {'removed':>7} {self.metric_name:>12} {'drop':>9}"
        lines = [f"baseline {self.metric_name} = {self.baseline:.6g} (criterion: {self.criterion})", head]
        for r in self.rows:
            names = ", ".join(r.layers)
            names = names if len(names) <= 28 else names[:25] + "..."
            lines.append(
                f"{r.group:>5}  {names:<28} {r.size:>5} {r.ratio:>6.2f} {r.removed:>7} "
                f"{r.metric:>12.6g} {r.drop:>9.4g}"
            )
        return "\n".join(lines)

    __str__ = table

    def ratios_for(self, tolerance: float) -> dict[int, float]:
        """Per group, the largest scanned ratio whose drop — and every smaller ratio's — is <= tolerance."""
        if not tolerance >= 0:
            raise PruningError(f"tolerance must be a non-negative number. Received: tolerance={tolerance}")
        out = {}
        for gid in self.groups:
            best = 0.0
            for r in sorted((r for r in self.rows if r.group == gid), key=lambda r: r.ratio):
                if r.drop > tolerance:
                    break
                best = r.ratio
            out[gid] = best
        return out

    def plan(self, tolerance: float) -> Selection:
        """A selection removing, in every group, as much as its own curve tolerates.

        Each group gets the largest scanned ratio whose metric drop (and that of
        every smaller ratio) stays within `tolerance`, and loses its lowest-scoring
        channels. Drops of several groups add up roughly, so the combined model
        usually loses more than `tolerance`: fine-tune it (`prune_and_finetune`) or
        choose a smaller tolerance.

        Args:
            tolerance: Largest acceptable metric drop per group, in metric units
                (e.g. `0.01` for one accuracy point).

        Returns:
            A `kerasprune.Selection` for the analyzed model (with its `Plan`, groups and
            MACs/params before -> after), accepted by `remove_filters` and `mask_filters`.
        """
        ratios = self.ratios_for(tolerance)
        removed = {gid: _lowest(self.graph, gid, self.scores[gid], ratio) for gid, ratio in ratios.items()}
        plan = Plan.from_groups(self.graph, {gid: r for gid, r in removed.items() if len(r)})
        return Selection.from_plan(plan, criterion=self.criterion, scores=self.scores, groups=list(self.groups))

    def plot(self, path: str | os.PathLike, *, title: str | None = None) -> str:
        """Save per-group curves (metric vs removed fraction) as a PNG; returns the path."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 4.5), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for gid in self.groups:
            x, y = self.curve(gid)
            layers = next(r.layers for r in self.rows if r.group == gid)
            label = ", ".join(layers) if len(layers) <= 2 else f"{layers[0]} (+{len(layers) - 1})"
            ax.plot(x * 100, y, marker="o", markersize=3, label=label)
        ax.set_xlabel("filters removed from the group (%)")
        ax.set_ylabel(self.metric_name)
        ax.set_title(title or f"Sensitivity to pruning ({self.criterion})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2 if len(self.groups) > 8 else 1)
        fig.tight_layout()
        with atomic_path(path, overwrite=True, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
        return os.fspath(path)


def _lowest(graph: ChannelGraph, gid: int, scores: np.ndarray, ratio: float) -> np.ndarray:
    """The lowest-scoring `floor(ratio * size)` channels of a group (balanced where it must be)."""
    group = graph._all_groups[gid]
    try:
        cell_list = cells(graph, group)
    except PruningError:
        cell_list = None  # unbalanceable group: its plans are refused by the plan's own check
    return lowest(scores, ratio, cell_list=cell_list)
