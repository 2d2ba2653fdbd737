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
