"""Learnable sparse growth (LSGMixin): the guarantee as a property, growth, given-back
candidates, released kernels, the Gumbel-sigmoid, checkpoints and refusals."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import event, given
from hypothesis import strategies as st
from test_cpg import examples
from test_recurrent import FEATURES, STEPS, SeqNet, recurrent_specs
from test_widening import _check_unchanged
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import eidetic
from eidetic.mixins.sparse import gumbel_sigmoid, logistic_noise
from eidetic.testing import all_logits, optimizers, unit_state

from models import CNN, MLP, ResNet, input_shape
from strategies import cnn_specs, mlp_specs, resnet_specs

_LSG = {family: type(f"LSG{family.__name__}", (eidetic.LSGMixin, family), {}) for family in (MLP, CNN, ResNet, SeqNet)}

goals = st.sampled_from([1.0, 0.0, None])  # impossible (random labels): growth to the maximum; met at once; none
lsg_tasks = st.lists(st.tuples(goals, st.integers(2, 3), st.sampled_from([1, 2])), min_size=2, max_size=4)
growths = st.builds(eidetic.SparseGrowth, candidates=st.sampled_from([1, 2, 0.5]),
                    max_width=st.sampled_from([2.0, 3.0]), mask_lr=st.sampled_from([5e-4, 1.0]),
                    penalty=st.sampled_from([1e-4, 0.5]), select=st.booleans(), release=st.booleans(),
                    max_ratio=st.sampled_from([1.5, 4.0, 100.0]), first_task=st.booleans())


def _loader(shape, classes, t, n=24):
    x = torch.randn(n, *shape) * (1 + t)
    return DataLoader(TensorDataset(x, torch.randint(0, classes, (n,))), batch_size=8, shuffle=True)


def lsg_and_check(family, spec, optimizer, tasks, growth, seed, device=torch.device("cpu")):
    torch.manual_seed(seed)
    net = _LSG[family](spec).to(device)
    shape = (STEPS, FEATURES) if family is SeqNet else input_shape(family, spec)
    fixed = torch.randn(6, *shape).to(device)
    dropout = spec.get("dropout", 0.0) > 0
    make_optimizer = optimizer.factory()
    seed_sizes, logits, states = None, [], []
    for t, (goal, classes, epochs) in enumerate(tasks):
        classes = tasks[0][1] if spec.get("single_head") else classes
        goal = None if optimizer.shared else goal  # one optimizer instance cannot follow growth
        report = net.train_task(t, _loader(shape, classes, t), num_classes=classes, optimizer=make_optimizer,
                                epochs=epochs, goal=goal, growth=growth, progress=False)
        seed_sizes = seed_sizes or net._eidetic.initial_sizes
        if goal in (0.0, None):
            assert report.grown == {} and len(report.attempts) == 1
        event("grew" if report.grown else "released" if report.released else "neither")
        logits.append(all_logits(net, fixed)[t])
        _check_unchanged(net, fixed, logits, states, dropout)  # entries released and retrained are exempt
        states.append(unit_state(net))
        for group in net.graph:
            assert group.size <= math.floor(growth.max_width * seed_sizes[group.key])
        body = sum(p.numel() for name, p in net.named_parameters() if not name.startswith("heads."))
        assert body <= growth.max_ratio * net._eidetic.initial_parameters  # the budget, never exceeded


@given(spec=mlp_specs(), optimizer=optimizers(), tasks=lsg_tasks, growth=growths, seed=st.integers(0, 2**16))
@examples
def test_lsg_mlp_never_forgets(spec, optimizer, tasks, growth, seed, device):
    """Every activation: where growth would change a finished task's bits (sigmoid), it stops instead."""
    lsg_and_check(MLP, spec, optimizer, tasks, growth, seed, device)


