"""kerasprune: remove filters from Keras 3 models, correctly.

Core:
    analyze(model) -> ChannelGraph                    coupled channel groups
    remove_filters(model, selection) -> keras.Model   new, smaller model
    mask_filters(model, selection) -> None            in place, exact zeroing
Selection:   select, score, Selection, count_flops, count_params, flops_by_layer
Workflow:    sensitivity, prune_and_finetune (PruningSchedule, distill=), SoftPruning
Recovery:    make_distiller, Distillation, StudentValidation; GroupLasso, group_norms;
             recalibrate_batchnorm
Files:       load_model (safe_mode), save_model (atomic); reports: compare, measure_latency
Deploy:      fold_batchnorm (BatchNorm and other affine layers into convs); kerasprune.export
Extension:   register_rule with Rule / ChannelParams / Elementwise / CouplerRule
"""

from kerasprune import criteria
from kerasprune.allocation import select
from kerasprune.criteria import score
from kerasprune.deploy import fold_batchnorm
from kerasprune.distill import Distillation, StudentValidation, make_distiller
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
from kerasprune.masking import mask_filters
from kerasprune.plan import Plan, make_plan
from kerasprune.recalibrate import recalibrate_batchnorm
from kerasprune.report import Comparison, LatencyResult, compare, measure_latency
from kerasprune.rules import (
    ChannelParams,
    CouplerRule,
    Elementwise,
    Rule,
    register_rule,
    unregister_rule,
)
from kerasprune.schedules import PruningSchedule
from kerasprune.selection import Selection
from kerasprune.sensitivity import SensitivityResult, sensitivity
from kerasprune.soft import PolynomialSchedule, SoftPruning
from kerasprune.sparsity import GroupLasso, group_norms
from kerasprune.surgery import remove_filters

__version__ = "0.1.0"

__all__ = [
    "ChannelGraph",
    "ChannelParams",
    "Comparison",
    "CouplerRule",
    "Distillation",
    "Elementwise",
    "FinetuneHistory",
    "Group",
    "GroupLasso",
    "LatencyResult",
    "ModelLoadError",
    "ModelSaveError",
    "Plan",
    "PolynomialSchedule",
    "PruningError",
    "PruningSchedule",
    "Rule",
    "Selection",
    "SelectionError",
    "SensitivityResult",
    "SoftPruning",
    "StudentValidation",
    "UnsupportedLayerError",
    "analyze",
    "compare",
    "count_flops",
    "count_params",
    "criteria",
    "flops_by_layer",
    "fold_batchnorm",
    "group_norms",
    "load_model",
    "make_distiller",
    "make_plan",
    "mask_filters",
    "measure_latency",
    "prune_and_finetune",
    "recalibrate_batchnorm",
    "register_rule",
    "remove_filters",
    "save_model",
    "score",
    "select",
    "sensitivity",
    "unregister_rule",
]
