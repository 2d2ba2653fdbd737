"""Learnable sparse growth (GROWN / CL-LSG, Yang, Lin, Zhang and Fan) as a mixin.

Start from a small seed network and grow only what a task needs. Each task is learned in up
to several stages, all inside the task's transaction:

1. **Pick and reuse** (every task): train the task's own units with an attentive mask over
   their kernels, a selective mask over the frozen kernels it reads, and the *released* kernels:
   kernels of frozen rows that every task reading their value masks out, retrained for this task
   (:mod:`.sparse`).
2. **Grow** (only while the task misses ``goal``): widen every growable group by a pool of
   candidate units behind a learnable grown mask, train jointly with stage 1's masks, and give
   back the candidates whose gate closed (:meth:`ContinualNetwork._keep_new_units`). Repeat until
   the goal is met or the groups are at ``max_width``.

The task then freezes as any other: it owns its units (seed, kept candidates), and its masks are
stored at 1 bit per entry. See docs/lsg.md.
"""

from __future__ import annotations

import logging
import time

from ..guarantee.narrowing import new_units
from ..training.pruning import Pruning
from ..training.session import Plan, TaskSession
from ..training.task import synchronise
from .arguments import check_goal, check_setting, refuse_fp16, refuse_optimizer_instance
from .growing import body_size, budget, spent, within_budget
from .sparse import SparseGrowth, SparseMasks
from .stages import compact, try_widen

log = logging.getLogger("eidetic")


