"""Rules for `keras.ops` calls that move channels: reshapes, transposes, slicing, splitting, joining.

Keras operations follow NumPy's semantics, so each rule lays the channel
*positions* of the input out over its full shape (batch 1 when unknown) with
`reshaping.channel_grid` (the mechanism of the `Reshape` layer's rule), applies
the operation's NumPy equivalent to that grid and reads off where the channels
went: the one output axis along which positions vary, and which input channel
sits at each of its positions. That is an *index map*, like `Concatenate`'s
offsets: `x[..., :8]` keeps positions 0..7, `ops.split(x, 2, axis=-1)` gives
each half its own positions, `ops.tile`/`ops.repeat` repeat them,
`ops.transpose`/`ops.moveaxis` move them to another axis, and
`ops.reshape(gap, (-1, 1, 1, C))` keeps them on the last axis.

An output whose positions vary along several axes mixes channels with other
axes (a barrier that says so); an output that holds one channel with no
channel axis left (`x[..., 3]`) is a plain tensor, and that channel may not be
removed. Where the call bakes in a channel count or position (a slicing key,
split indices, `newshape`), the rule rewrites it for the smaller model
(`rebuild_config` for constructor arguments, `rebuild_call` for call arguments).
"""

from __future__ import annotations

import numpy as np
from keras import ops as kops

from kerasprune._keras import KerasTensor, call_arguments, op_classes
from kerasprune.errors import PruningError
from kerasprune.rules.base import Barrier, Chan, NodeIO, NodeView, kept, norm_axis
from kerasprune.rules.merging import ConcatenateRule
from kerasprune.rules.ops import OperationRule, check_config
from kerasprune.rules.registry import register_many, register_rule
from kerasprune.rules.reshaping import channel_grid, read_channel_axis


def _positions(view: NodeView) -> np.ndarray:
    """Input 0's channel positions over its full shape (batch 1 when unknown)."""
    c = view.inputs[0]
    shape = list(view.in_shapes[0])
    shape[0] = 1 if shape[0] is None else shape[0]
    return channel_grid(np.arange(shape[c.axis]), c.axis, shape)


def _read(out: np.ndarray, in_axis: int, what: str) -> Chan | None:
    """Channel axis and positions of one output grid; None when one channel fills it with no channel axis."""
    if out.size == 0:
        raise Barrier(f"{what} gives an empty tensor")
    # Axes the grid is only broadcast along (stride 0) hold the same values: look at one slice of them.
    small = out[tuple(slice(0, 1) if st == 0 else slice(None) for st in out.strides)] if out.ndim > 1 else out
    if small.min() == small.max():  # one channel: on a size-1 axis if there is one
        ones = [ax for ax in range(1, out.ndim) if out.shape[ax] == 1]
        if ones:
            ax = in_axis if in_axis in ones else ones[-1]
            return Chan(ax, small.reshape(-1)[:1].copy())
        if out.ndim == 2 and out.shape[1] > 1:
            return Chan(1, np.full(out.shape[1], small.flat[0]))
        return None
    try:
        chan = read_channel_axis(small, offset=0)
    except Barrier:
        raise Barrier(f"{what} mixes the channel axis with other axes") from None
    if chan.axis == 0:
        raise Barrier(f"{what} moves channels onto the batch axis")
    return chan


def _ranks(keep: np.ndarray) -> np.ndarray:
    """Position of every input channel in the smaller tensor (for kept ones)."""
    return np.cumsum(keep) - 1


