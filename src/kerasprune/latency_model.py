"""Latency models: per-group latency tables measured on a runtime, and the predictor built on them.

`build_latency_model(model, runtime=..., batch_size=...)` times, for every
prunable group, the group's *affected sub-graph* (every layer call that reads
or writes the group's channels, re-created on its own) at full width and at a
few narrower widths (default: keep 75 / 50 / 25 %), on the runtime the model
will be deployed to. The savings form one table per group. The whole model is
timed once for the baseline. Tables use the *fastest* of the timed runs of
each variant (interleaved): on a shared machine the minimum is the statistic
least disturbed by other jobs, and a table holds small differences of times;
the latencies a selection reports are medians.

`LatencyModel.predict(removed)` (same interface as `flops.CostModel`: a flat
boolean array over `graph.group_offsets[gid] + channel`) returns
`before - sum_g saving_g(kept_g) * share_g`, where `saving_g` is interpolated
in the group's table and `share_g` corrects for layers shared by two pruned
groups (a convolution is a consumer of one group and the producer of the
next: its time is counted in both tables, but removing half of both leaves a
quarter, not none). `share_g` is the group's Shapley share of the MACs it
removes, computed exactly by the analytic `CostModel` (each MAC term is a
product over two channel axes, for which the average of "g alone" and "g
last" is exact). With a single pruned group `share_g = 1`: the table itself.

Tables are cached per model fingerprint, runtime configuration, batch
size and widths: in memory always, on disk (JSON) only when `cache_dir` is given.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from kerasprune import _keras
from kerasprune.errors import PruningError
from kerasprune.flops import CostModel
from kerasprune.graph import ChannelGraph, analyze
from kerasprune.latency import replay
from kerasprune.runtimes import Runtime, get_runtime
from kerasprune.traversal import run_graph

log = logging.getLogger(__name__)

WIDTHS = (0.75, 0.5, 0.25)
_MEMORY: dict[str, dict] = {}


@dataclass(frozen=True)
class GroupTable:
    """Measured latency savings of one group at a few widths.

    Attributes:
        group: Group id. `size`: its channels.
        kept: Channel counts measured, ascending, ending with `size`.
        saving_ms: Time saved at each count (0 at `size`); raw medians, may be noisy.
        source: `"subgraph"` (the group's affected layers alone) or `"model"` (the whole model).
    """

    group: int
    size: int
    kept: tuple[int, ...]
    saving_ms: tuple[float, ...]
    source: str = "subgraph"

    def saving(self, kept: float) -> float:
        """Interpolated saving at `kept` channels (monotone envelope; linear below the narrowest width)."""
        xs = np.asarray(self.kept, dtype=np.float64)
        ys = np.maximum(np.maximum.accumulate(np.asarray(self.saving_ms, dtype=np.float64)[::-1])[::-1], 0.0)
        if len(xs) == 1 or kept >= xs[-1]:
            return 0.0
        if kept >= xs[0]:
            return float(np.interp(kept, xs, ys))
        slope = (ys[0] - ys[1]) / (xs[1] - xs[0])
        return float(ys[0] + slope * (xs[0] - kept))


class LatencyModel:
    """Predicted latency of `graph.model` after removing channels, from measured group tables.

    Attributes:
        before: Measured latency of the whole original model (ms).
        tables: `{group id: GroupTable}`.
        runtime: `Runtime.info()` of the runtime measured; `batch_size` the batch.
        scale: Factor on every predicted saving (1 until calibrated on measurements).
    """

    def __init__(
        self,
        graph: ChannelGraph,
        before: float,
        tables: Mapping[int, GroupTable],
        *,
        runtime: Mapping | None = None,
        batch_size: int = 1,
        scale: float = 1.0,
        cost: CostModel | None = None,
    ):
        self.graph, self.before, self.tables = graph, float(before), dict(tables)
        self.runtime, self.batch_size, self.scale = dict(runtime or {}), int(batch_size), float(scale)
        self.cost = cost if cost is not None else CostModel(graph)
        self._slices = {
            gid: slice(int(graph.group_offsets[gid]), int(graph.group_offsets[gid] + graph.group_sizes[gid]))
            for gid in self.tables
        }

    def _terms(self, removed: np.ndarray, interactions: bool) -> list[float]:
        removed = np.asarray(removed, dtype=bool)
        out = []
        total = self.cost.flops(removed) if interactions else 0
        for gid, table in self.tables.items():
            sl = self._slices[gid]
            gone = int(np.count_nonzero(removed[sl]))
            if not gone:
                continue
            saving = table.saving(table.size - gone)
            if interactions:
                alone = np.zeros_like(removed)
                alone[sl] = removed[sl]
                others = removed.copy()
                others[sl] = False
                single = self.cost.flops_before - self.cost.flops(alone)
                last = self.cost.flops(others) - total
                if single > 0:
                    saving *= 0.5 * (single + last) / single
            out.append(saving)
        return out

    def predict(self, removed: np.ndarray) -> float:
        """Predicted ms after removing the flat channels where `removed` is True."""
        return self.before - self.scale * sum(self._terms(removed, True))

    def predict_additive(self, removed: np.ndarray) -> float:
        """`before - sum_g saving_g(kept_g)`: the tables alone, without the shared-layer correction."""
        return self.before - self.scale * sum(self._terms(removed, False))

    def scaled(self, scale: float) -> LatencyModel:
        """The same tables with predicted savings multiplied by `scale` (not compounded)."""
        return LatencyModel(
            self.graph, self.before, self.tables, runtime=self.runtime, batch_size=self.batch_size,
            scale=scale, cost=self.cost,
        )

    def to_dict(self) -> dict:
        """JSON-serializable tables (what the cache stores)."""
        return {
            "before_ms": self.before,
            "batch_size": self.batch_size,
            "runtime": self.runtime,
            "tables": [asdict(t) for t in self.tables.values()],
        }

    @classmethod
    def from_dict(cls, graph: ChannelGraph, doc: Mapping, cost: CostModel | None = None) -> LatencyModel:
        tables = {
            int(t["group"]): GroupTable(
                int(t["group"]), int(t["size"]), tuple(int(k) for k in t["kept"]),
                tuple(float(s) for s in t["saving_ms"]), str(t.get("source", "subgraph")),
            )
            for t in doc["tables"]
        }
        for gid, t in tables.items():
            if gid >= len(graph.groups) or int(graph.group_sizes[gid]) != t.size:
                raise PruningError(f"Latency table of group {gid} ({t.size} channels) does not fit this model")
        return cls(
            graph, doc["before_ms"], tables, runtime=doc.get("runtime"), batch_size=doc["batch_size"], cost=cost
        )

    def __repr__(self) -> str:
        return f"<LatencyModel {self.runtime.get('runtime')} batch {self.batch_size}: {self.before:.2f} ms, {len(self.tables)} groups>"


# -- measuring the tables ----------------------------------------------------------------
def model_fingerprint(model: keras.Model) -> str:
    """A hash of `model`'s architecture (config, weight shapes and dtypes) and the Keras backend."""
    h = hashlib.sha256()
    h.update(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    h.update(repr([(v.path, tuple(v.shape), str(v.dtype)) for v in model.weights]).encode())
    h.update(f"{keras.backend.backend()}|{keras.__version__}".encode())
    return h.hexdigest()[:32]


def default_cache_dir() -> Path:
    """`$KERASPRUNE_CACHE`, else `$XDG_CACHE_HOME/kerasprune/latency`, else `~/.cache/kerasprune/latency`."""
    if os.environ.get("KERASPRUNE_CACHE"):
        return Path(os.environ["KERASPRUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kerasprune" / "latency"


def group_subgraph(graph: ChannelGraph, gid: int) -> keras.Model | None:
    """The layer calls that read or write group `gid`'s channels, as a new model (None if not extractable).

    Inputs are the tensors those calls take from outside, outputs the tensors
    they hand to the rest of the model. Layers are fresh copies; the model is
    not touched. Nested models are not expanded (None: time the whole model).
    """
    fn = _keras.functional_of(graph.model)
    counter: dict[str, int] = {}
    chosen, consumers, unsure = [], {}, []

    def call(op, node, ins, prefix, env):
        rec = graph.records.get(op.name)
        index = counter.get(op.name, 0)
        counter[op.name] = index + 1
        if rec is None or index >= len(rec.calls):
            unsure.append(op.name)
        elif any(bool((graph.atom_group[a] == gid).any()) for a in rec.calls[index].atoms()):
            chosen.append(node)
        for t in node.input_tensors:
            consumers.setdefault(id(t), []).append(node)
        return [None] * len(node.outputs)

    run_graph(fn, [None] * len(fn.inputs), call, enter=lambda *args: unsure.append("nested model"))
    if unsure:
        return None
    if not chosen:
        return None
    inside = {id(n) for n in chosen}
    made = {id(t) for n in chosen for t in n.outputs}
    inputs = list({id(t): t for n in chosen for t in n.input_tensors if id(t) not in made}.values())
    final = {id(t) for t in fn.outputs}
    outputs = [
        t for n in chosen for t in n.outputs
        if id(t) in final or any(id(c) not in inside for c in consumers.get(id(t), []))
    ]
    if not inputs or not outputs:
        return None
    return replay(chosen, inputs, outputs, name=f"group_{gid}")


def _narrower(model, graph: ChannelGraph, gid: int, n: int):
    """`model` without the first `n` channels of group `gid` of its graph `graph`."""
    from kerasprune.plan import Plan
    from kerasprune.surgery import remove_filters

    return remove_filters(model, Plan.from_groups(graph, {gid: np.arange(n)}), graph=graph)


def _measure_group(model, graph, g, runtime, batch_size, widths, warmup, runs, subgraphs) -> GroupTable:
    counts = sorted({max(1, min(g.size - 1, int(round(g.size * w)))) for w in widths if w < 1})
    variants, source = None, "subgraph"
    try:
        sub = group_subgraph(graph, g.id) if subgraphs else None
        if sub is not None:
            sub_graph = analyze(sub)
            mine = sub_graph.group_of(g.layers[0])  # the same channels, numbered in the piece
            if mine.size == g.size and mine.prunable:
                variants = [sub] + [_narrower(sub, sub_graph, mine.id, g.size - c) for c in counts]
    except PruningError as e:  # the piece alone does not prune like the whole: time the whole model
        log.debug("group %d: sub-graph not usable (%s); timing the whole model", g.id, e)
    if variants is None:
        source = "model"
        variants = [model] + [_narrower(model, graph, g.id, g.size - c) for c in counts]
    timed = runtime.measure(variants, batch_size=batch_size, warmup=warmup, runs=runs)
    t0 = timed[0].min_ms
    savings = [t0 - t.min_ms for t in timed[1:]]
    return GroupTable(g.id, g.size, (*counts, g.size), (*savings, 0.0), source)


def build_latency_model(
    model: keras.Model,
    *,
    runtime: str | Runtime = "keras",
    batch_size: int = 1,
    graph: ChannelGraph | None = None,
    groups: Iterable | None = None,
    widths: Sequence[float] = WIDTHS,
    warmup: int = 2,
    runs: int | None = None,
    cache_dir: str | os.PathLike | bool | None = None,
    subgraphs: bool = True,
) -> LatencyModel:
    """Measure per-group latency tables of `model` on a runtime (see the module docstring).

    Args:
        model: The model (not modified).
        runtime: `"keras"`, `"litert"`, `"onnx"` or a `kerasprune.runtimes.Runtime`.
        batch_size: Samples per timed batch.
        graph: `analyze(model)`, to reuse.
        groups: Groups (or ids) to measure; default every prunable group.
        widths: Kept fractions measured per group, in (0, 1).
        warmup, runs: Untimed and timed batches per measured variant; `runs=None`
            times about a second's worth of the whole model per variant (10 to 50 runs).
        cache_dir: Also keep tables on disk: a folder, or True for `default_cache_dir()`.
        subgraphs: Time each group's affected sub-graph (default); False times the
            whole model at every width (slower, includes effects between groups).

    Returns:
        A `LatencyModel`.

    Raises:
        PruningError: bad options, unknown runtime, or a model the runtime cannot run.

    Example:
        >>> lm = build_latency_model(model, runtime="litert", batch_size=16)
        >>> lm.predict(removed_flat) / lm.before
    """
    rt = get_runtime(runtime)
    if not widths or not all(0 < float(w) < 1 for w in widths):
        raise PruningError(f"widths are kept fractions in (0, 1). Received: widths={tuple(widths)!r}")
    if batch_size < 1 or (runs is not None and runs < 1) or warmup < 0:
        raise PruningError(f"Need batch_size >= 1, runs >= 1, warmup >= 0. Received: {batch_size}, {runs}, {warmup}")
    graph = graph if graph is not None else analyze(model)
    chosen = list(graph.prunable_groups if groups is None else groups)
    chosen = [graph.groups[g] if isinstance(g, int) else g for g in chosen]
    widths = tuple(sorted({float(w) for w in widths}, reverse=True))
    key = hashlib.sha256(
        f"{model_fingerprint(model)}|{rt.key}|{batch_size}|{widths}|{sorted(g.id for g in chosen)}|{subgraphs}".encode()
    ).hexdigest()[:40]
    cost = CostModel(graph)
    doc = _MEMORY.get(key)
    folder = None if cache_dir in (None, False) else (default_cache_dir() if cache_dir is True else Path(cache_dir))
    if doc is None and folder is not None and (folder / f"{key}.json").is_file():
        try:
            doc = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable latency cache %s: %s", folder / f"{key}.json", e)
    if doc is not None:
        log.info("latency tables of '%s' on %s (batch %d) from cache", model.name, rt.name, batch_size)
        _MEMORY[key] = doc
        return LatencyModel.from_dict(graph, doc, cost)
    first = rt.measure([model], batch_size=batch_size, warmup=warmup, runs=runs or 10)[0]
    before = first.min_ms
    runs = runs or _runs_for(first.median_ms, 1000.0, 10, 50)
    tables = {}
    for i, g in enumerate(chosen):
        tables[g.id] = _measure_group(model, graph, g, rt, batch_size, widths, warmup, runs, subgraphs)
        log.info("latency table %d/%d (group %d, %s): %s", i + 1, len(chosen), g.id, g.layers[0], tables[g.id])
    lm = LatencyModel(graph, before, tables, runtime=rt.info(), batch_size=batch_size, cost=cost)
    _MEMORY[key] = lm.to_dict()
    if folder is not None:
        from kerasprune.io import write_text

        write_text(json.dumps(_MEMORY[key], indent=1), folder / f"{key}.json", overwrite=True)
    return lm


def _runs_for(ms: float, budget_ms: float, lo: int, hi: int) -> int:
    """Timed runs worth about `budget_ms` of batches of `ms` each, within `[lo, hi]`."""
    return int(min(max(math.ceil(budget_ms / max(ms, 1e-3)), lo), hi))


def clear_cache() -> None:
    """Forget the latency tables kept in memory (disk caches are left alone)."""
    _MEMORY.clear()
