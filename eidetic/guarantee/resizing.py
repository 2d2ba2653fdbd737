"""Widening a trained network: more free units in chosen unit groups, old outputs unchanged.

Widening group ``g`` by ``n`` appends ``n`` units to every layer that produces ``g`` (weight rows,
biases, BatchNorm affine and statistics, the gate rows of a recurrent layer, every producer of
a residual stream) and input columns for them to every layer that reads ``g`` (after a flatten,
one unit owns many columns; a concatenation puts them wherever the forward pass puts them). The
new entries are zero, so every existing row computes what it computed before; the new units
get their layer's fresh initialisation and are free.

Where the new units land in each reader's input is not worked out by hand: the layers are
resized to the new shapes, the unit table is measured again by the probe, and each old unit is
followed from its old positions to its new ones (:func:`unit_maps`, :func:`input_map`). The
weights are then laid out along those maps. Anything that cannot be laid out so (a layer that
produces units of two groups, a grouped convolution reading the group, a layer whose spec
cannot resize it) is refused before a tensor changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import GraphError, TaskError, UnsupportedLayerError
from ..graph import FEATURES, Layers, LayerSpec, UnitGraph
from .ownership import Ownership


@dataclass
class SavedModule:
    """A module's own tensors and size attributes, to put back on rollback."""

    module: nn.Module
    parameters: dict[str, nn.Parameter | None]
    buffers: dict[str, torch.Tensor | None]
    attributes: dict[str, object]

    @classmethod
    def of(cls, module: nn.Module) -> SavedModule:
        sizes = {k: v for k, v in vars(module).items() if isinstance(v, int) and not isinstance(v, bool)}
        return cls(module, dict(module._parameters), dict(module._buffers), sizes)

    def restore(self) -> None:
        self.module._parameters.clear()
        self.module._parameters.update(self.parameters)
        self.module._buffers.clear()
        self.module._buffers.update(self.buffers)
        for name, value in self.attributes.items():
            setattr(self.module, name, value)
        if hasattr(self.module, "_init_flat_weights"):  # recurrent modules keep a list of their weights
            self.module._init_flat_weights()


@dataclass
class Resized:
    """The outcome of :func:`resize_body`."""

    graph: UnitGraph
    layers: Layers
    ownership: Ownership
    new_units: dict[str, torch.Tensor]  # per group: which units of the new table are new
    features: torch.Tensor  # new position of each old feature
    out_maps: dict[str, torch.Tensor]  # per resized layer: new position of each old unit position
    in_maps: dict[str, torch.Tensor]  # per resized layer: new position of each old input position
    layouts: dict[str, list[tuple[int, torch.Tensor, int]]]  # per "module.tensor": how its entries moved
    saved: dict[str, SavedModule]  # the resized layers as they were
    unit_maps: dict[str, torch.Tensor]  # per group: new unit number of every old unit


def check_request(graph: UnitGraph, units) -> dict[str, int]:
    """The non-zero entries of a ``{group key: units to add}`` request, checked."""
    if not isinstance(units, dict):
        raise TypeError(f"widen() takes a dict {{group key: units to add}}, got {type(units).__name__}")
    keys = graph.keys()
    unknown = [k for k in units if k not in set(keys)]
    if unknown:
        raise TaskError(f"widen(): no unit group {unknown}; the groups are {keys} (see net.graph.describe())")
    for key, n in units.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise TaskError(f"widen(): the units to add to '{key}' must be an int >= 0, got {n!r}")
    return {k: n for k, n in units.items() if n}


def _resizable(spec: LayerSpec) -> bool:
    return type(spec).resize is not LayerSpec.resize or spec.size_attributes is not None


