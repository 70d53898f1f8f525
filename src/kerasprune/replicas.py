"""Agreeing across the worker processes of a multi-worker training job.

In a job that trains one model on several processes (a TensorFlow
`MultiWorkerMirroredStrategy`, or JAX with `jax.distributed.initialize` and a
`keras.distribution` spanning the devices of several processes), each worker
reads its own shard of the data. Data-driven importance scores computed on a
shard differ between workers, so each would mask or remove different filters
and the replicas would silently diverge. `mean_across_workers` averages such
per-worker values over the workers with the framework's own collectives; every
worker receives the same result (bit for bit), so every worker makes the same
choice. With equal shards it equals the scores of all shards read by one process.

Within one process (one worker with several devices: `MirroredStrategy`, a
single-process `DataParallel`) the scoring loop already reads all of that
worker's data, and nothing needs reducing.

Every worker must take part in the reduction: call scoring functions on every
worker, as `model.fit` is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import keras
import numpy as np

log = logging.getLogger(__name__)


def worker_count(model: keras.Model) -> int:
    """Number of worker processes `model` is trained on (1 unless multi-worker)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        strategy = _tf_strategy(model)
        if strategy is None:
            return 1
        local = len(strategy.extended.worker_devices)
        return max(1, strategy.num_replicas_in_sync // max(local, 1))
    if backend == "jax":
        import jax

        return max(1, len(_jax_processes(model))) if jax.process_count() > 1 else 1
    return 1


def mean_across_workers(values: Mapping[int, np.ndarray], model: keras.Model) -> dict[int, np.ndarray]:
    """The mean of per-worker `values` (`key -> array`) over the workers training `model`.

    Returns `values` unchanged (as a dict) outside multi-worker training. Keys and
    shapes must agree between workers.
    """
    workers = worker_count(model)
    out = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    if workers <= 1 or not out:
        return out
    keys = sorted(out)
    flat = np.concatenate([out[k].ravel() for k in keys])
    if keras.backend.backend() == "tensorflow":
        total = _tf_sum(_tf_strategy(model), flat)
        mean = total / _tf_strategy(model).num_replicas_in_sync  # each local replica added its worker's values
    else:
        mean = _jax_gather(flat).sum(axis=0) / workers  # fixed order: the same bits on every worker
    log.info("averaged %d values over %d workers", flat.size, workers)
    result, start = {}, 0
    for k in keys:
        n = out[k].size
        result[k] = mean[start : start + n].reshape(out[k].shape)
        start += n
    return result


def _tf_strategy(model):
    import tensorflow as tf

    strategy = getattr(model, "distribute_strategy", None)
    if strategy is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    return strategy


def _tf_sum(strategy, flat: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    value = tf.constant(flat, dtype=tf.float64)

    def reduce():  # captures `value`: passed as an argument, it is not placed on the replica's device
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, value)

    out = strategy.run(tf.function(reduce))
    return strategy.experimental_local_results(out)[0].numpy()


def _jax_processes(model) -> set[int]:
    """Processes whose devices hold `model`'s variables."""
    procs: set[int] = set()
    for v in model.weights[:1] or []:
        sharding = getattr(getattr(v, "value", None), "sharding", None)
        if sharding is not None:
            procs |= {d.process_index for d in sharding.device_set}
    return procs


def _jax_gather(flat: np.ndarray) -> np.ndarray:
    from jax.experimental import multihost_utils

    bits = np.ascontiguousarray(flat).view(np.uint32)  # exact: float64 travels as two uint32 words
    gathered = np.asarray(multihost_utils.process_allgather(bits))
    return np.ascontiguousarray(gathered).view(np.float64).reshape(-1, flat.size)
