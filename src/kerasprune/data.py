"""One data adapter for the whole library: every form of data users hand to Keras.

`batches(data, model=...)` turns what a user passes as `data=` / `val_data=` /
`train_data=` into batches `(x, y)` (`y` is None for unlabelled data), checked
against the model's inputs:

- arrays: `x`, `(x, y)`, `(x, y, sample_weight)`, `{"x": x, "y": y}` (an `.npz` mapping),
  a path to an `.npz` file holding `x` and `y` — split into batches of `batch_size`;
- a list of batches (`[x0, x1, ...]` or `[(x0, y0), ...]`), a generator or any iterable of
  batches;
- `tf.data.Dataset` (batched or not), `keras.utils.PyDataset`, a PyTorch `DataLoader`;
- multi-input models: `x` as a list/tuple/dict of arrays.

A batch whose shape does not fit the model's input is a `PruningError` naming the input.

`for_keras(data, model=...)` gives the same forms to `model.fit`/`model.evaluate`:
arrays and datasets as they are, files and mappings as `(x, y)`, lists and generators of
batches as a `keras.utils.PyDataset` (a generator is read once, so that it can be
evaluated more than once). `labelled(data, model=...)` reads every batch into memory and
requires labels (accuracy, reports).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kerasprune.errors import PruningError

__all__ = ["batches", "for_keras", "labelled", "load_arrays"]


def load_arrays(data, *, x_key: str = "x", y_key: str = "y") -> tuple[Any, Any]:
    """`(x, y)` from a tuple, a mapping holding `x_key`/`y_key`, or an `.npz` file.

    Raises:
        PruningError: the file is missing or unreadable, or lacks one of the keys.
    """
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_file():
            raise PruningError(f"Data file not found: {path}")
        if path.suffix.lower() in (".keras", ".h5", ".hdf5"):
            raise PruningError(f"{path} is a model file, not data: give an .npz file of arrays (np.savez)")
        try:
            f = np.load(path, allow_pickle=False)
            if not hasattr(f, "files"):  # a single .npy array: x without labels
                raise PruningError(
                    f"{path} holds one array, not named arrays; save x and y with "
                    f"np.savez(path, {x_key}=x, {y_key}=y)"
                )
            with f:
                data = {k: f[k] for k in f.files}
        except PruningError:
            raise
        except Exception as e:
            raise PruningError(
                f"Could not read {path} as an .npz file of arrays: {type(e).__name__}: {e}"
            ) from None
    if isinstance(data, Mapping):
        missing = [k for k in (x_key, y_key) if k not in data]
        if missing:
            raise PruningError(f"Data must hold arrays {x_key!r} and {y_key!r}; missing {missing}. Found: {sorted(data)}")
        return data[x_key], data[y_key]
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        return data[0], data[1]
    raise PruningError(f"Expected (x, y) arrays, a mapping or an .npz path. Received: {type(data).__name__}")


def _is_array(v) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, (str, bytes))


def _input_ranks(model) -> list[int]:
    return [len(t.shape) for t in model.inputs] if model is not None else []


def _looks_like_x(v, model) -> bool:
    """Whether `v` is (a structure of) model input arrays with the batch axis."""
    ranks = _input_ranks(model)
    if _is_array(v):
        return not ranks or (len(ranks) == 1 and len(v.shape) == ranks[0])
    if isinstance(v, (list, tuple)) and v and all(_is_array(a) for a in v):
        return len(ranks) == len(v) and all(len(a.shape) == r for a, r in zip(v, ranks))
    if isinstance(v, Mapping):
        return bool(v) and all(_is_array(a) for a in v.values())
    return False


def _split_batch(batch, model) -> tuple[Any, Any]:
    """`(x, y)` of one batch: `x`, `(x, y)` or `(x, y, sample_weight)`."""
    if isinstance(batch, Mapping) and "x" in batch:
        return batch["x"], batch.get("y")
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3) and not _looks_like_x(batch, model):
        return batch[0], batch[1]
    return batch, None


def _to_numpy(v):
    if v is None:
        return None
    return keras.tree.map_structure(lambda a: a if isinstance(a, np.ndarray) else keras.ops.convert_to_numpy(a), v)


def _slice(v, start: int, stop: int):
    return keras.tree.map_structure(lambda a: a[start:stop], v)


def _length(x) -> int:
    return int(len(keras.tree.flatten(x)[0]))


def _check_x(x, model, where: str) -> None:
    if model is None:
        return
    xs = keras.tree.flatten(x)
    if len(xs) != len(model.inputs):
        raise PruningError(
            f"{where}: a batch has {len(xs)} input array(s) but model '{model.name}' has {len(model.inputs)} "
            f"inputs ({', '.join(t.name for t in model.inputs)})"
        )
    for a, t in zip(xs, model.inputs):
        shape, want = tuple(a.shape), tuple(t.shape)
        ok = len(shape) == len(want) and all(w is None or w == s for s, w in zip(shape[1:], want[1:]))
        if not ok:
            raise PruningError(
                f"{where}: a batch has shape {shape} but model input '{t.name}' expects {want} "
                "(batch axis first); pass x, (x, y), a list of batches, a generator or a dataset"
            )


def batches(
    data, *, model=None, batch_size: int = 32, where: str = "data", x_key: str = "x", y_key: str = "y"
) -> Iterator[tuple[Any, Any]]:
    """Iterate `(x, y)` numpy batches of `data` (see the module docstring for the forms).

    Args:
        data: The data, in any of the supported forms.
        model: The model the batches are for; their shapes are checked against its inputs.
        batch_size: Batch size for in-memory arrays (and unbatched datasets).
        where: How to name the data in errors (e.g. the argument or CLI option).
        x_key, y_key: Keys of `x` and `y` in a mapping or `.npz` file.

    Yields:
        `(x, y)` with `x` an array (or list/dict for multi-input models) and `y` an array
        or None.

    Raises:
        PruningError: `data` is None, not a supported form, empty, or its batches do not
            fit the model's inputs.

    Example:
        >>> for x, y in kerasprune.data.batches((x_train, y_train), model=model, batch_size=64):
        ...     pass
    """
    if data is None:
        raise PruningError(f"{where} is required: pass x, (x, y), a list of batches, a generator or a dataset")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise PruningError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
    if isinstance(data, (str, os.PathLike)) or (isinstance(data, Mapping) and x_key in data):
        data = load_arrays(data, x_key=x_key, y_key=y_key)
    in_memory = _in_memory(data, model)
    if in_memory is not None:
        x, y = _to_numpy(in_memory[0]), _to_numpy(in_memory[1])
        n = _length(x)
        if n == 0:
            raise PruningError(f"{where} is empty")
        for start in range(0, n, batch_size):
            bx = _slice(x, start, start + batch_size)
            _check_x(bx, model, where)
            yield bx, None if y is None else y[start : start + batch_size]
        return
    source = _iterable(data, model, batch_size)
    count = 0
    for batch in source:
        x, y = _split_batch(batch, model)
        x, y = _to_numpy(x), _to_numpy(y)
        _check_x(x, model, where)
        count += 1
        yield x, y
    if count == 0:
        raise PruningError(f"{where} yielded no batches")


def _in_memory(data, model) -> tuple[Any, Any] | None:
    """`(x, y)` when `data` is in-memory arrays (`x`, or a tuple `(x, y[, w])`), else None.

    An array is always `x` (never a sequence of batches); a tuple of two or three is
    Keras's `(x, y[, sample_weight])`; a list is a list of batches unless it is
    `[x, y]` with `y` shaped unlike the model's input.
    """
    if _is_array(data) or (_looks_like_x(data, model) and not isinstance(data, list)):
        return data, None
    if isinstance(data, list) and model is not None and len(model.inputs) > 1 and _looks_like_x(data, model):
        return data, None  # the input list of a multi-input model
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        first, second = data[0], data[1]
        structured = _is_array(first) or _looks_like_x(first, model)
        if structured and _is_array(second) and _length(first) == len(second):
            if isinstance(data, tuple) or not _looks_like_x(second, model):
                return first, second
    return None


def _iterable(data, model, batch_size: int):
    """Batches of a dataset, a PyDataset, a DataLoader, a list or a generator."""
    kind = type(data).__module__ + "." + type(data).__name__
    if "tensorflow" in kind and hasattr(data, "element_spec"):  # tf.data.Dataset
        spec = data.element_spec
        first = keras.tree.flatten(spec)[0]
        ranks = _input_ranks(model)
        if ranks and len(first.shape) == ranks[0] - 1:  # unbatched elements
            data = data.batch(batch_size)
        return data.as_numpy_iterator()
    if isinstance(data, keras.utils.PyDataset):
        return (data[i] for i in range(len(data)))
    try:
        return iter(data)
    except TypeError:
        raise PruningError(
            f"data must be x, (x, y), a list of batches, a generator or a dataset. Received: {kind}"
        ) from None


class _Batches(keras.utils.PyDataset):
    """Batches held in memory, as a Keras dataset (what `for_keras` hands to `fit`/`evaluate`)."""

    def __init__(self, items: list[tuple[Any, Any]]):
        super().__init__()
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int):
        x, y = self._items[index]
        return (x,) if y is None else (x, y)


def _is_dataset(data) -> bool:
    kind = type(data).__module__ + "." + type(data).__name__
    return (
        isinstance(data, keras.utils.PyDataset)
        or ("tensorflow" in kind and hasattr(data, "element_spec"))
        or ("torch" in kind and hasattr(data, "dataset"))
    )


def for_keras(
    data,
    *,
    model=None,
    where: str = "data",
    batch_size: int = 32,
    x_key: str = "x",
    y_key: str = "y",
    keep_iterators: bool = False,
):
    """`data` in a form `model.fit` / `model.evaluate` take, checked against the model's inputs.

    Args:
        data: Any form `batches` takes (None is returned as is).
        model: The model the data is for; in-memory arrays and batches are checked against
            its inputs (a `PruningError` naming the input instead of a Keras shape error).
        where: How to name the data in errors.
        batch_size: Used only to check the first rows of in-memory arrays.
        x_key, y_key: Keys of `x` and `y` in a mapping or `.npz` file.
        keep_iterators: Return generators and other iterators as they are (for `fit`,
            which may draw from an endless generator) instead of reading them.

    Returns:
        `(x, y[, sample_weight])` or `x` for arrays (a tuple: pass it as `*args`), the
        dataset itself for `tf.data`/`PyDataset`/`DataLoader`, else a `PyDataset` of the
        batches (lists of batches; generators, read once into memory).

    Raises:
        PruningError: unsupported form, empty data, or batches that do not fit the model.

    Example:
        >>> val = kerasprune.data.for_keras("val.npz", model=model, where="--val")
        >>> model.evaluate(*val) if isinstance(val, tuple) else model.evaluate(val)
    """
    if data is None or _is_dataset(data) or (keep_iterators and isinstance(data, Iterator)):
        return data
    if isinstance(data, (str, os.PathLike)) or (isinstance(data, Mapping) and x_key in data):
        data = tuple(load_arrays(data, x_key=x_key, y_key=y_key))
    in_memory = _in_memory(data, model)
    if in_memory is not None:
        x = in_memory[0]
        next(batches(x, model=model, batch_size=batch_size, where=where))  # checks shape and emptiness
        if isinstance(data, (tuple, list)) and len(data) in (2, 3) and in_memory[1] is not None:
            return tuple(data)
        return (x,)
    return _Batches(list(batches(data, model=model, batch_size=batch_size, where=where)))


def labelled(
    data, *, model=None, where: str = "data", batch_size: int = 256, x_key: str = "x", y_key: str = "y"
) -> list[tuple[Any, Any]]:
    """Every batch of `data` as `(x, y)` numpy arrays, in memory; labels required.

    Raises:
        PruningError: as `batches`, or a batch without labels.
    """
    out = list(batches(data, model=model, batch_size=batch_size, where=where, x_key=x_key, y_key=y_key))
    if any(y is None for _, y in out):
        raise PruningError(f"{where} has no labels: give (x, y), an .npz file with {x_key!r} and {y_key!r}, "
                           "or batches of (x, y)")
    return out
