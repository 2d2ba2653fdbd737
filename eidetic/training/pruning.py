"""Structured pruning of the task in training.

:class:`Pruning` is the iterative schedule (Eidetic Learning, CLNP's iterative variant): each
step removes a fraction of the task's remaining (alive, free) units in every group, by the
lowest importance (or every unit scoring at most a threshold), then trains up to
``recovery_epochs`` epochs to recover, stopping as soon as the metric is back within
tolerance. The metric is measured on a fixed sample of the monitored data. A step whose metric
ends below ``reference * (1 - tolerance)`` is rolled back to the last state within tolerance
(from a :class:`~eidetic.snapshot.Snapshot` of the free slices, not a copy of the model), and
the loop stops, or retries at half the step if ``patience`` allows. A step that rounds to zero
units in every group (or would prune past ``max_pruning_ratio``) also ends the loop; every
loop is bounded by the units there are to prune.

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

FIRST_STEP = 0.5  # Pruning(step=None): the fraction of the alive units the first step removes
CHECKS_PER_EPOCH = 4  # recovery looks at the metric this many times an epoch...
CHECK_STEPS = 16  # ...or every this many steps when the loader has no length


@dataclass(frozen=True)
class Pruning:
    """How ``train_task`` prunes a task before freezing it. Pass ``pruning=None`` to keep
    every unit (the task then owns all free units).

    The loop: measure the monitored metric after training (the reference; on a fixed
    ``sample`` of the data), then repeat: remove a fraction of the task's alive units in every
    layer (the lowest-scored by ``method``), train until the metric is back within
    ``tolerance`` of the reference (at most ``recovery_epochs`` epochs, looking at the metric
    four times an epoch and stopping as soon as it is back), and keep the step, or roll it
    back. By default (``step=None``) the first step removes half of the units and a step that
    fails is retried once at half its size; a fixed ``step`` is the Eidetic paper's loop.

    Args:
        method: importance strategy: ``"l1"``, ``"l2"``, ``"taylor"``, ``"random"``, or a
            name given to :func:`eidetic.register_importance`.
        step: fraction of the task's remaining units removed per step, in every layer;
            ``None``: half at first, halved after each failed step.
        tolerance: allowed relative drop of the monitored metric from its value after
            training (0.02 keeps at least 98% of it).
        recovery_epochs: training epochs after each step at most, ended early once within
            tolerance.
        patience: how many failed steps are retried at half the step before the loop stops
            (0 stops at the first failure, as the Eidetic paper does); ``None``: 1 with
            ``step=None``, 0 with a fixed step.
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
        sample: how many samples of the monitored data the metric is measured on: the same
            ones at every measurement (the first ones the loader yields under a fixed seed;
            nothing is kept in memory). ``None``: all of the data, at every measurement.
        max_pruning_ratio: the largest fraction of the units the task started with (its free
            units, in each layer) that the loop may prune; 1.0 lets it prune all but one.

    Example::

        net.train_task(0, loader, num_classes=10, optimizer=make_opt, epochs=5,
                       pruning=eidetic.Pruning(tasks=10))  # ten tasks in all: each keeps its share
        net.train_task(1, loader, num_classes=10, optimizer=make_opt, epochs=5,
                       pruning=eidetic.Pruning.paper(tasks=10))  # the Eidetic paper's settings
    """

    method: str = "l2"
    step: float | None = None
    tolerance: float = 0.02
    recovery_epochs: int = 1
    patience: int | None = None
    monitor: str = "train"
    max_steps: int | None = None
    score_batches: int | None = 16
    threshold: float | None = None
    tasks: int | None = None
    sample: int | None = 1024
    max_pruning_ratio: float = 0.9

    def __post_init__(self) -> None:
        _check_common(self, "Pruning")
        if self.step is not None and (isinstance(self.step, bool) or not isinstance(self.step, (int, float))
                                      or not 0.0 < self.step <= 1.0):
            raise TaskError(f"Pruning(step={self.step!r}): the step is a fraction in (0, 1], or None (adaptive)")
        if not 0.0 <= self.tolerance < 1.0:
            raise TaskError(f"Pruning(tolerance={self.tolerance}): use a fraction in [0, 1)")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 0):
            raise TaskError(f"Pruning(patience={self.patience!r}): use None or a non-negative int")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 0):
            raise TaskError(f"Pruning(max_steps={self.max_steps!r}): use None or a non-negative int")
        if self.tasks is not None and (not isinstance(self.tasks, int) or self.tasks < 1):
            raise TaskError(f"Pruning(tasks={self.tasks!r}): use None or the number of tasks, a positive int")
        if self.sample is not None and (isinstance(self.sample, bool) or not isinstance(self.sample, int)
                                        or self.sample < 1):
            raise TaskError(f"Pruning(sample={self.sample!r}): use None (all the data) or a positive int")
        if not 0.0 < self.max_pruning_ratio <= 1.0:
            raise TaskError(f"Pruning(max_pruning_ratio={self.max_pruning_ratio}): use a fraction in (0, 1]")

    @classmethod
    def paper(cls, tasks: int | None = None, **changes) -> Pruning:
        """The settings of the Eidetic paper's code (amazon-science/eideticnet-training): L2,
        steps of 5% of the remaining units, at most 5 recovery epochs, the metric on all of the
        training data, stop at the first failed step, prune at most 95% of the units; a
        tolerance of 0.01 for up to 5 tasks and 0.04 for more (0.01 when ``tasks`` is not
        given). ``changes`` override any field.

        Example::

            pruning = eidetic.Pruning.paper(tasks=10)   # step 0.05, tolerance 0.04
        """
        settings = {"method": "l2", "step": 0.05, "recovery_epochs": 5, "patience": 0, "sample": None,
                    "max_pruning_ratio": 0.95, "tolerance": 0.04 if tasks is not None and tasks > 5 else 0.01}
        return cls(**{**settings, "tasks": tasks, **changes})

    @property
    def first_step(self) -> float:
        """The fraction of the alive units the loop's first step removes."""
        return FIRST_STEP if self.step is None else self.step

    @property
    def retries(self) -> int:
        """How many failed steps are retried at half the step."""
        if self.patience is not None:
            return self.patience
        return 1 if self.step is None else 0

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
           fraction: float | None = None, threshold: float | None = None,
           least: dict[str, list[int]] | None = None) -> dict[str, int]:
    """Mark low-scored alive units of every block as pruned; return counts per group.

    ``blocks`` gives, per group, the unit sets ranked apart (each layer of a stacked recurrent
    module: their magnitudes are not comparable). Takes ``round(fraction * alive)`` units per
    block, or every alive unit scoring at most ``threshold``; never a frozen or already pruned
    one, never the last unit of a block that has no frozen units, and never so many that fewer
    than ``least[group][i]`` units of block ``i`` stay alive.
    """
    removed: dict[str, int] = {}
    for key in ownership.group_keys():
        for i, units in enumerate(blocks[key]):
            k = _select_block(ownership, key, units, scores[key], fraction, threshold,
                              0 if least is None else least[key][i])
            if k:
                removed[key] = removed.get(key, 0) + k
    return removed


