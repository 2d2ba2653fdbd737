"""Checkpoints: a fresh instance loads a state dict saved after any task, answers every task
bitwise identically, and continues training exactly as the original does."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import eidetic
from eidetic.testing import all_logits, optimizers, runs

from fixtures import old_checkpoints
from models import CNN, MLP, ResNet, input_shape
from strategies import cnn_specs, mlp_specs, resnet_specs

families = st.one_of(
    st.tuples(st.just(MLP), mlp_specs()),
    st.tuples(st.just(CNN), cnn_specs()),
    st.tuples(st.just(ResNet), resnet_specs()),
)


def round_trip(net: eidetic.ContinualNetwork, family, spec) -> eidetic.ContinualNetwork:
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    fresh = family(spec)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def loader(plan, shape, t: int, classes: int) -> DataLoader:
    g = torch.Generator().manual_seed(100 + t)
    x = torch.randn(plan.samples, *shape, generator=g)
    y = torch.randint(0, classes, (plan.samples,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=plan.batch_size, shuffle=True, drop_last=True)


def train(net, t, plan, shape, optimizer, seed) -> None:
    torch.manual_seed(seed)
    classes = net.heads.classes[0] if net.heads.shared and net.num_tasks else plan.classes
    net.train_task(t, loader(plan, shape, t, classes), num_classes=classes, optimizer=optimizer,
                   epochs=plan.epochs, pruning=plan.pruning, clip_grad_norm=plan.clip, progress=False)


@given(family_spec=families, optimizer=optimizers(), plans=runs, seed=st.integers(0, 2**16))
def test_save_after_any_task_load_into_a_fresh_instance_and_continue(family_spec, optimizer, plans, seed):
    family, spec = family_spec
    shape = input_shape(family, spec)
    fixed = torch.randn(5, *shape)
    torch.manual_seed(seed)
    net = family(spec)
    for t, plan in enumerate(plans[:-1]):
        train(net, t, plan, shape, optimizer.factory(), seed + t)
    copy = round_trip(net, family, spec)
    for a, b in zip(all_logits(net, fixed), all_logits(copy, fixed), strict=True):
        assert torch.equal(a, b)
    t = len(plans) - 1
    for model in (net, copy):
        train(model, t, plans[-1], shape, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), seed + 99)
    for a, b in zip(all_logits(net, fixed), all_logits(copy, fixed), strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_from_another_architecture_is_refused():
    net = MLP({"in": 4, "widths": [5], "bn": False, "act": "relu"})
    net.train_task(0, TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))), batch_size=8, num_classes=2,
                   optimizer=lambda p: torch.optim.SGD(p, lr=0.1), epochs=1, progress=False)
    other = MLP({"in": 4, "widths": [6], "bn": False, "act": "relu"})
    with pytest.raises(eidetic.CheckpointError, match="different architecture"):
        other.load_state_dict(net.state_dict())
    assert other.graph is None


def test_a_grown_checkpoint_loads_only_into_a_network_built_as_its_own_was():
    """Loading widens a fresh instance to the checkpoint's width, but only one built at the width the
    checkpoint's network was built at: the growth budget counts from there."""
    net = MLP({"in": 4, "widths": [5], "bn": False, "act": "relu"})
    net.train_task(0, TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))), batch_size=8, num_classes=2,
                   optimizer=lambda p: torch.optim.SGD(p, lr=0.1), epochs=1, progress=False)
    net.widen({"fcs.0": 3})
    narrower = MLP({"in": 4, "widths": [3], "bn": False, "act": "relu"})
    with pytest.raises(eidetic.CheckpointError, match=r"built with unit groups \{'fcs.0': 5\}.*this one with "
                                                      r"\{'fcs.0': 3\}"):
        narrower.load_state_dict(net.state_dict())
    assert narrower.graph is None
    same = MLP({"in": 4, "widths": [5], "bn": False, "act": "relu"})
    same.load_state_dict(net.state_dict())
    state = same._eidetic
    assert state.initial_sizes == {"fcs.0": 5} and state.initial_parameters == net._eidetic.initial_parameters
    assert {g.key: g.size for g in same.graph} == {"fcs.0": 8}
    x = torch.randn(6, 4)
    assert torch.equal(same.eval().logits(x, 0), net.eval().logits(x, 0))


def test_an_untrained_checkpoint_loads_into_a_fresh_network():
    net = MLP({"in": 4, "widths": [5], "bn": False, "act": "relu"})
    fresh = MLP({"in": 4, "widths": [5], "bn": False, "act": "relu"})
    fresh.load_state_dict(net.state_dict())
    assert fresh.graph is None


def test_a_deep_copy_trains_on_without_touching_the_original():
    torch.manual_seed(0)
    net = CNN({"channels_in": 1, "size": 4, "layers": [(4, "plain")], "bn": True, "pool": False, "features": 5})
    data = TensorDataset(torch.randn(32, 1, 4, 4), torch.randint(0, 2, (32,)))
    make = lambda p: torch.optim.Adam(p, lr=0.1, weight_decay=0.1)  # noqa: E731
    net.train_task(0, data, batch_size=8, num_classes=2, optimizer=make, epochs=1, progress=False,
                   pruning=eidetic.Pruning(step=0.5, tolerance=0.99, max_steps=1))
    clone = copy.deepcopy(net)
    x = torch.randn(5, 1, 4, 4)
    before = all_logits(net, x)
    clone.train_task(1, data, batch_size=8, num_classes=2, optimizer=make, epochs=2, progress=False)
    assert torch.equal(all_logits(clone, x)[0], before[0])
    assert net.num_tasks == 1 and torch.equal(all_logits(net, x)[0], before[0])


OLD = Path(__file__).parent / "fixtures" / "checkpoints-0.1.0.pt"


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("name", sorted(torch.load(OLD, weights_only=False)["networks"]))
def test_a_checkpoint_written_by_an_earlier_version_loads_bitwise(name):
    """Written by tests/fixtures/old_checkpoints.py at the commit the file records (before the
    network was split into a facade): widened, masked, grown, single-head and recurrent nets."""
    saved = torch.load(OLD, weights_only=False)["networks"][name]
    net = old_checkpoints.build(name)
    net.load_state_dict(saved["state_dict"])
    # Saved in today's format; the Gaussian router's statistics in a newer layout (with the input
    # projection, here the identity): the same numbers, each class one Gaussian.
    state, old = net.state_dict(), saved["state_dict"]
    assert state["_extra_state"].pop("format") >= old["_extra_state"]["format"]
    assert state["_extra_state"].pop("initial_groups") == net._eidetic.initial_sizes  # saved since; not in the old
    gaussian = state["_extra_state"]["routers"].pop("gaussian")
    old_gaussian = old["_extra_state"]["routers"]["gaussian"]
    old = {**old, "_extra_state": {**{k: v for k, v in old["_extra_state"].items() if k != "format"}, "routers": {
        k: v for k, v in old["_extra_state"]["routers"].items() if k != "gaussian"}}}
    assert _same(state, old)
    assert gaussian["projection"]["bound"] is None and gaussian["halves"] == [None] * len(old_gaussian)
    assert _same([{k: v for k, v in t.items() if k != "count"} for t in gaussian["classes"]], old_gaussian)
    net.eval()
    with torch.no_grad():
        for task, logits in enumerate(saved["logits"]):
            assert torch.equal(net.logits(saved["inputs"], task), logits)
        routed = net.predict(saved["inputs"], router="gaussian")  # the default the checkpoint was saved with
    assert torch.equal(routed.task, saved["predict"][0]) and torch.equal(routed.label, saved["predict"][1])
