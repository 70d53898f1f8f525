"""Which call argument each input tensor of a node is.

A node's input tensors are the symbolic tensors of its call arguments, flattened
in Keras's order: positional arguments first, then keyword arguments sorted by
name. Layers that read several tensors with different meanings (attention's
`query`, `value`, `key` and `attention_mask`; a recurrent layer's sequences,
`initial_state` and `mask`) look their inputs up by role here.
"""

from __future__ import annotations

import inspect

from keras import tree

from kerasprune import _keras
from kerasprune.rules.base import Barrier


def _parameters(layer) -> list[str]:
    try:
        params = inspect.signature(layer.call).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _tensors(value) -> int:
    return sum(1 for v in tree.flatten(value) if isinstance(v, _keras.KerasTensor))


def argument_roles(node, layer) -> list[str]:
    """The parameter name of `layer.call` behind each of `node`'s input tensors.

    Raises:
        Barrier: the arguments do not account for the node's input tensors.
    """
    args, kwargs = _keras.call_arguments(node)
    names = _parameters(layer)
    roles: list[str] = []
    for i, value in enumerate(args):
        roles += [names[i] if i < len(names) else f"arg{i}"] * _tensors(value)
    for name in sorted(kwargs):
        roles += [name] * _tensors(kwargs[name])
    if len(roles) != len(node.input_tensors):
        raise Barrier(f"its {len(node.input_tensors)} input tensors do not match its call arguments")
    return roles


def roles_for_shapes(layer, in_shapes: list[tuple]) -> list[str] | None:
    """The roles of a call with `in_shapes` (for `Rule.macs`, which sees shapes only).

    Taken from the layer's first call whose inputs have these shapes (batch
    ignored), or its first call; None when the layer was never called.
    """
    nodes = _keras.inbound_nodes(layer)
    if not nodes:
        return None
    key = [tuple(s[1:]) for s in in_shapes]
    for node in nodes:
        if [tuple(t.shape[1:]) for t in node.input_tensors] == key:
            break
    else:
        node = nodes[0]
    try:
        roles = argument_roles(node, layer)
    except Barrier:
        return None
    return roles if len(roles) == len(in_shapes) else None
