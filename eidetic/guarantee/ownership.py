"""Who owns each unit: the only persistent per-task state of a ContinualNetwork.

One small integer per unit: :data:`FREE`, or the index of the task that froze it. Everything
else (which weight entries are frozen, which columns are cut) is derived from these integers
and the unit table. During a task, units removed by pruning are marked in a transient
``pruned`` mask; they stay free and are recycled when the task ends.
"""

from __future__ import annotations

import torch

from ..graph import UnitGraph

FREE = -1
OWNER_DTYPE = torch.int16  # up to 32767 tasks at two bytes per unit


class Ownership:
    """Owners and transient pruning marks of every unit of a :class:`UnitGraph`."""

    def __init__(self, graph: UnitGraph) -> None:
        self.owner = {g.key: torch.full((g.size,), FREE, dtype=OWNER_DTYPE) for g in graph}
        self.pruned = {g.key: torch.zeros(g.size, dtype=torch.bool) for g in graph}

    def group_keys(self) -> list[str]:
        return list(self.owner)

    def free(self, key: str) -> torch.Tensor:
        """Units of group ``key`` that no task owns (pruned ones included)."""
        return self.owner[key] == FREE

    def frozen(self, key: str) -> torch.Tensor:
        """Units of group ``key`` owned by some task."""
        return self.owner[key] != FREE

    def alive(self, key: str) -> torch.Tensor:
        """Free units that the current task still uses (not pruned)."""
        return self.free(key) & ~self.pruned[key]

    def masks(self, which: str) -> dict[str, torch.Tensor]:
        """``{group: mask}`` for ``which`` in ``"free"``, ``"frozen"``, ``"alive"``, ``"pruned"``."""
        if which == "pruned":
            return dict(self.pruned)
        method = getattr(self, which)
        return {key: method(key) for key in self.owner}

    def assign(self, task: int) -> dict[str, torch.Tensor]:
        """Give every alive unit to ``task``; return the newly owned masks per group."""
        new = self.masks("alive")
        for key, mask in new.items():
            self.owner[key][mask] = task
        return new

    def release_pruned(self) -> None:
        """Forget the pruning marks (pruned units are free and will be recycled)."""
        for mask in self.pruned.values():
            mask.zero_()

    def free_counts(self) -> dict[str, int]:
        """``{group: free units}``."""
        return {key: int(self.free(key).sum()) for key in self.owner}

    def counts(self, key: str) -> dict[int, int]:
        """``{task: units owned}`` in group ``key``."""
        owner = self.owner[key]
        tasks, counts = owner[owner != FREE].unique(return_counts=True)
        return dict(zip(tasks.tolist(), counts.tolist()))

    def clone(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"owner": {k: v.clone() for k, v in self.owner.items()},
                "pruned": {k: v.clone() for k, v in self.pruned.items()}}

    def restore(self, saved: dict[str, dict[str, torch.Tensor]]) -> None:
        for key in self.owner:
            self.owner[key].copy_(saved["owner"][key])
            self.pruned[key].copy_(saved["pruned"][key])
