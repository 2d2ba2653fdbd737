"""Plain result objects: what a task's training did, and how the capacity is used."""

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


@dataclass
class PruneStep:
    """One pruning step: the fraction asked for, units removed per group, recovery epochs run,
    the monitored metric after recovery, and whether the step was kept (within tolerance) or
    rolled back."""

    fraction: float
    removed: dict[str, int]
    epochs: int
    metric: float
    accepted: bool


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
        seconds: wall time per phase (``train``, ``prune``, ``finish``, ``total``).
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
        return ", ".join(parts)


@dataclass
class LayerCapacity:
    """Use of one unit group.

    Attributes:
        group: the group key (its anchor layer).
        modules: the layers that produce the group's units.
        total: number of units.
        free: units no task owns.
        owned: ``{task: units it owns}``.
        reused: ``{task: units of earlier tasks that the task's own units (or head) read}``.
    """

    group: str
    modules: list[str]
    total: int
    free: int
    owned: dict[int, int]
    reused: dict[int, int]


@dataclass
class Capacity:
    """Per-layer capacity of a ContinualNetwork (see :meth:`ContinualNetwork.capacity`)."""

    layers: list[LayerCapacity]

    def __getitem__(self, group: str) -> LayerCapacity:
        for layer in self.layers:
            if layer.group == group:
                return layer
        raise KeyError(group)

    def to_dict(self) -> dict:
        """A JSON-serialisable dictionary."""
        return asdict(self)

    def __str__(self) -> str:
        tasks = sorted({t for layer in self.layers for t in layer.owned})
        header = ["layer", "units", "free"] + [f"task {t}" for t in tasks]
        rows = [header]
        for layer in self.layers:
            cells = [layer.group, str(layer.total), str(layer.free)]
            for t in tasks:
                owned, reused = layer.owned.get(t, 0), layer.reused.get(t, 0)
                cells.append(f"{owned} (+{reused} reused)" if reused else str(owned))
            rows.append(cells)
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
