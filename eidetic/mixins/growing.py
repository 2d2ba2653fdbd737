"""Growing: more units for a task that misses its accuracy goal (CPG's growth step).

A growth step widens unit groups with the base's widening (inside the task, so that a failing
task undoes it) by a step relative to each group's size at set-up, as long as the body stays
within ``max_ratio`` times its parameters at set-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import TaskError, UnsupportedLayerError
from ..guarantee.resizing import check_request, check_widenable


@dataclass(frozen=True)
class Growing:
    """How a task grows the network when it misses its goal (CPG's defaults).

    Args:
        step: units added per growth step to every grown group: a fraction of the group's size
            at set-up (a float; at least one unit), or a number of units (an int).
        max_ratio: the body may grow to at most this many times its parameters at set-up
            (CPG: 1.5); a step that would go past it is not taken.
        groups: the unit groups to grow (keys of ``net.graph``); ``None`` grows every group
            that can be widened, as CPG grows every layer.

    Example::

        net.train_task(1, loader, num_classes=5, optimizer=make_opt, epochs=10, goal=0.9,
                       growing=eidetic.Growing(step=0.5, max_ratio=2.0, groups=("fc1",)))
    """

    step: float | int = 0.25
    max_ratio: float = 1.5
    groups: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        step = self.step
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0:
            raise TaskError(f"Growing(step={step!r}): use a positive fraction (float) or number of units (int)")
        ratio = self.max_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 1:
            raise TaskError(f"Growing(max_ratio={ratio!r}): use a number >= 1 (the largest body, relative to its "
                            "parameters at set-up)")
        if self.groups is not None and (isinstance(self.groups, str) or not self.groups):
            raise TaskError(f"Growing(groups={self.groups!r}): give a non-empty tuple of group keys, or None")

    def request(self, graph, layers, initial: dict[str, int]) -> dict[str, int]:
        """``{group: units to add}`` for one growth step; raises if a named group cannot grow.
        Without named groups, the groups that cannot be widened are left out."""
        return {key: self._units(initial.get(key, 1)) for key in widenable_groups(graph, layers, self.groups)}

    def _units(self, size: int) -> int:
        return self.step if isinstance(self.step, int) else max(1, math.ceil(self.step * size))


def widenable_groups(graph, layers, groups: tuple[str, ...] | None) -> list[str]:
    """The groups a growth step widens: ``groups``, checked (raises if one cannot be widened),
    or, for ``None``, every group that can be widened."""
    if groups is not None:
        check_request(graph, dict.fromkeys(groups, 1))
        check_widenable(layers, graph, dict.fromkeys(groups, 1))
        return list(groups)
    keys = []
    for group in graph:
        try:
            check_widenable(layers, graph, {group.key: 1})
        except UnsupportedLayerError:
            continue
        keys.append(group.key)
    return keys
