"""Transactions of a :class:`~eidetic.ContinualNetwork`: ``train_task`` and ``prune_until`` run
inside :func:`transaction`, which puts the network (its weights, heads, frozen tasks, routers,
masks and widenings) and a user's optimizer back as they were if the task fails."""

from __future__ import annotations

import contextlib
import copy
import logging
import weakref

import torch
from torch import nn

from ..errors import TaskError
from ..state import Network, forget
from .lifecycle import make_guard
from .snapshot import Snapshot

log = logging.getLogger("eidetic")


@contextlib.contextmanager
def transaction(net: Network, example: torch.Tensor, optimizer):
    """Set up on first use, and put everything back if the body of the block fails."""
    state = net._eidetic
    created = state.graph is None
    if created:
        net.setup(example)
    try:
        if tuple(example.shape[1:]) != state.input_shape:
            raise TaskError(f"inputs of shape {tuple(example.shape[1:])} (per sample) do not fit the "
                            f"network, which was set up with inputs of shape {state.input_shape}")
        snapshot = Snapshot(net, make_guard(net), state.ownership)
    except BaseException:
        if created:
            forget(net)
        raise
    heads, frozen, training = net.num_tasks, state.frozen_tasks, net.training
    routers, masks = state.routers.checkpoint(), state.masks.checkpoint()
    tx = OptimizerTransaction(optimizer, state.replaced)
    state.undo = []
    foreign = _foreign_buffers(net) if frozen else {}
    try:
        yield tx
        _check_unchanged(foreign)
        net.train(training)
    except BaseException:
        net.train(training)
        for widening in reversed(state.undo):
            widening.restore()
        state.restored(net.parameters())
        while net.num_tasks > heads:
            net.heads.drop_last()
        state.frozen_tasks = frozen
        state.routers.rollback(routers)
        state.masks.rollback(masks)
        snapshot.restore()
        tx.rollback()
        if created:
            forget(net)
        else:
            make_guard(net)
        raise
    finally:
        state.undo = None


def _foreign_buffers(net: Network) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{name: (buffer, copy)}`` for the buffers of modules that are neither a layer of the unit
    table nor the heads: eidetic does not know which of their entries earlier tasks read."""
    known = set(net._eidetic.layers)
    buffers = {}
    for name, module in net.named_modules():
        if name in known or name == "heads" or name.startswith("heads."):
            continue
        for key, buffer in module.named_buffers(prefix=name, recurse=False):
            buffers[key] = (buffer, buffer.detach().clone())
    return buffers


def _check_unchanged(buffers: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Refuse the task (the transaction then puts everything back) if it changed one of ``buffers``:
    earlier tasks' outputs may read them."""
    changed = [name for name, (buffer, before) in buffers.items() if not torch.equal(buffer, before)]
    if changed:
        raise TaskError(f"the task changed buffer(s) {changed} of a module eidetic does not know (not a layer of the "
                        "unit table), which earlier tasks may read: their outputs would change. Register the module "
                        "as a layer (eidetic.register_layer, docs/extending.md), or keep that state out of its "
                        "buffers; the network was put back as it was before this task")


class OptimizerTransaction:
    """Builds the task's optimizer; on rollback, puts a user's optimizer back as it was."""

    def __init__(self, optimizer, replaced: dict[int, weakref.ref]) -> None:
        self.source = optimizer
        self.replaced = replaced
        self.added: list[dict] = []
        self.instance: torch.optim.Optimizer | None = None
        self.saved: dict | None = None

    def optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        opt = self.source if isinstance(self.source, torch.optim.Optimizer) else None
        if opt is None:
            if not callable(self.source):
                raise TaskError("optimizer must be a function params -> torch.optim.Optimizer, or an Optimizer")
            opt = self.source(params)
            if not isinstance(opt, torch.optim.Optimizer):
                raise TaskError(f"the optimizer factory returned {type(opt).__name__}, not a "
                                "torch.optim.Optimizer")
        held = {id(p) for group in opt.param_groups for p in group["params"]}
        stale = [p for group in opt.param_groups for p in group["params"]
                 if (old := self.replaced.get(id(p))) is not None and old() is p]
        if stale:
            raise TaskError("the optimizer holds parameters that widen() replaced by bigger ones, so it would "
                            "not train the network's parameters. Pass a factory instead, e.g. optimizer=lambda "
                            "params: torch.optim.AdamW(params, lr=1e-3), and eidetic builds it for the new ones.")
        self.saved = copy.deepcopy(opt.state_dict())
        missing = [p for p in params if id(p) not in held]
        if missing:
            opt.add_param_group({"params": missing})
            self.added.append(opt.param_groups[-1])
            log.debug("added %d parameters (the new head) to the optimizer", len(missing))
        self.instance = opt
        return opt

    def rollback(self) -> None:
        if self.instance is None:
            return
        added = {id(group) for group in self.added}
        self.instance.param_groups[:] = [g for g in self.instance.param_groups if id(g) not in added]
        for group in self.added:
            for p in group["params"]:
                self.instance.state.pop(p, None)
        self.instance.load_state_dict(self.saved)
