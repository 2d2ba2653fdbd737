"""Hypothesis strategies for forgetting tests: optimizer set-ups, pruning configurations, task plans.

Compose them with your own architecture strategies::

    from hypothesis import given
    from eidetic.testing import assert_never_forgets, optimizers, runs

    @given(width=st.integers(4, 16), optimizer=optimizers(), plans=runs)
    def test_my_net_never_forgets(width, optimizer, plans):
        assert_never_forgets(lambda: MyNet(width), (3, 16, 16), tasks=plans, optimizers=optimizer)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st

from ..training.pruning import Pruning

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]

__all__ = [
    "OptimizerChoice",
    "TaskPlan",
    "optimizers",
    "prunings",
    "runs",
    "seeds",
    "task_plans",
]


@dataclass(frozen=True)
class OptimizerChoice:
    """An optimizer of ``torch.optim`` with its keyword arguments, and whether one instance is
    shared by every task (its state, momentum or Adam's moments, then carries across tasks).

    Args:
        name: the class name in ``torch.optim`` (``"SGD"``, ``"AdamW"``...).
        kwargs: keyword arguments as sorted ``(name, value)`` pairs (hashable, printable).
        shared: one instance for every task (``True``) or a new one per task.

    Example::

        choice = OptimizerChoice("SGD", (("lr", 0.1), ("momentum", 0.9)), shared=True)
        make = choice.factory()                # one factory per run: it holds the shared instance
        net.train_task(0, loader, num_classes=3, optimizer=make, epochs=1)
    """

    name: str
    kwargs: tuple[tuple[str, Any], ...]
    shared: bool

    def factory(self) -> OptimizerFactory:
        """A ``params -> Optimizer`` factory for ``train_task``; with ``shared``, it builds one
        instance on its first call and returns that one ever after."""
        cls = getattr(torch.optim, self.name)
        kwargs = dict(self.kwargs)
        held: list[torch.optim.Optimizer] = []

        def make(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
            if not self.shared:
                return cls(params, **kwargs)
            if not held:
                held.append(cls(params, **kwargs))
            return held[0]

        return make


@st.composite
def optimizers(draw: st.DrawFn, names: tuple[str, ...] = ("SGD", "Adam", "AdamW", "RMSprop"),
               shared: bool | None = None) -> OptimizerChoice:
    """Optimizer set-ups that move frozen weights unless the guard stops them: SGD with
    momentum (Nesterov or not), Adam, AdamW and RMSprop, with L2 or decoupled weight decay, one
    instance per task or one shared by all.

    Args:
        names: the optimizers to draw from.
        shared: only shared instances (``True``), only one per task (``False``), or both (``None``).

    Example::

        @given(optimizer=optimizers(shared=False))
        def test_it(optimizer):
            assert_never_forgets(MyNet, (10,), optimizers=optimizer)
    """
    lr = draw(st.sampled_from([0.01, 0.05, 0.2]))
    decay = draw(st.sampled_from([0.0, 1e-3, 0.1]))
    name = draw(st.sampled_from(names))
    if name == "SGD":
        momentum = draw(st.sampled_from([0.0, 0.9]))
        kwargs = {"lr": lr, "momentum": momentum, "nesterov": momentum > 0 and draw(st.booleans()),
                  "weight_decay": decay}
    elif name == "RMSprop":
        kwargs = {"lr": lr / 10, "momentum": draw(st.sampled_from([0.0, 0.5])), "weight_decay": decay}
    else:
        kwargs = {"lr": lr / 4, "weight_decay": decay}
    return OptimizerChoice(name, tuple(sorted(kwargs.items())), draw(st.booleans()) if shared is None else shared)


prunings: st.SearchStrategy[Pruning | None] = st.none() | st.builds(
    Pruning,
    method=st.sampled_from(["l1", "l2", "taylor", "random"]),
    step=st.sampled_from([None, 0.2, 0.34, 0.5]),
    tolerance=st.sampled_from([0.0, 0.05, 0.5]),
    recovery_epochs=st.integers(0, 1),
    patience=st.none() | st.integers(0, 1),
    max_steps=st.integers(1, 3),
    score_batches=st.integers(1, 2),
    tasks=st.none() | st.integers(4, 6),
    sample=st.sampled_from([None, 5, 16]),
    max_pruning_ratio=st.sampled_from([0.5, 0.9, 1.0]),
)
"""Pruning configurations: no pruning, or :class:`~eidetic.Pruning` with every importance method
(random included), a few step sizes (the adaptive one included), tolerances, recovery epochs,
retries, step bounds, task shares (``tasks`` at least the four tasks of the longest
:data:`runs`), metric samples (a part of a batch, whole batches, all the data) and pruning
ratios."""


@dataclass(frozen=True)
class TaskPlan:
    """One task of a run: its classes, data size, batch size, epochs, pruning and gradient clipping.

    Example::

        plan = TaskPlan(classes=3, samples=32, batch_size=8, epochs=1, pruning=eidetic.Pruning(step=0.3))
        assert_never_forgets(MyNet, (10,), tasks=[plan, plan, plan])
    """

    classes: int
    samples: int
    batch_size: int
    epochs: int
    pruning: Pruning | None
    clip: float | None = None


task_plans: st.SearchStrategy[TaskPlan] = st.builds(
    TaskPlan,
    classes=st.integers(2, 4),
    samples=st.integers(16, 40),
    batch_size=st.sampled_from([8, 16]),
    epochs=st.integers(1, 2),
    pruning=prunings,
    clip=st.none() | st.just(1.0),
)
"""One small random task: 2 to 4 classes, 16 to 40 samples, batches of 8 or 16, 1 or 2 epochs,
any of :data:`prunings`, gradient clipping or not."""

runs: st.SearchStrategy[list[TaskPlan]] = st.lists(task_plans, min_size=2, max_size=4)
"""Two to four :data:`task_plans`: a run of tasks for :func:`~eidetic.testing.assert_never_forgets`."""

seeds: st.SearchStrategy[int] = st.integers(0, 2**16)
"""Seeds for the network's initialisation and the run's data."""
