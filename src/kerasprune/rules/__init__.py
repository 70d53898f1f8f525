"""Per-layer-type pruning rules and their registry.

Importing this package registers the rules for every supported Keras layer.
Users add rules for their own layers with `register_rule`.
"""

from kerasprune.rules import applications as _applications  # noqa: F401  (registers)
from kerasprune.rules import attention as _attention  # noqa: F401
from kerasprune.rules import convolution as _convolution  # noqa: F401
from kerasprune.rules import merging as _merging  # noqa: F401
from kerasprune.rules import normalization as _normalization  # noqa: F401
from kerasprune.rules import ops as _ops  # noqa: F401
from kerasprune.rules import ops_index as _ops_index  # noqa: F401
from kerasprune.rules import recurrent as _recurrent  # noqa: F401
from kerasprune.rules import reshaping as _reshaping  # noqa: F401
from kerasprune.rules import wrappers as _wrappers  # noqa: F401
from kerasprune.rules.base import (
    Barrier,
    Chan,
    NodeIO,
    NodeView,
    Rule,
    WeightSlice,
    channel_axis,
    compress_list,
    kept,
    norm_axis,
    weight_index,
)
from kerasprune.rules.merging import ConcatenateRule, CouplerRule
from kerasprune.rules.normalization import ChannelParams
from kerasprune.rules.ops import OpRule
from kerasprune.rules.registry import find_rule, register_rule, registered, unregister_rule
from kerasprune.rules.reshaping import Elementwise, SpatialRule

__all__ = [
    "Barrier",
    "Chan",
    "ChannelParams",
    "ConcatenateRule",
    "CouplerRule",
    "Elementwise",
    "NodeIO",
    "NodeView",
    "OpRule",
    "Rule",
    "SpatialRule",
    "WeightSlice",
    "channel_axis",
    "compress_list",
    "find_rule",
    "kept",
    "norm_axis",
    "register_rule",
    "registered",
    "unregister_rule",
    "weight_index",
]
