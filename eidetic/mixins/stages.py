"""The steps that the growing mixins' ``_learn`` share: a growth step that may be refused, and
the compaction after the task's attempts."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from ..errors import GraphError
from ..training.pruning import Pruning, prune
from ..training.session import Plan, TaskSession

log = logging.getLogger("eidetic")


def try_widen(net, request: dict[str, int]) -> str | None:
    """Widen the open task's network by ``request``; ``None`` if it did, else why not (also logged)."""
    try:
        net._widen(request)
    except GraphError as error:
        log.warning("task %d: cannot grow further: %s", net.num_tasks - 1, error)
        return f"widening refused: {error}"
    return None


def compact(net, session: TaskSession, plan: Plan, goal: float | None) -> None:
    """The base's pruning of the task after its attempts (keeping steps while ``goal`` holds on
    the monitored data, when there is a goal), with the report's timings."""
    report, state = plan.report, net._eidetic
    if plan.pruning is not None:
        pruning = plan.pruning
        if goal is not None and isinstance(pruning, Pruning):
            pruning = replace(pruning, monitor=plan.monitor)
        report.reference_metric, report.prune_steps = prune(
            session, state.layers, state.graph, state.ownership, pruning, goal)
    report.seconds["prune"] = time.perf_counter() - plan.start - report.seconds["train"]
