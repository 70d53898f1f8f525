"""kerasprune: remove filters from Keras 3 models, correctly.

Core:
    analyze(model) -> ChannelGraph                    coupled channel groups
    remove_filters(model, selection) -> keras.Model   new, smaller model
    mask_filters(model, selection) -> None            in place, exact zeroing
Selection:   select, score, Selection, count_flops, count_params, flops_by_layer
Workflow:    sensitivity, prune_and_finetune, SoftPruning
Files:       load_model (safe_mode), save_model (atomic); reports: compare
Latency:     measure_latency, latency_breakdown, get_runtime, build_latency_model; select(target_latency=)
Deploy:      fold_batchnorm (BatchNorm and other affine layers into convs); kerasprune.export
Extension:   register_rule with Rule / ChannelParams / Elementwise / CouplerRule
"""

from kerasprune import criteria
from kerasprune.allocation import select
from kerasprune.breakdown import LatencyBreakdown, latency_breakdown
from kerasprune.criteria import score
from kerasprune.deploy import fold_batchnorm
from kerasprune.errors import (
    ModelLoadError,
    ModelSaveError,
    PruningError,
    SelectionError,
    UnsupportedLayerError,
)
from kerasprune.finetune import FinetuneHistory, prune_and_finetune
from kerasprune.flops import count_flops, count_params, flops_by_layer
from kerasprune.graph import ChannelGraph, Group, analyze
from kerasprune.io import load_model, save_model
from kerasprune.latency import LatencyResult, measure_latency
from kerasprune.latency_model import LatencyModel, build_latency_model
from kerasprune.masking import mask_filters
from kerasprune.plan import Plan, make_plan
from kerasprune.report import Comparison, compare
from kerasprune.rules import (
    ChannelParams,
    CouplerRule,
    Elementwise,
    Rule,
    register_rule,
    unregister_rule,
)
from kerasprune.runtimes import Runtime, get_runtime
from kerasprune.selection import Selection
from kerasprune.sensitivity import SensitivityResult, sensitivity
from kerasprune.soft import PolynomialSchedule, SoftPruning
from kerasprune.surgery import remove_filters

__version__ = "0.1.0"

__all__ = [
    "ChannelGraph",
    "ChannelParams",
    "Comparison",
    "CouplerRule",
    "Elementwise",
    "FinetuneHistory",
    "Group",
    "LatencyBreakdown",
    "LatencyModel",
    "LatencyResult",
    "ModelLoadError",
    "ModelSaveError",
    "Plan",
    "PolynomialSchedule",
    "PruningError",
    "Rule",
    "Runtime",
    "Selection",
    "SelectionError",
    "SensitivityResult",
    "SoftPruning",
    "UnsupportedLayerError",
    "analyze",
    "build_latency_model",
    "compare",
    "count_flops",
    "count_params",
    "criteria",
    "flops_by_layer",
    "fold_batchnorm",
    "get_runtime",
    "latency_breakdown",
    "load_model",
    "make_plan",
    "mask_filters",
    "measure_latency",
    "prune_and_finetune",
    "register_rule",
    "remove_filters",
    "save_model",
    "score",
    "select",
    "sensitivity",
    "unregister_rule",
]
