"""What the rest of eidetic sees of a network: its continual state and a typed view of it.

* :class:`State`: a :class:`~eidetic.ContinualNetwork`'s unit graph, owners, frozen tasks, norms,
  eras, masks, routers and guard, kept out of ``nn.Module``'s attribute machinery (the network
  holds one instance as ``_eidetic``).
* :class:`Network`: the protocol the verbs (``guarantee.lifecycle``, ``guarantee.widening``,
  ``guarantee.transaction``, ``training.task``, ``inference.predict``, ``inference.export``,
  ``checkpoint``) are written against, so that none of them imports ``network.py``.
* Small accessors they share: the network's device, its synthetic example, its body's
  parameters and the features a task sees.

This module sits right above the parts whose types it names and below every verb.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Protocol

import torch
from torch import nn

from .errors import GraphError, TaskError
from .graph import UnitGraph
from .guarantee.eras import AlignedInputs, Eras
from .guarantee.guard import Guard
from .guarantee.masks import TaskMasks
from .guarantee.norm import FrozenNorms
from .guarantee.ownership import Ownership
from .inference.heads import TaskHeads
from .inference.routing import Routers
from .training.session import Plan, TaskSession


class Undo(Protocol):
    """A change made inside the open task's transaction that can be put back (a widening)."""

    def restore(self) -> None: ...


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
        self.undo: list[Undo] | None = None  # widenings inside the open transaction
        self.replaced: dict[int, weakref.ref] = {}  # parameters that widen() replaced
        self.initial_sizes: dict[str, int] = {}  # unit groups' sizes at set-up, before any widening
        self.initial_parameters = 0  # the body's parameter entries at set-up

    def set_up(self, graph: UnitGraph, modules: dict[str, nn.Module], example: torch.Tensor, parameters: int) -> None:
        """Fill in the state of a network just set up: its measured ``graph`` over ``modules``
        (by name), the ``example`` batch it was measured with and its body's ``parameters``."""
        self.graph = graph
        self.layers = {name: (modules[name], spec) for name, spec in graph.layers.items()}
        self.ownership = Ownership(graph)
        self.input_shape = tuple(example.shape[1:])
        self.input_dtype = example.dtype
        self.norms = FrozenNorms(self.layers)
        self.inputs = AlignedInputs(self.layers)
        self.initial_sizes = {g.key: g.size for g in graph}
        self.initial_parameters = parameters
        self.routers.set_up(self.input_shape, self.input_dtype)

    def forget(self) -> None:
        """Take off the hooks this state put on the layers (set-up is being undone)."""
        if self.norms is not None:
            self.norms.remove()
        if self.inputs is not None:
            self.inputs.remove()
        self.eras.remove(self.layers)

    def restored(self, parameters) -> None:
        """``parameters`` are the network's again (a widening was undone): no longer replaced."""
        for param in parameters:
            ref = self.replaced.get(id(param))
            if ref is not None and ref() is param:
                del self.replaced[id(param)]


class Network(Protocol):
    """What the verbs use of a :class:`~eidetic.ContinualNetwork` (``network.py`` implements it)."""

    _eidetic: State
    heads: TaskHeads
    training: bool

    @property
    def num_tasks(self) -> int: ...
    @property
    def open_task(self) -> int | None: ...
    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...
    def forward(self, x: torch.Tensor) -> torch.Tensor: ...
    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...
    def named_parameters(self, *args, **kwargs) -> Iterator[tuple[str, nn.Parameter]]: ...
    def named_modules(self, *args, **kwargs) -> Iterator[tuple[str, nn.Module]]: ...
    def train(self, mode: bool = True) -> nn.Module: ...
    def eval(self) -> nn.Module: ...
    def setup(self, example: torch.Tensor) -> UnitGraph: ...
    def freeze(self, task: int, data=None, *, batch_size: int | None = None, memory: int = 200) -> dict[str, int]: ...
    def recycle(self) -> int: ...
    def _begin_task(self, task: int, head: nn.Linear) -> None: ...
    def _learn(self, plan: Plan) -> TaskSession: ...


def require_graph(net: Network) -> UnitGraph:
    """The network's unit table; raises before the first task."""
    if net._eidetic.graph is None:
        raise GraphError("the network has no unit graph yet: train a task or call setup(example)")
    return net._eidetic.graph


def reference_tensor(net: Network) -> torch.Tensor:
    """The network's first parameter (its device and dtype)."""
    for p in net.parameters():
        return p
    raise GraphError(f"{type(net).__name__} has no parameters to train")


def device(net: Network) -> torch.device:
    return reference_tensor(net).device


def body_parameters(net: Network) -> dict[str, nn.Parameter]:
    """The body's parameters by name (every parameter but the heads')."""
    return {n: p for n, p in net.named_parameters() if not n.startswith("heads.")}


def synthetic_example(shape: tuple[int, ...], dtype: torch.dtype, on: torch.device) -> torch.Tensor:
    """A deterministic batch of two inputs of per-sample ``shape`` and ``dtype``, to set up or probe with."""
    if dtype.is_floating_point:
        gen = torch.Generator().manual_seed(0)
        return torch.randn((2, *shape), generator=gen, dtype=dtype).to(on)
    return torch.zeros((2, *shape), dtype=dtype, device=on)


def input_dtype(net: Network) -> torch.dtype:
    """The dtype the network's inputs have now: for floating inputs, its parameters' (after
    ``net.double()`` or ``net.half()``), else the set-up one (token ids)."""
    dtype = net._eidetic.input_dtype
    return reference_tensor(net).dtype if dtype.is_floating_point else dtype


def example(net: Network) -> torch.Tensor:
    """The synthetic batch of the network's input shape and dtype, on its device."""
    return synthetic_example(net._eidetic.input_shape, input_dtype(net), device(net))


def check_batch(net: Network, x: object, call: str) -> None:
    """Refuse, naming ``call``, what is not a batch of the inputs the network was set up with: a
    tensor of that per-sample shape, of a floating dtype if those were floating (else an integer one)."""
    state = net._eidetic
    shape, dtype = state.input_shape, state.input_dtype
    if not isinstance(x, torch.Tensor) or x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"
        raise TaskError(f"{call}: x must be a batch of inputs of shape (N, {', '.join(map(str, shape))}), the shape "
                        f"the network was set up with; got {got}")
    if x.dtype.is_floating_point != dtype.is_floating_point or x.is_complex():
        raise TaskError(f"{call}: x has dtype {x.dtype}, but the network was set up with {dtype} inputs; "
                        f"pass x.to({dtype})")


def features(net: Network, x: torch.Tensor, task: int) -> torch.Tensor:
    """The body's flattened features as task ``task`` sees them (with its masks, if any)."""
    masks = net._eidetic.masks
    if not masks.has(task):
        return net(x).flatten(1)
    with masks.applied(task, net):
        return net(x).flatten(1)


def forget(net: Network) -> None:
    """Undo set-up: take the state's hooks off the layers and give the network a fresh state."""
    net._eidetic.forget()
    net._eidetic = State()
