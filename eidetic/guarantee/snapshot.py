"""Cheap copies of everything training can change, for rollback.

Frozen slices never change (the guard holds their values), so a snapshot copies only the
free part of each tensor: the free rows of a layer whose other rows are frozen, whole
tensors elsewhere. Capturing again reuses the same buffers, so the pruning loop takes one
snapshot per step without allocating or deep-copying the model.
"""

from __future__ import annotations

import torch
from torch import nn

from .guard import Guard
from .ownership import Ownership


class Snapshot:
    """A copy of the non-frozen state of ``net`` and of its ownership marks.

    Args:
        net: the module whose parameters and buffers are copied.
        guard: tells which slices are frozen (they are skipped).
        ownership: owners and pruning marks, copied too.
    """

    def __init__(self, net: nn.Module, guard: Guard, ownership: Ownership) -> None:
        self.net, self.guard, self.ownership = net, guard, ownership
        frozen = {f"{f.module}.{f.name}": f for f in guard.frozen}
        self._entries: list[tuple[torch.Tensor, int, torch.Tensor | None, torch.Tensor]] = []
        for name, tensor in [*net.named_parameters(), *net.named_buffers()]:
            f = frozen.get(name)
            if f is None:
                self._entries.append((tensor, 0, None, torch.empty_like(tensor)))
                continue
            keep = torch.ones(tensor.shape[f.dim], dtype=torch.bool, device=tensor.device)
            keep[f.index] = False
            index = keep.nonzero().flatten()
            if index.numel():
                buffer = tensor.detach().index_select(f.dim, index)
                self._entries.append((tensor, f.dim, index, buffer))
        self.capture()

    @torch.no_grad()
    def capture(self) -> None:
        """Copy the current state into the snapshot's buffers."""
        for tensor, dim, index, buffer in self._entries:
            if index is None:
                buffer.copy_(tensor)
            else:
                torch.index_select(tensor, dim, index, out=buffer)
        self._marks = self.ownership.clone()

    @torch.no_grad()
    def restore(self) -> None:
        """Put the captured state back (frozen slices are rewritten from the guard)."""
        for tensor, dim, index, buffer in self._entries:
            if index is None:
                tensor.data.copy_(buffer)
            else:
                tensor.data.index_copy_(dim, index, buffer)
        self.ownership.restore(self._marks)
        self.guard.update_pruned()
        self.guard.restore()
