"""Before/after reports: parameters, MACs, file size, latency and accuracy.

`compare(before, after)` measures two models the same way and returns a frozen
`Comparison` that renders as a table (`.table()`) and as JSON (`.to_dict()`).
`measure_latency` times the compiled predict path of the active backend: the
median of `runs` timed batches after `warmup` untimed ones.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kerasprune._keras import weights_of
from kerasprune.data import labelled, load_arrays
from kerasprune.errors import PruningError
from kerasprune.flops import count_flops, count_params, flops_by_layer, iter_calls

log = logging.getLogger(__name__)

DataLike = Any  # any labelled form of kerasprune.data.batches: (x, y), an .npz path, batches, a dataset


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
        backend: The Keras backend that ran the model.
    """

    median_ms: float
    min_ms: float
    max_ms: float
    batch_size: int
    runs: int
    warmup: int
    backend: str

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


def measure_latency(
    model: keras.Model,
    *,
    batch_size: int = 1,
    warmup: int = 3,
    runs: int = 20,
    x: Any = None,
    seed: int = 0,
) -> LatencyResult:
    """Median latency of `model.predict_on_batch` on the active backend.

    Args:
        model: The model to time.
        batch_size: Samples per batch (ignored when `x` is given).
        warmup: Untimed batches run first.
        runs: Timed batches; the median is reported.
        x: Input batch to use instead of random data of the model's input shape.
        seed: Seed of the random input.

    Returns:
        A `LatencyResult`.

    Raises:
        PruningError: `batch_size`, `runs` or `warmup` out of range.
    """
    _check_timing(batch_size, runs, warmup)
    if x is None:
        x = _random_batch(model, batch_size, seed)
    else:
        batch_size = int(len(x[0] if isinstance(x, (list, tuple)) else x))
    return _time_models([model], [x], batch_size=batch_size, warmup=warmup, runs=runs)[0]


def _check_timing(batch_size: int, runs: int, warmup: int) -> None:
    if batch_size < 1 or runs < 1 or warmup < 0:
        raise PruningError(
            f"Latency measurement needs batch_size >= 1, runs >= 1, warmup >= 0. "
            f"Received: batch_size={batch_size}, runs={runs}, warmup={warmup}"
        )


def _time_models(models: list, xs: list, *, batch_size: int, warmup: int, runs: int) -> list[LatencyResult]:
    """Time several models with interleaved runs, so machine load drifts hit all alike."""
    for model, x in zip(models, xs):
        for _ in range(warmup):
            model.predict_on_batch(x)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(runs):
        for model, x, t in zip(models, xs, times):
            t0 = time.perf_counter()
            model.predict_on_batch(x)
            t.append((time.perf_counter() - t0) * 1000.0)
    return [
        LatencyResult(
            median_ms=float(statistics.median(t)),
            min_ms=float(min(t)),
            max_ms=float(max(t)),
            batch_size=batch_size,
            runs=runs,
            warmup=warmup,
            backend=keras.backend.backend(),
        )
        for t in times
    ]


