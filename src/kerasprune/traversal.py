"""Walking a model's symbolic graph: the one traversal every pass shares.

The analysis (channels), FLOPs counting (shapes) and the activation runner of
the data-driven criteria (tensors) all walk a Functional graph node by node,
nested models expanded, through `run_graph`; each tracks its own kind of value
per tensor. Keras internals are reached through `kerasprune._keras`.
"""

from __future__ import annotations

from kerasprune import _keras
from kerasprune.errors import PruningError


def run_graph(fn, values: list, call, *, prefix: str = "", enter=None) -> list:
    """Walk a Functional graph node by node in topological order, nested models expanded.

    The one traversal shared by the analysis, the FLOPs counter and the activation
    runner of the data-driven criteria; each tracks its own kind of value per tensor
    (channels, shapes, tensors).

    Args:
        fn: A Functional graph (`Functional` model or a Sequential's `_functional`).
        values: One value per input of `fn`.
        call: `call(op, node, input_values, prefix, env) -> output values` for every
            layer/operation call (`env` maps `id(tensor)` to its value so far).
        prefix: Key prefix of the layers of `fn` (`outer/` inside nested models).
        enter: Optional `enter(model, prefix, node, input_values)`, told before a
            nested model is walked.

    Returns:
        The values of `fn`'s outputs.
    """
    env = {id(t): v for t, v in zip(fn.inputs, values)}
    for node in _keras.nodes_in_order(fn):
        op = node.operation
        if op is None or node.is_input or any(id(t) not in env for t in node.input_tensors):
            continue
        ins = [env[id(t)] for t in node.input_tensors]
        inner = functional_of(op)
        if inner is not None:
            if enter is not None:
                enter(op, prefix, node, ins)
            outs = run_graph(inner, ins, call, prefix=f"{prefix}{op.name}/", enter=enter)
        else:
            outs = call(op, node, ins, prefix, env)
        for t, v in zip(node.outputs, outs):
            env[id(t)] = v
    return [env[id(t)] for t in fn.outputs]


def functional_of(op):
    """The Functional graph behind a nested model, or None for a plain layer.

    Raises:
        PruningError: `op` is a Sequential model that was never built.
    """
    try:
        return _keras.functional_of(op)
    except ValueError as e:
        raise PruningError(str(e)) from None
