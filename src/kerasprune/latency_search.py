"""Latency-targeted selection: the measured search behind `select(..., target_latency=...)`.

`search(...)` measures per-group latency tables (`kerasprune.latency_model`),
finds the removal count whose prediction meets the target, rebuilds that plan
and measures it next to the original (interleaved), then searches again while
the measured fraction is off by more than `tolerance`, now from the
measurements: the MAC fraction where the measured latency fraction reaches the
target (`_next_macs`: interpolated between measured plans on either side of
it, else extended along the chord from the original through the cheapest
measured plan) becomes a MAC target for the same planner. Latency on one
runtime is close to affine in MACs along the planner's path, so this converges
in a step or two whatever the tables got wrong. The plan returned is the
measured one closest to the target among those measured faster than the
original; when none is, nothing is removed (and a warning says so).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from kerasprune.errors import PruningError
from kerasprune.latency import paired_ratio
from kerasprune.latency_model import LatencyModel, _runs_for, build_latency_model
from kerasprune.plan import Plan
from kerasprune.runtimes import Runtime, get_runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trial:
    """One measured candidate: channels removed, predicted and measured latency (ms)."""

    removed: int
    predicted_ms: float
    before_ms: float
    after_ms: float

    @property
    def fraction(self) -> float:
        return self.after_ms / self.before_ms


@dataclass(frozen=True)
class LatencyOutcome:
    """What `search` chose and measured.

    Attributes:
        n_remove: `{group id: channels to remove}` for the planner.
        target: The requested fraction of the original latency.
        before_ms, predicted_ms, after_ms: The chosen plan's measurement (original
            and pruned timed interleaved in one run) and the prediction that chose it
            (as a fraction of the table's baseline, times `before_ms`).
        runtime: `Runtime.info()`; `batch_size` the batch.
        trials: Every measured candidate, in order.
        model: The (uncalibrated) `LatencyModel`.
    """

    n_remove: dict
    target: float
    before_ms: float
    predicted_ms: float
    after_ms: float
    runtime: dict
    batch_size: int
    trials: tuple[Trial, ...] = ()
    model: LatencyModel | None = field(default=None, repr=False, compare=False)

    def fields(self) -> dict:
        """The `Selection` fields of this outcome (`runtime`, `latency_before_ms`, ...)."""
        return {
            "runtime": self.runtime["runtime"],
            "latency_batch_size": self.batch_size,
            "latency_before_ms": self.before_ms,
            "latency_predicted_ms": self.predicted_ms,
            "latency_after_ms": self.after_ms,
            "runtime_info": self.runtime,
        }


def _monotone(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Measured `(k, fraction)` points made non-increasing in `k` by pooling adjacent violators
    (isotonic regression): on a noisy machine a plan that removes more can measure slower."""
    blocks: list[list[float]] = []  # [sum of fractions, count, first k, last k]
    for k, m in sorted(points):
        blocks.append([m, 1, k, k])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            total, n, _, last = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += n
            blocks[-1][3] = last
    out = []
    for total, n, first, last in blocks:
        out += [(first, total / n)] + ([(last, total / n)] if last != first else [])
    return out


def _next_macs(points: list[tuple[float, float]], target: float) -> tuple[float, float]:
    """The MAC fraction at which the measured latency fraction should reach `target`, and the
    latency fraction expected there.

    `points` are measured `(MAC fraction, latency fraction)` pairs, `(1, 1)` included, made
    monotone first (`_monotone`). Between the closest plans measured on either side of the
    target: linear interpolation (regula falsi); while every plan measured above it: the
    chord from the original `(1, 1)` through the least costly plan, extended. Latency on one
    runtime is close to affine in MACs (far closer than in channel counts), and the chord is
    exact for an affine relation; a secant through two nearby noisy plans is not.
    """
    pts = [(-k, m) for k, m in _monotone([(-f, m) for f, m in points])]  # non-decreasing in f
    above = sorted((f, m) for f, m in pts if m > target)
    f_a, m_a = above[0] if above else (1.0, 1.0)
    below = [(f, m) for f, m in pts if m <= target and f < f_a]
    if below:
        f_b, m_b = max(below)
        return f_b + (target - m_b) / max(m_a - m_b, 1e-12) * (f_a - f_b), target
    if f_a >= 1.0 or m_a >= 1.0:
        return f_a * target / m_a, target
    slope = (1.0 - m_a) / (1.0 - f_a)  # the chord from the original: exact when latency is affine in MACs
    return max(f_a - (m_a - target) / slope, 0.0), target


OPTIONS = (
    "widths", "warmup", "runs", "cache_dir", "subgraphs", "tolerance", "max_refine", "measure_runs", "statistic"
)


def search(
    model,
    graph,
    planner,
    cost,
    targets: Mapping[str, float],
    *,
    target: float,
    runtime: str | Runtime = "keras",
    batch_size: int = 1,
    options: Mapping | None = None,
) -> LatencyOutcome:
    """Choose removal counts that meet `target` (fraction of the original latency), measured.

    The hook behind `select(..., target_latency=...)`: `planner` is selection's
    planner (`groups`, `total`, `lowest`, `removal`, `flat`, `for_targets(cost,
    targets, check=)`). Options: `widths`, `warmup`, `runs`, `cache_dir`, `subgraphs` (tables);
    `tolerance` (0.05: stop refining when the measured fraction is within 5%
    of the target), `max_refine` (3), `measure_runs` (timed batches of each
    candidate and the original, interleaved; default: about 3 s of the original,
    20 to 200 runs), `statistic` (`"median"`: the original's median and the
    median per-round ratio; `"min"`: the fastest runs, the estimate least
    disturbed by other jobs on a busy machine).
    """
    from kerasprune.surgery import remove_filters

    opts = dict(options or {})
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise PruningError(f"Unknown latency options {unknown}; known: {list(OPTIONS)}")
    rt = get_runtime(runtime)
    tol, max_refine = float(opts.pop("tolerance", 0.05)), int(opts.pop("max_refine", 3))
    measure_runs = opts.pop("measure_runs", None)
    statistic = opts.pop("statistic", "median")
    if statistic not in ("median", "min"):
        raise PruningError(f"statistic must be 'median' or 'min'. Received: statistic={statistic!r}")
    lm = build_latency_model(model, runtime=rt, batch_size=batch_size, graph=graph, groups=planner.groups, **opts)
    measure_runs = int(measure_runs or _runs_for(lm.before, 3000.0, 20, 200))
    rest = {k: v for k, v in targets.items() if k != "target_latency"}
    most = planner.lowest(planner.total)
    most_flat = planner.flat(planner.removal(most))

    def plan_of(n_remove):
        removed = {gid: chans for gid, chans in planner.removal(n_remove).items() if len(chans)}
        return removed, Plan.from_groups(graph, removed)

    trials, plans, seen = [], [], set()
    original: dict = {}  # the original's timed callable, prepared (exported) once
    points = [(1.0, 1.0)]  # measured (MAC fraction, latency fraction)
    f_most = cost.flops(most_flat) / max(cost.flops_before, 1)
    for step in range(max_refine + 1):
        if step == 0:  # the tables decide
            predicted = lm.predict(most_flat) / lm.before
            at_limit = predicted > target
            if not at_limit:
                n_remove = planner.for_targets(cost, rest, check=lambda flat: lm.predict(flat) <= target * lm.before)
                predicted = lm.predict(planner.flat(planner.removal(n_remove))) / lm.before
        else:  # the measurements decide
            macs, predicted = _next_macs(points, target)
            at_limit = macs <= f_most
            if not at_limit:
                n_remove = planner.for_targets(cost, {**rest, "target_flops": min(macs, rest.get("target_flops", 1))})
        if at_limit:  # predicted unreachable: measure the most that can go, then decide
            n_remove = most
        removed, plan = plan_of(n_remove)
        flat = plan.flat_removed()
        sig = tuple(sorted((gid, tuple(c.tolist())) for gid, c in removed.items()))
        if sig in seen:
            break
        seen.add(sig)
        timing = dict(batch_size=batch_size, warmup=2, runs=measure_runs, prepared=original)
        if not plan.is_empty:
            pruned = remove_filters(model, plan, graph=graph)
            r0, r1 = rt.measure([model, pruned], **timing)
            if statistic == "min":
                t0, t1 = r0.min_ms, r1.min_ms
            else:
                t0, t1 = r0.median_ms, r0.median_ms * paired_ratio(r1, r0)
            original.pop((id(pruned), batch_size, 0), None)
            del pruned
        else:
            r0 = rt.measure([model], **timing)[0]
            t0 = t1 = r0.min_ms if statistic == "min" else r0.median_ms
        trials.append(Trial(int(flat.sum()), predicted * t0, t0, t1))
        plans.append((n_remove, flat))
        log.info(
            "latency search step %d: %d channels removed, predicted %.1f%%, measured %.1f%% (%.2f -> %.2f ms)",
            step, flat.sum(), 100 * predicted, 100 * t1 / t0, t0, t1,
        )
        if at_limit and t1 / t0 > target * (1 + tol):
            raise PruningError(
                f"target_latency={target} is unreachable on {rt.name} (batch {batch_size}): removing every "
                f"removable channel of the {len(planner.groups)} eligible groups (min_keep={planner.min_keep}, "
                f"round_to={planner.round_to}) was measured to keep {t1 / t0:.1%} of the latency "
                f"({t0:.2f} -> {t1:.2f} ms; predicted {predicted:.1%}): layers without prunable channels "
                f"and the runtime's per-call overhead stay"
            )
        if abs(t1 / t0 - target) <= tol * target or plan.is_empty:
            break
        points.append((cost.flops(flat) / max(cost.flops_before, 1), t1 / t0))
    info = {**rt.info(), "statistic": statistic, "runs": measure_runs}
    faster = [i for i, t in enumerate(trials) if t.after_ms < t.before_ms]
    if not faster:
        log.warning(
            "kerasprune.select: no candidate was measured faster than the original on %s (batch %d): %s; "
            "removing nothing", rt.name, batch_size, [f"{t.fraction:.1%}" for t in trials],
        )
        t0 = trials[-1].before_ms if trials else lm.before
        return LatencyOutcome(
            {g.id: 0 for g in planner.groups}, target, t0, t0, t0, info, batch_size, tuple(trials), lm
        )
    best = min(faster, key=lambda i: (abs(trials[i].fraction - target), trials[i].removed))
    t = trials[best]
    if abs(t.fraction - target) > 0.1 * target:
        log.warning(
            "kerasprune.select: target_latency=%s missed on %s: measured %.1f%% of the original (%.2f -> %.2f ms)",
            target, rt.name, 100 * t.fraction, t.before_ms, t.after_ms,
        )
    return LatencyOutcome(
        plans[best][0], target, t.before_ms, t.predicted_ms, t.after_ms, info, batch_size, tuple(trials), lm
    )
