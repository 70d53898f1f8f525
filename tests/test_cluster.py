"""Sensitivity scans on execution engines: a real local Dask cluster, the local pool, Ray if installed.

The Dask cluster is started by the test (`LocalCluster`, 2 worker processes, one
thread each) once for the module. Workers inherit `KERAS_BACKEND`.
"""

import json
import logging
import os

import joblib
import keras
import numpy as np
import pytest
from keras import layers as L

import kerasprune as kp
from kerasprune import parallel
from kerasprune.errors import PruningError
from kerasprune.sensitivity import _setup_worker, _shared
from kerasprune.testing import randomize_weights

RATIOS = [0.25, 0.5]
X = np.random.default_rng(1).normal(size=(16, 4, 4, 3)).astype("float32")


def lambda_model():
    """conv -> Lambda(tanh) -> conv: prunable only when the Lambda is declared element-wise."""
    i = keras.Input((4, 4, 3))
    x = L.Conv2D(8, 1, name="c1")(i)
    x = L.Lambda(keras.activations.tanh, name="lam")(x)
    x = L.Conv2D(4, 1, name="c2")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(i, L.Dense(1, name="head")(x))
    randomize_weights(model, 3)
    return model


class ChannelScale(keras.layers.Layer):
    """A user's per-channel scale, defined here and not registered for serialization."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(self.channels,), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


def mean_output(model):
    return float(np.mean(keras.ops.convert_to_numpy(model(X))))


def metrics(result):
    return [(r.group, r.ratio, r.removed, r.metric) for r in result.rows]


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def serial():
    model = lambda_model()
    return model, kp.sensitivity(model, mean_output, ratios=RATIOS, channelwise=["lam"], progress=False)


@pytest.mark.backend
def test_scan_on_dask_equals_serial_and_ships_the_model_once(dask_client, serial):
    model, expected = serial
    assert expected.groups == (0, 1)  # the declared Lambda made c1 prunable
    result = kp.sensitivity(model, mean_output, ratios=RATIOS, channelwise=["lam"], backend=dask_client, progress=False)
    assert metrics(result) == metrics(expected)  # identical, not merely close
    assert result.baseline == expected.baseline
    stats = dask_client.run(parallel.worker_stats)
    assert sum(s["tasks"] for s in stats.values()) == 1 + 2 * len(RATIOS)
    # every worker that ran a task rebuilt the model once, not once per task
    assert all(s["setups"] == 1 for s in stats.values() if s["tasks"]), stats


def test_joblib_dask_config_is_picked_up_with_shared_cache_and_progress(dask_client, serial, tmp_path, caplog):
    model, expected = serial
    model.compile(loss="mse")
    y = np.zeros((len(X), 1), "float32")
    cache = tmp_path / "scan.json"
    first = kp.sensitivity(model, "loss", val_data=(X, y), ratios=[0.5], channelwise=["lam"], cache=cache, progress=False)
    # a finished entry is reused, not re-evaluated: mark it, then resume on the cluster
    content = json.loads(cache.read_text())
    key = next(k for k in content["results"] if k.endswith("g1:r0.5"))
    content["results"][key] = 123.0
    cache.write_text(json.dumps(content))
    with caplog.at_level(logging.INFO, logger="kerasprune"), joblib.parallel_config(backend="dask"):
        result = kp.sensitivity(
            model, "loss", val_data=(X, y), ratios=RATIOS, channelwise=["lam"], cache=cache, progress=False
        )
    rows = {(r.group, r.ratio): r.metric for r in result.rows}
    assert rows[(1, 0.5)] == 123.0
    assert rows[(0, 0.5)] == first.rows[0].metric and result.baseline == first.baseline
    assert len(json.loads(cache.read_text())["results"]) == 1 + 2 * len(RATIOS)  # written by the driver
    text = caplog.text
    assert "2 tasks on dask" in text and "sensitivity: 2/2 done" in text  # only the missing 0.25 ratios ran


def test_custom_layer_and_the_rule_registered_in_the_driver_reach_the_workers(dask_client):
    i = keras.Input((4, 4, 3))
    x = ChannelScale(8, name="scale")(L.Conv2D(8, 1, name="c1")(i))
    x = L.GlobalAveragePooling2D()(L.Conv2D(4, 1, name="c2")(x))
    model = keras.Model(i, L.Dense(1, name="head")(x))
    randomize_weights(model, 4)
    kp.register_rule(ChannelScale, kp.ChannelParams(("scale",), config_key="channels"))  # only here
    try:
        expected = kp.sensitivity(model, mean_output, ratios=[0.5], progress=False)
        result = kp.sensitivity(model, mean_output, ratios=[0.5], backend=dask_client, progress=False)
    finally:
        kp.unregister_rule(ChannelScale)
    assert expected.groups == (0, 1) and metrics(result) == metrics(expected)


def test_declared_lambda_scans_on_local_workers_too():
    """Regression: workers analyzed without `channelwise` and failed where the serial scan worked."""
    model = lambda_model()
    graph = kp.analyze(model, channelwise=["lam"])
    one = kp.sensitivity(model, mean_output, ratios=[0.5], graph=graph, progress=False)
    two = kp.sensitivity(model, mean_output, ratios=[0.5], graph=graph, n_jobs=2, progress=False)
    assert [r.metric for r in two.rows] == pytest.approx([r.metric for r in one.rows], rel=1e-6)
    assert [r.removed for r in two.rows] == [4, 2] and two.baseline == pytest.approx(one.baseline, rel=1e-6)


def test_worker_whose_analysis_differs_is_named():
    model = lambda_model()
    graph = kp.analyze(model, channelwise=["lam"])
    shared = _shared(model, graph, list(graph.prunable_groups), mean_output, None, None)
    assert list(shared["options"]["channelwise"]) == ["lam"]  # taken from the graph
    _setup_worker(shared)  # consistent: no error
    shared["options"] = {}  # a worker that does not know the declaration
    with pytest.raises(kp.PruningError, match=r"worker's analysis .* differs .* group 0 is \('c1',\)"):
        _setup_worker(shared)


def test_engine_choice_and_errors():
    with pytest.raises(kp.PruningError, match="backend must be None, 'loky'"):
        parallel.resolve_engine("spark")
    with pytest.raises(kp.PruningError, match="n_jobs must be a non-zero integer"):
        parallel.resolve_engine(None, 0)
    assert parallel.resolve_engine(None, 1).kind == "serial"
    assert parallel.resolve_engine("threading", 2) == parallel.Engine("joblib", n_jobs=2, joblib_backend="threading")
    with joblib.parallel_config(backend="loky", n_jobs=3):
        assert parallel.resolve_engine(None, None).n_jobs == 3  # the joblib context decides


def test_n_jobs_is_ignored_with_a_cluster_and_says_so(dask_client, caplog):
    with caplog.at_level(logging.WARNING, logger="kerasprune"):
        engine = parallel.resolve_engine(dask_client, 4)
    assert engine.kind == "dask" and engine.client is dask_client
    assert "n_jobs=4 is ignored" in caplog.text


def test_scan_on_ray_equals_serial(serial):
    """Ray is optional (the `cluster` extra): without it, asking for it is a clear error."""
    model, expected = serial
    try:
        import ray
    except ImportError:
        with pytest.raises(PruningError, match=r"install the engine: pip install \"kerasprune\[cluster\]\""):
            kp.sensitivity(model, mean_output, ratios=RATIOS, channelwise=["lam"], backend="ray", progress=False)
        return
    here = os.path.dirname(__file__)  # Ray's workers import this module's metric by name
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        result = kp.sensitivity(model, mean_output, ratios=RATIOS, channelwise=["lam"], backend="ray", progress=False)
    finally:
        ray.shutdown()
    assert metrics(result) == metrics(expected)
