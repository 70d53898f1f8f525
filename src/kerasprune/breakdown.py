"""Why is it not faster: per-layer latency of an original and a pruned model.

`latency_breakdown(original, pruned, runtime=...)` times every layer with weights
on its own (a one-layer model re-created from the layer, on the input shape it
sees in the model), before and after pruning, next to its MACs, and flags the
layers whose time fell much less than their work.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import keras

from kerasprune import _keras
from kerasprune.errors import PruningError
from kerasprune.latency import _check_timing, replay
from kerasprune.runtimes import Runtime, get_runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerTime:
    """One layer call timed on its own, in the original and the pruned model.

    Attributes:
        key: Layer key (`outer/inner` inside nested models); `call` its call index.
        cls: The layer class name.
        before_ms, after_ms: Median time of the layer alone, dispatch overhead removed.
        macs_before, macs_after: Multiply-accumulates per sample.
        work_ratio: `macs_after / macs_before`; output-size ratio for layers without MACs.
        time_ratio: `after_ms / before_ms`.
        flagged: The time fell much less than the work (`time_ratio > slack * work_ratio`).
    """

    key: str
    call: int
    cls: str
    before_ms: float
    after_ms: float
    macs_before: int
    macs_after: int
    work_ratio: float
    time_ratio: float
    flagged: bool


@dataclass(frozen=True)
class LatencyBreakdown:
    """Per-layer latency of an original and a pruned model (`latency_breakdown`).

    Attributes:
        rows: One `LayerTime` per call of a layer with weights, in topological order.
        total_before_ms, total_after_ms: The whole models, timed the same way.
        overhead_ms: Dispatch overhead of the runtime subtracted from every layer time.
        runtime: `Runtime.info()` of the runtime used; `batch_size` the batch.
        slack: The flagging threshold factor.
    """

    rows: tuple[LayerTime, ...]
    total_before_ms: float
    total_after_ms: float
    overhead_ms: float
    runtime: Mapping[str, Any]
    batch_size: int
    slack: float

    @property
    def flagged(self) -> tuple[LayerTime, ...]:
        """Rows whose time did not fall with their work."""
        return tuple(r for r in self.rows if r.flagged)

    def table(self, title: str | None = None, *, only_flagged: bool = False):
        """A `rich.table.Table` of the rows (flagged rows marked)."""
        from rich.markup import escape
        from rich.table import Table

        t = Table(title=title or f"Per-layer latency ({self.runtime.get('runtime')}, batch {self.batch_size})")
        for col in ("layer", "class", "before", "after", "time ratio", "MAC ratio", ""):
            t.add_column(col, justify="left" if col in ("layer", "class", "") else "right")
        for r in self.rows:
            if only_flagged and not r.flagged:
                continue
            t.add_row(
                escape(r.key if not r.call else f"{r.key} #{r.call}"),
                r.cls,
                f"{r.before_ms:.3f} ms",
                f"{r.after_ms:.3f} ms",
                f"{r.time_ratio:.2f}",
                f"{r.work_ratio:.2f}",
                "[yellow]slow[/]" if r.flagged else "",
            )
        t.add_row(
            "whole model", "", f"{self.total_before_ms:.2f} ms", f"{self.total_after_ms:.2f} ms",
            f"{_div(self.total_after_ms, self.total_before_ms):.2f}", "", "",
        )
        return t

    def to_dict(self) -> dict:
        return asdict(self)


def _div(a: float, b: float) -> float:
    return a / b if b > 0 else (1.0 if a <= 0 else math.inf)


def _layer_models(model) -> dict[tuple[str, int], tuple[keras.Model, str, int, int]]:
    """`(key, call) -> (one-layer model, class name, MACs, output size)` for layers with weights."""
    from kerasprune.flops import flops_by_layer, iter_calls

    calls = list(iter_calls(model))
    n_calls: dict[str, int] = {}
    for call in calls:
        n_calls[call.key] = n_calls.get(call.key, 0) + 1
    macs_of = flops_by_layer(model)
    out = {}
    for call in calls:
        layer = call.layer
        if not getattr(layer, "weights", None) or _keras.functional_of(layer) is not None:
            continue
        node = call.node
        if any(tuple(t.shape[1:]) != tuple(s[1:]) for t, s in zip(node.input_tensors, call.in_shapes)):
            continue  # inside a nested model called on another shape: not replayable as recorded
        one = replay([node], node.input_tensors, node.outputs, name=f"layer_{len(out)}")
        macs = macs_of.get(call.key, 0) // n_calls[call.key]
        size = sum(math.prod(int(d) for d in s[1:]) for s in call.out_shapes)
        out[(call.key, call.index)] = (one, type(layer).__name__, macs, size)
    return out


def latency_breakdown(
    original: keras.Model,
    pruned: keras.Model,
    *,
    runtime: str | Runtime = "keras",
    batch_size: int = 1,
    warmup: int = 2,
    runs: int = 10,
    slack: float = 1.5,
    min_share: float = 0.01,
) -> LatencyBreakdown:
    """Time every layer with weights alone, in `original` and in `pruned`, next to its MACs.

    Each layer call becomes a one-layer model (a copy of the layer with its
    weights, on an input of the shape it sees in the model); original and
    pruned copies are timed interleaved on `runtime`, and the runtime's
    dispatch overhead (an identity model's time) is subtracted. A layer is
    flagged when `time_ratio > slack * work_ratio` and it takes at least
    `min_share` of the summed layer times: its time did not fall with its MACs (typical: depthwise convolutions and normalizations, which are
    memory-bound, and widths that defeat the kernels' vectorization). LiteRT's
    Python interpreter exposes no per-op profiler, so LiteRT and ONNX
    breakdowns export one small model per layer (slow on large models).

    Args:
        original: The model before pruning.
        pruned: The pruned model (layers matched by key).
        runtime: `"keras"`, `"litert"`, `"onnx"` or a `Runtime`.
        batch_size: Samples per batch.
        warmup, runs: Untimed and timed batches per layer model.
        slack: Flagging factor.
        min_share: Layers below this share of the summed original layer times
            are never flagged (their times are mostly noise).

    Returns:
        A frozen `LatencyBreakdown`; `.table()` renders it, `.flagged` lists the slow layers.

    Raises:
        PruningError: bad timing options or runtime, or no layer of `original` in `pruned`.

    Example:
        >>> bd = kerasprune.latency_breakdown(model, pruned, batch_size=16)
        >>> [r.key for r in bd.flagged]
    """
    _check_timing(batch_size, runs, warmup)
    rt = get_runtime(runtime)
    before, after = _layer_models(original), _layer_models(pruned)
    keys = [k for k in before if k in after]
    if not keys:
        raise PruningError(f"No layer of model '{original.name}' is found in model '{pruned.name}'")
    def shape_of(m):
        return tuple(m.inputs[0].shape[1:])

    # Each model's overhead is an identity model's on its own input shape: a pruned layer's
    # input is narrower, so it moves less data in and out than the original's.
    shapes = {shape_of(m) for k in keys for m in (before[k][0], after[k][0])}
    probes = {}
    for shape in shapes:
        i = keras.Input(shape)
        probes[shape] = keras.Model(i, keras.layers.Identity()(i))
    models = [original, pruned] + list(probes.values())
    models += [m for k in keys for m in (before[k][0], after[k][0])]
    timed = rt.measure(models, batch_size=batch_size, warmup=warmup, runs=runs)
    ms = [t.median_ms for t in timed]
    total_before, total_after = ms[0], ms[1]
    overhead_of = {shape: ms[2 + j] for j, shape in enumerate(probes)}
    rows = []
    base = 2 + len(probes)
    layer_total = sum(max(ms[base + 2 * j] - overhead_of[shape_of(before[k][0])], 0.0) for j, k in enumerate(keys))
    for j, k in enumerate(keys):
        mb, cls, macs_b, size_b = before[k]
        ma, _, macs_a, size_a = after[k]
        tb = max(ms[base + 2 * j] - overhead_of[shape_of(mb)], 0.0)
        ta = max(ms[base + 2 * j + 1] - overhead_of[shape_of(ma)], 0.0)
        work = macs_a / macs_b if macs_b else (size_a / size_b if size_b else 1.0)
        ratio = _div(ta, tb)
        ratio = ratio if math.isfinite(ratio) else 1.0
        slow = ratio > slack * work and tb >= min_share * layer_total
        rows.append(LayerTime(k[0], k[1], cls, tb, ta, macs_b, macs_a, work, ratio, slow))
    overhead = float(statistics.median(overhead_of.values()))
    bd = LatencyBreakdown(tuple(rows), total_before, total_after, overhead, rt.info(), batch_size, slack)
    log.info("latency breakdown: %d layers, %d flagged", len(rows), len(bd.flagged))
    return bd
