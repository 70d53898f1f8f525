"""Training pruned models must never crash the interpreter (issue 11).

oneDNN's weight gradient of a 1x1 convolution with stride > 1 and fewer than 16
input channels corrupts the heap on x86 (TensorFlow with oneDNN on, PyTorch with
mkldnn; see kerasprune/stack.py). The subprocess tests prune BatchNorm models to
odd widths and train them on a ragged last batch through SoftPruning,
prune_and_finetune and `safe_training` (tests/train_native.py): a native crash
fails the test instead of killing the run. The in-process tests check what the
guard flags, that rerouted layers compute the same values and gradients, and
that it leaves the model as it was.
"""

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import kerasprune as kp
from kerasprune import stack

HERE = Path(__file__).resolve().parent
L = keras.layers


KINDS = ["dense", "depthwise", "resnet"]  # the one at risk last, so that its crash cannot hide the others


@pytest.fixture(scope="module")
def trained():
    """One child process trains every kind (one interpreter start instead of three)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, str(HERE / "train_native.py"), *KINDS], env=env, capture_output=True, text=True, timeout=900
    )


def _report(p, kind: str) -> dict:
    for line in p.stdout.splitlines():
        if line.startswith("TRAINED ") and json.loads(line[len("TRAINED ") :])["kind"] == kind:
            return json.loads(line[len("TRAINED ") :])
    started = [ln.split()[1] for ln in p.stdout.splitlines() if ln.startswith("START ")]
    tail = "\n".join(p.stderr.strip().splitlines()[-5:])
    where = f"while training the pruned {started[-1]} model" if started else "before training"
    pytest.fail(f"the child process died {where} (exit code {p.returncode}):\n{tail}")


@pytest.mark.backend
@pytest.mark.parametrize("kind", KINDS)
def test_pruned_batchnorm_model_trains_on_a_ragged_batch_in_a_subprocess(trained, kind):
    report = _report(trained, kind)
    assert report["backend"] == keras.backend.backend()
    assert report["finite"] and len(report["losses"]) == 4
    # the pruned widths really are odd (and the residual model's projection really is at risk)
    assert sum(w % 2 for name, w in report["widths"].items() if name != "head") >= 2
    assert report["soft_params"] < report["params"] and report["tuned_params"] < report["params"]
    if kind == "resnet":
        assert report["widths"]["stem"] == 11 and report["widths"]["c_proj"] == 16
        assert report["at_risk"] == ["c_proj"]
        assert report["rerouted"] == (["c_proj"] if report["guarded"] else [])
    else:
        assert report["at_risk"] == [] and report["rerouted"] == []
    if kind == KINDS[-1]:
        assert trained.returncode == 0


# -- what the guard flags ------------------------------------------------------------------
def _probe(cls=L.Conv2D, cin=11, size=(16, 16), **kwargs):
    kwargs = {"kernel_size": 1, "strides": 2, **kwargs}
    if cls is not L.DepthwiseConv2D:
        kwargs.setdefault("filters", 8)
    shape = (cin, *size) if kwargs.get("data_format") == "channels_first" else (*size, cin)
    inp = keras.Input(shape)
    return keras.Model(inp, cls(name="probe", **kwargs)(inp))


@pytest.mark.parametrize(
    "cls, cin, size, kwargs, flagged",
    [
        (L.Conv2D, 11, (16, 16), {}, True),
        (L.Conv2D, 15, (16, 16), {"padding": "same"}, True),
        (L.Conv2D, 3, (16, 16), {"strides": (1, 2)}, True),
        (L.Conv1D, 11, (32,), {}, True),
        (L.Conv3D, 11, (8, 8, 8), {}, True),
        (L.Conv2D, 22, (16, 16), {"groups": 2}, True),  # 11 input channels per group
        (L.Conv2D, 16, (16, 16), {}, False),
        (L.Conv2D, 11, (16, 16), {"kernel_size": 3}, False),
        (L.Conv2D, 11, (16, 16), {"strides": 1}, False),
        (L.Conv2D, 11, (16, 16), {"data_format": "channels_first"}, True),  # crashes too (TF runs it as NHWC)
        (L.Conv2D, 11, (16, 16), {"dtype": "mixed_bfloat16"}, False),
        (L.DepthwiseConv2D, 11, (16, 16), {}, False),
        (L.SeparableConv2D, 11, (16, 16), {}, False),
    ],
)
def test_at_risk_layers(cls, cin, size, kwargs, flagged):
    model = _probe(cls, cin, size, **kwargs)
    assert [layer.name for layer in stack.at_risk_layers(model)] == (["probe"] if flagged else [])


def test_at_risk_layers_finds_nested_models_and_skips_frozen_layers():
    inner = _probe()
    inp = keras.Input((16, 16, 11))
    outer = keras.Model(inp, L.GlobalAveragePooling2D()(inner(inp)))
    assert [layer.name for layer in stack.at_risk_layers(outer)] == ["probe"]
    inner.get_layer("probe").trainable = False
    assert stack.at_risk_layers(outer) == []


def test_onednn_training_bug_matches_the_backend():
    affected = stack.onednn_training_bug()
    if keras.backend.backend() == "jax":
        assert affected is False
    if keras.backend.backend() == "tensorflow" and os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") == "0":
        assert affected is False


# -- rerouted layers compute the same ----------------------------------------------------
@pytest.fixture
def affected(monkeypatch):
    """Pretend this build has the bug, so the guard acts on every backend."""
    monkeypatch.setattr(stack, "onednn_training_bug", lambda: True)
    stack._WARNED.clear()


def _grads(model, x):
    """Output and d(sum(output**2))/d(kernel) on the active backend."""
    kernel = model.get_layer("probe").kernel
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            y = model(x, training=True)
            loss = tf.reduce_sum(y * y)
        return y.numpy(), tape.gradient(loss, kernel.value).numpy()
    if backend == "jax":
        import jax

        rest = [v.value for v in model.trainable_variables[1:]]
        fixed = [v.value for v in model.non_trainable_variables]

        def f(k):
            y, _ = model.stateless_call([k, *rest], fixed, x)
            return (y * y).sum(), y

        (_, y), g = jax.value_and_grad(f, has_aux=True)(kernel.value)
        return np.asarray(y), np.asarray(g)
    y = model(x, training=True)
    (y * y).sum().backward()
    return y.detach().cpu().numpy(), kernel.value.grad.detach().cpu().numpy()


def _reference(layer, x):
    """The same output and gradient in float64 numpy (a 1x1 kernel reads one strided pixel per output)."""
    kernel = keras.ops.convert_to_numpy(layer.kernel).astype("float64")
    k = kernel.reshape(kernel.shape[-2:])  # (cin per group, filters)
    groups = getattr(layer, "groups", 1)
    xs = x[(slice(None), *(slice(None, None, s) for s in layer.strides), slice(None))].astype("float64")
    cin, cout = k.shape[0], k.shape[1] // groups
    z = np.concatenate([xs[..., g * cin:(g + 1) * cin] @ k[:, g * cout:(g + 1) * cout] for g in range(groups)], -1)
    if layer.use_bias:
        z = z + keras.ops.convert_to_numpy(layer.bias)
    relu = layer.get_config()["activation"] == "relu"
    y = np.maximum(z, 0) if relu else z
    dz = 2 * y * (z > 0) if relu else 2 * y
    axes = tuple(range(xs.ndim - 1))
    g = np.concatenate([np.tensordot(xs[..., i * cin:(i + 1) * cin], dz[..., i * cout:(i + 1) * cout], (axes, axes))
                        for i in range(groups)], -1)  # fmt: skip
    return y, g.reshape(kernel.shape)


@pytest.mark.backend
@pytest.mark.parametrize(
    "cls, size, kwargs",
    [
        (L.Conv2D, (15, 16), {"padding": "same", "use_bias": True, "activation": "relu"}),
        (L.Conv2D, (16, 16), {"strides": (1, 2)}),
        (L.Conv1D, (33,), {"padding": "causal"}),
        (L.Conv3D, (7, 8, 8), {"strides": (2, 1, 2)}),
        (L.Conv2D, (16, 16), {"groups": 2, "filters": 6}),
        (L.Conv2D, (15, 16), {"data_format": "channels_first", "use_bias": True}),
    ],
)
def test_rerouted_layer_gives_the_same_outputs_and_gradients(affected, cls, size, kwargs):
    cin = 10 if kwargs.get("groups") else 11
    model = _probe(cls, cin, size, **kwargs)
    first = kwargs.get("data_format") == "channels_first"
    x = np.random.default_rng(0).normal(size=(3, *size, cin)).astype("float32")
    y0, g0 = _reference(model.get_layer("probe"), x)  # not the layer unguarded: that may crash this process
    if first:  # the same numbers, channels first
        x, y0 = np.moveaxis(x, -1, 1), np.moveaxis(y0, -1, 1)
    with stack.safe_training(model) as rerouted:
        assert rerouted == ["probe"]
        y1, g1 = _grads(model, x)
    assert y1.shape == y0.shape
    np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g1, g0, rtol=1e-4, atol=1e-4)


@pytest.mark.backend
def test_safe_training_leaves_the_model_as_it_was(affected, caplog):
    model = _probe(use_bias=True)
    model.compile("adam", "mse")
    layer = model.get_layer("probe")
    config, strides = layer.get_config(), layer.strides
    x = np.random.default_rng(0).normal(size=(19, 16, 16, 11)).astype("float32")
    y = np.zeros((19, 8, 8, 8), "float32")
    with caplog.at_level(logging.WARNING, logger="kerasprune.stack"):
        with stack.safe_training(model, where="test") as rerouted:
            assert "convolution_op" in vars(layer)
            assert layer.get_config() == config  # a checkpoint saved meanwhile is the real model
            history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
        with stack.safe_training(model, where="test"):
            pass
    assert rerouted == ["probe"] and all(math.isfinite(v) for v in history.history["loss"])
    assert "convolution_op" not in vars(layer) and layer.strides == strides and layer.get_config() == config
    warnings = [r for r in caplog.records if r.name == "kerasprune.stack"]
    assert len(warnings) == 1  # once per model
    message = warnings[0].getMessage()
    assert "'probe' (11 input channels)" in message and "safe_training" in message


def test_guard_does_nothing_where_nothing_is_at_risk(monkeypatch):
    monkeypatch.setattr(stack, "onednn_training_bug", lambda: False)
    model = _probe()
    with stack.safe_training(model) as rerouted:
        assert rerouted == [] and "convolution_op" not in vars(model.get_layer("probe"))
    assert stack.warn_if_at_risk(model, where="test") == []


# -- progress logging ----------------------------------------------------------------------
def _classifier():
    from models import two_conv_classifier

    model = two_conv_classifier(channels=1, classes=2, softmax=True, bn_seed=3)
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8, 8, 1)).astype("float32")
    return model, x, (x[:, :4].mean(axis=(1, 2, 3)) > 0).astype("int64")


def _info(caplog, logger):
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == logging.INFO]


def test_prune_and_finetune_logs_one_line_per_epoch_and_step(caplog):
    model, x, y = _classifier()
    kwargs = dict(criterion="l1", target_ratio=0.5, steps=2, train_data=(x, y), val_data=(x[:8], y[:8]),
                  epochs_per_step=2, fit_options={"batch_size": 16})  # fmt: skip
    with caplog.at_level(logging.INFO, logger="kerasprune.finetune"):
        kp.prune_and_finetune(model, **kwargs)
    lines = _info(caplog, "kerasprune.finetune")
    epochs = [ln for ln in lines if ", epoch " in ln]
    assert len(epochs) == 4 and epochs[0].startswith("prune_and_finetune: step 1/2, epoch 1/2: loss=")
    assert "val_accuracy=" in epochs[-1] and epochs[-1].startswith("prune_and_finetune: step 2/2, epoch 2/2")
    assert sum("done" in ln for ln in lines) == 2 and lines[0].startswith("prune_and_finetune: start")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kerasprune.finetune"):
        kp.prune_and_finetune(model, **kwargs, verbose=0)
    assert _info(caplog, "kerasprune.finetune") == []
    with pytest.raises(kp.PruningError, match="verbose must be"):
        kp.prune_and_finetune(model, **kwargs, verbose="loud")


def test_soft_pruning_logs_one_line_per_epoch(caplog):
    model, x, y = _classifier()
    with caplog.at_level(logging.INFO, logger="kerasprune.soft"):
        model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[kp.SoftPruning("l1", ratio=0.5)])
    lines = _info(caplog, "kerasprune.soft")
    assert len(lines) == 3
    assert lines[0].startswith("SoftPruning: epoch 1: ratio 0.500, 8 of 16 channels masked, loss=")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kerasprune.soft"):
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[kp.SoftPruning("l1", ratio=0.5, verbose=0)])
    assert _info(caplog, "kerasprune.soft") == []
    with pytest.raises(kp.PruningError, match="verbose must be"):
        kp.SoftPruning("l1", ratio=0.5, verbose=-1)


def test_conv1d_is_rerouted_through_the_base_call_and_restored(affected):
    model = _probe(L.Conv1D, 11, (32,), padding="causal", use_bias=True)
    layer = model.get_layer("probe")
    with stack.safe_training(model):
        assert {"call", "convolution_op"} <= set(vars(layer))
    assert not {"call", "convolution_op"} & set(vars(layer))


def test_subclassed_convolutions_are_flagged_but_left_alone(affected, caplog):
    class MyConv(L.Conv2D):
        pass

    inp = keras.Input((16, 16, 11))
    model = keras.Model(inp, MyConv(8, 1, strides=2, name="mine")(inp))
    with caplog.at_level(logging.WARNING, logger="kerasprune.stack"):
        with stack.safe_training(model) as rerouted:
            assert rerouted == [] and "convolution_op" not in vars(model.get_layer("mine"))
    assert [layer.name for layer in stack.at_risk_layers(model)] == ["mine"]
    assert any("cannot reroute" in r.getMessage() for r in caplog.records)
