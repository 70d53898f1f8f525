"""The steps of `kerasprune prune` between reading the model and writing files.

`How` is the request (one way of choosing filters, validated up front); `choose` turns it
into a `Selection` that carries its plan, groups and costs whichever way it was made;
`why_empty` names the option that cancelled every removal; `apply` removes or masks;
`report_doc` assembles the JSON report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kerasprune._cli.console import CliError, absorbed
from kerasprune._cli.options import explicit
from kerasprune._cli.words import cli_words


@dataclass(frozen=True)
class How:
    """How `prune` chooses filters: exactly one of explicit pairs, a criterion, or a file."""

    layers: tuple[str, ...] = ()
    filters: tuple[str, ...] = ()
    criterion: str | None = None
    ratio: float | None = None
    count: int | None = None
    threshold: float | None = None
    target_flops: float | None = None
    target_params: float | None = None
    global_: bool = False
    round_to: int | None = None
    min_keep: int = 1
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    selection_file: Path | None = None
    loss: str | None = None
    batch_size: int = 32

    @property
    def by_criterion(self) -> bool:
        return any(
            v is not None
            for v in (self.criterion, self.ratio, self.count, self.threshold, self.target_flops, self.target_params)
        )

    @property
    def way(self) -> str:
        """`"explicit"`, `"criterion"` or `"file"`.

        Raises:
            CliError: none or several ways, or several amounts for a criterion.
        """
        ways = [
            name
            for name, on in (
                ("--layer/--filters", bool(self.layers or self.filters)),
                ("--criterion", self.by_criterion),
                ("--selection", self.selection_file is not None),
            )
            if on
        ]
        if len(ways) != 1:
            raise CliError(
                "Choose the filters one way: --layer NAME --filters 4,7, --criterion/--ratio/--target-flops, "
                "or --selection FILE" + (f" (received {' and '.join(ways)})" if ways else "")
            )
        amounts = [f"--{k.replace('_', '-')}" for k in ("ratio", "count", "threshold") if getattr(self, k) is not None]
        targets = [f"--{k.replace('_', '-')}" for k in ("target_flops", "target_params") if getattr(self, k) is not None]
        if len(amounts) + bool(targets) > 1:
            raise CliError(
                "Give one amount: --ratio, --count, --threshold, or targets (--target-flops/--target-params). "
                f"Received {' and '.join(amounts + targets)}"
            )
        return {"--layer/--filters": "explicit", "--criterion": "criterion", "--selection": "file"}[ways[0]]


def needs_data(criterion: str | None) -> tuple[bool, bool]:
    """Whether a criterion needs `--data`, and `--loss`."""
    from kerasprune.criteria import get_criterion

    crit = get_criterion(criterion or "l1")
    return crit.needs_data, crit.needs_loss


def check_criterion(criterion: str | None, data, loss) -> None:
    """Data-driven criteria need `--data` (and `taylor` `--loss`): say so in CLI words."""
    wants_data, wants_loss = needs_data(criterion)
    if wants_data and data is None:
        raise CliError(
            f"Criterion '{criterion}' is data-driven: pass --data FILE.npz (arrays x and y; "
            "--x-key/--y-key for other names)"
        )
    if wants_loss and loss is None:
        raise CliError(f"Criterion '{criterion}' needs --loss NAME (a Keras loss, e.g. sparse_categorical_crossentropy)")


def choose(model, graph, how: How, data=None):
    """The `Selection` of the request, with its plan, groups and MACs/params before -> after.

    The allocation's own warnings are not logged here: the selection records them and the
    CLI prints them once, in its table.
    """
    import kerasprune as kp
    from kerasprune.selection import Selection

    way = how.way
    if way == "criterion":
        with absorbed("kerasprune.allocation"):
            return kp.select(
                model, how.criterion or "l1", ratio=how.ratio, count=how.count, threshold=how.threshold,
                scope="global" if how.global_ else "local", target_flops=how.target_flops,
                target_params=how.target_params, round_to=how.round_to, min_keep=how.min_keep,
                include=list(how.include) or None, exclude=list(how.exclude) or None,
                data=data, loss=how.loss, batch_size=how.batch_size, graph=graph,
            )  # fmt: skip
    given = Selection.load(how.selection_file) if way == "file" else explicit(list(how.layers), list(how.filters))
    plan = kp.make_plan(graph, given)
    return Selection.from_plan(
        plan, criterion=getattr(given, "criterion", None), warnings=getattr(given, "warnings", ())
    )


def why_empty(selection, how: How) -> str:
    """Why a selection removes nothing, naming the option responsible."""
    head = "The selection removes no filters"
    overrides = [w for w in selection.warnings if not w.startswith("ratio=")]  # a ratio rounding to 0: below
    if overrides:
        return f"{head}: {cli_words(overrides[0])}"
    way = how.way
    if way == "explicit":
        return f"{head}: the --filters lists are empty"
    if way == "file":
        return f"{head}: --selection {how.selection_file} names no filters"
    if not selection.groups:
        reasons = "; ".join(f"group {s.group}: {s.reason}" for s in selection.skipped[:3])
        return f"{head}: no group can be pruned ({cli_words(reasons) or 'the model has no prunable groups'})"
    if how.ratio is not None:
        smallest = min(c.size for c in selection.groups)
        return (f"{head}: --ratio {how.ratio:g} of the groups' channels rounds down to 0 "
                f"(the smallest group has {smallest}); raise --ratio or use --global")
    if how.threshold is not None:
        return f"{head}: no filter scores below --threshold {how.threshold:g}"
    if how.count is not None:
        return f"{head}: --count {how.count} removes nothing"
    return f"{head}: the targets are already met by the original model"


def apply(model, graph, selection, *, mask: bool):
    """The removed model, or a masked copy."""
    import kerasprune as kp
    from kerasprune import testing

    if not mask:
        return kp.remove_filters(model, selection, graph=graph)
    result = testing.copy_model(model)
    kp.mask_filters(result, dict(selection), channelwise=graph.options.get("channelwise", ()))
    return result


def report_doc(*, model_path, output, mask: bool, selection, plan, check, comparison, files) -> dict:
    """The `--report` JSON of a prune run."""
    return {
        "input": str(model_path),
        "output": str(output),
        "mode": "mask" if mask else "remove",
        "selection": json.loads(selection.to_json()),
        "affected_layers": list(plan.affected_layers),
        "exact": plan.exact,
        "verify_max_error": None if check is None else check.max_error,
        "verify_input_dependent": None if check is None else check.input_dependent,
        "comparison": comparison.to_dict(),
        "files": {k: str(v) for k, v in files.items()},
    }
