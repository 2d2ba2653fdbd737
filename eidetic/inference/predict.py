"""Routing glue of a :class:`~eidetic.ContinualNetwork`: task-ID-free prediction (the shared pass
routed, then the masked tasks' own passes for the inputs routed to them), fitting the learned
router, and recording what the routers need when a task is frozen (class moments, exemplars)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from ..errors import TaskError
from ..guarantee.slices import head_columns
from ..training.data import as_loader, batches
from .memory import Reservoir
from .routing import ClassMoments, Prediction, route

if TYPE_CHECKING:
    from ..network import ContinualNetwork, Data


def predict(net: ContinualNetwork, x: torch.Tensor, router=None) -> Prediction:
    """:meth:`ContinualNetwork.predict`: route one pass of the body, then give every masked task
    its own pass for the inputs routed to it."""
    tasks = net._eidetic.frozen_tasks
    if tasks == 0:
        raise TaskError("predict() needs at least one finished task")
    features = net(x).flatten(1)
    logits = [net.heads.output(features, k) for k in range(tasks)]
    scores = net._eidetic.routers.choose(router, tasks).scores(features, logits)
    prediction = route(scores, logits)
    masked = [k for k in range(tasks) if net._eidetic.masks.has(k)]
    for k in masked:  # a masked task's own pass, only for the inputs routed to it
        rows = (prediction.task == k).nonzero().flatten()
        if len(rows):
            logits[k] = logits[k].index_copy(0, rows, net.heads.output(net._features(x[rows], k), k))
    return route(scores, logits) if masked else prediction


def fit_router(net: ContinualNetwork, data: Sequence[Data] | None = None, *, batch_size: int | None = None,
               steps: int = 60, lr: float = 0.05) -> None:
    """:meth:`ContinualNetwork.fit_router`: fit the learned router on the features of ``data``
    (or of the exemplars kept), with task ids as labels."""
    state = net._eidetic
    tasks = state.frozen_tasks
    if data is None:
        if len(state.routers.memory) < tasks or not state.routers.memory.complete():
            raise TaskError("there are no exemplars of every task to fit the router on: train with "
                            "memory=k > 0, or pass data=[...] (one dataset per task)")
        inputs = [state.routers.memory.inputs[k] for k in range(tasks)]
        data = [torch.utils.data.TensorDataset(x, torch.zeros(len(x))) for x in inputs]
        batch_size = batch_size or 256
    if len(data) != tasks:
        raise TaskError(f"fit_router needs one dataset per finished task ({tasks}), got {len(data)}")
    features, labels = [], []
    was_training = net.training
    net.eval()
    with torch.no_grad():
        for k, d in enumerate(data):
            loader = as_loader(d, batch_size, shuffle=False, name=f"data[{k}]")
            for x, _ in batches(loader, net._device(), f"data[{k}]"):
                features.append(net(x).flatten(1))
                labels.append(torch.full((len(x),), k, dtype=torch.long, device=x.device))
    net.train(was_training)
    state.routers.learned.steps, state.routers.learned.lr = steps, lr
    frozen = head_columns(state.graph, state.ownership.masks("frozen"))
    state.routers.learned.fit(torch.cat(features), torch.cat(labels), tasks, frozen)


def remember(net: ContinualNetwork, task: int, loader: DataLoader, memory: int) -> None:
    """One pass over the frozen task's data: class moments of its features, and ``memory``
    exemplars; refits the learned router once every task has exemplars."""
    state = net._eidetic
    frozen = head_columns(state.graph, state.ownership.masks("frozen"))
    num_classes = net.heads.classes[task]
    moments = ClassMoments(num_classes, state.graph.feature_dim, net._device())
    reservoir = Reservoir(memory)
    was_training = net.training
    net.eval()
    with torch.no_grad():
        for x, y in batches(loader, net._device(), "train_data"):
            moments.add(net(x).flatten(1), y)
            reservoir.add(x)
    net.train(was_training)
    exemplars = reservoir.sample() if memory else torch.empty(0, *state.input_shape, dtype=state.input_dtype)
    state.routers.record(moments, frozen, exemplars)
    if memory and state.routers.memory.complete() and len(state.routers.memory) == state.frozen_tasks:
        net.fit_router()
