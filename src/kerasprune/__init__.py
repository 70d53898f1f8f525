"""kerasprune: remove filters from Keras 3 models, correctly.

Core:
    analyze(model) -> ChannelGraph                    coupled channel groups
    remove_filters(model, selection) -> keras.Model   new, smaller model
    mask_filters(model, selection) -> None            in place, exact zeroing
Selection:   select, score, Selection, count_flops, count_params, flops_by_layer
Workflow:    sensitivity, prune_and_finetune (PruningSchedule, distill=), SoftPruning
Recovery:    make_distiller, Distillation, StudentValidation; GroupLasso, group_norms;
             recalibrate_batchnorm
Files:       load_model (safe_mode), save_model (atomic); reports: compare
Latency:     measure_latency, latency_breakdown, get_runtime, build_latency_model; select(target_latency=)
Deploy:      fold_batchnorm (BatchNorm and other affine layers into convs); kerasprune.export
Extension:   register_rule with Rule / ChannelParams / Elementwise / CouplerRule

Names load on first use (PEP 562), so `import kerasprune` and the `kerasprune` command's
`--help` do not import Keras or a backend; `kerasprune.X` works for every name below and
every submodule. To export a new name, add one line to `_EXPORTS`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "ChannelGraph": "graph",
    "ChannelParams": "rules",
    "Comparison": "report",
    "CouplerRule": "rules",
    "Distillation": "distill",
    "Elementwise": "rules",
    "FinetuneHistory": "finetune",
    "Group": "graph",
    "GroupLasso": "sparsity",
    "LatencyBreakdown": "breakdown",
    "LatencyModel": "latency_model",
    "LatencyResult": "latency",
    "Runtime": "runtimes",
    "ModelLoadError": "errors",
    "ModelSaveError": "errors",
    "Plan": "plan",
    "PolynomialSchedule": "soft",
    "PruningError": "errors",
    "PruningSchedule": "schedules",
    "Rule": "rules",
    "Selection": "selection",
    "SelectionError": "errors",
    "SensitivityResult": "sensitivity",
    "SoftPruning": "soft",
    "StudentValidation": "distill",
    "UnsupportedLayerError": "errors",
    "analyze": "graph",
    "build_latency_model": "latency_model",
    "compare": "report",
    "count_flops": "flops",
    "count_params": "flops",
    "flops_by_layer": "flops",
    "fold_batchnorm": "deploy",
    "get_runtime": "runtimes",
    "group_norms": "sparsity",
    "latency_breakdown": "breakdown",
    "load_model": "io",
    "make_distiller": "distill",
    "make_plan": "plan",
    "mask_filters": "masking",
    "measure_latency": "latency",
    "prune_and_finetune": "finetune",
    "recalibrate_batchnorm": "recalibrate",
    "register_rule": "rules",
    "remove_filters": "surgery",
    "save_model": "io",
    "score": "criteria",
    "select": "allocation",
    "sensitivity": "sensitivity",
    "unregister_rule": "rules",
}

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
    "LatencyBreakdown",
    "LatencyModel",
    "LatencyResult",
    "ModelLoadError",
    "ModelSaveError",
    "Plan",
    "PolynomialSchedule",
    "PruningError",
    "PruningSchedule",
    "Rule",
    "Runtime",
    "Selection",
    "SelectionError",
    "SensitivityResult",
    "SoftPruning",
    "StudentValidation",
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
    "group_norms",
    "latency_breakdown",
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"kerasprune.{module}"), name)
    elif importlib.util.find_spec(f"kerasprune.{name}") is not None:  # a submodule: kp.report, kp.rules
        value = importlib.import_module(f"kerasprune.{name}")
    else:
        raise AttributeError(f"module 'kerasprune' has no attribute '{name}'")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps `kerasprune.sensitivity` the function when its module of the same name is imported.

    Importing a submodule binds it on the package; an eager `from kerasprune.sensitivity
    import sensitivity` used to rebind the name afterwards. Lazily, the package refuses the
    submodule binding for exported names instead (the module stays in `sys.modules`).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # what the names are, for type checkers and readers
    from kerasprune import criteria
    from kerasprune.allocation import select
    from kerasprune.breakdown import LatencyBreakdown, latency_breakdown
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
    from kerasprune.latency import LatencyResult, measure_latency
    from kerasprune.latency_model import LatencyModel, build_latency_model
    from kerasprune.masking import mask_filters
    from kerasprune.plan import Plan, make_plan
    from kerasprune.recalibrate import recalibrate_batchnorm
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
    from kerasprune.schedules import PruningSchedule
    from kerasprune.selection import Selection
    from kerasprune.sensitivity import SensitivityResult, sensitivity
    from kerasprune.soft import PolynomialSchedule, SoftPruning
    from kerasprune.sparsity import GroupLasso, group_norms
    from kerasprune.surgery import remove_filters