class IndexOpRule(OperationRule):
    """An operation that moves or copies positions without computing: a NumPy equivalent per class.

    Args:
        numpy_fn: `numpy_fn(op, grid, args, kwargs) -> array or list of arrays`,
            the operation applied to a NumPy grid (`args`, `kwargs`: the node's
            call arguments after the tensor).
        what: Name used in barrier reasons.
    """

    def __init__(self, numpy_fn, what: str):
        self.numpy_fn, self.what = numpy_fn, what

    def channels(self, view: NodeView, g) -> list[Chan]:
        c = view.inputs[0]
        if len(view.inputs) > 1:
            raise Barrier(f"{self.what} with a tensor argument (indices, start positions) is not followed")
        if c.frozen:
            return [c] * len(view.out_shapes)
        atoms = g.expect(view, 0, c.axis)
        args, kwargs = call_arguments(view.node)
        try:
            result = self.numpy_fn(view.layer, _positions(view), list(args[1:]), kwargs)
        except Barrier:
            raise
        except Exception as e:
            raise Barrier(f"could not map channels through {self.what}: {type(e).__name__}: {e}") from None
        grids = result if isinstance(result, (list, tuple)) else [result]
        if len(grids) != len(view.out_shapes):
            raise Barrier(f"{self.what} gives {len(grids)} outputs, the graph has {len(view.out_shapes)}")
        outs = []
        for grid, shape in zip(grids, view.out_shapes):
            grid = np.asarray(grid)
            if grid.shape[1:] != tuple(shape[1:]):
                raise Barrier(f"NumPy's {self.what} gives shape {grid.shape}, Keras {tuple(shape)}")
            chan = _read(grid, c.axis, self.what)
            if chan is None:
                pos = int(grid.flat[0])
                g.block(
                    atoms[[pos]],
                    f"'{view.key}' ({type(view.layer).__name__}) takes channel {pos} alone, without a channel "
                    f"axis (index with a range, e.g. x[..., {pos}:{pos + 1}], to keep the others prunable)",
                )
                outs.append(Chan(None, None, frozen=f"'{view.key}' holds one channel with no channel axis"))
            else:
                outs.append(Chan(chan.axis, atoms[chan.atoms]))
        return outs


def _new_shape(config: dict, key: str, io: NodeIO) -> dict:
    """Set entry `out_axis` of the full-shape argument `key` (`newshape`, `shape`) to the kept count."""
    shape, axis, keep = config.get(key), io.out_axes[0], io.outputs[0]
    if axis is None or keep is None or not isinstance(shape, (list, tuple)) or len(shape) <= axis:
        return config
    shape = list(shape)
    if shape[axis] not in (-1, None):
        shape[axis] = kept(keep)
    return {**config, key: tuple(shape)}


class ReshapeOpRule(IndexOpRule):
    """`ops.reshape`: `newshape`'s channel entry becomes the kept count (unless it is -1)."""

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        return _new_shape(config, "newshape", io)


class BroadcastToRule(IndexOpRule):
    """`ops.broadcast_to`: the target `shape`'s channel entry becomes the kept count."""

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        return _new_shape(config, "shape", io)


def _rank(op) -> int:
    """Rank of the input of an operation's first call."""
    return len(op.input.shape)


class RepeatRule(IndexOpRule):
    """`ops.repeat`: per-channel `repeats` along the channel axis are sliced."""

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        keep, axis, reps = io.inputs[0], io.in_axes[0], config.get("repeats")
        if keep is None or config.get("axis") is None or np.size(reps) < 2:
            return config
        if norm_axis(int(config["axis"]), _rank(layer)) != axis:
            return config
        return {**config, "repeats": np.compress(keep, np.asarray(reps)).tolist()}


class RollRule(IndexOpRule):
    """`ops.roll` along the channel axis: the new shift is the number of kept channels among the last `shift`."""

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        keep, axis = io.inputs[0], io.in_axes[0]
        shifts, axes = config.get("shift"), config.get("axis")
        if keep is None or axes is None:
            return config
        many = isinstance(axes, (list, tuple))
        axes = list(axes) if many else [axes]
        shifts = list(shifts) if isinstance(shifts, (list, tuple)) else [shifts] * len(axes)
        rank, n = _rank(layer), len(keep)
        new = [
            int(np.count_nonzero(keep[n - int(s) % n :])) if norm_axis(int(a), rank) == axis else s
            for s, a in zip(shifts, axes)
        ]
        return {**config, "shift": new if many or isinstance(config.get("shift"), (list, tuple)) else new[0]}