@given(spec=cnn_specs(), optimizer=optimizers(), tasks=lsg_tasks, growth=growths, seed=st.integers(0, 2**16))
@examples
def test_lsg_cnn_never_forgets(spec, optimizer, tasks, growth, seed, device):
    """Kernel masks over convolutions (plain, grouped, depthwise); groups read by a grouped
    convolution do not grow."""
    lsg_and_check(CNN, spec, optimizer, tasks, growth, seed, device)


@given(spec=resnet_specs(), optimizer=optimizers(), tasks=lsg_tasks, growth=growths, seed=st.integers(0, 2**16))
@examples
def test_lsg_residual_net_never_forgets(spec, optimizer, tasks, growth, seed, device):
    """A residual stream grows with one gate over all its producers."""
    lsg_and_check(ResNet, spec, optimizer, tasks, growth, seed, device)


@given(spec=recurrent_specs, optimizer=optimizers(), tasks=lsg_tasks, growth=growths, seed=st.integers(0, 2**16))
@examples
def test_lsg_recurrent_net_never_forgets(spec, optimizer, tasks, growth, seed, device):
    """Kernel masks over gate rows and recurrent columns; a one-block recurrent layer grows."""
    lsg_and_check(SeqNet, spec, optimizer, tasks, growth, seed, device)


class Net(eidetic.LSGMixin, eidetic.ContinualNetwork):
    """fc1 -> BN -> ReLU -> fc2 -> ReLU, at seed width."""

    def __init__(self, width: int = 2) -> None:
        super().__init__()
        self.fc1, self.bn = nn.Linear(10, width), nn.BatchNorm1d(width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x):
        return F.relu(self.fc2(F.relu(self.bn(self.fc1(x)))))


def _separable(seed, n=96, classes=3):
    """Classes from a fixed random linear map: a wide enough network learns them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    w = torch.randn(10, classes, generator=torch.Generator().manual_seed(100 + seed))
    return TensorDataset(x, (x @ w).argmax(dim=1))


def _train(net, task, data=None, **kwargs):
    kwargs.setdefault("optimizer", lambda p: torch.optim.Adam(p, lr=0.05))
    kwargs.setdefault("epochs", 4)
    return net.train_task(task, data if data is not None else _separable(task), num_classes=3, batch_size=16,
                          progress=False, **kwargs)


def _sizes(net):
    return {g.key: g.size for g in net.graph}


def test_a_seed_too_small_grows_and_stops_once_the_goal_is_met():
    torch.manual_seed(0)
    net = Net(width=1)
    growth = eidetic.SparseGrowth(candidates=4, max_width=40.0, max_ratio=1000.0,  # the width binds, not the budget
                                  first_task=True)
    before = net.parameter_count()
    report = _train(net, 0, goal=0.9, growth=growth)
    assert report.attempts[0] < 0.9 <= report.attempts[-1], report.attempts
    assert report.goal_met and report.grown
    assert all(a < 0.9 for a in report.attempts[:-1])  # it grew only while the goal was missed
    assert _sizes(net)["fc1"] < 40  # and stopped before the maximum width
    assert net.parameter_count() > before + 3 * (1 + 1)  # more than the head it added


def test_a_network_with_no_group_that_can_grow_says_so():
    """A stacked LSTM's units are split in blocks, which growth cannot give back one by one."""
    spec = {"kind": "LSTM", "layers": 2, "bidirectional": False, "hidden": 4, "batch_first": True,
            "packed": False, "read": "last", "embed": 0}
    torch.manual_seed(0)
    net = _LSG[SeqNet](spec)
    for t in range(2):
        report = net.train_task(t, _loader((STEPS, FEATURES), 2, t), num_classes=2, epochs=1, goal=1.0,
                                optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), progress=False)
    assert not report.grown and "no group can grow" in report.growth_stop


