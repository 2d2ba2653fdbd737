"""Structured pruning of the task in training.

:class:`Pruning` is the iterative schedule (Eidetic Learning, CLNP's iterative variant): each
step removes a fraction of the task's remaining (alive, free) units in every group, by the
lowest importance (or every unit scoring at most a threshold), then trains up to
``recovery_epochs`` epochs to recover. A step whose metric ends below
``reference * (1 - tolerance)`` is rolled back to the last state within tolerance (from a
:class:`~eidetic.snapshot.Snapshot` of the free slices, not a copy of the model), and the loop
stops, or retries at half the step if ``patience`` allows. A step that rounds to zero units in
every group also ends the loop.

:class:`GracefulPruning` is CLNP's one-shot thresholding with graceful forgetting: it tries
several thresholds from the unpruned network and keeps the sparsest result whose metric is
within ``margin`` of the best one.

Frozen units are never candidates, whatever the method and scores.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from ..errors import TaskError
from ..graph import UnitGraph
from ..guarantee.ownership import Ownership
from ..guarantee.snapshot import Snapshot
from . import distributed
from .report import PruneStep
from .scoring import importance, methods
from .session import TaskSession

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
            training (0.005 keeps at least 99.5% of it).
        recovery_epochs: training epochs after each step, ended early once within tolerance.
        patience: how many failed steps are retried at half the step before the loop stops
            (0 stops at the first failure, as the Eidetic paper does).
        monitor: ``"train"`` (accuracy on the training data, as the paper) or ``"val"``.
        max_steps: an upper bound on the number of steps (``None``: no bound).
        score_batches: batches of training data used by data-driven methods (``"taylor"``,
            ``"activation"``).
        threshold: if set, each step removes every alive unit scoring at most ``threshold``
            instead of a fraction (CLNP's threshold; ``step`` is then ignored, and a retry
            halves the threshold).
        tasks: the number of tasks the network will learn in all, if known. Task ``k`` then
            keeps at most its share of the free units, ``1 / (tasks - k)`` of them in every
            layer: a first step prunes it down to that share (kept whatever the metric, so
            that early tasks cannot starve later ones), and the tolerance loop goes on from
            there. The last task keeps at most half of what is left: the rest stays free for
            the learned router, which is trained through the free units. ``None``: no share,
            the tolerance alone decides.

    Example::

        net.train_task(0, loader, num_classes=10, optimizer=make_opt, epochs=5,
                       pruning=eidetic.Pruning(tasks=10))  # ten tasks in all: each keeps its share
    """

    method: str = "l2"
    step: float = 0.2
    tolerance: float = 0.005
    recovery_epochs: int = 2
    patience: int = 0
    monitor: str = "train"
    max_steps: int | None = None
    score_batches: int | None = 16
    threshold: float | None = None
    tasks: int | None = None

    def __post_init__(self) -> None:
        _check_common(self, "Pruning")
        if not 0.0 < self.step <= 1.0:
            raise TaskError(f"Pruning(step={self.step}): the step is a fraction in (0, 1]")
        if not 0.0 <= self.tolerance < 1.0:
            raise TaskError(f"Pruning(tolerance={self.tolerance}): use a fraction in [0, 1)")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise TaskError(f"Pruning(patience={self.patience!r}): use a non-negative int")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 0):
            raise TaskError(f"Pruning(max_steps={self.max_steps!r}): use None or a non-negative int")
        if self.tasks is not None and (not isinstance(self.tasks, int) or self.tasks < 1):
            raise TaskError(f"Pruning(tasks={self.tasks!r}): use None or the number of tasks, a positive int")

    def share(self, task: int) -> float | None:
        """The fraction of the free units task ``task`` may keep under ``tasks`` (``None``
        without it); a task past the plan is refused."""
        if self.tasks is None:
            return None
        if task >= self.tasks:
            raise TaskError(f"Pruning(tasks={self.tasks}) plans for tasks 0..{self.tasks - 1}, but this is task "
                            f"{task}: pass the number of tasks the network will learn in all")
        return 1.0 / max(self.tasks - task, 2)


