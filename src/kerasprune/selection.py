"""The `Selection` record: which filters to remove, by layer name, and what was decided.

A `Selection` is a read-only mapping `layer name -> filter indices` (what JSON
files and the CLI store, stable across sessions), plus the record of how it was
made: the criterion, one `GroupChoice` per group, skipped groups with reasons,
MACs and parameters before and after, and warnings where an option overrode the
request. `select` (in `kerasprune.allocation`) returns one; `Selection.from_plan`
makes one from any `Plan`, so every selection prints the same way.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType

import numpy as np

from kerasprune.errors import SelectionError
from kerasprune.plan import Plan

FORMAT = "kerasprune.selection"
VERSION = 1


@dataclass(frozen=True)
class GroupChoice:
    """What `select` decided for one group.

    Attributes:
        group: Group id. `layers`: its producers. `key`: the group's first producer.
        size: Channels before. `removed`: removed channel indices, in the group's
            numbering (that of its first producer's filters when it spans the group).
        score_min, score_max: Range of the group's raw scores (None: not scored).
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

    Accepted as is by `remove_filters`, `mask_filters` and `make_plan`. Each
    group's removed channels are named through its producers (the first producer
    that has each channel); removing a channel anywhere removes it from the
    whole group. Also carries what was decided and what it costs.

    Attributes:
        criterion: Name of the criterion used (or None).
        groups: `GroupChoice` per considered group.
        skipped: `SkippedGroup` per group left alone, with the reason.
        flops_before, flops_after, params_before, params_after: MACs and
            parameters of the original and the pruned model (None if unknown),
            computed with the analytic cost model (`kerasprune.flops.CostModel`),
            which equals counting the rebuilt model.
        warnings: Where an option overrode the request (`min_keep`, `round_to`),
            or a target was missed; also logged.
        measured: Kept for files written by older versions (always False now).
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
        warnings: Sequence[str] = (),
        measured: bool = False,
        plan: Plan | None = None,
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
            warnings=tuple(str(w) for w in warnings),
            measured=measured,
            _plan=plan,
        )

    @classmethod
    def from_plan(
        cls,
        plan: Plan,
        *,
        criterion: str | None = None,
        scores: Mapping[int, np.ndarray] | None = None,
        skipped: Sequence[SkippedGroup] = (),
        warnings: Sequence[str] = (),
        groups: Sequence[int] | None = None,
        cost=None,
    ) -> Selection:
        """The selection of a plan, with its groups and its MACs/params before -> after.

        Args:
            plan: The plan.
            criterion: Name of the criterion that ranked the channels.
            scores: `{group id: channel scores}` for the score ranges of the table.
            skipped: Groups left alone, with reasons.
            warnings: Overrides and missed targets to record.
            groups: Group ids to list (default: those the plan touches, and scored ones).
            cost: A `kerasprune.flops.CostModel` of `plan.graph` to reuse.
        """
        from kerasprune.flops import CostModel

        graph = plan.graph
        scores = scores or {}
        ids = list(groups) if groups is not None else sorted(set(plan.removed) | set(scores))
        choices = []
        for gid in ids:
            g = graph._all_groups[gid]
            s = scores.get(gid)
            removed = tuple(int(c) for c in plan.removed.get(gid, ()))
            choices.append(
                GroupChoice(
                    gid, g.layers, g.layers[0] if g.layers else "", g.size, removed,
                    None if s is None or not len(s) else float(np.min(s)),
                    None if s is None or not len(s) else float(np.max(s)),
                    g.exact,
                )
            )  # fmt: skip
        cost = cost if cost is not None else CostModel(graph)
        flat = plan.flat_removed()
        return cls(
            plan.to_selection(),
            criterion=criterion,
            groups=choices,
            skipped=sorted(skipped, key=lambda s: s.group),
            flops_before=cost.flops_before,
            flops_after=cost.flops(flat),
            params_before=cost.params_before,
            params_after=cost.params(flat),
            warnings=warnings,
            plan=plan,
        )

    def plan_for(self, model) -> Plan | None:
        """The plan this selection was made from, when it was made for `model` (else None)."""
        plan = self._plan
        return plan if plan is not None and plan.graph.model is model else None

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
        """A text table: group, layers, channels before -> after, score range; costs; warnings."""
        rows = []
        for c in self.groups:
            names = ", ".join(c.layers[:2]) + (f", +{len(c.layers) - 2}" if len(c.layers) > 2 else "")
            rng = "" if c.score_min is None else f"{c.score_min:.4g} .. {c.score_max:.4g}"
            rows.append((str(c.group), names, str(c.size), str(c.kept), rng + ("" if c.exact else "  (approximate)")))
        if not rows:  # an explicit selection: what it names
            rows = [("-", k, "", f"-{len(v)}", "") for k, v in self._filters.items()]
        width = max([len("layers")] + [len(r[1]) for r in rows])
        head = f"{'group':>5}  {'layers':<{width}}  {'before':>6}  {'after':>6}  score range"
        removed = sum(len(v) for v in self._filters.values())
        lines = [f"Selection ({self.criterion or 'explicit'}): {removed} filters in {len(self._filters)} layers", head]
        lines.append("-" * len(head))
        lines += [f"{g:>5}  {n:<{width}}  {b:>6}  {a:>6}  {r}".rstrip() for g, n, b, a, r in rows]
        for k, before, after in (
            ("MACs", self.flops_before, self.flops_after),
            ("params", self.params_before, self.params_after),
        ):
            if before and after is not None:
                lines.append(f"{k}: {before:,} -> {after:,} ({after / before:.1%})")
        for s in self.skipped:
            lines.append(f"skipped group {s.group} [{', '.join(s.layers[:2])}]: {s.reason}")
        for w in self.warnings:
            lines.append(f"warning: {w}")
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
            "warnings": list(self.warnings),
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
            warnings=[str(w) for w in doc.get("warnings", []) if isinstance(w, str)],
            measured=bool(doc.get("measured", False)),
        )

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write `to_json()` to `path` atomically (temporary file + rename).

        Raises:
            ModelSaveError: `path` exists and `overwrite` is False.
        """
        from kerasprune.io import write_text

        write_text(self.to_json(), path, overwrite=overwrite)

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