def test_a_task_the_seed_can_solve_grows_nothing():
    torch.manual_seed(0)
    net = Net(width=8)
    _train(net, 0, goal=0.0)
    sizes, params = _sizes(net), net.parameter_count()
    report = _train(net, 1, goal=0.0)
    assert report.grown == {} and report.attempts == report.attempts[:1] and report.goal_met
    assert _sizes(net) == sizes and net.parameter_count() == params + 3 * (net.graph.feature_dim + 1)


@pytest.mark.parametrize("penalty, mask_lr", [(50.0, 1.0), (1e-4, 5e-4)])
def test_candidates_whose_gate_closed_leave_no_width_behind(penalty, mask_lr):
    """A strong penalty closes every gate: the network ends at its seed width; a weak one keeps
    them: the width is the seed plus what the report says was grown, to the unit."""
    torch.manual_seed(0)
    net = Net(width=1)
    growth = eidetic.SparseGrowth(candidates=3, max_width=4.0, penalty=penalty, mask_lr=mask_lr,
                                  max_ratio=100.0, first_task=True)  # the width binds, not the budget
    report = _train(net, 0, goal=1.0, growth=growth)
    assert _sizes(net) == {key: 1 + report.grown.get(key, 0) for key in ("fc1", "fc2")}
    if penalty > 1:
        assert report.grown == {} and len(report.attempts) == 2
    else:
        assert report.grown == {"fc1": 3, "fc2": 3}  # one step of 3 reaches the maximum width, 4: all kept
    assert net.parameter_count() == sum(p.numel() for p in Net(width=_sizes(net)["fc1"]).parameters()) \
        + 3 * (_sizes(net)["fc2"] + 1)


class Narrowing(eidetic.ContinualNetwork):
    """Widens the open task by 4 units per layer, closes the gates of two, and gives them back."""

    def __init__(self, width=3, act=F.relu):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(5, width), nn.Linear(width, width), act
        self.outputs = []

    def forward(self, x):
        return self.act(self.fc2(self.act(self.fc1(x))))

    def _learn(self, plan):
        session = super()._learn(plan)
        if self.num_tasks == 2:
            self._widen({"fc1": 4, "fc2": 4})
            gate = torch.ones(self.graph["fc1"].size)
            gate[[3, 5]] = 0  # two of the new units of each layer
            for name in ("fc1", "fc2"):
                self._set_mask(f"{name}.weight", gate[:, None])
                self._set_mask(f"{name}.bias", gate)
            x = torch.randn(7, 5, generator=torch.Generator().manual_seed(3))
            self.eval()
            with torch.no_grad():
                self.outputs.append(self.logits(x, 1))
                kept = {name: ~torch.isin(torch.arange(7), torch.tensor([3, 5])) & (torch.arange(7) >= 3)
                        for name in ("fc1", "fc2")}
                narrow = self._keep_new_units(kept)
                for name in ("fc1", "fc2"):  # the gates, now all 1, narrow with the network
                    self._set_mask(f"{name}.weight", narrow(f"{name}.weight", gate[:, None]))
                    self._set_mask(f"{name}.bias", narrow(f"{name}.bias", gate))
                self.outputs.append(self.logits(x, 1))
            session, _ = plan.build()
        return session


def test_giving_back_candidates_keeps_the_open_task_and_every_finished_one():
    torch.manual_seed(0)
    net = Narrowing()
    x = torch.randn(9, 5)
    data = TensorDataset(torch.randn(32, 5), torch.randint(0, 2, (32,)))
    optimizer = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
    net.train_task(0, data, num_classes=2, optimizer=optimizer, epochs=1, batch_size=8, progress=False)
    before = all_logits(net, x)[0]
    net.train_task(1, data, num_classes=2, optimizer=optimizer, epochs=1, batch_size=8, progress=False,
                   pruning=None)
    assert _sizes(net) == {"fc1": 5, "fc2": 5}  # 3 + the 2 kept of 4
    assert torch.equal(all_logits(net, x)[0], before)
    # The open task computed the same function before and after; the sums are shorter by the two
    # zero terms, which may round their last bit differently: compared to 1e-6, not bitwise.
    torch.testing.assert_close(net.outputs[1], net.outputs[0], rtol=1e-6, atol=1e-6)


