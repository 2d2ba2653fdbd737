"""Iterative structured pruning of the task in training, until the metric would drop.

Each step removes a fraction of the task's remaining (alive, free) units in every group, by
the lowest importance, then trains up to ``recovery_epochs`` epochs to recover. A step whose
metric ends below ``reference * (1 - tolerance)`` is rolled back to the last state within
tolerance (from a :class:`~eidetic.snapshot.Snapshot` of the free slices, not a copy of the
model), and the loop stops, or retries at half the step if ``patience`` allows. A step that
rounds to zero units in every group also ends the loop. Frozen units are never candidates.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from .errors import TaskError
from .graph import UnitGraph
from .ownership import Ownership
from .report import PruneStep
from .scoring import importance, methods
from .snapshot import Snapshot
from .training import TaskSession

log = logging.getLogger("eidetic")


@dataclass(frozen=True)
class Pruning:
    """How ``train_task`` prunes a task before freezing it. Pass ``pruning=None`` to keep
    every unit (the task then owns all free units).

    Args:
        method: importance strategy: ``"l1"``, ``"l2"``, ``"taylor"``, ``"random"``, or a
            name given to :func:`eidetic.register_importance`.
        step: fraction of the task's remaining units removed per step, in every layer.
        tolerance: allowed relative drop of the monitored metric from its value after
            training (0.02 keeps at least 98% of it).
        recovery_epochs: training epochs after each step, ended early once within tolerance.
        patience: how many failed steps are retried at half the step before the loop stops
            (0 stops at the first failure, as the Eidetic paper does).
        monitor: ``"train"`` (accuracy on the training data, as the paper) or ``"val"``.
        max_steps: an upper bound on the number of steps (``None``: no bound).
        score_batches: batches of training data used by data-driven methods (``"taylor"``).

    Example::

        net.train_task(0, loader, num_classes=10, optimizer=make_opt, epochs=5,
                       pruning=eidetic.Pruning(method="taylor", step=0.2, tolerance=0.01))
    """

    method: str = "l2"
    step: float = 0.1
    tolerance: float = 0.02
    recovery_epochs: int = 1
    patience: int = 0
    monitor: str = "train"
    max_steps: int | None = None
    score_batches: int | None = 16

    def __post_init__(self) -> None:
        if self.method not in methods():
            raise TaskError(f"Pruning(method={self.method!r}): choose one of {methods()}")
        if not 0.0 < self.step <= 1.0:
            raise TaskError(f"Pruning(step={self.step}): the step is a fraction in (0, 1]")
        if not 0.0 <= self.tolerance < 1.0:
            raise TaskError(f"Pruning(tolerance={self.tolerance}): use a fraction in [0, 1)")
        for name in ("recovery_epochs", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise TaskError(f"Pruning({name}={value!r}): use a non-negative int")
        if self.monitor not in ("train", "val"):
            raise TaskError(f"Pruning(monitor={self.monitor!r}): use 'train' or 'val'")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 0):
            raise TaskError(f"Pruning(max_steps={self.max_steps!r}): use None or a non-negative int")
        if self.score_batches is not None and (not isinstance(self.score_batches, int) or self.score_batches < 1):
            raise TaskError(f"Pruning(score_batches={self.score_batches!r}): use None or a positive int")


def select(ownership: Ownership, scores: dict[str, torch.Tensor], fraction: float) -> dict[str, int]:
    """Mark the lowest-scored alive units of every group as pruned; return counts per group.

    Takes ``round(fraction * alive)`` units per group, never a frozen or already pruned one,
    and never the last unit of a group that has no frozen units.
    """
    removed = {}
    for key in ownership.group_keys():
        alive = ownership.alive(key)
        n = int(alive.sum())
        keep = 0 if ownership.frozen(key).any() else 1
        k = min(math.floor(fraction * n + 0.5), n - keep)
        if k <= 0:
            continue
        candidates = scores[key].clone()
        candidates[~alive] = math.inf
        ownership.pruned[key][torch.topk(candidates, k, largest=False).indices] = True
        removed[key] = k
    return removed


def prune_until(session: TaskSession, layers, graph: UnitGraph, ownership: Ownership, config: Pruning,
                reference: float | None = None) -> tuple[float, list[PruneStep]]:
    """Run the pruning loop; return the reference metric and every step taken."""
    if reference is None:
        reference = session.monitored(config.monitor)
    floor = reference * (1.0 - config.tolerance)
    snapshot = Snapshot(session.body, session.guard, ownership)
    strategy = importance(config.method)
    steps: list[PruneStep] = []
    fraction, retries = config.step, 0
    while config.max_steps is None or len(steps) < config.max_steps:
        snapshot.capture()
        scores = strategy(session.scoring_context(layers, graph, config.score_batches))
        removed = select(ownership, scores, fraction)
        if not removed:
            log.info("task %d: a pruning step of %.4g rounds to zero units; stopping", session.task, fraction)
            break
        session.guard.update_pruned()
        session.guard.restore()
        metric, epochs = session.monitored(config.monitor), 0
        while metric < floor and epochs < config.recovery_epochs:
            session.train_epoch()
            metric, epochs = session.monitored(config.monitor), epochs + 1
        accepted = metric >= floor
        steps.append(PruneStep(fraction, removed, epochs, metric, accepted))
        log.info("task %d: pruned %d units, metric %.4f (floor %.4f): %s", session.task,
                 sum(removed.values()), metric, floor, "kept" if accepted else "rolled back")
        if not accepted:
            snapshot.restore()
            if retries >= config.patience:
                break
            retries += 1
            fraction /= 2
    return reference, steps