def load_data(data: DataLike, *, x_key: str = "x", y_key: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """`(x, y)` from a tuple, a mapping with `x_key`/`y_key`, or an `.npz` file holding both.

    Raises:
        PruningError: the file is missing or lacks `x` or `y`.
    """
    x, y = load_arrays(data, x_key=x_key, y_key=y_key)
    return np.asarray(x), np.asarray(y)


def predict(model: keras.Model, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """`model(x)` in inference mode, batch by batch, as one numpy array.

    Calls the model directly rather than `model.predict`, so checking many
    freshly built models (pruned variants) does not retrace a predict function
    for each.
    """
    parts = [
        keras.ops.convert_to_numpy(model(x[i : i + batch_size], training=False)) for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0,))


def accuracy(model: keras.Model, data: DataLike, *, batch_size: int = 256) -> float:
    """Classification accuracy of a single-output `model` on labelled `data`.

    `data` is any labelled form of `kerasprune.data.batches`: `(x, y)`, a mapping or an
    `.npz` file with `x` and `y`, a list or generator of `(x, y)` batches, a dataset.
    Labels may be integer classes or one-hot rows; a single-unit output is read as a
    binary probability (threshold 0.5).

    Raises:
        PruningError: unlabelled data, or batches that do not fit the model's inputs.
    """
    preds, truths = [], []
    for x, y in labelled(data, model=model, batch_size=batch_size, where="accuracy data"):
        preds.append(keras.ops.convert_to_numpy(model(x, training=False)))
        truths.append(np.asarray(y))
    pred, y = np.concatenate(preds), np.concatenate(truths)
    if pred.ndim == 1 or pred.shape[-1] == 1:
        guess = (pred.reshape(len(pred), -1)[:, 0] > 0.5).astype(np.int64)
    else:
        guess = pred.argmax(axis=-1)
    truth = y.argmax(axis=-1) if y.ndim == pred.ndim and y.ndim > 1 and y.shape[-1] > 1 else y.reshape(len(y))
    return float(np.mean(guess == truth))


@dataclass(frozen=True)
class ModelStats:
    """What one model costs.

    Attributes:
        name: The model's name (or file name).
        params: Number of weight scalars.
        flops: Multiply-accumulates for one sample (see `kerasprune.count_flops`).
        file_size: Bytes of the model file, when it came from a file.
        latency: Measured forward time, or None when not measured.
        accuracy: Accuracy on the given data, or None.
    """

    name: str
    params: int
    flops: int
    file_size: int | None = None
    latency: LatencyResult | None = None
    accuracy: float | None = None
    optimizer_in_file: bool = False


def _has_optimizer_state(path) -> bool:
    """Whether a model file also stores optimizer variables (they inflate its size).

    `.keras` files keep them under `optimizer/vars` of `model.weights.h5`; legacy HDF5
    (`.h5`) files under `optimizer_weights`.
    """
    import zipfile

    import h5py

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf, zf.open("model.weights.h5") as fh, h5py.File(fh, "r") as h5:
                opt = h5.get("optimizer")
                return bool(opt is not None and len(opt.get("vars", {})) > 0)
        with h5py.File(path, "r") as h5:
            opt = h5.get("optimizer_weights")
            return bool(opt is not None and len(opt) > 0)
    except Exception:  # neither layout: the size is reported as is
        return False


def model_stats(
    model: keras.Model,
    *,
    name: str | None = None,
    path: str | os.PathLike | None = None,
    data: DataLike = None,
    latency: bool = True,
    batch_size: int = 1,
    runs: int = 20,
    warmup: int = 3,
) -> ModelStats:
    """Measure one model (see `ModelStats`)."""
    return ModelStats(
        name=name or (Path(path).name if path else model.name),
        params=count_params(model),
        flops=count_flops(model),
        file_size=Path(path).stat().st_size if path is not None and Path(path).is_file() else None,
        latency=measure_latency(model, batch_size=batch_size, runs=runs, warmup=warmup) if latency else None,
        accuracy=accuracy(model, data) if data is not None else None,
        optimizer_in_file=path is not None and Path(path).is_file() and _has_optimizer_state(path),
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a in (None, 0) or b is None else b / a


def _si(n: float | None, unit: str = "") -> str:
    if n is None:
        return "-"
    for div, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {prefix}{unit}".rstrip()
    return f"{n:.0f} {unit}".rstrip()


def _speed(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.2f}x faster" if r >= 1 else f"{1 / r:.2f}x slower"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for div, prefix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= div:
            return f"{n / div:.1f} {prefix}"
    return f"{n} B"


@dataclass(frozen=True)
class Comparison:
    """Two models measured the same way (`compare`)."""

    before: ModelStats
    after: ModelStats

    @property
    def params_ratio(self) -> float | None:
        """`after.params / before.params`."""
        return _ratio(self.before.params, self.after.params)

    @property
    def flops_ratio(self) -> float | None:
        """`after.flops / before.flops`."""
        return _ratio(self.before.flops, self.after.flops)

    @property
    def speedup(self) -> float | None:
        """Median latency before / after (> 1 means faster)."""
        if self.before.latency is None or self.after.latency is None:
            return None
        return _ratio(self.after.latency.median_ms, self.before.latency.median_ms)

    def rows(self) -> list[tuple[str, str, str, str]]:
        """`(metric, before, after, change)` rows, formatted for display."""
        b, a = self.before, self.after

        def change(r: float | None) -> str:
            return "-" if r is None else f"{(r - 1) * 100:+.1f}%"

        rows = [
            ("params", _si(b.params), _si(a.params), change(self.params_ratio)),
            ("FLOPs (MACs)", _si(b.flops), _si(a.flops), change(self.flops_ratio)),
        ]
        if b.file_size is not None or a.file_size is not None:
            label = "file size"
            if b.optimizer_in_file != a.optimizer_in_file:
                label = "file size (only one file holds optimizer state)"
            rows.append((label, _bytes(b.file_size), _bytes(a.file_size), change(_ratio(b.file_size, a.file_size))))
        if b.latency is not None and a.latency is not None:
            label = f"latency (batch {b.latency.batch_size}, median)"
            rows.append(
                (label, f"{b.latency.median_ms:.2f} ms", f"{a.latency.median_ms:.2f} ms", _speed(self.speedup))
            )
        if b.accuracy is not None or a.accuracy is not None:
            fmt = lambda v: "-" if v is None else f"{v:.2%}"  # noqa: E731
            diff = "-" if None in (a.accuracy, b.accuracy) else f"{(a.accuracy - b.accuracy) * 100:+.2f} pts"
            rows.append(("accuracy", fmt(b.accuracy), fmt(a.accuracy), diff))
        return rows

    def table(self, title: str | None = None):
        """A `rich.table.Table` of `rows()`."""
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=title)
        table.add_column("")
        table.add_column(escape(self.before.name), justify="right")
        table.add_column(escape(self.after.name), justify="right")
        table.add_column("change", justify="right")
        for row in self.rows():
            table.add_row(*row)
        return table

    def to_dict(self) -> dict:
        """Plain JSON-serializable data, ratios included."""
        return {
            "before": asdict(self.before),
            "after": asdict(self.after),
            "params_ratio": self.params_ratio,
            "flops_ratio": self.flops_ratio,
            "speedup": self.speedup,
            "backend": keras.backend.backend(),
        }


def compare(
    before: keras.Model | str | os.PathLike,
    after: keras.Model | str | os.PathLike,
    *,
    data: DataLike = None,
    latency: bool = True,
    batch_size: int = 1,
    runs: int = 20,
    warmup: int = 3,
    before_path: str | os.PathLike | None = None,
    after_path: str | os.PathLike | None = None,
) -> Comparison:
    """Measure two models the same way: params, MACs, file size, latency, accuracy.

    Args:
        before: The original model, or a path to its file.
        after: The pruned model, or a path to its file.
        data: Optional labelled data for accuracy: `(x, y)`, a mapping or an `.npz`
            file with `x` and `y`, a list or generator of `(x, y)` batches, a dataset
            (read once into memory).
        latency: Measure latency (median of `runs` batches of `batch_size`).
        before_path, after_path: Files the models live in (for file sizes)
            when models rather than paths are given.

    Returns:
        A frozen `Comparison`.

    Example:
        >>> print(kerasprune.report.compare(model, pruned).to_dict()["flops_ratio"])
    """
    from kerasprune.io import load_model

    models, paths = [], []
    for model, path in ((before, before_path), (after, after_path)):
        if isinstance(model, (str, os.PathLike)):
            model, path = load_model(model), model
        models.append(model)
        paths.append(path)
    if data is not None:  # read once (a generator too), used for both models
        data = labelled(data, model=models[0], where="data")
    stats = [model_stats(m, path=p, data=data, latency=False) for m, p in zip(models, paths)]
    if latency:
        _check_timing(batch_size, runs, warmup)
        xs = [_random_batch(m, batch_size, 0) for m in models]
        timed = _time_models(models, xs, batch_size=batch_size, warmup=warmup, runs=runs)
        stats = [replace(s, latency=t) for s, t in zip(stats, timed)]
    if stats[0].name == stats[1].name:
        stats = [replace(stats[0], name="before"), replace(stats[1], name="after")]
    return Comparison(stats[0], stats[1])


def channel_counts(model: keras.Model) -> dict[str, int]:
    """Filters/units of every layer that produces channels, by layer key (topological order)."""
    from kerasprune.graph import analyze

    graph = analyze(model)
    return {key: len(graph.records[key].produces) for key in graph.order if graph.records[key].produces is not None}


def stage_breakdown(model: keras.Model) -> dict[str, tuple[int, int]]:
    """Params and MACs per *stage*: consecutive layers with the same spatial resolution.

    Returns:
        `{label: (params, macs)}` in order, labels like `"stage 1 (8x8)"`;
        layers with rank-2 outputs (after `Flatten`/pooling) form the `"head"`. Only a
        layer with weights or MACs opens a stage (padding or pooling alone does not), so
        no stage is empty.
    """
    macs = flops_by_layer(model)
    out: dict[str, list[int]] = {}
    seen: set[str] = set()
    label, last_res = None, None
    for call in iter_calls(model):
        shape = call.out_shapes[0] if call.out_shapes else ()
        fmt = getattr(call.layer, "data_format", "channels_last")
        spatial = tuple(shape[2:] if fmt == "channels_first" else shape[1:-1]) if len(shape) > 2 else None
        new = call.key not in seen
        seen.add(call.key)
        params = sum(int(np.prod(v.shape)) for v in weights_of(call.layer)) if new else 0
        cost = macs.get(call.key, 0) if new else 0
        if spatial is None:
            label = "head"
        elif (params or cost) and (spatial != last_res or label is None or label == "head"):
            # only a layer that costs something opens a stage: padding or pooling alone does not
            label = f"stage {len([k for k in out if k != 'head']) + 1} ({'x'.join(map(str, spatial))})"
            last_res = spatial
        if label is None:
            continue  # weightless layers before the first stage (input padding, rescaling)
        entry = out.setdefault(label, [0, 0])
        entry[0] += params
        entry[1] += cost
    return {k: (v[0], v[1]) for k, v in out.items() if v != [0, 0]}
