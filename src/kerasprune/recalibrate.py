"""Re-estimate BatchNormalization statistics after pruning ("adaptive BN", Li et al. 2020).

Removing a channel changes what every later layer receives (a channel with a
small filter but a large BN beta fed the next layer a constant), while the
later BatchNormalizations still normalize with the moving statistics of the
unpruned model. On the small CNNs of `benchmarks/accuracy.py` this alone sends
every criterion to chance level right after pruning. `recalibrate_batchnorm`
recomputes the moving mean and variance of every trainable BatchNormalization
as the plain average over a few batches of training data (forward passes in
training mode; no weight is trained), which restores most of the accuracy
before any fine-tuning and makes the accuracy right after pruning a useful
signal for comparing criteria.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import keras
import numpy as np

from kerasprune.errors import PruningError

log = logging.getLogger(__name__)


def _batchnorms(model) -> list:
    """Trainable BatchNormalizations of `model` and of the models nested in it."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            if layer.trainable and layer not in found:
                found.append(layer)
        elif isinstance(getattr(layer, "layers", None), list):
            found += [bn for bn in _batchnorms(layer) if bn not in found]
    return found


def _batches(data: Any, batch_size: int, max_batches: int | None) -> Iterable:
    if isinstance(data, np.ndarray):
        data = [data[i : i + batch_size] for i in range(0, len(data), batch_size)]
    elif isinstance(data, tuple) and data and isinstance(data[0], np.ndarray):
        data = [data[0][i : i + batch_size] for i in range(0, len(data[0]), batch_size)]
    for n, batch in enumerate(data):
        if max_batches is not None and n >= max_batches:
            return
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def _no_grad():
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def recalibrate_batchnorm(
    model: keras.Model, data: Any, *, batch_size: int = 64, max_batches: int | None = 50
) -> int:
    """Recompute the moving statistics of `model`'s BatchNormalizations **in place**.

    The moving mean and variance become the average of the per-batch statistics
    over the given batches (cumulative average: the k-th batch gets weight 1/k).
    Other weights are not changed. Frozen BatchNormalizations (`trainable=False`)
    are left as they are.

    Args:
        model: A built model; its BN moving statistics are overwritten.
        data: Training inputs: an array `x`, a tuple `(x, y, ...)` of arrays, or an
            iterable of batches `x` / `(x, y)` (e.g. a `tf.data.Dataset`).
        batch_size: Batch size for array inputs.
        max_batches: Use at most this many batches (`None`: all).

    Returns:
        The number of batches used.

    Raises:
        PruningError: `data` gives no batch.

    Example:
        >>> small = kerasprune.remove_filters(model, selection)
        >>> kerasprune.recalibrate_batchnorm(small, x_train[:2000])
    """
    layers = _batchnorms(model)
    if not layers:
        log.info("recalibrate_batchnorm: %s has no trainable BatchNormalization", model.name)
        return 0
    momentum = [layer.momentum for layer in layers]
    n = 0
    try:
        with _no_grad():
            for n, x in enumerate(_batches(data, batch_size, max_batches), start=1):
                for layer in layers:
                    layer.momentum = 1.0 - 1.0 / n  # batch 1 replaces the statistics; then running average
                model(x, training=True)
    finally:
        for layer, m in zip(layers, momentum):
            layer.momentum = m
    if n == 0:
        raise PruningError(f"recalibrate_batchnorm: data gave no batch for model '{model.name}'")
    log.info("recalibrate_batchnorm: %d BatchNormalization layers from %d batches", len(layers), n)
    return n
