"""Runtimes: where a Keras model is timed (`"keras"`, `"litert"`, `"onnx"`).

A runtime turns a Keras model into a *timed callable*: a function of no
arguments that runs one batch of random input through the model the way the
deployment would. `"keras"` calls `model.predict_on_batch` on the active
backend; `"litert"` exports the model with `kerasprune.export.export_tflite`
and runs the flatbuffer in the LiteRT interpreter with `num_threads` set to the
cores this process may use; `"onnx"` exports with `kerasprune.export.export_onnx`
and runs onnxruntime with its default providers and thread pool. LiteRT and
ONNX need the TensorFlow backend (their exporters do).

Every runtime can apply a model transformation first (`transform=`, e.g.
`kerasprune.deploy.fold_batchnorm`), so timings match what is deployed, and
states its threads and package versions (`Runtime.info()`), which every
`LatencyResult` carries.

Example:
    >>> rt = kerasprune.runtimes.get_runtime("litert", num_threads=2)
    >>> kerasprune.measure_latency(model, runtime=rt, batch_size=16).median_ms
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kerasprune.errors import PruningError

log = logging.getLogger(__name__)

Transform = Callable[[keras.Model], keras.Model]
RUNTIMES = ("keras", "litert", "onnx")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def random_inputs(specs: list[tuple[tuple, str]], batch_size: int, seed: int = 0) -> list[np.ndarray]:
    """Random arrays for `(shape without batch, dtype)` specs; unknown sizes become 8."""
    rng = np.random.default_rng(seed)
    out = []
    for shape, dtype in specs:
        full = [batch_size] + [8 if d is None or int(d) < 0 else int(d) for d in shape]
        if "int" in str(dtype):
            out.append(rng.integers(0, 10, full).astype(str(dtype)))
        else:
            out.append(rng.normal(size=full).astype("float32"))
    return out


def keras_input_specs(model: keras.Model) -> list[tuple[tuple, str]]:
    """`(shape without batch, dtype)` of each of `model`'s inputs."""
    return [(tuple(t.shape[1:]), str(t.dtype)) for t in model.inputs]


@dataclass(frozen=True)
class Runtime:
    """Base class: how to time a Keras model on one inference engine.

    Subclasses implement `prepare`; `measure` (interleaved timing of several
    models) is shared, and a test double may override it.

    Attributes:
        transform: Applied to every model before it is prepared (e.g.
            `kerasprune.deploy.fold_batchnorm`); None for the model as is.
    """

    name = "base"
    transform: Transform | None = None

    def prepare(self, model: keras.Model, batch_size: int, seed: int = 0) -> Callable[[], Any]:
        """A callable of no arguments that runs one batch of `batch_size` through `model`."""
        raise NotImplementedError

    def info(self) -> dict:
        """`{"runtime", "threads", "versions", "transform"}`: what the timings ran on."""
        return {
            "runtime": self.name,
            "threads": self.threads(),
            "versions": self.versions(),
            "transform": None if self.transform is None else _name(self.transform),
        }

    def threads(self) -> int | None:
        """Threads the engine uses (None: the engine's own default, not known here)."""
        return None

    def versions(self) -> dict[str, str]:
        """Versions of the packages that run the model."""
        return {"keras": keras.__version__}

    @property
    def key(self) -> str:
        """A string naming the configuration, for caches of measurements."""
        info = self.info()
        versions = ",".join(f"{k}={v}" for k, v in sorted(info["versions"].items()))
        return f"{self.name}|threads={info['threads']}|{versions}|transform={info['transform']}"

    def _model(self, model: keras.Model) -> keras.Model:
        return model if self.transform is None else self.transform(model)

    def measure(
        self, models: list, *, batch_size: int, warmup: int, runs: int, seed: int = 0, prepared: dict | None = None
    ) -> list:
        """Median times of `models`, timed interleaved (one batch each, in turn), as `LatencyResult`s.

        `prepared` is an optional dict the caller owns, `{(id(model), batch_size, seed): timed
        callable}` (keep the models alive while it is used): models
        found there are not prepared (exported) again, and new ones are added.
        """
        from kerasprune.latency import _results, _time_callables

        fns = []
        for m in models:
            fn = None if prepared is None else prepared.get((id(m), batch_size, seed))
            if fn is None:
                fn = self.prepare(m, batch_size, seed)
                if prepared is not None:
                    prepared[(id(m), batch_size, seed)] = fn
            fns.append(fn)
        times = _time_callables(fns, warmup=warmup, runs=runs)
        return _results(times, batch_size=batch_size, warmup=warmup, info=self.info())


