"""Routing glue of a :class:`~eidetic.ContinualNetwork`: task-ID-free prediction (the shared pass
routed, then the masked tasks' own passes for the inputs routed to them), fitting the learned
router through the free units, and recording what the routers need when a task is frozen
(class moments of the features and of the inputs, exemplars)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..errors import TaskError
from ..guarantee.lifecycle import make_guard, release_free_units
from ..guarantee.slices import head_columns
from ..state import Network, check_batch, device, features, input_dtype, reference_tensor
from ..training.data import as_loader, batches
from ..training.task import Data, session, trainable
from .memory import Reservoir
from .routing import ClassMoments, Prediction, route, router_scores

ROUTER_STEPS = (100, 20, 1000)  # fit_router()'s default steps: 20 passes over its data, within 100 to 1000
ROUTER_LR = 1e-3  # its Adam learning rate for the free units
ROUTER_LAYER_LR = 10  # the router layer's, as a multiple (it must also fit when no unit is free)
ROUTER_BATCH = 64  # its batch size


def predict(net: Network, x: torch.Tensor, router=None) -> Prediction:
    """Predict the task and the class of every input, with no task id: one pass of the body,
    every finished task's head, and a router that picks the task.

    Args:
        x: a batch of inputs, of the shape the network was trained on.
        router: ``None`` (the Gaussian router on the inputs; docs/routing.md says which router
            a network it does not cover gets), ``"gaussian"``, ``"learned"`` (fitted here on the
            exemplars the first time it is needed after new tasks), ``"discriminant"``,
            ``"statistics"``, ``"confidence"`` (maximum softmax), ``"entropy"``, ``"energy"``,
            or any object with ``scores(features, logits)`` (see docs/routing.md).

    Example::

        net.eval()
        with torch.no_grad():
            p = net.predict(x)
        p.task, p.label            # the task each input was routed to, and its class there
    """
    state = net._eidetic
    tasks = state.frozen_tasks
    if tasks == 0:
        raise TaskError("predict() needs at least one finished task")
    check_batch(net, x, "predict(x)")
    chosen = state.routers.choose(router, tasks)
    if chosen is state.routers.learned and chosen.fitted_tasks < tasks:
        fit_router(net)  # the first prediction since new tasks or re-initialised free units
    shared = net(x).flatten(1)
    logits = [net.heads.output(shared, k) for k in range(tasks)]
    scores = router_scores(chosen, shared, logits, x)
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (len(x), tasks):
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise TaskError(f"predict(x): the router {type(chosen).__name__} gave scores of shape {got}; its scores() "
                        f"must give one score per input and finished task, shape ({len(x)}, {tasks})")
    prediction = route(scores, logits)
    masked = [k for k in range(tasks) if state.masks.has(k)]
    for k in masked:  # a masked task's own pass, only for the inputs routed to it
        rows = (prediction.task == k).nonzero().flatten()
        if len(rows):
            logits[k] = logits[k].index_copy(0, rows, net.heads.output(features(net, x[rows], k), k))
    return route(scores, logits) if masked else prediction


def fit_router(net: Network, data: Sequence[Data] | None = None, *, batch_size: int | None = None,
               steps: int | None = None, lr: float = ROUTER_LR) -> None:
    """Fit the learned router: a task classifier on the features, trained with task ids as
    labels jointly with the free units (Adam, batches of 64).

    Fitting changes no head and no frozen unit (the guard holds them, as in any task's
    training); it trains the free units, which :meth:`recycle` re-initialises, and which the
    next task re-initialises before it trains. :meth:`recycle` calls it when every task has
    exemplars, so you need it only to fit on your own data.

    Args:
        data: one dataset or loader per finished task (inputs, or ``(inputs, targets)``
            batches whose targets are ignored); ``None`` uses the exemplars ``train_task``
            kept (``memory=``).
        batch_size: batch size for reading Dataset arguments.
        steps: optimizer steps; ``None``: 20 passes over the data, within 100 to 1000 steps.
        lr: Adam's learning rate.

    Example::

        net.fit_router()                          # on the exemplar memory
        net.fit_router([task0_data, task1_data], batch_size=256)
    """
    state = net._eidetic
    if net.open_task is not None:
        raise TaskError(f"task {net.open_task} is open and trains the free units: freeze({net.open_task}) and "
                        "recycle() it before fitting the router")
    if state.frozen_tasks == 0:
        raise TaskError("fit_router() needs at least one finished task")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise TaskError(f"fit_router(steps={steps!r}): use a positive int, or None")
    if not lr > 0:
        raise TaskError(f"fit_router(lr={lr!r}): use a positive learning rate")
    inputs, labels = _router_data(net, data, batch_size)
    size = min(ROUTER_BATCH, len(inputs))
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=size, shuffle=True, drop_last=len(inputs) > size)
    fewest, passes, most = ROUTER_STEPS
    steps = steps or min(most, max(fewest, passes * len(loader)))
    layer = nn.Linear(state.graph.feature_dim, state.frozen_tasks).to(reference_tensor(net))
    optimizer = torch.optim.Adam([{"params": trainable(net, layer)},
                                  {"params": layer.parameters(), "lr": lr * ROUTER_LAYER_LR}], lr=lr)
    state.routers.learned.clear()
    training = session(net, state.frozen_tasks, layer, loader, None, optimizer, None, None, None, (), False)
    was_training = net.training
    net.train()
    try:
        with torch.enable_grad():
            done = 0
            while done < steps:
                for x, y in batches(loader, device(net), "the router's data"):
                    training.step(x, y)
                    done += 1
                    if done == steps:
                        break
    except BaseException:
        release_free_units(net)  # leave no half-trained free units to the next task
        raise
    finally:
        make_guard(net)
        net.train(was_training)
    state.routers.learned.set(layer)


def _router_data(net: Network, data: Sequence[Data] | None, batch_size: int | None):
    """Inputs of every finished task and their task ids, on the CPU."""
    state = net._eidetic
    tasks = state.frozen_tasks
    if data is None:
        if not state.routers.memory.complete(tasks):
            raise TaskError("there are no exemplars of every task to fit the router on: train with "
                            "memory=k > 0, or pass data=[...] (one dataset per task)")
        inputs = [state.routers.memory.tasks[k].inputs(input_dtype(net)) for k in range(tasks)]
    else:
        if len(data) != tasks:
            raise TaskError(f"fit_router needs one dataset per finished task ({tasks}), got {len(data)}")
        inputs = []
        for k, d in enumerate(data):
            loader = as_loader(d, batch_size or 256, shuffle=False, name=f"data[{k}]")
            inputs.append(torch.cat([x for x, _ in batches(loader, torch.device("cpu"), f"data[{k}]")]))
    labels = torch.cat([torch.full((len(x),), k, dtype=torch.long) for k, x in enumerate(inputs)])
    return torch.cat(inputs), labels


def remember(net: Network, task: int, loader: DataLoader, memory: int) -> None:
    """One pass over the frozen task's data: class moments of its features (the body's forward
    pass only for the samples they want: up to 1,024 a class) and of its inputs (pooled for the
    discriminant router, per class of the projected inputs for the Gaussian router) and
    ``memory`` exemplars; then, for the Gaussian router's halves of each class, a
    second pass over the inputs alone if the first one's projected inputs were too many to keep."""
    state = net._eidetic
    frozen = head_columns(state.graph, state.ownership.masks("frozen"))
    num_classes = net.heads.classes[task]
    on = device(net)
    moments = ClassMoments(num_classes, state.graph.feature_dim, on)
    inputs = state.routers.discriminant.moments(num_classes, math.prod(state.input_shape), on)
    gaussian = state.routers.gaussian_record(num_classes, on)
    reservoir = Reservoir(memory)
    was_training = net.training
    net.eval()
    with torch.no_grad():
        for x, y in batches(loader, on, "train_data"):
            rows = moments.wanted(y)
            if rows is None:
                moments.add(net(x).flatten(1), y)
            elif len(rows):
                moments.add(net(x[rows]).flatten(1), y[rows])
            inputs.add(x, y)
            if gaussian is not None:
                gaussian.add(x, y)
            reservoir.add(x)
        if gaussian is not None and gaussian.second_pass:
            for x, y in batches(loader, on, "train_data"):
                gaussian.add_halves(x, y)
    net.train(was_training)
    exemplars = reservoir.sample() if memory else torch.empty(0, *state.input_shape, dtype=state.input_dtype)
    state.routers.record(moments, frozen, inputs, gaussian, exemplars)
