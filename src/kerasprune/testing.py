"""Helpers for checking pruning results; used by the test suite and benchmarks.

Public so that users can check their own models the same way:
`randomize_batchnorm(model)` gives every BatchNormalization random statistics
(fresh BN layers, with beta = mean = 0 and gamma = var = 1, hide BN leaks), and
`max_output_difference(a, b, x)` compares two models' outputs.
"""

from __future__ import annotations

import keras
import numpy as np


def randomize_batchnorm(model, seed: int = 0) -> None:
    """Give every BatchNormalization layer (nested ones too) random gamma, beta and statistics."""
    rng = np.random.default_rng(seed)
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            new = []
            for v in layer.weights:
                name = v.path.rsplit("/", 1)[-1]
                shape = tuple(v.shape)
                if "variance" in name:
                    new.append(rng.uniform(0.5, 2.0, shape))
                elif "gamma" in name:
                    new.append(rng.normal(1.0, 0.5, shape))
                else:  # beta, moving_mean
                    new.append(rng.normal(0.0, 0.5, shape))
            layer.set_weights([a.astype(v.dtype) for a, v in zip(new, layer.weights)])


def randomize_weights(model, seed: int = 0, scale: float | None = None) -> None:
    """Replace every weight by random values (kernels scaled to keep activations sane)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape = tuple(v.shape)
        if not shape or "int" in str(v.dtype) or "seed" in v.path:
            continue
        fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else shape[0]
        s = scale if scale is not None else 1.0 / np.sqrt(max(fan_in, 1))
        if "variance" in v.path:
            arr = rng.uniform(0.5, 2.0, shape)
        elif "gamma" in v.path:
            arr = rng.normal(1.0, 0.5, shape)
        else:
            arr = rng.normal(0.0, s if len(shape) > 1 else 0.5, shape)
        v.assign(arr.astype(v.dtype))


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def copy_model(model) -> keras.Model:
    """A structural copy of `model` with the same weights (for masking experiments)."""
    clone = keras.models.clone_model(model, recursive=True)
    clone.set_weights(model.get_weights())
    return clone


def random_input(model, batch: int = 2, seed: int = 0):
    """Random inputs matching the model's input shapes (None dims -> 8)."""
    rng = np.random.default_rng(seed)
    xs = []
    for t in model.inputs:
        shape = [batch] + [8 if d is None else d for d in t.shape[1:]]
        if "int" in str(t.dtype):
            xs.append(rng.integers(0, 10, shape).astype(t.dtype))
        else:
            xs.append(rng.normal(size=shape).astype("float32"))
    return xs[0] if len(xs) == 1 else xs


def predict(model, x):
    out = model(x, training=False)
    if isinstance(out, (list, tuple)):
        return [keras.ops.convert_to_numpy(o) for o in out]
    if isinstance(out, dict):
        return [keras.ops.convert_to_numpy(out[k]) for k in sorted(out)]
    return [keras.ops.convert_to_numpy(out)]


def max_output_difference(a, b, x) -> float:
    """Largest absolute difference between the outputs of models `a` and `b` on `x`,
    relative to the largest output magnitude (at least 1)."""
    worst = 0.0
    for ya, yb in zip(predict(a, x), predict(b, x)):
        scale = max(1.0, float(np.abs(ya).max()))
        worst = max(worst, float(np.abs(ya - yb).max()) / scale)
    return worst
