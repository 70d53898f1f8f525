"""Per-group sensitivity analysis: which groups can lose filters cheaply?

`sensitivity(model, metric, ...)` removes a fraction of one group's channels at a
time (the lowest-scoring ones by a criterion, scored once for the whole scan),
evaluates a metric on each pruned model, and collects a table. The curves show
which layers are safe to prune (Li et al. 2017, "Pruning Filters for Efficient
ConvNets", figure 2); `SensitivityResult.plan(tolerance)` turns them into a
selection that prunes every group as far as its own curve allows.

Evaluations are independent, so they can run in worker processes (`n_jobs`),
which receive the model once as `.keras` bytes and rebuild each pruned model
from it; finished evaluations are written to a JSON cache so that an interrupted
scan resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from kerasprune.criteria import score as _score
from kerasprune.errors import PruningError, SelectionError
from kerasprune.graph import ChannelGraph, analyze
from kerasprune.groupwise import choose_groups, group_selection, lowest, producers, scored
from kerasprune.selection import Selection
from kerasprune.surgery import remove_filters

log = logging.getLogger(__name__)

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
CACHE_VERSION = 1


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
        producers: Group id -> ((layer, group channel of each output position), ...).
    """

    baseline: float
    rows: tuple[SensitivityRow, ...]
    criterion: str
    metric_name: str
    mode: str
    scores: Mapping[int, np.ndarray] = field(repr=False)
    producers: Mapping[int, tuple[tuple[str, np.ndarray], ...]] = field(repr=False)

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
            A `kerasprune.Selection` for the analyzed model, accepted by
            `remove_filters` and `mask_filters`.
        """
        ratios = self.ratios_for(tolerance)
        removed = {gid: lowest(self.scores[gid], ratio) for gid, ratio in ratios.items() if ratio > 0}
        return Selection(group_selection(self.producers, removed), criterion=self.criterion)

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
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        _atomic_write(os.fspath(path), buf.getvalue())
        return os.fspath(path)


def sensitivity(
    model: keras.Model,
    metric: Callable[[keras.Model], float] | str,
    *,
    val_data: Any = None,
    criterion: str | Callable = "l1",
    ratios: Sequence[float] = DEFAULT_RATIOS,
    groups: Iterable[int | str] | None = None,
    mode: str | None = None,
    data: Any = None,
    loss: Any = None,
    seed: int = 0,
    n_jobs: int = 1,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    graph: ChannelGraph | None = None,
) -> SensitivityResult:
    """Scan how a metric degrades when each group alone loses a fraction of its filters.

    The model is analyzed and scored once; every (group, ratio) pair then removes
    the `floor(ratio * size)` lowest-scoring channels of that group only and
    evaluates `metric` on the smaller model. The input model is not modified.

    Args:
        model: A built Functional or Sequential model.
        metric: Either a callable `(model) -> float`, or the name of a metric of the
            compiled `model` (e.g. `"accuracy"`, `"loss"`), evaluated with
            `model.evaluate(val_data)` after recompiling each pruned model from
            `model.get_compile_config()`.
        val_data: Validation data for a named metric: `(x, y)` or a dataset.
        criterion: Criterion name or callable, as for `kerasprune.score`.
        ratios: Fractions of each group to remove, each in (0, 1).
        groups: Group ids or layer names to scan (default: every prunable group).
        mode: `"max"` if higher metric values are better, `"min"` if lower are;
            default `"min"` for names containing "loss", else `"max"`.
        data, loss, seed: Passed to `kerasprune.score` (data-driven criteria).
        n_jobs: Worker processes for the evaluations (`-1`: one per CPU). Workers get
            the model as `.keras` bytes; the metric and `val_data` must be picklable
            (lambdas are fine: joblib uses cloudpickle).
        cache: JSON file of finished evaluations, keyed by model fingerprint,
            criterion, group and ratio; read at start and rewritten atomically after
            each evaluation, so an interrupted scan resumes.
        progress: Show a progress bar (rich) while evaluating.
        graph: A `ChannelGraph` of `model` to reuse.

    Returns:
        A `SensitivityResult` (`.table()`, `.to_dict()`, `.plot(path)`, `.plan(tol)`).

    Raises:
        PruningError: bad ratios, unknown or unprunable groups, bad metric.

    Example:
        >>> result = kerasprune.sensitivity(model, "accuracy", val_data=(x_val, y_val))
        >>> result.plot("sensitivity.png")
        >>> smaller = kerasprune.remove_filters(model, result.plan(tolerance=0.01))
    """
    ratios = _check_ratios(ratios)
    metric_name, mode = _metric_name_mode(metric, mode, val_data, model)
    graph = graph if graph is not None else analyze(model)
    if graph.model is not model:
        raise PruningError("graph was built for a different model")
    chosen = choose_groups(graph, groups)
    scores = _score(model, criterion, data=data, loss=loss, seed=seed, graph=graph)
    chosen = scored(chosen, scores, criterion)
    channels = {g.id: producers(graph, g) for g in chosen}
    crit_name = criterion if isinstance(criterion, str) else getattr(criterion, "__name__", "custom")

    fingerprint = model_fingerprint(model)
    store = _Cache(cache, fingerprint, f"{crit_name}|{metric_name}")
    compile_config = model.get_compile_config() if isinstance(metric, str) else None

    tasks: dict[str, dict] = {}
    layout: list[tuple[int, float, int, str]] = []
    for g in chosen:
        s = np.asarray(scores[g.id])
        for ratio in ratios:
            n = min(int(math.floor(ratio * g.size + 1e-9)), g.size - 1)
            key = f"g{g.id}:r{ratio:.6g}"
            layout.append((g.id, ratio, n, key))
            if n > 0 and key not in store:
                tasks[key] = group_selection(channels, {g.id: lowest(s, n / g.size, n)})
    base_key = "baseline"
    if base_key not in store:
        tasks = {base_key: {}, **tasks}
    log.info("sensitivity: %d groups x %d ratios, %d evaluations to run", len(chosen), len(ratios), len(tasks))

    _run(model, graph, tasks, metric, val_data, compile_config, store, n_jobs, progress)

    baseline = store[base_key]
    sign = 1.0 if mode == "max" else -1.0
    by_id = {g.id: g for g in chosen}
    rows = []
    for gid, ratio, n, key in layout:
        g = by_id[gid]
        value = baseline if n == 0 else store[key]
        rows.append(SensitivityRow(gid, g.layers, g.size, ratio, n, value, sign * (baseline - value)))
    return SensitivityResult(
        baseline=baseline,
        rows=tuple(rows),
        criterion=crit_name,
        metric_name=metric_name,
        mode=mode,
        scores={g.id: np.asarray(scores[g.id]) for g in chosen},
        producers=channels,
    )


# -- evaluation ----------------------------------------------------------------------


def _evaluate(model, graph, selection, metric, val_data, compile_config) -> float:
    pruned = remove_filters(model, selection, graph=graph) if selection else _clone(model)
    if callable(metric):
        value = metric(pruned)
    else:
        pruned.compile_from_config(compile_config)
        if isinstance(val_data, tuple):
            logs = pruned.evaluate(*val_data, verbose=0, return_dict=True)
        else:
            logs = pruned.evaluate(val_data, verbose=0, return_dict=True)
        if metric not in logs:
            raise PruningError(f"Metric '{metric}' is not computed by the compiled model. Available: {sorted(logs)}")
        value = logs[metric]
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PruningError(f"The metric must return a number. Received: {value!r}"[:200]) from None


def _clone(model):
    clone = keras.models.clone_model(model, recursive=True)
    clone.set_weights(model.get_weights())
    return clone


_WORKER_STATE: dict[str, tuple] = {}


def _worker(fingerprint, model_bytes, key, selection, metric, val_data, compile_config):
    """Runs in a worker process: load the model once per process, then evaluate."""
    if fingerprint not in _WORKER_STATE:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.keras")
            with open(path, "wb") as f:
                f.write(model_bytes)
            model = keras.saving.load_model(path, compile=False)
        _WORKER_STATE.clear()
        _WORKER_STATE[fingerprint] = (model, analyze(model))
    model, graph = _WORKER_STATE[fingerprint]
    return key, _evaluate(model, graph, selection, metric, val_data, compile_config)


def _run(model, graph, tasks, metric, val_data, compile_config, store, n_jobs, progress):
    if not tasks:
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True, console=Console(stderr=True)) as bar:
        job = bar.add_task("sensitivity", total=len(tasks))
        if n_jobs == 1 or len(tasks) == 1:
            for key, sel in tasks.items():
                store.put(key, _evaluate(model, graph, sel, metric, val_data, compile_config))
                bar.advance(job)
            return
        from joblib import Parallel, delayed

        model_bytes = model_to_bytes(model)
        fp = store.fingerprint
        results = Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
            delayed(_worker)(fp, model_bytes, key, sel, metric, val_data, compile_config)
            for key, sel in tasks.items()
        )
        for key, value in results:
            store.put(key, value)
            bar.advance(job)


# -- helpers ---------------------------------------------------------------------------


def model_to_bytes(model) -> bytes:
    """The model as the bytes of a `.keras` file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        with open(path, "rb") as f:
            return f.read()


