"""Rules for recurrent layers: their units are channels, sliced gate by gate.

Weight layouts (Keras 3), `U` units (`filters` for ConvLSTM), `G` gates:
- `LSTM` (G = 4, gates i, f, c, o), `GRU` (G = 3, gates z, r, h),
  `SimpleRNN` (G = 1): kernel `(in, G*U)`, recurrent kernel `(U, G*U)`, bias
  `(G*U,)`; `GRU(reset_after=True)` has a bias `(2, G*U)` (input and recurrent
  biases). Unit `u` owns columns `u + k*U` (k = 0..G-1) of both kernels and of
  the bias, and row `u` of the recurrent kernel.
- `ConvLSTM1D/2D/3D` (G = 4): kernel `kernel_size + (in, 4*F)`, recurrent
  kernel `kernel_size + (F, 4*F)`: the same gate blocks on the last axis.
- `keras.layers.RNN(cell)` with an `LSTMCell`, `GRUCell`, `SimpleRNNCell` or
  `ConvLSTMCell`: the cell's weights, as above.

The layer reads its input's channels through the kernel's input axis (like
`Dense`) and produces `U` channels: every output (the sequence or last output,
and with `return_state` each state) carries them, and `initial_state` tensors
are coupled to them. A removed unit is exactly inert in the masked model: its
gate pre-activations are zero, so (with the default activations) its state and
output stay zero, and every weight that reads it (its recurrent row, the next
layer's input rows) is zeroed.
"""

from __future__ import annotations

import math

import numpy as np
from keras import layers

from kerasprune.rules.arguments import argument_roles, roles_for_shapes
from kerasprune.rules.base import Barrier, Chan, NodeIO, NodeView, Rule, kept, weight_index
from kerasprune.rules.registry import register_many

#: Gates per cell class: the number of blocks on the kernels' last axis.
_GATES = {layers.LSTMCell: 4, layers.GRUCell: 3, layers.SimpleRNNCell: 1}
_CONV_LSTM = tuple(c for c in (getattr(layers, f"ConvLSTM{n}D", None) for n in (1, 2, 3)) if c is not None)


def cell_of(layer):
    """The cell of a recurrent layer, and its number of gates.

    Raises:
        Barrier: stacked or unknown cells.
    """
    cell = getattr(layer, "cell", None)
    if isinstance(cell, layers.StackedRNNCells):
        raise Barrier("stacked cells (RNN([cell, cell])) are not supported; use one recurrent layer per cell")
    for cls, gates in _GATES.items():
        if type(cell) is cls:
            return cell, gates
    if isinstance(layer, _CONV_LSTM) and type(cell).__name__ == "ConvLSTMCell":
        return cell, 4
    name = type(cell).__name__ if cell is not None else None
    raise Barrier(
        f"its cell {name} is not an LSTMCell, GRUCell, SimpleRNNCell or ConvLSTMCell "
        "(register a rule for the layer to prune it)"
    )


def units_of(cell) -> int:
    return int(getattr(cell, "filters", None) or cell.units)


def channels_first(cell) -> bool:
    return getattr(cell, "data_format", "channels_last") == "channels_first"


def state_axis(cell, shape: tuple) -> int:
    """The axis holding units in an output or state of `shape` (batch included)."""
    if channels_first(cell):
        rank = int(getattr(cell, "rank", 0))
        return len(shape) - rank - 1
    return len(shape) - 1


def check_quantization(cell) -> None:
    if getattr(cell, "quantization_mode", None):
        raise Barrier("quantized recurrent cells are not supported")


def declare_cell(view: NodeView, g, cell, gates: int, ins: np.ndarray, units: np.ndarray) -> None:
    """Declare the weight slices of one cell of `view.layer` (a recurrent layer or a wrapper)."""
    layer = view.layer
    cols = np.tile(units, gates)
    k = weight_index(layer, cell.kernel)
    g.slice(view, k, -2, ins)
    g.slice(view, k, -1, cols)
    r = weight_index(layer, cell.recurrent_kernel)
    g.slice(view, r, -2, units)
    g.slice(view, r, -1, cols)
    if cell.use_bias and cell.bias is not None:
        g.slice(view, weight_index(layer, cell.bias), -1, cols)


def check_roles(roles: list[str]) -> None:
    if roles[0] not in ("sequences", "inputs"):
        raise Barrier(f"its first input is its {roles[0]!r} argument, not the sequence")


def read_inputs(view: NodeView, g, cell, roles: list[str], units: np.ndarray) -> np.ndarray:
    """Atoms of the sequence input; couples `initial_state` tensors to `units`; blocks the rest."""
    ins = g.expect(view, 0, state_axis(cell, view.in_shapes[0]))
    for i, role in enumerate(roles[1:], start=1):
        if role == "initial_state":
            g.unify(g.expect(view, i, state_axis(cell, view.in_shapes[i])), units)
        elif not view.inputs[i].frozen:
            g.block(view.inputs[i].atoms, f"'{view.key}' reads this tensor as its {role!r} argument")
    return ins


def output_axes(view: NodeView, cell, widths: list[int]) -> list[int]:
    """The units axis of each output, checked against its expected width."""
    axes = []
    for shape, n in zip(view.out_shapes, widths):
        axis = state_axis(cell, shape)
        if shape[axis] != n:
            raise Barrier(f"output of shape {shape} does not hold {n} units on axis {axis}")
        axes.append(axis)
    return axes


def cell_macs(layer, cell, in_shapes: list[tuple], out_shapes: list[tuple]) -> list[tuple]:
    """MACs of the kernel and recurrent-kernel products, every time step (gates' element-wise work ignored)."""
    seq, out = in_shapes[0], out_shapes[0]
    steps = int(seq[1])
    dims = list(out[1:])
    if getattr(layer, "return_sequences", False):
        dims = dims[1:]
    dims.pop(0 if channels_first(cell) else -1)
    positions = steps * math.prod(int(d) for d in dims)
    return [(cell.kernel, positions), (cell.recurrent_kernel, positions)]


def new_width(config: dict, n: int | None) -> dict:
    """`config` of a recurrent layer (or of its cell) with `n` units."""
    if isinstance(config.get("cell"), dict):  # keras.layers.RNN(cell)
        cell = dict(config["cell"])
        cell["config"] = new_width(dict(cell["config"]), n)
        cell.pop("build_config", None)  # built by the layer for its new input
        return {**config, "cell": cell}
    if n is None:
        return config
    key = "filters" if "filters" in config else "units"
    return {**config, key: n}


class RecurrentRule(Rule):
    """`LSTM`, `GRU`, `SimpleRNN`, `ConvLSTM1D/2D/3D` and `RNN(cell)`: units are channels."""

    def analyze(self, view: NodeView, g) -> list[Chan]:
        cell, gates = cell_of(view.layer)
        check_quantization(cell)
        roles = argument_roles(view.node, view.layer)
        check_roles(roles)
        n = units_of(cell)
        axes = output_axes(view, cell, [n] * len(view.out_shapes))
        units = g.produce(view, n)
        ins = read_inputs(view, g, cell, roles, units)
        declare_cell(view, g, cell, gates, ins, units)
        return [Chan(axis, units) for axis in axes]

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        return new_width(config, kept(io.outputs[0]))

    def macs(self, layer, in_shapes, out_shapes):
        roles = roles_for_shapes(layer, in_shapes)
        if roles and roles[0] not in ("sequences", "inputs"):
            return []
        return cell_macs(layer, layer.cell, in_shapes, out_shapes)


register_many([layers.LSTM, layers.GRU, layers.SimpleRNN, layers.RNN, *_CONV_LSTM], RecurrentRule())
