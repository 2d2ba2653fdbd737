"""The argument checks that the mixins' ``train_task`` share (goals, settings objects, what
growth and learnable masks cannot work with)."""

from __future__ import annotations

import torch

from ..errors import TaskError


def check_goal(goal) -> None:
    """Refuse a goal that is not a number in [0, 1] or ``None``."""
    if goal is not None and (isinstance(goal, bool) or not isinstance(goal, (int, float)) or not 0.0 <= goal <= 1.0):
        raise TaskError(f"goal={goal!r}: the accuracy goal is a number in [0, 1], or None")


def check_setting(name: str, value, kind: type) -> None:
    """Refuse ``value`` unless it is a ``kind`` (``eidetic.<kind>``) or ``None``."""
    if value is not None and not isinstance(value, kind):
        raise TaskError(f"{name} must be an eidetic.{kind.__name__} or None, got {type(value).__name__}")


def refuse_optimizer_instance(kwargs: dict, what: str, instead: str) -> None:
    """Growth replaces parameters: refuse one optimizer instance, which holds the old ones."""
    if isinstance(kwargs.get("optimizer"), torch.optim.Optimizer):
        raise TaskError(f"{what} replaces the network's parameters by bigger ones, which an optimizer instance does "
                        "not hold: pass a factory (optimizer=lambda params: torch.optim.SGD(params, lr=1e-2)), or "
                        f"{instead}")


def refuse_fp16(kwargs: dict, what: str, instead: str) -> None:
    """A mask optimizer would step on fp16's scaled gradients: refuse ``precision="fp16"``."""
    if kwargs.get("precision") == "fp16":
        raise TaskError(f"{what} under precision='fp16' is not supported (the masks' optimizer would step on scaled "
                        f"gradients); use precision='bf16', or {instead}")