def model_fingerprint(model) -> str:
    """SHA-256 of a model's architecture (JSON config) and weights."""
    h = hashlib.sha256()
    h.update(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for w in model.weights:
        arr = np.ascontiguousarray(keras.ops.convert_to_numpy(w))
        h.update(str((w.path, arr.shape, arr.dtype.str)).encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:32]


def _check_ratios(ratios) -> tuple[float, ...]:
    try:
        out = tuple(sorted({float(r) for r in ratios}))
    except (TypeError, ValueError):
        raise PruningError(f"ratios must be a sequence of numbers in (0, 1). Received: {ratios!r}") from None
    bad = [r for r in out if not 0.0 < r < 1.0]
    if not out or bad:
        raise PruningError(f"ratios must be numbers in (0, 1). Received: {list(ratios)!r}")
    return out


def _metric_name_mode(metric, mode, val_data, model) -> tuple[str, str]:
    if isinstance(metric, str):
        if val_data is None:
            raise PruningError(f"A named metric ('{metric}') needs val_data to evaluate it on")
        if not getattr(model, "compiled", False) or not model.get_compile_config():
            raise PruningError(
                f"A named metric ('{metric}') needs a compiled model; compile '{model.name}' "
                "or pass a callable metric"
            )
        name = metric
    elif callable(metric):
        name = getattr(metric, "__name__", "metric")
        name = "metric" if name == "<lambda>" else name
    else:
        raise PruningError(f"metric must be a callable (model) -> float or a metric name. Received: {metric!r}")
    if mode is None:
        mode = "min" if "loss" in name else "max"
    if mode not in ("max", "min"):
        raise PruningError(f"mode must be 'max' or 'min'. Received: mode={mode!r}")
    return name, mode


def _atomic_write(path: str, payload: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _Cache:
    """Finished evaluations, optionally persisted as JSON (resumable scans)."""

    def __init__(self, path, fingerprint: str, tag: str):
        self.path = None if path is None else os.fspath(path)
        self.fingerprint = fingerprint
        self.prefix = f"{fingerprint}|{tag}|"
        self.data: dict[str, float] = {}
        if self.path and os.path.exists(self.path):
            try:
                with open(self.path, encoding="utf-8") as f:
                    content = json.load(f)
                self.data = {str(k): float(v) for k, v in content.get("results", {}).items()}
            except (OSError, ValueError, AttributeError) as e:
                raise PruningError(f"Sensitivity cache '{self.path}' is not a readable JSON cache: {e}") from e

    def __contains__(self, key: str) -> bool:
        return self.prefix + key in self.data

    def __getitem__(self, key: str) -> float:
        return self.data[self.prefix + key]

    def put(self, key: str, value: float) -> None:
        self.data[self.prefix + key] = value
        if self.path:
            payload = {"version": CACHE_VERSION, "results": self.data}
            _atomic_write(self.path, json.dumps(payload, indent=1, sort_keys=True).encode())
