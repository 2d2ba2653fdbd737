"""The continual state of a :class:`~eidetic.ContinualNetwork`: its unit graph, ownership, frozen
tasks, norms, eras, masks, routers and guard, kept out of ``nn.Module``'s attribute machinery
(the network holds one instance as ``_eidetic``)."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import torch
from torch import nn

from .graph import UnitGraph
from .guarantee.eras import AlignedInputs, Eras
from .guarantee.guard import Guard
from .guarantee.masks import TaskMasks
from .guarantee.norm import FrozenNorms
from .guarantee.ownership import Ownership
from .inference.routing import Routers

if TYPE_CHECKING:
    from .transaction import Widening


class State:
    """The continual state of a network (kept out of ``nn.Module``'s attribute machinery)."""

    def __init__(self) -> None:
        self.graph: UnitGraph | None = None
        self.layers: dict[str, tuple[nn.Module, object]] = {}
        self.ownership: Ownership | None = None
        self.input_shape: tuple[int, ...] = ()
        self.input_dtype: torch.dtype = torch.float32
        self.frozen_tasks = 0
        self.norms: FrozenNorms | None = None
        self.inputs: AlignedInputs | None = None  # aligned inputs for every layer reading units
        self.routers = Routers()
        self.eras = Eras()
        self.masks = TaskMasks()
        self.guard: Guard | None = None  # the guard in use (the task in training's, between tasks the last)
        self.undo: list[Widening] | None = None  # widenings inside the open transaction
        self.replaced: dict[int, weakref.ref] = {}  # parameters that widen() replaced
        self.initial_sizes: dict[str, int] = {}  # unit groups' sizes at set-up, before any widening
        self.initial_parameters = 0  # the body's parameter entries at set-up

    def restored(self, parameters) -> None:
        """``parameters`` are the network's again (a widening was undone): no longer replaced."""
        for param in parameters:
            ref = self.replaced.get(id(param))
            if ref is not None and ref() is param:
                del self.replaced[id(param)]
