"""Plain result objects: what a task's training did."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class EpochStats:
    """One training epoch: mean loss, the metric on the training batches (running, in
    training mode) and, when validation data was given, the metric on it (evaluation mode).
    The metric is accuracy unless ``train_task`` was given another."""

    epoch: int
    loss: float
    metric: float
    val_metric: float | None = None
    steps: int | None = None  # optimizer steps run (fewer than the loader's batches if the epoch ended early)


@dataclass
class PruneStep:
    """One pruning step: the fraction of the task's alive units it removed, units removed per
    group, recovery epochs begun (each may end early, once the metric is back within tolerance),
    the monitored metric after recovery, whether the step was kept (within tolerance, or chosen
    by graceful pruning) or rolled back, the score threshold used (``None`` for a fraction
    step), and the recovery's optimizer steps."""

    fraction: float
    removed: dict[str, int]
    epochs: int
    metric: float
    accepted: bool
    threshold: float | None = None
    steps: int = 0


@dataclass
class TaskReport:
    """What ``train_task`` did.

    Attributes:
        task: the task id.
        num_classes: size of the task's head.
        epochs: per-epoch statistics of the training phase.
        reference_metric: the monitored metric after training, before pruning.
        prune_steps: every pruning step, kept or rolled back.
        final_metric: the monitored metric of the network as frozen.
        val_metric: the metric on the validation data of the network as frozen (if given).
        units: ``{group: units the task owns}`` for the units it newly froze.
        free_units: ``{group: units left free for later tasks}``.
        seconds: wall time per phase: ``train``, ``prune``, ``finish``, ``total``; within
            pruning, ``prune_training`` (recovery epochs) and ``prune_evaluating`` (the metric);
            within finishing, ``freeze`` (with the routers' statistics and exemplars) and
            ``recycle`` (with the learned router's fit). The sub-phases are there when the base
            class learned the task (mixins time their own phases).
        parameters: parameter entries of the network at the end of the task (body and heads).
        goal: the accuracy goal the task was trained to (mixins such as ``CPGMixin``), or ``None``.
        goal_met: whether the kept attempt's monitored metric reached ``goal`` (``None`` without one).
        attempts: the monitored metric of each training attempt before pruning (one per growth step
            of a growing mixin; one without).
        kept_attempt: the index in ``attempts`` of the attempt the task kept.
        grown: ``{group: units added}`` during the task (growing mixins).
        growth_stop: why a growing mixin stopped growing while the task missed its goal (the
            parameter budget spent, the groups at their maximum width, ...), ``None`` if it
            never had to stop.
        picked: ``{layer: fraction of its frozen weights the task's mask keeps}`` (picking mixins).
        released: ``{layer: frozen weight entries the task retrained}``, released by earlier tasks'
            masks (``LSGMixin``).
    """

    task: int
    num_classes: int
    epochs: list[EpochStats] = field(default_factory=list)
    reference_metric: float | None = None
    prune_steps: list[PruneStep] = field(default_factory=list)
    final_metric: float | None = None
    val_metric: float | None = None
    units: dict[str, int] = field(default_factory=dict)
    free_units: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    parameters: int | None = None
    goal: float | None = None
    goal_met: bool | None = None
    attempts: list[float] = field(default_factory=list)
    kept_attempt: int | None = None
    grown: dict[str, int] = field(default_factory=dict)
    growth_stop: str | None = None
    picked: dict[str, float] = field(default_factory=dict)
    released: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-serialisable dictionary."""
        return asdict(self)

    def __str__(self) -> str:
        kept = sum(self.units.values())
        free = sum(self.free_units.values())
        parts = [f"task {self.task}: {len(self.epochs)} epoch(s)"]
        if self.final_metric is not None:
            parts.append(f"metric {self.final_metric:.4f}")
        if self.val_metric is not None:
            parts.append(f"val metric {self.val_metric:.4f}")
        accepted = sum(s.accepted for s in self.prune_steps)
        parts.append(f"{accepted}/{len(self.prune_steps)} pruning step(s) kept")
        parts.append(f"{kept} units frozen, {free} free")
        if self.grown:
            parts.append(f"grown {self.grown}")
        if self.goal is not None:
            parts.append(f"goal {self.goal:g} {'met' if self.goal_met else 'missed'}")
        if self.growth_stop is not None:
            parts.append(f"stopped growing ({self.growth_stop})")
        return ", ".join(parts)
