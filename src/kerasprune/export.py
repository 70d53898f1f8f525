"""Deployment: export a (pruned) model and run the exported artifact.

Three formats, all checked against Keras by the test suite (TensorFlow backend,
tensorflow 2.21 / keras 3.15):

- **SavedModel**: `model.export(path, format="tf_saved_model")`, run with
  `tf.saved_model.load(path).serve(x)`.
- **TFLite / LiteRT flatbuffer**: the SavedModel converted by
  `tf.lite.TFLiteConverter.from_saved_model`, run by the LiteRT interpreter
  (`ai_edge_litert.interpreter.Interpreter`, package `ai-edge-litert`; falls
  back to `tf.lite.Interpreter` when that package is absent).
- **ONNX**: `model.export(path, format="onnx")` (Keras drives `tf2onnx`
  internally), run by `onnxruntime` with its available execution providers.

Every export takes `fold_bn=True` to fold BatchNorm (and the other per-channel
affine layers) into the neighbouring convolutions first
(`kerasprune.fold_batchnorm`): the exported graph is smaller and faster and
computes the same outputs. The runners use every core by default
(`num_threads=os.cpu_count()`, for LiteRT and for ONNX Runtime's intra-op pool);
`runtime_versions()` names the libraries a measurement ran on.

Files are written atomically (temporary name in the target folder, then
`os.replace`); an existing output is replaced only with `overwrite=True`.
Exporting needs the TensorFlow backend (SavedModel and TFLite are TensorFlow
formats; Keras' ONNX export of a TensorFlow model goes through tf2onnx).

Example:
    >>> from kerasprune import export
    >>> path = export.export_tflite(pruned, "pruned.tflite")
    >>> y = export.run_tflite(path, x)
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np

from kerasprune import _keras
from kerasprune.deploy import fold_batchnorm
from kerasprune.errors import ModelSaveError, PruningError
from kerasprune.io import atomic_path

log = logging.getLogger(__name__)

FORMATS = ("saved_model", "tflite", "onnx")


def _require_tensorflow(what: str) -> None:
    if keras.backend.backend() != "tensorflow":
        raise PruningError(
            f"{what} export needs the TensorFlow backend (KERAS_BACKEND=tensorflow). "
            f"Received backend: {keras.backend.backend()}"
        )


def _interpreter_class():
    """The LiteRT interpreter class, and which package it comes from."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError:  # pragma: no cover - the package is a listed dependency
        import tensorflow as tf

        return tf.lite.Interpreter, "tf.lite"


def interpreter_name() -> str:
    """`'ai_edge_litert'` or `'tf.lite'`: which interpreter `run_tflite` uses."""
    return _interpreter_class()[1]


def _deployable(model: keras.Model, fold_bn: bool) -> keras.Model:
    return fold_batchnorm(model) if fold_bn else model


def export_saved_model(
    model: keras.Model, path: str | os.PathLike, *, overwrite: bool = False, fold_bn: bool = False
) -> Path:
    """Export `model` as a TensorFlow SavedModel directory (inference only).

    Args:
        model: A built Keras model.
        path: The directory to create.
        overwrite: Replace an existing directory at `path`.
        fold_bn: Fold BatchNorm and other per-channel affine layers into the
            neighbouring convolutions first (`kerasprune.fold_batchnorm`).

    Returns:
        The SavedModel directory.

    Raises:
        ModelSaveError: `path` exists and `overwrite` is False.
        PruningError: the backend is not TensorFlow.
    """
    _require_tensorflow("SavedModel")
    path = Path(path)
    if path.exists() and not overwrite:
        raise ModelSaveError(f"Output {path} already exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _deployable(model, fold_bn)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        model.export(str(tmp / "sm"), format="tf_saved_model", verbose=False)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp / "sm", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported SavedModel %s", path)
    return path


def export_tflite(
    model: keras.Model,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    saved_model: str | None = None,
    fold_bn: bool = False,
) -> Path:
    """Export `model` as a TFLite/LiteRT flatbuffer (float32, no quantization).

    Args:
        model: A built Keras model.
        path: The `.tflite` file to write.
        overwrite: Replace an existing file.
        saved_model: An existing SavedModel export of `model` to convert
            (saves exporting it again); converted as it is.
        fold_bn: Fold BatchNorm and other per-channel affine layers first
            (ignored, with a warning, when `saved_model` is given).

    Returns:
        The `.tflite` path.
    """
    _require_tensorflow("TFLite")
    import tensorflow as tf

    path = Path(path)
    if path.exists() and not overwrite:  # before the (slow) conversion
        raise ModelSaveError(f"Output file {path} already exists; pass overwrite=True to replace it")
    if saved_model is not None and fold_bn:
        log.warning("export_tflite: converting the given SavedModel %s as it is; fold_bn=True is ignored", saved_model)
    with contextlib.ExitStack() as stack:
        if saved_model is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            saved_model = str(export_saved_model(model, tmp / "sm", fold_bn=fold_bn))
        flatbuffer = tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert()
        with atomic_path(path, overwrite=overwrite, suffix=".tflite") as out:
            out.write_bytes(flatbuffer)
    log.info("exported TFLite %s (%d bytes)", path, len(flatbuffer))
    return path


