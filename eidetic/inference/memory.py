"""A small exemplar memory: a few inputs of every task, for fitting the learned router.

``train_task(..., memory=k)`` keeps ``k`` inputs of the task, drawn uniformly from its training
data by reservoir sampling (one pass, whatever the data's order), on the CPU, in the network's
``state_dict``. Floating-point inputs are stored at one byte per value (:class:`Exemplars`): the
router is fitted on them, and four times as many fit in the bytes of float32 inputs. Only the
router is fitted on them: no task is ever retrained.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class Exemplars:
    """One task's exemplars. Floating-point inputs are kept as ``uint8`` codes on an even grid
    from their minimum to their maximum (``low + code * step``, within ``step / 2`` of the
    input); other inputs (token ids) as they are.

    Example::

        kept = Exemplars.compress(images)      # (k, 1, 28, 28) float32 -> uint8 codes
        kept.nbytes, kept.inputs(torch.float32).shape
    """

    values: torch.Tensor
    low: float = 0.0
    step: float | None = None  # None: ``values`` are the inputs themselves

    @classmethod
    def compress(cls, inputs: torch.Tensor) -> Exemplars:
        if not inputs.is_floating_point() or not len(inputs):
            return cls(inputs)
        low, high = float(inputs.min()), float(inputs.max())
        step = (high - low) / 255 or 1.0
        codes = ((inputs.double() - low) / step).round().clamp(0, 255).to(torch.uint8)
        return cls(codes, low, step)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def nbytes(self) -> int:
        """Bytes of stored values."""
        return self.values.numel() * self.values.element_size()

    def inputs(self, dtype: torch.dtype) -> torch.Tensor:
        """The exemplars as inputs of ``dtype`` (decoded, for floating-point ones)."""
        if self.step is None:
            return self.values
        return (self.low + self.values.double() * self.step).to(dtype)

    def state(self) -> dict:
        return {"values": self.values, "low": self.low, "step": self.step}

    @classmethod
    def from_state(cls, state: dict | torch.Tensor) -> Exemplars:
        if isinstance(state, torch.Tensor):  # checkpoints before compression kept the inputs
            return cls(state)
        return cls(state["values"], state["low"], state["step"])


class ExemplarMemory:
    """Per-task exemplars (one :class:`Exemplars` per task, possibly empty)."""

    def __init__(self, tasks: list[Exemplars] | None = None) -> None:
        self.tasks: list[Exemplars] = list(tasks or [])

    def __len__(self) -> int:
        return len(self.tasks)

    def add(self, inputs: torch.Tensor) -> None:
        self.tasks.append(Exemplars.compress(inputs))

    def truncate(self, tasks: int) -> None:
        del self.tasks[tasks:]

    def complete(self, tasks: int) -> bool:
        """Whether each of the first ``tasks`` tasks has at least one exemplar."""
        return tasks > 0 and len(self.tasks) >= tasks and all(len(x) for x in self.tasks[:tasks])

    def bytes_per_task(self) -> list[int]:
        """Bytes each task's exemplars take."""
        return [x.nbytes for x in self.tasks]

    def state(self) -> list[dict]:
        return [x.state() for x in self.tasks]

    @classmethod
    def from_state(cls, state: list) -> ExemplarMemory:
        return cls([Exemplars.from_state(s) for s in state])
