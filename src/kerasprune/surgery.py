"""Physical removal: a new, smaller model built with Keras's own cloning.

`keras.models.clone_model(..., clone_function=..., recursive=True)` re-creates
every layer; layers whose channels change get a config with the new widths
(from their rule), and every layer receives the original's weights with the
removed positions deleted (`np.compress` along each channel-indexed axis). Each
layer is rebuilt once, however many groups touch it.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterable, Mapping

import keras
import numpy as np
from keras import tree

from kerasprune import _keras, tracing
from kerasprune.errors import PruningError
from kerasprune.graph import CallRecord, ChannelGraph, LayerRecord, functional_of, graph_for
from kerasprune.plan import Plan, make_plan
from kerasprune.rules.base import NodeIO, Rule

log = logging.getLogger(__name__)


def _io(plan: Plan, call: CallRecord, rec: LayerRecord | None = None) -> NodeIO:
    return NodeIO(
        inputs=[None if a is None else plan.keep(a) for a in call.inputs],
        outputs=[None if a is None else plan.keep(a) for a in call.outputs],
        in_axes=list(call.in_axes),
        out_axes=list(call.out_axes),
        parts={} if rec is None else {name: plan.keep(a) for name, a in rec.parts.items()},
    )


def new_config(plan: Plan, rec: LayerRecord | None, layer) -> dict:
    """The config of `layer` in the model `plan` builds (its rule's `rebuild_config`)."""
    config = _keras.config_of(layer)
    if rec is None or rec.rule is None or rec.barrier or not rec.calls:
        return config
    if not plan.touches([a for call in rec.calls for a in call.atoms()] + list(rec.parts.values())):
        return config
    ios = [_io(plan, call, rec) for call in rec.calls]
    counts = {tuple(None if k is None else int(k.sum()) for k in io.inputs + io.outputs) for io in ios}
    new = rec.rule.rebuild_config(layer, config, ios[0])
    # A shared layer is rebuilt once: fine when every call asks for the same config
    # (a weightless `Dropout` applied to tensors of different widths).
    if len(counts) > 1 and any(rec.rule.rebuild_config(layer, config, io) != new for io in ios[1:]):
        raise PruningError(
            f"Layer '{rec.key}' ({type(layer).__name__}) is shared between calls that would lose "
            "different numbers of channels; it cannot be rebuilt for both"
        )
    return new


def _new_weights(plan: Plan, rec: LayerRecord | None, layer) -> list:
    """The layer's weights with removed positions deleted.

    Untouched variables are passed on as backend tensors (`variable.value`): no
    host copy; only the sliced ones go through NumPy, one variable at a time.
    """
    variables = _keras.weights_of(layer)
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
    if rec.rule is not None and not rec.barrier and rec.calls:
        weights = rec.rule.rebuild_weights(layer, weights, _io(plan, rec.calls[0], rec))
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


def _nested_inputs(plan: Plan, key: str | None, model, shapes: list | None = None) -> list | None:
    """New `Input`s for a nested model (or traced layer) whose input channels shrink.

    `shapes` overrides the recorded input shapes (a traced layer's general trace).
    """
    calls = plan.graph.nested.get(key or "", [])
    if not calls:
        return None
    recorded, chans = calls[0]
    shapes = recorded if shapes is None else shapes
    inputs = []
    for shape, c, t in zip(shapes, chans, model.inputs):
        shape = list(shape)
        if not c.frozen:
            shape[c.axis] = int(plan.keep(c.atoms).sum())
        inputs.append(keras.Input(batch_shape=tuple(shape), dtype=t.dtype))
    return inputs


class _RuleCall:
    """A rebuilt operation called through its rule's `rebuild_call` (one `NodeIO` per call)."""

    def __init__(self, op, rule: Rule, ios: list[NodeIO]):
        self.op, self.rule, self.ios, self.calls = op, rule, ios, 0

    def __call__(self, *args, **kwargs):
        io = self.ios[min(self.calls, len(self.ios) - 1)]
        self.calls += 1
        return self.rule.rebuild_call(self.op, args, kwargs, io)


def _with_call_rule(plan: Plan, rec: LayerRecord | None, new):
    """`new`, or a wrapper calling it through its rule when the rule rewrites call arguments."""
    if rec is None or rec.rule is None or rec.barrier or not rec.calls:
        return new
    if type(rec.rule).rebuild_call is Rule.rebuild_call or isinstance(new, keras.layers.Layer):
        return new
    if not plan.touches([a for call in rec.calls for a in call.atoms()]):
        return new
    return _RuleCall(new, rec.rule, [_io(plan, call) for call in rec.calls])


def rebuild(plan: Plan) -> keras.Model:
    """Build the smaller model that `plan` describes (the original is untouched).

    Layers are re-created from their (new) configs. A composite layer that the
    analysis traced (`kerasprune.tracing`) is replaced by its traced, pruned graph
    of plain Keras layers (a nested Functional model named like the layer) when the
    plan touches it; an untouched one is re-created as its own class, or replaced
    by its traced graph when its class cannot be re-created from its config.
    """
    graph = plan.graph
    pairs = []
    swapped: list = []
    cache: dict[int, object] = {}
    affected = set(plan.affected_layers)
    replacements: dict[str, keras.Model] = {}  # key of a traced layer -> its pruned graph
    replacing: set[int] = set()

    def clone_nested(model, key, source=None, shapes=None):
        source = model if source is None else source
        inputs = _nested_inputs(plan, key, source, shapes)
        if inputs is not None:
            struct = inputs[0] if isinstance(source, keras.Sequential) else _keras.inputs_struct(source)
            inputs = inputs[0] if isinstance(source, keras.Sequential) else tree.pack_sequence_as(struct, inputs)
        extra = {} if isinstance(source, keras.Sequential) else {"call_function": call_function}
        return keras.models.clone_model(source, input_tensors=inputs, clone_function=clone_function, **extra)

    def replacement(layer, key: str) -> keras.Model:
        """The traced graph of `layer`, cloned and pruned: one model for every call of the layer."""
        if key not in replacements:
            traces = graph.traced[key]
            fn, shapes = traces[0], None
            if any(t is not fn for t in traces[1:]):  # calls of different shapes: one general trace
                general = tracing.trace_calls(layer, graph.traced_nodes[key])
                if not general.ok:
                    raise PruningError(
                        f"Layer '{key}' ({type(layer).__name__}) is called on inputs of different shapes and "
                        f"cannot be traced for all of them: {general.reason}"
                    )
                fn, shapes = general.model, [tuple(t.shape) for t in general.model.inputs]
            replacements[key] = clone_nested(layer, key, source=fn, shapes=shapes)
            replacing.add(id(replacements[key]))
            if tracing.trace_node(layer, graph.traced_nodes[key][0]).branches_on_training:
                log.warning(
                    "Layer '%s' (%s) is replaced by its traced graph, which follows its inference path: its "
                    "call builds another graph when training (a Python branch on `training`, such as "
                    "stochastic depth), so the pruned model trains without that branch. Register a rule for "
                    "%s to keep the layer itself.", key, type(layer).__name__, type(layer).__name__,
                )  # fmt: skip
        return replacements[key]

    def call_function(op, *args, **kwargs):
        if id(op) not in replacing:
            return op(*args, **kwargs)
        # The traced graph takes the layer's input tensors only (its other arguments are traced in).
        tensors = [x for x in tree.flatten((args, kwargs)) if isinstance(x, _keras.KerasTensor)]
        return op(tensors[0] if len(tensors) == 1 else tensors)

    def clone_function(layer):
        if id(layer) in cache:
            return cache[id(layer)]
        key = graph._by_id.get(id(layer))
        if key in graph.traced:
            new = _clone_traced(plan, layer, key, affected, lambda: replacement(layer, key), pairs, swapped)
        elif _keras.functional_of(layer) is not None:
            new = clone_nested(layer, key)
        else:
            rec = graph.records.get(key) if key else None
            new = _with_call_rule(plan, rec, _recreate(plan, rec, layer, pairs, swapped))
        cache[id(layer)] = new
        return new

    # A subclassed model is cloned from its trace: the result is a Functional model.
    source = graph.model if _keras.is_graph_model(graph.model) else functional_of(graph.model)
    extra = {} if isinstance(source, keras.Sequential) else {"call_function": call_function}
    try:
        new_model = keras.models.clone_model(source, clone_function=clone_function, **extra)
    except PruningError:
        raise
    except Exception as e:  # a layer refused its new config or input shape
        raise PruningError(f"Rebuilding the pruned model failed: {type(e).__name__}: {e}") from e
    finally:
        _restore_initializers(swapped)
    for layer, new, rec in pairs:
        if not _keras.weights_of(layer):
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


def _recreate(plan: Plan, rec: LayerRecord | None, layer, pairs: list, swapped: list, fallback=None):
    """`layer` re-created from its new config (weights are set after cloning).

    A layer that cannot be re-created and that the plan does not change is kept:
    `fallback()` (a traced layer's graph) when given, else the original layer
    object itself, shared with the original model (a warning says so when it has weights).
    """
    config = new_config(plan, rec, layer)
    try:
        # The config comes from the caller's live model, not from a file: a `Lambda`'s
        # Python function may be rebuilt (Keras refuses it in its default safe mode).
        new = _keras.recreate(layer, config)
    except Exception as e:
        changed = config != _keras.config_of(layer)
        if changed or (rec is not None and any(not plan.keep(s.atoms).all() for s in rec.slices)):
            raise PruningError(
                f"Layer '{getattr(rec, 'key', layer.name)}' ({type(layer).__name__}) cannot be re-created from "
                f"its config: {type(e).__name__}: {e}"
            ) from e
        if fallback is not None:
            return fallback()
        if _keras.weights_of(layer):
            log.warning(
                "Layer '%s' (%s) cannot be re-created from its config (%s: %s); the pruned model reuses the "
                "original layer object, so it shares its %d weights with the original model (training one "
                "changes the other). Make its __init__ accept every key of its get_config() to get a copy.",
                layer.name, type(layer).__name__, type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else "",
                len(layer.weights),
            )  # fmt: skip
        return layer
    if _keras.weights_of(layer):
        _defer_initializers(new, swapped)
    pairs.append((layer, new, rec))
    return new


def _clone_traced(plan: Plan, layer, key: str, affected: set, replace, pairs: list, swapped: list):
    """A traced composite layer in the new model: its pruned graph when touched, else a copy."""
    inside = key + "/"
    touched = any(k.startswith(inside) for k in affected) or any(
        not c.frozen and not plan.keep(c.atoms).all()
        for _, chans in plan.graph.nested.get(key, [])
        for c in chans
    )
    if touched or not _reloads(layer):
        return replace()
    return _recreate(plan, None, layer, pairs, swapped, fallback=replace)


def _reloads(layer) -> bool:
    """Whether `layer` can be rebuilt the way `keras.saving.load_model` rebuilds it.

    Loading re-creates a layer from its config and builds it from its saved
    `build_config`, whose shapes come back from JSON as lists. keras_hub's
    `SpatialPyramidPooling.build` adds a tuple to that list and fails, so a model
    holding it as a plain layer saves but does not load; such a traced layer is
    replaced by its traced graph even when the plan leaves it untouched.
    """
    build_config = layer.get_build_config() if hasattr(layer, "get_build_config") else None
    if not build_config:
        return True
    try:
        copy = _keras.recreate(layer, _keras.config_of(layer))
        with warnings.catch_warnings():  # a layer without build() of its own warns here
            warnings.simplefilter("ignore")
            copy.build_from_config(json.loads(json.dumps(build_config)))
    except Exception:
        log.debug("traced layer %s does not reload from its config", layer.name, exc_info=True)
        return False
    return True


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
