"""Unit importance: small scoring strategies, registered by name.

Each strategy returns, for every unit group, one score per unit; pruning removes the
lowest-scored *alive* units of the task in training (frozen units are never candidates,
whatever the scores say). Built in:

* ``"l1"`` / ``"l2"``: the L1 / L2 norm of the unit's producing weights (the rows of its
  Linear/Conv layers; for a residual stream, of all its producers together).
* ``"taylor"``: first-order Taylor estimate of the loss change when the unit is removed,
  ``|sum of w * dL/dw|`` over the unit's producing parameters, per batch, summed over
  ``score_batches`` batches of training data.
* ``"random"``: uniform random scores (from ``torch``'s global generator).
* ``"activation"`` (CLNP): the mean absolute activity of the unit over ``score_batches``
  batches of training data, as its readers see it (after the activation function): a unit
  that never fires scores 0 and goes first.

Add a strategy with :func:`register_importance`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ..errors import TaskError
from ..graph import FEATURES, Layers, UnitGraph


@dataclass
class ScoringContext:
    """What a strategy may look at.

    Attributes:
        layers: ``{name: (module, spec)}`` of the body.
        graph: the unit table.
        batches: an iterable of ``(inputs, targets)`` batches of the task's training data.
        loss: a function of ``(inputs, targets)`` returning the task's scalar loss.
        features: the body's forward function (inputs to features).
        max_batches: how many batches data-driven strategies should use (``None``: all).
    """

    layers: Layers
    graph: UnitGraph
    batches: Iterable
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    features: Callable[[torch.Tensor], torch.Tensor]
    max_batches: int | None = None

    def limited_batches(self) -> Iterable:
        """The batches, at most ``max_batches`` of them."""
        for i, batch in enumerate(self.batches):
            if self.max_batches is not None and i >= self.max_batches:
                return
            yield batch


class Importance(Protocol):
    """A scoring strategy: ``scores = strategy(context)``, ``{group key: (units,) tensor}``."""

    def __call__(self, context: ScoringContext) -> dict[str, torch.Tensor]: ...


def _per_unit(context: ScoringContext, per_position: Callable[[nn.Module, object, str, int], torch.Tensor | None]
              ) -> dict[str, torch.Tensor]:
    """Sum ``per_position(module, spec, tensor name, dim)`` over each unit's output slots."""
    scores = {g.key: torch.zeros(g.size, dtype=torch.float64) for g in context.graph}
    for group in context.graph:
        for slot in group.outs:
            module, spec = context.layers[slot.module]
            for tensor_name, dim, index, owner in spec.producer_slices(module, slot.index):
                values = per_position(module, spec, tensor_name, dim)
                if values is not None:
                    scores[group.key].index_add_(0, slot.units[owner], values.detach().double().cpu()[index])
    return scores


def _reduce(tensor: torch.Tensor, dim: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    return fn(tensor.movedim(dim, 0).reshape(tensor.shape[dim], -1)).sum(dim=1)


class Magnitude:
    """L-p norm of each unit's producing weights (``spec.score_tensors``)."""

    def __init__(self, p: int) -> None:
        self.p = p

    def __call__(self, context: ScoringContext) -> dict[str, torch.Tensor]:
        def per_position(module, spec, name, dim):
            if not spec.scored(name):
                return None
            return _reduce(getattr(module, name), dim, lambda t: t.abs() ** self.p)

        return {k: v ** (1.0 / self.p) for k, v in _per_unit(context, per_position).items()}


class Taylor:
    """``|sum of w * dL/dw|`` over each unit's producing parameters, per batch, summed."""

    def __call__(self, context: ScoringContext) -> dict[str, torch.Tensor]:
        params = [p for module, _ in context.layers.values() for p in module.parameters(recurse=False)]
        total = {g.key: torch.zeros(g.size, dtype=torch.float64) for g in context.graph}
        for x, y in context.limited_batches():
            for p in params:
                p.grad = None
            context.loss(x, y).backward()

            def per_position(module, spec, name, dim):
                tensor = getattr(module, name)
                if not isinstance(tensor, nn.Parameter) or tensor.grad is None:
                    return None
                return _reduce(tensor * tensor.grad, dim, lambda t: t)

            for key, value in _per_unit(context, per_position).items():
                total[key] += value.abs()
        for p in params:
            p.grad = None
        return total


class Activation:
    """Mean absolute activity of each unit where its readers read it (CLNP)."""

    def __call__(self, context: ScoringContext) -> dict[str, torch.Tensor]:
        readers = {slot.module for group in context.graph for slot in group.ins}
        sums: dict[str, torch.Tensor] = {}
        batches = 0

        def reader(name: str, spec):
            def hook(module, args, output):
                sums[name] = sums.get(name, 0) + spec.input_activity(module, args, output)
            return hook

        hooks = [module.register_forward_hook(reader(name, spec))
                 for name, (module, spec) in context.layers.items() if name in readers]
        try:
            with torch.no_grad():
                for x, _ in context.limited_batches():
                    features = context.features(x).flatten(1).detach().abs().double().mean(dim=0)
                    sums[FEATURES] = sums.get(FEATURES, 0) + features
                    batches += 1
        finally:
            for hook in hooks:
                hook.remove()
        scores = {}
        for group in context.graph:
            total = torch.zeros(group.size, dtype=torch.float64)
            count = torch.zeros(group.size, dtype=torch.float64)
            for slot in group.ins:
                activity = sums[slot.module].cpu()[slot.index] / max(batches, 1)
                total.index_add_(0, slot.units, activity)
                count.index_add_(0, slot.units, torch.ones_like(activity))
            scores[group.key] = total / count.clamp(min=1)
        return scores


class RandomImportance:
    """Uniform random scores."""

    def __call__(self, context: ScoringContext) -> dict[str, torch.Tensor]:
        return {g.key: torch.rand(g.size, dtype=torch.float64) for g in context.graph}


_IMPORTANCE: dict[str, Importance] = {
    "l1": Magnitude(1),
    "l2": Magnitude(2),
    "taylor": Taylor(),
    "random": RandomImportance(),
    "activation": Activation(),
}
_BUILT_IN = frozenset(_IMPORTANCE)


def register_importance(name: str, importance: Importance) -> None:
    """Make ``Pruning(method=name)`` use ``importance``.

    Example::

        class BiasMagnitude:
            def __call__(self, context):
                ...  # return {group key: one score per unit}

        eidetic.register_importance("bias", BiasMagnitude())

    A name of a built-in method is refused; registering a name of your own again replaces it.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_importance(name={name!r}): the name is a non-empty str")
    if not callable(importance):
        raise TypeError(f"register_importance({name!r}, ...): the importance must be callable "
                        f"(context -> {{group key: scores}}), got {type(importance).__name__}")
    if name in _BUILT_IN:
        raise TaskError(f"register_importance({name!r}, ...): {name!r} is a built-in method ({sorted(_BUILT_IN)}); "
                        "register yours under another name")
    _IMPORTANCE[name] = importance


def importance(name: str) -> Importance:
    """The strategy registered as ``name``."""
    try:
        return _IMPORTANCE[name]
    except KeyError:
        raise TaskError(f"unknown pruning method {name!r}; choose one of {sorted(_IMPORTANCE)}") from None


def methods() -> list[str]:
    """Names of the registered strategies."""
    return sorted(_IMPORTANCE)
