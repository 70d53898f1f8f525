"""Distillation: the soft-target loss is the tempered KL, the distiller is compiled like the
student, prune_and_finetune(distill=...) and SoftPruning on a Distiller give plain pruned students."""

import os

import keras
import numpy as np
import pytest

import kerasprune as kp
from conftest import run_result_script
from kerasprune.distill import SoftTargets, distillation_config
from models import two_conv_classifier


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.backend
def test_soft_targets_is_tempered_kl_for_logits_and_for_probabilities():
    rng = np.random.default_rng(0)
    zt, zs = rng.normal(size=(2, 5, 4)) * 3
    T = 3.0
    pt, ps = _softmax(zt / T), _softmax(zs / T)
    reference = T**2 * np.mean(np.sum(pt * np.log(pt / ps), axis=-1))
    from_logits = SoftTargets(T, from_logits=True).compute_loss(zt.astype("float32"), zs.astype("float32"))
    probs = SoftTargets(T, from_logits=False).compute_loss(
        _softmax(zt).astype("float32"), _softmax(zs).astype("float32")
    )
    assert float(keras.ops.convert_to_numpy(from_logits)) == pytest.approx(reference, rel=1e-4)
    assert float(keras.ops.convert_to_numpy(probs)) == pytest.approx(reference, rel=1e-4)
    same = SoftTargets(T, from_logits=True).compute_loss(zt.astype("float32"), zt.astype("float32"))
    assert abs(float(keras.ops.convert_to_numpy(same))) < 1e-6


def _compiled(loss="sparse_categorical_crossentropy", lr=0.01):
    model = two_conv_classifier(channels=3, classes=3, softmax=True, bn_seed=1)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"])
    return model