def _name(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


@dataclass(frozen=True)
class KerasRuntime(Runtime):
    """`model.predict_on_batch` on the active Keras backend (compiled predict function)."""

    name = "keras"

    def prepare(self, model, batch_size, seed=0):
        model = self._model(model)
        xs = random_inputs(keras_input_specs(model), batch_size, seed)
        x = xs[0] if len(xs) == 1 else xs
        return lambda: model.predict_on_batch(x)

    def threads(self) -> int | None:
        backend = keras.backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            return tf.config.threading.get_intra_op_parallelism_threads() or available_cores()
        if backend == "torch":
            import torch

            return int(torch.get_num_threads())
        return available_cores()  # JAX/XLA's CPU client uses every core

    def versions(self):
        backend = keras.backend.backend()
        dist = {"tensorflow": "tensorflow-cpu", "jax": "jax", "torch": "torch"}.get(backend, backend)
        return {"keras": keras.__version__, backend: _version(dist) or _version(backend) or "?"}


def _require_tensorflow(runtime: str) -> None:
    if keras.backend.backend() != "tensorflow":
        raise PruningError(
            f"The {runtime!r} runtime exports the model, which needs the TensorFlow backend "
            f"(KERAS_BACKEND=tensorflow). Received backend: {keras.backend.backend()}"
        )


@dataclass(frozen=True)
class LiteRTRuntime(Runtime):
    """The model exported to a LiteRT (TFLite) flatbuffer, run by the LiteRT interpreter.

    Attributes:
        num_threads: Interpreter threads; None uses every core this process may
            use (`available_cores()`).
    """

    name = "litert"
    num_threads: int | None = None

    def threads(self) -> int:
        return self.num_threads or available_cores()

    def versions(self):
        from kerasprune.export import interpreter_name

        out = {"keras": keras.__version__, "tensorflow": _version("tensorflow-cpu") or _version("tensorflow") or "?"}
        out[interpreter_name()] = _version("ai-edge-litert") or out["tensorflow"]
        return out

    def prepare(self, model, batch_size, seed=0):
        _require_tensorflow(self.name)
        from kerasprune.export import _interpreter_class, export_tflite

        model = self._model(model)
        with tempfile.TemporaryDirectory(prefix="kerasprune-litert-") as tmp:
            blob = export_tflite(model, Path(tmp) / "model.tflite").read_bytes()
        cls, _ = _interpreter_class()
        interp = cls(model_content=blob, num_threads=self.threads())
        details = interp.get_input_details()
        for d in details:
            interp.resize_tensor_input(d["index"], [batch_size] + [int(v) for v in d["shape"][1:]])
        interp.allocate_tensors()
        details = interp.get_input_details()
        specs = [(tuple(int(v) for v in d["shape"][1:]), np.dtype(d["dtype"]).name) for d in details]
        xs = random_inputs(specs, batch_size, seed)
        outs = [d["index"] for d in interp.get_output_details()]

        def run():
            for d, x in zip(details, xs):
                interp.set_tensor(d["index"], x)
            interp.invoke()
            return [interp.get_tensor(i) for i in outs]

        run.interpreter = interp  # keeps it alive with the callable
        return run


@dataclass(frozen=True)
class OnnxRuntime(Runtime):
    """The model exported to ONNX, run by onnxruntime (default providers).

    Attributes:
        intra_op_threads: Session intra-op threads; None (0 to onnxruntime)
            leaves onnxruntime's default (one thread per physical core).
        providers: Execution providers; None uses `onnxruntime.get_available_providers()`.
    """

    name = "onnx"
    intra_op_threads: int | None = None
    providers: tuple[str, ...] | None = None

    def threads(self) -> int | None:
        return self.intra_op_threads

    def versions(self):
        return {
            "keras": keras.__version__,
            "tensorflow": _version("tensorflow-cpu") or _version("tensorflow") or "?",
            "tf2onnx": _version("tf2onnx") or "?",
            "onnxruntime": _version("onnxruntime") or "?",
        }

    def info(self) -> dict:
        out = super().info()
        out["providers"] = list(self._providers())
        return out

    def _providers(self) -> tuple[str, ...]:
        if self.providers is not None:
            return self.providers
        import onnxruntime as ort

        return tuple(ort.get_available_providers())

    def prepare(self, model, batch_size, seed=0):
        _require_tensorflow(self.name)
        import onnxruntime as ort

        from kerasprune.export import export_onnx

        model = self._model(model)
        if not getattr(model, "_called", True):  # Keras' ONNX exporter refuses models never called
            xs = random_inputs(keras_input_specs(model), 1, seed)
            model(xs[0] if len(xs) == 1 else xs, training=False)
        with tempfile.TemporaryDirectory(prefix="kerasprune-onnx-") as tmp:
            blob = export_onnx(model, Path(tmp) / "model.onnx").read_bytes()
        options = ort.SessionOptions()
        if self.intra_op_threads:
            options.intra_op_num_threads = int(self.intra_op_threads)
        session = ort.InferenceSession(blob, sess_options=options, providers=list(self._providers()))
        dtypes = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32"}
        inputs = session.get_inputs()
        specs = [(tuple(d if isinstance(d, int) else None for d in i.shape[1:]), dtypes.get(i.type, "float32")) for i in inputs]
        feed = dict(zip((i.name for i in inputs), random_inputs(specs, batch_size, seed)))
        return lambda: session.run(None, feed)


_CLASSES = {"keras": KerasRuntime, "litert": LiteRTRuntime, "onnx": OnnxRuntime}


def get_runtime(runtime: str | Runtime = "keras", **options) -> Runtime:
    """A `Runtime` by name (`"keras"`, `"litert"`, `"onnx"`), or `runtime` itself.

    Args:
        runtime: A name or a `Runtime` instance (returned as is).
        **options: Fields of the runtime class: `transform` for all,
            `num_threads` (LiteRT), `intra_op_threads`, `providers` (ONNX).

    Returns:
        A `Runtime`.

    Raises:
        PruningError: unknown name, or an option the runtime does not have.

    Example:
        >>> get_runtime("litert", transform=kerasprune.deploy.fold_batchnorm)
    """
    if isinstance(runtime, Runtime):
        if options:
            raise PruningError(f"Options {sorted(options)} apply to runtime names, not to a Runtime instance")
        return runtime
    cls = _CLASSES.get(runtime) if isinstance(runtime, str) else None
    if cls is None:
        raise PruningError(f"runtime must be one of {list(RUNTIMES)} or a Runtime. Received: runtime={runtime!r}")
    try:
        return cls(**options)
    except TypeError:
        fields = [f for f in cls.__dataclass_fields__]
        raise PruningError(
            f"Runtime {runtime!r} takes options {fields}. Received: {sorted(options)}"
        ) from None
