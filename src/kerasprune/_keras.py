"""Every use of Keras internals, in one place.

kerasprune reads the symbolic graph of Functional models, looks up `keras.ops`
operation classes to give them rules, and rebuilds layers from trusted, live
configs. None of that is public Keras API. Every private attribute, every
`keras.src` import and every looked-up class goes through this module, so a
Keras upgrade that renames one breaks one place, and `missing()` (checked by the
test suite) names what broke instead of silently turning ops into barriers.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Iterator

import keras
from keras.src.backend import KerasTensor
from keras.src.backend.common import global_state
from keras.src.layers.layer import CallContext
from keras.src.ops.operation import Operation
from keras.src.saving.serialization_lib import SafeModeScope

__all__ = [
    "KerasTensor",
    "Operation",
    "activation_classes",
    "application_class",
    "attention_gate",
    "build_shapes",
    "call_arguments",
    "call_context",
    "config_of",
    "set_op_argument",
    "export_input_signature",
    "fill_in",
    "functional_of",
    "inbound_nodes",
    "inputs_struct",
    "is_graph_model",
    "missing",
    "nodes_in_order",
    "op_classes",
    "producer_of",
    "recreate",
    "sublayers",
    "trusted_deserialization",
    "weights_of",
]

#: Names looked up but not found in the installed Keras ("module.Name").
_MISSING: list[str] = []


def _lookup(module: str, name: str):
    try:
        mod = importlib.import_module(module)
    except ImportError:
        _MISSING.append(f"{module}.{name}")
        return None
    obj = getattr(mod, name, None)
    if obj is None:
        _MISSING.append(f"{module}.{name}")
    return obj


def op_classes(area: str, names) -> list[type]:
    """The `keras.src.ops.<area>` operation classes called `names` (those that exist).

    A name the installed Keras lacks is recorded for `missing()` and skipped.
    """
    found = [_lookup(f"keras.src.ops.{area}", n) for n in names]
    return [c for c in found if c is not None]


def in_layer_area(layer, areas) -> bool:
    """Whether `layer`'s class is one of Keras's own, from one of the `keras.src.layers.<area>`
    packages (e.g. `"merging"`, `"pooling"`)."""
    module = type(layer).__module__ or ""
    return any(module.startswith(f"keras.src.layers.{area}") for area in areas)


def activation_classes(names) -> list[type]:
    """The operation classes that `keras.activations` functions create on symbolic tensors.

    `keras.activations.relu(x)` and `mish(x)` record their own `ReLU`/`Mish` operations
    (in `keras.src.activations.activations`), not `keras.ops.nn`'s.
    """
    found = [_lookup("keras.src.activations.activations", n) for n in names]
    return [c for c in found if c is not None]


def application_class(module: str, name: str):
    """A layer class defined inside `keras.applications` (e.g. ConvNeXt's `LayerScale`), or None."""
    return _lookup(f"keras.src.applications.{module}", name)


def attention_gate(layer):
    """A `MultiHeadAttention`'s gate projection (`use_gate=True` where Keras has it), or None."""
    return getattr(layer, "_gate_dense", None) if getattr(layer, "_use_gate", False) else None


# -- the symbolic graph -------------------------------------------------------------------------
def weights_of(op) -> list:
    """The variables of the operation behind a graph node, in `layer.weights` order.

    A node's operation is a `keras.layers.Layer` or a plain `keras.Operation` (a
    `keras.ops` call on a symbolic tensor: `ops.relu(x)`, `x * 0.5`, `x[..., :8]`),
    which has no variables and no `weights` attribute. Every pass over the graph
    reads variables through this accessor.
    """
    return list(op.weights) if isinstance(op, keras.layers.Layer) else []


def functional_of(op):
    """The Functional graph behind a nested model, or None for a plain layer or operation.

    Raises:
        ValueError: `op` is a Sequential model that was never built.
    """
    if isinstance(op, keras.Sequential):
        fn = getattr(op, "_functional", None)
        if fn is None:
            raise ValueError(f"Sequential model '{op.name}' is not built; build it first")
        return fn
    if isinstance(op, keras.Model) and hasattr(op, "_nodes_by_depth"):
        return op
    return None


def is_graph_model(model) -> bool:
    """Whether a `keras.Model` is Functional or Sequential (has a symbolic graph), not subclassed."""
    return isinstance(model, keras.Sequential) or hasattr(model, "_nodes_by_depth")


def nodes_in_order(fn) -> Iterator:
    """The nodes of a Functional graph in topological order (inputs first)."""
    by_depth = fn._nodes_by_depth
    for depth in sorted(by_depth, reverse=True):
        yield from by_depth[depth]


def set_op_argument(op, name: str, value) -> None:
    """Change the constructor argument `name` of a `keras.ops` operation: its attribute and its config.

    An operation's `get_config()` comes from the arguments its `__init__` was called
    with (`_auto_config`), so the config, and any copy made from it, follows.
    """
    setattr(op, name, value)
    auto = getattr(op, "_auto_config", None)
    if auto is not None:
        from keras.src.saving.serialization_lib import SerializableDict

        op._auto_config = SerializableDict(**{**auto.config, name: value})


def call_arguments(node) -> tuple[tuple, dict]:
    """The positional and keyword arguments a node was called with (tensors symbolic)."""
    return tuple(node.arguments.args), dict(node.arguments.kwargs)


def fill_in(node, values: dict) -> tuple[list, dict]:
    """A node's call arguments with its input tensors replaced by `values[id(tensor)]`."""
    return node.arguments.fill_in(values)


def inbound_nodes(op) -> list:
    """The nodes at which a layer or operation was called (one per call, in call order)."""
    return list(getattr(op, "_inbound_nodes", None) or [])


def producer_of(tensor):
    """The operation that produced a symbolic tensor (None for an `Input`)."""
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else history.operation


def inputs_struct(model):
    """The nested structure of a Functional model's inputs (list, dict or a single tensor)."""
    if isinstance(model, keras.Sequential):
        return None
    return model._inputs_struct


def sublayers(layer) -> list:
    """Every layer inside `layer` (recursively), not `layer` itself."""
    return list(layer._flatten_layers(include_self=False, recursive=True))


def build_shapes(layer) -> dict | None:
    """The shapes a built layer or subclassed model was built with (`{"input_shape": ...}`), or None."""
    return getattr(layer, "_build_shapes_dict", None)


@contextlib.contextmanager
def trusted_deserialization():
    """Allow `from_config` to rebuild Python code (a `Lambda`'s function).

    Used only on configs taken from the caller's live model, never from a file.
    """
    with SafeModeScope(False):
        yield


# -- re-creating layers from their configs --------------------------------------------------
_BASE_KEYS = ("name", "trainable", "dtype")


def _own_init_params(cls) -> list[str] | None:
    """Named `__init__` parameters of `cls` beyond a base layer's (None if unknown)."""
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover - a C-level __init__
        return None
    named = [
        n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    return [n for n in named if n not in _BASE_KEYS]


def uses_auto_config(layer) -> bool:
    """Whether `layer` relies on Keras's automatic `get_config` (its class defines none)."""
    return type(layer).get_config is keras.layers.Layer.get_config


def config_of(layer) -> dict:
    """`layer.get_config()`, also for a layer whose automatic config fails but needs none.

    Keras builds the config of a layer class without `get_config` from its
    constructor arguments, and refuses when one is not a plain value: keras_hub
    writes `keras.layers.Identity(dtype=self.dtype_policy)`, whose `get_config()`
    raises. A class with no constructor arguments beyond a base layer's is fully
    described by its name, trainability and dtype policy; that config is returned.

    Raises:
        NotImplementedError: (from Keras) the layer has arguments of its own and no config.
    """
    try:
        return layer.get_config()
    except NotImplementedError:
        if not uses_auto_config(layer) or _own_init_params(type(layer)) != []:
            raise
        return {
            "name": layer.name,
            "trainable": layer.trainable,
            # A policy's name (not its serialized dict) keeps the new layer's own automatic
            # config working, so the rebuilt model saves.
            "dtype": layer.dtype_policy.name,
        }


def recreate(layer, config: dict):
    """`type(layer).from_config(config)`, tolerant of config keys `__init__` does not take.

    Some layers' `get_config()` holds derived values their `__init__` refuses
    (keras_hub's `ViTPatchingAndEmbedding` adds `num_patches`). When `from_config`
    fails with a `TypeError`, it is retried with only the keys `__init__` (and a
    base layer) accepts, and the result is kept only if its own `get_config()`
    gives those keys back, and, for the layer's own config, the derived ones too:
    the copy is then indistinguishable from a faithful one.

    Raises:
        Exception: the error of the first `from_config` when no faithful copy can be made.
    """
    cls = type(layer)
    with trusted_deserialization():
        try:
            return cls.from_config(config)
        except TypeError as first:
            own = _own_init_params(cls)
            if own is None:
                raise
            params = inspect.signature(cls.__init__).parameters
            takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in params.values())
            accepted = set(own) | ({"name", "trainable", "dtype", "autocast"} if takes_kwargs else set(params))
            trimmed = {k: v for k, v in config.items() if k in accepted}
            if trimmed == config:
                raise
            try:
                new = cls.from_config(trimmed)
                got = config_of(new)
                # Every key given must come back; the derived ones must too, unless the
                # config is a new one (a pruned width), whose derived values the class recomputes.
                same = all(got.get(k) == v for k, v in trimmed.items()) and (
                    got == config or config != config_of(layer)
                )
            except Exception:
                raise first from None
            if not same:
                raise
            return new


@contextlib.contextmanager
def call_context(training: bool = False):
    """Run layer calls with `training` set for every nested call, as `model.predict`/`fit` do.

    Calling a layer eagerly without `training` is not the same: Keras passes a
    sublayer's own default on to the layers called after it (an image
    preprocessing layer defaults to `training=True`, so a BatchNormalization
    after a `Resizing` inside keras_hub's `SpatialPyramidPooling` would use
    batch statistics).
    """
    previous = global_state.get_global_attribute("current_call_ctx")
    context = CallContext(entry_layer=None)
    context.set_value("training", training)
    global_state.set_global_attribute("current_call_ctx", context)
    try:
        yield
    finally:
        global_state.set_global_attribute("current_call_ctx", previous)


def export_input_signature(model) -> list:
    """The input signature `model.export` derives from a Functional or Sequential model's inputs.

    Passing it explicitly lets Keras export a model that was never called (a freshly
    loaded or rebuilt one), which its ONNX exporter otherwise refuses.
    """
    from keras.src.export.export_utils import get_input_signature

    return get_input_signature(model)


def missing() -> list[str]:
    """Keras internals kerasprune relies on that the installed Keras lacks (empty when all is well)."""
    out = list(_MISSING)
    inp = keras.Input((2,))
    fn = keras.Model(inp, keras.layers.Dense(2)(inp))
    seq = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    for obj, attr in ((fn, "_nodes_by_depth"), (fn, "_inputs_struct"), (seq, "_functional")):
        if not hasattr(obj, attr):
            out.append(f"{type(obj).__name__}.{attr}")
    if not hasattr(fn.outputs[0], "_keras_history"):
        out.append("KerasTensor._keras_history")
    if not hasattr(fn.layers[-1], "_inbound_nodes"):
        out.append("Layer._inbound_nodes")
    node = next(n for n in nodes_in_order(fn) if not n.is_input)
    for attr in ("operation", "is_input", "input_tensors", "outputs", "arguments"):
        if not hasattr(node, attr):
            out.append(f"Node.{attr}")
    if not hasattr(getattr(node, "arguments", None), "fill_in"):
        out.append("Node.arguments.fill_in")
    for fn_name in ("get_global_attribute", "set_global_attribute"):
        if not callable(getattr(global_state, fn_name, None)):
            out.append(f"keras.src.backend.common.global_state.{fn_name}")
    if not callable(getattr(CallContext(entry_layer=None), "set_value", None)):
        out.append("CallContext.set_value")
    if not callable(getattr(keras.layers.Layer(), "_flatten_layers", None)):
        out.append("Layer._flatten_layers")
    for area, example in (("merging", keras.layers.Add()), ("pooling", keras.layers.MaxPooling2D()),
                          ("reshaping", keras.layers.Flatten())):  # fmt: skip
        if not in_layer_area(example, (area,)):
            out.append(f"keras.src.layers.{area} (module of {type(example).__name__})")
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    if not isinstance(build_shapes(layer), dict):
        out.append("Layer._build_shapes_dict")
    try:
        export_input_signature(fn)
    except ImportError:
        out.append("keras.src.export.export_utils.get_input_signature")
    return out
