"""Data-driven criteria and fine-tuning under Keras's own distribution, on 2 logical CPU devices.

Each backend runs in a fresh subprocess: TensorFlow's logical devices and JAX's
host device count must be configured before the framework initializes.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

COMMON = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    from keras import layers as L
    import kerasprune as kp
    from kerasprune.testing import randomize_batchnorm, randomize_weights

    def build():
        i = keras.Input((8, 8, 3))
        x = L.Conv2D(8, 3, padding="same", name="c1")(i)
        x = L.BatchNormalization(name="bn1")(x)
        x = L.ReLU()(x)
        x = L.Conv2D(6, 3, padding="same", name="c2")(x)
        x = L.BatchNormalization(name="bn2")(x)
        x = L.ReLU()(x)
        x = L.GlobalAveragePooling2D()(x)
        m = keras.Model(i, L.Dense(3, activation="softmax", name="head")(x))
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return m

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, 32)
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 32, 16)]
    loss = keras.losses.SparseCategoricalCrossentropy()

    def scores(model):
        out = {}
        for crit in ("taylor", "mean_activation"):
            s = kp.score(model, crit, data=batches, loss=loss)
            out[crit] = {str(k): v.tolist() for k, v in s.items()}
        return out

    single = build()
    randomize_weights(single, 0)
    randomize_batchnorm(single, 1)
    result = {"single": scores(single)}
    """
)

TF_SCRIPT = (
    """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""
    + COMMON
    + """
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    dist = build()
dist.set_weights(single.get_weights())
result["replicas"] = strategy.num_replicas_in_sync
result["dist"] = scores(dist)
small, hist = kp.prune_and_finetune(
    dist, criterion="taylor", target_ratio=0.5, steps=1, train_data=(x, y), val_data=(x[:16], y[:16]),
    epochs_per_step=1, monitor="val_loss", mode="min", data=batches, loss=loss, fit_options={"batch_size": 16},
)
result["pruned_mirrored"] = all(isinstance(v.value, tf.distribute.DistributedValues) for v in small.weights)
result["pruned_filters"] = small.get_layer("c1").filters
result["val_loss"] = [hist.rows[1].val_metric, small.evaluate(x[:16], y[:16], verbose=0, return_dict=True)["loss"]]
print("RESULT" + json.dumps(result))
"""
)

JAX_SCRIPT = (
    COMMON
    + """
import jax
devices = jax.devices()
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
dist = build()
dist.set_weights(single.get_weights())
result["replicas"] = len(devices)
result["dist"] = scores(dist)
small, hist = kp.prune_and_finetune(
    dist, criterion="taylor", target_ratio=0.5, steps=1, train_data=(x, y), val_data=(x[:16], y[:16]),
    epochs_per_step=1, monitor="val_loss", mode="min", data=batches, loss=loss, fit_options={"batch_size": 16},
)
result["pruned_mirrored"] = all(len(v.value.sharding.device_set) == 2 for v in small.weights)
result["pruned_filters"] = small.get_layer("c1").filters
result["val_loss"] = [hist.rows[1].val_metric, small.evaluate(x[:16], y[:16], verbose=0, return_dict=True)["loss"]]
print("RESULT" + json.dumps(result))
"""
)


def _run(script, backend, extra_env):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", **extra_env)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT") :])


@pytest.mark.parametrize(
    "backend, script, env",
    [
        ("tensorflow", TF_SCRIPT, {}),
        ("jax", JAX_SCRIPT, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}),
    ],
)
def test_distributed_scores_equal_single_device(backend, script, env):
    result = _run(script, backend, env)
    assert result["replicas"] == 2
    for crit, single in result["single"].items():
        dist = result["dist"][crit]
        assert single.keys() == dist.keys() and single, crit
        for gid in single:
            np.testing.assert_allclose(dist[gid], single[gid], rtol=1e-4, atol=1e-6, err_msg=f"{crit} group {gid}")
    # fine-tuning ran under the same distribution: the pruned model's variables are distributed too
    assert result["pruned_mirrored"] is True
    assert result["pruned_filters"] == 4
    # restored best checkpoint (batching across replicas changes float summation order only)
    assert result["val_loss"][0] == pytest.approx(result["val_loss"][1], rel=1e-3)