def test_released_kernels_are_retrained_and_no_task_moves():
    """Task 0's attentive mask zeroes kernels (a strong penalty); task 1 retrains them."""
    torch.manual_seed(0)
    net = Net(width=6)
    x = _separable(9)[:][0]
    strong = eidetic.SparseGrowth(penalty=0.01, mask_lr=0.1)
    _train(net, 0, growth=strong, pruning=None)  # every unit frozen: only released kernels can move
    mask = net._eidetic.masks.masks[0]["fc2.weight"].expand_as(net.fc2.weight)
    assert not bool(mask.all()), "the attentive mask zeroed no kernel"
    weights, before = net.fc2.weight.detach().clone(), all_logits(net, x)
    report = _train(net, 1, growth=eidetic.SparseGrowth(mask_lr=0.3), pruning=None)
    assert report.released.get("fc2", 0) > 0
    released = net._eidetic.masks.entry_owner["fc2.weight"] == 1
    assert bool(released.any()) and not bool((released & mask).any())
    assert not torch.equal(net.fc2.weight[released], weights[released])
    assert torch.equal(net.fc2.weight[~released], weights[~released])
    assert torch.equal(all_logits(net, x)[0], before[0])
    assert set(report.picked) == {"fc1", "fc2"} and all(0 <= v <= 1 for v in report.picked.values())


def test_logistic_noise_is_a_difference_of_gumbels():
    """Mean 0, variance pi^2/3, and the logistic CDF (Kolmogorov-Smirnov distance below 0.01
    on 200,000 draws; the 99.9% critical value is 0.0044)."""
    torch.manual_seed(0)
    noise = logistic_noise(torch.zeros(200_000, dtype=torch.float64))
    assert abs(noise.mean().item()) < 0.02 and abs(noise.var().item() - math.pi ** 2 / 3) < 0.05
    sorted_noise = noise.sort().values
    empirical = torch.arange(1, len(noise) + 1, dtype=torch.float64) / len(noise)
    assert (torch.sigmoid(sorted_noise) - empirical).abs().max().item() < 0.01


def test_gumbel_sigmoid_is_binary_deterministic_in_evaluation_and_has_the_relaxed_gradient():
    scores = torch.randn(50, dtype=torch.float64, requires_grad=True)
    a, b = gumbel_sigmoid(scores, 0.5, noisy=False), gumbel_sigmoid(scores, 0.5, noisy=False)
    assert torch.equal(a, b) and torch.equal(a.detach(), (scores > 0).double())
    weight = torch.randn(50, dtype=torch.float64)
    torch.manual_seed(1)
    m = gumbel_sigmoid(scores, 0.5, noisy=True)
    assert bool(((m == 0) | (m == 1)).all())
    (grad,) = torch.autograd.grad((m * weight).sum(), scores)
    torch.manual_seed(1)
    noise = logistic_noise(scores.detach())
    soft = lambda s: torch.sigmoid((s + noise) / 0.5)  # noqa: E731
    (expected,) = torch.autograd.grad((soft(scores) * weight).sum(), scores)
    assert torch.equal(grad, expected)
    assert torch.autograd.gradcheck(lambda s: soft(s) * weight, (scores,))


