"""The vocabulary every pruning rule speaks.

A *rule* tells the graph analysis how one kind of layer moves channels from its
inputs to its outputs, which of its weights are indexed by channels, and how its
config changes when channels go away. Rules never touch the model: they describe.

Channels are tracked as *atoms*: integer ids, one per channel created by a
producer (a conv's filters, a dense layer's units). A tensor carries a `Chan`: the
axis that holds channels and, for each position along it, the atom that lives
there. Pass-through layers hand the same atoms on, couplers (`Add`) unify atoms,
index maps (`Concatenate`, `Flatten`) rearrange them. Removing a channel removes
every position whose atom is in its class, everywhere in the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from kerasprune.builder import Builder


class Barrier(Exception):
    """Raised by a rule when a layer cannot carry channels through.

    The analysis catches it, marks every group that reaches the layer as not
    prunable with `reason`, and gives the layer's outputs frozen channels.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Chan:
    """The channel layout of one symbolic tensor.

    Attributes:
        axis: Axis of the full shape (batch included) that holds the channels,
            or `None` when the tensor is *frozen*.
        atoms: One atom id per position along `axis` (`None` when frozen).
        frozen: Why the channels cannot be removed (model input, barrier
            output), or `None` for a normal tensor.
    """

    axis: int | None
    atoms: np.ndarray | None
    frozen: str | None = None

    @property
    def size(self) -> int:
        return 0 if self.atoms is None else int(self.atoms.shape[0])


@dataclass(frozen=True)
class WeightSlice:
    """One axis of one weight that is indexed by channels.

    Attributes:
        index: Position of the variable in `layer.weights`.
        axis: Axis of that variable indexed by channels.
        atoms: Atom of each position along `axis`; with `along`, a 2-D array
            `(positions along axis, positions along along)`: position `p` of
            `axis` means a different channel at each position of `along`.
        zero: Whether masking zeroes the removed positions (kernels, biases,
            BN gamma/beta) or leaves them (BN moving statistics).
        along: For grouped kernels: the axis along which the meaning of `axis`
            changes (a grouped conv's row `p` is a different input channel for
            each group of output filters). Removal keeps, for each position of
            `along`, its own kept positions of `axis`; every position of
            `along` must keep the same number (the plan checks it through the
            balance constraint the rule declares with `g.balance`).
    """

    index: int
    axis: int
    atoms: np.ndarray
    zero: bool = True
    along: int | None = None


@dataclass
class NodeView:
    """What a rule sees of one call of a layer."""

    layer: Any
    key: str
    inputs: list[Chan]
    in_shapes: list[tuple]
    out_shapes: list[tuple]
    node: Any = None
    call: int = 0
    in_atoms: list = field(default_factory=list)
    in_axes: list = field(default_factory=list)

    def rank(self, i: int = 0) -> int:
        return len(self.in_shapes[i])


@dataclass
class NodeIO:
    """Keep masks of one call, handed to `Rule.rebuild_config`."""

    inputs: list[np.ndarray | None] = field(default_factory=list)
    outputs: list[np.ndarray | None] = field(default_factory=list)
    in_axes: list[int | None] = field(default_factory=list)
    out_axes: list[int | None] = field(default_factory=list)
    #: Keep masks of the channels the layer owns besides its outputs (`g.produce(view, n,
    #: part=name)`: a `MultiHeadAttention`'s heads), by part name.
    parts: dict[str, np.ndarray] = field(default_factory=dict)


def channel_axis(data_format: str | None, rank: int) -> int:
    """The channel axis of a tensor of `rank` for a Keras `data_format`."""
    return 1 if data_format == "channels_first" else rank - 1


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def weight_index(layer, variable) -> int:
    """Position of `variable` in `layer.weights` (identity, not name)."""
    for i, w in enumerate(layer.weights):
        if w is variable:
            return i
    raise KeyError(f"variable {getattr(variable, 'path', variable)} not in {layer.name}")


class Rule:
    """Base class of all rules: how one kind of layer treats channels.

    The contract (see `docs/rules.md` for worked examples):

    - `analyze(view, g)` (**required**): given the channels of the layer's
      inputs (`view.inputs`, one `Chan` per input tensor), return one `Chan`
      per output tensor, and declare every weight axis indexed by channels
      with `g.slice(view, weight_index, axis, atoms)`. Producers create new
      channels with `g.produce(view, n)`; consumers read their input's
      channels with `g.expect(view, i, axis)`. Raise `Barrier(reason)` when
      the layer cannot carry channels through.
    - `rebuild_config(layer, config, io)`: the config of the smaller layer,
      given the keep masks of its inputs and outputs (`NodeIO`). Default:
      unchanged (weightless or per-channel layers whose config holds no width).
    - `rebuild_weights(layer, weights, io)`: the smaller layer's weights, given
      the original's with the removed positions already deleted. Default:
      unchanged. For layers whose computation depends on a width beyond the
      sliced weights (attention's `1/sqrt(key_dim)` scale).
    - `rebuild_call(op, args, kwargs, io)`: call the rebuilt layer or operation
      on the smaller model's tensors and return its outputs. Default:
      `op(*args, **kwargs)`. For `keras.ops` operations whose *call arguments*
      hold channel counts or per-channel values (a slicing key, a constant
      operand), which `rebuild_config` cannot reach.
    - `macs(layer, in_shapes, out_shapes)`: the multiply-accumulates of one
      call for one sample, as `[(weight variable, positions)]` (the call costs
      `sum(positions * variable.size)`). Default: none (normalizations,
      activations, merges). It is what FLOPs counting, FLOPs targets and the
      data-driven criteria (which look for the layers that read channels)
      know of the layer, so a layer that multiplies by a weight must say so.

    Attributes:
        couples_calls: For layers called at several nodes: the inputs of
            every call are unified (one set of weights must see the same
            channels). Weightless rules set it to False.
        passes_frozen: The layer hands a *frozen* first input (model input,
            barrier output: channels that cannot be removed) on unchanged, so
            `analyze` is not called for it: pass-through layers set it to True
            and need not check `view.inputs[0].frozen` themselves.
    """

    couples_calls: bool = True
    passes_frozen: bool = False

    def analyze(self, view: NodeView, g: Builder) -> list[Chan]:  # pragma: no cover - checked at registration
        raise NotImplementedError(f"{type(self).__name__} must implement analyze(view, g)")

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        """Return the config of the smaller layer. Default: unchanged."""
        return config

    def rebuild_weights(self, layer, weights: list, io: NodeIO) -> list:
        """Return the weights of the smaller layer (already sliced). Default: unchanged."""
        return weights

    def rebuild_call(self, op, args: tuple, kwargs: dict, io: NodeIO):
        """The outputs of the rebuilt `op` on the smaller model's tensors. Default: `op(*args, **kwargs)`."""
        return op(*args, **kwargs)

    def macs(self, layer, in_shapes: list[tuple], out_shapes: list[tuple]) -> list[tuple[Any, int]]:
        """`[(variable, positions)]`: the MACs of one call per sample. Default: none."""
        return []

    # Helpers shared by subclasses -------------------------------------------------
    @staticmethod
    def same(view: NodeView) -> list[Chan]:
        """Outputs carry the first input's channels unchanged."""
        return [view.inputs[0] for _ in view.out_shapes]


def kept(mask: np.ndarray | None) -> int | None:
    return None if mask is None else int(np.count_nonzero(mask))


def compress_list(values: Sequence, mask: np.ndarray) -> list:
    return [v for v, k in zip(values, mask) if k]