def export_onnx(
    model: keras.Model, path: str | os.PathLike, *, overwrite: bool = False, fold_bn: bool = False
) -> Path:
    """Export `model` as ONNX with Keras' exporter (tf2onnx on the TensorFlow backend).

    Args:
        model: A built Keras model.
        path: The `.onnx` file to write.
        overwrite: Replace an existing file.
        fold_bn: Fold BatchNorm and other per-channel affine layers first.

    Returns:
        The `.onnx` path.
    """
    _require_tensorflow("ONNX")
    path = Path(path)
    if path.exists() and not overwrite:
        raise ModelSaveError(f"Output file {path} already exists; pass overwrite=True to replace it")
    model = _deployable(model, fold_bn)
    with atomic_path(path, overwrite=overwrite, suffix=".onnx") as out:
        # An explicit signature: Keras' ONNX exporter refuses models never called (a loaded one).
        signature = _keras.export_input_signature(model)
        model.export(str(out), format="onnx", verbose=False, input_signature=signature)
    log.info("exported ONNX %s", path)
    return path


def load_saved_model(path: str | os.PathLike):
    """A callable `x -> np.ndarray` running the SavedModel's `serve` endpoint."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(loaded.serve(np.asarray(x, dtype=np.float32)))

    run.loaded = loaded
    return run


def _threads(num_threads: int | None) -> int:
    if num_threads is None:
        return os.cpu_count() or 1
    if num_threads < 1:
        raise PruningError(f"num_threads must be a positive integer. Received: num_threads={num_threads}")
    return int(num_threads)


def load_tflite(path: str | os.PathLike, *, num_threads: int | None = None):
    """A callable `x -> np.ndarray` running the flatbuffer in the LiteRT interpreter.

    Args:
        path: The `.tflite` file.
        num_threads: Interpreter threads; default: every core (`os.cpu_count()`).
            The interpreter's own default is a single thread.

    Returns:
        The runner; `runner.num_threads` says how many threads it uses.
    """
    cls, _ = _interpreter_class()
    threads = _threads(num_threads)
    interpreter = cls(model_path=str(path), num_threads=threads)
    state = {"shape": None}
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]

    def run(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if state["shape"] != x.shape:
            interpreter.resize_tensor_input(inp["index"], x.shape)
            interpreter.allocate_tensors()
            state["shape"] = x.shape
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return np.array(interpreter.get_tensor(out["index"]))

    run.num_threads = threads
    return run


def load_onnx(path: str | os.PathLike, *, num_threads: int | None = None, providers: list[str] | None = None):
    """A callable `x -> np.ndarray` running the model in onnxruntime.

    Args:
        path: The `.onnx` file.
        num_threads: Intra-op threads; default: every core (`os.cpu_count()`).
        providers: Execution providers; default: every available one except the
            remote `AzureExecutionProvider` (on a CPU-only install: the CPU provider).

    Returns:
        The runner; `runner.num_threads` and `runner.providers` say what it uses.
    """
    import onnxruntime as ort

    threads = _threads(num_threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if providers is None:
        providers = [p for p in ort.get_available_providers() if p != "AzureExecutionProvider"]
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.asarray(x, dtype=np.float32)})[0]

    run.num_threads = threads
    run.providers = session.get_providers()
    return run


def runtime_versions() -> dict[str, str | None]:
    """Versions of the libraries that export and run models (None: not installed)."""
    from importlib import metadata

    def version(*names: str) -> str | None:
        for n in names:
            try:
                return metadata.version(n)
            except metadata.PackageNotFoundError:
                continue
        return None

    return {
        "keras": keras.__version__,
        "tensorflow": version("tensorflow", "tensorflow-cpu"),
        **{n: version(n) for n in ("ai-edge-litert", "tf2onnx", "onnx", "onnxruntime")},
    }


def run_saved_model(path: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    """Outputs of the SavedModel at `path` on `x`."""
    return load_saved_model(path)(x)


def run_tflite(path: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    """Outputs of the `.tflite` flatbuffer at `path` on `x` (LiteRT interpreter)."""
    return load_tflite(path)(x)


def run_onnx(path: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    """Outputs of the `.onnx` model at `path` on `x` (onnxruntime)."""
    return load_onnx(path)(x)


def export_all(
    model: keras.Model, folder: str | os.PathLike, name: str, *, overwrite: bool = False, fold_bn: bool = False
) -> dict:
    """Export `model` in every format into `folder` (folded once with `fold_bn=True`).

    Returns:
        `{format: path}`.
    """
    folder = Path(folder)
    model = _deployable(model, fold_bn)
    sm = export_saved_model(model, folder / f"{name}_saved_model", overwrite=overwrite)
    return {
        "saved_model": sm,
        "tflite": export_tflite(model, folder / f"{name}.tflite", overwrite=overwrite, saved_model=str(sm)),
        "onnx": export_onnx(model, folder / f"{name}.onnx", overwrite=overwrite),
    }


def exported_size(path: str | os.PathLike) -> int:
    """Bytes on disk of an exported file or SavedModel directory."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
