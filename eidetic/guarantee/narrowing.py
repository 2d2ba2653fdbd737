"""Narrowing: giving back some of the units that a widening of the open task added.

Learnable growth widens a group by a pool of candidate units, trains them behind a gate, and
keeps only the candidates whose gate stayed open. Keeping them is done with the base's own
widening, so that nothing new has to be trusted: the candidate widening is undone, the network
is widened again by exactly the number of kept candidates, and every tensor of the narrow
network is then filled from the wide one along the units it keeps (:func:`narrow_maps`, then
:func:`~eidetic.guarantee.resizing.position_map` and the layers' own layouts). The narrow
network holds, entry for entry, the wide network's values on the units it kept: a finished task
reads none of the dropped units (their columns in its rows are zero), and the open task read
them through a gate of exactly 0.
"""

from __future__ import annotations

import torch

from ..errors import TaskError
from ..graph import UnitGraph


def shrunk(tensor: torch.Tensor, layout: list[tuple[int, torch.Tensor, int]]) -> torch.Tensor:
    """The inverse of :func:`~eidetic.graph.layers.grown`: the entries of ``tensor`` at the
    positions ``layout`` gives, along each of its dims (dims of size 1 are broadcast, and kept)."""
    for dim, index, size in layout:
        if tensor.shape[dim] == 1:
            continue
        if tensor.shape[dim] != size:
            raise TaskError(f"cannot narrow a tensor of shape {tuple(tensor.shape)}: dim {dim} has "
                            f"{tensor.shape[dim]} entries, the wide layout {size}")
        tensor = tensor.index_select(dim, index.to(tensor.device))
    return tensor


def new_units(size: int, old_to_new: torch.Tensor) -> torch.Tensor:
    """Which of a widened group's ``size`` units are new, given where its old units went."""
    new = torch.ones(size, dtype=torch.bool)
    new[old_to_new] = False
    return new


def narrow_maps(narrow: UnitGraph, wide: UnitGraph, to_wide: dict[str, torch.Tensor],
                to_narrow: dict[str, torch.Tensor], kept: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{group: wide unit number of every narrow unit}``.

    Args:
        narrow, wide: the unit tables of the narrow and the wide network.
        to_wide, to_narrow: per group, where the units before either widening went in the wide
            and in the narrow table (``to_narrow`` empty: the narrow table is the one before).
        kept: per group, a mask over the wide units: the new units to keep. The narrow table's
            new units take them in order.
    """
    maps = {}
    for group in narrow:
        size = wide[group.key].size
        before = to_wide[group.key]
        narrow_old = to_narrow.get(group.key, torch.arange(len(before)))
        mapping = torch.full((group.size,), -1, dtype=torch.long)
        mapping[narrow_old] = before
        chosen = kept.get(group.key, torch.zeros(size, dtype=torch.bool)) & new_units(size, before)
        fresh = new_units(group.size, narrow_old).nonzero().flatten()
        if len(fresh) != int(chosen.sum()):
            raise TaskError(f"group '{group.key}': the narrow network has {len(fresh)} new units for "
                            f"{int(chosen.sum())} kept ones")
        mapping[fresh] = chosen.nonzero().flatten()
        maps[group.key] = mapping
    return maps