class GetItemRule(IndexOpRule):
    """`x[key]` with ints, slices, `None` and `...`: a slice along the channel axis is an index map."""

    def __init__(self):
        super().__init__(lambda op, grid, args, kwargs: grid[_key(args[0])], "indexing")

    def rebuild_call(self, op, args: tuple, kwargs: dict, io: NodeIO):
        x, key = args[0], _key(args[1])
        keep, axis = io.inputs[0], io.in_axes[0]
        parts, where = _key_parts(key, len(x.shape), axis)
        if keep is None or keep.all() or where is None:
            return op(x, key)
        ranks, entry = _ranks(keep), parts[where]
        if not isinstance(entry, slice):  # an integer: the (kept) channel moves
            parts[where] = int(ranks[int(entry) % len(keep)])
            return op(x, tuple(parts))
        pos = np.arange(len(keep))[entry]
        new = ranks[pos[keep[pos]]]
        if not len(new):
            raise PruningError(f"Indexing '{op.name}' would keep none of its {len(pos)} channels")
        step = int(new[1] - new[0]) if len(new) > 1 else 1
        if step != 0 and np.array_equal(np.diff(new), np.full(len(new) - 1, step)):
            stop = int(new[-1]) + step
            parts[where] = slice(int(new[0]), None if stop < 0 else stop, step)
            return op(x, tuple(parts))
        parts[where] = slice(None)
        y = op(x, tuple(parts))
        return kops.take(y, new.astype("int32"), axis=io.out_axes[0])


def _key(key):
    return key if isinstance(key, tuple) else (key,)


def _key_parts(key: tuple, rank: int, axis: int) -> tuple[list, int | None]:
    """The key as a list with `...` expanded, and the index of the entry that indexes input axis `axis`."""
    parts = list(key)
    if any(p is Ellipsis for p in parts):
        i = next(i for i, p in enumerate(parts) if p is Ellipsis)
        used = sum(1 for p in parts if p is not None and p is not Ellipsis)
        parts[i : i + 1] = [slice(None)] * (rank - used)
    dim = -1
    for i, p in enumerate(parts):
        if p is not None:
            dim += 1
            if dim == axis:
                return parts, i
    return parts, None


class SliceOpRule(IndexOpRule):
    """`ops.slice(x, start_indices, shape)`: a contiguous range of channels."""

    def __init__(self):
        super().__init__(_slice, "slice")

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        keep, axis = io.inputs[0], io.in_axes[0]
        if keep is None:
            return config
        shape = list(config["shape"])
        shape[axis] = kept(io.outputs[0])
        return {**config, "shape": tuple(shape)}

    def rebuild_call(self, op, args: tuple, kwargs: dict, io: NodeIO):
        x, start = args[0], [int(s) for s in np.asarray(args[1]).reshape(-1)]
        keep, axis = io.inputs[0], io.in_axes[0]
        if keep is not None:
            start[axis] = int(np.count_nonzero(keep[: start[axis]]))
        return op(x, start)


def _slice(op, grid, args, kwargs):
    start = [int(s) for s in np.asarray(args[0] if args else kwargs["start_indices"]).reshape(-1)]
    return grid[tuple(slice(s, s + int(n)) for s, n in zip(start, op.shape))]