def check_widenable(layers: Layers, graph: UnitGraph, added: dict[str, int]) -> None:
    """Refuse, before anything changes, a request the layers cannot follow."""
    for key, n in added.items():
        group = graph[key]
        module, spec = layers[key]  # the anchor: the new units are appended to its output
        label = f"module '{key}' ({type(module).__name__})"
        others = sorted({g.key for g, _ in graph.out_slots(key)} - {key})
        if others:
            raise UnsupportedLayerError(
                f"cannot widen group '{key}': {label} also produces units of group(s) {others} (its output is "
                "split), so there is no end of its output to append units at."
            )
        if all(layers[slot.module][1].passthrough for slot in group.outs):
            raise UnsupportedLayerError(
                f"cannot widen group '{key}': it is produced only by {label} and other layers that compute each unit "
                "from the input channel of the same number (BatchNorm, depthwise convolution), and what they read "
                "(the network's input) cannot grow."
            )
        try:
            spec.widened_positions(module, n)
        except ValueError as error:
            raise UnsupportedLayerError(f"cannot widen group '{key}': {label}: {error}") from None
        for slot in group.ins:
            if slot.module == FEATURES:
                continue
            module, spec = layers[slot.module]
            label = f"module '{slot.module}' ({type(module).__name__})"
            if spec.groups != 1:
                raise UnsupportedLayerError(
                    f"cannot widen group '{key}': {label} is a grouped convolution ({spec.groups} groups) reading it, "
                    "and new input channels would change which group reads which channel. Only ungrouped and "
                    "depthwise convolutions can follow a widened group."
                )
            if new_positions(layers, group, slot, n) is None:
                raise UnsupportedLayerError(
                    f"cannot widen group '{key}': {label} reads its units through different numbers of inputs, so "
                    "the number of inputs of a new unit is not known."
                )
    for name in touched(graph, added):
        module, spec = layers[name]
        if spec.groups != 1:
            raise UnsupportedLayerError(
                f"cannot widen: module '{name}' ({type(module).__name__}) is a grouped convolution ({spec.groups} "
                "groups) producing or reading a widened group, and new channels would change which group reads "
                "which channel. Only ungrouped and depthwise convolutions can be widened."
            )
        if not _resizable(spec):
            raise UnsupportedLayerError(
                f"cannot widen: module '{name}' ({type(module).__name__}) would have to grow, but its LayerSpec "
                "cannot resize it. Register it with LayerSpec(..., size_attributes=(('out_features', 'out'), ...)) "
                "naming the attributes that hold its sizes (size_attributes=() if none), or override "
                "LayerSpec.resize."
            )


