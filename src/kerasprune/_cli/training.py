"""What `kerasprune finetune` needs besides pruning: a compiled model and a metric to watch.

`compiled` loads the training configuration stored in the model file and applies the
`--loss`/`--optimizer`/`--learning-rate`/`--metric` options over it; `pick_monitor` chooses
the validation metric that selects each step's best epoch (accuracy when the model
reports one, else the loss).
"""

from __future__ import annotations

from kerasprune._cli.console import CliError


def compiled(model, *, loss: str | None, optimizer: str | None, learning_rate: float | None,
             metrics: list[str] | None, path) -> None:
    """Compile `model` (in place) from its file's configuration and the CLI overrides.

    Raises:
        CliError: the file has no training configuration and no `--loss` is given, or an
            unknown loss, optimizer or metric name.
    """
    import keras

    stored = model.get_compile_config() if getattr(model, "compiled", False) else None
    if stored and loss is None and optimizer is None and learning_rate is None and not metrics:
        return  # the file's own loss, optimizer and metrics
    if not stored and loss is None:
        raise CliError(
            f"{path} has no training configuration (it was saved uncompiled); pass --loss NAME "
            "(e.g. sparse_categorical_crossentropy), and --optimizer, --learning-rate, --metric as needed"
        )
    stored = stored or {}
    try:
        if optimizer is None and learning_rate is not None and stored.get("optimizer"):
            opt = keras.optimizers.deserialize(stored["optimizer"])
            opt.learning_rate = learning_rate
        elif optimizer is not None or learning_rate is not None or not stored.get("optimizer"):
            opt = keras.optimizers.get(optimizer or "adam")
            if learning_rate is not None:
                opt.learning_rate = learning_rate
        else:
            opt = keras.optimizers.deserialize(stored["optimizer"])
        loss_fn = keras.losses.get(loss) if loss is not None else _stored(stored.get("loss"), keras.losses.get)
        if metrics:
            chosen = [keras.metrics.get(m) if m != "accuracy" else "accuracy" for m in metrics]
        else:
            chosen = [_stored(m, lambda v: v) for m in (stored.get("metrics") or [])]
    except (ValueError, TypeError) as e:
        raise CliError(f"Cannot compile the model: {e}") from None
    model.compile(optimizer=opt, loss=loss_fn, metrics=chosen or None)


def _stored(value, get):
    import keras

    if isinstance(value, dict):
        return keras.saving.deserialize_keras_object(value)
    return get(value) if value is not None else None


def pick_monitor(model, val, monitor: str | None, mode: str | None) -> tuple[str, str]:
    """`(monitor, mode)`: the given ones, else `val_<accuracy metric>`/max, else `val_loss`/min."""
    if monitor is not None:
        return monitor, mode or ("min" if "loss" in monitor else "max")
    args = val if isinstance(val, tuple) else (val,)
    logs = model.evaluate(*args, verbose=0, return_dict=True, steps=1)
    accuracy = next((k for k in logs if "acc" in k), None)
    name = f"val_{accuracy}" if accuracy else "val_loss"
    return name, mode or ("max" if accuracy else "min")
