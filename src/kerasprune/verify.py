"""Checking a pruned model against its masked twin: `verify_removal`.

Removal must compute what masking computes (exactly for exact groups). The check
builds whichever of the two models is missing, runs both on the same random input
and compares the outputs relative to their scale. A model whose output does not
depend on its input (a constant head, a bias-only path, a zero-weight layer) makes
that comparison vacuous, so the check also runs the original twice on different
inputs; when the outputs agree, it compares the feature maps of the layers the
plan changes (their kept channels) instead, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from kerasprune import testing
from kerasprune.plan import Plan

#: Removed and masked outputs may differ by this much (relative to the output scale).
TOLERANCE = 1e-4


@dataclass(frozen=True)
class Verification:
    """What `verify_removal` found.

    Attributes:
        max_error: Largest |removed - masked| output difference, relative to the
            output scale (at least 1).
        exact: Whether every group of the plan is exact (then `max_error` must be
            below `TOLERANCE`).
        input_dependent: Whether the model's output changes with its input; when it
            does not, the output comparison says nothing.
        feature_error: Largest difference over the kept channels of the changed layers'
            feature maps (None unless the output does not depend on the input).
        layers_compared: How many feature maps `feature_error` covers.
    """

    max_error: float
    exact: bool
    input_dependent: bool
    feature_error: float | None = None
    layers_compared: int = 0

    @property
    def ok(self) -> bool:
        """Whether removal matches masking (for exact plans; approximate ones always pass)."""
        worst = max(self.max_error, self.feature_error or 0.0)
        return not self.exact or worst < TOLERANCE

    @property
    def warnings(self) -> tuple[str, ...]:
        """Why the result means less than it seems (a constant output)."""
        if self.input_dependent:
            return ()
        where = (
            f"compared the kept channels of {self.layers_compared} changed feature maps instead"
            if self.layers_compared
            else "no changed feature map could be compared either"
        )
        return (f"the model's output does not depend on its input, so the outputs agree trivially; {where}",)


def verify_removal(model: keras.Model, plan: Plan, pruned: keras.Model | None = None, *, masked=None,
                   batch: int = 4, seed: int = 0) -> Verification:
    """Compare the removed and the masked model of `plan` on random input.

    Args:
        model: The original model (not modified).
        plan: The plan, made for `model` (`kerasprune.make_plan`).
        pruned: The removed model (`remove_filters(model, plan)`), built if None.
        masked: The masked copy (`mask_filters` on a copy of `model`), built if None.
        batch: Random samples to compare on.
        seed: Seed of the random input.

    Returns:
        A `Verification`; `.ok` is False when an exact plan's models differ.

    Example:
        >>> check = verify_removal(model, kerasprune.make_plan(kerasprune.analyze(model), sel))
        >>> assert check.ok, check.max_error
    """
    from kerasprune.masking import mask_filters
    from kerasprune.surgery import remove_filters

    if pruned is None:
        pruned = remove_filters(model, plan)
    if masked is None:
        masked = testing.copy_model(model)
        mask_filters(masked, plan.to_selection(), channelwise=plan.graph.options.get("channelwise", ()))
    x = testing.random_input(model, batch=batch, seed=seed)
    error = testing.max_output_difference(pruned, masked, x)
    other = testing.random_input(model, batch=batch, seed=seed + 1)
    dependent = _depends(model, x, other)
    feature_error, compared = None, 0
    if not dependent:
        feature_error, compared = _feature_maps(plan, pruned, masked, x)
    return Verification(error, plan.exact, dependent, feature_error, compared)


def _depends(model, x, other) -> bool:
    """Whether two different inputs give different outputs."""
    a, b = testing.predict(model, x), testing.predict(model, other)
    return any(not np.allclose(u, v, rtol=0, atol=1e-7 * max(1.0, float(np.abs(u).max()))) for u, v in zip(a, b))


def _feature_maps(plan: Plan, pruned, masked, x) -> tuple[float | None, int]:
    """Largest difference over the kept channels of the changed layers' outputs."""
    graph, worst, compared = plan.graph, 0.0, 0
    for key in plan.affected_layers:
        if "/" in key:  # inside a nested model: not reachable as a top-level output
            continue
        try:
            keep = plan.keep(graph.output_atoms(key))
            a = _output(pruned, key, x)
            b = _output(masked, key, x)
        except Exception:  # noqa: BLE001 - a layer without one output tensor: skip it
            continue
        if a is None or b is None or b.shape[-1] != len(keep) or a.shape[-1] != int(keep.sum()):
            continue
        scale = max(1.0, float(np.abs(b).max()))
        worst = max(worst, float(np.abs(a - b[..., keep]).max()) / scale)
        compared += 1
    return (worst if compared else None), compared


def _output(model, key: str, x):
    layer = model.get_layer(key)
    probe = keras.Model(model.inputs[0] if len(model.inputs) == 1 else model.inputs, layer.output)
    out = probe(x, training=False)
    return keras.ops.convert_to_numpy(out) if not isinstance(out, (list, tuple, dict)) else None
