"""Iterative pruning schedules: how much of the original each step keeps.

A `PruningSchedule` is the sequence of fractions of the original model kept
after each prune/fine-tune step of `prune_and_finetune`: fractions of the
original FLOPs for `target_flops`, fractions of every group's channels for
`target_ratio`. Between steps the model is fine-tuned and re-scored, so each
step ranks the channels of the model it actually prunes.

- `PruningSchedule.linear(final, steps)`: equal decrements, `1 - k/steps * (1 - final)`
  (the default of `prune_and_finetune`).
- `PruningSchedule.geometric(final, steps)`: equal *ratios*, `final ** (k/steps)`:
  every step removes the same share of what is left, so late steps, which
  prune an already small model, remove less.
- `PruningSchedule((0.7, 0.5, 0.35, 0.25))`: any strictly decreasing sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kerasprune.errors import PruningError

NAMED = ("linear", "geometric")


@dataclass(frozen=True)
class PruningSchedule:
    """Fractions of the original kept after each pruning step, strictly decreasing in (0, 1].

    Args:
        keep: One fraction per step; the last one is the final target.

    Raises:
        PruningError: an empty sequence, a value outside (0, 1], or values that
            do not decrease.

    Example:
        >>> kerasprune.PruningSchedule.geometric(0.25, 2).keep
        (0.5, 0.25)
        >>> small, history = kerasprune.prune_and_finetune(
        ...     model, target_flops=0.25, schedule=kerasprune.PruningSchedule.geometric(0.25, 4), ...)
    """

    keep: tuple[float, ...]

    def __post_init__(self):
        try:
            keep = tuple(float(v) for v in self.keep)
        except (TypeError, ValueError):
            raise PruningError(f"PruningSchedule.keep must be a sequence of numbers. Received: {self.keep!r}") from None
        if not keep:
            raise PruningError("PruningSchedule.keep must have at least one step. Received: ()")
        if any(not 0.0 < v <= 1.0 for v in keep):
            raise PruningError(f"PruningSchedule.keep values must be in (0, 1]. Received: {keep}")
        if any(b >= a for a, b in zip(keep, keep[1:])):
            raise PruningError(f"PruningSchedule.keep must decrease strictly. Received: {keep}")
        object.__setattr__(self, "keep", keep)

    @property
    def steps(self) -> int:
        """Number of prune/fine-tune steps."""
        return len(self.keep)

    @property
    def final(self) -> float:
        """Fraction kept after the last step."""
        return self.keep[-1]

    @classmethod
    def linear(cls, final: float, steps: int) -> PruningSchedule:
        """Equal decrements from 1 to `final` in `steps` steps."""
        _check(final, steps)
        return cls(tuple(1.0 - k / steps * (1.0 - final) for k in range(1, steps + 1)))

    @classmethod
    def geometric(cls, final: float, steps: int) -> PruningSchedule:
        """Equal ratios from 1 to `final` in `steps` steps (`final ** (k / steps)`)."""
        _check(final, steps)
        return cls(tuple(final ** (k / steps) for k in range(1, steps + 1)))

    def step_ratio(self, k: int) -> float:
        """Fraction of what step `k` (1-based) starts from that it removes."""
        before = 1.0 if k == 1 else self.keep[k - 2]
        return 1.0 - self.keep[k - 1] / before


def _check(final: float, steps: int) -> None:
    if not 0.0 < final < 1.0:
        raise PruningError(f"The final fraction kept must be in (0, 1). Received: final={final}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise PruningError(f"steps must be a positive integer. Received: steps={steps!r}")


def resolve_schedule(
    schedule: str | Sequence[float] | PruningSchedule, final: float, steps: int | None
) -> PruningSchedule:
    """The `PruningSchedule` that `prune_and_finetune(schedule=..., steps=...)` asks for.

    Args:
        schedule: `"linear"`, `"geometric"`, a `PruningSchedule`, or a sequence
            of kept fractions.
        final: The fraction kept in the end, from the target (`target_flops`,
            or `1 - target_ratio`).
        steps: Number of steps for a named schedule (default 3); for an explicit
            schedule `None` or its length.

    Raises:
        PruningError: unknown name, a schedule whose last value is not `final`, or
            `steps` that contradicts the schedule's length.
    """
    if isinstance(schedule, str):
        if schedule not in NAMED:
            raise PruningError(f"schedule must be one of {NAMED}, a PruningSchedule or a sequence. Received: {schedule!r}")
        return getattr(PruningSchedule, schedule)(final, 3 if steps is None else steps)
    if not isinstance(schedule, PruningSchedule):
        if not isinstance(schedule, Sequence):
            raise PruningError(f"schedule must be a name, a PruningSchedule or a sequence. Received: {schedule!r}")
        schedule = PruningSchedule(tuple(schedule))
    if steps is not None and steps != schedule.steps:
        raise PruningError(
            f"steps={steps} contradicts the schedule's {schedule.steps} steps {schedule.keep}; leave steps out"
        )
    if abs(schedule.final - final) > 1e-9:
        raise PruningError(f"The schedule ends at {schedule.final}, but the target keeps {final}")
    return schedule