class TakeRule(IndexOpRule):
    """`ops.take(x, indices, axis)` with constant indices: a gather along the channel axis is an index map."""

    def __init__(self):
        super().__init__(lambda op, grid, args, kwargs: np.take(grid, _indices(args, kwargs), axis=op.axis), "take")

    def rebuild_call(self, op, args: tuple, kwargs: dict, io: NodeIO):
        keep, axis = io.inputs[0], io.in_axes[0]
        idx = _indices(list(args[1:]), kwargs)
        if keep is None or op.axis is None or norm_axis(int(op.axis), len(args[0].shape)) != axis:
            return op(args[0], idx)
        idx = np.asarray(idx) % len(keep)
        new = _ranks(keep)[idx[keep[idx]]] if idx.ndim else _ranks(keep)[idx]
        return op(args[0], np.asarray(new, dtype=np.asarray(idx).dtype))


def _indices(args, kwargs):
    return np.asarray(args[0] if args else kwargs["indices"])


class SplitRule(IndexOpRule):
    """`ops.split` / `array_split` / `hsplit` ...: along the channel axis each part keeps its own range.

    The smaller model splits at the kept counts with `ops.split(x, indices)`.
    """

    def __init__(self, numpy_fn, what: str, axis_of):
        super().__init__(numpy_fn, what)
        self.axis_of = axis_of

    def rebuild_call(self, op, args: tuple, kwargs: dict, io: NodeIO):
        keep, axis = io.inputs[0], io.in_axes[0]
        rank = len(args[0].shape)
        if keep is None or keep.all() or self.axis_of(op, rank) != axis:
            return op(*args, **kwargs)
        line = np.arange(len(keep)).reshape([1] * axis + [-1] + [1] * (rank - axis - 1))
        parts = self.numpy_fn(op, line, [], {})
        sizes = [int(np.count_nonzero(keep[np.asarray(p).reshape(-1)])) for p in parts]
        if 0 in sizes:
            raise PruningError(f"Splitting '{op.name}' would leave part {sizes.index(0)} with no channel")
        return kops.split(args[0], np.cumsum(sizes)[:-1].tolist(), axis=axis)


def _split_axis(op, rank):
    return norm_axis(int(op.axis), rank)


class PadRule(OperationRule):
    """`ops.pad`: channels stay on their axis unless the channel axis itself is padded."""

    def channels(self, view: NodeView, g) -> list[Chan]:
        c = view.inputs[0]
        if c.frozen:
            return [c]
        pads = np.broadcast_to(np.asarray(view.layer.pad_width, dtype=np.int64).reshape(-1, 2), (view.rank(), 2))
        if pads[c.axis].any():
            raise Barrier(f"pads the channel axis by {pads[c.axis].tolist()}")
        args, kwargs = call_arguments(view.node)
        fill = args[1] if len(args) > 1 else kwargs.get("constant_values")
        if fill is not None and np.size(fill) > 1:
            raise Barrier(f"pads with an array of constant values of shape {np.shape(fill)}")
        return [Chan(c.axis, g.expect(view, 0, c.axis))]


class ConcatOpRule(ConcatenateRule):
    """`ops.concatenate` / `ops.append`: offsets along the channel axis, like the `Concatenate` layer."""

    def analyze(self, view: NodeView, g) -> list[Chan]:
        if any(not c.frozen for c in view.inputs):
            check_config(view)
        args, _ = call_arguments(view.node)
        values = list(args[0]) if isinstance(args[0], (list, tuple)) else list(args[:2])
        if not all(isinstance(v, KerasTensor) for v in values):
            raise Barrier("joins a constant to tensors")
        if getattr(view.layer, "axis", 0) is None:
            raise Barrier("joins flattened tensors")
        return super().analyze(view, g)


class StackOpRule(OperationRule):
    """`ops.stack`: a new axis; the inputs' channels are coupled, like `Add`'s."""

    def channels(self, view: NodeView, g) -> list[Chan]:
        args, _ = call_arguments(view.node)
        if not all(isinstance(v, KerasTensor) for v in args[0]):
            raise Barrier("stacks a constant with tensors")
        live = [c for c in view.inputs if not c.frozen]
        if not live:
            return [view.inputs[0]]
        axis = live[0].axis
        if any(c.axis != axis for c in live):
            raise Barrier("its inputs carry channels on different axes")
        atoms = [g.expect(view, i, axis) for i in range(len(view.inputs))]
        for a in atoms[1:]:
            g.unify(atoms[0], a)
        new = norm_axis(int(view.layer.axis), len(view.out_shapes[0]))
        return [Chan(axis if axis < new else axis + 1, atoms[0])]


