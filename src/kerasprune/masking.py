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
from typing import Any

import keras
import numpy as np

from kerasprune.graph import ChannelGraph, graph_for
from kerasprune.plan import Plan, make_plan

log = logging.getLogger(__name__)


def keep_masks(plan: Plan) -> list[tuple[Any, np.ndarray]]:
    """`(variable, keep)` for every weight that masking changes.

    `keep` has the variable's shape and is False exactly where `plan` zeroes it.
    `SoftPruning` re-applies these masks during training.
    """
    masks: dict[int, tuple[Any, np.ndarray]] = {}
    for key in plan.graph.order:
        for s in plan.graph.records[key].slices:
            if not s.zero:
                continue
            gone = ~plan.keep(s.atoms)
            if not gone.any():
                continue
            variable = plan.graph.records[key].layer.weights[s.index]
            entry = masks.setdefault(id(variable), (variable, np.ones(tuple(variable.shape), dtype=bool)))
            if s.along is None:
                index = [slice(None)] * len(variable.shape)
                index[s.axis] = np.flatnonzero(gone)
                entry[1][tuple(index)] = False
            else:  # a 2-D pattern over (axis, along), broadcast over the other axes
                shape = [1] * len(variable.shape)
                shape[s.axis], shape[s.along] = gone.shape
                order = np.argsort([s.axis, s.along])
                pattern = np.transpose(gone, order) if s.axis > s.along else gone
                entry[1][...] &= ~np.broadcast_to(pattern.reshape(shape), entry[1].shape)
    return list(masks.values())


def apply_mask(plan: Plan) -> list[str]:
    """Zero the weights `plan` removes, in `plan.graph.model`. Returns the variables' paths."""
    changed = []
    for variable, keep in keep_masks(plan):
        value = keras.ops.convert_to_numpy(variable.value)
        variable.assign(np.where(keep, value, np.zeros((), dtype=value.dtype)))
        changed.append(variable.path)
    return changed


def mask_filters(
    model, selection: Plan | Mapping, *, graph: ChannelGraph | None = None, channelwise: Iterable[str] = ()
) -> None:
    """Neutralize the selected filters **in place**; the architecture is unchanged.

    After this call the selected channels have no influence on the model's
    outputs, and the model computes what `remove_filters(model, selection)`
    computes (exactly for groups with `exact=True`).

    Args:
        model: The model to modify in place.
        selection: `{layer or name: indices or boolean mask}`, a `Selection` or a
            `Plan`; see `remove_filters`.
        graph: A `ChannelGraph` of `model` to reuse (from `analyze`).
        channelwise: Names of layers (e.g. `Lambda`s) to treat as element-wise,
            as in `analyze`; used when `graph` is not given.

    Returns:
        None; `model`'s weights are changed in place (its architecture is not).

    Raises:
        SelectionError, PruningError: as `remove_filters`.

    Example:
        >>> kerasprune.mask_filters(model, {"conv2d_1": [4, 7]})  # model now ignores filters 4 and 7
    """
    if isinstance(selection, Plan) and graph is None:
        graph = selection.graph
    graph = graph_for(model, graph, channelwise=channelwise)
    plan = make_plan(graph, selection)
    changed = apply_mask(plan)
    log.info("kerasprune.mask_filters: %s; weights changed: %s", plan.summary(), ", ".join(changed))
