"""The task-boundary phases: freezing the units a task kept, and recycling the rest.

* :func:`freeze` gives every alive unit to the task (persistence is then enforced by the
  guard) and *cuts* every weight entry of those units that reads a free unit, so that units
  trained later can never feed them (resistance). The task's head is frozen the same way.
* :func:`recycle` re-initialises every free unit (pruned or never used) with the layer's own
  initialisation, ready for the next task. Frozen rows are not touched, so the cut entries
  stay zero.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ..graph import Layers, UnitGraph
from .ownership import Ownership
from .slices import head_columns, in_mask, out_mask, out_positions

log = logging.getLogger("eidetic")



@torch.no_grad()
def cut(layers: Layers, graph: UnitGraph, ownership: Ownership, rows: dict[str, torch.Tensor],
        head: nn.Linear | None) -> None:
    """Zero, in the rows of the units selected by ``rows``, every entry reading a free unit."""
    free = ownership.masks("free")
    for name, (module, spec) in layers.items():
        selected = out_mask(graph, name, rows, spec.unit_count(module))
        columns = in_mask(graph, name, free, spec.input_size(module))
        if selected.any() and columns.any():
            for tensor_name, mask in spec.consumer_entries(module, selected, columns):
                getattr(module, tensor_name).masked_fill_(mask, 0)
    if head is not None:
        head.weight[:, head_columns(graph, free).to(head.weight.device)] = 0


def freeze(layers: Layers, graph: UnitGraph, ownership: Ownership, task: int, head: nn.Linear) -> dict[str, int]:
    """Give the alive units to ``task`` and cut their synapses from free units.

    Returns the number of units ``task`` received in each group.
    """
    new = ownership.assign(task)
    cut(layers, graph, ownership, new, head)
    return {key: int(mask.sum()) for key, mask in new.items()}


def _fresh(module: nn.Module) -> nn.Module | None:
    if not hasattr(module, "reset_parameters"):
        return None
    fresh = copy.deepcopy(module)
    fresh.reset_parameters()
    return fresh


@torch.no_grad()
def reinitialize(layers: Layers, graph: UnitGraph, masks: dict[str, torch.Tensor]) -> None:
    """Give the units selected by ``masks`` their layer's own fresh initialisation (every
    producer slice: weight rows, biases, BatchNorm affine and statistics)."""
    for name, (module, spec) in layers.items():
        index = out_positions(graph, name, masks)
        if index.numel() == 0:
            continue
        fresh = _fresh(module)
        if fresh is None:
            log.warning("layer '%s' has no reset_parameters(); its free units keep their values", name)
            continue
        for tensor_name, dim, idx, _ in spec.producer_slices(module, index):
            target, source = getattr(module, tensor_name), getattr(fresh, tensor_name)
            idx = idx.to(target.device)
            target.data.index_copy_(dim, idx, source.index_select(dim, idx))


def recycle(layers: Layers, graph: UnitGraph, ownership: Ownership) -> int:
    """Re-initialise every free unit and clear the pruning marks; return the units recycled."""
    free = ownership.masks("free")
    reinitialize(layers, graph, free)
    ownership.release_pruned()
    return sum(int(m.sum()) for m in free.values())
