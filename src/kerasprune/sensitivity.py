"""Per-group sensitivity analysis: which groups can lose filters cheaply?

`sensitivity(model, metric, ...)` removes a fraction of one group's channels at a
time (the lowest-scoring ones by a criterion, scored once for the whole scan),
evaluates a metric on each pruned model, and collects a table. The curves show
which layers are safe to prune (Li et al. 2017, "Pruning Filters for Efficient
ConvNets", figure 2); `SensitivityResult.plan(tolerance)` turns them into a
selection that prunes every group as far as its own curve allows.

Evaluations are independent, so they can run on several workers: a local
process pool (`n_jobs`) or a cluster (`backend="dask"`/`"ray"`, or a
`joblib.parallel_config(backend="dask")` block), see `kerasprune.parallel`.
Every worker receives the model once, as `.keras` bytes, together with the
analysis options (`channelwise`, rules registered for custom layers), rebuilds
the same channel graph and each pruned model from it. The driver records the
results as they arrive in a JSON cache (`kerasprune.cache`), so an interrupted
scan resumes where it stopped, on any engine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from kerasprune import _keras
from kerasprune.cache import EvaluationCache
from kerasprune.criteria import score as _score
from kerasprune.data import for_keras
from kerasprune.errors import PruningError
from kerasprune.graph import ChannelGraph, analyze, graph_for
from kerasprune.groupwise import choose_groups, scored
from kerasprune.io import model_fingerprint, model_from_bytes, model_to_bytes
from kerasprune.parallel import Work, resolve_engine, run_tasks
from kerasprune.plan import Plan
from kerasprune.rules import find_rule, register_rule, registered
from kerasprune.sensitivity_result import SensitivityResult, SensitivityRow, _lowest
from kerasprune.surgery import remove_filters

log = logging.getLogger(__name__)

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


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
    n_jobs: int | None = None,
    backend: Any = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    graph: ChannelGraph | None = None,
    channelwise: Iterable[str] = (),
) -> SensitivityResult:
    """Scan how a metric degrades when each group alone loses a fraction of its filters.

    The model is analyzed and scored once; every (group, ratio) pair then removes
    the `floor(ratio * size)` lowest-scoring channels of that group only and
    evaluates `metric` on the smaller model. The input model is not modified.
    The result does not depend on where the evaluations run.

    Args:
        model: A built Functional or Sequential model.
        metric: Either a callable `(model) -> float`, or the name of a metric of the
            compiled `model` (e.g. `"accuracy"`, `"loss"`), evaluated with
            `model.evaluate(val_data)` after recompiling each pruned model from
            `model.get_compile_config()`.
        val_data: Validation data for a named metric: `(x, y)`, an `.npz` path, a list
            or generator of batches, a dataset (`kerasprune.data`).
        criterion: Criterion name or callable, as for `kerasprune.score`.
        ratios: Fractions of each group to remove, each in (0, 1).
        groups: Group ids or layer names to scan (default: every prunable group).
        mode: `"max"` if higher metric values are better, `"min"` if lower are;
            default `"min"` for names containing "loss", else `"max"`.
        data, loss, seed: Passed to `kerasprune.score` (data-driven criteria).
        n_jobs: Worker processes of a local pool (`-1`: one per CPU; None: the
            `n_jobs` of an active `joblib.parallel_config`, else 1 = this process).
        backend: Where the evaluations run: None (an active
            `joblib.parallel_config(backend="dask"|"ray")`, else the local pool),
            `"loky"`/`"multiprocessing"`/`"threading"`, `"dask"` (the current
            `distributed.Client`), a `distributed.Client`, or `"ray"`. Workers get
            the model once as `.keras` bytes; the metric and `val_data` must be
            picklable (lambdas are fine: cloudpickle), and sent once per worker.
        cache: JSON file of finished evaluations, keyed by model fingerprint,
            criterion, metric, group and ratio; read at start and rewritten
            atomically by this process as results arrive, so an interrupted scan
            resumes (on any engine).
        progress: Show a progress bar (rich) while evaluating.
        graph: A `ChannelGraph` of `model` to reuse.
        channelwise: Layer names to treat as element-wise (as for `analyze`); must
            agree with `graph`'s if both are given. Workers analyze with the options
            of the driver's graph.

    Returns:
        A `SensitivityResult` (`.table()`, `.to_dict()`, `.plot(path)`, `.plan(tol)`).

    Raises:
        PruningError: bad ratios, unknown or unprunable groups, bad metric, an
            unknown or missing engine, a worker whose analysis differs.

    Example:
        >>> result = kerasprune.sensitivity(model, "accuracy", val_data=(x_val, y_val))
        >>> result.plot("sensitivity.png")
        >>> smaller = kerasprune.remove_filters(model, result.plan(tolerance=0.01))
    """
    ratios = _check_ratios(ratios)
    metric_name, mode = _metric_name_mode(metric, mode, val_data, model)
    if isinstance(metric, str):  # every form of kerasprune.data, evaluated many times: read once
        val_data = for_keras(val_data, model=model, where="val_data")
    engine = resolve_engine(backend, n_jobs)
    graph = graph_for(model, graph, channelwise=channelwise)
    chosen = choose_groups(graph, groups)
    scores = _score(model, criterion, data=data, loss=loss, seed=seed, graph=graph)
    chosen = scored(chosen, scores, criterion)
    crit_name = criterion if isinstance(criterion, str) else getattr(criterion, "__name__", "custom")

    store = EvaluationCache(cache, model_fingerprint(model), f"{crit_name}|{metric_name}")
    compile_config = model.get_compile_config() if isinstance(metric, str) else None

    tasks: dict[str, dict] = {}
    layout: list[tuple[int, float, int, str]] = []
    for g in chosen:
        s = np.asarray(scores[g.id])
        for ratio in ratios:
            chans = _lowest(graph, g.id, s, ratio)
            n = len(chans)
            key = f"g{g.id}:r{ratio:.6g}"
            layout.append((g.id, ratio, n, key))
            if n > 0 and key not in store:
                tasks[key] = Plan.from_groups(graph, {g.id: chans}).to_selection()
    base_key = "baseline"
    if base_key not in store:
        tasks = {base_key: {}, **tasks}
    log.info("sensitivity: %d groups x %d ratios, %d evaluations to run", len(chosen), len(ratios), len(tasks))

    work = Work(
        evaluate=_evaluate,
        setup=_setup_worker,
        shared=lambda: _shared(model, graph, chosen, metric, val_data, compile_config),
        local=lambda: _Context(model, graph, metric, val_data, compile_config),
    )
    try:
        for key, value in run_tasks(work, tasks, engine, progress=progress, description="sensitivity"):
            store.put(key, value)
    finally:
        store.flush()

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
        graph=graph,
    )


# -- evaluation (in this process or in a worker) ---------------------------------------


@dataclass(frozen=True)
class _Context:
    model: keras.Model
    graph: ChannelGraph
    metric: Any
    val_data: Any
    compile_config: dict | None


def _evaluate(ctx: _Context, selection: Mapping) -> float:
    if selection:
        pruned = remove_filters(ctx.model, selection, graph=ctx.graph)
    else:
        with _keras.trusted_deserialization():  # a live model (or our own bytes), not a file
            pruned = keras.models.clone_model(ctx.model, recursive=True)
        pruned.set_weights(ctx.model.get_weights())
    if callable(ctx.metric):
        value = ctx.metric(pruned)
    else:
        pruned.compile_from_config(ctx.compile_config)
        if isinstance(ctx.val_data, tuple):
            logs = pruned.evaluate(*ctx.val_data, verbose=0, return_dict=True)
        else:
            logs = pruned.evaluate(ctx.val_data, verbose=0, return_dict=True)
        if ctx.metric not in logs:
            raise PruningError(
                f"Metric '{ctx.metric}' is not computed by the compiled model. Available: {sorted(logs)}"
            )
        value = logs[ctx.metric]
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PruningError(f"The metric must return a number. Received: {value!r}"[:200]) from None


def _shared(model, graph, chosen, metric, val_data, compile_config) -> dict:
    """Everything a worker needs, sent once: the model as `.keras` bytes and the analysis options."""
    layers = [rec.layer for rec in graph.records.values()]
    custom = [type(op) for op in [model, *layers] if type(op).__module__.split(".")[0] != "keras"]
    return {
        "model": model_to_bytes(model),
        "custom_objects": {n: c for c in custom for n in (keras.saving.get_registered_name(c), c.__name__)},
        "rules": [(c, find_rule(op)) for c, op in {type(op): op for op in layers}.items() if c in custom],
        "options": dict(graph.options),  # `channelwise`, as the driver's graph was built
        "groups": [(g.id, g.layers, g.size) for g in chosen],
        "metric": metric,
        "val_data": val_data,
        "compile_config": compile_config,
    }


def _setup_worker(shared: dict) -> _Context:
    """In a worker, once: rebuild the model and the driver's channel graph."""
    known = registered()
    for cls, rule in shared["rules"]:
        if rule is not None and not any(c in known for c in cls.__mro__):
            register_rule(cls, rule)  # a rule the driver registered, e.g. in a notebook
    model = model_from_bytes(shared["model"], custom_objects=shared["custom_objects"])
    graph = analyze(model, **shared["options"])
    for gid, layers, size in shared["groups"]:
        got = graph.groups[gid] if gid < len(graph.groups) else None
        if got is None or got.layers != layers or got.size != size or not got.prunable:
            raise PruningError(
                f"A worker's analysis of '{model.name}' differs from the driver's: group {gid} is "
                f"{layers} ({size} channels) in the driver, "
                f"{'missing' if got is None else f'{got.layers} ({got.size} channels, prunable={got.prunable})'} "
                "in the worker; define custom layers and their rules in a module the workers import"
            )
    return _Context(model, graph, shared["metric"], shared["val_data"], shared["compile_config"])


# -- helpers ---------------------------------------------------------------------------


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
