"""Reading and writing model files safely.

`load_model` turns every way a model file can be unusable into a one-line
`ModelLoadError` that says what is wrong and what to do about it. `save_model`
writes `.keras` files atomically (a temporary file in the target directory,
then `os.replace`), never over an existing file unless asked, and never over
the file the model came from. `atomic_path` / `write_text` are the library's one
atomic writer. `model_to_bytes` / `model_from_bytes` carry a live model to worker
processes (parallel scans); `model_fingerprint` identifies a model's architecture
and weights (cache keys).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kerasprune import _keras
from kerasprune.errors import ModelLoadError, ModelSaveError

log = logging.getLogger(__name__)

_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_H5_SUFFIXES = (".h5", ".hdf5")

_UNSAFE_HINT = (
    "pass `--unsafe` (CLI) or `safe_mode=False` (Python) to load it anyway - only for files you "
    "trust: deserializing Python code runs it, so a malicious file could execute arbitrary code"
)


def _one_line(text: Any, limit: int = 240) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _head(path: Path, n: int = 8) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _walk_configs(obj: Any) -> Iterator[dict]:
    if isinstance(obj, dict):
        if "class_name" in obj:
            yield obj
        for v in obj.values():
            yield from _walk_configs(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_configs(v)


def _unknown_classes(path: Path, custom_objects: Mapping | None) -> list[str]:
    """Names of non-Keras classes in a `.keras` file's config that are not registered."""
    try:
        with zipfile.ZipFile(path) as zf:
            config = json.loads(zf.read("config.json"))
    except Exception:  # unreadable config: the caller reports the original error
        return []
    unknown = []
    custom = dict(custom_objects or {})
    for cfg in _walk_configs(config):
        module = cfg.get("module") or ""
        if module.startswith("keras") or cfg.get("class_name") == "__keras_tensor__":
            continue
        name = cfg.get("registered_name") or cfg.get("class_name")
        if not isinstance(name, str) or name in custom or cfg.get("class_name") in custom:
            continue
        if keras.saving.get_registered_object(name) is None and name not in unknown:
            unknown.append(name)
    return unknown


def _classify(path: Path, error: BaseException, custom_objects: Mapping | None) -> str:
    """A one-line explanation of why Keras could not load `path`."""
    text = str(error)
    if "safe_mode" in text or "arbitrary code" in text:
        return f"{path} contains a Lambda layer (or other Python code) that safe mode refuses to load; {_UNSAFE_HINT}"
    unknown = _unknown_classes(path, custom_objects) if path.suffix == ".keras" else []
    if not unknown and "Unknown layer" in text:
        unknown = [text.split("Unknown layer:", 1)[1].split(".", 1)[0].strip(" '\"")]
    if unknown:
        return (
            f"{path} uses custom objects that are not registered: {', '.join(unknown)}; import the module "
            "that defines them (decorated with `@keras.saving.register_keras_serializable`) or pass "
            "`custom_objects=`"
        )
    if "No model config" in text:
        return f"{path} holds only weights, not a model (no model config found); save the whole model with `model.save(...)`"
    if "truncated" in text or "signature" in text:
        return f"{path} is truncated or corrupted: {_one_line(text, 160)}"
    return f"Could not load {path}: {type(error).__name__}: {_one_line(text, 200)}"


