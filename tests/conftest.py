"""Test configuration: Hypothesis profiles and deterministic CPU execution.

The default profile keeps the suite fast enough for CI; run the deeper search with
``pytest --hypothesis-profile=deep`` (or ``HYPOTHESIS_PROFILE=deep pytest``).
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import eidetic.graph.layers
import eidetic.training.scoring

settings.register_profile(
    "default",
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)
settings.register_profile(
    "deep",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

torch.set_num_threads(1)  # tiny models run fastest on one thread


@pytest.fixture
def isolated_registries(monkeypatch):
    """Let a test register layers and importance methods without leaking them to other tests."""
    monkeypatch.setattr(eidetic.graph.layers, "_REGISTRY", dict(eidetic.graph.layers._REGISTRY))
    monkeypatch.setattr(eidetic.training.scoring, "_IMPORTANCE", dict(eidetic.training.scoring._IMPORTANCE))


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=["cpu", "cuda"],
                     help="device for the tests that take the `device` fixture (the property tests of the guarantee, "
                          "recurrent nets and CPG); "
                          "cuda skips them where no CUDA device is present")


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    """The device the property tests run on: ``pytest --device cuda`` on a GPU."""
    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda: no CUDA device here")
    return torch.device(name)
