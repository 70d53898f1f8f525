"""Pass-through rules for layers with per-channel parameters.

`BatchNormalization` (inference) is channel-wise and exact. Layer, group and
unit normalization compute statistics *across* channels: they are prunable but
approximate (`exact=False`), because the kept channels' outputs change when
other channels are removed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from keras import layers

from kerasprune.rules.base import (
    Barrier,
    Chan,
    NodeIO,
    NodeView,
    Rule,
    kept,
    norm_axis,
    weight_index,
)
from kerasprune.rules.registry import register_rule


def _axes(axis, rank: int) -> list[int]:
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return sorted(norm_axis(int(a), rank) for a in axes)


def _in_axis(view: NodeView) -> int:
    c = view.inputs[0]
    return view.rank() - 1 if c.frozen else int(c.axis)


class ChannelParams(Rule):
    """A channel-wise layer whose listed weights hold one entry per channel.

    This is the rule to register for a user's own per-channel layer, e.g. a
    learned scale: `register_rule(MyScale, ChannelParams(("scale",),
    config_key="channels"))`.

    Args:
        weights: Attribute names of the per-channel variables (missing ones,
            e.g. `gamma` of a BN with `scale=False`, are skipped).
        statistics: Attribute names of per-channel variables that masking
            leaves as they are (running statistics); removal still slices them.
        config_key: Config entry that stores the channel count, if any.
        exact: False when the layer mixes channels (normalization).
    """

    def __init__(
        self,
        weights: Sequence[str] = (),
        statistics: Sequence[str] = (),
        config_key: str | None = None,
        exact: bool = True,
    ):
        self.weights = tuple(weights)
        self.statistics = tuple(statistics)
        self.config_key = config_key
        self.exact = exact

    def analyze(self, view: NodeView, g) -> list[Chan]:
        layer = view.layer
        axis = self.channel_axis(view)
        atoms = g.expect(view, 0, axis)
        for names, zero in ((self.weights, True), (self.statistics, False)):
            for name in names:
                var = getattr(layer, name, None)
                if var is not None:
                    g.slice(view, weight_index(layer, var), self.param_axis(view, axis), atoms, zero=zero)
        if not self.exact:
            g.inexact(atoms, f"'{view.key}' ({type(layer).__name__}) normalizes across channels")
        return [Chan(axis, atoms)]

    def channel_axis(self, view: NodeView) -> int:
        return _in_axis(view)

    def param_axis(self, view: NodeView, axis: int) -> int:
        return 0

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        if self.config_key is None:
            return config
        return {**config, self.config_key: kept(io.inputs[0])}


class BatchNormRule(ChannelParams):
    """`BatchNormalization`: gamma/beta zeroed by masking, moving stats sliced."""

    def __init__(self):
        super().__init__(("gamma", "beta"), ("moving_mean", "moving_variance"))

    def channel_axis(self, view: NodeView) -> int:
        axis = norm_axis(int(view.layer.axis), view.rank())
        c = view.inputs[0]
        if not c.frozen and c.axis != axis:
            raise Barrier(f"normalizes axis {axis} but channels are on axis {c.axis}")
        return axis


class LayerNormRule(ChannelParams):
    """`LayerNormalization`: approximate when the channel axis is normalized."""

    def __init__(self):
        super().__init__(("gamma", "beta"), exact=False)

    def analyze(self, view: NodeView, g) -> list[Chan]:
        axis = _in_axis(view)
        axes = _axes(view.layer.axis, view.rank())
        if axis not in axes:
            return self.same(view)
        if len(axes) != 1:
            raise Barrier("normalizes several axes including the channel axis")
        return super().analyze(view, g)


class GroupNormRule(ChannelParams):
    """`GroupNormalization`: exact when every channel is its own group."""

    def __init__(self):
        super().__init__(("gamma", "beta"))

    def analyze(self, view: NodeView, g) -> list[Chan]:
        axis = norm_axis(int(view.layer.axis), view.rank())
        c = view.inputs[0]
        if not c.frozen and c.axis != axis:
            raise Barrier(f"normalizes axis {axis} but channels are on axis {c.axis}")
        atoms = g.expect(view, 0, axis)
        layer = view.layer
        for name in self.weights:
            var = getattr(layer, name, None)
            if var is not None:
                g.slice(view, weight_index(layer, var), 0, atoms)
        if layer.groups != len(atoms):
            g.inexact(atoms, f"'{view.key}' (GroupNormalization) normalizes across channels")
            g.balance(
                list(atoms.reshape(layer.groups, -1)),
                f"Layer '{view.key}' (GroupNormalization) has groups={layer.groups} (its channels must stay "
                "divisible by it)",
            )
        return [Chan(axis, atoms)]

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        n = kept(io.inputs[0])
        groups = int(config["groups"])
        if groups == len(io.inputs[0]):
            return {**config, "groups": n}
        if n % groups:
            from kerasprune.errors import PruningError

            raise PruningError(
                f"Layer '{layer.name}' (GroupNormalization) has groups={groups}; "
                f"{n} remaining channels are not divisible by it"
            )
        return config


class UnitNormRule(Rule):
    """`UnitNormalization`: approximate when the channel axis is normalized."""

    couples_calls = False

    def analyze(self, view: NodeView, g) -> list[Chan]:
        c = view.inputs[0]
        if c.axis in _axes(view.layer.axis, view.rank()):
            g.inexact(c.atoms, f"'{view.key}' (UnitNormalization) normalizes across channels")
        return [c]


class PReLURule(ChannelParams):
    """`PReLU`: `alpha` has the input's shape less batch, shared axes of size 1."""

    passes_frozen = True
    def __init__(self):
        super().__init__(("alpha",))

    def analyze(self, view: NodeView, g) -> list[Chan]:
        axis = _in_axis(view)
        if view.layer.alpha.shape[axis - 1] == 1:
            atoms = g.expect(view, 0, axis)
            return [Chan(axis, atoms)]
        return super().analyze(view, g)

    def param_axis(self, view: NodeView, axis: int) -> int:
        return axis - 1