def new_positions(layers: Layers, group, slot, added: int) -> int | None:
    """How many positions of ``slot``'s module ``added`` new units of ``group`` take: each new
    unit as many as the old units of its block (a recurrent group has one block per layer and
    direction, the new units spread evenly over them); ``None`` if a block's units differ."""
    blocks = group.blocks(layers)
    per_unit = slot.units.bincount(minlength=group.size)
    total = 0
    for _, units in blocks:
        counts = per_unit[units]
        if not bool((counts == counts[0]).all()):
            return None
        total += int(counts[0]) * (added // len(blocks))
    return total


def touched(graph: UnitGraph, added: dict[str, int]) -> list[str]:
    """The layers that produce or read a widened group, in module order."""
    names = {slot.module for key in added for slot in (*graph[key].outs, *graph[key].ins)}
    return [name for name in graph.layers if name in names]


def _grown_sizes(layers: Layers, graph: UnitGraph, added: dict[str, int], name: str) -> tuple[torch.Tensor, int, int]:
    """``(new positions of the old units, units, input positions)`` of layer ``name``."""
    module, spec = layers[name]
    n = sum(added.get(g.key, 0) for g, _ in graph.out_slots(name))
    inputs = spec.input_size(module)
    for group, slot in graph.in_slots(name):
        if group.key in added:
            inputs += new_positions(layers, group, slot, added[group.key])
    return spec.widened_positions(module, n), spec.unit_count(module) + n, inputs


def parameter_growth(layers: Layers, graph: UnitGraph, added: dict[str, int]) -> int:
    """The parameter entries that widening the groups of ``added`` would add to the body, exactly,
    without widening: every touched layer's parameters at the shapes :func:`resize_body` gives them."""
    growth = 0
    for name in touched(graph, added):
        module, spec = layers[name]
        out_map, units, inputs = _grown_sizes(layers, graph, added, name)
        in_map = torch.arange(spec.input_size(module))
        for tensor_name, param in module.named_parameters(recurse=False):
            shape = list(param.shape)
            for dim, _, size in spec.grown_layout(tensor_name, out_map, units, in_map, inputs):
                shape[dim] = size
            growth += math.prod(shape) - param.numel()
    return growth


def resize_body(layers: Layers, graph: UnitGraph, ownership: Ownership, added: dict[str, int],
                rediscover) -> Resized:
    """Grow the layers of ``added``'s groups and re-measure the table; on any failure the
    layers are put back as they were.

    Args:
        rediscover: a function of no argument returning the table of the resized network.
    """
    check_widenable(layers, graph, added)
    names = touched(graph, added)
    saved = [SavedModule.of(layers[name][0]) for name in names]
    sizes = {name: _grown_sizes(layers, graph, added, name) for name in names}
    try:
        for name in names:  # first the shapes only, so that the probe can run
            out_map, units, inputs = sizes[name]
            layers[name][1].resize(layers[name][0], out_map, units, None, inputs)
        try:
            new_graph = rediscover()
        except Exception as error:
            raise GraphError(f"after widening {added}, measuring the network failed ({type(error).__name__}: "
                             f"{error}). Does forward() hard-code a width (a view or reshape to a fixed size)?") \
                from error
        maps = unit_maps(graph, new_graph, added, {key: sizes[key][0] for key in added})
        for s in saved:  # now lay the old weights out along the measured maps
            s.restore()
        out_maps, in_maps, layouts = {}, {}, {}
        for name in names:
            module, spec = layers[name]
            _, units, inputs = sizes[name]
            out_maps[name] = position_map(graph, new_graph, name, maps, spec.unit_count(module), units, "outs")
            in_maps[name] = position_map(graph, new_graph, name, maps, spec.input_size(module), inputs, "ins")
            for tensor_name in spec.tensor_names():
                layouts[f"{name}.{tensor_name}"] = spec.grown_layout(tensor_name, out_maps[name], units,
                                                                     in_maps[name], inputs)
            spec.resize(module, out_maps[name], units, in_maps[name], inputs)
        features = position_map(graph, new_graph, FEATURES, maps, graph.feature_dim, new_graph.feature_dim, "ins")
    except BaseException:
        for s in saved:
            s.restore()
        raise
    new_layers = {name: (layers[name][0], spec) for name, spec in new_graph.layers.items()}
    new_units = {}
    owners = Ownership(new_graph)
    for group in graph:
        new_units[group.key] = torch.ones(new_graph[group.key].size, dtype=torch.bool)
        new_units[group.key][maps[group.key]] = False
        owners.owner[group.key][maps[group.key]] = ownership.owner[group.key]
        owners.pruned[group.key][maps[group.key]] = ownership.pruned[group.key]
    return Resized(new_graph, new_layers, owners, new_units, features, out_maps, in_maps, layouts,
                   dict(zip(names, saved)), maps)


def unit_maps(old: UnitGraph, new: UnitGraph, added: dict[str, int],
              anchors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{group: new unit number of every old unit}``, followed through the group's anchor
    layer (where a widened group's old units moved as ``anchors[group]`` says, and any other
    stayed); raises :class:`GraphError` if the re-measured table is not the old one plus the
    new units."""
    if set(new.keys()) != set(old.keys()):
        raise GraphError(f"widening changed the unit groups from {old.keys()} to {new.keys()}")
    maps = {}
    for group in old:
        grown = new[group.key]
        expected = group.size + added.get(group.key, 0)
        if grown.size != expected:
            raise GraphError(f"after widening, group '{group.key}' has {grown.size} units, expected {expected}")
        slot = next(s for s in group.outs if s.module == group.key)
        new_slot = next(s for s in grown.outs if s.module == group.key)
        moved = anchors[group.key][slot.index] if group.key in anchors else slot.index
        table = torch.full((int(max(new_slot.index.max(), moved.max())) + 1,), -1, dtype=torch.long)
        table[new_slot.index] = new_slot.units
        found = table[moved]
        if bool((found < 0).any()) or len(found.unique()) != len(found):
            raise GraphError(f"after widening, the units of group '{group.key}' are not where module "
                             f"'{group.key}' was expected to put them")
        mapping = torch.empty(group.size, dtype=torch.long)
        mapping[slot.units] = found
        maps[group.key] = mapping
    return maps


def position_map(old: UnitGraph, new: UnitGraph, module: str, maps: dict[str, torch.Tensor],
                 old_size: int, new_size: int, role: str) -> torch.Tensor:
    """The new position of each of ``module``'s ``old_size`` output (``role="outs"``) or input
    (``"ins"``) positions: a unit's positions go, in order, to its new positions; positions of
    no unit (raw inputs) keep their order among the positions of no unit."""
    position = torch.full((old_size,), -1, dtype=torch.long)
    taken = torch.zeros(new_size, dtype=torch.bool)
    slots = old.out_slots(module) if role == "outs" else old.in_slots(module)
    for group, slot in slots:
        new_slot = next(s for s in getattr(new[group.key], role) if s.module == module)
        taken[new_slot.index] = True
        old_unit_of = torch.full((new[group.key].size,), -1, dtype=torch.long)
        old_unit_of[maps[group.key]] = torch.arange(group.size)
        kept = old_unit_of[new_slot.units] >= 0
        before = _by_unit(slot.units, slot.index)
        after = _by_unit(old_unit_of[new_slot.units[kept]], new_slot.index[kept])
        if not torch.equal(before[0], after[0]):
            raise GraphError(f"after widening, module '{module}' holds the units of group '{group.key}' in a "
                             "different number of positions")
        position[before[1]] = after[1]
    rest, free = (position < 0).nonzero().flatten(), (~taken).nonzero().flatten()
    if len(rest) != len(free):
        raise GraphError(f"after widening, module '{module}' has {len(free)} positions of no unit, expected "
                         f"{len(rest)}")
    position[rest] = free
    return position


def _by_unit(units: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(units, index)`` sorted by unit, then by position."""
    order = (units * (int(index.max()) + 1 if len(index) else 1) + index).argsort()
    return units[order], index[order]
