"""prune_and_finetune: reaches its FLOPs target, restores the best checkpoint, passes callbacks through."""

import keras
import numpy as np
import pytest

import kerasprune as kp
from models import two_conv_classifier

pytestmark = pytest.mark.isolated  # trains: a native crash must fail the test, not the run


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 8, 8, 1)).astype("float32")
    y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype("int64")
    return (x[:64], y[:64]), (x[64:], y[64:])


def _model(lr=0.01, compile=True):
    model = two_conv_classifier(channels=1, classes=2, softmax=True, bn_seed=3)
    if compile:
            model.compile(
            optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
    return model


class _Count(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1


def test_reaches_flops_target_and_returns_best_checkpoint():
    train, val = _data()
    model = _model()
    before = [w.numpy().copy() for w in model.weights]
    counter = _Count()
    small, hist = kp.prune_and_finetune(
        model, criterion="l1", target_flops=0.5, steps=2, train_data=train, val_data=val,
        epochs_per_step=2, monitor="val_loss", mode="min", callbacks=[counter], fit_options={"batch_size": 32},
    )
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(before, model.weights))
    assert counter.epochs == 4  # user callbacks see every fine-tuning epoch
    assert [r.step for r in hist.rows] == [0, 1, 2]
    flops0 = kp.count_flops(model)
    assert hist.rows[0].flops == flops0 and hist.rows[-1].flops == kp.count_flops(small)
    assert kp.count_flops(small) <= 0.5 * flops0 * 1.05
    assert hist.rows[1].flops > hist.rows[2].flops
    assert hist.rows[-1].params == small.count_params() < model.count_params()
    # never worse than the best checkpoint of its step (pruned-only state included)
    last = hist.rows[-1]
    assert len(last.epochs) == 3 and last.val_metric == min(last.epochs)
    assert last.epochs[last.best_epoch] == last.val_metric
    loss = small.evaluate(*val, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(last.val_metric, rel=1e-5)
    # the returned model is compiled like the original
    assert small.get_compile_config()["loss"] == model.get_compile_config()["loss"]
    text = hist.table()
    assert len(text.splitlines()) == 4 and "val_loss" in text
    assert hist.to_dict()["rows"][2]["flops"] == last.flops


def test_restores_pruned_weights_when_training_only_hurts():
    train, val = _data()
    model = _model(lr=50.0)  # absurd learning rate: every fine-tuning epoch makes things worse
    small, hist = kp.prune_and_finetune(
        model, criterion="l1", target_ratio=0.5, steps=1, train_data=train, val_data=val,
        epochs_per_step=2, monitor="val_loss", mode="min", fit_options={"batch_size": 16},
    )
    row = hist.rows[1]
    assert row.best_epoch == int(np.nanargmin(np.where(np.isnan(row.epochs), np.inf, row.epochs)))
    loss = small.evaluate(*val, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(row.val_metric, rel=1e-5)
    assert small.get_layer("c1").filters == 4 and small.get_layer("c2").filters == 4


def test_recalibrate_recomputes_the_batchnorm_statistics_of_every_pruned_model():
    train, val = _data()
    model = _model()
    small, _ = kp.prune_and_finetune(
        model, target_ratio=0.5, steps=1, train_data=train, val_data=val, epochs_per_step=0, recalibrate=train[0]
    )
    reference = kp.remove_filters(model, kp.select(model, "l1", ratio=0.5))
    as_is = [keras.ops.convert_to_numpy(w) for w in reference.non_trainable_weights]
    kp.recalibrate_batchnorm(reference, train[0])
    expected = [keras.ops.convert_to_numpy(w) for w in reference.non_trainable_weights]
    got = [keras.ops.convert_to_numpy(w) for w in small.non_trainable_weights]
    assert len(got) == len(expected) == 4  # two BatchNormalizations: moving mean and variance
    for g, e, a in zip(got, expected, as_is):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
        assert not np.allclose(g, a)  # the pruned model's own statistics were replaced


def test_errors():
    train, val = _data()
    model = _model()
    with pytest.raises(kp.PruningError, match="exactly one of target_ratio or target_flops"):
        kp.prune_and_finetune(model, train_data=train, val_data=val)
    with pytest.raises(kp.PruningError, match="target_flops must be in"):
        kp.prune_and_finetune(model, target_flops=1.5, train_data=train, val_data=val)
    with pytest.raises(kp.PruningError, match="steps must be a positive integer"):
        kp.prune_and_finetune(model, target_ratio=0.5, steps=0, train_data=train, val_data=val)
    with pytest.raises(kp.PruningError, match="monitor 'val_top5' is not in"):
        kp.prune_and_finetune(model, target_ratio=0.5, monitor="val_top5", train_data=train, val_data=val)
    with pytest.raises(kp.PruningError, match="teacher= is only used with distill="):
        kp.prune_and_finetune(model, target_ratio=0.5, teacher=_model(), train_data=train, val_data=val)
    three = two_conv_classifier(channels=1, classes=3, softmax=True)
    with pytest.raises(kp.PruningError, match=r"outputs \[\(None, 3\)\], model '.*' outputs \[\(None, 2\)\]"):
        kp.prune_and_finetune(model, target_ratio=0.5, distill=True, teacher=three, train_data=train, val_data=val)
    raw = _model(compile=False)
    with pytest.raises(kp.PruningError, match="is not compiled"):
        kp.prune_and_finetune(raw, target_ratio=0.5, train_data=train, val_data=val)
