"""Masking: zero selected channels in place so they have no influence at all.

Zeroing a filter's kernel and bias is not enough: a BatchNormalization after
it still emits `beta - gamma * mean / sqrt(var + eps)`, and an activation with
`f(0) != 0` (sigmoid) turns zero into a constant. We zero the producer's kernel
slice and bias, per-channel parameters of pass-through layers (BN gamma and
beta, PReLU alpha, layer scale), *and* every consumer's input weights for the
channel. The last step alone guarantees that the masked model computes exactly
what the physically pruned model computes (for exact groups).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np

from kerasprune.graph import ChannelGraph, analyze
from kerasprune.plan import Plan, make_plan

log = logging.getLogger(__name__)


def apply_mask(plan: Plan) -> list[str]:
    """Zero the weights `plan` removes, in `plan.graph.model`. Returns layer keys changed."""
    changed = []
    for key in plan.graph.order:
        rec = plan.graph.records[key]
        updates: dict[int, np.ndarray] = {}
        for s in rec.slices:
            if not s.zero:
                continue
            gone = ~plan.keep(s.atoms)
            if not gone.any():
                continue
            arr = updates.get(s.index)
            if arr is None:
                arr = np.array(rec.layer.weights[s.index].numpy(), copy=True)
                updates[s.index] = arr
            index = [slice(None)] * arr.ndim
            index[s.axis] = np.flatnonzero(gone)
            arr[tuple(index)] = 0
        for i, arr in updates.items():
            rec.layer.weights[i].assign(arr)
        if updates:
            changed.append(key)
    return changed


def mask_filters(
    model, selection: Mapping, *, graph: ChannelGraph | None = None, channelwise: Iterable[str] = ()
) -> None:
    """Neutralize the selected filters **in place**; the architecture is unchanged.

    After this call the selected channels have no influence on the model's
    outputs, and the model computes what `remove_filters(model, selection)`
    computes (exactly for groups with `exact=True`).

    Args:
        model: The model to modify in place.
        selection: `{layer or name: indices or boolean mask}`; see `remove_filters`.
        graph: A `ChannelGraph` of `model` to reuse (from `analyze`).
        channelwise: Names of layers (e.g. `Lambda`s) to treat as element-wise,
            as in `analyze`; used when `graph` is not given.

    Raises:
        SelectionError, PruningError: as `remove_filters`.
    """
    graph = graph if graph is not None else analyze(model, channelwise=channelwise)
    if graph.model is not model:
        from kerasprune.errors import PruningError

        raise PruningError("graph was built for a different model")
    plan = make_plan(graph, selection)
    changed = apply_mask(plan)
    log.info("kerasprune.mask_filters: %s; layers changed: %s", plan.summary(), ", ".join(changed))