def _unstack(op, grid, args, kwargs):
    return [np.take(grid, i, axis=op.axis) for i in range(grid.shape[op.axis])]


def _fn(name):
    return lambda op, grid, args, kwargs: name(op, grid)


_SIMPLE = {
    "Transpose": lambda op, x: np.transpose(x, op.axes),
    "Moveaxis": lambda op, x: np.moveaxis(x, op.source, op.destination),
    "Swapaxes": lambda op, x: np.swapaxes(x, op.axis1, op.axis2),
    "ExpandDims": lambda op, x: np.expand_dims(x, op.axis),
    "Squeeze": lambda op, x: np.squeeze(x, op.axis if op.axis is None else tuple(np.atleast_1d(op.axis))),
    "Tile": lambda op, x: np.tile(x, op.repeats),
    "Flip": lambda op, x: np.flip(x, op.axis),
    "Fliplr": lambda op, x: np.fliplr(x),
    "Flipud": lambda op, x: np.flipud(x),
    "Rot90": lambda op, x: np.rot90(x, op.k, op.axes),
    "Ravel": lambda op, x: np.ravel(x),
}
for _cls in op_classes("numpy", list(_SIMPLE)):
    register_rule(_cls, IndexOpRule(_fn(_SIMPLE[_cls.__name__]), _cls.__name__.lower()))
register_many(op_classes("numpy", ["Reshape"]), ReshapeOpRule(_fn(lambda op, x: np.reshape(x, _shape(op.newshape))), "reshape"))
register_many(op_classes("numpy", ["BroadcastTo"]), BroadcastToRule(_fn(lambda op, x: np.broadcast_to(x, _shape(op.shape))), "broadcast_to"))
register_many(op_classes("numpy", ["Repeat"]), RepeatRule(_fn(lambda op, x: np.repeat(x, op.repeats, op.axis)), "repeat"))
register_many(op_classes("numpy", ["Roll"]), RollRule(_fn(lambda op, x: np.roll(x, op.shift, op.axis)), "roll"))
register_many(op_classes("numpy", ["GetItem"]), GetItemRule())
register_many(op_classes("core", ["Slice"]), SliceOpRule())
register_many(op_classes("numpy", ["Take"]), TakeRule())
register_many(op_classes("core", ["Unstack"]), IndexOpRule(_unstack, "unstack"))
for _name, _np, _axis in (
    ("Split", lambda op, x: np.split(x, op.indices_or_sections, axis=op.axis), _split_axis),
    ("ArraySplit", lambda op, x: np.array_split(x, op.indices_or_sections, axis=op.axis), _split_axis),
    ("Hsplit", lambda op, x: np.hsplit(x, op.indices_or_sections), lambda op, rank: 1 if rank != 1 else 0),
    ("Vsplit", lambda op, x: np.vsplit(x, op.indices_or_sections), lambda op, rank: 0),
    ("Dsplit", lambda op, x: np.dsplit(x, op.indices_or_sections), lambda op, rank: 2),
):
    register_many(op_classes("numpy", [_name]), SplitRule(_fn(_np), _name.lower(), _axis))
register_many(op_classes("numpy", ["Pad"]), PadRule())
register_many(op_classes("numpy", ["Concatenate", "Append"]), ConcatOpRule())
register_many(op_classes("numpy", ["Stack"]), StackOpRule())


def _shape(shape):
    return tuple(-1 if d is None else int(d) for d in shape) if isinstance(shape, (list, tuple)) else shape


__all__ = ["IndexOpRule"]
