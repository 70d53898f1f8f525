"""Multi-worker training: two local worker processes, started by the test, on free ports.

- TensorFlow: `tf.distribute.MultiWorkerMirroredStrategy` with a two-worker `TF_CONFIG`.
  Keras 3's own `fit` fails under it (keras-team/keras#20585: `_maybe_symbolic_build`
  reduces the distributed batch structure), so the workers train with a custom
  distributed loop that drives `SoftPruning` through `keras.callbacks.CallbackList`.
- JAX: `jax.distributed.initialize` (gloo CPU collectives), 2 devices per process,
  `keras.distribution.DataParallel` over the 4 devices, `model.fit` and
  `prune_and_finetune`.

Each worker scores with a data-driven criterion on its own shard. Without the
reduction across workers the scores (and so the masks) would differ; with it
they are identical on both workers and equal the mean of the per-shard scores.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from kerasprune.groupwise import lowest

MODEL = textwrap.dedent(
    """
    import numpy as np
    import keras
    from keras import layers as L
    from kerasprune.testing import randomize_batchnorm, randomize_weights

    def build():
        zeros = "zeros"  # every weight is then set by the seeded randomize_*: equal in every process
        i = keras.Input((6, 6, 3))
        x = L.Conv2D(8, 3, padding="same", kernel_initializer=zeros, name="c1")(i)
        x = L.BatchNormalization(name="bn1")(x)
        x = L.ReLU()(x)
        x = L.Conv2D(8, 3, padding="same", kernel_initializer=zeros, name="c2")(x)
        x = L.ReLU()(x)
        x = L.GlobalAveragePooling2D()(x)
        m = keras.Model(i, L.Dense(3, activation="softmax", kernel_initializer=zeros, name="head")(x))
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        return m

    def randomize(m):
        randomize_weights(m, 0)
        randomize_batchnorm(m, 1)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6, 6, 3)).astype("float32")
    y = rng.integers(0, 3, 32)

    def shard(k):  # worker k's 16 samples, as 2 batches of 8
        xs, ys = x[k::2], y[k::2]
        return xs, ys, [(xs[i : i + 8], ys[i : i + 8]) for i in range(0, 16, 8)]
    """
)

WORKER = (
    textwrap.dedent(
        """
        import hashlib, json, os, sys
        idx, ports = int(sys.argv[1]), sys.argv[2].split(",")
        backend = os.environ["KERAS_BACKEND"]
        if backend == "tensorflow":
            os.environ["TF_CONFIG"] = json.dumps(
                {"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": idx}}
            )
            import tensorflow as tf
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        else:
            import jax
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(f"localhost:{ports[0]}", num_processes=2, process_id=idx)
        """
    )
    + MODEL
    + textwrap.dedent(
        """
        import kerasprune as kp
        from kerasprune.replicas import worker_count

        xs, ys, local = shard(idx)
        loss = keras.losses.SparseCategoricalCrossentropy()
        if backend == "tensorflow":
            with strategy.scope():
                model = build()
        else:
            dist = keras.distribution.DataParallel(devices=jax.devices())
            dist.auto_shard_dataset = False  # each worker feeds its own shard
            keras.distribution.set_distribution(dist)
            model = build()
        randomize(model)
        digest = lambda ws: hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in ws)).hexdigest()
        out = {"workers": worker_count(model), "initial": digest(model.weights)}
        out["reduced"] = {str(k): v.tolist() for k, v in kp.score(model, "taylor", data=local, loss=loss).items()}

        pruning = kp.SoftPruning("taylor", ratio=0.5, frequency="batch", data=local, loss=loss)
        if backend == "tensorflow":
            callbacks = keras.callbacks.CallbackList([pruning], model=model)
            ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(16))

            @tf.function
            def train_step(xb, yb):
                def step(xb, yb):
                    with tf.GradientTape() as tape:
                        per_example = keras.losses.sparse_categorical_crossentropy(yb, model(xb, training=True))
                        value = tf.nn.compute_average_loss(per_example, global_batch_size=16)
                    grads = tape.gradient(value, model.trainable_variables)
                    model.optimizer.apply_gradients(zip(grads, model.trainable_variables))

                strategy.run(step, args=(xb, yb))

            callbacks.on_train_begin()
            for epoch in range(2):
                callbacks.on_epoch_begin(epoch)
                for b, (xb, yb) in enumerate(ds):
                    train_step(xb, yb)
                    callbacks.on_train_batch_end(b)
                callbacks.on_epoch_end(epoch)
            callbacks.on_train_end()
            copies = [[np.asarray(c) for c in v.value.values] for v in model.weights]
        else:
            model.fit(xs, ys, epochs=2, batch_size=8, callbacks=[pruning], verbose=0)
            copies = [[np.asarray(s.data) for s in v.value.addressable_shards] for v in model.weights]
            small, _ = kp.prune_and_finetune(
                model, criterion="taylor", target_ratio=0.25, steps=1, train_data=(xs, ys), val_data=(xs, ys),
                epochs_per_step=1, monitor="val_loss", mode="min", data=local, loss=loss,
                fit_options={"batch_size": 8},
            )
            out["pruned"] = [small.get_layer("c1").filters, small.get_layer("c2").filters, digest(small.get_weights())]
        out["local_replicas"] = len(copies[0])
        out["replicas_equal"] = all(all(np.array_equal(c[0], other) for other in c) for c in copies)
        out["selection"] = {k: [int(i) for i in v] for k, v in pruning.selection.items()}
        kernel = model.get_layer("c1").get_weights()[0]
        out["c1_zero"] = [int(j) for j in np.flatnonzero(np.all(kernel == 0, axis=(0, 1, 2)))]
        out["trainable"] = digest(model.trainable_weights)
        print("RESULT" + json.dumps(out), flush=True)
        """
    )
)


@pytest.fixture(scope="module")
def own_shard_scores():
    """Each shard's taylor scores, computed here in one process on an undistributed copy."""
    import keras

    import kerasprune as kp

    env = {}
    exec(MODEL, env)
    model = env["build"]()
    env["randomize"](model)
    loss = keras.losses.SparseCategoricalCrossentropy()
    return [kp.score(model, "taylor", data=env["shard"](k)[2], loss=loss) for k in range(2)]


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ",".join(map(str, ports))


