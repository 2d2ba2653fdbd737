"""The static unit table: unit groups and the slices of every unit.

A :class:`UnitGraph` is what the rest of eidetic reads; it is compiled once per architecture
(by :func:`eidetic.graph.discover`) and holds no reference to activations or tracers.

* A **unit** is a neuron of a Linear layer or a channel of a convolution, together with every
  layer that must share its fate (BatchNorm channels, depthwise channels, the other producers of
  a residual stream).
* A **group** gathers the units anchored in one layer (its first producer in module order).
* A :class:`Slot` says where units of a group sit in one module: as *outputs* (the module
  produces them: weight rows, bias entries, BatchNorm statistics) or as *inputs* (the module
  reads them: weight columns; after a flatten one unit owns many columns). The module name
  :data:`FEATURES` stands for the body's output, which the task heads read.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

from .layers import Layers, LayerSpec

FEATURES = "<features>"

Canonical = frozenset[frozenset[tuple[str, str, int]]]


@dataclass(frozen=True)
class Slot:
    """Positions of a group's units in one module: ``index[i]`` belongs to unit ``units[i]``."""

    module: str
    units: torch.Tensor
    index: torch.Tensor

    def positions_of(self, unit_mask: torch.Tensor) -> torch.Tensor:
        """Positions in this module of the units selected by a boolean mask over the group."""
        return self.index[unit_mask[self.units]]


@dataclass(frozen=True)
class UnitGroup:
    """Units anchored in one layer, with their output and input slots."""

    key: str
    size: int
    outs: tuple[Slot, ...]
    ins: tuple[Slot, ...]

    @property
    def modules(self) -> list[str]:
        """Names of the layers that produce this group's units."""
        return [slot.module for slot in self.outs]

    def blocks(self, layers: Layers) -> list[tuple[str, torch.Tensor]]:
        """``(name, units)`` of the blocks the group is pruned and reported by: the whole group,
        unless it has one producer whose spec splits its units (one block per layer and
        direction of a stacked recurrent module, named ``module.l{k}[_reverse]``)."""
        everything = [(self.key, torch.arange(self.size))]
        if len(self.outs) != 1:
            return everything
        slot = self.outs[0]
        module, spec = layers[slot.module]
        split = spec.unit_blocks(module)
        if len(split) == 1:
            return everything
        return [(self.key + label, slot.units[(slot.index >= first) & (slot.index < stop)])
                for label, first, stop in split]


@dataclass
class UnitGraph:
    """Every unit group of a network, plus the layer specs and the feature size.

    Attributes:
        groups: the unit groups, in module order of their anchors.
        layers: ``{module name: LayerSpec}`` for every layer the forward pass uses.
        feature_dim: the number of features the body returns (after flattening).
    """

    groups: tuple[UnitGroup, ...]
    layers: dict[str, LayerSpec]
    feature_dim: int
    _by_key: dict[str, UnitGroup] = field(init=False, repr=False)
    _outs: dict[str, list[tuple[UnitGroup, Slot]]] = field(init=False, repr=False)
    _ins: dict[str, list[tuple[UnitGroup, Slot]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_key = {g.key: g for g in self.groups}
        self._outs, self._ins = defaultdict(list), defaultdict(list)
        for g in self.groups:
            for slot in g.outs:
                self._outs[slot.module].append((g, slot))
            for slot in g.ins:
                self._ins[slot.module].append((g, slot))

    @classmethod
    def from_units(cls, units: list[set[tuple[str, str, int]]], layers: dict[str, LayerSpec],
                   feature_dim: int) -> UnitGraph:
        """Assemble a table from units given as sets of ``(role, module, position)``.

        Each unit is anchored at its first output position in module order (the order of
        ``layers``); units with the same anchor module form a group keyed by that module's
        name, numbered by anchor position. Units without any output position are dropped.
        """
        order = {name: i for i, name in enumerate(layers)}
        order[FEATURES] = len(order)
        by_anchor: dict[str, list[tuple[int, set]]] = defaultdict(list)
        for unit in units:
            outs = sorted((n for n in unit if n[0] == "out"), key=lambda n: (order[n[1]], n[2]))
            if outs:
                by_anchor[outs[0][1]].append((outs[0][2], unit))
        groups = []
        for key in sorted(by_anchor, key=order.__getitem__):
            members = sorted(by_anchor[key], key=lambda t: t[0])
            pairs: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
            for u, (_, unit) in enumerate(members):
                for role, module, pos in unit:
                    pairs[(role, module)].append((u, pos))
            slots: dict[str, list[Slot]] = {"out": [], "in": []}
            for role, module in sorted(pairs, key=lambda k: order[k[1]]):
                units_, index = zip(*sorted(pairs[(role, module)]))
                slots[role].append(Slot(module, torch.tensor(units_, dtype=torch.long),
                                        torch.tensor(index, dtype=torch.long)))
            groups.append(UnitGroup(key, len(members), tuple(slots["out"]), tuple(slots["in"])))
        return cls(groups=tuple(groups), layers=dict(layers), feature_dim=feature_dim)

    def __getitem__(self, key: str) -> UnitGroup:
        return self._by_key[key]

    def __iter__(self):
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def keys(self) -> list[str]:
        return [g.key for g in self.groups]

    def out_slots(self, module: str) -> list[tuple[UnitGroup, Slot]]:
        """Every ``(group, slot)`` in which ``module`` produces units."""
        return self._outs.get(module, [])

    def in_slots(self, module: str) -> list[tuple[UnitGroup, Slot]]:
        """Every ``(group, slot)`` in which ``module`` reads units."""
        return self._ins.get(module, [])

    def canonical(self) -> Canonical:
        """The table as a set of units, each a set of ``(role, module, position)``.

        Two tables describe the same couplings exactly when their canonical forms are equal,
        whatever their group keys and unit numbering.
        """
        units: dict[tuple[str, int], set[tuple[str, str, int]]] = {}
        for group in self.groups:
            for role, slots in (("out", group.outs), ("in", group.ins)):
                for slot in slots:
                    for u, p in zip(slot.units.tolist(), slot.index.tolist()):
                        units.setdefault((group.key, u), set()).add((role, slot.module, p))
        return frozenset(frozenset(s) for s in units.values())

    def describe(self) -> str:
        """A short human-readable listing of the groups."""
        lines = []
        for g in self.groups:
            reads = sorted({s.module for s in g.ins})
            lines.append(f"{g.key}: {g.size} units, produced by {g.modules}, read by {reads}")
        return "\n".join(lines)
