"""A network's task, from its arguments to its report: ``train_task`` and ``prune_until``.

:func:`train_task` checks its arguments, opens a transaction (:mod:`eidetic.guarantee.transaction`),
adds the task's head, lets a mixin begin the task (``net._begin_task``), learns it
(``net._learn``, by default :func:`learn`: train, then prune), then freezes and recycles
(``net.freeze``, ``net.recycle``). :func:`session` builds the :class:`TaskSession` every phase
trains in, with the guard of the network's current ownership.

``ContinualNetwork.train_task`` and ``prune_until`` are these functions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import TaskError
from ..guarantee.lifecycle import make_guard, release_free_units
from ..guarantee.transaction import transaction
from ..state import Network, features, reference_tensor
from . import distributed
from .data import as_loader, first_inputs
from .pruning import GracefulPruning, Pruning, measure, prune
from .report import PruneStep, TaskReport
from .session import PRECISIONS, Callback, L1Penalty, Loss, Metric, Plan, TaskSession, accuracy

log = logging.getLogger("eidetic")

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
Data = DataLoader | Dataset
_COMPILE_ARGUMENTS = ("fullgraph", "dynamic", "backend", "mode", "options", "disable")


def train_task(
    net: Network,
    task: int,
    train_data: Data,
    *,
    num_classes: int,
    optimizer: OptimizerFactory | torch.optim.Optimizer,
    epochs: int,
    val_data: Data | None = None,
    batch_size: int | None = None,
    pruning: Pruning | GracefulPruning | None = Pruning(),
    loss_fn: Loss | None = None,
    metric: Metric | None = None,
    l1: float | dict[str, float] | None = None,
    scheduler: Callable[[torch.optim.Optimizer], object] | None = None,
    early_stopping: int | None = None,
    clip_grad_norm: float | None = None,
    finish: bool = True,
    memory: int = 200,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    precision: str | None = None,
    compile: bool | dict = False,
) -> TaskReport:
    """Train a new task, prune it, freeze the units it kept and recycle the rest.

    If anything fails (an exception, a NaN loss, Ctrl-C) the network is put back as it was
    before the call.

    Args:
        task: the task id: tasks are numbered 0, 1, 2, ... in training order.
        train_data: a DataLoader of ``(inputs, targets)``, or a Dataset with ``batch_size``.
        num_classes: number of outputs of the task's head.
        optimizer: a factory ``params -> Optimizer`` (called with the body's parameters and
            the new head's), or one optimizer instance to carry across tasks. Parameters the
            optimizer lacks (a new head) are added to it as a new parameter group.
        epochs: training epochs before pruning.
        val_data: optional validation data (reported; used by early stopping and by
            ``Pruning(monitor="val")``).
        batch_size: batch size for Dataset arguments.
        pruning: a :class:`Pruning` (iterative) or :class:`GracefulPruning` (CLNP's one-shot
            thresholds) configuration, or ``None`` to keep every unit.
        loss_fn: ``(logits, targets) -> loss``; cross-entropy by default.
        metric: ``(logits, targets) -> score in [0, 1]``; accuracy by default.
        l1: an L1 penalty on the trained weights of every layer (a coefficient), or per
            layer (``{"fc1": 1e-4}``), added to the loss during training (CLNP).
        scheduler: optional factory ``optimizer -> LR scheduler``, stepped per epoch.
        early_stopping: stop training after this many epochs without progress (``None``: never).
        clip_grad_norm: clip the gradient norm of the trained weights to this value.
        finish: freeze and recycle at the end (``False`` leaves the task open, so that
            :meth:`prune_until`, :meth:`freeze` and :meth:`recycle` can be called by hand).
        memory: exemplars of the task to keep for fitting the learned router (0: none),
            at one byte per value for floating-point inputs. The data-free routers'
            statistics are recorded in any case.
        callbacks: :class:`Callback` objects.
        progress: show progress bars (on a terminal).
        precision: ``"bf16"`` or ``"fp16"`` to run the training steps under ``torch.autocast``
            with that dtype (fp16 with a gradient scaler), ``None`` for the network's dtype.
            Evaluation (the monitored metric, pruning decisions) runs in the network's dtype,
            and the guarantee holds for the outputs in the dtype a task was evaluated in.
        compile: compile each training step's forward pass and loss (and so their backward)
            with ``torch.compile``: ``True`` for its defaults, or a dict of its arguments
            (``{"mode": "max-autotune"}``, ``{"backend": "aot_eager"}``). The optimizer step,
            the guard's restores and every evaluation stay eager. See docs/scaling.md.

    Returns:
        a :class:`TaskReport`.

    Example::

        report = net.train_task(0, train_loader, num_classes=10,
                                optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                                epochs=3, pruning=eidetic.Pruning(method="l1", step=0.2))
        print(report)
    """
    check_new_task(net, task)
    check_int("num_classes", num_classes, 1)
    check_int("epochs", epochs, 0)
    check_int("memory", memory, 0)
    if early_stopping is not None:
        check_int("early_stopping", early_stopping, 1)
    check_precision(precision)
    compile_options = _compile_options(compile)
    _check_pruning(pruning, task, allow_none=True)
    train_loader, val_loader = _loaders(train_data, val_data, batch_size, pruning)
    report = TaskReport(task=task, num_classes=num_classes)
    start = time.perf_counter()
    with transaction(net, first_inputs(train_loader, "train_data"), optimizer) as tx:
        if net._eidetic.routers.learned.fitted_tasks:  # the router holds the free units: free them
            release_free_units(net)
        head = net.heads.add(net._eidetic.graph.feature_dim, num_classes, like=reference_tensor(net))
        net._begin_task(task, head)
        synchronise(net)  # the new head and the recycled units, drawn at random on each rank

        def build() -> tuple[TaskSession, object]:
            made = session(net, task, head, train_loader, val_loader, tx.optimizer(trainable(net, head)), loss_fn,
                           metric, clip_grad_norm, callbacks, progress, l1, precision, compile_options)
            return made, scheduler(made.optimizer) if scheduler is not None else None

        plan = Plan(build, report, epochs, early_stopping, pruning,
                    pruning.monitor if pruning is not None else "train", start)
        _finish(net, net._learn(plan), plan, train_loader, val_loader, finish, memory)
    report.seconds["total"] = time.perf_counter() - start
    report.seconds["finish"] = report.seconds["total"] - report.seconds["train"] - report.seconds["prune"]
    log.info("%s", report)
    return report


def _finish(net: Network, learned: TaskSession, plan: Plan, train_loader: DataLoader, val_loader: DataLoader | None,
            finish: bool, memory: int) -> None:
    """The report's final metrics; freeze and recycle (``finish``); ranks made identical."""
    report = plan.report
    pruning = plan.pruning
    report.final_metric = learned.monitored(plan.monitor) if pruning is None else measure(learned, pruning)
    if val_loader is not None:
        report.val_metric = learned.evaluate(val_loader, "val_data")
    if finish:
        start = time.perf_counter()
        report.units = net.freeze(report.task, train_loader, memory=memory)
        report.seconds["freeze"] = time.perf_counter() - start
        net.recycle()
        report.seconds["recycle"] = time.perf_counter() - start - report.seconds["freeze"]
    synchronise(net)
    report.free_units = net._eidetic.ownership.free_counts()
    report.parameters = sum(p.numel() for p in net.parameters())
    if finish and not (isinstance(pruning, Pruning) and pruning.tasks is not None):
        _warn_if_short(report, pruning)


def _warn_if_short(report: TaskReport, pruning) -> None:
    """Log a warning where the task kept more units of a group than it left free: the next task
    can own at most what is free (nothing is planned without ``Pruning(tasks=...)``); say so too
    where the loop stopped because a step's recovery ran out of epochs."""
    short = {key: (kept, report.free_units.get(key, 0)) for key, kept in report.units.items()
             if report.free_units.get(key, 0) < kept}
    if not short:
        return
    groups = ", ".join(f"{key}: kept {kept}, {free} free" for key, (kept, free) in short.items())
    log.warning("task %d left fewer free units than it kept (%s): a later task can own at most the free ones. "
                "Pass Pruning(tasks=T) to give each of T tasks its share, or widen the groups with "
                "net.widen({...}) before the next task%s", report.task, groups, _ran_out(report, pruning))


def _ran_out(report: TaskReport, pruning) -> str:
    """Why the pruning loop stopped, where a rolled-back step used its whole recovery."""
    if not isinstance(pruning, Pruning) or not pruning.recovery_epochs:
        return ""
    spent = [s for s in report.prune_steps if not s.accepted and s.epochs >= pruning.recovery_epochs]
    if not spent:
        return ""
    return (f". Its pruning stopped when {pruning.recovery_epochs} recovery epoch(s) ({spent[-1].steps} optimizer "
            f"steps) did not bring the metric back within the tolerance of {pruning.tolerance}: with few batches an "
            f"epoch, allow more recovery (Pruning(recovery_epochs=...)) or train for longer (epochs=...)")


def learn(net: Network, plan: Plan) -> TaskSession:
    """The base's way of learning the open task: train, then prune (``ContinualNetwork._learn``)."""
    learned, scheduler = plan.build()
    report = plan.report
    report.epochs = learned.fit(plan.epochs, plan.early_stopping, scheduler)
    report.seconds["train"] = time.perf_counter() - plan.start
    before = dict(learned.seconds)
    if plan.pruning is not None:
        state = net._eidetic
        report.reference_metric, report.prune_steps = prune(
            learned, state.layers, state.graph, state.ownership, plan.pruning)
    report.seconds["prune"] = time.perf_counter() - plan.start - report.seconds["train"]
    report.seconds["prune_training"] = learned.seconds["training"] - before["training"]
    report.seconds["prune_evaluating"] = learned.seconds["evaluating"] - before["evaluating"]
    return learned


def prune_until(
    net: Network,
    task: int,
    train_data: Data,
    *,
    optimizer: OptimizerFactory | torch.optim.Optimizer,
    pruning: Pruning | GracefulPruning = Pruning(),
    val_data: Data | None = None,
    batch_size: int | None = None,
    loss_fn: Loss | None = None,
    metric: Metric | None = None,
    clip_grad_norm: float | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    precision: str | None = None,
) -> list[PruneStep]:
    """Prune the open task ``task`` (see ``train_task(..., finish=False)``) until its metric
    would drop by more than the tolerance. Transactional like ``train_task``.

    Example::

        net.train_task(0, loader, num_classes=10, optimizer=make_opt, epochs=5,
                       pruning=None, finish=False)
        steps = net.prune_until(0, loader, optimizer=make_opt,
                                pruning=eidetic.Pruning(method="taylor"))
        net.freeze(0)
        net.recycle()
    """
    if task != net.open_task:
        raise TaskError(f"task {task} is not open; prune_until works on the task left open by "
                        "train_task(..., finish=False)")
    check_precision(precision)
    _check_pruning(pruning, None, allow_none=False)
    train_loader, val_loader = _loaders(train_data, val_data, batch_size, pruning)
    head = net.heads.head(task)
    with transaction(net, first_inputs(train_loader, "train_data"), optimizer) as tx:
        made = session(net, task, head, train_loader, val_loader, tx.optimizer(trainable(net, head)), loss_fn, metric,
                       clip_grad_norm, callbacks, progress, precision=precision)
        state = net._eidetic
        _, steps = prune(made, state.layers, state.graph, state.ownership, pruning)
    return steps


def session(net: Network, task: int, head: nn.Module, train_loader, val_loader, optimizer, loss_fn, metric,
            clip_grad_norm, callbacks, progress, l1=None, precision=None, compile_options=None) -> TaskSession:
    """The training session of task ``task`` (or of a router's ``head``) over the network's
    current parameters, guarded by the current ownership."""
    state = net._eidetic
    penalty = None if l1 is None else L1Penalty(state.layers, state.graph, state.ownership, l1)
    return TaskSession(
        body=net, head=head, task=task, num_classes=head.out_features, guard=make_guard(net, head),
        train_loader=train_loader, val_loader=val_loader, optimizer=optimizer,
        loss_fn=loss_fn or F.cross_entropy, metric=metric or accuracy, check_labels=loss_fn is None,
        input_shape=state.input_shape, clip_grad_norm=clip_grad_norm, callbacks=callbacks,
        progress=progress, penalty=penalty, features=lambda x: features(net, x, task), precision=precision,
        compile=compile_options,
    )


def trainable(net: Network, head: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer of ``head``'s task gets: all but the heads frozen whole."""
    frozen = net.heads.frozen_modules(net._eidetic.frozen_tasks)
    frozen_heads = {id(p) for h in frozen if h is not head for p in h.parameters()}
    return [p for p in net.parameters() if id(p) not in frozen_heads]


def synchronise(net: Network) -> None:
    """Under ``torch.distributed``, give every rank rank 0's parameters, buffers and router
    records (what each rank drew at random, or recorded from its own shard)."""
    if not distributed.active():
        return
    distributed.broadcast_module(net)
    routers = net._eidetic.routers
    routers.load(distributed.broadcast_object(routers.state()))
    device = reference_tensor(net).device
    routers.apply(lambda t: t.to(device))


def check_new_task(net: Network, task) -> None:
    """Refuse a task id that is not the next one, or a new task while one is open."""
    if not isinstance(task, int) or isinstance(task, bool) or task < 0:
        raise TaskError(f"task must be a non-negative int, got {task!r}")
    if net.open_task is not None:
        raise TaskError(f"task {net.open_task} is still open: call freeze({net.open_task}) and "
                        "recycle() before training another task")
    if task < net.num_tasks:
        raise TaskError(f"task {task} was already trained and is frozen; train a new task with "
                        f"id {net.num_tasks}")
    if task != net.num_tasks:
        raise TaskError(f"tasks are trained in order 0, 1, 2, ...: the next task is "
                        f"{net.num_tasks}, not {task}")


def check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise TaskError(f"{name} must be an int >= {minimum}, got {value!r}")



def check_precision(precision) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise TaskError(f"precision={precision!r}: use None (the network's dtype), 'bf16' or 'fp16'")


def _check_pruning(pruning, task: int | None, allow_none: bool) -> None:
    """Refuse what is not a pruning configuration; ``Pruning(tasks=...)`` refuses a task past
    its plan before any training."""
    if pruning is None and allow_none:
        return
    if not isinstance(pruning, (Pruning, GracefulPruning)):
        allowed = "an eidetic.Pruning, an eidetic.GracefulPruning or None" if allow_none else \
            "an eidetic.Pruning or an eidetic.GracefulPruning"
        raise TaskError(f"pruning must be {allowed}, got {type(pruning).__name__}")
    if task is not None and isinstance(pruning, Pruning):
        pruning.share(task)


def _loaders(train_data, val_data, batch_size, pruning) -> tuple[DataLoader, DataLoader | None]:
    train_loader = as_loader(train_data, batch_size, shuffle=True, name="train_data")
    val_loader = None if val_data is None else as_loader(val_data, batch_size, shuffle=False, name="val_data")
    if pruning is not None and pruning.monitor == "val" and val_loader is None:
        raise TaskError(f"{type(pruning).__name__}(monitor='val') needs val_data")
    return train_loader, val_loader


def _compile_options(compile) -> dict | None:
    """``train_task``'s ``compile=`` as ``torch.compile`` keyword arguments, ``None`` for eager."""
    if compile is False:
        return None
    if compile is True:
        return {}
    if not isinstance(compile, dict):
        raise TaskError(f"compile={compile!r}: use False, True or a dict of torch.compile's arguments")
    unknown = sorted(set(compile) - set(_COMPILE_ARGUMENTS))
    if unknown:
        raise TaskError(f"compile={compile!r}: {unknown} are not torch.compile arguments; use {_COMPILE_ARGUMENTS}")
    backend = compile.get("backend", "inductor")
    if isinstance(backend, str) and backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise TaskError(f"compile={compile!r}: unknown torch.compile backend {backend!r}; choose among "
                        f"{torch._dynamo.list_backends(exclude_tags=())}")
    return dict(compile)
