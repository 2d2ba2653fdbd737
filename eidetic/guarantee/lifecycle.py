"""The guarantee over a whole network: its guard, the end of a task, and recycling.

The layer-level phases are in :mod:`.phases` and the guard in :mod:`.guard`; this module applies
them to a network's state and heads together:

* :func:`make_guard`: the guard of the current ownership, with the norms and eras attached;
* :func:`freeze`: the open task's masks, units and head become constant;
* :func:`release_free_units`: every free unit re-initialised, the learned router (trained
  through them) forgotten;
* the task masks' and released entries' verbs for mixins (:func:`set_mask`, :func:`release`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import TaskError
from ..state import Network, body_parameters
from . import phases
from .guard import Guard
from .masks import Mask
from .slices import head_columns, row_owners


def make_guard(net: Network, head: nn.Module | None = None) -> Guard:
    """Compile the guard of the network's current ownership (``head``: the head in training)
    and make it the one in use."""
    state = net._eidetic
    features = head_columns(state.graph, state.ownership.masks("frozen"))
    guard = Guard(state.layers, state.graph, state.ownership,
                  net.heads.frozen_slices(state.frozen_tasks, features), head, state.masks.released)
    state.norms.attach(guard)
    state.eras.attach(state.layers)
    state.guard = guard
    return guard


def freeze(net: Network, task: int) -> dict[str, int]:
    """Freeze the open task ``task``: its masks, its alive units (cutting their synapses from free
    units) and its head. Returns the units it received per group."""
    state = net._eidetic
    state.masks.freeze(task, lambda name: row_owner(net, name))
    counts = phases.freeze(state.layers, state.graph, state.ownership, task, net.heads.head(task))
    net.heads.freeze(task, head_columns(state.graph, state.ownership.masks("frozen")))
    state.frozen_tasks += 1
    make_guard(net)
    return counts


def release_free_units(net: Network) -> int:
    """Re-initialise the free units and forget the learned router trained with them; returns
    the units re-initialised."""
    state = net._eidetic
    state.routers.learned.clear()
    return phases.recycle(state.layers, state.graph, state.ownership)


def row_owner(net: Network, name: str) -> torch.Tensor:
    """The owner of the unit that each entry of body tensor ``name`` belongs to."""
    state = net._eidetic
    module_name, _, tensor_name = name.rpartition(".")
    module, spec = state.layers[module_name]
    return row_owners(state.graph, state.ownership.owner, module_name, module, spec, tensor_name)


def set_mask(net: Network, name: str, mask: Mask) -> None:
    """Give the open task a mask over body parameter ``name`` (see :mod:`.masks`)."""
    task = _open_or_new(net)
    params = body_parameters(net)
    if name not in params:
        raise TaskError(f"'{name}' is not a parameter of the body; masks go on {sorted(params)}")
    net._eidetic.masks.set(task, name, mask, params[name])


def release(net: Network, name: str, entries: torch.Tensor) -> None:
    """Let the open task train ``entries`` of frozen parameter ``name``: refused unless every
    finished task that reads them masks them out."""
    task = _open_or_new(net)
    state = net._eidetic
    if name not in body_parameters(net):
        raise TaskError(f"'{name}' is not a parameter of the body")
    state.masks.release(task, name, entries, lambda n: row_owner(net, n), state.frozen_tasks)
    if state.guard is not None:  # a new guard: the transaction's snapshot keeps the old one, to roll back with
        make_guard(net)


def _open_or_new(net: Network) -> int:
    if net.num_tasks == net._eidetic.frozen_tasks:
        raise TaskError("masks belong to the task in training; set them from _begin_task()")
    return net.num_tasks - 1