def alive_counts(ownership: Ownership, blocks: dict[str, list[torch.Tensor]]) -> dict[str, list[int]]:
    """``{group: alive units of each block}``."""
    return {key: [int(ownership.alive(key)[units].sum()) for units in blocks[key]] for key in ownership.group_keys()}


def _select_block(ownership: Ownership, key: str, units: torch.Tensor, scores: torch.Tensor,
                  fraction: float | None, threshold: float | None, least: int) -> int:
    alive = ownership.alive(key)[units]
    n = int(alive.sum())
    keep = max(least, 0 if ownership.frozen(key)[units].any() else 1)
    wanted = math.floor(fraction * n + 0.5) if threshold is None else int((alive & (scores[units] <= threshold)).sum())
    k = min(wanted, n - keep)
    if k <= 0:
        return 0
    positions = alive.nonzero().flatten()  # only alive units are candidates, whatever the other scores
    lowest = torch.topk(scores[units][positions.to(scores.device)], k, largest=False).indices
    ownership.pruned[key][units[positions[lowest.to(positions.device)]]] = True
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
        reference = measure(session, config)
    _check_finite_metric(reference, session.task, config)
    if floor is None:
        floor = reference * (1.0 - config.tolerance)
    snapshot = Snapshot(session.body, session.guard, ownership)
    blocks = group_blocks(layers, graph)
    least = {key: [math.ceil((1.0 - config.max_pruning_ratio) * n - 1e-9) for n in counts]
             for key, counts in alive_counts(ownership, blocks).items()}
    steps: list[PruneStep] = []

    def step(fraction: float | None, threshold: float | None) -> PruneStep | None:
        scores = _scores(session, layers, graph, ownership, config)
        alive = _alive(ownership)
        removed = select(ownership, scores, blocks, fraction if threshold is None else None, threshold, least)
        if not removed:
            log.info("task %d: a pruning step removes no unit; stopping", session.task)
            return None
        metric, epochs, trained = _apply_and_recover(session, floor, config)
        steps.append(PruneStep(sum(removed.values()) / alive, removed, epochs, metric, metric >= floor, threshold,
                               trained))
        log.info("task %d: pruned %d units, metric %.4f (floor %.4f) after %d recovery step(s)", session.task,
                 sum(removed.values()), metric, floor, trained)
        return steps[-1]

    def room() -> bool:
        return config.max_steps is None or len(steps) < config.max_steps

    share = config.share(session.task)
    first = step(1.0 - share, None) if share is not None and room() else None
    if first is not None:
        within, first.accepted = first.accepted, True
        if not within:
            log.warning("task %d: pruned to its share of the free units (Pruning(tasks=%d)), its metric is %.4f, "
                        "below the floor of %.4f; the share is kept whatever the metric, so that later tasks get "
                        "theirs: give the task more recovery (recovery_epochs) or the network more units (widen)",
                        session.task, config.tasks, first.metric, floor)
            return reference, steps
    fraction, threshold, retries = config.first_step, config.threshold, 0
    while room():
        snapshot.capture()
        taken = step(fraction, threshold)
        if taken is None:
            break
        if not taken.accepted:
            log.info("task %d: rolled back", session.task)
            snapshot.restore()
            if retries >= config.retries:
                break
            retries += 1
            fraction /= 2
            threshold = None if threshold is None else threshold / 2
    return reference, steps