class LSGMixin:
    """Learnable sparse growth for a :class:`~eidetic.ContinualNetwork` built at seed width.

    Put it before the base class; the network's ``__init__`` and ``forward`` stay as they are.
    ``train_task`` gains ``goal`` and ``growth``, and does not prune unless given ``pruning``.

    Example::

        class Net(eidetic.LSGMixin, eidetic.ContinualNetwork):
            def __init__(self):
                super().__init__()
                self.fc1, self.fc2 = nn.Linear(784, 32), nn.Linear(32, 32)   # the seed

            def forward(self, x):
                return F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))

        net = Net()
        for t, (train, val) in enumerate(tasks):
            report = net.train_task(t, train, val_data=val, num_classes=5, epochs=20, goal=0.8,
                                    optimizer=lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9))
            print(report.grown, net.parameter_count())
    """

    def train_task(self, task: int, train_data, *, goal: float | None = None,
                   growth: SparseGrowth | None = SparseGrowth(), pruning: Pruning | None = Pruning(), **kwargs):
        """Learn a task with learnable sparse growth; the other arguments are the base's.

        Args:
            goal: the accuracy goal on the monitored data (validation data when given, else the
                training data), in [0, 1]: the task grows while it misses it. ``None``: never grow.
            growth: the masks' and growth's configuration, or ``None`` for the base's training.
            pruning: the base's pruning after the masks are learned, compacting the task within
                the pruning's tolerance of what it reached (the goal decides growth only), so that
                the units it does not need, grown ones included, are left free for later tasks;
                ``None``: the masks alone are the sparsity, as in the papers (see docs/lsg.md for
                why compacting is the default).

        Returns:
            a :class:`~eidetic.TaskReport` with ``goal``, ``goal_met``, ``attempts`` (one per
            stage), ``grown``, ``picked`` and ``released`` filled in.
        """
        check_goal(goal)
        check_setting("growth", growth, SparseGrowth)
        if goal is not None and growth is not None:
            refuse_optimizer_instance(kwargs, "growth", "goal=None")
        if growth is not None:
            refuse_fp16(kwargs, "learnable masks", "growth=None")
        self._lsg = (goal, growth)
        try:
            return super().train_task(task, train_data, pruning=pruning, **kwargs)
        finally:
            self._lsg = None
            if self.open_task is None:
                self._sparse = None  # the task is frozen: its scores are no longer needed

    def _lsg_settings(self) -> tuple[float | None, SparseGrowth | None]:
        return getattr(self, "_lsg", None) or (None, SparseGrowth())

    def _begin_task(self, task: int, head) -> None:
        super()._begin_task(task, head)
        goal, growth = self._lsg_settings()
        self._sparse, self._released = None, {}
        if growth is None:
            return
        state = self._eidetic
        if goal is not None:
            growth.growable(state.graph, state.layers)  # refuse named groups that cannot grow, now
        self._sparse = SparseMasks(self, growth)
        if growth.release and state.frozen_tasks:
            self._released = self._sparse.release()
        self._sparse.start()

    def _learn(self, plan: Plan) -> TaskSession:
        masks = getattr(self, "_sparse", None)
        if masks is None:
            return super()._learn(plan)
        goal, growth = self._lsg_settings()
        report = plan.report
        attempts: list[float] = []
        grown: dict[str, int] = {}
        while True:
            session, scheduler = plan.build()
            if goal is not None:
                plan.monitor = "val" if session.val_loader is not None else "train"
            session.callbacks = [*session.callbacks, masks.callback]
            report.epochs.extend(session.fit(plan.epochs, plan.early_stopping, scheduler))
            kept = masks.settle()
            report.picked = masks.picked or report.picked
            useful = True
            if kept:  # a growth step: give back the candidates whose gate closed
                masks.narrowed(self._keep_new_units(kept))
                masks.install()
                for key, mask in kept.items():
                    if mask.any():
                        grown[key] = grown.get(key, 0) + int(mask.sum())
                useful = any(mask.any() for mask in kept.values())
                session, _ = plan.build()
            attempts.append(session.monitored(plan.monitor))
            log.info("task %d: stage %d reaches %.4f (goal %s)", report.task, len(attempts), attempts[-1], goal)
            if goal is None or attempts[-1] >= goal or not (self._eidetic.frozen_tasks or growth.first_task):
                break  # the first task grows only with first_task, as in CPG
            report.growth_stop = "the last growth step kept none of its candidates" if not useful else \
                self._grow(growth, masks)
            if report.growth_stop is not None:
                log.warning("task %d: goal %.4f missed (metric %.4f after %d stage(s)); growth stops: %s",
                            report.task, goal, attempts[-1], len(attempts), report.growth_stop)
                break
        report.attempts, report.kept_attempt, report.goal, report.grown = attempts, len(attempts) - 1, goal, grown
        report.goal_met = None if goal is None else attempts[-1] >= goal
        report.released = dict(self._released)
        report.seconds["train"] = time.perf_counter() - plan.start
        compact(self, session, plan, None)  # within the pruning's tolerance: the goal decides growth only
        return session

    def _grow(self, growth: SparseGrowth, masks: SparseMasks) -> str | None:
        """Widen by the largest pool of candidates within ``max_width`` and the budget, behind the
        grown mask; returns ``None`` if the network grew, else why not."""
        state = self._eidetic
        full = growth.request(state.graph, state.layers, state.initial_sizes)
        if not full:
            if not growth.growable(state.graph, state.layers):
                return ("no group can grow (a stacked or bidirectional recurrent layer's units are split in "
                        "blocks; other layers that cannot be widened: docs/widening.md)")
            return f"every group is at its maximum width ({growth.max_width:g}x its size at set-up)"
        request = within_budget(self, full, growth.max_ratio)
        if not request:
            return spent(self, growth.max_ratio)
        refused = try_widen(self, request)
        if refused:
            return refused
        if body_size(self) > budget(self, growth.max_ratio):  # parameter_growth counts exactly: never here
            self._undo_widening()
            return spent(self, growth.max_ratio)
        widening = state.undo[-1]
        masks.widened(widening.layouts)
        synchronise(self)  # the candidates drawn at random on each rank
        masks.start({key: new_units(state.graph[key].size, widening.unit_maps[key]) for key in request})
        return None
