"""SoftPruning: masked filters stay exactly zero inside model.fit, finalize() == masked model."""

import keras
import numpy as np
import pytest

import kerasprune as kp
from kerasprune.soft import PolynomialSchedule
from kerasprune.testing import max_output_difference
from models import two_conv_classifier

pytestmark = pytest.mark.isolated  # trains: a native crash must fail the test, not the run


def _model():
    model = two_conv_classifier(channels=3, classes=3, softmax=False, bn_seed=1)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    return model


def _data(n=64):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8, 8, 3)).astype("float32"), rng.integers(0, 3, n)


def _masked_zero(model, selection):
    """Kernel slices and biases of the selected filters, and the consumers' input rows."""
    worst = 0.0
    selection = {k: list(v) for k, v in selection.items()}
    for name, idx in selection.items():
        layer = model.get_layer(name)
        kernel, bias = (keras.ops.convert_to_numpy(w) for w in layer.weights[:2])
        worst = max(worst, np.abs(kernel[..., idx]).max(), np.abs(bias[idx]).max())
    nxt = {"c1": "c2", "c2": "head"}
    for name, idx in selection.items():
        kernel = keras.ops.convert_to_numpy(model.get_layer(nxt[name]).weights[0])
        worst = max(worst, np.abs(kernel[..., idx, :]).max())
    return worst


class _Checker(keras.callbacks.Callback):
    def __init__(self, pruning):
        super().__init__()
        self.pruning, self.seen, self.worst = pruning, 0, 0.0

    def on_train_batch_end(self, batch, logs=None):
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()
        self.worst = max(self.worst, _masked_zero(self.model, self.pruning.selection))
        self.seen += 1


@pytest.mark.backend
@pytest.mark.parametrize("reselect", [True, False])
def test_masked_filters_stay_exactly_zero_and_finalize_equals_masked(reselect):
    model = _model()
    x, y = _data()
    pruning = kp.SoftPruning("l1", ratio=0.5, frequency="batch", reselect=reselect)
    checker = _Checker(pruning)
    model.fit(x, y, epochs=2, batch_size=16, callbacks=[pruning, checker], verbose=0)
    assert checker.seen == 8
    assert checker.worst == 0.0  # exactly zero after every training batch
    assert {k: len(v) for k, v in pruning.selection.items()} == {"c1": 4, "c2": 4}
    small = pruning.finalize()
    assert small.get_layer("c1").filters == 4 and small.get_layer("c2").filters == 4
    assert max_output_difference(model, small, x[:8]) < 1e-4
    # the same selection through the core API gives the same model
    ref = kp.remove_filters(model, pruning.selection)
    assert max_output_difference(ref, small, x[:8]) == 0.0


@pytest.mark.backend
def test_schedule_grows_mask_and_epoch_frequency_masks_before_validation():
    model = _model()
    x, y = _data()
    sched = PolynomialSchedule(initial=0.0, final=0.75, begin=0, end=2)
    pruning = kp.SoftPruning("l1", schedule=sched, frequency="epoch", reselect=False)
    sizes = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            sizes.append(sum(len(v) for v in (pruning.selection or {}).values()))
            assert _masked_zero(self.model, pruning.selection or {}) == 0.0

    history = model.fit(
        x, y, epochs=3, batch_size=32, validation_data=(x[:16], y[:16]), callbacks=[pruning, Record()], verbose=0
    )
    # ratios 0, 0.375, 0.75 of 8 channels in each of the two groups: 0, 3, 6 per group
    assert sizes == [0, 6, 12]
    # validation of the last epoch saw the masked model: equal to the finalized one
    small = pruning.finalize()
    small.compile(loss="sparse_categorical_crossentropy")
    assert small.evaluate(x[:16], y[:16], verbose=0) == pytest.approx(history.history["val_loss"][-1], rel=1e-4)


def test_polynomial_schedule_formula():
    s = PolynomialSchedule(initial=0.1, final=0.5, begin=2, end=6, power=3)
    assert s(0) == pytest.approx(0.1) and s(2) == pytest.approx(0.1)
    assert s(4) == pytest.approx(0.5 - 0.4 * 0.5**3)
    assert s(6) == pytest.approx(0.5) and s(10) == pytest.approx(0.5)


def test_soft_pruning_errors():
    with pytest.raises(kp.PruningError, match="exactly one of ratio or schedule"):
        kp.SoftPruning("l1")
    with pytest.raises(kp.PruningError, match="frequency must be"):
        kp.SoftPruning("l1", ratio=0.5, frequency="step")
    with pytest.raises(kp.PruningError, match="ratio must be in"):
        kp.SoftPruning("l1", ratio=1.0)
    with pytest.raises(kp.PruningError, match="end > begin"):
        PolynomialSchedule(0.0, 0.5, begin=3, end=3)
    with pytest.raises(kp.PruningError, match="needs a model trained"):
        kp.SoftPruning("l1", ratio=0.5).finalize()
