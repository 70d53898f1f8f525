"""Choosing which filters to remove: `select(model, criterion, **options)` -> `Selection`.

A choice is made per *group* of coupled channels (see `ChannelGraph`): every
channel of a group is scored (`kerasprune.criteria`), and each group loses its
lowest-scoring channels. How many each group loses depends on one option:
`ratio`, `count`, `threshold`, or the targets `target_flops` / `target_params`.
With `scope="global"` channels of all groups are ranked together on scores
normalized per group (divided by the group's mean absolute score).
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from kerasprune.criteria import get_criterion, score_groups
from kerasprune.errors import PruningError, SelectionError
from kerasprune.flops import CostModel, count_flops, count_params
from kerasprune.graph import ChannelGraph, Group, analyze

log = logging.getLogger(__name__)

FORMAT = "kerasprune.selection"
VERSION = 1


@dataclass(frozen=True)
class GroupChoice:
    """What `select` decided for one group.

    Attributes:
        group: Group id. `layers`: its producers. `key`: the layer the indices refer to.
        size: Channels before. `removed`: removed channel indices (of `key`'s filters).
        score_min, score_max: Range of the group's raw scores.
        exact: Whether removal equals masking exactly for this group.
    """

    group: int
    layers: tuple[str, ...]
    key: str
    size: int
    removed: tuple[int, ...]
    score_min: float | None = None
    score_max: float | None = None
    exact: bool = True

    @property
    def kept(self) -> int:
        return self.size - len(self.removed)


@dataclass(frozen=True)
class SkippedGroup:
    """A group `select` left alone, and why."""

    group: int
    layers: tuple[str, ...]
    reason: str


class Selection(Mapping):
    """A read-only mapping `layer name -> sorted filter indices to remove`.

    Accepted as is by `remove_filters` and `mask_filters`. Keys are the first
    producer of each group; removing its filters removes the whole group's
    channels. Also carries what was decided and achieved.

    Attributes:
        criterion: Name of the criterion used (or None).
        groups: `GroupChoice` per considered group.
        skipped: `SkippedGroup` per group left alone, with the reason.
        flops_before, flops_after, params_before, params_after: MACs and
            parameters of the original and the pruned model (None if unknown).
        measured: True when the "after" figures were counted on the rebuilt model.
    """

    def __init__(
        self,
        filters: Mapping[str, Sequence[int]],
        *,
        criterion: str | None = None,
        groups: Sequence[GroupChoice] = (),
        skipped: Sequence[SkippedGroup] = (),
        flops_before: int | None = None,
        flops_after: int | None = None,
        params_before: int | None = None,
        params_after: int | None = None,
        measured: bool = False,
    ):
        self.__dict__["_filters"] = MappingProxyType(
            {str(k): tuple(sorted(int(i) for i in v)) for k, v in filters.items()}
        )
        self.__dict__.update(
            criterion=criterion,
            groups=tuple(groups),
            skipped=tuple(skipped),
            flops_before=flops_before,
            flops_after=flops_after,
            params_before=params_before,
            params_after=params_after,
            measured=measured,
        )

    def __setattr__(self, name, value):
        raise AttributeError("Selection is read-only")

    def __getitem__(self, key: str) -> tuple[int, ...]:
        return self._filters[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._filters)

    def __len__(self) -> int:
        return len(self._filters)

    def __repr__(self) -> str:
        n = sum(len(v) for v in self._filters.values())
        return f"<Selection: {n} filters in {len(self._filters)} groups>"

    @property
    def flops_ratio(self) -> float | None:
        """`flops_after / flops_before` (None if unknown)."""
        if not self.flops_before or self.flops_after is None:
            return None
        return self.flops_after / self.flops_before

    @property
    def params_ratio(self) -> float | None:
        if not self.params_before or self.params_after is None:
            return None
        return self.params_after / self.params_before

    # -- display ---------------------------------------------------------------------
    def table(self) -> str:
        """A text table: group, layers, size before -> after, score range."""
        head = f"{'group':>5}  {'layers':<40}  {'before':>6}  {'after':>6}  {'score range':<23}"
        lines = [f"Selection ({self.criterion or 'explicit'}):", head, "-" * len(head)]
        for c in self.groups:
            names = ", ".join(c.layers[:2]) + (f", +{len(c.layers) - 2}" if len(c.layers) > 2 else "")
            rng = "" if c.score_min is None else f"{c.score_min:.4g} .. {c.score_max:.4g}"
            note = "" if c.exact else "  (approximate)"
            lines.append(f"{c.group:>5}  {names[:40]:<40}  {c.size:>6}  {c.kept:>6}  {rng:<23}{note}")
        for k, before, after in (
            ("MACs", self.flops_before, self.flops_after),
            ("params", self.params_before, self.params_after),
        ):
            if before and after is not None:
                how = "measured" if self.measured else "computed"
                lines.append(f"{k}: {before:,} -> {after:,} ({after / before:.1%}, {how})")
        for s in self.skipped:
            lines.append(f"skipped group {s.group} [{', '.join(s.layers[:2])}]: {s.reason}")
        return "\n".join(lines)

    __str__ = table

    # -- serialization ---------------------------------------------------------------
    def to_json(self) -> str:
        """JSON text (`{"format": "kerasprune.selection", "version": 1, "filters": {...}, ...}`)."""
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "criterion": self.criterion,
            "filters": {k: list(v) for k, v in self._filters.items()},
            "groups": [asdict(c) for c in self.groups],
            "skipped": [asdict(s) for s in self.skipped],
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "measured": self.measured,
        }
        return json.dumps(doc, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Selection:
        """Parse `to_json` output (or a bare `{"filters": {layer: [indices]}}`).

        Raises:
            SelectionError: not JSON, or not a valid selection document.
        """
        try:
            doc = json.loads(text)
        except (TypeError, ValueError) as e:
            raise SelectionError(f"Selection is not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise SelectionError(f"Selection JSON must be an object. Received: {type(doc).__name__}")
        if doc.get("format", FORMAT) != FORMAT:
            raise SelectionError(f"Not a kerasprune selection: format={doc.get('format')!r}")
        if doc.get("version", VERSION) != VERSION:
            raise SelectionError(f"Unsupported selection version {doc.get('version')!r} (expected {VERSION})")
        filters = doc.get("filters")
        if not isinstance(filters, dict):
            raise SelectionError("Selection JSON needs 'filters': {layer name: [indices]}")
        for k, v in filters.items():
            if not isinstance(v, list) or not all(_is_index(i) for i in v):
                raise SelectionError(
                    f"'filters' of layer '{k}' must be a list of non-negative integers. Received: {v!r}"[:300]
                )
        for name in ("flops_before", "flops_after", "params_before", "params_after"):
            if doc.get(name) is not None and not _is_index(doc[name]):
                raise SelectionError(
                    f"'{name}' must be a non-negative integer or null. Received: {doc[name]!r}"
                )
        try:
            groups = [_choice(c) for c in doc.get("groups", [])]
            skipped = [
                SkippedGroup(int(s["group"]), tuple(s["layers"]), str(s["reason"]))
                for s in doc.get("skipped", [])
            ]
        except (KeyError, TypeError, ValueError) as e:
            raise SelectionError(f"Malformed 'groups'/'skipped' entry in selection JSON: {e!r}") from None
        crit = doc.get("criterion")
        return cls(
            filters,
            criterion=None if crit is None else str(crit),
            groups=groups,
            skipped=skipped,
            flops_before=doc.get("flops_before"),
            flops_after=doc.get("flops_after"),
            params_before=doc.get("params_before"),
            params_after=doc.get("params_after"),
            measured=bool(doc.get("measured", False)),
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write `to_json()` to `path` atomically (temporary file + rename)."""
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".selection-", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.to_json())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> Selection:
        """Read a selection saved with `save`.

        Raises:
            SelectionError: unreadable file or invalid content.
        """
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise SelectionError(f"Cannot read selection file '{path}': {e}") from None
        return cls.from_json(text)


