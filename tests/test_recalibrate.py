"""recalibrate_batchnorm: moving statistics become the average batch statistics; nothing else changes."""

import keras
import numpy as np
import pytest

import kerasprune as kp
from models import residual, two_conv_classifier


def _np(v):
    return keras.ops.convert_to_numpy(v).astype(np.float64)


@pytest.mark.backend
def test_moving_statistics_are_the_average_batch_statistics():
    model = residual()
    x = np.random.default_rng(0).normal(size=(48, 8, 8, 3)).astype("float32")
    trainable = [_np(w) for w in model.trainable_weights]
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momentum = [bn.momentum for bn in bns]
    # in training mode every BN normalizes with batch statistics: its inputs do not depend on moving statistics
    probe = keras.Model(model.input, [bn.input for bn in bns])
    batches = [x[i : i + 16] for i in range(0, 48, 16)]
    inputs = [[_np(t) for t in probe(b, training=True)] for b in batches]
    assert kp.recalibrate_batchnorm(model, x, batch_size=16) == 3
    for k, bn in enumerate(bns):
        mean = np.mean([inp[k].mean(axis=(0, 1, 2)) for inp in inputs], axis=0)
        var = np.mean([inp[k].var(axis=(0, 1, 2)) for inp in inputs], axis=0)
        np.testing.assert_allclose(_np(bn.moving_mean), mean, rtol=1e-4, atol=1e-5, err_msg=bn.name)
        np.testing.assert_allclose(_np(bn.moving_variance), var, rtol=1e-4, atol=1e-5, err_msg=bn.name)
    assert all(np.array_equal(a, _np(b)) for a, b in zip(trainable, model.trainable_weights))
    assert [bn.momentum for bn in bns] == momentum


def test_frozen_batchnorm_left_alone_and_batches_limited():
    model = two_conv_classifier(channels=3, classes=3, bn_seed=1)
    model.get_layer("bn1").trainable = False
    frozen = [_np(w) for w in model.get_layer("bn1").non_trainable_weights]
    before = _np(model.get_layer("bn2").moving_mean)
    x = np.random.default_rng(1).normal(size=(40, 8, 8, 3)).astype("float32")
    assert kp.recalibrate_batchnorm(model, [(x[i : i + 8], None) for i in range(0, 40, 8)], max_batches=2) == 2
    assert all(np.array_equal(a, _np(b)) for a, b in zip(frozen, model.get_layer("bn1").non_trainable_weights))
    assert not np.allclose(before, _np(model.get_layer("bn2").moving_mean))
    with pytest.raises(kp.PruningError, match="no batch"):
        kp.recalibrate_batchnorm(model, [])
