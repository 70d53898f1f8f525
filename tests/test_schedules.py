"""PruningSchedule: linear/geometric/explicit fractions, and prune_and_finetune following them step by step."""

import keras
import numpy as np
import pytest

import kerasprune as kp
from kerasprune.schedules import resolve_schedule
from models import two_conv_classifier


def test_linear_geometric_and_explicit_schedules():
    assert kp.PruningSchedule.linear(0.25, 3).keep == pytest.approx((0.75, 0.5, 0.25))
    geo = kp.PruningSchedule.geometric(0.125, 3)
    assert geo.keep == pytest.approx((0.5, 0.25, 0.125)) and geo.steps == 3 and geo.final == 0.125
    assert [geo.step_ratio(k) for k in (1, 2, 3)] == pytest.approx([0.5, 0.5, 0.5])
    assert kp.PruningSchedule((0.8, 0.5)).step_ratio(2) == pytest.approx(1 - 0.5 / 0.8)
    assert resolve_schedule("linear", 0.4, None) == kp.PruningSchedule.linear(0.4, 3)  # the old default
    assert resolve_schedule([0.7, 0.4], 0.4, None).keep == (0.7, 0.4)


@pytest.mark.parametrize(
    "keep, match", [((), "at least one"), ((0.5, 0.6), "decrease"), ((1.2, 0.5), r"\(0, 1\]"), ("ab", "numbers")]
)
def test_bad_schedules(keep, match):
    with pytest.raises(kp.PruningError, match=match):
        kp.PruningSchedule(keep)


def test_resolve_errors():
    with pytest.raises(kp.PruningError, match="one of"):
        resolve_schedule("cosine", 0.5, 2)
    with pytest.raises(kp.PruningError, match="contradicts"):
        resolve_schedule([0.7, 0.5], 0.5, 3)
    with pytest.raises(kp.PruningError, match="ends at"):
        resolve_schedule([0.7, 0.6], 0.5, None)
    with pytest.raises(kp.PruningError, match="final"):
        kp.PruningSchedule.geometric(1.0, 2)


def _model():
    model = two_conv_classifier(channels=3, classes=3, softmax=True, bn_seed=1)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 8, 8, 3)).astype("float32"), rng.integers(0, 3, 32)


def test_prune_and_finetune_follows_the_schedule_and_rescores_each_step():
    model, data = _model(), _data()
    small, hist = kp.prune_and_finetune(
        model, target_flops=0.3, schedule=kp.PruningSchedule((0.8, 0.55, 0.3)), train_data=data, val_data=data,
        epochs_per_step=0,
    )
    ratios = [r.flops / hist.rows[0].flops for r in hist.rows]
    assert len(hist.rows) == 4 and ratios[0] == 1.0
    for got, goal in zip(ratios[1:], (0.8, 0.55, 0.3)):
        assert goal * 0.85 <= got <= goal * 1.02  # each step removes to its own goal (channels are discrete)
    # target_ratio: kept channels per group follow the schedule
    _, hist = kp.prune_and_finetune(
        model, target_ratio=0.75, schedule="geometric", steps=2, train_data=data, val_data=data, epochs_per_step=0
    )
    assert [r.params for r in hist.rows] == sorted((r.params for r in hist.rows), reverse=True)
    small = kp.prune_and_finetune(
        model, target_ratio=0.75, schedule=[0.5, 0.25], train_data=data, val_data=data, epochs_per_step=0
    )[0]
    assert small.get_layer("c1").filters == 2 and small.get_layer("c2").filters == 2
    assert isinstance(small, keras.Model)


def test_prune_and_finetune_schedule_errors():
    model, data = _model(), _data()
    with pytest.raises(kp.PruningError, match="ends at"):
        kp.prune_and_finetune(model, target_flops=0.3, schedule=[0.8, 0.5], train_data=data, val_data=data)
    with pytest.raises(kp.PruningError, match="contradicts"):
        kp.prune_and_finetune(model, target_flops=0.5, steps=3, schedule=[0.8, 0.5], train_data=data, val_data=data)
