"""Data-driven criteria from activations: what the consumers (convs, dense layers) read.

The model's graph is executed node by node (`traversal.run_graph`, nested models
expanded), and the input of every consumer call (`ChannelGraph.consumers()`) is
reduced per channel, one batch at a time.
"""

from __future__ import annotations

import keras
import numpy as np

from kerasprune import _keras
from kerasprune.criteria.base import Criterion, CriterionSkip, ScoringContext, register_criterion
from kerasprune.data import batches
from kerasprune.errors import PruningError
from kerasprune.graph import ChannelGraph, Group, functional_of, run_graph


def _batches(ctx: ScoringContext, name: str):
    """The scoring data as `(x, y)` batches (`kerasprune.data.batches`)."""
    if ctx.data is None:
        raise PruningError(
            f"Criterion '{name}' is data-driven: pass data= (x, (x, y), a list of batches, a generator or a dataset)"
        )
    return batches(ctx.data, model=ctx.model, batch_size=ctx.batch_size, where=f"data for criterion '{name}'")


def _split(graph: ChannelGraph, groups: list[Group], flat_values: np.ndarray, seen: np.ndarray, reason: str):
    out: dict[int, np.ndarray | CriterionSkip] = {}
    for g in groups:
        off = int(graph.group_offsets[g.id])
        if seen[off : off + g.size].any():
            out[g.id] = flat_values[off : off + g.size].copy()
        elif g.layers and all(not graph.records[k].calls for k in g.layers):  # parts: heads of an attention
            out[g.id] = CriterionSkip(
                f"its channels ({', '.join(g.layers)}) are internal to a layer and no tensor of the model "
                "carries them; score them with a weight criterion (l1, l2, fpgm)"
            )
        else:
            out[g.id] = CriterionSkip(reason)
    return out


def _run(fn, values: list, prefix: str, counter: dict, visit) -> list:
    """Execute a Functional graph node by node (nested models expanded), calling
    `visit(key, call_index, input_values)` before each layer call."""

    def call(op, node, ins, pre, env):
        key = f"{pre}{op.name}"
        idx = counter.get(key, 0)
        counter[key] = idx + 1
        visit(key, idx, ins)
        args, kwargs = _keras.fill_in(node, env)
        return keras.tree.flatten(op(*args, **kwargs))

    return run_graph(fn, values, call, prefix=prefix)


class _ActivationStats(Criterion):
    """Statistics of the activations that consumers (convs, dense layers) read."""

    needs_data = True

    def __init__(self, name: str):
        self.name = name

    def score_groups(self, groups, ctx):
        graph = ctx.graph
        wanted = np.zeros(len(graph.group_sizes), dtype=bool)
        wanted[[g.id for g in groups]] = True
        taps = {
            (key, index): (axis, graph.flat_index(atoms))
            for key, index, atoms, axis in graph.consumers()
            if wanted[graph.atom_group[atoms]].any()
        }
        n = graph.n_channels
        zeros, total, count = np.zeros(n), np.zeros(n), np.zeros(n)

        def visit(key, idx, ins):
            tap = taps.get((key, idx))
            if tap is None:
                return
            axis, flat = tap
            x = keras.ops.convert_to_numpy(ins[0])
            x = np.moveaxis(x, axis, -1).reshape(-1, len(flat))
            zeros[:] += np.bincount(flat, weights=(x == 0).sum(axis=0), minlength=n)
            total[:] += np.bincount(flat, weights=x.sum(axis=0, dtype=np.float64), minlength=n)
            count[:] += np.bincount(flat, minlength=n) * x.shape[0]

        fn = functional_of(ctx.model)
        for x, _ in _batches(ctx, self.name):
            xs = keras.tree.flatten(x)
            _run(fn, [keras.ops.convert_to_tensor(v) for v in xs], "", {}, visit)
        c = np.maximum(count, 1)
        values = 1.0 - zeros / c if self.name == "apoz" else total / c
        return _split(graph, groups, values, count > 0, "no convolution or dense layer reads its channels")


register_criterion(
    _ActivationStats("apoz"), "1 - average percentage of zeros in the activations consumers read (data)"
)
register_criterion(_ActivationStats("mean_activation"), "mean of the activations consumers read (data)")