@dataclass(frozen=True)
class GracefulPruning:
    """CLNP's one-shot pruning with graceful forgetting.

    The units are scored once, on the network as trained. Then, from that network, every
    threshold is tried: remove the alive units scoring at most the threshold, train
    ``recovery_epochs`` epochs, measure the metric. The sparsest result whose metric is at
    least ``best - margin`` (best over the unpruned network and all thresholds) is kept.

    Args:
        method: importance strategy (``"activation"`` as in CLNP, or any other).
        thresholds: thresholds to try; ``None`` tries the 10%, 20%, ..., 90% quantiles of the
            alive units' scores.
        margin: allowed absolute drop of the metric below the best (CLNP's ``m``).
        recovery_epochs: training epochs after pruning, before measuring.
        monitor: ``"val"`` (validation data, as in CLNP) or ``"train"``.
        score_batches: batches of training data used to score.

    Example::

        net.train_task(0, loader, val_data=val, num_classes=10, optimizer=make_opt, epochs=5,
                       pruning=eidetic.GracefulPruning(margin=0.01))
    """

    method: str = "activation"
    thresholds: tuple[float, ...] | None = None
    margin: float = 0.01
    recovery_epochs: int = 0
    monitor: str = "val"
    score_batches: int | None = 16

    def __post_init__(self) -> None:
        _check_common(self, "GracefulPruning")
        if not 0.0 <= self.margin < 1.0:
            raise TaskError(f"GracefulPruning(margin={self.margin}): use a fraction in [0, 1)")
        if self.thresholds is not None and not self.thresholds:
            raise TaskError("GracefulPruning(thresholds=()): give at least one threshold, or None")


def _check_common(config, name: str) -> None:
    if config.method not in methods():
        raise TaskError(f"{name}(method={config.method!r}): choose one of {methods()}")
    if config.monitor not in ("train", "val"):
        raise TaskError(f"{name}(monitor={config.monitor!r}): use 'train' or 'val'")
    if not isinstance(config.recovery_epochs, int) or config.recovery_epochs < 0:
        raise TaskError(f"{name}(recovery_epochs={config.recovery_epochs!r}): use a non-negative int")
    if config.score_batches is not None and (not isinstance(config.score_batches, int) or config.score_batches < 1):
        raise TaskError(f"{name}(score_batches={config.score_batches!r}): use None or a positive int")


def select(ownership: Ownership, scores: dict[str, torch.Tensor], blocks: dict[str, list[torch.Tensor]],
           fraction: float | None = None, threshold: float | None = None) -> dict[str, int]:
    """Mark low-scored alive units of every block as pruned; return counts per group.

    ``blocks`` gives, per group, the unit sets ranked apart (each layer of a stacked recurrent
    module: their magnitudes are not comparable). Takes ``round(fraction * alive)`` units per
    block, or every alive unit scoring at most ``threshold``; never a frozen or already pruned
    one, and never the last unit of a block that has no frozen units.
    """
    removed: dict[str, int] = {}
    for key in ownership.group_keys():
        for units in blocks[key]:
            k = _select_block(ownership, key, units, scores[key], fraction, threshold)
            if k:
                removed[key] = removed.get(key, 0) + k
    return removed


def _select_block(ownership: Ownership, key: str, units: torch.Tensor, scores: torch.Tensor,
                  fraction: float | None, threshold: float | None) -> int:
    alive = ownership.alive(key)[units]
    n = int(alive.sum())
    keep = 0 if ownership.frozen(key)[units].any() else 1
    wanted = math.floor(fraction * n + 0.5) if threshold is None else int((alive & (scores[units] <= threshold)).sum())
    k = min(wanted, n - keep)
    if k <= 0:
        return 0
    candidates = scores[units].clone()
    candidates[~alive] = math.inf
    ownership.pruned[key][units[torch.topk(candidates, k, largest=False).indices]] = True
    return k


def group_blocks(layers, graph: UnitGraph) -> dict[str, list[torch.Tensor]]:
    """``{group key: unit sets pruned apart}`` (see :meth:`UnitGroup.blocks`)."""
    return {group.key: [units for _, units in group.blocks(layers)] for group in graph}