def _is_index(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0


def _choice(c: dict) -> GroupChoice:
    return GroupChoice(
        group=int(c["group"]),
        layers=tuple(str(x) for x in c["layers"]),
        key=str(c["key"]),
        size=int(c["size"]),
        removed=tuple(int(i) for i in c["removed"]),
        score_min=None if c.get("score_min") is None else float(c["score_min"]),
        score_max=None if c.get("score_max") is None else float(c["score_max"]),
        exact=bool(c.get("exact", True)),
    )


# -- select ------------------------------------------------------------------------------
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
    bare = key.rsplit("/", 1)[-1]
    for text, rx in patterns:
        if text in (key, bare) or (rx is not None and (rx.fullmatch(key) or rx.fullmatch(bare))):
            return text
    return None


def _key_layer(graph: ChannelGraph, g: Group) -> tuple[str, np.ndarray] | None:
    """A producer whose filters are exactly the group's channels, and channel -> filter index."""
    for key in g.layers:
        atoms = graph.records[key].produces
        if atoms is None or len(atoms) != g.size or (graph.atom_group[atoms] != g.id).any():
            continue
        chans = graph.atom_channel[atoms]
        if np.array_equal(np.sort(chans), np.arange(g.size)):
            pos = np.empty(g.size, dtype=np.int64)
            pos[chans] = np.arange(g.size)
            return key, pos
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
    graph: ChannelGraph | None = None,
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
        data: Iterable of batches `x` or `(x, y)` for data-driven criteria.
        loss: Loss for `"taylor"`.
        seed: Seed for `"random"`.
        graph: A `ChannelGraph` of `model` to reuse.

    Returns:
        A `Selection` (mapping layer name -> indices), with a report of the choice.

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
    graph = graph if graph is not None else analyze(model)
    if graph.model is not model:
        raise PruningError("graph was built for a different model")
    inc, exc = _patterns(graph, include, "include"), _patterns(graph, exclude, "exclude")
    skipped, eligible, keys = [], [], {}
    for g in graph.groups:
        why = None if g.prunable else g.reason
        hit = (
            next((m for m in (_matches(k, exc) for k in (*g.layers, *g.members)) if m), None) if exc else None
        )
        if why is None and hit:
            why = f"excluded by '{hit}'"
        if why is None and inc and not any(_matches(k, inc) for k in g.layers):
            why = "not matched by include"
        if why is None:
            found = _key_layer(graph, g)
            if found is None:
                why = "no single layer produces exactly its channels"
            else:
                keys[g.id] = found
        if why:
            skipped.append(SkippedGroup(g.id, g.layers, why))
        else:
            eligible.append(g)
    scores, unscored = score_groups(graph, crit, eligible, data=data, loss=loss, seed=seed)
    for gid, why in unscored.items():
        skipped.append(SkippedGroup(gid, graph.groups[gid].layers, why))
    eligible = [g for g in eligible if g.id in scores]
    planner = _Planner(graph, eligible, scores, round_to, min_keep)
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
    filters, choices = {}, []
    for g in eligible:
        key, pos = keys[g.id]
        idx = tuple(sorted(pos[removed[g.id]].tolist()))
        if idx:
            filters[key] = idx
        s = scores[g.id]
        choices.append(GroupChoice(g.id, g.layers, key, g.size, idx, float(s.min()), float(s.max()), g.exact))
    flat = planner.flat(removed)
    sel_kw = dict(
        criterion=crit.name,
        groups=choices,
        skipped=sorted(skipped, key=lambda s: s.group),
        flops_before=cost.flops_before,
        flops_after=cost.flops(flat),
        params_before=cost.params_before,
        params_after=cost.params(flat),
    )
    if targets and filters:
        from kerasprune.surgery import remove_filters

        pruned = remove_filters(model, filters, graph=graph)
        measured = dict(flops_after=count_flops(pruned), params_after=count_params(pruned))
        if (measured["flops_after"], measured["params_after"]) != (
            sel_kw["flops_after"],
            sel_kw["params_after"],
        ):
            log.warning("kerasprune.select: computed cost %s differs from measured %s", sel_kw, measured)
        sel_kw.update(measured, measured=True)
    sel = Selection(filters, **sel_kw)
    log.info("kerasprune.select:\n%s", sel.table())
    return sel


class _Planner:
    """Per-group removal counts under `min_keep`/`round_to`, and global rankings."""

    def __init__(self, graph, groups, scores, round_to, min_keep):
        self.graph, self.groups, self.scores = graph, groups, scores
        self.round_to, self.min_keep = round_to, min_keep
        self.order = {g.id: np.argsort(scores[g.id], kind="stable") for g in groups}
        self.norm = {}
        for g in groups:
            s = scores[g.id]
            m = float(np.mean(np.abs(s)))
            self.norm[g.id] = s / m if m > 0 else s
        self.total = sum(g.size for g in groups)
        if groups:
            vals = np.concatenate([np.sort(self.norm[g.id]) for g in groups])
            gids = np.concatenate([np.full(g.size, g.id) for g in groups])
            self._rank_gid = gids[np.argsort(vals, kind="stable")]
        else:
            self._rank_gid = np.zeros(0, dtype=np.int64)

    def constrain(self, size: int, n: int) -> int:
        kept = max(size - int(n), self.min_keep)
        if self.round_to:
            kept = int(math.ceil(kept / self.round_to) * self.round_to)
        return max(0, size - min(kept, size))

    def removal(self, n_remove: dict[int, int]) -> dict[int, np.ndarray]:
        return {
            g.id: np.sort(self.order[g.id][: self.constrain(g.size, n_remove.get(g.id, 0))])
            for g in self.groups
        }

    def below(self, t: float, normalized: bool) -> dict[int, int]:
        src = self.norm if normalized else self.scores
        return {g.id: int(np.count_nonzero(src[g.id] < t)) for g in self.groups}

    def lowest(self, k: int) -> dict[int, int]:
        counts = np.bincount(self._rank_gid[:k], minlength=len(self.graph.group_sizes))
        return {g.id: int(counts[g.id]) for g in self.groups}

    def flat(self, removed: dict[int, np.ndarray]) -> np.ndarray:
        out = np.zeros(int(np.sum(self.graph.group_sizes)), dtype=bool)
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