def measure(session: TaskSession, config: Pruning | GracefulPruning) -> float:
    """The metric the pruning decisions watch: on ``config.monitor``'s data, a fixed sample of
    ``config.sample`` samples of it (all of it for ``None``)."""
    return session.monitored(config.monitor, getattr(config, "sample", None))


def _check_finite_metric(value: float, task: int, config) -> None:
    if not math.isfinite(value):
        raise TaskError(f"task {task}: the monitored metric is {value} on the {config.monitor} data before pruning, "
                        "so no pruning step can be judged against it; pass a metric= that returns finite scores, "
                        "or pruning=None")


def _scores(session: TaskSession, layers, graph: UnitGraph, ownership: Ownership,
            config: Pruning | GracefulPruning) -> dict[str, torch.Tensor]:
    """``config.method``'s scores of the units (averaged over the ranks), refused unless they give
    every group one score per unit, finite for every alive unit (a NaN would rank past the
    pruned units, and a step remove nothing, forever)."""
    method = config.method
    scores = distributed.average(importance(method)(session.scoring_context(layers, graph, config.score_batches)))
    if not isinstance(scores, dict):
        raise TaskError(f"importance {method!r} returned a {type(scores).__name__}; return {{group key: one score "
                        "per unit}}")
    for key in ownership.group_keys():
        size = len(ownership.alive(key))
        got = scores.get(key)
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != (size,):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise TaskError(f"importance {method!r} gave group '{key}' scores of shape {shape}; it needs one score per "
                            f"unit, a tensor of shape ({size},) (iterate context.graph for the groups and sizes)")
        bad = ~torch.isfinite(got) & ownership.alive(key).to(got.device)
        if bad.any():
            raise TaskError(f"importance {method!r} gave {int(bad.sum())} non-finite score(s) (NaN or inf) to alive "
                            f"units of group '{key}'; an importance method must return finite scores")
    return scores


