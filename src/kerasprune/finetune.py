"""Iterative pruning with fine-tuning: prune a little, train a little, repeat.

`prune_and_finetune` removes filters in `steps` equal steps towards a target
(a fraction of each group, or a fraction of the original FLOPs), and after each
removal fine-tunes the smaller model with the user's own compiled loss,
optimizer and metrics (`model.get_compile_config()`) through `model.fit`.
Within each step the weights of the best epoch by the monitored validation
metric are restored (the freshly pruned weights count as epoch 0), so a step
never ends worse than its own best checkpoint.

On TensorFlow the pruned models are built under the strategy the input model was
created in (`tf.distribute.MirroredStrategy` etc.); on JAX the global
`keras.distribution` applies to them as to any new model.

Every `fit` runs under `kerasprune.stack.safe_training`: with oneDNN on x86
(TensorFlow's and PyTorch's default), a pruned strided 1x1 convolution left with
fewer than 16 input channels would crash the process in its weight gradient
(docs/training-crash.md); the guard computes such layers as slice + unit-stride
convolution while kerasprune trains, and warns if the returned model has them.

Progress goes to the `kerasprune.finetune` logger at INFO: one line per epoch
and one per step (`verbose=0` silences them).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from kerasprune.allocation import select
from kerasprune.data import for_keras
from kerasprune.distill import (
    Distillation,
    StudentValidation,
    distillation_config,
    frozen_copy,
    make_distiller,
)
from kerasprune.errors import PruningError
from kerasprune.flops import count_flops, count_params
from kerasprune.graph import analyze
from kerasprune.recalibrate import recalibrate_batchnorm
from kerasprune.schedules import PruningSchedule, resolve_schedule
from kerasprune.stack import safe_training, warn_if_at_risk
from kerasprune.surgery import remove_filters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneStep:
    """One row of the history: the model after step `step` (0 = the original).

    `val_metric` is the monitored value of the model kept at this step; `epochs`
    holds the monitored value after pruning (first entry) and after each epoch.
    """

    step: int
    flops: int
    params: int
    val_metric: float
    best_epoch: int
    epochs: tuple[float, ...]

    def to_dict(self) -> dict:
        return {
            "step": self.step,
            "flops": self.flops,
            "params": self.params,
            "val_metric": self.val_metric,
            "best_epoch": self.best_epoch,
            "epochs": list(self.epochs),
        }


@dataclass(frozen=True)
class FinetuneHistory:
    """The history table returned by `prune_and_finetune`."""

    monitor: str
    mode: str
    rows: tuple[FinetuneStep, ...]

    def to_dict(self) -> dict:
        return {"monitor": self.monitor, "mode": self.mode, "rows": [r.to_dict() for r in self.rows]}

    def table(self) -> str:
        base = self.rows[0]
        lines = [f"{'step':>4} {'FLOPs':>12} {'%':>6} {'params':>10} {self.monitor:>14} {'best epoch':>10}"]
        for r in self.rows:
            lines.append(
                f"{r.step:>4} {r.flops:>12,} {100 * r.flops / max(base.flops, 1):>5.1f}% {r.params:>10,} "
                f"{r.val_metric:>14.5g} {r.best_epoch:>10}"
            )
        return "\n".join(lines)

    __str__ = table


def prune_and_finetune(
    model: keras.Model,
    *,
    criterion: str | Callable = "l1",
    target_ratio: float | None = None,
    target_flops: float | None = None,
    steps: int | None = None,
    train_data: Any,
    val_data: Any,
    epochs_per_step: int = 1,
    monitor: str = "val_accuracy",
    mode: str = "max",
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    scope: str | None = None,
    data: Any = None,
    loss: Any = None,
    seed: int = 0,
    select_options: dict | None = None,
    fit_options: dict | None = None,
    channelwise: Iterable[str] = (),
    verbose: int | bool = 1,
    schedule: str | Sequence[float] | PruningSchedule = "linear",
    distill: bool | dict | Distillation | None = None,
    teacher: keras.Model | None = None,
    recalibrate: Any = None,
) -> tuple[keras.Model, FinetuneHistory]:
    """Remove filters in `steps` steps towards a target, fine-tuning after each.

    Args:
        model: A compiled, built Functional or Sequential model (not modified).
        criterion: Criterion for `kerasprune.select` at every step.
        target_ratio: Fraction of every group's channels to remove in the end.
        target_flops: Fraction of the original FLOPs to keep in the end (global
            ranking). Exactly one of `target_ratio` / `target_flops` is required.
        steps: Number of prune/fine-tune rounds (default 3, or the length of an
            explicit `schedule`); with the linear schedule step `k` reaches
            `k / steps` of the way to the target.
        train_data: Training data for `model.fit`: `(x, y)` / `(x, y, sample_weight)`, an
            `.npz` path, a list or generator of batches, a dataset (`kerasprune.data`).
        val_data: Validation data in the same forms (a generator is read once).
        epochs_per_step: Fine-tuning epochs after each removal (0: prune only).
        monitor: Validation metric that picks the best checkpoint of each step
            (a key of the `model.evaluate` logs prefixed with `val_`, e.g.
            `"val_accuracy"`, `"val_loss"`).
        mode: `"max"` if higher `monitor` is better, `"min"` otherwise.
        callbacks: Extra Keras callbacks passed to every `model.fit`.
        scope: `"local"` or `"global"` for `select` (default: local for a ratio
            target, global for a FLOPs target).
        data, loss, seed: Passed to `select` for data-driven criteria.
        select_options: Further `select` keywords (`round_to`, `min_keep`, `exclude`...).
        fit_options: Further `model.fit` keywords (`batch_size`, `verbose`...).
        channelwise: Layer names to treat as element-wise (as in `analyze`), at
            every step.
        verbose: Log progress to the `kerasprune.finetune` logger at INFO, one
            line per fine-tuning epoch and one per step (0 / False: silent;
            warnings are always logged). Keras's own progress bar is
            `fit_options={"verbose": 1}`.
        schedule: What each step keeps of the original (FLOPs for `target_flops`,
            channels for `target_ratio`): `"linear"`, `"geometric"`, a
            `PruningSchedule`, or a decreasing sequence ending at the target.
            Channels are re-scored on the fine-tuned model before every step.
        distill: Fine-tune with knowledge distillation from `model` (the
            unpruned teacher): `True`, a dict (`temperature`, `alpha`,
            `from_logits`) or a `Distillation`. The returned model is the plain
            student; `callbacks` see the `keras.distillation.Distiller` as their
            model, and the validation logs hold the student's own loss and
            metrics. See `kerasprune.make_distiller`.
        teacher: The model to distill from instead of `model` (not modified;
            copied and frozen): e.g. the ordinary trained model when `model` is
            its sparsity-trained copy (`GroupLasso`). It must take the same
            inputs and give outputs of the same shape. Needs `distill`.
        recalibrate: Training inputs (e.g. `x_train[:1000]`, any form
            `kerasprune.recalibrate_batchnorm` takes) to recompute the pruned
            model's BatchNormalization statistics from, after every removal and
            before its fine-tuning (the recalibrated model is epoch 0).

    Returns:
        `(pruned_model, history)`: the model of the last step, restored to its best
        checkpoint, compiled like `model`; and a `FinetuneHistory` with one row per
        step (step 0 = the original model).

    Raises:
        PruningError: no or two targets, target out of range, model not compiled,
            `monitor` missing from the validation logs.

    Example:
        >>> small, history = kerasprune.prune_and_finetune(
        ...     model, criterion="l1", target_flops=0.5, steps=2,
        ...     train_data=(x, y), val_data=(xv, yv), epochs_per_step=2)
        >>> print(history.table())
    """
    final = target_flops if target_flops is not None else 1.0 - (target_ratio or 0.0)
    _check_args(model, target_ratio, target_flops, 3 if steps is None else steps, epochs_per_step, mode, verbose)
    train_data = for_keras(train_data, model=model, where="train_data", keep_iterators=True)
    val_data = for_keras(val_data, model=model, where="val_data")  # evaluated at every step: read once
    plan = resolve_schedule(schedule, final, steps)
    steps = plan.steps
    distill = distillation_config(distill)
    _check_teacher(model, teacher, distill)
    if distill is not None and not epochs_per_step:
        log.warning("prune_and_finetune: distill is ignored with epochs_per_step=0 (nothing is fine-tuned)")
    if distill is not None and epochs_per_step:
        with _strategy_scope(model):
            teacher = frozen_copy(model if teacher is None else teacher)  # one frozen copy teaches every step
    compile_config = model.get_compile_config()
    scope = scope or ("global" if target_flops is not None else "local")
    select_options = dict(select_options or {})
    fit_options = {"verbose": 0, **(fit_options or {})}
    sign = 1.0 if mode == "max" else -1.0
    flops0, params0 = count_flops(model), count_params(model)

    current = model
    rows = [FinetuneStep(0, flops0, params0, _evaluate(model, val_data, monitor), 0, ())]
    if verbose:
        log.info("prune_and_finetune: start %s=%.5g, %d FLOPs", monitor, rows[0].val_metric, flops0)
    for k in range(1, steps + 1):
        options = dict(select_options, scope=scope, data=data, loss=loss, seed=seed)
        if target_flops is not None:
            options["target_flops"] = min(1.0, plan.keep[k - 1] * flops0 / max(count_flops(current), 1))
        else:
            options["ratio"] = plan.step_ratio(k)
        graph = analyze(current, channelwise=channelwise)
        selection = select(current, criterion, graph=graph, **options)
        with _strategy_scope(model):
            pruned = remove_filters(current, selection, graph=graph)
            pruned.compile_from_config(compile_config)
        if recalibrate is not None:
            recalibrate_batchnorm(pruned, recalibrate)
        best = _BestCheckpoint(monitor, sign, _evaluate(pruned, val_data, monitor), pruned.get_weights(), pruned)
        if epochs_per_step:
            progress = [_Progress(k, steps, epochs_per_step, monitor)] if verbose else []
            with safe_training(pruned, where="prune_and_finetune"):
                if distill is not None:
                    with _strategy_scope(model):
                        trainer = make_distiller(teacher, pruned, distill, copy_teacher=False)
                    first = StudentValidation(val_data, fit_options.get("validation_batch_size"))
                    fit_callbacks = [first, *(callbacks or []), best, *progress]
                    _fit(trainer, train_data, None, epochs_per_step, fit_callbacks, fit_options)
                else:
                    fit_callbacks = [*(callbacks or []), best, *progress]
                    _fit(pruned, train_data, val_data, epochs_per_step, fit_callbacks, fit_options)
        values, best_epoch, best_weights = tuple(best.values), best.best_epoch, best.best_weights
        pruned.set_weights(best_weights)
        current = pruned
        row = FinetuneStep(
            k, count_flops(current), count_params(current), values[best_epoch], best_epoch, tuple(values)
        )
        rows.append(row)
        if verbose:
            log.info(
                "prune_and_finetune: step %d/%d done, FLOPs %.1f%%, %s=%.5g (kept epoch %d)",
                k, steps, 100 * row.flops / max(flops0, 1), monitor, row.val_metric, best_epoch,
            )
    warn_if_at_risk(current, where="prune_and_finetune")
    return current, FinetuneHistory(monitor, mode, tuple(rows))


def _check_args(model, target_ratio, target_flops, steps, epochs_per_step, mode, verbose) -> None:
    if (target_ratio is None) == (target_flops is None):
        raise PruningError(
            "Give exactly one of target_ratio or target_flops. "
            f"Received: target_ratio={target_ratio}, target_flops={target_flops}"
        )
    if target_ratio is not None and not 0.0 < target_ratio < 1.0:
        raise PruningError(f"target_ratio must be in (0, 1). Received: target_ratio={target_ratio}")
    if target_flops is not None and not 0.0 < target_flops < 1.0:
        raise PruningError(f"target_flops must be in (0, 1). Received: target_flops={target_flops}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise PruningError(f"steps must be a positive integer. Received: steps={steps!r}")
    if not isinstance(epochs_per_step, int) or epochs_per_step < 0:
        raise PruningError(f"epochs_per_step must be a non-negative integer. Received: {epochs_per_step!r}")
    if mode not in ("max", "min"):
        raise PruningError(f"mode must be 'max' or 'min'. Received: mode={mode!r}")
    if not isinstance(verbose, (bool, int, np.integer)) or verbose < 0:
        raise PruningError(f"verbose must be a non-negative integer or a bool. Received: verbose={verbose!r}")
    if not getattr(model, "compiled", False) or not model.get_compile_config():
        raise PruningError(
            f"Model '{model.name}' is not compiled; prune_and_finetune fine-tunes with the model's own "
            "loss, optimizer and metrics, so compile it first"
        )


def _check_teacher(model, teacher, distill) -> None:
    if teacher is None:
        return
    if distill is None:
        raise PruningError("prune_and_finetune: teacher= is only used with distill=...; give distill=True (or a config)")
    if not isinstance(teacher, keras.Model):
        raise PruningError(f"teacher must be a keras.Model. Received: {type(teacher).__name__}")
    mine, theirs = (
        [tuple(t.shape) for t in keras.tree.flatten(m.outputs)] if getattr(m, "outputs", None) else None
        for m in (model, teacher)
    )
    if mine is not None and theirs is not None and mine != theirs:
        raise PruningError(
            f"teacher '{teacher.name}' ({type(teacher).__name__}) outputs {theirs}, model '{model.name}' outputs "
            f"{mine}: distillation needs outputs of the same shape"
        )


def _split(data):
    if isinstance(data, tuple):
        return data
    if isinstance(data, list) and len(data) in (2, 3) and all(isinstance(d, np.ndarray) for d in data):
        return tuple(data)
    return (data,)


def _fit(model, train_data, val_data, epochs, callbacks, fit_options) -> None:
    args = _split(train_data)
    kwargs = dict(fit_options, epochs=epochs, callbacks=callbacks, validation_data=val_data)
    kwargs.setdefault("x", args[0])
    if len(args) > 1:
        kwargs.setdefault("y", args[1])
    if len(args) > 2:
        kwargs.setdefault("sample_weight", args[2])
    model.fit(**kwargs)


class _Progress(keras.callbacks.Callback):
    """One INFO line per fine-tuning epoch: step, epoch, loss, the monitored value, time."""

    def __init__(self, step: int, steps: int, epochs: int, monitor: str):
        super().__init__()
        self.step, self.steps, self.epochs, self.monitor = step, steps, epochs, monitor
        self._t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        shown = [("loss", logs.get("loss"))] + [(self.monitor, logs.get(self.monitor))] * (self.monitor != "loss")
        values = ", ".join(f"{k}={float(v):.5g}" for k, v in shown if v is not None)
        log.info(
            "prune_and_finetune: step %d/%d, epoch %d/%d: %s (%.1f s)",
            self.step, self.steps, epoch + 1, self.epochs, values, time.perf_counter() - self._t0,
        )


class _BestCheckpoint(keras.callbacks.Callback):
    """Records `monitor` after every epoch and keeps the best weights (in memory)."""

    def __init__(self, monitor: str, sign: float, initial: float, weights: list, source: keras.Model):
        super().__init__()
        self.monitor, self.sign, self.source = monitor, sign, source  # source: the model whose weights to keep
        self.values = [initial]
        self.best_epoch, self.best_weights = 0, weights

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise PruningError(f"monitor '{self.monitor}' is not in the fit logs. Available: {sorted(logs)}")
        value = float(logs[self.monitor])
        self.values.append(value)
        best = self.values[self.best_epoch]
        if self.sign * value > self.sign * best or (math.isnan(best) and not math.isnan(value)):
            self.best_epoch, self.best_weights = len(self.values) - 1, self.source.get_weights()


def _evaluate(model, val_data, monitor: str) -> float:
    args = _split(val_data)
    logs = model.evaluate(*args, verbose=0, return_dict=True)
    logs = {f"val_{k}": v for k, v in logs.items()}
    if monitor not in logs:
        raise PruningError(f"monitor '{monitor}' is not in the validation logs. Available: {sorted(logs)}")
    value = float(logs[monitor])
    if math.isnan(value):
        log.warning("prune_and_finetune: %s is NaN", monitor)
    return value


def _strategy_scope(model):
    """The `tf.distribute` strategy scope `model` was built in (TensorFlow), else a no-op."""
    strategy = getattr(model, "distribute_strategy", None) if keras.backend.backend() == "tensorflow" else None
    return strategy.scope() if strategy is not None else contextlib.nullcontext()
