"""PNG plots of what pruning did (matplotlib, Agg; no pyplot global state).

- `plot_channels`: filters/units per layer, before and after (bar chart).
- `plot_scores`: each group's filter-score distribution, removed filters in red.
- `plot_stages`: params and MACs per stage (consecutive layers at one resolution).
- `write_plots`: all of the above plus an overview figure, written into a folder.
- `plot_pruning`: the plots of one pruning (original, pruned model, plan, scores) - what
  the CLI and the demo write.

Every function writes its PNG atomically and returns the path, and refuses to replace an
existing file unless `overwrite=True`; passing `ax` draws into an existing axes instead
(used by the overview).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kerasprune.errors import ModelSaveError
from kerasprune.io import atomic_path

BEFORE, AFTER, REMOVED = "#9fb8d8", "#1f5fa8", "#d62728"
_MAX_BARS = 60


def _save(fig: Figure, path: str | os.PathLike, overwrite: bool = False) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_path(path, overwrite=overwrite, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return Path(path)


def _short(name: str, n: int = 18) -> str:
    name = name.rsplit("/", 1)[-1]
    return name if len(name) <= n else name[: n - 1] + "…"


def _thin(keys: list[str]) -> list[str]:
    if len(keys) <= _MAX_BARS:
        return keys
    step = int(np.ceil(len(keys) / _MAX_BARS))
    return keys[::step]


def plot_channels(
    before: Mapping[str, int],
    after: Mapping[str, int],
    path: str | os.PathLike | None = None,
    *,
    ax=None,
    title: str = "Filters per layer",
    overwrite: bool = False,
) -> Path | None:
    """Bar chart of filters/units per layer before (light) and after (dark) pruning.

    Args:
        before: Layer -> filters of the original model (e.g. `report.channel_counts`).
        after: Layer -> filters of the pruned model; missing layers count as 0.
        path: PNG to write (unless `ax` is given).
        ax: A matplotlib axes to draw into instead.
        overwrite: Replace an existing `path`.
    """
    fig = None
    if ax is None:
        fig = Figure(figsize=(max(6.0, 0.35 * min(len(before), _MAX_BARS) + 2), 4))
        ax = fig.add_subplot()
    keys = _thin(list(before))
    pos = np.arange(len(keys))
    ax.bar(pos, [before[k] for k in keys], color=BEFORE, label="before")
    ax.bar(pos, [after.get(k, 0) for k in keys], width=0.55, color=AFTER, label="after")
    ax.set_xticks(pos, [_short(k) for k in keys], rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("filters / units")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path, overwrite) if fig is not None else None


def plot_scores(
    scores: Mapping[str, np.ndarray],
    path: str | os.PathLike | None = None,
    *,
    removed: Mapping[str, Sequence[int]] | None = None,
    ax=None,
    title: str = "Filter scores per group",
    overwrite: bool = False,
) -> Path | None:
    """Strip plot of every group's filter scores; removed filters in red.

    Args:
        scores: Group label (e.g. its first layer) -> one score per channel.
        path: PNG to write (unless `ax` is given).
        removed: Group label -> channel indices that were removed.
        ax: A matplotlib axes to draw into instead.
        overwrite: Replace an existing `path`.
    """
    fig = None
    if ax is None:
        fig = Figure(figsize=(max(6.0, 0.35 * min(len(scores), _MAX_BARS) + 2), 4))
        ax = fig.add_subplot()
    removed = removed or {}
    rng = np.random.default_rng(0)
    keys = _thin(list(scores))
    for i, key in enumerate(keys):
        s = np.asarray(scores[key], dtype=float).ravel()
        gone = np.zeros(len(s), dtype=bool)
        gone[np.asarray(removed.get(key, []), dtype=int)] = True
        jitter = i + rng.uniform(-0.25, 0.25, len(s))
        ax.scatter(jitter[~gone], s[~gone], s=6, color=AFTER, label="kept" if i == 0 else None)
        ax.scatter(jitter[gone], s[gone], s=6, color=REMOVED, label="removed" if i == 0 else None)
    ax.set_xticks(np.arange(len(keys)), [_short(k) for k in keys], rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("score")
    ax.set_title(title)
    if keys:
        ax.legend(fontsize=8)
    return _save(fig, path, overwrite) if fig is not None else None


def plot_stages(
    before: Mapping[str, tuple[int, int]],
    after: Mapping[str, tuple[int, int]],
    path: str | os.PathLike | None = None,
    *,
    axes=None,
    overwrite: bool = False,
) -> Path | None:
    """Grouped bars of params and MACs per stage, before and after.

    Args:
        before: Stage label -> `(params, macs)` (e.g. `report.stage_breakdown`).
        after: The same for the pruned model.
        path: PNG to write (unless `axes`, a pair of axes, is given).
        overwrite: Replace an existing `path`.
    """
    fig = None
    if axes is None:
        fig = Figure(figsize=(9, 3.8))
        axes = fig.subplots(1, 2)
    keys = list(before) + [k for k in after if k not in before]
    pos = np.arange(len(keys))
    for ax, i, what in ((axes[0], 0, "params"), (axes[1], 1, "MACs")):
        b = [before.get(k, (0, 0))[i] for k in keys]
        a = [after.get(k, (0, 0))[i] for k in keys]
        ax.bar(pos - 0.2, b, width=0.4, color=BEFORE, label="before")
        ax.bar(pos + 0.2, a, width=0.4, color=AFTER, label="after")
        ax.set_xticks(pos, keys, rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{what} per stage")
        ax.legend(fontsize=8)
    return _save(fig, path, overwrite) if fig is not None else None


def plot_names(*, scores: bool = True) -> tuple[str, ...]:
    """File names `write_plots` writes (without scores: no `scores.png`)."""
    names = ("channels.png", "scores.png", "stages.png", "overview.png")
    return names if scores else tuple(n for n in names if n != "scores.png")


def write_plots(
    out_dir: str | os.PathLike,
    *,
    channels: tuple[Mapping[str, int], Mapping[str, int]],
    stages: tuple[Mapping[str, tuple[int, int]], Mapping[str, tuple[int, int]]],
    scores: Mapping[str, np.ndarray] | None = None,
    removed: Mapping[str, Sequence[int]] | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write `channels.png`, `scores.png` (when scores are given), `stages.png` and `overview.png`.

    Args:
        out_dir: Folder for the PNGs (created if needed).
        channels: `(before, after)` layer -> filters.
        stages: `(before, after)` stage -> `(params, macs)`.
        scores: Group label -> channel scores.
        removed: Group label -> removed channel indices.
        overwrite: Replace PNGs already in `out_dir`; otherwise nothing is written when
            any of them exists.

    Returns:
        Plot name -> path written.

    Raises:
        ModelSaveError: a PNG exists in `out_dir` and `overwrite` is False.

    Example:
        >>> plots.write_plots("plots", channels=(before, after), stages=(s_before, s_after))
    """
    out = Path(out_dir)
    existing = [n for n in plot_names(scores=bool(scores)) if (out / n).exists()]
    if existing and not overwrite:
        raise ModelSaveError(
            f"{out} already holds {', '.join(existing)}; pass --force (overwrite=True) to replace them"
        )
    out.mkdir(parents=True, exist_ok=True)
    paths = {"channels": plot_channels(*channels, out / "channels.png", overwrite=overwrite)}
    if scores:
        paths["scores"] = plot_scores(scores, out / "scores.png", removed=removed, overwrite=overwrite)
    paths["stages"] = plot_stages(*stages, out / "stages.png", overwrite=overwrite)
    fig = Figure(figsize=(13, 7.5))
    grid = fig.add_gridspec(2, 2 if scores else 1)
    plot_channels(*channels, ax=fig.add_subplot(grid[0, 0]))
    if scores:
        plot_scores(scores, removed=removed, ax=fig.add_subplot(grid[0, 1]))
        axes = (fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1]))
    else:
        sub = grid[1, 0].subgridspec(1, 2)
        axes = (fig.add_subplot(sub[0, 0]), fig.add_subplot(sub[0, 1]))
    plot_stages(*stages, axes=axes)
    paths["overview"] = _save(fig, out / "overview.png", overwrite)
    return paths


