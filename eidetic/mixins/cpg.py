"""CPG (Hung et al., NeurIPS 2019) as a mixin: compacting, picking, growing.

Each task is learned in up to three moves on top of the base's phases:

1. **Pick** (tasks with frozen weights to read): a learnable binary mask over the frozen
   weights the task reads, trained jointly with the free units (:mod:`.picking`).
2. **Grow** (tasks after the first), if the monitored metric misses ``goal``: widen by a step
   (:mod:`.growing`), re-initialise the free units and the head, and try again; stop at the
   maximum width and keep the best attempt.
3. **Compact**: the base's structured pruning loop, keeping steps while the goal holds.

The task then freezes as any other: it owns its units, and its mask is stored at 1 bit per entry.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..guarantee import phases
from ..guarantee.snapshot import Snapshot
from ..training.session import Plan, TaskSession
from ..training.task import synchronise
from .arguments import check_goal, check_setting, refuse_fp16, refuse_optimizer_instance
from .growing import Growing, body_size, budget, spent, within_budget
from .picking import Picker, Picking
from .stages import compact, try_widen

log = logging.getLogger("eidetic")


@dataclass
class _Attempt:
    """One training attempt of a task: its metric, and what is needed to come back to it."""

    metric: float
    epochs: list
    widenings: int  # widenings of the open task made before this attempt
    grown: dict[str, int]
    snapshot: Snapshot  # the network's free state at the attempt's end
    picks: tuple | None


class CPGMixin:
    """Compacting, picking and growing (CPG) for a :class:`~eidetic.ContinualNetwork`.

    Put it before the base class; the network's ``__init__`` and ``forward`` stay as they are.
    ``train_task`` gains ``goal``, ``picking`` and ``growing``; see docs/cpg.md.

    Example::

        class Net(eidetic.CPGMixin, eidetic.ContinualNetwork):
            def __init__(self):
                super().__init__()
                self.fc1, self.fc2 = nn.Linear(784, 64), nn.Linear(64, 64)

            def forward(self, x):
                return F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))

        net = Net()
        for t, (train, val) in enumerate(tasks):
            report = net.train_task(t, train, val_data=val, num_classes=5, epochs=10, goal=0.8,
                                    optimizer=lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9))
            print(report.grown, report.picked)
    """

    def train_task(self, task: int, train_data, *, goal: float | None = None,
                   picking: Picking | None = Picking(), growing: Growing | None = Growing(), **kwargs):
        """Learn a task with CPG's moves; the other arguments are the base's ``train_task``'s.

        Args:
            goal: the accuracy goal on the monitored data (validation data when given, else the
                training data), in [0, 1]. Growth happens while the task misses it, and pruning
                keeps its steps while the metric stays at or above it. ``None``: no growth, and
                pruning keeps its relative ``tolerance``.
            picking: the picking mask's configuration, or ``None`` to read old units unmasked.
            growing: the growth configuration, or ``None`` never to grow.

        Returns:
            a :class:`~eidetic.TaskReport` with ``goal``, ``goal_met``, ``attempts``,
            ``kept_attempt``, ``grown`` and ``picked`` filled in.
        """
        check_goal(goal)
        check_setting("picking", picking, Picking)
        check_setting("growing", growing, Growing)
        if goal is not None and growing is not None:
            refuse_optimizer_instance(kwargs, "growing", "growing=None")
        if picking is not None:
            refuse_fp16(kwargs, "picking", "picking=None")
        self._cpg = (goal, picking, growing)
        try:
            return super().train_task(task, train_data, **kwargs)
        finally:
            self._cpg = None
            if self.open_task is None:
                self._picker = None  # the task is frozen: its scores are no longer needed

    def _settings(self) -> tuple[float | None, Picking | None, Growing | None]:
        return getattr(self, "_cpg", None) or (None, Picking(), None)

    def _begin_task(self, task: int, head) -> None:
        super()._begin_task(task, head)
        _, picking, growing = self._settings()
        state = self._eidetic
        if growing is not None:
            growing.request(state.graph, state.layers, state.initial_sizes)  # refuse what cannot grow, now
        self._picker = None
        if picking is not None:
            self._picker = Picker(self, picking)
            self._picker.check()
            self._picker.start()

    def _learn(self, plan: Plan) -> TaskSession:
        goal, _, growing = self._settings()
        state, report, picker = self._eidetic, plan.report, self._picker
        metrics: list[float] = []
        best: _Attempt | None = None
        grown: dict[str, int] = {}
        while True:
            session, scheduler = plan.build()
            if goal is not None:
                plan.monitor = "val" if session.val_loader is not None else "train"
            if picker is not None:
                session.callbacks = [*session.callbacks, picker.callback]
            epochs = session.fit(plan.epochs, plan.early_stopping, scheduler)
            metrics.append(session.monitored(plan.monitor))
            log.info("task %d: attempt %d reaches %.4f (goal %s)", report.task, len(metrics), metrics[-1], goal)
            if best is None or metrics[-1] > best.metric:
                best = _Attempt(metrics[-1], epochs, len(state.undo), dict(grown),
                                Snapshot(self, session.guard, state.ownership),
                                None if picker is None else picker.save())
            grows = goal is not None and metrics[-1] < goal and growing is not None and state.frozen_tasks > 0
            if not grows:  # task 0 does not grow, as in CPG
                break
            report.growth_stop = self._grow(growing, grown)
            if report.growth_stop is not None:
                break
        kept = metrics.index(best.metric)
        if kept != len(metrics) - 1:  # back to the best attempt: its width, its weights, its masks
            while len(state.undo) > best.widenings:
                self._undo_widening()
            best.snapshot.restore()
            if picker is not None:
                picker.load(best.picks)
            session, _ = plan.build()
        if goal is not None and best.metric < goal:
            log.warning("task %d: goal %.4f missed (best metric %.4f; %s); kept attempt %d of %d", report.task, goal,
                        best.metric, report.growth_stop or "no growth for the first task", kept + 1, len(metrics))
        report.epochs, report.attempts, report.kept_attempt = best.epochs, metrics, kept
        report.goal, report.grown = goal, {k: n for k, n in best.grown.items() if n}
        report.goal_met = None if goal is None else best.metric >= goal
        report.seconds["train"] = time.perf_counter() - plan.start
        if picker is not None:
            picker.stop()
            report.picked = picker.picked()
        compact(self, session, plan, goal)
        return session

    def _grow(self, growing: Growing, grown: dict[str, int]) -> str | None:
        """The largest growth step within the budget; re-initialises the free units, the head and the
        picking scores for the next attempt. Returns ``None`` if the network grew, else why not."""
        state = self._eidetic
        full = growing.request(state.graph, state.layers, state.initial_sizes)
        if not full:
            return "no group can be widened"
        request = within_budget(self, full, growing.max_ratio)
        if not request:
            return spent(self, growing.max_ratio)
        refused = try_widen(self, request)
        if refused:
            return refused
        if body_size(self) > budget(self, growing.max_ratio):  # parameter_growth counts exactly: never here
            self._undo_widening()
            return spent(self, growing.max_ratio)
        log.info("task %d: grew by %s (of a step of %s) to %d body parameters", self.num_tasks - 1, request, full,
                 body_size(self))
        for key, n in request.items():
            grown[key] = grown.get(key, 0) + n
        phases.reinitialize(state.layers, state.graph, state.ownership.masks("free"))
        head = self.heads.head(self.num_tasks - 1)
        if not self.heads.shared:
            head.reset_parameters()
        if self._picker is not None:
            self._picker.start()
        synchronise(self)  # the units drawn at random on each rank
        return None
