"""Gradient-based criteria (first-order Taylor), one gradient function per backend.

The gradient of a loss with respect to the consumers' input weights is computed
with the active backend's autodiff (TensorFlow `GradientTape`, `jax.grad`,
`torch.autograd`) on `model.stateless_call`, batch by batch.
"""

from __future__ import annotations

import keras
import numpy as np

from kerasprune.criteria.activations import _batches, _split
from kerasprune.criteria.base import Criterion, register_criterion
from kerasprune.errors import PruningError

_GRADIENT = {}


def _grad_tensorflow(f, values):
    import tensorflow as tf

    vals = [tf.convert_to_tensor(v) for v in values]
    with tf.GradientTape() as tape:
        tape.watch(vals)
        loss = f(vals)
    return tape.gradient(loss, vals)


def _grad_jax(f, values):
    import jax

    return jax.grad(f)(list(values))


def _grad_torch(f, values):
    import torch

    vals = [v.detach().clone().requires_grad_(True) for v in values]
    return torch.autograd.grad(f(vals), vals, allow_unused=True)


_GRADIENT.update(tensorflow=_grad_tensorflow, jax=_grad_jax, torch=_grad_torch)


class _Taylor(Criterion):
    """First-order Taylor: |sum of activation x gradient| for each channel.

    Scaling channel `c` of the activation a consumer reads is the same as
    scaling the consumer's input weights for `c`, so
    `sum(a_c * dL/da_c) = sum(W_c * dL/dW_c)` over the consumer's input slice.
    Summed over every consumer of the group, this is the first-order change of
    the loss when the channel is removed. Absolute value per batch, mean over batches.
    """

    name = "taylor"
    needs_data = True
    needs_loss = True

    def score_groups(self, groups, ctx):
        graph, model = ctx.graph, ctx.model
        backend = keras.backend.backend()
        if backend not in _GRADIENT:
            raise PruningError(
                f"Criterion 'taylor' supports the tensorflow, jax and torch backends, not {backend!r}"
            )
        if ctx.loss is None:
            raise PruningError(
                "Criterion 'taylor' needs loss=<a Keras loss, its name, or fn(y_true, y_pred)>"
            )
        loss_fn = keras.losses.get(ctx.loss) if isinstance(ctx.loss, str) else ctx.loss
        wanted = {g.id for g in groups}
        terms = []  # (variable, axis, flat channel per position)
        for key, index, ins, _ in graph.consumers():
            if index:
                continue  # a shared layer's weights are read once
            rec = graph.records[key]
            for s in rec.slices:
                var = rec.layer.weights[s.index]
                if len(var.shape) >= 2 and np.array_equal(s.atoms, ins):
                    if set(graph.atom_group[s.atoms].tolist()) & wanted:
                        terms.append((var, s.axis, graph.flat_index(s.atoms)))
        n = graph.n_channels
        acc, seen = np.zeros(n), np.zeros(n, dtype=bool)
        for _, _, flat in terms:
            seen[flat] = True
        tv, ntv = model.trainable_variables, model.non_trainable_variables
        where = {id(v): ("t", i) for i, v in enumerate(tv)}
        where.update({id(v): ("n", i) for i, v in enumerate(ntv)})
        targets = [where[id(var)] for var, _, _ in terms]
        batches = 0
        for x, y in _batches(ctx, self.name):
            if y is None:
                raise PruningError("Criterion 'taylor' needs labelled batches (x, y)")
            x = keras.tree.map_structure(keras.ops.convert_to_tensor, x)
            y = keras.ops.convert_to_tensor(y)

            def f(vals, x=x, y=y):
                t_vals, n_vals = [v.value for v in tv], [v.value for v in ntv]
                for (kind, i), v in zip(targets, vals):
                    (t_vals if kind == "t" else n_vals)[i] = v
                pred, _ = model.stateless_call(t_vals, n_vals, x, training=False)
                return keras.ops.mean(loss_fn(y, pred))

            grads = _GRADIENT[backend](f, [var.value for var, _, _ in terms])
            batch = np.zeros(n)
            for (var, axis, flat), g in zip(terms, grads):
                if g is None:
                    continue
                w = keras.ops.convert_to_numpy(var)
                prod = np.moveaxis(w * keras.ops.convert_to_numpy(g), axis, -1)
                batch += np.bincount(flat, weights=prod.reshape(-1, len(flat)).sum(axis=0), minlength=n)
            acc += np.abs(batch)
            batches += 1
        return _split(
            graph, groups, acc / max(batches, 1), seen, "no convolution or dense layer reads its channels"
        )


register_criterion(_Taylor(), "|activation x gradient| of a loss, first-order loss change (data, loss)")
