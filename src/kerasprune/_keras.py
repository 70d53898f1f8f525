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
from collections.abc import Iterator

import keras
from keras.src.backend import KerasTensor
from keras.src.ops.operation import Operation
from keras.src.saving.serialization_lib import SafeModeScope

__all__ = [
    "KerasTensor",
    "Operation",
    "application_class",
    "call_arguments",
    "export_input_signature",
    "fill_in",
    "functional_of",
    "inputs_struct",
    "missing",
    "nodes_in_order",
    "op_classes",
    "producer_of",
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


def application_class(module: str, name: str):
    """A layer class defined inside `keras.applications` (e.g. ConvNeXt's `LayerScale`), or None."""
    return _lookup(f"keras.src.applications.{module}", name)


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


def nodes_in_order(fn) -> Iterator:
    """The nodes of a Functional graph in topological order (inputs first)."""
    by_depth = fn._nodes_by_depth
    for depth in sorted(by_depth, reverse=True):
        yield from by_depth[depth]


def call_arguments(node) -> tuple[tuple, dict]:
    """The positional and keyword arguments a node was called with (tensors symbolic)."""
    return tuple(node.arguments.args), dict(node.arguments.kwargs)


def fill_in(node, values: dict) -> tuple[list, dict]:
    """A node's call arguments with its input tensors replaced by `values[id(tensor)]`."""
    return node.arguments.fill_in(values)


def producer_of(tensor):
    """The operation that produced a symbolic tensor (None for an `Input`)."""
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else history.operation


def inputs_struct(model):
    """The nested structure of a Functional model's inputs (list, dict or a single tensor)."""
    if isinstance(model, keras.Sequential):
        return None
    return model._inputs_struct


@contextlib.contextmanager
def trusted_deserialization():
    """Allow `from_config` to rebuild Python code (a `Lambda`'s function).

    Used only on configs taken from the caller's live model, never from a file.
    """
    with SafeModeScope(False):
        yield


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
    node = next(n for n in nodes_in_order(fn) if not n.is_input)
    for attr in ("operation", "is_input", "input_tensors", "outputs", "arguments"):
        if not hasattr(node, attr):
            out.append(f"Node.{attr}")
    if not hasattr(getattr(node, "arguments", None), "fill_in"):
        out.append("Node.arguments.fill_in")
    try:
        export_input_signature(fn)
    except ImportError:
        out.append("keras.src.export.export_utils.get_input_signature")
    return out
