"""kerasprune: remove filters from Keras 3 models, correctly.

Public API:
    analyze(model) -> ChannelGraph
    remove_filters(model, selection) -> keras.Model   (new, smaller model)
    mask_filters(model, selection) -> None            (in place, exact zeroing)
"""

from kerasprune.errors import ModelLoadError, PruningError, SelectionError, UnsupportedLayerError
from kerasprune.graph import ChannelGraph, Group, analyze
from kerasprune.masking import mask_filters
from kerasprune.plan import Plan, make_plan
from kerasprune.rules import (
    ChannelParams,
    CouplerRule,
    Elementwise,
    Rule,
    register_rule,
    unregister_rule,
)
from kerasprune.surgery import remove_filters

__version__ = "0.1.0"

__all__ = [
    "ChannelGraph",
    "ChannelParams",
    "CouplerRule",
    "Elementwise",
    "Group",
    "ModelLoadError",
    "Plan",
    "PruningError",
    "Rule",
    "SelectionError",
    "UnsupportedLayerError",
    "analyze",
    "make_plan",
    "mask_filters",
    "register_rule",
    "remove_filters",
    "unregister_rule",
]
