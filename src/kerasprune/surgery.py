"""Physical removal: a new, smaller model built with Keras's own cloning.

`keras.models.clone_model(..., clone_function=..., recursive=True)` re-creates
every layer; layers whose channels change get a config with the new widths
(from their rule), and every layer receives the original's weights with the
removed positions deleted (`np.compress` along each channel-indexed axis). Each
layer is rebuilt once, however many groups touch it.
"""

from __future__ import annotations

import logging
from typing import Mapping

import keras
from keras import tree
import numpy as np

from kerasprune.errors import PruningError
from kerasprune.graph import ChannelGraph, LayerRecord, _functional_of, analyze
from kerasprune.plan import Plan, make_plan
from kerasprune.rules.base import NodeIO

log = logging.getLogger(__name__)


def _io(plan: Plan, rec: LayerRecord, call) -> NodeIO:
    ins, outs, _, out_axes = call
    return NodeIO(
        inputs=[None if a is None else plan.keep(a) for a in ins],
        outputs=[None if a is None else plan.keep(a) for a in outs],
        out_axes=list(out_axes),
    )


def _new_config(plan: Plan, rec: LayerRecord, layer) -> dict:
    config = layer.get_config()
    if rec is None or rec.rule is None or rec.barrier or not rec.calls:
        return config
    atoms = [a for call in rec.calls for a in call[0] + call[1] if a is not None]
    if not plan.touches(atoms):
        return config
    ios = [_io(plan, rec, call) for call in rec.calls]
    counts = {tuple(None if k is None else int(k.sum()) for k in io.inputs + io.outputs) for io in ios}
    if len(counts) > 1:
        raise PruningError(
            f"Layer '{rec.key}' ({type(layer).__name__}) is shared between calls that would lose "
            "different numbers of channels; it cannot be rebuilt for both"
        )
    return rec.rule.rebuild_config(layer, config, ios[0])


def _new_weights(plan: Plan, rec: LayerRecord | None, layer) -> list[np.ndarray]:
    weights = [v.numpy() for v in layer.weights]
    if rec is None:
        return weights
    for s in rec.slices:
        keep = plan.keep(s.atoms)
        if not keep.all():
            weights[s.index] = np.compress(keep, weights[s.index], axis=s.axis)
    return weights


def _nested_inputs(plan: Plan, key: str | None, model) -> list | None:
    """New `Input`s for a nested model whose input channels shrink."""
    calls = plan.graph.nested.get(key or "", [])
    if not calls:
        return None
    shapes, chans = calls[0]
    inputs = []
    for shape, c, t in zip(shapes, chans, model.inputs):
        shape = list(shape)
        if not c.frozen:
            shape[c.axis] = int(plan.keep(c.atoms).sum())
        inputs.append(keras.Input(batch_shape=tuple(shape), dtype=t.dtype))
    return inputs


def rebuild(plan: Plan) -> keras.Model:
    """Build the smaller model that `plan` describes (the original is untouched)."""
    graph = plan.graph
    pairs = []
    cache: dict[int, object] = {}

    def clone_function(layer):
        if id(layer) in cache:
            return cache[id(layer)]
        key = graph._by_id.get(id(layer))
        if _functional_of(layer) is not None:
            inputs = _nested_inputs(plan, key, layer)
            if inputs is not None:
                struct = inputs[0] if isinstance(layer, keras.Sequential) else layer._inputs_struct
                inputs = inputs[0] if isinstance(layer, keras.Sequential) else tree.pack_sequence_as(struct, inputs)
            new = keras.models.clone_model(layer, input_tensors=inputs, clone_function=clone_function)
        else:
            rec = graph.records.get(key) if key else None
            new = layer.__class__.from_config(_new_config(plan, rec, layer))
            pairs.append((layer, new, rec))
        cache[id(layer)] = new
        return new

    try:
        new_model = keras.models.clone_model(graph.model, clone_function=clone_function)
    except PruningError:
        raise
    except Exception as e:  # a layer refused its new config or input shape
        raise PruningError(f"Rebuilding the pruned model failed: {type(e).__name__}: {e}") from e
    for layer, new, rec in pairs:
        if not getattr(layer, "weights", None):
            continue
        weights = _new_weights(plan, rec, layer)
        try:
            new.set_weights(weights)
        except ValueError as e:
            raise PruningError(
                f"Layer '{layer.name}' ({type(layer).__name__}): pruned weights do not fit the rebuilt "
                f"layer: {e}"
            ) from e
    return new_model


def remove_filters(model, selection: Mapping, *, graph: ChannelGraph | None = None) -> keras.Model:
    """Return a new, smaller model without the selected filters.

    Every layer coupled to the selected channels is updated: the producers'
    filters, following BatchNorm/PReLU parameters, residual partners (`Add`),
    concatenation offsets, `Flatten`→`Dense` rows, depthwise channels, and the
    input weights of every consumer. The input model is never modified.

    Args:
        model: A built Functional or Sequential `keras.Model`.
        selection: `{layer or layer name: indices}` where indices is a sequence
            of ints (negatives allowed) or a boolean mask of the layer's width
            (True = remove). A `kerasprune.Selection` works as is.
        graph: A `ChannelGraph` of `model` to reuse (from `analyze`).

    Returns:
        A new `keras.Model` whose outputs equal those of
        `mask_filters(copy_of_model, selection)` (exactly for exact groups).

    Raises:
        SelectionError: unknown layer, bad or duplicated indices, wrong mask length.
        PruningError: a touched group is not prunable (the message names the
            blocking layer), or the selection removes all channels of a group.

    Example:
        >>> smaller = kerasprune.remove_filters(model, {"conv2d_1": [4, 7]})
    """
    graph = graph if graph is not None else analyze(model)
    if graph.model is not model:
        raise PruningError("graph was built for a different model")
    plan = make_plan(graph, selection)
    new_model = rebuild(plan)
    log.info("kerasprune.remove_filters: %s", plan.summary())
    return new_model
