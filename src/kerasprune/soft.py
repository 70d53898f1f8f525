"""Soft pruning during training: a Keras callback that keeps filters masked.

`SoftPruning` picks, in every prunable group, the lowest-scoring fraction of
channels (by a criterion, with a sparsity schedule over epochs) and keeps them
exactly zero while `model.fit` trains: the mask is re-applied after every
epoch, or after every batch. With `reselect=True` the choice is re-made at the
start of each epoch from the current weights, as in soft filter pruning (He et
al. 2018); with `reselect=False` the ranking of the first epoch is kept and the
masked set only grows. `finalize()` then removes the masked filters physically.

The mask zeroes everything `mask_filters` zeroes (producer filters, following
BatchNorm gamma/beta, consumers' input weights), so the masked model computes
exactly what the finalized, smaller model computes.

Backends: on JAX, `model.fit` keeps the variables' values in its own state
during an epoch; the callback calls `model.jax_state_sync()` before masking, and
since that marks the state as synced, the next step reads the masked values back.

On TensorFlow builds with oneDNN, training runs under `kerasprune.stack.guard`
(a strided 1x1 convolution with fewer than 16 input channels would otherwise
crash the process; docs/training-crash.md). Progress: one INFO line per epoch
on the `kerasprune.soft` logger (`verbose=0` silences it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from kerasprune.criteria import score as _score
from kerasprune.distill import student_of
from kerasprune.errors import PruningError
from kerasprune.flops import CostModel
from kerasprune.graph import ChannelGraph, analyze
from kerasprune.groupwise import cells, choose_groups, lowest, scored
from kerasprune.masking import keep_masks
from kerasprune.plan import Plan
from kerasprune.selection import Selection
from kerasprune.stack import guard
from kerasprune.surgery import remove_filters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolynomialSchedule:
    """Sparsity ratio ramping from `initial` to `final` between two epochs.

    `ratio(epoch) = final + (initial - final) * (1 - t) ** power` with
    `t = clip((epoch - begin) / (end - begin), 0, 1)`; `power=1` is linear,
    `power=3` the gradual schedule of Zhu & Gupta (2017).
    """

    initial: float = 0.0
    final: float = 0.5
    begin: int = 0
    end: int = 10
    power: float = 1.0

    def __post_init__(self):
        for name in ("initial", "final"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise PruningError(f"PolynomialSchedule.{name} must be in [0, 1). Received: {v}")
        if self.end <= self.begin:
            raise PruningError(f"PolynomialSchedule needs end > begin. Received: begin={self.begin}, end={self.end}")
        if self.power <= 0:
            raise PruningError(f"PolynomialSchedule.power must be positive. Received: {self.power}")

    def __call__(self, epoch: int) -> float:
        t = min(max((epoch - self.begin) / (self.end - self.begin), 0.0), 1.0)
        return float(self.final + (self.initial - self.final) * (1.0 - t) ** self.power)


class SoftPruning(keras.callbacks.Callback):
    """Keep the least important filters of every group masked while training.

    Args:
        criterion: Criterion name or callable, as for `kerasprune.score`.
        ratio: Constant fraction of each group's channels to mask.
        schedule: Instead of `ratio`, a callable `epoch -> ratio`, e.g.
            `PolynomialSchedule(0.0, 0.5, begin=0, end=10)`.
        frequency: `"epoch"` re-applies the mask after each epoch; `"batch"` after
            every training batch (masked weights then stay exactly zero throughout).
        reselect: Re-choose the masked channels by the criterion at the start of
            every epoch (soft filter pruning). If False, the first ranking is kept
            and the masked set only grows with the schedule.
        groups: Group ids or layer names to prune (default: every prunable group).
        data, loss, seed: Passed to `kerasprune.score` (data-driven criteria).
        channelwise: Layer names to treat as element-wise (as in `analyze`).
        verbose: Log one INFO line per epoch (ratio, channels masked, loss) to the
            `kerasprune.soft` logger; 0 / False: silent (warnings are always logged).

    Given to the `fit` of a `keras.distillation.Distiller` (see `make_distiller`),
    it prunes the distiller's student.

    Channels released by a re-selection restart from zero weights; as the mask also
    zeroed their BatchNorm parameters and their consumers' inputs, they may stay
    inactive (exact masking equals removal; it does not let filters regrow).

    Attributes:
        selection: The current `kerasprune.Selection` (None before training).
        ratio_now: The ratio currently applied.

    Example:
        >>> pruning = kerasprune.SoftPruning(criterion="l1", schedule=PolynomialSchedule(0, 0.5, end=5))
        >>> model.fit(x, y, epochs=6, callbacks=[pruning])
        >>> small = pruning.finalize()
    """

    def __init__(
        self,
        criterion: str | Callable = "l1",
        *,
        ratio: float | None = None,
        schedule: Callable[[int], float] | None = None,
        frequency: str = "epoch",
        reselect: bool = True,
        groups: Iterable[int | str] | None = None,
        data: Any = None,
        loss: Any = None,
        seed: int = 0,
        channelwise: Iterable[str] = (),
        verbose: int | bool = 1,
    ):
        super().__init__()
        if (ratio is None) == (schedule is None):
            raise PruningError(f"Give exactly one of ratio or schedule. Received: ratio={ratio}, schedule={schedule}")
        if ratio is not None and not 0.0 <= ratio < 1.0:
            raise PruningError(f"ratio must be in [0, 1). Received: ratio={ratio}")
        if frequency not in ("epoch", "batch"):
            raise PruningError(f"frequency must be 'epoch' or 'batch'. Received: frequency={frequency!r}")
        if not isinstance(verbose, (bool, int, np.integer)) or verbose < 0:
            raise PruningError(f"verbose must be a non-negative integer or a bool. Received: verbose={verbose!r}")
        self.criterion = criterion
        self.schedule = schedule if schedule is not None else (lambda epoch, r=float(ratio): r)
        self.frequency = frequency
        self.reselect = reselect
        self.groups = None if groups is None else list(groups)
        self.data, self.loss, self.seed = data, loss, seed
        self.channelwise = tuple(channelwise)
        self.verbose = verbose
        self.selection: Selection | None = None
        self.ratio_now: float | None = None
        self._graph: ChannelGraph | None = None
        self._masks: list[tuple[Any, Any]] = []
        self._order: dict[int, np.ndarray] = {}
        self._unguard = None
        self._n_masked = 0

    # -- Keras hooks -------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        target = student_of(self.model)  # a keras.distillation.Distiller's student
        if self._graph is None or self._graph.model is not target:
            self._graph = analyze(target, channelwise=self.channelwise)
            self._chosen, self._cells = [], {}
            for g in choose_groups(self._graph, self.groups):
                try:
                    self._cells[g.id] = cells(self._graph, g)
                    self._chosen.append(g)
                except PruningError as e:
                    log.warning("SoftPruning: group %d (%s) left out: %s", g.id, ", ".join(g.layers), e)
            self._cost = CostModel(self._graph)
            self._order = {}
        self._unguard = guard(self.model, where="SoftPruning")

    def on_epoch_begin(self, epoch, logs=None):
        ratio = float(self.schedule(epoch))
        if not 0.0 <= ratio < 1.0:
            raise PruningError(f"The schedule gave ratio {ratio} for epoch {epoch}; it must be in [0, 1)")
        if self.reselect or not self._order or ratio != self.ratio_now:
            self._update(ratio)
        self._apply()

    def on_train_batch_end(self, batch, logs=None):
        steps = (self.params or {}).get("steps")
        if self.frequency == "batch" or (steps is not None and batch + 1 >= steps):
            self._apply()  # after the last batch too, so validation sees the masked model

    def on_epoch_end(self, epoch, logs=None):
        self._apply()
        if self.verbose:
            loss = (logs or {}).get("loss")
            log.info(
                "SoftPruning: epoch %d: ratio %.3f, %d of %d channels masked%s",
                epoch + 1, self.ratio_now, self._n_masked, sum(g.size for g in self._chosen),
                "" if loss is None else f", loss={float(loss):.5g}",
            )

    def on_train_end(self, logs=None):
        self._apply()
        if self._unguard is not None:
            self._unguard()
            self._unguard = None

    # -- public --------------------------------------------------------------------------
    def finalize(self, model: keras.Model | None = None) -> keras.Model:
        """Physically remove the masked filters; returns a new, smaller model.

        Args:
            model: The trained model (default: the model this callback trained).

        Returns:
            A new model computing what the masked model computes (the masked model
            itself is left as it is).
        """
        model = model if model is not None else (None if self.model is None else student_of(self.model))
        if model is None or self.selection is None:
            raise PruningError("SoftPruning.finalize() needs a model trained with this callback")
        graph = self._graph if self._graph is not None and self._graph.model is model else None
        return remove_filters(model, self.selection, graph=graph, channelwise=self.channelwise)

    # -- internals ---------------------------------------------------------------------
    def _update(self, ratio: float) -> None:
        self._sync()
        if self.reselect or not self._order:
            scores = _score(
                self._graph.model, self.criterion, data=self.data, loss=self.loss, seed=self.seed, graph=self._graph
            )
            self._chosen = scored(self._chosen, scores, self.criterion)
            self._order = {g.id: np.asarray(scores[g.id], dtype=np.float64) for g in self._chosen}
        removed = {gid: lowest(s, ratio, cell_list=self._cells.get(gid)) for gid, s in self._order.items()}
        plan = Plan.from_groups(self._graph, {g: r for g, r in removed.items() if len(r)})
        name = getattr(self.criterion, "__name__", str(self.criterion))
        self.selection = Selection.from_plan(plan, criterion=name, scores=self._order, cost=self._cost)
        self.ratio_now = ratio
        self._masks = [(v, keras.ops.convert_to_tensor(m)) for v, m in keep_masks(plan)]
        self._n_masked = sum(len(v) for v in removed.values())
        log.debug("SoftPruning: ratio %.3f, %d channels masked", ratio, self._n_masked)

    def _sync(self) -> None:
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()

    def _apply(self) -> None:
        if not self._masks:
            return
        self._sync()
        for variable, keep in self._masks:
            variable.assign(keras.ops.where(keep, variable.value, keras.ops.zeros_like(variable.value)))