def prune_until(session: TaskSession, layers, graph: UnitGraph, ownership: Ownership, config: Pruning,
                reference: float | None = None, floor: float | None = None) -> tuple[float, list[PruneStep]]:
    """Run the pruning loop; return the reference metric and every step taken.

    A step is kept while the monitored metric stays at or above ``floor``; by default
    ``reference * (1 - config.tolerance)``. With ``config.tasks``, a first step prunes the task
    to its share of the free units and is kept whatever the metric; the loop ends there if the
    metric is below the floor.
    """
    if reference is None:
        reference = session.monitored(config.monitor)
    if floor is None:
        floor = reference * (1.0 - config.tolerance)
    snapshot = Snapshot(session.body, session.guard, ownership)
    strategy = importance(config.method)
    blocks = group_blocks(layers, graph)
    steps: list[PruneStep] = []

    def step(fraction: float | None, threshold: float | None) -> PruneStep | None:
        scores = distributed.average(strategy(session.scoring_context(layers, graph, config.score_batches)))
        alive = _alive(ownership)
        removed = select(ownership, scores, blocks, fraction if threshold is None else None, threshold)
        if not removed:
            log.info("task %d: a pruning step removes no unit; stopping", session.task)
            return None
        metric, epochs = _apply_and_recover(session, floor, config.recovery_epochs, config.monitor)
        steps.append(PruneStep(sum(removed.values()) / alive, removed, epochs, metric, metric >= floor, threshold))
        log.info("task %d: pruned %d units, metric %.4f (floor %.4f)", session.task, sum(removed.values()),
                 metric, floor)
        return steps[-1]

    def room() -> bool:
        return config.max_steps is None or len(steps) < config.max_steps

    share = config.share(session.task)
    first = step(1.0 - share, None) if share is not None and room() else None
    if first is not None:
        within, first.accepted = first.accepted, True
        if not within:
            return reference, steps
    fraction, threshold, retries = config.step, config.threshold, 0
    while room():
        snapshot.capture()
        taken = step(fraction, threshold)
        if taken is None:
            break
        if not taken.accepted:
            log.info("task %d: rolled back", session.task)
            snapshot.restore()
            if retries >= config.patience:
                break
            retries += 1
            fraction /= 2
            threshold = None if threshold is None else threshold / 2
    return reference, steps


def _alive(ownership: Ownership) -> int:
    return sum(int(ownership.alive(key).sum()) for key in ownership.group_keys())


def _apply_and_recover(session: TaskSession, floor: float, epochs: int, monitor: str) -> tuple[float, int]:
    """Zero the newly pruned units, then train until the metric reaches ``floor`` (at most
    ``epochs`` epochs); return the metric and the epochs run."""
    session.guard.update_pruned()
    session.guard.restore()
    metric, run = session.monitored(monitor), 0
    while metric < floor and run < epochs:
        session.train_epoch()
        metric, run = session.monitored(monitor), run + 1
    return metric, run


def graceful_prune(session: TaskSession, layers, graph: UnitGraph, ownership: Ownership,
                   config: GracefulPruning) -> tuple[float, list[PruneStep]]:
    """Try every threshold from the trained network; keep the sparsest result within the margin."""
    reference = session.monitored(config.monitor)
    snapshot = Snapshot(session.body, session.guard, ownership)
    scores = distributed.average(importance(config.method)(session.scoring_context(layers, graph,
                                                                                  config.score_batches)))
    thresholds = sorted(config.thresholds or _quantiles(ownership, scores))
    blocks = group_blocks(layers, graph)
    alive = _alive(ownership)
    tried: list[PruneStep] = []
    for threshold in thresholds:
        removed = select(ownership, scores, blocks, threshold=threshold)
        metric, epochs = _apply_and_recover(session, math.inf, config.recovery_epochs, config.monitor)
        tried.append(PruneStep(sum(removed.values()) / alive, removed, epochs, metric, False, threshold))
        snapshot.restore()
    best = max([reference] + [step.metric for step in tried])
    within = [i for i, step in enumerate(tried) if step.metric >= best - config.margin and step.removed]
    if within:
        chosen = max(within, key=lambda i: (sum(tried[i].removed.values()), thresholds[i]))
        select(ownership, scores, blocks, threshold=thresholds[chosen])
        tried[chosen].metric, _ = _apply_and_recover(session, math.inf, config.recovery_epochs, config.monitor)
        tried[chosen].accepted = True
        log.info("task %d: graceful pruning keeps threshold %.4g (%d units removed, metric %.4f, best %.4f)",
                 session.task, thresholds[chosen], sum(tried[chosen].removed.values()), tried[chosen].metric, best)
    return reference, tried


def _quantiles(ownership: Ownership, scores: dict[str, torch.Tensor]) -> list[float]:
    alive = torch.cat([scores[key][ownership.alive(key)] for key in ownership.group_keys()])
    if alive.numel() == 0:
        return []
    return torch.quantile(alive.double(), torch.linspace(0.1, 0.9, 9, dtype=torch.float64)).tolist()


def prune(session: TaskSession, layers, graph: UnitGraph, ownership: Ownership,
          config: Pruning | GracefulPruning, goal: float | None = None) -> tuple[float, list[PruneStep]]:
    """Run the pruning that ``config`` describes; return the reference metric and the steps.

    With an accuracy ``goal`` (iterative pruning only), steps are kept while the metric stays at
    or above it; if the trained task is already below the goal, within ``config.tolerance`` of
    what it reached.
    """
    if isinstance(config, GracefulPruning):
        return graceful_prune(session, layers, graph, ownership, config)
    reference = session.monitored(config.monitor)
    floor = None if goal is None or reference < goal else goal
    return prune_until(session, layers, graph, ownership, config, reference, floor)
