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

    def same_couplings(self, other: UnitGraph) -> bool:
        """Whether ``other`` describes exactly the couplings of this table (like comparing
        :meth:`canonical` forms, without building Python sets of every position)."""
        mine, theirs = self._anchored(), other._anchored()
        if mine is None or theirs is None:
            return self.canonical() == other.canonical()
        return mine.keys() == theirs.keys() and all(torch.equal(v, theirs[k]) for k, v in mine.items())

    def _anchored(self) -> dict[tuple[str, str, str], torch.Tensor] | None:
        """``{(role, module, anchor module): sorted position * 2**32 + anchor position}``, where a
        unit's anchor is its first output position in module order; ``None`` if a position sits
        in two units or a unit has no output (the comparison then goes through sets)."""
        order = {name: i for i, name in enumerate(self.layers)}
        order[FEATURES] = len(order)
        module_of = list(order)
        found: dict[tuple[str, str, str], list[torch.Tensor]] = defaultdict(list)
        seen: dict[tuple[str, str], list[torch.Tensor]] = defaultdict(list)
        for group in self.groups:
            key = torch.full((group.size,), 2**62, dtype=torch.long)
            for slot in group.outs:
                key.scatter_reduce_(0, slot.units, order[slot.module] * 2**32 + slot.index, "amin")
            if bool((key == 2**62).any()):
                return None
            anchor_module, anchor_position = key // 2**32, key % 2**32
            for role, slots in (("out", group.outs), ("in", group.ins)):
                for slot in slots:
                    seen[(role, slot.module)].append(slot.index)
                    for m in anchor_module[slot.units].unique().tolist():
                        pick = anchor_module[slot.units] == m
                        found[(role, slot.module, module_of[m])].append(
                            slot.index[pick] * 2**32 + anchor_position[slot.units[pick]])
        if any(len(torch.cat(v).unique()) != sum(len(t) for t in v) for v in seen.values()):
            return None
        return {k: torch.cat(v).sort().values for k, v in found.items()}

    def describe(self) -> str:
        """A short human-readable listing of the groups."""
        lines = []
        for g in self.groups:
            reads = sorted({s.module for s in g.ins})
            lines.append(f"{g.key}: {g.size} units, produced by {g.modules}, read by {reads}")
        return "\n".join(lines)


def components(edges: list[tuple[torch.Tensor, torch.Tensor]], nodes: int) -> torch.Tensor:
    """Connected components of ``nodes`` nodes joined by ``edges`` (pairs of id tensors): the
    smallest node id of each node's component."""
    label = torch.arange(nodes)
    if not edges:
        return label
    a = torch.cat([e[0] for e in edges])
    b = torch.cat([e[1] for e in edges])
    while True:
        ra, rb = label[a], label[b]
        if torch.equal(ra, rb):
            return label
        low = torch.minimum(ra, rb)
        label.scatter_reduce_(0, ra, low, "amin")
        label.scatter_reduce_(0, rb, low, "amin")
        while True:  # every label points at a root again
            jumped = label[label]
            if torch.equal(jumped, label):
                break
            label = jumped


def assemble(producers: list[tuple[str, LayerSpec, int, int]], inputs: dict[str, tuple[int, int]],
             edges: list[tuple[torch.Tensor, torch.Tensor]], nodes: int, feature_dim: int) -> UnitGraph:
    """The table of measured contacts between units and input positions.

    Args:
        producers: ``(module, spec, first id, units)`` of every layer in module order; node
            ``first + p`` is output position ``p`` of the module.
        inputs: ``{module: (first id, positions)}`` for the input positions of every reader
            (and :data:`FEATURES`), numbered after all output positions.
        edges: ``(unit ids, node ids)`` pairs: unit (an output node) reaches node.
        nodes: the number of node ids.
        feature_dim: the number of features of the body.

    Each unit is anchored at its first output position in module order; units with the same
    anchor module form a group keyed by that module, numbered by anchor position.
    """
    label = components(edges, nodes)
    outputs = producers[-1][2] + producers[-1][3] if producers else 0
    touched = torch.zeros(nodes, dtype=torch.bool)
    touched[:outputs] = True
    for _, node in edges:
        touched[node] = True
    first = torch.tensor([p[2] for p in producers], dtype=torch.long)
    module_of = torch.searchsorted(first, torch.arange(outputs), right=True) - 1
    _refuse_mixed_units(producers, inputs, label, module_of, outputs)
    anchors = (label[:outputs] == torch.arange(outputs)).nonzero().flatten()
    rank = torch.zeros(outputs, dtype=torch.long)
    anchor_module = module_of[anchors]
    for m in anchor_module.unique().tolist():
        here = anchors[anchor_module == m]
        rank[here] = torch.arange(len(here))
    slots: dict[int, dict[str, list[Slot]]] = {}
    blocks = [(name, "out", f, n) for name, _, f, n in producers]
    blocks += [(name, "in", f, n) for name, (f, n) in inputs.items()]
    for name, role, start, size in blocks:
        ids = torch.arange(start, start + size)[touched[start: start + size]]
        if not len(ids):
            continue
        owner = label[ids]
        group, unit, position = module_of[owner], rank[owner], ids - start
        order = position.argsort(stable=True)
        order = order[(group[order] * outputs + unit[order]).argsort(stable=True)]
        group, unit, position = group[order], unit[order], position[order]
        values, counts = group.unique_consecutive(return_counts=True)
        for g, u, p in zip(values.tolist(), unit.split(counts.tolist()), position.split(counts.tolist())):
            slots.setdefault(g, {"out": [], "in": []})[role].append(Slot(name, u, p))
    groups = []
    for g in sorted(slots):
        name = producers[g][0]
        size = int((anchor_module == g).sum())
        groups.append(UnitGroup(name, size, tuple(slots[g]["out"]), tuple(slots[g]["in"])))
    return UnitGraph(groups=tuple(groups), layers={p[0]: p[1] for p in producers}, feature_dim=feature_dim)


def _refuse_mixed_units(producers, inputs, label: torch.Tensor, module_of: torch.Tensor, outputs: int) -> None:
    """Two units of one layer in one component were combined by the network: refuse."""
    from ..errors import UnsupportedLayerError

    ids = torch.arange(outputs)
    key = label[:outputs] * len(producers) + module_of
    order = key.argsort()
    same = (key[order][1:] == key[order][:-1]).nonzero().flatten()
    if not len(same):
        return
    a, b = ids[order][same[0]], ids[order][same[0] + 1]
    name, _, start, _ = producers[int(module_of[a])]
    component = label[a]
    readers = sorted(n for n, (f, size) in inputs.items() if (label[f: f + size] == component).any())
    low, high = sorted((int(a) - start, int(b) - start))
    raise UnsupportedLayerError(
        f"units {low} and {high} of module '{name}' are mixed together before they reach {readers} (for example "
        "by a softmax, a normalisation or attention across units), so they cannot be frozen one by one. Mix "
        "units only inside supported layers."
    )