def group_label(group) -> str:
    """A group's label in plots: its first producer, `+N` for the other producers."""
    extra = f" +{len(group.layers) - 1}" if len(group.layers) > 1 else ""
    return f"{group.layers[0]}{extra}"


def plot_pruning(
    out_dir: str | os.PathLike,
    model,
    pruned,
    *,
    plan=None,
    scores: Mapping[int, np.ndarray] | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """The plots of one pruning: filters per layer, filter scores, params and MACs per stage.

    Args:
        out_dir: Folder for the PNGs (see `write_plots`).
        model: The original model.
        pruned: The pruned (or masked) model.
        plan: The `Plan` that was applied (made for `model`): gives the filters left per
            layer (also for a masked model) and the removed channels in the score plot.
        scores: `{group id: channel scores}` of `plan.graph` (e.g. `kerasprune.score`);
            without them there is no `scores.png`.
        overwrite: Replace existing PNGs.

    Returns:
        Plot name -> path written.

    Raises:
        ModelSaveError: a PNG exists in `out_dir` and `overwrite` is False.

    Example:
        >>> plots.plot_pruning("plots", model, smaller, plan=kerasprune.make_plan(graph, sel))
    """
    from kerasprune.report import channel_counts, stage_breakdown

    before = channel_counts(model)
    if plan is not None:
        after = {k: v - len(plan.removed_filters(k)) for k, v in before.items()}
    else:
        after = channel_counts(pruned)
    labelled, removed = None, None
    if scores and plan is not None:
        groups = plan.graph._all_groups
        labelled = {group_label(groups[g]): s for g, s in scores.items()}
        removed = {group_label(groups[g]): idx for g, idx in plan.removed.items()}
    return write_plots(
        out_dir,
        channels=(before, after),
        stages=(stage_breakdown(model), stage_breakdown(pruned)),
        scores=labelled,
        removed=removed,
        overwrite=overwrite,
    )
