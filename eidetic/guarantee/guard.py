"""Enforcing the guarantee during training, whatever the optimizer does.

Zeroing the gradients of frozen weights is not enough: momentum, Adam state carried over from
an earlier task and weight decay (L2 or decoupled) all move a weight whose gradient is zero.
The :class:`Guard` therefore keeps a copy of every frozen slice, taken when its unit was frozen,
and writes it back after every optimizer step (persistence). Pruned units of the task in
training are written to zero after every step, together with every weight entry that reads
them, so that a pruned unit contributes exactly nothing. When gradients are clipped, the
gradients of frozen and pruned entries are zeroed first, so that the norm counts only the
weights being trained; otherwise they are left alone, since whatever the optimizer does with
them is undone.

The copies cost memory proportional to the frozen slices, and the per-step work is one indexed
copy per frozen tensor that the optimizer holds: no per-step synchronisation with the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..graph import Layers, UnitGraph
from .ownership import Ownership
from .slices import head_columns, in_mask, out_positions

HeadSlice = tuple[str, str, torch.Tensor, int, torch.Tensor]  # a head's frozen slice: module, tensor, value, dim, index


@dataclass
class FrozenSlice:
    """The frozen positions of one tensor along its unit dimension, and their values."""

    module: str
    name: str
    tensor: torch.Tensor
    dim: int
    index: torch.Tensor
    values: torch.Tensor
    released: torch.Tensor | None = None  # entries (of the slice) the open task may train

    def restore(self) -> None:
        if self.released is not None:  # released entries keep what the optimizer made of them
            self.values = torch.where(self.released, self.tensor.detach().index_select(self.dim, self.index),
                                      self.values)
        # ``.data``: restoring a BatchNorm statistic right after a training forward must not bump
        # the version that autograd saved (the backward pass does not read these values).
        self.tensor.data.index_copy_(self.dim, self.index, self.values)


@dataclass
class _Rows:
    param: nn.Parameter
    dim: int
    index: torch.Tensor


@dataclass
class _Entries:
    param: nn.Parameter
    mask: torch.Tensor


class Guard:
    """Frozen copies and pruning masks of one network, compiled from its ownership.

    Args:
        layers: ``{name: (module, spec)}`` of the body.
        graph: the unit table.
        ownership: owners and pruning marks.
        head_slices: what of the task heads is frozen (see :meth:`TaskHeads.frozen_slices`).
        head: the head the task in training trains, or ``None``.
        released: ``{"module.tensor": mask}`` of frozen entries the task in training may train
            (see :mod:`eidetic.guarantee.masks`).
    """

    def __init__(self, layers: Layers, graph: UnitGraph, ownership: Ownership,
                 head_slices: list[HeadSlice], head: nn.Module | None = None,
                 released: dict[str, torch.Tensor] | None = None) -> None:
        self.layers, self.graph, self.ownership, self.head = layers, graph, ownership, head
        self.frozen = self._capture(head_slices)
        for f in self.frozen:
            mask = (released or {}).get(f"{f.module}.{f.name}")
            if mask is not None:
                f.released = mask.to(f.values.device).index_select(f.dim, f.index)
        self._by_tensor = {(f.module, f.name): f for f in self.frozen}
        self._stepped = [f for f in self.frozen if isinstance(f.tensor, nn.Parameter)]
        self.pruned_rows: list[_Rows] = []
        self.pruned_entries: list[_Entries] = []
        self.update_pruned()

    def _capture(self, head_slices: list[HeadSlice]) -> list[FrozenSlice]:
        frozen = self.ownership.masks("frozen")
        slices = []
        for name, (module, spec) in self.layers.items():
            index = out_positions(self.graph, name, frozen)
            if index.numel() == 0:
                continue
            for tensor_name, dim, idx, _ in spec.producer_slices(module, index):
                tensor = getattr(module, tensor_name)
                idx = idx.to(tensor.device)
                slices.append(FrozenSlice(name, tensor_name, tensor, dim, idx, tensor.detach().index_select(dim, idx)))
        for module, tensor_name, tensor, dim, idx in head_slices:
            slices.append(FrozenSlice(module, tensor_name, tensor, dim, idx, tensor.detach().index_select(dim, idx)))
        return slices

    def watch(self, optimizer: torch.optim.Optimizer) -> None:
        """Restore after each step only the frozen parameters that ``optimizer`` can move.

        BatchNorm statistics are restored after every training forward pass (:mod:`eidetic.guarantee.norm`).
        """
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self._stepped = [f for f in self.frozen if id(f.tensor) in held]

    def frozen_slice(self, module: str, name: str) -> FrozenSlice | None:
        """The frozen slice of ``module.name``, or ``None`` if nothing of it is frozen."""
        return self._by_tensor.get((module, name))

    def update_pruned(self) -> None:
        """Recompile the pruning masks after the ownership's ``pruned`` marks changed."""
        pruned = self.ownership.masks("pruned")
        self.pruned_rows, self.pruned_entries = [], []
        if not any(m.any() for m in pruned.values()):
            return
        for name, (module, spec) in self.layers.items():
            index = out_positions(self.graph, name, pruned)
            if index.numel():
                for tensor_name, dim, idx, _ in spec.producer_slices(module, index):
                    tensor = getattr(module, tensor_name)
                    if isinstance(tensor, nn.Parameter):
                        self.pruned_rows.append(_Rows(tensor, dim, idx.to(tensor.device)))
            columns = in_mask(self.graph, name, pruned, spec.input_size(module))
            if columns.any():
                for tensor_name, mask in spec.consumer_entries(module, None, columns):
                    self.pruned_entries.append(_Entries(getattr(module, tensor_name), mask))
        if self.head is not None:
            columns = head_columns(self.graph, pruned)
            if columns.any():
                self.pruned_entries.append(_Entries(self.head.weight, columns[None, :].to(self.head.weight.device)))

    @torch.no_grad()
    def zero_grads(self) -> None:
        """Zero the gradients of frozen and pruned entries (before clipping gradients)."""
        for f in self.frozen:
            if isinstance(f.tensor, nn.Parameter) and f.tensor.grad is not None:
                if f.released is None:
                    f.tensor.grad.index_fill_(f.dim, f.index, 0)
                else:
                    kept = f.tensor.grad.index_select(f.dim, f.index) * f.released
                    f.tensor.grad.index_copy_(f.dim, f.index, kept)
        for r in self.pruned_rows:
            if r.param.grad is not None:
                r.param.grad.index_fill_(r.dim, r.index, 0)
        for e in self.pruned_entries:
            if e.param.grad is not None:
                e.param.grad.masked_fill_(e.mask, 0)

    @torch.no_grad()
    def enforce(self) -> None:
        """After ``optimizer.step()``: write back the frozen slices the optimizer holds, zero the
        pruned ones."""
        for f in self._stepped:
            f.restore()
        self._zero_pruned()

    @torch.no_grad()
    def restore(self) -> None:
        """Write back every frozen slice (statistics included) and zero the pruned ones."""
        for f in self.frozen:
            f.restore()
        self._zero_pruned()

    def _zero_pruned(self) -> None:
        for r in self.pruned_rows:
            r.param.index_fill_(r.dim, r.index, 0)
        for e in self.pruned_entries:
            e.param.masked_fill_(e.mask, 0)
