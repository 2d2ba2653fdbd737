"""From unit masks to tensor positions: where selected units sit in each layer's tensors.

A *unit mask* is ``{group key: bool tensor over the group's units}`` (for example the frozen
units, or the pruned ones). These helpers turn such masks into unit positions of a layer and into
masks over a layer's input positions; the layer's ``LayerSpec`` maps those onto its tensors.
"""

from __future__ import annotations

import torch

from ..graph import FEATURES, UnitGraph

UnitMasks = dict[str, torch.Tensor]


def out_positions(graph: UnitGraph, module: str, masks: UnitMasks) -> torch.Tensor:
    """Sorted output positions of ``module`` whose unit is selected by ``masks``."""
    parts = [slot.positions_of(masks[g.key]) for g, slot in graph.out_slots(module)]
    if not parts:
        return torch.empty(0, dtype=torch.long)
    return torch.cat(parts).unique()


def out_mask(graph: UnitGraph, module: str, masks: UnitMasks, size: int) -> torch.Tensor:
    """Boolean mask over the ``size`` output positions of ``module``."""
    mask = torch.zeros(size, dtype=torch.bool)
    mask[out_positions(graph, module, masks)] = True
    return mask


def in_mask(graph: UnitGraph, module: str, masks: UnitMasks, size: int) -> torch.Tensor:
    """Boolean mask over the ``size`` input positions of ``module`` that read selected units.

    Use ``module=FEATURES`` for the features that the task heads read.
    """
    mask = torch.zeros(size, dtype=torch.bool)
    for g, slot in graph.in_slots(module):
        mask[slot.positions_of(masks[g.key])] = True
    return mask


def head_columns(graph: UnitGraph, masks: UnitMasks) -> torch.Tensor:
    """Mask over feature positions read from selected units (columns of a task head)."""
    return in_mask(graph, FEATURES, masks, graph.feature_dim)


def row_owners(graph: UnitGraph, owners: UnitMasks, module_name: str, module, spec, tensor_name: str) -> torch.Tensor:
    """The owner of the unit that each entry of ``module.tensor_name`` belongs to (``owners``:
    ``{group: owner per unit}``), as a tensor of the tensor's shape."""
    tensor = getattr(module, tensor_name)
    count = spec.unit_count(module)
    per_position = torch.full((count,), -1, dtype=next(iter(owners.values())).dtype)
    for group, slot in graph.out_slots(module_name):
        per_position[slot.index] = owners[group.key][slot.units]
    result = torch.full(tuple(tensor.shape), -1, dtype=per_position.dtype)
    for name, dim, index, owner in spec.producer_slices(module, torch.arange(count)):
        if name == tensor_name:
            shape = [1] * tensor.dim()
            shape[dim] = len(index)
            values = per_position[owner].view(shape).expand(*[len(index) if d == dim else s
                                                              for d, s in enumerate(tensor.shape)])
            result.index_copy_(dim, index, values.contiguous())
    return result
