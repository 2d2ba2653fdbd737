"""Hypothesis strategies for the architectures of our test models (tests/models.py).

Optimizers, pruning configurations and task runs are public, in :mod:`eidetic.testing.strategies`.
"""

from __future__ import annotations

from hypothesis import strategies as st

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
