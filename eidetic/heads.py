"""Per-task output heads: one Linear layer per task on top of the shared features."""

from __future__ import annotations

import torch
from torch import nn


class TaskHeads(nn.ModuleList):
    """The heads of a ContinualNetwork; ``heads[k]`` maps features to task ``k``'s classes.

    Head ``k`` is trained with task ``k`` only and frozen (``requires_grad=False``, and held
    constant by the guard) when the task ends.
    """

    def add(self, feature_dim: int, num_classes: int, like: torch.Tensor) -> nn.Linear:
        """Append a head for a new task, on the device and dtype of ``like``."""
        head = nn.Linear(feature_dim, num_classes).to(device=like.device, dtype=like.dtype)
        self.append(head)
        return head

    def freeze(self, task: int) -> None:
        """Stop training head ``task``."""
        for p in self[task].parameters():
            p.requires_grad_(False)

    def drop_last(self) -> None:
        """Remove the most recent head (used when a task is rolled back)."""
        del self[len(self) - 1]
