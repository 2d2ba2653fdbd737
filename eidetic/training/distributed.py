"""Data-parallel training with ``torch.distributed``: every rank takes the same decisions.

When the user has initialised a process group (``torchrun``, ``torch.distributed.init_process_group``
with NCCL on GPUs or gloo on CPUs) and every rank calls ``train_task`` with its shard of the data,
eidetic keeps all ranks' networks bitwise identical:

* the gradients of every step are averaged over the ranks (``all_reduce``) before the guard and
  the optimizer see them, so every rank takes the same step;
* metrics (training epochs, the monitored metric, validation) are sums over all ranks' data, and
  data-driven importance scores are averaged, so that pruning, early stopping and growth decide
  the same everywhere;
* whatever is drawn at random (a new head, recycled and grown units) and the BatchNorm running
  statistics of the units in training are broadcast from rank 0 at the points where ranks could
  differ, and so are the routers' records;
* progress bars and eidetic's log records come from rank 0 only.

Without a process group (or with one process) every function here does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn


def active() -> bool:
    """Whether a process group of more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


class RankZero(logging.Filter):
    """Keeps eidetic's log records on rank 0 only (installed on the ``eidetic`` logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return rank() == 0


logging.getLogger("eidetic").addFilter(RankZero())


def average_gradients(tensors: Iterable[torch.Tensor]) -> None:
    """Replace each tensor's gradient by its mean over the ranks (one ``all_reduce`` per device
    and dtype, on the gradients laid end to end, as DDP's buckets do)."""
    if not active():
        return
    groups: dict[tuple, list[torch.Tensor]] = {}
    for tensor in tensors:
        if tensor.grad is not None:
            groups.setdefault((tensor.grad.device, tensor.grad.dtype), []).append(tensor.grad)
    size = dist.get_world_size()
    for grads in groups.values():
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat.div_(size)
        for grad, part in zip(grads, flat.split([g.numel() for g in grads])):
            grad.copy_(part.view_as(grad))


def total(value: torch.Tensor) -> torch.Tensor:
    """The sum of ``value`` over the ranks (``value`` itself without a process group)."""
    if active():
        value = value.clone()
        dist.all_reduce(value)
    return value


def average(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tensor's mean over the ranks (importance scores)."""
    if not active():
        return tensors
    return {key: total(t.float()) / dist.get_world_size() for key, t in tensors.items()}


@torch.no_grad()
def broadcast_module(module: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers."""
    if not active():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


@torch.no_grad()
def broadcast_buffers(modules: Iterable[nn.Module]) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics)."""
    if not active():
        return
    for module in modules:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def broadcast_object(value):
    """Rank 0's ``value`` on every rank (nested dicts, lists and tuples of tensors and plain
    values: the routers' records), its tensors on the CPU."""
    if not active():
        return value
    box = [_on_cpu(value)]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _on_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v) for v in value)
    return value
