"""Tracing: turning a composite layer's `call` into a Functional graph.

A *composite* layer is a `Layer` (or a subclassed `Model`) whose `call` uses
other layers and `keras.ops`: keras_hub's inverted-residual and MBConv blocks,
ASPP, a user's residual block. kerasprune has no rule for it, but it does not
need one: run on fresh `keras.Input` tensors of the shapes it is called with,
its `call` records the inner graph of sublayers and operations, and
`keras.Model(inputs, outputs)` turns that into a Functional graph that shares
the layer's sublayers (and so their variables). The analysis, FLOPs counting and
the activation runner walk that graph as they walk a nested model
(`traversal.inner_graph`); removal replaces the layer by its pruned graph.

A trace is kept only when it is faithful. It is refused, with the reason, when
the layer owns weights that no traced sublayer holds (a class token, a
per-channel scale used directly in `call`), when `call` cannot run on symbolic
tensors (Python control flow on tensor values, backend or NumPy functions
instead of `keras.ops`), when tracing would build (create) weights, when the
outputs are not tensors matching the layer's own, and when the traced graph
computes something else than the layer on a random input (checked once per
layer and input signature). A registered rule always wins; Keras's own layers
are never traced (they get rules).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import tree

from kerasprune import _keras
from kerasprune.errors import PruningError, describe
from kerasprune.rules.registry import find_rule

log = logging.getLogger(__name__)

#: Relative tolerance of the numerical check (trace vs the layer's own call).
CHECK_TOL = 1e-5

HINT = "register a rule with kerasprune.register_rule to make it prunable"


@dataclass(frozen=True)
class Trace:
    """The traced graph of one layer for one input signature.

    Attributes:
        layer: The traced layer (a composite `Layer` or a subclassed `Model`).
        model: A Functional model with one `Input` per input tensor of the call
            (in the order of the node's input tensors) and the call's outputs,
            flattened; it shares the layer's sublayers. `None` when refused.
        reason: Why the layer could not be traced faithfully, or `None`.
        branches_on_training: Its call builds another graph when training (a Python
            branch on `training`, e.g. stochastic depth): the trace is the inference path.
    """

    layer: Any
    model: keras.Model | None
    reason: str | None = None
    branches_on_training: bool = False

    @property
    def ok(self) -> bool:
        return self.model is not None


#: layer -> {signature: Trace}; weak, so traces die with their layers.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def is_keras_class(obj) -> bool:
    """Whether `obj`'s class is one of Keras's own (`keras.*` modules)."""
    module = type(obj).__module__ or ""
    return module == "keras" or module.startswith("keras.")


def traceable(op) -> bool:
    """Whether kerasprune traces `op`: a layer or subclassed model, not Keras's own, with no rule.

    Functional and Sequential models are expanded as nested models, not traced.
    """
    if not isinstance(op, keras.layers.Layer) or is_keras_class(op):
        return False
    if _keras.functional_of(op) is not None:
        return False
    return find_rule(op) is None


def trace_node(op, node) -> Trace:
    """The trace of `op` at `node` of a Functional graph (cached per layer and input signature)."""
    tensors = list(node.input_tensors)
    args, kwargs = _keras.call_arguments(node)
    signature = _signature(tensors, args, kwargs)
    cached = _cache_of(op).get(signature)
    if cached is None:
        inputs = [keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype) for t in tensors]
        cached = _trace(op, args, kwargs, inputs, expected=[tuple(t.shape) for t in node.outputs])
        _cache_of(op)[signature] = cached
    return cached


def trace_calls(op, nodes) -> Trace:
    """One trace of `op` valid for every call in `nodes`: dimensions that differ between calls are None.

    A layer shared across calls of different input shapes (a detector's prediction
    head applied to every pyramid level) is replaced in the pruned model by one
    graph; it is traced on `Input`s that accept every call's shapes, and checked on
    the first call's.
    """
    first = trace_node(op, nodes[0])
    shapes = [[tuple(t.shape) for t in n.input_tensors] for n in nodes]
    if all(s == shapes[0] for s in shapes[1:]) or not first.ok:
        return first
    general = [tuple(d if all(s[i][j] == d for s in shapes) else None for j, d in enumerate(shape))
               for i, shape in enumerate(shapes[0])]  # fmt: skip
    outs = [[tuple(t.shape) for t in n.outputs] for n in nodes]
    expected = [tuple(d if all(o[i][j] == d for o in outs) else None for j, d in enumerate(shape))
                for i, shape in enumerate(outs[0])]  # fmt: skip
    args, kwargs = _keras.call_arguments(nodes[0])
    signature = ("general", repr(general), _signature(list(nodes[0].input_tensors), args, kwargs)[1])
    cached = _cache_of(op).get(signature)
    if cached is None:
        inputs = [keras.Input(batch_shape=g, dtype=t.dtype) for g, t in zip(general, nodes[0].input_tensors)]
        cached = _trace(op, args, kwargs, inputs, expected=expected)
        _cache_of(op)[signature] = cached
    return cached


def trace_model(model) -> Trace:
    """The trace of a subclassed `keras.Model`, called on `Input`s of its build shapes (cached).

    Returns a `Trace` whose reason says why when the model cannot be traced
    (never built, unknown input shapes, or one of `trace_node`'s reasons).
    """
    shapes = _build_shapes(model)
    if isinstance(shapes, str):
        return Trace(model, None, shapes)
    unbuilt = [sub.name for sub in _keras.sublayers(model) if _builds_weights_later(sub)]
    if unbuilt and not model.weights:  # `model.build(shape)` on a model without a build() of its own
        return Trace(
            model, None, f"its sublayer '{unbuilt[0]}' is not built, and tracing would build it (create "
            "weights); call the model on data once first"
        )  # fmt: skip
    signature = ("model", repr(shapes))
    cached = _cache_of(model).get(signature)
    if cached is None:
        inputs = [keras.Input(batch_shape=(None,) + tuple(s[1:])) for s in shapes]
        arg = inputs[0] if len(inputs) == 1 else list(inputs)
        cached = _trace(model, (arg,), {}, inputs, expected=None)
        _cache_of(model)[signature] = cached
    return cached


def model_graph(model) -> keras.Model:
    """The Functional graph of a top-level model: itself, a Sequential's graph, or a subclassed model's trace.

    Raises:
        PruningError: not a built model, or a subclassed model that cannot be traced
            (the message says why).
    """
    if not isinstance(model, keras.Model):
        raise PruningError(
            f"kerasprune needs a built Functional, Sequential or subclassed keras.Model. "
            f"Received: {type(model).__name__}"
        )
    try:
        fn = _keras.functional_of(model)
    except ValueError as e:
        raise PruningError(str(e)) from None
    if fn is not None:
        return fn
    traced = trace_model(model)
    if not traced.ok:
        raise PruningError(f"Subclassed model {describe(model)} cannot be analyzed: {traced.reason}")
    return traced.model


def refusal(op, node) -> str | None:
    """Why `op` at `node` was not traced (None when it was, or when it is not a candidate)."""
    if not traceable(op):
        return None
    return trace_node(op, node).reason


# -- tracing -----------------------------------------------------------------------------------
def _cache_of(layer) -> dict:
    try:
        return _CACHE.setdefault(layer, {})
    except TypeError:  # an unhashable or non-weakref-able layer: no cache
        return {}


def _signature(tensors, args, kwargs) -> tuple:
    shapes = tuple((tuple(t.shape), str(t.dtype)) for t in tensors)
    rest = tree.map_structure(lambda x: "<tensor>" if isinstance(x, _keras.KerasTensor) else x, (args, kwargs))
    try:
        return shapes, repr(rest)
    except Exception:  # pragma: no cover - an argument without a repr
        return shapes, id(args)


def _positional_fill(args, kwargs, values: list):
    """`(args, kwargs)` with the i-th symbolic tensor (flatten order) replaced by `values[i]`."""
    it = iter(values)
    fill = lambda x: next(it) if isinstance(x, _keras.KerasTensor) else x  # noqa: E731
    return tree.map_structure(fill, args), tree.map_structure(fill, kwargs)


def _trace(layer, args, kwargs, inputs: list, expected: list | None) -> Trace:
    """Run `layer.call` on `inputs`, wrap the result in a Functional model, check it is faithful."""
    name = describe(layer)
    if not layer.built:
        return Trace(layer, None, f"it is not built; call it on data once before pruning ({HINT})")
    before = {id(v) for v in layer.variables}
    targs, tkwargs = _positional_fill(args, kwargs, inputs)
    try:
        result = layer.call(*targs, **tkwargs)
    except Exception as e:
        return Trace(layer, None, _why_call_failed(e))
    if any(id(v) not in before for v in layer.variables):
        return Trace(
            layer, None, f"tracing its call created weights (a sublayer was not built); build the model first ({HINT})"
        )
    flat = tree.flatten(result)
    if not flat or not all(isinstance(t, _keras.KerasTensor) for t in flat):
        kinds = sorted({type(t).__name__ for t in flat if not isinstance(t, _keras.KerasTensor)})
        return Trace(layer, None, f"its call returns values that are not symbolic tensors ({kinds}) ({HINT})")
    if expected is not None:
        got = [tuple(t.shape) for t in flat]
        if len(got) != len(expected) or any(not _same_shape(a, b) for a, b in zip(got, expected)):
            return Trace(
                layer,
                None,
                f"its traced call returns tensors of shapes {got}, not the {expected} the layer returns "
                f"(nested outputs that do not round-trip) ({HINT})",
            )
    try:
        model = keras.Model(inputs[0] if len(inputs) == 1 else list(inputs), flat[0] if len(flat) == 1 else flat,
                            name=layer.name)
    except Exception as e:
        return Trace(layer, None, f"its traced call does not form a Functional graph ({type(e).__name__}: {e}) ({HINT})")
    for _ in range(8):  # a rewritten reshape makes the shapes after it known: maybe more to rewrite
        if not _fill_batch_reshapes(model):
            break
        try:  # the same layers and operations, called again: the shapes after the rewritten reshapes
            model = keras.models.clone_model(model, clone_function=lambda op: op)
        except Exception as e:
            return Trace(layer, None, f"its traced call does not form a Functional graph ({type(e).__name__}: {e}) ({HINT})")
    own = _own_weights(layer, model)
    if own:
        names = ", ".join(f"'{n}'" for n in own[:4]) + (" ..." if len(own) > 4 else "")
        return Trace(
            layer,
            None,
            f"it owns weights {names} used directly in call (not through a sublayer), so channels "
            f"cannot be traced through them ({HINT})",
        )
    try:
        diff = _check(layer, args, kwargs, model)
    except Exception as e:
        log.debug("numerical check of the trace of %s failed", name, exc_info=True)
        return Trace(layer, None, f"its trace could not be checked on a random input ({type(e).__name__}: {e}) ({HINT})")
    if diff > CHECK_TOL:
        return Trace(
            layer,
            None,
            f"its traced graph computes something else than its call on a random input (relative "
            f"difference {diff:.2e}: state, randomness or Python-side effects in call) ({HINT})",
        )
    log.debug("traced %s: %d nodes, check %.1e", name, len(list(_keras.nodes_in_order(model))), diff)
    return Trace(layer, model, branches_on_training=_branches_on_training(layer, args, kwargs, inputs, model))


_RESHAPE = tuple(_keras.op_classes("numpy", ["Reshape"]))


def _fill_batch_reshapes(model) -> bool:
    """Give traced `ops.reshape` calls a batch size of -1 where the trace left `None`.

    `ops.reshape(x, (ops.shape(x)[0], ...))` (keras_hub's SegFormer attention and MixFFN)
    runs on real tensors with the real batch size; traced on symbolic ones, `ops.shape(x)[0]`
    is `None`, which the traced graph cannot run. When the leading entry of the target is
    `None`, the input's batch size is unknown and every other entry is known (a -1 there is
    worked out from the input's other dimensions, the batch staying the batch), the target
    becomes `(-1, ...)`. The numerical check of the trace then verifies the rewrite.
    Returns whether a target was rewritten.
    """
    changed = False
    for node in _keras.nodes_in_order(model):
        op = node.operation
        if not isinstance(op, _RESHAPE) or len(node.input_tensors) != 1:
            continue
        shape, src = op.newshape, tuple(node.input_tensors[0].shape)
        if not isinstance(shape, (list, tuple)) or not shape or shape[0] is not None or not src or src[0] is not None:
            continue
        rest = list(shape[1:])
        if None in rest or None in src[1:] or not all(isinstance(d, (int, np.integer)) for d in rest):
            continue
        if rest.count(-1) == 1:
            known = int(np.prod([d for d in rest if d != -1]))
            size = int(np.prod(src[1:]))
            if known == 0 or size % known:
                continue
            rest[rest.index(-1)] = size // known
        elif rest.count(-1) > 1:
            continue
        _keras.set_op_argument(op, "newshape", tuple([-1] + [int(d) for d in rest]))
        changed = True
    return changed


def _op_kinds(model) -> list[str]:
    return [type(n.operation).__name__ for n in _keras.nodes_in_order(model) if not n.is_input]


def _branches_on_training(layer, args, kwargs, like: list, model) -> bool:
    """Whether tracing `layer` in training mode gives another graph than `model` (its inference trace)."""
    inputs = [keras.Input(batch_shape=tuple(t.shape), dtype=t.dtype) for t in like]
    targs, tkwargs = _positional_fill(args, kwargs, inputs)
    if "training" in _call_params(layer):
        tkwargs = {**tkwargs, "training": True}
    try:
        with _keras.call_context(training=True):
            result = tree.flatten(layer.call(*targs, **tkwargs))
        other = keras.Model(inputs, result)
    except Exception:  # it cannot even be traced for training: it surely differs
        return True
    return _op_kinds(other) != _op_kinds(model)


#: Keras layer areas whose layers never create weights (merges, reshapes, pooling, ...).
_WEIGHTLESS_AREAS = ("merging", "reshaping", "pooling", "activations", "regularization", "preprocessing")


def _builds_weights_later(layer) -> bool:
    """An unbuilt sublayer that may create weights when first called.

    Inside a Functional graph every sublayer a composite's `call` uses was built when
    the graph was made (an unbuilt one is one `call` never uses: keras_hub's
    FusedMBConv keeps squeeze-excite convs it does not call); a subclassed model that
    was only `build()`-marked has them all unbuilt. Keras's merging, reshaping and
    pooling layers never create weights.
    """
    if layer.built:
        return False
    return not _keras.in_layer_area(layer, _WEIGHTLESS_AREAS)


def _same_shape(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def _why_call_failed(e: Exception) -> str:
    msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    text = str(e)
    if "cannot be used as a boolean" in text or "Iterating over a symbolic" in text:
        what = "its call uses Python control flow on tensor values (e.g. `if x > 0:`), which cannot be traced"
    elif "JAX function" in text or "TensorFlow function" in text or "not KerasTensor" in text or (
        "placeholder for a shape" in text
    ):
        what = "its call uses backend or NumPy functions directly instead of keras.ops, which cannot be traced"
    elif "Attempt to convert a value (None)" in text:
        what = (
            "its call uses a dimension that is unknown on symbolic tensors (the batch size, "
            "`ops.shape(x)[0]`, is None) as a value, e.g. in a shape for keras.random or a constant "
            "(a traced graph cannot hold it)"
        )
    else:
        what = "its call cannot be run on symbolic tensors"
    return f"{what} ({msg}); {HINT}"


def _own_weights(layer, model) -> list[str]:
    """Paths of `layer`'s weights that no layer of the traced graph holds."""
    held = {id(v) for sub in _all_layers(model) for v in sub.weights}
    return [v.path for v in layer.weights if id(v) not in held]


def _all_layers(model):
    for sub in model.layers:
        yield sub
        inner = _keras.functional_of(sub)
        if inner is not None:
            yield from _all_layers(sub)


def _random_value(t, rng):
    shape = tuple(2 if i == 0 and d is None else (8 if d is None else int(d)) for i, d in enumerate(t.shape))
    dtype = str(t.dtype)
    if "int" in dtype:
        return rng.integers(0, 2, shape).astype(dtype)
    if "bool" in dtype:
        return rng.random(shape) < 0.5
    return rng.normal(size=shape).astype(dtype)


def _check(layer, args, kwargs, model) -> float:
    """Largest relative difference between the layer's call and its trace on a random input."""
    rng = np.random.default_rng(0)
    tensors = [x for x in tree.flatten((args, kwargs)) if isinstance(x, _keras.KerasTensor)]
    by_id: dict[int, Any] = {}
    values = [by_id.setdefault(id(t), _random_value(t, rng)) for t in tensors]
    cargs, ckwargs = _positional_fill(args, kwargs, [keras.ops.convert_to_tensor(v) for v in values])
    if "training" in _call_params(layer):
        ckwargs = {**ckwargs, "training": False}
    with _keras.call_context(training=False):
        want = tree.flatten(layer(*cargs, **ckwargs))
    got = tree.flatten(model(values[0] if len(values) == 1 else list(values), training=False))
    worst = 0.0
    for a, b in zip(want, got):
        a, b = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        if a.shape != b.shape:
            return float("inf")
        if a.size:
            scale = max(1.0, float(np.abs(a).max()))
            worst = max(worst, float(np.abs(a.astype(np.float64) - b).max()) / scale)
    return worst if len(want) == len(got) else float("inf")


def _call_params(layer) -> set:
    import inspect

    try:
        return set(inspect.signature(layer.call).parameters)
    except (TypeError, ValueError):  # pragma: no cover
        return set()


def _build_shapes(model):
    """Input shapes of a built subclassed model (a list), or a reason why they are unknown."""
    if not model.built:
        return (
            "it is not built; call it once on data or build it with model.build(input_shape) so that "
            "its input shapes are known"
        )
    shapes = _keras.build_shapes(model)
    if not shapes:
        return "its input shapes are unknown; build it with model.build(input_shape) first"
    if len(shapes) != 1:
        return f"its call takes several arguments {sorted(shapes)}; kerasprune traces a single input argument"
    shape = next(iter(shapes.values()))
    if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)):
        return [tuple(s) for s in shape]
    if isinstance(shape, dict):
        return f"its input is a dict {sorted(shape)}; kerasprune traces tensor or list inputs"
    return [tuple(shape)]
