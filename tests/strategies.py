"""Hypothesis strategies: architectures, optimizers, pruning configurations, task runs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

import eidetic

from models import ACTIVATIONS

width = st.integers(2, 8)


@st.composite
def mlp_specs(draw, activations: tuple[str, ...] = tuple(sorted(ACTIVATIONS))) -> dict:
    return {
        "in": draw(st.integers(3, 10)),
        "widths": draw(st.lists(width, min_size=1, max_size=3)),
        "bn": draw(st.booleans()),
        "act": draw(st.sampled_from(activations)),
        "dropout": draw(st.sampled_from([0.0, 0.25])),
        "single_head": draw(st.booleans()),
    }


@st.composite
def cnn_specs(draw) -> dict:
    layers = draw(st.lists(st.tuples(st.integers(2, 6), st.sampled_from(["plain", "grouped", "depthwise"])),
                           min_size=1, max_size=3))
    return {
        "dims": draw(st.sampled_from([1, 2])),
        "channels_in": draw(st.integers(1, 3)),
        "size": draw(st.sampled_from([4, 6])),
        "layers": layers,
        "bn": draw(st.booleans() | st.just(True)),
        "pool": draw(st.booleans()),
        "features": draw(st.integers(3, 8)),
    }


@st.composite
def resnet_specs(draw) -> dict:
    return {
        "channels_in": draw(st.integers(1, 3)),
        "size": draw(st.sampled_from([4, 6])),
        "stem": draw(st.integers(2, 6)),
        "blocks": draw(st.lists(st.tuples(st.integers(2, 6), st.sampled_from([1, 2])), min_size=1, max_size=2)),
        "head": draw(st.sampled_from(["pool", "flatten"])),
    }


@st.composite
def concat_specs(draw) -> dict:
    return {
        "kind": draw(st.sampled_from(["conv", "linear"])),
        "in": draw(st.integers(2, 5)),
        "size": 4,
        "branches": draw(st.lists(st.integers(2, 5), min_size=2, max_size=3)),
        "after": draw(st.sampled_from(["conv", "flatten"])),
        "features": draw(st.integers(3, 6)),
    }


@dataclass(frozen=True)
class OptimizerChoice:
    """An optimizer class with its keyword arguments, and whether one instance is shared."""

    name: str
    kwargs: tuple
    shared: bool

    def factory(self):
        cls = getattr(torch.optim, self.name)
        kwargs = dict(self.kwargs)
        holder: dict = {}

        def make(params):
            if not self.shared:
                return cls(params, **kwargs)
            if "opt" not in holder:
                holder["opt"] = cls(params, **kwargs)
            return holder["opt"]

        return make


@st.composite
def optimizers(draw) -> OptimizerChoice:
    lr = draw(st.sampled_from([0.01, 0.05, 0.2]))
    decay = draw(st.sampled_from([0.0, 1e-3, 0.1]))
    name = draw(st.sampled_from(["SGD", "Adam", "AdamW", "RMSprop"]))
    if name == "SGD":
        momentum = draw(st.sampled_from([0.0, 0.9]))
        nesterov = momentum > 0 and draw(st.booleans())
        kwargs = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": decay}
    elif name == "RMSprop":
        kwargs = {"lr": lr / 10, "momentum": draw(st.sampled_from([0.0, 0.5])), "weight_decay": decay}
    else:
        kwargs = {"lr": lr / 4, "weight_decay": decay}
    return OptimizerChoice(name, tuple(sorted(kwargs.items())), draw(st.booleans()))


prunings = st.none() | st.builds(
    eidetic.Pruning,
    method=st.sampled_from(["l1", "l2", "taylor", "random"]),
    step=st.sampled_from([0.2, 0.34, 0.5]),
    tolerance=st.sampled_from([0.0, 0.05, 0.5]),
    recovery_epochs=st.integers(0, 1),
    patience=st.integers(0, 1),
    max_steps=st.integers(1, 3),
    score_batches=st.integers(1, 2),
)


@dataclass(frozen=True)
class TaskPlan:
    """One task of a run: its classes, data size, epochs and pruning."""

    classes: int
    samples: int
    batch_size: int
    epochs: int
    pruning: eidetic.Pruning | None
    clip: float | None


task_plans = st.builds(
    TaskPlan,
    classes=st.integers(2, 4),
    samples=st.integers(16, 40),
    batch_size=st.sampled_from([8, 16]),
    epochs=st.integers(1, 2),
    pruning=prunings,
    clip=st.none() | st.just(1.0),
)

runs = st.lists(task_plans, min_size=2, max_size=4)
