"""Growing: more units for a task that misses its accuracy goal (CPG's growth step), within one
parameter budget shared by the growing mixins.

A growth step widens unit groups with the base's widening (inside the task, so that a failing
task undoes it) by a step relative to each group's size at set-up. The **budget**: the body has
at most ``max_ratio`` times the parameters it had at set-up (the network as its author built
it), never more, not by one parameter. A step that would go past it is scaled down, every group
by the same fraction, to the largest that fits (at least one unit per group), and where not even
that fits, to one unit in as many groups as fit, cheapest first; parameters are counted exactly
before anything is widened (:func:`~eidetic.guarantee.resizing.parameter_growth`). When not one
unit of any group fits, the budget is spent and growth stops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import TaskError, UnsupportedLayerError
from ..guarantee.resizing import check_request, check_widenable, parameter_growth
from ..state import Network, body_parameters


@dataclass(frozen=True)
class Growing:
    """How a task grows the network when it misses its goal (CPG's defaults).

    Args:
        step: units added per growth step to every grown group: a fraction of the group's size
            at set-up (a float; at least one unit), or a number of units (an int).
        max_ratio: the body may grow to at most this many times its parameters at set-up
            (CPG: 1.5); a step that would go past it is scaled down to the largest that fits.
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
        check_ratio("Growing", self.max_ratio)
        if self.groups is not None and (isinstance(self.groups, str) or not self.groups):
            raise TaskError(f"Growing(groups={self.groups!r}): give a non-empty tuple of group keys, or None")

    def request(self, graph, layers, initial: dict[str, int]) -> dict[str, int]:
        """``{group: units to add}`` for one growth step; raises if a named group cannot grow.
        Without named groups, the groups that cannot be widened are left out."""
        keys = widenable_groups(graph, layers, self.groups, "Growing")
        return {key: self._units(initial.get(key, 1)) for key in keys}

    def _units(self, size: int) -> int:
        return self.step if isinstance(self.step, int) else max(1, math.ceil(self.step * size))


def widenable_groups(graph, layers, groups: tuple[str, ...] | None, owner: str) -> list[str]:
    """The groups a growth step widens: ``groups``, checked (raises, naming ``owner``'s
    ``groups``, if one is unknown or cannot be widened), or, for ``None``, every group that can be
    widened."""
    if groups is not None:
        unknown = [key for key in groups if key not in set(graph.keys())]
        if unknown:
            raise TaskError(f"{owner}(groups=...): no unit group {unknown}; the groups are {graph.keys()} (see "
                            "net.graph.describe())")
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


def check_ratio(owner: str, ratio) -> None:
    """Refuse a ``max_ratio`` that is not a finite number >= 1."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 1:
        raise TaskError(f"{owner}(max_ratio={ratio!r}): use a number >= 1 (the largest body, relative to its "
                        "parameters at set-up)")


def body_size(net: Network) -> int:
    """The body's parameter entries now."""
    return sum(p.numel() for p in body_parameters(net).values())


def budget(net: Network, max_ratio: float) -> int:
    """The most parameter entries the body may have: ``max_ratio`` times those at set-up."""
    return math.floor(max_ratio * net._eidetic.initial_parameters)


def within_budget(net: Network, full: dict[str, int], max_ratio: float) -> dict[str, int]:
    """The largest growth step that keeps the body within the budget: ``full`` with every group's
    units scaled by the same fraction (at least one unit each) or, where not even that fits, one
    unit in as many groups as fit, cheapest first; ``{}`` when no unit fits (the budget is spent)."""
    state = net._eidetic
    room = budget(net, max_ratio) - body_size(net)
    full = {key: n for key, n in full.items() if n > 0}

    def fits(request: dict[str, int]) -> bool:
        return parameter_growth(state.layers, state.graph, request) <= room

    if not full or fits(full):
        return full
    most = max(full.values())

    def scaled(t: int) -> dict[str, int]:
        return {key: max(1, n * t // most) for key, n in full.items()}

    low, high = 0, most  # scaled(low) fits (low = 0: one unit each, checked), scaled(high) does not
    if not fits(scaled(0)):
        return _cheapest_units(full, fits, lambda request: parameter_growth(state.layers, state.graph, request))
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(scaled(middle)) else (low, middle)
    return scaled(low)


def _cheapest_units(full: dict[str, int], fits, cost) -> dict[str, int]:
    """One unit in as many of ``full``'s groups as fit together, cheapest first."""
    chosen: dict[str, int] = {}
    for key in sorted(full, key=lambda k: cost({k: 1})):
        if fits({**chosen, key: 1}):
            chosen[key] = 1
    return chosen


def spent(net: Network, max_ratio: float) -> str:
    """The reason a growth stops at the budget, for the report and the log."""
    return (f"budget: the body has {body_size(net):,} parameters, and one more unit of any group would take it past "
            f"{budget(net, max_ratio):,} ({max_ratio:g}x its {net._eidetic.initial_parameters:,} at set-up)")