def _alive(ownership: Ownership) -> int:
    return sum(int(ownership.alive(key).sum()) for key in ownership.group_keys())


def _apply_and_recover(session: TaskSession, floor: float, config: Pruning | GracefulPruning
                       ) -> tuple[float, int, int]:
    """Zero the newly pruned units, then train until the metric reaches ``floor``, for at most
    ``config.recovery_epochs`` epochs, looking at the metric :data:`CHECKS_PER_EPOCH` times an
    epoch and stopping at the first look within the floor; return the metric and the recovery
    epochs and optimizer steps run."""
    session.guard.update_pruned()
    session.guard.restore()
    metric, epochs, steps = measure(session, config), 0, 0
    length = _length(session.train_loader)
    every = max(1, math.ceil(length / CHECKS_PER_EPOCH)) if length else CHECK_STEPS

    def recovered(_: int) -> bool:
        nonlocal metric
        metric = measure(session, config)
        return metric >= floor

    looks = recovered if math.isfinite(floor) else None
    while not metric >= floor and epochs < config.recovery_epochs:
        stats = session.train_epoch(stop=looks, every=every)
        epochs, steps = epochs + 1, steps + stats.steps
        if looks is None or stats.steps % every:  # trained since the last look
            metric = measure(session, config)
    return metric, epochs, steps


def _length(loader) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def graceful_prune(session: TaskSession, layers, graph: UnitGraph, ownership: Ownership,
                   config: GracefulPruning) -> tuple[float, list[PruneStep]]:
    """Try every threshold from the trained network (one trial per distinct set of units it
    removes); keep the sparsest result within the margin of the best, checked again once redone
    (with recovery epochs, the redone training differs: the next sparsest is tried if it falls
    short)."""
    reference = measure(session, config)
    snapshot = Snapshot(session.body, session.guard, ownership)
    scores = _scores(session, layers, graph, ownership, config)
    blocks = group_blocks(layers, graph)
    alive = _alive(ownership)
    tried: list[PruneStep] = []
    for threshold in sorted(set(config.thresholds or _quantiles(ownership, scores))):
        removed = select(ownership, scores, blocks, threshold=threshold)
        if tried and removed == tried[-1].removed:  # nested selections: the same units as the last trial
            snapshot.restore()
            continue
        metric, epochs, trained = _apply_and_recover(session, math.inf, config)
        tried.append(PruneStep(sum(removed.values()) / alive, removed, epochs, metric, False, threshold, trained))
        snapshot.restore()
    best = max([reference] + [step.metric for step in tried])
    within = [step for step in tried if step.metric >= best - config.margin and step.removed]
    for step in sorted(within, key=lambda s: (sum(s.removed.values()), s.threshold), reverse=True):
        select(ownership, scores, blocks, threshold=step.threshold)
        metric, _, _ = _apply_and_recover(session, math.inf, config)
        if metric >= best - config.margin:
            step.metric, step.accepted = metric, True
            log.info("task %d: graceful pruning keeps threshold %.4g (%d units removed, metric %.4f, best %.4f)",
                     session.task, step.threshold, sum(step.removed.values()), metric, best)
            break
        snapshot.restore()  # redone, it fell short of the margin: the next sparsest
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
    reference = measure(session, config)
    floor = None if goal is None or reference < goal else goal
    return prune_until(session, layers, graph, ownership, config, reference, floor)
