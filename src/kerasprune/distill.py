"""Knowledge distillation from the unpruned model while a pruned one trains.

Built on Keras's own `keras.distillation.Distiller`: the student trains on
`alpha * its own loss + (1 - alpha) * T**2 * KL(teacher_T || student_T)`, where
`p_T` is the softmax of the logits divided by the temperature `T` (Hinton et
al. 2015). `make_distiller` returns a `Distiller` compiled like the student
(its optimizer, loss and metrics, from `get_compile_config()`), to be trained
with plain `fit`; callbacks such as `SoftPruning` and `GroupLasso` act on the
distiller's `student`. `prune_and_finetune(..., distill=True)` fine-tunes
every step that way and returns the plain student.

Two details the Keras API leaves to the caller, handled here:

- Models that end in a softmax give probabilities, not logits. `SoftTargets`
  takes `log(p)` as the logits (`softmax(log p / T)` is exactly the tempered
  distribution), so the same loss serves both (`from_logits`, inferred from
  the compiled loss).
- `Distiller` freezes its teacher (`teacher.trainable = False`); the teacher
  given here is copied first, so the caller's model is left as it is.

The distiller's own `val_loss` mixes both losses; `StudentValidation` evaluates
the student alone after every epoch and writes its `val_*` values into the
logs, for the callbacks that follow it (best checkpoint, early stopping).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import distillation as kd

from kerasprune.errors import PruningError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distillation:
    """How to distill: temperature, weight of the label loss, output kind.

    Attributes:
        temperature: Softmax temperature `T` (> 0); 2-6 are usual.
        alpha: Weight of the student's own (label) loss in [0, 1]; the
            distillation loss gets `1 - alpha` (Keras's `student_loss_weight`).
        from_logits: Whether the model outputs logits; `None` reads it from the
            compiled loss (`from_logits` of a loss object; `False` for a loss
            given by name, as Keras's losses default to probabilities).
    """

    temperature: float = 4.0
    alpha: float = 0.5
    from_logits: bool | None = None

    def __post_init__(self):
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
            raise PruningError(f"Distillation.temperature must be a positive number. Received: {self.temperature!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise PruningError(f"Distillation.alpha must be in [0, 1]. Received: {self.alpha!r}")
        if self.from_logits not in (None, True, False):
            raise PruningError(f"Distillation.from_logits must be True, False or None. Received: {self.from_logits!r}")


def distillation_config(distill: bool | dict | Distillation | None) -> Distillation | None:
    """`Distillation` from `True`, a dict of its fields, or itself; `None` for `None`/`False`."""
    if distill is None or distill is False:
        return None
    if distill is True:
        return Distillation()
    if isinstance(distill, Distillation):
        return distill
    if isinstance(distill, dict):
        unknown = set(distill) - {"temperature", "alpha", "from_logits"}
        if unknown:
            raise PruningError(
                f"Unknown distill options {sorted(unknown)}; expected temperature, alpha, from_logits"
            )
        return Distillation(**distill)
    raise PruningError(
        f"distill must be True, a dict (temperature, alpha, from_logits) or a Distillation. Received: {distill!r}"
    )


@keras.saving.register_keras_serializable(package="kerasprune")
class SoftTargets(kd.LogitsDistillation):
    """Temperature-scaled KL divergence between teacher and student outputs.

    `keras.distillation.LogitsDistillation` with a `KLDivergence` loss, for
    models that output logits (`from_logits=True`) or probabilities
    (`from_logits=False`: `log(p)` is used as the logits).

    Args:
        temperature: Softmax temperature (> 0).
        from_logits: Whether the outputs are logits.
    """

    def __init__(self, temperature: float = 4.0, from_logits: bool = True):
        super().__init__(temperature=temperature, loss=keras.losses.KLDivergence())
        self.from_logits = bool(from_logits)

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        if not self.from_logits:
            teacher_outputs, student_outputs = (
                keras.tree.map_structure(_log_probabilities, out) for out in (teacher_outputs, student_outputs)
            )
        return super().compute_loss(teacher_outputs, student_outputs, **kwargs)

    def get_config(self) -> dict:
        return {"temperature": self.temperature, "from_logits": self.from_logits}

    @classmethod
    def from_config(cls, config: dict) -> SoftTargets:
        return cls(**config)


def _log_probabilities(p):
    return keras.ops.log(keras.ops.clip(p, keras.config.epsilon(), 1.0))


def student_of(model: keras.Model) -> keras.Model:
    """The model a pruning callback acts on: a distiller's `student`, else the model itself."""
    student = getattr(model, "student", None)
    return student if isinstance(model, kd.Distiller) and isinstance(student, keras.Model) else model


def frozen_copy(model: keras.Model) -> keras.Model:
    """A copy of `model` with the same weights, not trainable (a teacher)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.trainable = False
    return copy


def _infer_from_logits(loss: Any) -> bool:
    first = keras.tree.flatten(loss)[0] if isinstance(loss, (list, tuple, dict)) else loss
    if isinstance(first, str):
        first = keras.losses.get(first)
    return bool(getattr(first, "from_logits", False))


def make_distiller(
    teacher: keras.Model, student: keras.Model, distill: bool | dict | Distillation = True, *, copy_teacher: bool = True
) -> kd.Distiller:
    """A `keras.distillation.Distiller` of `student` from `teacher`, compiled like the student.

    Train it with `fit` as you would train the student; `distiller.student` is
    the trained (plain) student. Callbacks `SoftPruning` and `GroupLasso`
    given to the distiller's `fit` prune/regularize the student.

    Args:
        teacher: The trained (unpruned) model; copied and frozen (not modified).
        student: The compiled model to train: its optimizer, loss and metrics are
            reused (a fresh optimizer built from the same config).
        distill: `True` (defaults), a dict of `Distillation` fields, or a `Distillation`.
        copy_teacher: Copy the teacher before freezing it (default). `False`
            saves memory but sets `teacher.trainable = False` (Keras's behaviour).

    Returns:
        A compiled `keras.distillation.Distiller`.

    Raises:
        PruningError: the student is not compiled, `distill` is malformed, or the
            compiled metrics are a dict (the distiller takes a list).

    Example:
        >>> distiller = kerasprune.make_distiller(model, student, {"temperature": 4, "alpha": 0.5})
        >>> pruning = kerasprune.SoftPruning("l1", ratio=0.5)
        >>> distiller.fit(x, y, epochs=5, callbacks=[pruning])
        >>> small = pruning.finalize()  # the plain, pruned student
    """
    config = distillation_config(distill)
    if config is None:
        raise PruningError(f"make_distiller needs a distillation config. Received: distill={distill!r}")
    compile_config = student.get_compile_config() if getattr(student, "compiled", False) else {}
    if not compile_config:
        raise PruningError(
            f"Model '{student.name}' is not compiled; the distiller trains it with its own loss, "
            "optimizer and metrics, so compile it first"
        )
    kwargs = keras.saving.deserialize_keras_object(compile_config)
    if kwargs.get("loss") is None:
        raise PruningError(f"Model '{student.name}' is compiled without a loss; the distiller needs the student's loss")
    metrics = kwargs.pop("metrics", None)
    if isinstance(metrics, dict):
        raise PruningError(
            f"Model '{student.name}' is compiled with metrics per output (a dict); the distiller takes a list"
        )
    if metrics is not None and not isinstance(metrics, (list, tuple)):
        metrics = [metrics]
    from_logits = config.from_logits if config.from_logits is not None else _infer_from_logits(kwargs["loss"])
    distiller = kd.Distiller(
        teacher=frozen_copy(teacher) if copy_teacher else teacher,
        student=student,
        distillation_losses=SoftTargets(config.temperature, from_logits=from_logits),
        student_loss_weight=float(config.alpha),
        name=f"{student.name}_distiller",
    )
    distiller.compile(metrics=metrics, **kwargs)
    log.info(
        "make_distiller: %s <- %s, temperature %g, alpha %g, from_logits=%s",
        student.name, teacher.name, config.temperature, config.alpha, from_logits,
    )
    return distiller


class StudentValidation(keras.callbacks.Callback):
    """After every epoch, evaluate the student alone and write its `val_*` into the logs.

    Put it first in the distiller's callbacks, so that the callbacks after it
    (checkpoints, early stopping, `ReduceLROnPlateau`) see the student's own
    validation loss and metrics rather than the distiller's mixed loss.

    Args:
        val_data: `(x, y)` / `(x, y, sample_weight)` or a dataset.
        batch_size: Evaluation batch size (default: Keras's).
    """

    def __init__(self, val_data: Any, batch_size: int | None = None):
        super().__init__()
        self.val_data, self.batch_size = val_data, batch_size

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        data = self.val_data
        if isinstance(data, list) and len(data) in (2, 3) and all(isinstance(d, np.ndarray) for d in data):
            data = tuple(data)
        data = data if isinstance(data, tuple) else (data,)
        kwargs = {} if self.batch_size is None else {"batch_size": self.batch_size}
        values = student_of(self.model).evaluate(*data, verbose=0, return_dict=True, **kwargs)
        logs.update({f"val_{k}": float(v) for k, v in values.items()})
