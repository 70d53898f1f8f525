"""Weight-based criteria: scores read from the producers' kernels and the BatchNorm after them.

Per-layer scores are *size-normalized*: magnitudes are averages over a filter's
weights (`l1` = mean |w|, `l2` = root mean square), so a 1x1 conv and a 3x3 conv
of the same residual group are comparable, and averaging over the group's
producers is meaningful. Within one layer the ranking equals the ranking by the
plain L1/L2 norm.
"""

from __future__ import annotations

import keras
import numpy as np

from kerasprune.criteria.base import (
    CriterionSkip,
    gather,
    group_criterion,
    layer_criterion,
    register_criterion,
)


def _flat(w: np.ndarray) -> np.ndarray:
    return w.reshape(-1, w.shape[-1]).astype(np.float64)


def _l1(w):
    return np.abs(_flat(w)).mean(axis=0)


def _l2(w):
    return np.sqrt((_flat(w) ** 2).mean(axis=0))


def _mean(w):
    return _flat(w).mean(axis=0)


def _fpgm(w):
    f = _flat(w).T  # (filters, d)
    n, d = f.shape
    if n < 2:
        return np.zeros(n)
    sq = (f**2).sum(axis=1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0.0))
    np.fill_diagonal(dist, 0.0)
    return dist.sum(axis=1) / (n - 1) / np.sqrt(d)


def _zero(group, ctx):
    # A filter's kernel slice and bias are summed (keyed by layer and channel layout).
    parts = {(key, chan.tobytes()): [np.abs(_flat(w)).sum(axis=0), chan] for key, w, chan in ctx.kernels(group)}
    for key, b, chan in ctx.biases(group):
        b = np.abs(_flat(b)).sum(axis=0)
        if (key, chan.tobytes()) in parts:
            parts[key, chan.tobytes()][0] = parts[key, chan.tobytes()][0] + b
        else:
            parts[key, chan.tobytes()] = [b, chan]
    return gather(group.size, [tuple(p) for p in parts.values()])


def _bn_gamma(group, ctx):
    parts = []
    for key, s, chan in ctx.graph.slices(group):
        layer = ctx.graph.records[key].layer
        gamma = getattr(layer, "gamma", None)
        if isinstance(layer, keras.layers.BatchNormalization) and gamma is not None:
            if layer.weights[s.index] is gamma:
                parts.append((np.abs(ctx.weight(key, s.index)), chan))
    if not parts:
        raise CriterionSkip("no BatchNormalization with a gamma follows its layers")
    return gather(group.size, parts)


def _random(group, ctx):
    return ctx.rng.random(group.size)


# -- data-driven criteria -------------------------------------------------------------


register_criterion(layer_criterion(_l1, name="l1"), "mean absolute weight of the filter (L1 norm / filter size)")
register_criterion(
    layer_criterion(_l2, name="l2"), "root mean square of the filter's weights (L2 norm / sqrt(filter size))"
)
register_criterion(layer_criterion(_mean, name="mean"), "mean kernel weight of the filter (the classic threshold recipe)")
register_criterion(
    layer_criterion(_fpgm, name="fpgm"), "mean distance to the layer's other filters (geometric-median redundancy)"
)
register_criterion(
    group_criterion(_bn_gamma, name="bn_gamma"), "|gamma| of the BatchNormalization that follows (network slimming)"
)
register_criterion(
    group_criterion(_zero, name="zero"), "0 for dead filters (kernel slice and bias all zero), else their L1 sum"
)
register_criterion(group_criterion(_random, name="random"), "uniform random scores (seeded); a baseline")
