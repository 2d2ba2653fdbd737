"""Capacity diagnostics (as in CLNP): how the units of each layer are used by the tasks.

For every unit group: units in total, free units, units owned by each task, and units *reused*
by each task: units of earlier tasks that the task's own units (or its head) read through
non-zero weights, i.e. forward transfer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..graph import FEATURES, Layers, UnitGraph, UnitGroup
from ..guarantee.ownership import FREE, Ownership
from ..guarantee.slices import out_mask


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


def measure_capacity(layers: Layers, graph: UnitGraph, ownership: Ownership, heads: list[torch.Tensor]) -> Capacity:
    """The :class:`Capacity` of a network whose finished tasks' heads read the given feature
    positions (``heads[k]``: a mask over the features, see :meth:`TaskHeads.reads`).

    A stacked or bidirectional recurrent module gets one row per layer and direction, named
    ``module.l{k}[_reverse]`` (see :meth:`UnitGroup.blocks`).
    """
    result = []
    for group in graph:
        owner = ownership.owner[group.key]
        reads = [_units_read_by(layers, graph, ownership, heads, group, task) for task in range(len(heads))]
        for name, units in group.blocks(layers):
            result.append(_block_capacity(name, group, owner[units], [read[units] for read in reads]))
    return Capacity(result)


def _block_capacity(name: str, group: UnitGroup, owner: torch.Tensor, reads: list[torch.Tensor]) -> LayerCapacity:
    tasks, counts = owner[owner != FREE].unique(return_counts=True)
    reused = {}
    for task, read in enumerate(reads):
        count = int((read & (owner != FREE) & (owner < task)).sum())
        if count:
            reused[task] = count
    return LayerCapacity(name, group.modules, len(owner), int((owner == FREE).sum()),
                         dict(zip(tasks.tolist(), counts.tolist())), reused)


def _units_read_by(layers: Layers, graph: UnitGraph, ownership: Ownership, heads: list[torch.Tensor],
                   group: UnitGroup, task: int) -> torch.Tensor:
    """Units of ``group`` read through a non-zero weight by ``task``'s own rows or head."""
    owned = {k: v == task for k, v in ownership.owner.items()}
    read = torch.zeros(group.size, dtype=torch.bool)
    for slot in group.ins:
        if slot.module == FEATURES:
            nonzero = heads[task]
            read[slot.units[nonzero[slot.index]]] = True
            continue
        module, spec = layers[slot.module]
        rows = out_mask(graph, slot.module, owned, spec.unit_count(module))
        read[slot.units[spec.read_positions(module, rows)[slot.index]]] = True
    return read
