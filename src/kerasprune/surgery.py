"""Physical removal: a new, smaller model built with Keras's own cloning.

`keras.models.clone_model(..., clone_function=..., recursive=True)` re-creates
every layer; layers whose channels change get a config with the new widths
(from their rule), and every layer receives the original's weights with the
removed positions deleted (`np.compress` along each channel-indexed axis). Each
layer is rebuilt once, however many groups touch it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import keras
import numpy as np
from keras import tree

from kerasprune import _keras
from kerasprune.errors import PruningError
from kerasprune.graph import CallRecord, ChannelGraph, LayerRecord, functional_of, graph_for
from kerasprune.plan import Plan, make_plan
from kerasprune.rules.base import NodeIO

log = logging.getLogger(__name__)


def _io(plan: Plan, call: CallRecord) -> NodeIO:
    return NodeIO(
        inputs=[None if a is None else plan.keep(a) for a in call.inputs],
        outputs=[None if a is None else plan.keep(a) for a in call.outputs],
        in_axes=list(call.in_axes),
        out_axes=list(call.out_axes),
    )


def new_config(plan: Plan, rec: LayerRecord | None, layer) -> dict:
    """The config of `layer` in the model `plan` builds (its rule's `rebuild_config`)."""
    config = layer.get_config()
    if rec is None or rec.rule is None or rec.barrier or not rec.calls:
        return config
    if not plan.touches([a for call in rec.calls for a in call.atoms()]):
        return config
    ios = [_io(plan, call) for call in rec.calls]
    counts = {tuple(None if k is None else int(k.sum()) for k in io.inputs + io.outputs) for io in ios}
    if len(counts) > 1:
        raise PruningError(
            f"Layer '{rec.key}' ({type(layer).__name__}) is shared between calls that would lose "
            "different numbers of channels; it cannot be rebuilt for both"
        )
    return rec.rule.rebuild_config(layer, config, ios[0])


def _new_weights(plan: Plan, rec: LayerRecord | None, layer) -> list:
    """The layer's weights with removed positions deleted.

    Untouched variables are passed on as backend tensors (`variable.value`): no
    host copy; only the sliced ones go through NumPy, one variable at a time.
    """
    variables = layer.weights
    # A copy: on JAX, `assign` keeps the very array it is given, and `predict_on_batch` donates
    # (deletes) its model's arrays, so a shared array would break the other model.
    weights: list = [keras.ops.copy(v.value) for v in variables]
    if rec is None:
        return weights
    # Grouped slices first: their 2-D pattern refers to the full `along` axis, which a
    # plain slice of the same variable (a grouped conv's own filters) then compresses.
    for s in sorted(rec.slices, key=lambda s: s.along is None):
        keep = plan.keep(s.atoms)
        if not keep.all():
            arr = weights[s.index]
            if not isinstance(arr, np.ndarray):
                arr = keras.ops.convert_to_numpy(arr)
            weights[s.index] = np.compress(keep, arr, axis=s.axis) if s.along is None else _compress_along(arr, keep, s)
    return weights


def _compress_along(arr: np.ndarray, keep: np.ndarray, s) -> np.ndarray:
    """Keep, for every position of `s.along`, its own kept positions of `s.axis`."""
    n = np.count_nonzero(keep, axis=0)
    if len(set(n.tolist())) != 1:  # pragma: no cover - the plan's balance check refuses this
        raise PruningError(f"unequal removal along axis {s.along}: kept {sorted(set(n.tolist()))}")
    moved = np.moveaxis(arr, (s.axis, s.along), (-2, -1))
    rows = np.argsort(~keep, axis=0, kind="stable")[: int(n[0])]  # kept rows, in order, per column
    index = np.broadcast_to(rows, moved.shape[:-2] + rows.shape)
    return np.moveaxis(np.take_along_axis(moved, index, axis=-2), (-2, -1), (s.axis, s.along))


_CHEAP_INIT = keras.initializers.Zeros()


def _defer_initializers(layer, swapped: list) -> None:
    """Let `layer` create its variables filled with zeros instead of random values.

    Every variable of a rebuilt layer is overwritten right after cloning, and the
    random initializers cost more than the rest of the clone. The original
    initializer objects are put back by `_restore_initializers`, so the new
    layer's `get_config()` is unchanged.
    """
    for name, value in list(vars(layer).items()):
        if isinstance(value, keras.initializers.Initializer) and not isinstance(value, keras.initializers.Zeros):
            swapped.append((layer, name, value))
            object.__setattr__(layer, name, _CHEAP_INIT)


def _restore_initializers(swapped: list) -> None:
    for layer, name, value in swapped:
        object.__setattr__(layer, name, value)


def _nested_inputs(plan: Plan, key: str | None, model) -> list | None:
    """New `Input`s for a nested model whose input channels shrink."""
    calls = plan.graph.nested.get(key or "", [])
    if not calls:
        return None
    shapes, chans = calls[0]
    inputs = []
    for shape, c, t in zip(shapes, chans, model.inputs):
        shape = list(shape)
        own = tuple(t.shape)
        if len(own) == len(shape):
            # Dimensions the nested model leaves open stay open: a shared model (a detection
            # head) may be called on inputs of several sizes.
            shape = [None if o is None else d for d, o in zip(shape, own)]
        if not c.frozen:
            shape[c.axis] = int(plan.keep(c.atoms).sum())
        inputs.append(keras.Input(batch_shape=tuple(shape), dtype=t.dtype))
    return inputs


def rebuild(plan: Plan) -> keras.Model:
    """Build the smaller model that `plan` describes (the original is untouched)."""
    graph = plan.graph
    pairs = []
    swapped: list = []
    cache: dict[int, object] = {}

    def clone_function(layer):
        if id(layer) in cache:
            return cache[id(layer)]
        key = graph._by_id.get(id(layer))
        if functional_of(layer) is not None:
            inputs = _nested_inputs(plan, key, layer)
            if inputs is not None:
                struct = inputs[0] if isinstance(layer, keras.Sequential) else _keras.inputs_struct(layer)
                inputs = inputs[0] if isinstance(layer, keras.Sequential) else tree.pack_sequence_as(struct, inputs)
            new = keras.models.clone_model(layer, input_tensors=inputs, clone_function=clone_function)
        else:
            rec = graph.records.get(key) if key else None
            # The config comes from the caller's live model, not from a file: a `Lambda`'s
            # Python function may be rebuilt (Keras refuses it in its default safe mode).
            with _keras.trusted_deserialization():
                new = layer.__class__.from_config(new_config(plan, rec, layer))
            if isinstance(layer, keras.layers.Lambda):
                # The live function keeps its globals and closure (`ops`, `tf`, constants); the
                # one rebuilt from the config's bytecode loses them and fails when called.
                new.function = layer.function
            if getattr(layer, "weights", None):
                _defer_initializers(new, swapped)
            pairs.append((layer, new, rec))
        cache[id(layer)] = new
        return new

    try:
        new_model = keras.models.clone_model(graph.model, clone_function=clone_function)
    except PruningError:
        raise
    except Exception as e:  # a layer refused its new config or input shape
        raise PruningError(f"Rebuilding the pruned model failed: {type(e).__name__}: {e}") from e
    finally:
        _restore_initializers(swapped)
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


def remove_filters(
    model, selection: Plan | Mapping, *, graph: ChannelGraph | None = None, channelwise: Iterable[str] = ()
) -> keras.Model:
    """Return a new, smaller model without the selected filters.

    Every layer coupled to the selected channels is updated: the producers'
    filters, following BatchNorm/PReLU parameters, residual partners (`Add`),
    concatenation offsets, `Flatten`→`Dense` rows, depthwise channels, and the
    input weights of every consumer. The input model is never modified.

    Args:
        model: A built Functional or Sequential `keras.Model`.
        selection: `{layer or layer name: indices}` where indices is a sequence
            of ints (negatives allowed) or a boolean mask of the layer's width
            (True = remove). A `kerasprune.Selection` or a `kerasprune.Plan`
            (from `make_plan`, `select`, `sensitivity`) works as is.
        graph: A `ChannelGraph` of `model` to reuse (from `analyze`).
        channelwise: Names of layers (e.g. `Lambda`s) to treat as element-wise,
            as in `analyze`; used when `graph` is not given.

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
    if isinstance(selection, Plan) and graph is None:
        graph = selection.graph
    graph = graph_for(model, graph, channelwise=channelwise)
    plan = make_plan(graph, selection)
    new_model = rebuild(plan)
    log.info("kerasprune.remove_filters: %s", plan.summary())
    return new_model
