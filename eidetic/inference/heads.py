"""Task outputs on top of the shared features: one head per task, or one shared head.

* **Multi-head** (default): ``heads[k]`` is a Linear layer for task ``k`` only, trained with it
  and frozen whole when it ends. Its columns reading units that are not the task's own or
  earlier are cut to zero.
* **Single-head** (CLNP, Fig. 2 right): one Linear layer shared by all tasks. Task ``k`` reads
  it through a mask of the feature units owned by tasks ``<= k``; the columns of a task's
  units are trained with that task and frozen after it, and the bias is frozen after the first
  task, so every finished task's output stays fixed while later tasks train their own columns.
  All tasks must have the same number of classes.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import TaskError

HeadSlice = tuple[str, str, torch.Tensor, int, torch.Tensor]  # module, tensor name, tensor, dim, index


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
        """Add a task's output, on the device and dtype of ``like``; return the layer to train."""
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
        if not self.shared:
            return self[task](features)
        mask = getattr(self, f"mask_{task}", None)
        return self[0](features if mask is None else features * mask)

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