class RescalingRule(Rule):
    """`Rescaling` with scalar or per-channel `scale`/`offset`."""

    couples_calls = False

    def analyze(self, view: NodeView, g) -> list[Chan]:
        c = view.inputs[0]
        for name in ("scale", "offset"):
            v = np.asarray(getattr(view.layer, name))
            if v.size > 1 and v.shape[-1] != c.size:
                raise Barrier(f"{name} of shape {v.shape} is not per-channel")
            if v.size > 1 and c.axis != view.rank() - 1:
                raise Barrier(f"per-channel {name} needs channels on the last axis")
        g.expect(view, 0, c.axis)
        return [c]

    def rebuild_config(self, layer, config: dict, io: NodeIO) -> dict:
        keep = io.inputs[0]
        new = dict(config)
        for name in ("scale", "offset"):
            v = np.asarray(layer.__dict__.get(name, config.get(name)))
            if v.size > 1:
                new[name] = np.compress(keep, v, axis=-1).tolist()
        return new


class NormalizationRule(Rule):
    """`Normalization` (preprocessing): its statistics are not sliced."""

    passes_frozen = True
    passes_frozen = True
    def analyze(self, view: NodeView, g) -> list[Chan]:
        c = view.inputs[0]
        atoms = g.expect(view, 0, c.axis)
        g.block(atoms, f"'{view.key}' (Normalization) holds per-channel statistics that are not sliced")
        return [c]


register_rule(layers.BatchNormalization, BatchNormRule())
register_rule(layers.LayerNormalization, LayerNormRule())
register_rule(layers.GroupNormalization, GroupNormRule())
register_rule(layers.UnitNormalization, UnitNormRule())
register_rule(layers.PReLU, PReLURule())
register_rule(layers.Rescaling, RescalingRule())
register_rule(layers.Normalization, NormalizationRule())