def test_a_checkpoint_loads_into_a_fresh_seed_width_instance():
    torch.manual_seed(0)
    net = Net(width=1)
    grow = eidetic.SparseGrowth(candidates=3, max_width=6.0, max_ratio=100.0,  # the width binds, not the budget
                                first_task=True)
    _train(net, 0, goal=0.9, growth=grow)
    _train(net, 1, goal=0.9, growth=eidetic.SparseGrowth(candidates=3, max_width=6.0, penalty=0.2, mask_lr=0.3,
                                                          max_ratio=100.0))
    _train(net, 2, goal=1.0, growth=grow)
    assert _sizes(net) != {"fc1": 1, "fc2": 1}
    x = _separable(9)[:][0]
    before = all_logits(net, x)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    fresh = Net(width=1)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert _sizes(fresh) == _sizes(net) and fresh.mask_bits() == net.mask_bits() > 0
    for k, masks in net._eidetic.masks.masks.items():
        assert all(torch.equal(fresh._eidetic.masks.masks[k][name], m) for name, m in masks.items())
    for name, owner in net._eidetic.masks.entry_owner.items():
        assert torch.equal(fresh._eidetic.masks.entry_owner[name], owner)
    assert all(torch.equal(a, b) for a, b in zip(all_logits(fresh, x), before))
    _train(fresh, 3, goal=0.9, growth=grow)
    assert all(torch.equal(a, b) for a, b in zip(all_logits(fresh, x)[:3], before))


def _state(net):
    return {k: v.clone() for k, v in net.state_dict().items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("kwargs, match", [
    ({"goal": 1.5}, "goal"),
    ({"growth": eidetic.Growing()}, "SparseGrowth"),
    ({"goal": 0.9, "optimizer": "instance"}, "optimizer instance"),
    ({"precision": "fp16"}, "fp16"),
    ({"goal": 0.9, "growth": eidetic.SparseGrowth(groups=("nope",))}, r"SparseGrowth\(groups=...\): no unit group"),
])
def test_bad_configurations_are_refused_and_change_nothing(kwargs, match):
    torch.manual_seed(0)
    net = Net()
    _train(net, 0)
    saved, sizes = _state(net), _sizes(net)
    if kwargs.get("optimizer") == "instance":
        kwargs["optimizer"] = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(eidetic.TaskError, match=match):
        _train(net, 1, **kwargs)
    now = _state(net)
    assert now.keys() == saved.keys() and all(torch.equal(now[k], saved[k]) for k in saved)
    assert _sizes(net) == sizes and net.num_tasks == 1


@pytest.mark.parametrize("kwargs, match", [
    ({"candidates": 0}, "candidates"),
    ({"candidates": True}, "candidates"),
    ({"penalty": -1.0}, "penalty"),
    ({"temperature": 0.0}, "temperature"),
    ({"mask_lr": float("nan")}, "mask_lr"),
    ({"max_width": 0.5}, "max_width"),
    ({"groups": "fc1"}, "groups"),
])
def test_bad_sparse_growth_is_refused(kwargs, match):
    with pytest.raises(eidetic.TaskError, match=match):
        eidetic.SparseGrowth(**kwargs)


class _Boom(eidetic.Callback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, task, loss):
        self.steps += 1
        if self.steps == 15:  # in the growth stage (2 epochs of 6 steps before it)
            raise RuntimeError("boom")


def test_a_failing_task_undoes_its_growth_and_its_releases():
    torch.manual_seed(0)
    net = Net(width=2)
    _train(net, 0, growth=eidetic.SparseGrowth(penalty=0.2, mask_lr=0.3))
    saved, sizes, masks = _state(net), _sizes(net), dict(net._eidetic.masks.masks)
    with pytest.raises(RuntimeError, match="boom"):
        _train(net, 1, goal=1.0, epochs=2, callbacks=[_Boom()], growth=eidetic.SparseGrowth(max_ratio=100.0))
    now = _state(net)
    assert all(torch.equal(now[k], saved[k]) for k in saved) and now.keys() == saved.keys()
    assert _sizes(net) == sizes and net.num_tasks == 1 and net._eidetic.masks.masks.keys() == masks.keys()
    assert net._eidetic.masks.released == {} and net._eidetic.masks.entry_owner == {}
    _train(net, 1, goal=0.0)  # and the network trains on
