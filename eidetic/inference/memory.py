"""A small exemplar memory: a few inputs of every task, for fitting the learned router.

``train_task(..., memory=k)`` keeps ``k`` inputs of the task, drawn uniformly from its training
data by reservoir sampling (one pass, whatever the data's order), on the CPU. They are stored
in the network's ``state_dict``. Only the router is fitted on them: no task is ever retrained.
"""

from __future__ import annotations

import torch


class Reservoir:
    """Uniform sample of ``size`` items from a stream of batches (Algorithm R, batched)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: torch.Tensor | None = None
        self.seen = 0

    def add(self, batch: torch.Tensor) -> None:
        batch = batch.detach().cpu()
        if self.items is None:
            self.items = batch.new_empty((0, *batch.shape[1:]))
        room = max(0, self.size - len(self.items))
        if room:
            self.items = torch.cat([self.items, batch[:room]])
        rest = batch[room:]
        if len(rest):
            positions = self.seen + room + torch.arange(len(rest))
            slots = (torch.rand(len(rest)) * (positions + 1)).long()
            for i in (slots < self.size).nonzero().flatten().tolist():
                self.items[slots[i]] = rest[i]
        self.seen += len(batch)

    def sample(self) -> torch.Tensor:
        if self.items is None:
            raise ValueError("the reservoir saw no items")
        return self.items


class ExemplarMemory:
    """Per-task exemplar inputs (a list of tensors, one per task, possibly empty)."""

    def __init__(self, inputs: list[torch.Tensor] | None = None) -> None:
        self.inputs: list[torch.Tensor] = list(inputs or [])

    def __len__(self) -> int:
        return len(self.inputs)

    def add(self, inputs: torch.Tensor) -> None:
        self.inputs.append(inputs)

    def truncate(self, tasks: int) -> None:
        del self.inputs[tasks:]

    def complete(self) -> bool:
        """Whether every task has at least one exemplar."""
        return bool(self.inputs) and all(len(x) for x in self.inputs)
