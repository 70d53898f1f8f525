"""Importance criteria: one score per channel of a group, higher = more important.

Modules: `base` (the framework: `Criterion`, `ScoringContext`, adapters, `score`),
`weights` (l1, l2, mean, fpgm, bn_gamma, zero, random), `activations` (apoz,
mean_activation), `autodiff` (taylor).

A criterion is a `Criterion` object; `score_groups(groups, context)` returns
`{group id: scores}`. Two small adapters turn plain functions into criteria:

- `layer_criterion(fn)`: `fn(kernel) -> scores`, where `kernel` is a producer's
  kernel (numpy) with the output channels on the **last** axis. A group's score
  is the mean over its producers (all layers whose filters are the group's
  channels, e.g. every conv feeding a residual `Add`).
- `group_criterion(fn)`: `fn(group, context) -> scores` with full access to the
  `ChannelGraph` through `ScoringContext`.

A plain callable passed to `select`/`score` is wrapped by its number of
required positional parameters: one -> `layer_criterion`, two -> `group_criterion`.

Per-layer scores are *size-normalized*: magnitudes are averages over a
filter's weights (`l1` = mean |w|, `l2` = root mean square), so a 1x1 conv and
a 3x3 conv of the same residual group are comparable, and averaging over the
group's producers is meaningful. Within one layer the ranking equals the
ranking by the plain L1/L2 norm.
"""

from kerasprune.criteria import activations as _activations  # noqa: F401  (registers)
from kerasprune.criteria import autodiff as _autodiff  # noqa: F401
from kerasprune.criteria import weights as _weights  # noqa: F401
from kerasprune.criteria.base import (
    CRITERIA,
    DESCRIPTIONS,
    Criterion,
    CriterionSkip,
    ScoringContext,
    gather,
    get_criterion,
    group_criterion,
    layer_criterion,
    register_criterion,
    score,
    score_groups,
)

__all__ = [
    "CRITERIA",
    "DESCRIPTIONS",
    "Criterion",
    "CriterionSkip",
    "ScoringContext",
    "gather",
    "get_criterion",
    "group_criterion",
    "layer_criterion",
    "register_criterion",
    "score",
    "score_groups",
]
