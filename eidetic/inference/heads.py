"""Task outputs on top of the shared features: one head per task, or one shared head.

* **Multi-head** (default): ``heads[k]`` is a Linear layer for task ``k`` only, trained with it
  and frozen whole when it ends. Its columns reading units that are not the task's own or
  earlier are cut to zero.
* **Single-head** (CLNP, Fig. 2 right): one Linear layer shared by all tasks. Task ``k`` reads
  it through a mask of the feature units owned by tasks ``<= k``; the columns of a task's
  units are trained with that task and frozen after it, and the bias is frozen after the first
  task, so every finished task's output stays fixed while later tasks train their own columns.
  All tasks must have the same number of classes.

After :meth:`~eidetic.ContinualNetwork.widen` adds features, a finished task's head keeps the
width it was trained at and reads its old features by position (``inputs_k``): the same
product on the same shapes, hence the same bits (see ``eidetic/guarantee/eras.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TaskError
from ..graph.layers import grown, replace_grown
from ..guarantee.eras import aligned
from ..guarantee.guard import HeadSlice


class TaskHeads(nn.ModuleList):
    """The outputs of a ContinualNetwork (``net.heads``).

    Args:
        shared: one head shared by all tasks (single-head) instead of one per task.
    """

    def __init__(self, shared: bool = False) -> None:
        super().__init__()
        self.shared = shared
        self.classes: list[int] = []

    @property
    def num_tasks(self) -> int:
        """Tasks with an output (finished, plus the open one if any)."""
        return len(self.classes)

    def head(self, task: int) -> nn.Linear:
        """The Linear layer task ``task`` reads."""
        return self[0] if self.shared else self[task]

    def add(self, feature_dim: int, num_classes: int, like: torch.Tensor) -> nn.Linear:
        """Add a task's output, on the device and dtype of ``like``; return the layer to train.
        ``feature_dim`` is the width of the task's head (for the first head of a single-head
        network, of the shared head)."""
        if self.shared and self.classes:
            if num_classes != self.classes[0]:
                raise TaskError(f"a single-head network has {self.classes[0]} classes for every task; got "
                                f"num_classes={num_classes}")
        else:
            self.append(nn.Linear(feature_dim, num_classes).to(device=like.device, dtype=like.dtype))
        self.classes.append(num_classes)
        return self.head(len(self.classes) - 1)

    def output(self, features: torch.Tensor, task: int) -> torch.Tensor:
        """Task ``task``'s logits from the body's flattened features."""
        inputs = self._buffers.get(f"inputs_{task}")
        # A finished task from before a widening reads its own width; either way the features are
        # laid out in memory as after a widening (see eidetic/guarantee/eras.py).
        features = aligned(features) if inputs is None else features.index_select(1, inputs)
        if not self.shared:
            return self[task](features)
        mask = self._buffers.get(f"mask_{task}")
        if mask is not None:
            features = features * (mask if inputs is None else mask.index_select(0, inputs))
        if inputs is None:
            return self[0](features)
        return F.linear(features, self[0].weight.index_select(1, inputs), self[0].bias)

    def widen(self, positions: torch.Tensor, size: int, frozen_tasks: int) -> None:
        """The features grew to ``size``; old feature ``i`` is now at ``positions[i]``. Finished
        tasks read their old positions; the open head and the shared head get zero columns."""
        positions = positions.to(self[0].weight.device) if len(self) else positions
        for task in range(frozen_tasks):
            inputs = getattr(self, f"inputs_{task}", None)
            width = self.head(task).in_features if inputs is None else len(inputs)
            old = torch.arange(width, device=positions.device) if inputs is None else inputs
            self.register_buffer(f"inputs_{task}", positions[old], persistent=False)
        for task in range(frozen_tasks, self.num_tasks):  # the open task
            if not self.shared:
                self._grow(self[task], positions, size)
        if self.shared and len(self):
            self._grow(self[0], positions, size)
            for task in range(frozen_tasks):
                mask = getattr(self, f"mask_{task}")
                self.register_buffer(f"mask_{task}", grown(mask, [(0, positions, size)]))

    @staticmethod
    def _grow(head: nn.Linear, positions: torch.Tensor, size: int) -> None:
        replace_grown(head, "weight", [(1, positions, size)])
        head.in_features = size

    def reads(self, task: int, feature_dim: int) -> torch.Tensor:
        """Which feature positions task ``task``'s head reads through a non-zero weight."""
        nonzero = (self.head(task).weight != 0).any(dim=0).cpu()
        inputs = getattr(self, f"inputs_{task}", None)
        if inputs is None:
            return nonzero
        read = torch.zeros(feature_dim, dtype=torch.bool)
        read[inputs.cpu()] = nonzero if not self.shared else nonzero[inputs.cpu()]
        return read

    def input_state(self) -> dict[int, torch.Tensor]:
        """``{task: feature positions}`` of the tasks that read features by position."""
        return {k: getattr(self, f"inputs_{k}").cpu() for k in range(self.num_tasks)
                if getattr(self, f"inputs_{k}", None) is not None}

    def width(self, task: int, feature_dim: int, inputs: dict[int, torch.Tensor]) -> int:
        """The width of task ``task``'s own head, given the checkpoint's ``inputs``."""
        return feature_dim if self.shared or task not in inputs else len(inputs[task])

    def freeze(self, task: int, features: torch.Tensor) -> None:
        """End task ``task``: ``features`` marks the feature units it may read (owned by tasks up
        to it). A separate head is frozen whole; the shared head remembers the mask."""
        if self.shared:
            self.register_buffer(f"mask_{task}", features.to(self[0].weight))
        else:
            for p in self[task].parameters():
                p.requires_grad_(False)

    def drop_last(self) -> None:
        """Remove the most recent task's output (used when a task is rolled back)."""
        task = len(self.classes) - 1
        self.classes.pop()
        self._buffers.pop(f"mask_{task}", None)
        self._buffers.pop(f"inputs_{task}", None)
        if not self.shared or not self.classes:
            del self[len(self) - 1]

    def frozen_modules(self, frozen_tasks: int) -> list[nn.Module]:
        """Heads frozen whole (left out of the optimizer)."""
        return [] if self.shared else list(self)[:frozen_tasks]

    def frozen_slices(self, frozen_tasks: int, frozen_features: torch.Tensor) -> list[HeadSlice]:
        """What the guard must hold constant: whole heads of finished tasks, or, for the shared
        head, the columns of frozen feature units and (after the first task) the bias."""
        if not self.shared:
            return [(f"heads.{k}", name, t, 0, torch.arange(t.shape[0], device=t.device))
                    for k in range(frozen_tasks) for name, t in self[k].named_parameters()]
        if frozen_tasks == 0:
            return []
        head = self[0]
        columns = frozen_features.nonzero().flatten().to(head.weight.device)
        rows = torch.arange(head.out_features, device=head.weight.device)
        return [("heads.0", "weight", head.weight, 1, columns), ("heads.0", "bias", head.bias, 0, rows)]
