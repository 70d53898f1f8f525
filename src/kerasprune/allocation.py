"""Choosing which filters to remove: `select(model, criterion, **options)` -> `Selection`.

A choice is made per *group* of coupled channels (see `ChannelGraph`): every
channel of a group is scored (`kerasprune.criteria`), and each group loses its
lowest-scoring channels. How many each group loses depends on one option:
`ratio`, `count`, `threshold`, or the targets `target_flops` / `target_params`
(met with the analytic cost model, `kerasprune.flops.CostModel`). With
`scope="global"` channels of all groups are ranked together on scores
normalized per group (divided by the group's mean absolute score). The result
is a `Plan` (every group, however many producers span it), recorded as a
`Selection`.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
from typing import Any

import numpy as np

from kerasprune.criteria import get_criterion, score_groups
from kerasprune.errors import PruningError, SelectionError
from kerasprune.flops import CostModel
from kerasprune.graph import ChannelGraph, graph_for
from kerasprune.groupwise import cells, lowest, removable
from kerasprune.plan import Plan, group_parts
from kerasprune.selection import Selection, SkippedGroup

log = logging.getLogger(__name__)

#: A target missed by more than this (fraction of the original) is warned about.
TARGET_SLACK = 0.03


def _is_index(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0


def _patterns(graph: ChannelGraph, spec, what: str) -> list[tuple[str, Any]]:
    if spec is None:
        return []
    items = (
        [spec]
        if isinstance(spec, (str, re.Pattern)) or not isinstance(spec, (list, tuple, set))
        else list(spec)
    )
    out = []
    for p in items:
        if isinstance(p, re.Pattern):
            out.append((p.pattern, p))
            continue
        if not isinstance(p, str):
            out.append((graph.key_of(p), None))
            continue
        try:
            rx = re.compile(p)
        except re.error:
            rx = None
        out.append((p, rx))
    for text, rx in out:
        if not any(_matches(k, [(text, rx)]) for k in graph.records):
            raise SelectionError(f"{what} pattern '{text}' matches no layer of model '{graph.model.name}'")
    return out


def _matches(key: str, patterns) -> str | None:
    """The pattern matching `key`, its bare name, or a path prefix of it.

    A prefix at a `/` boundary matches what lies under it: `"mha"` matches the
    head group `"mha/heads"`, `"backbone"` every layer of the nested model.
    """
    parts = key.split("/")
    names = {key, parts[-1], *("/".join(parts[:i]) for i in range(1, len(parts)))}
    for text, rx in patterns:
        if text in names or (rx is not None and any(rx.fullmatch(n) for n in names)):
            return text
    return None


def _check_options(
    criterion, ratio, count, threshold, scope, target_flops, target_params, round_to, min_keep
):
    modes = {k: v for k, v in dict(ratio=ratio, count=count, threshold=threshold).items() if v is not None}
    targets = {
        k: v for k, v in dict(target_flops=target_flops, target_params=target_params).items() if v is not None
    }
    if len(modes) + (1 if targets else 0) > 1:
        raise PruningError(
            f"Give only one of ratio, count, threshold or targets. Received: {sorted({**modes, **targets})}"
        )
    if scope not in ("local", "global"):
        raise PruningError(f"scope must be 'local' or 'global'. Received: scope={scope!r}")
    if ratio is not None and not (isinstance(ratio, numbers.Real) and 0 <= ratio < 1):
        raise PruningError(f"ratio must be a number in [0, 1). Received: ratio={ratio!r}")
    if count is not None and not (_is_index(count)):
        raise PruningError(f"count must be a non-negative integer. Received: count={count!r}")
    if threshold is not None and not isinstance(threshold, numbers.Real):
        raise PruningError(f"threshold must be a number. Received: threshold={threshold!r}")
    for k, v in targets.items():
        if not (isinstance(v, numbers.Real) and 0 < v <= 1):
            raise PruningError(f"{k} is the fraction to keep, in (0, 1]. Received: {k}={v!r}")
    if round_to is not None and not (_is_index(round_to) and round_to >= 1):
        raise PruningError(f"round_to must be a positive integer. Received: round_to={round_to!r}")
    if not (_is_index(min_keep) and min_keep >= 1):
        raise PruningError(f"min_keep must be an integer >= 1. Received: min_keep={min_keep!r}")
    if not modes and not targets:
        if get_criterion(criterion).name == "zero":
            return {"threshold": float(np.finfo(np.float64).tiny)}, targets
        raise PruningError(
            "Say how much to remove: ratio=, count=, threshold=, target_flops= or target_params="
        )
    return modes, targets


def select(
    model,
    criterion,
    *,
    ratio: float | None = None,
    count: int | None = None,
    threshold: float | None = None,
    scope: str = "local",
    target_flops: float | None = None,
    target_params: float | None = None,
    round_to: int | None = None,
    min_keep: int = 1,
    include=None,
    exclude=None,
    data=None,
    loss=None,
    seed: int = 0,
    batch_size: int = 32,
    graph: ChannelGraph | None = None,
    channelwise=(),
) -> Selection:
    """Choose filters to remove, group by group, from importance scores.

    Exactly one of `ratio`, `count`, `threshold`, or targets (`target_flops`
    and/or `target_params`) says how much goes. `criterion="zero"` alone
    selects the dead (all-zero) filters.

    Args:
        model: A built Functional or Sequential model (not modified).
        criterion: Criterion name or callable (see `kerasprune.criteria`).
        ratio: Fraction of each group's channels to remove (`scope="global"`:
            of all eligible channels, ranked together), in [0, 1).
        count: Channels to remove per group (global: in total).
        threshold: Remove channels whose score is below it (global: the
            normalized score, where each group's mean |score| is 1).
        scope: `"local"` (per group) or `"global"` (ranked across groups).
        target_flops: Fraction of the original MACs to keep; reached by global
            removal, then measured on the pruned model.
        target_params: Fraction of the original parameters to keep.
        round_to: Kept channel counts are rounded up to multiples of this.
        min_keep: Never keep fewer channels in a group.
        include: Layer names or regexes; only groups with a matching producer.
        exclude: Layer names or regexes; a group is left alone when any of its
            member layers (producers, normalizations, consumers) matches.
        data: Data for data-driven criteria: `x`, `(x, y)`, a list of batches, a
            generator or a dataset (see `kerasprune.data.batches`).
        loss: Loss for `"taylor"`.
        seed: Seed for `"random"`.
        batch_size: Batch size for in-memory `data` arrays.
        graph: A `ChannelGraph` of `model` to reuse.
        channelwise: Layer names to treat as element-wise (as in `analyze`), when
            `graph` is not given.

    Returns:
        A `Selection` (mapping layer name -> indices) carrying its `Plan`, with a
        report of the choice: per-group counts, MACs/params before -> after, and
        warnings where `min_keep`/`round_to` overrode the request.

    Raises:
        PruningError: bad or conflicting options, unknown criterion, missing
            data, or an unreachable target.
        SelectionError: an include/exclude pattern that matches no layer.

    Example:
        >>> sel = kerasprune.select(model, "l1", target_flops=0.5, round_to=8)
        >>> print(sel)
        >>> smaller = kerasprune.remove_filters(model, sel)
    """
    modes, targets = _check_options(
        criterion, ratio, count, threshold, scope, target_flops, target_params, round_to, min_keep
    )
    crit = get_criterion(criterion)
    graph = graph_for(model, graph, channelwise=channelwise)
    inc, exc = _patterns(graph, include, "include"), _patterns(graph, exclude, "exclude")
    skipped, eligible = [], []
    for g in graph.groups:
        why = None if g.prunable else g.reason
        hit = (
            next((m for m in (_matches(k, exc) for k in (*g.layers, *g.members)) if m), None) if exc else None
        )
        if why is None and hit:
            why = f"excluded by '{hit}'"
        if why is None and inc and not any(_matches(k, inc) for k in g.layers):
            why = "not matched by include"
        if why:
            skipped.append(SkippedGroup(g.id, g.layers, why))
        else:
            eligible.append(g)
    scores, unscored = score_groups(graph, crit, eligible, data=data, loss=loss, seed=seed, batch_size=batch_size)
    for gid, why in unscored.items():
        skipped.append(SkippedGroup(gid, graph.groups[gid].layers, why))
    eligible = [g for g in eligible if g.id in scores]
    cell_lists = {}
    for g in list(eligible):
        try:
            cell_lists[g.id] = cells(graph, g)
        except PruningError as e:
            skipped.append(SkippedGroup(g.id, g.layers, str(e)))
            eligible.remove(g)
    planner = _Planner(graph, eligible, scores, round_to, min_keep, cell_lists)
    cost = CostModel(graph)
    if targets:
        n_remove = planner.for_targets(cost, targets)
    elif "threshold" in modes:
        n_remove = planner.below(modes["threshold"], normalized=scope == "global")
    elif scope == "global":
        k = modes["count"] if "count" in modes else int(math.floor(modes["ratio"] * planner.total))
        n_remove = planner.lowest(min(k, planner.total))
    else:
        n_remove = {
            g.id: (modes["count"] if "count" in modes else int(math.floor(modes["ratio"] * g.size)))
            for g in eligible
        }
    removed = planner.removal(n_remove)
    plan = Plan.from_groups(graph, {gid: chans for gid, chans in removed.items() if len(chans)})
    warnings = planner.overrides(n_remove, removed)
    if "ratio" in modes and modes["ratio"] > 0 and eligible and not any(n_remove.values()):
        largest = max(planner.total if scope == "global" else g.size for g in eligible)
        warnings.append(
            f"ratio={modes['ratio']:g} removes no filters: it rounds down to 0 of "
            f"{largest} channels{' in all' if scope == 'global' else ' even in the largest group'}"
        )
    flat = plan.flat_removed()
    for name, before, after in (
        ("target_flops", cost.flops_before, cost.flops(flat)),
        ("target_params", cost.params_before, cost.params(flat)),
    ):
        goal = targets.get(name)
        if goal is not None and before and after / before < goal - TARGET_SLACK:
            why = "the smallest step of the global ranking that meets it removes more"
            if round_to or min_keep > 1:
                free = _Planner(graph, eligible, scores, None, 1, cell_lists)
                flat_free = free.flat(free.removal(free.for_targets(cost, targets)))
                free_after = (cost.flops if name == "target_flops" else cost.params)(flat_free) / before
                if free_after >= goal - TARGET_SLACK:
                    why = f"round_to={round_to}, min_keep={min_keep} force coarser steps ({free_after:.1%} without them)"
            warnings.append(f"{name}={goal:g} asked for, {after / before:.1%} kept: {why}")
    sel = Selection.from_plan(
        plan,
        criterion=crit.name,
        scores={g.id: scores[g.id] for g in eligible},
        skipped=skipped,
        warnings=warnings,
        groups=[g.id for g in eligible],
        cost=cost,
    )
    for w in sel.warnings:
        log.warning("kerasprune.select: %s", w)
    log.info("kerasprune.select:\n%s", sel.table())
    return sel


class _Planner:
    """Per-group removal counts under `min_keep`/`round_to`, and global rankings."""

    def __init__(self, graph, groups, scores, round_to, min_keep, cell_lists=None):
        self.graph, self.groups, self.scores = graph, groups, scores
        self.round_to, self.min_keep = round_to, min_keep
        self.cells = dict(cell_lists or {})
        self.order = {g.id: np.argsort(scores[g.id], kind="stable") for g in groups}
        self.norm = {}
        for g in groups:
            s = scores[g.id]
            m = float(np.mean(np.abs(s)))
            self.norm[g.id] = s / m if m > 0 else s
        self.total = sum(g.size for g in groups)
        self.parts: dict[int, list[np.ndarray]] = {}  # parts of a group that must keep a channel
        for gid, _, chans in group_parts(graph):
            self.parts.setdefault(gid, []).append(chans)
        if groups:
            vals = np.concatenate([np.sort(self.norm[g.id]) for g in groups])
            gids = np.concatenate([np.full(g.size, g.id) for g in groups])
            self._rank_gid = gids[np.argsort(vals, kind="stable")]
        else:
            self._rank_gid = np.zeros(0, dtype=np.int64)

    def removal(self, n_remove: dict[int, int]) -> dict[int, np.ndarray]:
        out = {}
        for g in self.groups:
            cell_list, parts = self.cells.get(g.id), self.parts.get(g.id)
            n = removable(g.size, n_remove.get(g.id, 0), cell_list, min_keep=self.min_keep, round_to=self.round_to)
            if cell_list:
                out[g.id] = lowest(self.scores[g.id], 0.0, n, cell_list)
            elif parts and n:
                out[g.id] = np.sort(self._lowest_keeping(g, n, parts))
            else:
                out[g.id] = np.sort(self.order[g.id][:n])
        return out

    def _lowest_keeping(self, g, k: int, parts: list[np.ndarray]) -> np.ndarray:
        """The `k` lowest-scoring channels of `g`, skipping any that would empty a part (a slice, a split)."""
        left = np.array([len(p) for p in parts])
        member: dict[int, list[int]] = {}
        for i, p in enumerate(parts):
            for ch in p.tolist():
                member.setdefault(ch, []).append(i)
        chosen = []
        for ch in self.order[g.id].tolist():
            if len(chosen) == k:
                break
            mine = member.get(ch, [])
            if mine and (left[mine] <= 1).any():
                continue
            left[mine] -= 1
            chosen.append(ch)
        return np.asarray(chosen, dtype=np.int64)

    def below(self, t: float, normalized: bool) -> dict[int, int]:
        src = self.norm if normalized else self.scores
        return {g.id: int(np.count_nonzero(src[g.id] < t)) for g in self.groups}

    def lowest(self, k: int) -> dict[int, int]:
        counts = np.bincount(self._rank_gid[:k], minlength=len(self.graph.group_sizes))
        return {g.id: int(counts[g.id]) for g in self.groups}

    def overrides(self, n_remove: dict[int, int], removed: dict[int, np.ndarray]) -> list[str]:
        """Warnings for the groups where `min_keep` or `round_to` changed the requested count."""
        changed = [(g, n_remove.get(g.id, 0), len(removed[g.id])) for g in self.groups]
        changed = [(g, want, got) for g, want, got in changed if want != got and want > 0]
        if not changed:
            return []
        why = " and ".join(
            f"{k}={v}" for k, v in (("min_keep", self.min_keep), ("round_to", self.round_to)) if v and v != 1
        ) or "min_keep=1"
        if any(g.id in self.parts for g, _, _ in changed):
            why += " (or a part of a group that a slice, split or concatenation carries, which keeps a channel)"
        sample = ", ".join(f"group {g.id} [{g.layers[0]}] {want} -> {got}" for g, want, got in changed[:4])
        more = f" (+{len(changed) - 4} more)" if len(changed) > 4 else ""
        return [f"{why} changed the channels removed in {len(changed)} groups: {sample}{more}"]

    def flat(self, removed: dict[int, np.ndarray]) -> np.ndarray:
        out = np.zeros(self.graph.n_channels, dtype=bool)
        for gid, chans in removed.items():
            out[int(self.graph.group_offsets[gid]) + chans] = True
        return out

    def for_targets(self, cost: CostModel, targets: dict[str, float]) -> dict[int, int]:
        def ok(k: int) -> bool:
            flat = self.flat(self.removal(self.lowest(k)))
            f = cost.flops(flat) <= targets.get("target_flops", 1) * cost.flops_before
            return f and cost.params(flat) <= targets.get("target_params", 1) * cost.params_before

        if not ok(self.total):
            flat = self.flat(self.removal(self.lowest(self.total)))
            best = (
                cost.flops(flat) / max(cost.flops_before, 1),
                cost.params(flat) / max(cost.params_before, 1),
            )
            raise PruningError(
                f"Target {targets} is unreachable: removing every removable channel of the {len(self.groups)} "
                f"eligible groups (min_keep={self.min_keep}, round_to={self.round_to}) keeps "
                f"{best[0]:.1%} of the MACs and {best[1]:.1%} of the parameters"
            )
        lo, hi = 0, self.total  # ok(hi) is True
        while lo < hi:
            mid = (lo + hi) // 2
            if ok(mid):
                hi = mid
            else:
                lo = mid + 1
        return self.lowest(lo)
