"""Picking: a learnable binary mask over the frozen weights a new task reads (CPG's piggymask).

While task ``k`` trains, every frozen weight entry that its units and head can read (the rows
of frozen units, minus the entries already cut to zero) gets a real-valued score, initialised
at ``init``. Task ``k``'s forward computes with ``W * M``, where ``M`` is 1 where the score is
above ``threshold`` and 0 below it, and 1 on every entry that is not frozen (the task's own
weights are not masked). The scores are trained with a straight-through gradient: the gradient
of the loss with respect to ``M`` is passed to the scores unchanged. Earlier tasks never see
the mask; it is a task mask of the base (:mod:`eidetic.guarantee.masks`), stored at 1 bit per
entry once the task ends.

The forward value is exact: ``M = hard + (s - s.detach()) * entries`` adds a term that is
exactly 0, so the masked weights are ``W`` or ``0`` to the bit, in training as after freezing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import TaskError
from ..guarantee.slices import in_mask, out_mask
from ..training import distributed
from ..training.session import Callback

MaskOptimizer = Callable[[list[torch.Tensor]], torch.optim.Optimizer]


@dataclass(frozen=True)
class Picking:
    """How a task picks the frozen weights it reads (CPG's defaults).

    Args:
        init: the scores' initial value (every old weight starts picked).
        threshold: scores above it pick their weight; must be below ``init``.
        lr: the learning rate of the scores' Adam (used when ``optimizer`` is ``None``).
        optimizer: a factory ``scores -> Optimizer`` for the scores, instead of Adam.
        layers: the layers whose frozen weights are picked (``None``: every layer with weights).

    Example::

        net.train_task(1, loader, num_classes=5, optimizer=make_opt, epochs=10, goal=0.9,
                       picking=eidetic.Picking(lr=1e-3))
    """

    init: float = 1e-2
    threshold: float = 5e-3
    lr: float = 1e-4
    optimizer: MaskOptimizer | None = None
    layers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("init", "threshold", "lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise TaskError(f"Picking({name}={value!r}): use a finite number")
        if not self.threshold < self.init:
            raise TaskError(f"Picking(threshold={self.threshold}, init={self.init}): the threshold must be below "
                            "the scores' initial value, so that a task starts with every old weight picked")
        if self.lr <= 0:
            raise TaskError(f"Picking(lr={self.lr}): the learning rate must be positive")
        if self.layers is not None and isinstance(self.layers, str):
            raise TaskError(f"Picking(layers={self.layers!r}): give a tuple of layer names")

    def build(self, scores: list[torch.Tensor]) -> torch.optim.Optimizer:
        """The scores' optimizer."""
        optimizer = torch.optim.Adam(scores, lr=self.lr) if self.optimizer is None else self.optimizer(scores)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TaskError(f"Picking(optimizer=...) returned {type(optimizer).__name__}, not a torch.optim.Optimizer")
        return optimizer


def binarised(scores: torch.Tensor, entries: torch.Tensor, threshold: float) -> torch.Tensor:
    """``1`` where ``scores > threshold`` or the entry is not picked over, else ``0``, with the
    straight-through gradient to ``scores`` on ``entries`` (the added term is exactly 0)."""
    hard = ((scores > threshold) | ~entries).to(scores.dtype)
    return hard + (scores - scores.detach()) * entries


class Picker:
    """The picking masks of the task in training of network ``net``.

    :meth:`start` gives the open task a mask over every frozen weight tensor it reads; the
    scores train through :attr:`callback`, stepped after each optimizer step. :meth:`save` and
    :meth:`load` keep and put back an attempt's scores (CPG's growth retries).
    """

    def __init__(self, net, picking: Picking) -> None:
        self.net, self.picking = net, picking
        self.scores: dict[str, torch.Tensor] = {}
        self.entries: dict[str, torch.Tensor] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.callback = _StepScores(self)

    def check(self) -> None:
        """Refuse layer names that are not layers with weights."""
        layers = self.net._eidetic.layers
        weighted = [n for n, (m, spec) in layers.items() if spec.input_size(m)]
        unknown = sorted(set(self.picking.layers or ()) - set(weighted))
        if unknown:
            raise TaskError(f"Picking(layers=...) names {unknown}, which are not layers with weights; choose among "
                            f"{weighted}")

    def start(self) -> None:
        """Fresh scores over the frozen entries of the network's present shape, set as the open
        task's masks (a task with no frozen weights to read gets none)."""
        state = self.net._eidetic
        frozen, free = state.ownership.masks("frozen"), state.ownership.masks("free")
        self.scores, self.entries = {}, {}
        for name, (module, spec) in state.layers.items():
            if self.picking.layers is not None and name not in self.picking.layers:
                continue
            rows = out_mask(state.graph, name, frozen, spec.unit_count(module))
            if not spec.input_size(module) or not rows.any():
                continue
            columns = ~in_mask(state.graph, name, free, spec.input_size(module))
            for tensor_name, mask in spec.consumer_entries(module, rows, columns):
                weight = getattr(module, tensor_name)
                entries = mask.to(weight.device).expand_as(weight).clone()
                if entries.any():
                    key = f"{name}.{tensor_name}"
                    self.entries[key] = entries
                    self.scores[key] = torch.full_like(weight, self.picking.init, requires_grad=True)
        self._install()

    def _install(self) -> None:
        threshold = self.picking.threshold
        for key, scores in self.scores.items():
            self.net._set_mask(key, lambda s=scores, e=self.entries[key]: binarised(s, e, threshold))
        self.optimizer = self.picking.build(list(self.scores.values())) if self.scores else None

    def save(self) -> tuple[dict, dict]:
        """The present scores and entries (for :meth:`load`)."""
        return dict(self.scores), dict(self.entries)

    def load(self, saved: tuple[dict, dict]) -> None:
        """Put back what :meth:`save` returned, as the open task's masks."""
        self.scores, self.entries = dict(saved[0]), dict(saved[1])
        self._install()

    def stop(self) -> None:
        """Stop training the scores (the masks stay as they are)."""
        for scores in self.scores.values():
            scores.requires_grad_(False)
        self.optimizer = None

    def picked(self) -> dict[str, float]:
        """Per layer: the fraction of its frozen entries the mask keeps."""
        kept: dict[str, list[int]] = {}
        for key, scores in self.scores.items():
            entries = self.entries[key]
            layer = key.rpartition(".")[0]
            counts = kept.setdefault(layer, [0, 0])
            counts[0] += int((entries & (scores > self.picking.threshold)).sum())
            counts[1] += int(entries.sum())
        return {layer: picked / total for layer, (picked, total) in kept.items()}


class _StepScores(Callback):
    """Steps the scores' optimizer after every optimizer step of the weights."""

    def __init__(self, picker: Picker) -> None:
        self.picker = picker

    def on_step_end(self, task: int, loss: torch.Tensor) -> None:
        optimizer = self.picker.optimizer
        if optimizer is not None:
            distributed.average_gradients(self.picker.scores.values())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