def _is_npz(path: Path) -> bool:
    """Whether a zip archive holds NumPy arrays (`np.savez`) rather than a Keras model."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return bool(names) and "config.json" not in names and all(n.endswith(".npy") for n in names)


def _check_file(path: Path) -> None:
    """Raise `ModelLoadError` unless `path` looks like a `.keras` or HDF5 model file."""
    if not path.exists():
        raise ModelLoadError(f"Model file not found: {path}")
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            raise ModelLoadError(
                f"{path} is a TensorFlow SavedModel; Keras 3 can only reload it as an inference-only "
                "`keras.layers.TFSMLayer`, whose weights are opaque to kerasprune and cannot be pruned. "
                "Re-save the model as `.keras` with `model.save('model.keras')` from the code that built it"
            )
        raise ModelLoadError(f"{path} is a directory, not a model file (expected a .keras or .h5 file)")
    head = _head(path)
    suffix = path.suffix.lower()
    if suffix == ".keras":
        if not head.startswith(_ZIP_MAGIC):
            raise ModelLoadError(f"{path} is not a Keras model file: a .keras file is a zip archive, this one is not")
        if not zipfile.is_zipfile(path):
            raise ModelLoadError(f"{path} is truncated or corrupted: its zip archive is incomplete")
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise ModelLoadError(f"{path} is truncated or corrupted: {_one_line(e, 160)}") from None
        if bad is not None:
            raise ModelLoadError(f"{path} is corrupted: member '{bad}' fails its checksum")
        if "config.json" not in names:
            if names and all(n.endswith(".npy") for n in names):
                raise ModelLoadError(
                    f"{path} is a NumPy .npz data file renamed to .keras, not a model; give it as data "
                    "(`--data` in the CLI, `data=` in Python)"
                )
            raise ModelLoadError(f"{path} is a zip archive but not a Keras model (no config.json inside)")
    elif suffix in _H5_SUFFIXES:
        if not head.startswith(_HDF5_MAGIC):
            raise ModelLoadError(f"{path} is not an HDF5 model file (no HDF5 signature)")
    elif suffix in (".npz", ".npy") or (head.startswith(_ZIP_MAGIC) and _is_npz(path)):
        raise ModelLoadError(
            f"{path} is a NumPy data file, not a model; give it as data (`--data` in the CLI, "
            "`data=` in Python) and a .keras or .h5 file as the model"
        )
    else:
        kind = "a zip archive" if head.startswith(_ZIP_MAGIC) else "an HDF5 file" if head.startswith(_HDF5_MAGIC) else None
        hint = f" (it looks like {kind}: rename it accordingly)" if kind else ""
        raise ModelLoadError(f"{path}: unsupported model file type '{suffix}'; expected .keras, .h5 or .hdf5{hint}")


def load_model(
    path: str | os.PathLike,
    *,
    safe_mode: bool = True,
    custom_objects: Mapping[str, Any] | None = None,
    compile: bool = False,
) -> keras.Model:
    """Load a Keras model from a `.keras` or `.h5` file, with clear errors.

    Args:
        path: The model file.
        safe_mode: Refuse to deserialize Python code (`Lambda` layers). Only
            lower it (`False`) for files you trust: loading such a file runs
            the code inside it.
        custom_objects: Classes or functions the file refers to by name.
        compile: Restore the training configuration too (off by default:
            pruning changes weight shapes, so optimizer state does not carry
            over).

    Returns:
        The loaded `keras.Model`.

    Raises:
        ModelLoadError: a one-line message for a missing file, a file that is
            not a model (text, weights only, a SavedModel directory), a
            truncated or corrupted file, unregistered custom objects, or a
            `Lambda` layer refused by safe mode.

    Example:
        >>> model = kerasprune.io.load_model("model.keras")
    """
    path = Path(path)
    _check_file(path)
    try:
        model = keras.saving.load_model(
            path, custom_objects=dict(custom_objects or {}), compile=compile, safe_mode=safe_mode
        )
    except Exception as e:
        raise ModelLoadError(_classify(path, e, custom_objects)) from e
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{path} holds a {type(model).__name__}, not a keras.Model")
    log.info("loaded %s (%s, %d params)", path, model.name, model.count_params())
    return model


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file (symlinks and hard links resolved)."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        with contextlib.suppress(OSError):
            return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it onto `path` when the block succeeds.

    On any exception (including `KeyboardInterrupt`) the temporary file is
    removed and `path` is left as it was.

    Raises:
        ModelSaveError: `path` exists and `overwrite` is False, or it is a directory.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelSaveError(f"Output path {path} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise ModelSaveError(f"Output file {path} already exists; pass --force (overwrite=True) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def save_model(
    model: keras.Model,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    source: str | os.PathLike | None = None,
) -> Path:
    """Save `model` as a `.keras` file, atomically.

    The model is written to a temporary file in the target directory and moved
    into place with `os.replace`, so `path` never holds a partial file; on
    failure or interruption the temporary file is removed.

    Args:
        model: The model to save.
        path: Destination; must end in `.keras`.
        overwrite: Replace an existing file at `path`.
        source: The file the model was loaded from. Writing onto it is always
            refused, even with `overwrite=True`.

    Returns:
        The path written.

    Raises:
        ModelSaveError: wrong extension, `path` is `source`, or `path` exists
            and `overwrite` is False.

    Example:
        >>> kerasprune.save_model(smaller, "pruned.keras")  # refuses to replace an existing file
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ModelSaveError(f"Output file {path} must end in .keras (kerasprune writes the native Keras format)")
    if source is not None and same_file(path, source):
        raise ModelSaveError(f"Refusing to write onto the input file {source}; choose another output path")
    with atomic_path(path, overwrite=overwrite, suffix=".keras") as tmp:
        keras.saving.save_model(model, tmp)
    log.info("saved %s", path)
    return path


def write_text(text: str, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a text file (selections, JSON reports) atomically.

    Raises:
        ModelSaveError: `path` exists and `overwrite` is False, or it is a directory.
    """
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def model_to_bytes(model: keras.Model) -> bytes:
    """The model as the bytes of a `.keras` file (what workers of a parallel scan receive)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        keras.saving.save_model(model, path)
        return path.read_bytes()


def model_from_bytes(data: bytes, *, custom_objects: Mapping[str, Any] | None = None) -> keras.Model:
    """Rebuild a model from `model_to_bytes` output, in another process.

    The bytes must come from this library's own `model_to_bytes` on a live model
    (a trusted source), so a `Lambda`'s Python function is rebuilt as
    `clone_model` would; never call this on bytes read from a file.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(data)
        with _keras.trusted_deserialization():
            return keras.saving.load_model(
                path, custom_objects=dict(custom_objects or {}), compile=False, safe_mode=False
            )


def model_fingerprint(model: keras.Model) -> str:
    """SHA-256 (32 hex digits) of a model's architecture (JSON config) and weights."""
    h = hashlib.sha256()
    h.update(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for w in model.weights:
        arr = np.ascontiguousarray(keras.ops.convert_to_numpy(w))
        h.update(str((w.path, arr.shape, arr.dtype.str)).encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:32]
