"""From unit masks to tensor positions: where selected units sit in each layer's tensors.

A *unit mask* is ``{group key: bool tensor over the group's units}`` (for example the frozen
units, or the pruned ones). These helpers turn such masks into positions along a layer's output
dimension, into masks over a layer's input positions, and into element masks over the weight
entries that read them.
"""

from __future__ import annotations

import torch

from .graph import FEATURES, LayerSpec, UnitGraph, input_positions
from .graph.layers import broadcast_rows_cols

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


def weight_entries(module: torch.nn.Module, spec: LayerSpec, rows: torch.Tensor | None,
                   columns: torch.Tensor) -> torch.Tensor:
    """Element mask (broadcastable to ``spec.in_tensor``) of entries in ``rows`` x ``columns``.

    ``columns`` is a mask over input positions; ``rows`` a mask over output rows, or ``None``
    for every row. Grouped layers are handled through :func:`input_positions`.
    """
    positions = input_positions(module, spec)
    mask2d = columns[positions]
    if rows is not None:
        mask2d = mask2d & rows[:, None]
    weight = getattr(module, spec.in_tensor)
    return broadcast_rows_cols(mask2d, weight, spec).to(weight.device)


def head_columns(graph: UnitGraph, masks: UnitMasks) -> torch.Tensor:
    """Mask over feature positions read from selected units (columns of a task head)."""
    return in_mask(graph, FEATURES, masks, graph.feature_dim)