def _run_workers(backend, extra_env, tmp_path, timeout=420):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", **extra_env)
    env.pop("TF_CONFIG", None)
    ports = _free_ports(2)
    logs = [(open(tmp_path / f"w{i}.out", "w+"), open(tmp_path / f"w{i}.err", "w+")) for i in range(2)]
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(i), ports], env=env, stdout=out, stderr=err, text=True)
        for i, (out, err) in enumerate(logs)
    ]
    deadline = time.monotonic() + timeout
    try:
        # a worker that fails leaves its peer waiting in a collective: stop both then
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    results = []
    for i, (p, (out, err)) in enumerate(zip(procs, logs)):
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        out.close()
        err.close()
        assert p.returncode == 0, f"worker {i} failed (rc={p.returncode}):\n{stderr[-3000:]}"
        line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT")][-1]
        results.append(json.loads(line[len("RESULT") :]))
    return results


def _check_agreement(a, b, own):
    assert a["workers"] == b["workers"] == 2 and a["initial"] == b["initial"]
    # each shard ranks the channels differently: without the reduction the masks would differ
    assert {g: lowest(s, 0.5).tolist() for g, s in own[0].items()} != {
        g: lowest(s, 0.5).tolist() for g, s in own[1].items()
    }
    assert a["reduced"] == b["reduced"]  # bit for bit on both workers
    for gid, scores in a["reduced"].items():  # ... and the mean of the shards' scores
        np.testing.assert_allclose(scores, (own[0][int(gid)] + own[1][int(gid)]) / 2, rtol=1e-4, err_msg=gid)
    # SoftPruning chose and applied the same masks everywhere; the replicas stayed in sync
    assert a["selection"] == b["selection"] and sum(map(len, a["selection"].values())) == 8
    assert a["c1_zero"] == b["c1_zero"] == a["selection"]["c1"]
    assert a["replicas_equal"] and b["replicas_equal"]
    assert a["trainable"] == b["trainable"]


def test_multi_worker_mirrored_strategy_agrees_on_scores_and_masks(tmp_path, own_shard_scores):
    a, b = _run_workers("tensorflow", {}, tmp_path)
    _check_agreement(a, b, own_shard_scores)
    assert a["local_replicas"] == 1  # one CPU replica per worker: 2 replicas in all


@pytest.mark.slow
def test_jax_multi_process_data_parallel_agrees_and_finetunes(tmp_path, own_shard_scores):
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    a, b = _run_workers("jax", env, tmp_path)
    _check_agreement(a, b, own_shard_scores)
    assert a["local_replicas"] == 2  # 2 devices per worker: 4 replicas in all
    assert a["pruned"] == b["pruned"] and a["pruned"][:2] == [6, 6]  # prune_and_finetune: same model everywhere