def test_make_distiller_compiles_like_the_student_and_leaves_the_teacher_alone():
    teacher, student = _compiled(), _compiled(lr=0.003)
    trainable = [v.trainable for v in teacher.weights]
    distiller = kp.make_distiller(teacher, student, {"temperature": 2.0, "alpha": 0.25})
    assert isinstance(distiller, keras.distillation.Distiller)
    assert distiller.student is student and distiller.teacher is not teacher
    assert [v.trainable for v in teacher.weights] == trainable and teacher.trainable
    assert distiller.optimizer is not student.optimizer
    assert type(distiller.optimizer) is type(student.optimizer)
    assert float(distiller.optimizer.learning_rate) == pytest.approx(0.003)
    assert distiller.student_loss_weight == 0.25
    (loss,) = distiller.distillation_losses
    assert isinstance(loss, SoftTargets) and loss.temperature == 2.0 and loss.from_logits is False
    logits = _compiled(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert kp.make_distiller(teacher, logits).distillation_losses[0].from_logits is True
    assert kp.make_distiller(teacher, logits, kp.Distillation(from_logits=False)).distillation_losses[0].from_logits is False


def test_distillation_config_and_errors():
    assert distillation_config(None) is None and distillation_config(False) is None
    assert distillation_config(True) == kp.Distillation()
    assert distillation_config({"temperature": 2}) == kp.Distillation(temperature=2)
    with pytest.raises(kp.PruningError, match="Unknown distill options"):
        distillation_config({"temp": 2})
    with pytest.raises(kp.PruningError, match="distill must be"):
        distillation_config("yes")
    with pytest.raises(kp.PruningError, match="temperature"):
        kp.Distillation(temperature=0)
    with pytest.raises(kp.PruningError, match="alpha"):
        kp.Distillation(alpha=1.5)
    with pytest.raises(kp.PruningError, match="not compiled"):
        kp.make_distiller(_compiled(), two_conv_classifier(channels=3, classes=3, softmax=True))
    lossless = two_conv_classifier(channels=3, classes=3, softmax=True)
    lossless.compile(optimizer="adam")
    with pytest.raises(kp.PruningError, match="without a loss"):
        kp.make_distiller(_compiled(), lossless)


SCRIPT = """
import json, keras, numpy as np, sys
sys.path.insert(0, {tests!r})
import kerasprune as kp
from models import two_conv_classifier

rng = np.random.default_rng(0)
x = rng.normal(size=(96, 8, 8, 3)).astype("float32")
y = (x[..., 0].mean(axis=(1, 2)) > 0).astype("int64") + (x[..., 1].mean(axis=(1, 2)) > 0)
train, val = (x[:64], y[:64]), (x[64:], y[64:])


def compiled():
    model = two_conv_classifier(channels=3, classes=3, softmax=True, bn_seed=1)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class Seen(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.models, self.keys = set(), set()

    def on_epoch_end(self, epoch, logs=None):
        self.models.add(type(self.model).__name__)
        self.keys |= set(logs)


result = {{}}
model = compiled()
before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
seen = Seen()
small, hist = kp.prune_and_finetune(
    model, target_flops=0.45, schedule=[0.7, 0.45], train_data=train, val_data=val, epochs_per_step=1,
    monitor="val_loss", mode="min", distill={{"temperature": 3.0, "alpha": 0.3}}, callbacks=[seen],
    fit_options={{"batch_size": 16}},
)
result["unchanged"] = all(np.array_equal(a, keras.ops.convert_to_numpy(b)) for a, b in zip(before, model.weights))
result["trainable"] = model.trainable and all(v.trainable for v in model.trainable_weights)
result["type"] = type(small).__name__
result["is_distiller"] = isinstance(small, keras.distillation.Distiller)
result["widths"] = [small.get_layer("c1").filters, small.get_layer("c2").filters]
result["flops"] = [r.flops / hist.rows[0].flops for r in hist.rows]
result["same_compile"] = small.get_compile_config()["loss"] == model.get_compile_config()["loss"]
result["optimizer"] = [type(small.optimizer).__name__, float(keras.ops.convert_to_numpy(small.optimizer.learning_rate))]
result["val_metric"] = hist.rows[-1].val_metric
result["epochs"] = list(hist.rows[-1].epochs)
result["student_loss"] = small.evaluate(*val, verbose=0, return_dict=True)["loss"]
result["seen"] = sorted(seen.models)
result["keys"] = sorted(seen.keys)

# teacher=: another model teaches (e.g. the dense model of a GroupLasso-trained copy); it is left alone.
other = compiled()
other.fit(*train, epochs=1, batch_size=16, verbose=0)
other_weights = [keras.ops.convert_to_numpy(w).copy() for w in other.weights]


class Teacher(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = [keras.ops.convert_to_numpy(w) for w in self.model.teacher.weights]


taught = Teacher()
kp.prune_and_finetune(
    model, target_flops=0.6, schedule=[0.6], train_data=train, val_data=val, epochs_per_step=1,
    distill=True, teacher=other, callbacks=[taught], fit_options={{"batch_size": 16}},
)
result["teacher_is_other"] = all(np.array_equal(a, b) for a, b in zip(taught.weights, other_weights))
result["teacher_is_not_model"] = not all(np.array_equal(a, b) for a, b in zip(taught.weights, before))
result["other_unchanged"] = other.trainable and all(
    np.array_equal(a, keras.ops.convert_to_numpy(b)) for a, b in zip(other_weights, other.weights)
)

# SoftPruning and GroupLasso given to the fit of a Distiller act on its student.
teacher, student = compiled(), compiled()
distiller = kp.make_distiller(teacher, student)
pruning = kp.SoftPruning("l1", ratio=0.5, frequency="batch")
lasso = kp.GroupLasso(0.5)
distiller.fit(*train, epochs=1, batch_size=16, verbose=0, callbacks=[pruning, lasso])
final = pruning.finalize()
result["soft_type"] = type(final).__name__
result["soft_widths"] = [final.get_layer("c1").filters, final.get_layer("c2").filters]
result["soft_diff"] = float(np.abs(final.predict(x, verbose=0) - student.predict(x, verbose=0)).max())
result["lasso_on_student"] = lasso.graph.model is student
print("RESULT" + json.dumps(result))
"""




@pytest.mark.backend
def test_distilled_finetuning_and_soft_pruning_return_plain_pruned_students():
    r = run_result_script(SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__))))
    # prune_and_finetune(distill=...): the caller's model untouched, a plain pruned student back
    assert r["unchanged"] and r["trainable"]
    assert r["type"] == "Functional" and not r["is_distiller"]
    assert max(r["widths"]) < 8
    assert r["flops"][0] == 1.0 and r["flops"][2] < r["flops"][1] <= 0.7 * 1.05 and r["flops"][2] <= 0.45 * 1.05
    assert r["same_compile"] and r["optimizer"][0] == "Adam" and r["optimizer"][1] == pytest.approx(0.01)
    # fine-tuning ran on the distiller; the monitored val_loss is the student's own loss
    assert r["seen"] == ["Distiller"] and "distillation_loss" in r["keys"] and "val_accuracy" in r["keys"]
    assert len(r["epochs"]) == 2 and r["val_metric"] == min(r["epochs"])
    assert r["student_loss"] == pytest.approx(r["val_metric"], rel=1e-4)
    # SoftPruning on a Distiller prunes the student; finalize() gives the plain smaller student
    assert r["soft_type"] == "Functional" and r["soft_widths"] == [4, 4]
    assert r["soft_diff"] < 1e-4
    assert r["lasso_on_student"]
    # teacher=: the distiller's teacher holds the given model's weights; that model is left alone
    assert r["teacher_is_other"] and r["teacher_is_not_model"] and r["other_unchanged"]
