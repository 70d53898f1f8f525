"""Walking a model's symbolic graph: the one traversal every pass shares.

The analysis (channels), FLOPs counting (shapes) and the activation runner of
the data-driven criteria (tensors) all walk a Functional graph node by node
through `run_graph`; each tracks its own kind of value per tensor. A node whose
operation has an inner Functional graph (`inner_graph`: a nested model, or a
composite layer traced by `kerasprune.tracing`) is walked through, its layers
keyed `outer/inner`. Keras internals are reached through `kerasprune._keras`.
"""

from __future__ import annotations

from kerasprune import _keras, tracing
from kerasprune.errors import PruningError


def run_graph(fn, values: list, call, *, prefix: str = "", enter=None, expand=None) -> list:
    """Walk a Functional graph node by node in topological order, inner graphs expanded.

    The one traversal shared by the analysis, the FLOPs counter and the activation
    runner of the data-driven criteria; each tracks its own kind of value per tensor
    (channels, shapes, tensors).

    Args:
        fn: A Functional graph (`Functional` model or a Sequential's `_functional`).
        values: One value per input of `fn`.
        call: `call(op, node, input_values, prefix, env) -> output values` for every
            layer/operation call (`env` maps `id(tensor)` to its value so far).
        prefix: Key prefix of the layers of `fn` (`outer/` inside nested models).
        enter: Optional `enter(op, prefix, node, input_values, inner)`, told before an
            inner graph `inner` (of a nested model or a traced composite `op`) is walked.
        expand: `expand(op, node) -> Functional graph or None`, the inner graph of a
            node to walk through. Default: `inner_graph` (nested models and traced
            composite layers).

    Returns:
        The values of `fn`'s outputs.
    """
    expand = inner_graph if expand is None else expand
    env = {id(t): v for t, v in zip(fn.inputs, values)}
    for node in _keras.nodes_in_order(fn):
        op = node.operation
        if op is None or node.is_input or any(id(t) not in env for t in node.input_tensors):
            continue
        ins = [env[id(t)] for t in node.input_tensors]
        inner = expand(op, node)
        if inner is not None:
            if enter is not None:
                enter(op, prefix, node, ins, inner)
            outs = run_graph(inner, ins, call, prefix=f"{prefix}{op.name}/", enter=enter, expand=expand)
        else:
            outs = call(op, node, ins, prefix, env)
        for t, v in zip(node.outputs, outs):
            env[id(t)] = v
    return [env[id(t)] for t in fn.outputs]


def inner_graph(op, node):
    """The Functional graph to walk through for `op` at `node`, or None for a leaf.

    A nested Functional/Sequential model's own graph; for a composite layer (or
    subclassed model) with no rule, its trace when tracing succeeded
    (`kerasprune.tracing`). A registered rule always wins over tracing.

    Raises:
        PruningError: `op` is a Sequential model that was never built.
    """
    try:
        fn = _keras.functional_of(op)
    except ValueError as e:
        raise PruningError(str(e)) from None
    if fn is not None:
        return fn
    if tracing.traceable(op):
        return tracing.trace_node(op, node).model
    return None


def functional_of(op):
    """The Functional graph of a model: its own, a Sequential's, or a subclassed model's trace.

    None for a plain layer or operation. Used on top-level models (a subclassed
    model is traced once, from the shapes it was built with; see
    `kerasprune.tracing.trace_model`); inside a graph, `inner_graph` decides.

    Raises:
        PruningError: `op` is a Sequential model that was never built, or a
            subclassed model that cannot be traced (the message says why).
    """
    import keras

    if isinstance(op, keras.Model) and not _keras.is_graph_model(op):
        return tracing.model_graph(op)
    try:
        return _keras.functional_of(op)
    except ValueError as e:
        raise PruningError(str(e)) from None
