"""Measuring latency: one model, or several models interleaved.

`measure_latency(model, runtime=...)` is the median of `runs` timed batches
after `warmup` untimed ones, on a runtime (`kerasprune.runtimes`: Keras
`predict_on_batch` on the active backend, LiteRT, ONNX Runtime). Several
models are always timed *interleaved* (one batch of each in turn, the order
reversed every other round), so load drifts on a shared machine hit all alike.

`replay` re-creates a piece of a Functional graph as a new model (fresh layer
copies), for timing parts of a model alone (`kerasprune.breakdown`,
`kerasprune.latency_model`).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from kerasprune import _keras
from kerasprune.errors import PruningError
from kerasprune.runtimes import Runtime, get_runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyResult:
    """Timing of one model's forward pass.

    Attributes:
        median_ms: Median wall time of one batch, in milliseconds.
        min_ms: Fastest batch.
        max_ms: Slowest batch.
        batch_size: Samples per batch.
        runs: Number of timed batches.
        warmup: Untimed batches run first (tracing, compilation, caches).
        backend: The Keras backend of the process.
        runtime: What ran the model (`"keras"`, `"litert"`, `"onnx"`).
        threads: Threads the runtime uses (None: the runtime's own default).
        versions: Package versions of the runtime.
        times_ms: Every timed batch, in order (for paired comparisons).
    """

    median_ms: float
    min_ms: float
    max_ms: float
    batch_size: int
    runs: int
    warmup: int
    backend: str
    runtime: str = "keras"
    threads: int | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    times_ms: tuple[float, ...] = field(default=(), repr=False)

    @property
    def per_sample_ms(self) -> float:
        return self.median_ms / self.batch_size


def _random_batch(model, batch_size: int, seed: int):
    rng = np.random.default_rng(seed)
    xs = []
    for t in model.inputs:
        shape = [batch_size] + [8 if d is None else int(d) for d in t.shape[1:]]
        if "int" in str(t.dtype):
            xs.append(rng.integers(0, 10, shape).astype(t.dtype))
        else:
            xs.append(rng.normal(size=shape).astype("float32"))
    return xs[0] if len(xs) == 1 else xs


def paired_ratio(after: LatencyResult, before: LatencyResult) -> float:
    """Median over rounds of `after / before`, for two results timed interleaved in one run.

    Steadier than the ratio of medians on a loaded machine: each round's two
    batches ran back to back, under the same load. Falls back to the ratio of
    medians when the rounds do not pair up.
    """
    a, b = after.times_ms, before.times_ms
    if len(a) != len(b) or not a or min(b) <= 0:
        return after.median_ms / before.median_ms
    return float(statistics.median(x / y for x, y in zip(a, b)))


def _check_timing(batch_size: int, runs: int, warmup: int) -> None:
    if batch_size < 1 or runs < 1 or warmup < 0:
        raise PruningError(
            f"Latency measurement needs batch_size >= 1, runs >= 1, warmup >= 0. "
            f"Received: batch_size={batch_size}, runs={runs}, warmup={warmup}"
        )


def _time_callables(fns: Sequence[Callable[[], Any]], *, warmup: int, runs: int) -> list[list[float]]:
    """Milliseconds per call of each of `fns`, timed interleaved (order reversed every other round)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for r in range(runs):
        for i in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fns[i]()
            times[i].append((time.perf_counter() - t0) * 1000.0)
    return times


def _results(times: list[list[float]], *, batch_size: int, warmup: int, info: Mapping) -> list[LatencyResult]:
    return [
        LatencyResult(
            median_ms=float(statistics.median(t)),
            min_ms=float(min(t)),
            max_ms=float(max(t)),
            batch_size=batch_size,
            runs=len(t),
            warmup=warmup,
            backend=keras.backend.backend(),
            runtime=str(info.get("runtime", "keras")),
            threads=info.get("threads"),
            versions=dict(info.get("versions", {})),
            times_ms=tuple(float(v) for v in t),
        )
        for t in times
    ]


def _time_models(
    models: list, xs: list, *, batch_size: int, warmup: int, runs: int, runtime: str | Runtime = "keras"
) -> list[LatencyResult]:
    """Time several models interleaved; `xs` are the Keras inputs (used by the Keras runtime)."""
    rt = get_runtime(runtime)
    if rt.name == "keras" and rt.transform is None:
        fns = [(lambda m=m, x=x: m.predict_on_batch(x)) for m, x in zip(models, xs)]
        times = _time_callables(fns, warmup=warmup, runs=runs)
        return _results(times, batch_size=batch_size, warmup=warmup, info=rt.info())
    return rt.measure(models, batch_size=batch_size, warmup=warmup, runs=runs)


def measure_latency(
    model: keras.Model,
    *,
    batch_size: int = 1,
    warmup: int = 3,
    runs: int = 20,
    x: Any = None,
    seed: int = 0,
    runtime: str | Runtime = "keras",
) -> LatencyResult:
    """Median latency of one batch through `model` on a runtime.

    Args:
        model: The model to time.
        batch_size: Samples per batch (ignored when `x` is given).
        warmup: Untimed batches run first.
        runs: Timed batches; the median is reported.
        x: Input batch to use instead of random data of the model's input
            shape (Keras runtime only; other runtimes draw random input).
        seed: Seed of the random input.
        runtime: `"keras"` (`predict_on_batch` on the active backend),
            `"litert"`, `"onnx"`, or a `kerasprune.runtimes.Runtime`.

    Returns:
        A `LatencyResult` (with the runtime's threads and versions).

    Raises:
        PruningError: `batch_size`, `runs` or `warmup` out of range, an unknown
            runtime, or an exporting runtime on a backend other than TensorFlow.

    Example:
        >>> kerasprune.measure_latency(model, batch_size=16, runtime="litert").median_ms
    """
    _check_timing(batch_size, runs, warmup)
    rt = get_runtime(runtime)
    if x is None:
        x = _random_batch(model, batch_size, seed)
    else:
        if rt.name != "keras":
            raise PruningError(f"x= is supported on the 'keras' runtime only. Received: runtime={rt.name!r}")
        batch_size = int(len(x[0] if isinstance(x, (list, tuple)) else x))
    return _time_models([model], [x], batch_size=batch_size, warmup=warmup, runs=runs, runtime=rt)[0]


def _clone_op(op):
    """A fresh copy of a layer (from its config) or, for a stateless operation, the operation itself."""
    if not getattr(op, "weights", None) and not isinstance(op, keras.layers.Layer):
        return op
    with _keras.trusted_deserialization():  # configs of the caller's live model, not a file
        return type(op).from_config(op.get_config())


def replay(nodes: Sequence, inputs: Sequence, outputs: Sequence, *, name: str) -> keras.Model:
    """A new model computing `outputs` from `inputs` by re-running `nodes` on fresh layer copies.

    `nodes` are Functional nodes of a model in topological order; `inputs`
    their symbolic tensors that become `keras.Input`s. Layers are re-created
    from config (a layer called twice stays shared) and get the original's
    weights, so the source model is left untouched.
    """
    env = {}
    new_inputs = []
    for t in inputs:
        if id(t) in env:
            continue
        x = keras.Input(tuple(t.shape[1:]), dtype=t.dtype)
        env[id(t)] = x
        new_inputs.append(x)
    from kerasprune.surgery import _defer_initializers, _restore_initializers

    clones: dict[int, Any] = {}
    swapped: list = []  # weights are copied below: build with zeros, not random initializers
    try:
        for node in nodes:
            op = node.operation
            new = clones.get(id(op))
            if new is None:
                new = clones[id(op)] = _clone_op(op)
                if new is not op:
                    _defer_initializers(new, swapped)
            args, kwargs = _keras.fill_in(node, env)
            outs = keras.tree.flatten(new(*args, **kwargs))
            for t, o in zip(node.outputs, outs):
                env[id(t)] = o
    finally:
        _restore_initializers(swapped)
    for node in nodes:
        op = node.operation
        new = clones[id(op)]
        if new is not op and getattr(op, "weights", None):
            new.set_weights(op.get_weights())
    outs = [env[id(t)] for t in outputs]
    return keras.Model(
        new_inputs[0] if len(new_inputs) == 1 else new_inputs, outs[0] if len(outs) == 1 else outs, name=name
    )
