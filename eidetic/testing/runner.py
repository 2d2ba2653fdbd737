"""One run of small random tasks through a user's network, checked after every task and widening."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from ..network import ContinualNetwork
from ..training.pruning import GracefulPruning, Pruning
from .checks import ForgettingCheck, ForgettingError
from .strategies import OptimizerChoice, OptimizerFactory, TaskPlan

InputSampler = Callable[[torch.Generator, int], torch.Tensor]
"""``(generator, n) -> a batch of n inputs``, drawn with ``generator`` only (so that a run is
reproducible from its seed): float images, token ids for an Embedding, sequences for an LSTM..."""

OptimizerSetup = OptimizerChoice | OptimizerFactory | torch.optim.Optimizer
"""An :class:`OptimizerChoice`, a ``params -> Optimizer`` factory, or one optimizer instance."""

TrainKwargs = Mapping[str, Any] | Callable[[int], Mapping[str, Any]]

DEFAULT_PRUNING = Pruning(method="l2", step=0.34, tolerance=0.5, recovery_epochs=0, max_steps=2)
"""The pruning of :func:`assert_never_forgets`'s tasks unless told otherwise: two steps of a third
of the units each, kept unless the training accuracy falls by half (random labels: it prunes)."""

DEFAULT_OPTIMIZERS: tuple[OptimizerChoice, ...] = (
    OptimizerChoice("AdamW", (("lr", 0.01), ("weight_decay", 0.1)), shared=True),
    OptimizerChoice("SGD", (("lr", 0.1), ("momentum", 0.9), ("nesterov", True), ("weight_decay", 1e-3)), shared=False),
)
"""Task by task, cycled: one AdamW instance shared by tasks 0, 2, 4... (its moments and decoupled
weight decay carry across tasks), and SGD with Nesterov momentum and L2 weight decay between."""

__all__ = ["DEFAULT_OPTIMIZERS", "DEFAULT_PRUNING", "InputSampler", "OptimizerSetup", "assert_never_forgets"]


def _plans(tasks: int | Sequence[TaskPlan], classes: int, samples: int, batch_size: int, epochs: int,
           pruning: Pruning | GracefulPruning | None) -> list[TaskPlan]:
    if isinstance(tasks, int):
        if tasks < 1:
            raise ValueError(f"tasks={tasks}: at least one task")
        return [TaskPlan(classes, samples, batch_size, epochs, pruning)] * tasks
    plans = list(tasks)
    if not plans or not all(isinstance(p, TaskPlan) for p in plans):
        raise ValueError("tasks must be a number of tasks or a non-empty sequence of TaskPlan")
    return plans


class _Optimizers:
    """The optimizer of each task: set-ups cycled over the tasks, one factory per set-up for the
    whole run, so that a shared :class:`OptimizerChoice` is one instance for all its tasks; a new
    one once a widening (or CPG's growth) has replaced parameters the instance holds."""

    def __init__(self, setups: OptimizerSetup | Sequence[OptimizerSetup] | None) -> None:
        if setups is None:
            setups = DEFAULT_OPTIMIZERS
        elif isinstance(setups, (OptimizerChoice, torch.optim.Optimizer)) or callable(setups):
            setups = (setups,)
        self.setups = list(setups)
        if not self.setups:
            raise ValueError("optimizers: give at least one optimizer set-up")
        self.made: list[OptimizerFactory | torch.optim.Optimizer] = []

    def bind(self, net: ContinualNetwork) -> None:
        """Build the factories for a run of ``net`` (a choice listed twice is one factory)."""
        built: dict[OptimizerChoice, OptimizerFactory] = {}
        for s in self.setups:
            if isinstance(s, OptimizerChoice) and s not in built:
                built[s] = _shared(s, net) if s.shared else s.factory()
        self.made = [built.get(s, s) if isinstance(s, OptimizerChoice) else s for s in self.setups]

    def __call__(self, task: int) -> OptimizerFactory | torch.optim.Optimizer:
        return self.made[task % len(self.made)]


def _shared(choice: OptimizerChoice, net: ContinualNetwork) -> OptimizerFactory:
    cls, kwargs = getattr(torch.optim, choice.name), dict(choice.kwargs)
    held: list[torch.optim.Optimizer] = []

    def make(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        if held:
            current = {id(p) for p in net.parameters()}
            if any(id(p) not in current for group in held[0].param_groups for p in group["params"]):
                held.clear()  # it holds parameters that a widening replaced: it cannot train the new ones
        if not held:
            held.append(cls(params, **kwargs))
        return held[0]

    return make


def _sampler(input_shape: Sequence[int] | None, input_sampler: InputSampler | None,
             dtype: torch.dtype) -> Callable[[torch.Generator, int, int], torch.Tensor]:
    if input_sampler is not None:
        return lambda g, n, task: input_sampler(g, n)
    if input_shape is None:
        raise ValueError("give the shape of one input (input_shape) or an input_sampler")
    shape = tuple(input_shape)
    # Each task's inputs on their own scale: the batch statistics differ from the frozen ones.
    return lambda g, n, task: torch.randn(n, *shape, generator=g, dtype=dtype) * (1 + task)


def _reference(net: torch.nn.Module) -> torch.Tensor | None:
    return next(iter(net.parameters()), None)


def assert_never_forgets(
    net_factory: Callable[[], ContinualNetwork],
    input_shape: Sequence[int] | None = None,
    *,
    tasks: int | Sequence[TaskPlan] = 3,
    optimizers: OptimizerSetup | Sequence[OptimizerSetup] | None = None,
    pruning: Pruning | GracefulPruning | None = DEFAULT_PRUNING,
    seed: int = 0,
    input_sampler: InputSampler | None = None,
    classes: int = 3,
    samples: int = 32,
    batch_size: int = 8,
    epochs: int = 1,
    widen: Mapping[int, Mapping[str, int]] | None = None,
    train_kwargs: TrainKwargs | None = None,
    train_mode: bool | None = None,
    inputs: int = 8,
) -> ContinualNetwork:
    """Train ``net_factory()`` on a run of small random tasks with real pruning, and check the
    guarantee after every task and every widening.

    After each task, every earlier task's logits on a fixed batch are ``torch.equal`` to what
    they were; every frozen slice (weight rows, biases, BatchNorm affine parameters and running
    statistics, recurrent gate rows, finished heads) is ``torch.equal``, unit by unit; cut
    entries are exactly 0; and, unless the network has dropout, a training-mode pass gives every
    finished task the same logits as evaluation mode and moves no frozen statistic (see
    :class:`ForgettingCheck`). Inputs are random, labels are random class indices.

    Args:
        net_factory: builds the network (a :class:`~eidetic.ContinualNetwork`, mixins included):
            the class itself if it takes no argument, or a ``lambda``.
        input_shape: the shape of one input (``(3, 32, 32)``); inputs are standard normal, times
            ``1 + task``. Not needed with ``input_sampler``.
        tasks: how many tasks (each ``classes``, ``samples``, ``batch_size``, ``epochs``,
            ``pruning``), or a sequence of :class:`TaskPlan` (each with its own).
        optimizers: an :class:`OptimizerChoice`, a ``params -> Optimizer`` factory or an
            optimizer instance, or a sequence of them cycled task by task (default:
            :data:`DEFAULT_OPTIMIZERS`). A shared :class:`OptimizerChoice` is one instance for all
            its tasks, and a new one after a widening or CPG's growth replaced the parameters it
            holds (a factory or an instance of yours is used as it is).
        pruning: the pruning of every task when ``tasks`` is a number (:data:`DEFAULT_PRUNING`).
        seed: seeds the network's initialisation (``torch.manual_seed``, with the global RNG
            state put back afterwards) and the data.
        input_sampler: ``(generator, n) -> n inputs`` for inputs that are not float tensors of
            ``input_shape`` (token ids, sequences); it must draw with ``generator`` only.
        classes, samples, batch_size, epochs: each task's, when ``tasks`` is a number. A
            single-head network uses the first task's classes for every task.
        widen: ``{task: {group: units}}``: after that task, ``net.widen(...)`` those groups,
            then check that nothing changed.
        train_kwargs: more arguments of ``train_task`` (``{"goal": 0.9}`` for a CPG network,
            ``loss_fn``, ``precision``...), or a function of the task index returning them.
        train_mode: compare training-mode outputs with evaluation mode (``None``: unless the
            network holds a dropout module; pass ``False`` if its forward calls ``F.dropout``).
        inputs: the size of the fixed batch the logits are compared on.

    Returns:
        the trained network.

    Raises:
        ForgettingError: (an ``AssertionError``) naming when, which task and which
            ``module.tensor`` moved, and the largest difference; its message ends with the run's
            set-up, to reproduce it.

    Example::

        from eidetic.testing import assert_never_forgets

        def test_my_net_never_forgets():
            assert_never_forgets(MyNet, (3, 32, 32), tasks=3)

        def test_my_text_net_never_forgets():   # token ids for an Embedding
            assert_never_forgets(lambda: TextNet(vocab=100), input_sampler=lambda g, n:
                                 torch.randint(0, 100, (n, 12), generator=g))
    """
    plans = _plans(tasks, classes, samples, batch_size, epochs, pruning)
    chosen = _Optimizers(optimizers)
    widen = dict(widen or {})
    same = all(p == plans[0] for p in plans)
    context = (f"the run: seed={seed}, tasks={f'{len(plans)} x {plans[0]}' if same else plans}, "
               f"optimizers={chosen.setups}" + (f", widen={widen}" if widen else ""))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = net_factory()
        if not isinstance(net, ContinualNetwork):
            raise TypeError(f"net_factory must build an eidetic.ContinualNetwork, got {type(net).__name__}")
        like = _reference(net)
        device = like.device if like is not None else torch.device("cpu")
        dtype = like.dtype if like is not None and like.is_floating_point() else torch.get_default_dtype()
        draw = _sampler(input_shape, input_sampler, dtype)
        data = torch.Generator().manual_seed(seed)
        fixed = draw(data, inputs, 0).to(device)
        chosen.bind(net)
        check = ForgettingCheck(net, fixed, train_mode=train_mode)
        try:
            for t, plan in enumerate(plans):
                _train(net, t, plan, plans[0].classes, draw, data, seed, chosen, train_kwargs)
                check.after(f"after task {t}")
                if t in widen:
                    net.widen(dict(widen[t]))
                    check.after(f"after widening {dict(widen[t])} (following task {t})")
        except ForgettingError as error:
            raise ForgettingError(error.problems, error.when, context) from None
    return net


def _train(net: ContinualNetwork, t: int, plan: TaskPlan, first_classes: int,
           draw: Callable[[torch.Generator, int, int], torch.Tensor], data: torch.Generator, seed: int,
           chosen: _Optimizers, train_kwargs: TrainKwargs | None) -> None:
    classes = first_classes if net.heads.shared else plan.classes  # one shared head: the same classes
    x = draw(data, plan.samples, t)
    y = torch.randint(0, classes, (len(x),), generator=data)
    # drop_last: a last batch of one sample cannot be trained through BatchNorm
    loader = DataLoader(TensorDataset(x, y), batch_size=min(plan.batch_size, len(x)), shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed + t))
    extra = train_kwargs(t) if callable(train_kwargs) else train_kwargs or {}
    kwargs: dict[str, Any] = {"num_classes": classes, "optimizer": chosen(t), "epochs": plan.epochs,
                              "pruning": plan.pruning, "clip_grad_norm": plan.clip, "progress": False}
    kwargs.update(extra)
    net.train_task(t, loader, **kwargs)
