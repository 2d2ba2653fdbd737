"""The CPG mixin (compacting, picking, growing), as properties and by example.

Whatever the architecture, the optimizer and the goals (met at once, or impossible so that the
task grows up to its budget), every earlier task's logits, frozen slices and BatchNorm buffers
stay bitwise identical after every later task. Plus: growth happens exactly when the goal is
missed and stops at the budget, the best attempt is kept, a task's picking mask changes only its
own outputs and has the gradient of what the forward computes, masks survive checkpoints bit for
bit, and bad configurations change nothing.

Run a deeper search with ``pytest tests/test_cpg.py --hypothesis-profile=deep``.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from hypothesis import event, given, settings
from hypothesis import strategies as st
from test_recurrent import FEATURES, STEPS, SeqNet, recurrent_specs
from test_widening import _check_unchanged
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

import eidetic
from eidetic.mixins.picking import binarised
from eidetic.testing import all_logits, optimizers, unit_state

from models import CNN, MLP, ResNet, input_shape
from strategies import cnn_specs, mlp_specs, resnet_specs

examples = settings(max_examples=max(10, settings.default.max_examples // 8))  # 18 by default, 250 deep
_CPG = {family: type(f"CPG{family.__name__}", (eidetic.CPGMixin, family), {})
        for family in (MLP, CNN, ResNet, SeqNet)}

goals = st.sampled_from([1.0, 0.0, None])  # impossible (random labels): growth; met at once; none
cpg_tasks = st.lists(st.tuples(goals, st.integers(2, 3), st.sampled_from([1, 2])), min_size=2, max_size=4)
growings = st.just(eidetic.Growing()) | st.builds(eidetic.Growing, step=st.sampled_from([1, 2, 0.5]),
                                                  max_ratio=st.sampled_from([3.0, 1.3]))
pickings = st.none() | st.builds(eidetic.Picking, lr=st.sampled_from([1e-4, 1e-2]))
prunings = st.none() | st.builds(eidetic.Pruning, step=st.sampled_from([0.34, 0.5]), max_steps=st.integers(1, 2),
                                 recovery_epochs=st.integers(0, 1))


def _loader(shape, classes, t, n=24):
    x = torch.randn(n, *shape) * (1 + t)
    return DataLoader(TensorDataset(x, torch.randint(0, classes, (n,))), batch_size=8, shuffle=True)


def cpg_and_check(family, spec, optimizer, tasks, growing, picking, pruning, seed, device=torch.device("cpu")):
    torch.manual_seed(seed)
    net = _CPG[family](spec).to(device)
    shape = (STEPS, FEATURES) if family is SeqNet else input_shape(family, spec)
    fixed = torch.randn(6, *shape).to(device)
    dropout = spec.get("dropout", 0.0) > 0
    make_optimizer = optimizer.factory()
    logits, states = [], []
    for t, (goal, classes, epochs) in enumerate(tasks):
        classes = tasks[0][1] if spec.get("single_head") else classes
        grow = None if optimizer.shared else growing  # one optimizer instance cannot follow growth
        report = net.train_task(t, _loader(shape, classes, t), num_classes=classes, optimizer=make_optimizer,
                                epochs=epochs, goal=goal, growing=grow, picking=picking, pruning=pruning,
                                progress=False)
        assert report.goal == goal and len(report.attempts) >= 1
        if goal == 0.0 or goal is None or grow is None:
            assert report.grown == {} and len(report.attempts) == 1
        event("grew" if report.grown else "attempts > 1, kept the first" if len(report.attempts) > 1 else "one attempt")
        logits.append(all_logits(net, fixed)[t])
        _check_unchanged(net, fixed, logits, states, dropout)
        states.append(unit_state(net))
        body = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("heads."))
        assert body <= growing.max_ratio * net._eidetic.initial_parameters


@given(spec=mlp_specs(), optimizer=optimizers(), tasks=cpg_tasks, growing=growings, picking=pickings,
       pruning=prunings, seed=st.integers(0, 2**16))
@examples
def test_cpg_mlp_never_forgets(spec, optimizer, tasks, growing, picking, pruning, seed, device):
    """Every activation: where growth would change a finished task's bits (sigmoid), it stops instead."""
    cpg_and_check(MLP, spec, optimizer, tasks, growing, picking, pruning, seed, device)


@given(spec=cnn_specs(), optimizer=optimizers(), tasks=cpg_tasks, growing=growings, picking=pickings,
       pruning=prunings, seed=st.integers(0, 2**16))
@examples
def test_cpg_cnn_never_forgets(spec, optimizer, tasks, growing, picking, pruning, seed, device):
    """Groups read by a grouped convolution do not grow; the others do."""
    cpg_and_check(CNN, spec, optimizer, tasks, growing, picking, pruning, seed, device)


@given(spec=resnet_specs(), optimizer=optimizers(), tasks=cpg_tasks, growing=growings, picking=pickings,
       pruning=prunings, seed=st.integers(0, 2**16))
@examples
def test_cpg_residual_net_never_forgets(spec, optimizer, tasks, growing, picking, pruning, seed, device):
    cpg_and_check(ResNet, spec, optimizer, tasks, growing, picking, pruning, seed, device)


@given(spec=recurrent_specs, optimizer=optimizers(), tasks=cpg_tasks, growing=growings, picking=pickings,
       pruning=prunings, seed=st.integers(0, 2**16))
@examples
def test_cpg_recurrent_net_never_forgets(spec, optimizer, tasks, growing, picking, pruning, seed, device):
    """Picking over gate rows and recurrent columns; growth of the hidden size."""
    cpg_and_check(SeqNet, spec, optimizer, tasks, growing, picking, pruning, seed, device)


class Net(eidetic.CPGMixin, eidetic.ContinualNetwork):
    """fc1 -> BN -> ReLU -> fc2 -> ReLU."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.fc1, self.bn = nn.Linear(10, width), nn.BatchNorm1d(width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x):
        return F.relu(self.fc2(F.relu(self.bn(self.fc1(x)))))


def _data(seed, n=48, classes=3):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 10, generator=g), torch.randint(0, classes, (n,), generator=g))


def _train(net, task, **kwargs):
    kwargs.setdefault("optimizer", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    kwargs.setdefault("pruning", eidetic.Pruning(step=0.3, max_steps=2))
    kwargs.setdefault("epochs", 2)
    return net.train_task(task, _data(task), num_classes=3, batch_size=16, progress=False, **kwargs)


def _sizes(net):
    return {g.key: g.size for g in net.graph}


def test_growth_happens_when_the_goal_cannot_be_met(caplog):
    torch.manual_seed(0)
    net = Net()
    _train(net, 0, goal=0.0)
    with caplog.at_level("WARNING", logger="eidetic"):
        report = _train(net, 1, goal=1.0, growing=eidetic.Growing(step=1, max_ratio=1.5))  # random labels
    assert report.goal_met is False and len(report.attempts) > 1
    assert max(report.attempts) < 1.0 and report.attempts[report.kept_attempt] == max(report.attempts)
    assert _sizes(net) == {k: 8 + report.grown.get(k, 0) for k in ("fc1", "fc2")}
    assert report.growth_stop.startswith("budget: the body has") and "1.5x its" in report.growth_stop
    assert f"goal 1.0000 missed (best metric {max(report.attempts):.4f}; {report.growth_stop})" in caplog.text
    assert report.parameters == net.parameter_count()


def test_growth_stops_at_the_budget():
    """With a metric that rises with the width, the last attempt is kept: the widest within the
    budget, where not one more unit of any group fits."""
    torch.manual_seed(0)
    net = Net()
    _train(net, 0, goal=0.0)

    def wider_is_better(logits, targets):
        return torch.tensor(net._eidetic.graph.feature_dim / 100)

    report = _train(net, 1, goal=1.0, metric=wider_is_better, growing=eidetic.Growing(step=1, max_ratio=1.5))
    assert report.kept_attempt == len(report.attempts) - 1 > 0
    assert report.grown["fc2"] == len(report.attempts) - 1 >= report.grown["fc1"] > 0
    assert report.growth_stop.startswith("budget")

    def body():
        return sum(p.numel() for n, p in net.named_parameters() if not n.startswith("heads."))

    assert body() <= 1.5 * net._eidetic.initial_parameters
    for group in ("fc1", "fc2"):  # one more unit of either goes past the budget
        wider = copy.deepcopy(net)
        wider.widen({group: 1})
        assert sum(p.numel() for n, p in wider.named_parameters() if not n.startswith("heads.")) \
            > 1.5 * net._eidetic.initial_parameters


def test_the_first_task_does_not_grow():
    torch.manual_seed(0)
    net = Net()
    report = _train(net, 0, goal=1.0)
    assert report.goal_met is False and report.grown == {} and len(report.attempts) == 1
    assert _sizes(net) == {"fc1": 8, "fc2": 8}


def test_no_growth_when_the_goal_is_met_at_once():
    torch.manual_seed(0)
    net = Net()
    for t in range(3):
        report = _train(net, t, goal=0.0)
        assert report.grown == {} and report.attempts == [report.attempts[0]] and report.goal_met
    assert _sizes(net) == {"fc1": 8, "fc2": 8}


def test_no_growth_without_a_goal():
    torch.manual_seed(0)
    net = Net()
    _train(net, 0)
    report = _train(net, 1, pruning=None)
    assert report.goal is None and report.goal_met is None and report.grown == {} and len(report.attempts) == 1
    assert report.picked and all(0.0 <= f <= 1.0 for f in report.picked.values())


def test_the_best_attempt_is_kept_and_later_growth_undone():
    """A metric that falls as the network grows: the first attempt is the best, so the task
    ends at the original width, with that attempt's function."""
    torch.manual_seed(0)
    net = Net()
    _train(net, 0, goal=0.0)
    params = {}

    def shrinking(logits, targets):
        return torch.tensor(1.0 / net._eidetic.graph.feature_dim)

    def record(p):
        params["n"] = sum(q.numel() for q in p)
        return torch.optim.SGD(p, lr=0.1)

    report = _train(net, 1, goal=1.0, metric=shrinking, optimizer=record, pruning=None,
                    growing=eidetic.Growing(step=2, max_ratio=3.0))
    assert len(report.attempts) > 1 and report.kept_attempt == 0
    assert report.attempts[0] == max(report.attempts) and report.grown == {}
    assert _sizes(net) == {"fc1": 8, "fc2": 8}
    assert report.final_metric == report.attempts[0]
    x = _data(7)[:][0]
    before = all_logits(net, x)
    _train(net, 2, goal=0.0)
    assert all(torch.equal(a, b) for a, b in zip(all_logits(net, x)[:2], before))


class Deep(eidetic.CPGMixin, eidetic.ContinualNetwork):
    """fc1 -> ReLU -> fc2 -> ReLU -> fc3 -> ReLU: growing only fc1 leaves fc3 (and the head's
    bias) the same tensors, trained on by the next attempt."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(10, 6), nn.Linear(6, 6), nn.Linear(6, 6)

    def forward(self, x):
        return F.relu(self.fc3(F.relu(self.fc2(F.relu(self.fc1(x))))))


def test_the_kept_attempt_is_the_function_that_was_measured():
    torch.manual_seed(0)
    net = Deep()
    x = _data(6)[:][0]
    _train(net, 0, goal=0.0)
    ends: list[torch.Tensor] = []

    class AttemptEnd(eidetic.Callback):
        def on_epoch_end(self, task, stats):
            was = net.training
            net.eval()
            with torch.no_grad():
                ends.append(net.logits(x, 1))
            net.train(was)

    def first_is_best(logits, targets):
        return torch.tensor(0.9 if net.fc1.out_features == 6 else 0.5)

    report = _train(net, 1, goal=1.0, metric=first_is_best, pruning=None, epochs=1, callbacks=[AttemptEnd()],
                    growing=eidetic.Growing(step=2, max_ratio=3.0, groups=("fc1",)))
    assert report.kept_attempt == 0 and len(report.attempts) > 1 and len(ends) == len(report.attempts)
    assert net.fc1.out_features == 6
    assert torch.equal(all_logits(net, x)[1], ends[0])


def test_a_task_mask_changes_only_its_own_outputs():
    """Task 1's logits are its head on the body computed with W * M_1 (a functional reference);
    task 0's are the body without any mask, as if task 1 had no mask."""
    torch.manual_seed(0)
    net = Net()
    _train(net, 0, goal=0.0)
    _train(net, 1, picking=eidetic.Picking(lr=0.05), epochs=4)
    masks = net._eidetic.masks.masks[1]
    assert set(masks) == {"fc1.weight", "fc2.weight"} and all(m.dtype == torch.bool for m in masks.values())
    assert any(not m.all() for m in masks.values()), "the picking mask dropped some old weights"
    net.eval()
    x = _data(5)[:][0]
    params = dict(net.named_parameters())
    buffers = dict(net.named_buffers())
    masked = {**params, **{n: params[n] * m.to(params[n].dtype) for n, m in masks.items()}}
    with torch.no_grad():
        features = functional_call(net, {**masked, **buffers}, (x,)).flatten(1)
        assert torch.equal(net.logits(x, 1), net.heads.output(features, 1))
        plain = functional_call(net, {**params, **buffers}, (x,)).flatten(1)
        assert torch.equal(net.logits(x, 0), net.heads.output(plain, 0))
        routed = net.predict(x)  # task 1's masked pass runs for the inputs routed to it
        assert set(routed.task.tolist()) == {0, 1}
        for i, k in enumerate(routed.task.tolist()):
            assert routed.label[i] == net.logits(x, k)[i].argmax()
    x, y = _data(6, n=400)[:]
    evaluation = eidetic.evaluate(net, [TensorDataset(x, y)] * 2, batch_size=50, router=_ToTaskZero())
    for k in (0, 1):  # oracle accuracy is that of the task's own logits, even where the router sent the input
        with torch.no_grad():
            expected = (net.logits(x, k).argmax(dim=1) == y).double().mean().item()
        assert evaluation.tasks[k].oracle == expected
    assert evaluation.tasks[1].routing == 0.0


class _ToTaskZero:
    """A router that sends every input to task 0."""

    def scores(self, features, logits):
        return torch.stack([torch.ones(len(features))] + [torch.zeros(len(features))] * (len(logits) - 1), dim=1)


def test_picking_scores_get_the_straight_through_gradient_and_weights_the_true_one():
    """d loss / d score = d loss / d M on the picked-over entries (the straight-through rule),
    checked against torch.func on the forward the mask computes; d loss / d W of the free rows
    is the exact gradient of that forward."""
    torch.manual_seed(0)
    net = Net()
    _train(net, 0, goal=0.0)
    _train(net, 1, epochs=0, pruning=None, finish=False)
    picker = net._picker
    x, y = _data(3)[:]
    net.eval()  # BatchNorm on its running statistics, so that the reference is a pure function
    name = "fc2.weight"
    scores, entries = picker.scores[name], picker.entries[name]
    scores.requires_grad_()  # the task is open and trained: its scores train again
    net.zero_grad(set_to_none=True)
    loss = F.cross_entropy(net.logits(x, 1), y)
    loss.backward()
    params = {n: p.detach() for n, p in net.named_parameters()}
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    mask = binarised(scores.detach(), entries, picker.picking.threshold)

    def reference(m, w2):
        values = {**params, "fc2.weight": w2 * m}
        values["fc1.weight"] = params["fc1.weight"] * net._eidetic.masks.values(1)["fc1.weight"].detach()
        features = functional_call(net, {**values, **{n: b.clone() for n, b in buffers.items()}}, (x,)).flatten(1)
        return F.cross_entropy(net.heads.output(features, 1), y)

    d_mask, d_weight = torch.func.grad(reference, argnums=(0, 1))(mask, params["fc2.weight"])
    # gradients against a torch.func reference: approximate by nature (other summation order)
    assert torch.allclose(scores.grad, d_mask * entries, rtol=1e-5, atol=1e-7)
    free_rows = ~entries.any(dim=1)
    assert free_rows.any()
    assert torch.allclose(net.fc2.weight.grad[free_rows], d_weight[free_rows], rtol=1e-5, atol=1e-7)
    net.freeze(1)
    net.recycle()


def test_binarised_is_exactly_binary_with_an_identity_gradient():
    scores = torch.tensor([0.01, 0.004, 0.0051, -1.0], requires_grad=True)
    entries = torch.tensor([True, True, True, False])
    mask = binarised(scores, entries, 5e-3)
    assert torch.equal(mask.detach(), torch.tensor([1.0, 0.0, 1.0, 1.0]))
    mask.backward(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert torch.equal(scores.grad, torch.tensor([1.0, 2.0, 3.0, 0.0]))


def test_masks_survive_a_checkpoint_bit_for_bit():
    torch.manual_seed(0)
    net = Net()
    _train(net, 0, goal=0.0)
    _train(net, 1, picking=eidetic.Picking(lr=0.05), epochs=3, goal=1.0, growing=eidetic.Growing(step=2))
    _train(net, 2, picking=eidetic.Picking(lr=0.05), epochs=3)
    x = _data(9)[:][0]
    before = all_logits(net, x)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    fresh = Net()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert _sizes(fresh) == _sizes(net)
    for k in (1, 2):
        for name, mask in net._eidetic.masks.masks[k].items():
            assert torch.equal(fresh._eidetic.masks.masks[k][name], mask)
    assert all(torch.equal(a, b) for a, b in zip(all_logits(fresh, x), before))
    assert fresh.mask_bits() == net.mask_bits() > 0
    _train(fresh, 3, goal=0.0)
    assert all(torch.equal(a, b) for a, b in zip(all_logits(fresh, x)[:3], before))


def _state(net):
    return {k: v.clone() for k, v in net.state_dict().items() if isinstance(v, torch.Tensor)}


def _unchanged(net, saved, tasks):
    now = _state(net)
    assert now.keys() == saved.keys() and all(torch.equal(now[k], saved[k]) for k in saved)
    assert net.num_tasks == tasks


@pytest.mark.parametrize("kwargs, error, match", [
    ({"goal": 1.5}, eidetic.TaskError, r"goal=1.5"),
    ({"goal": -0.1}, eidetic.TaskError, r"\[0, 1\]"),
    ({"picking": "yes"}, eidetic.TaskError, "eidetic.Picking"),
    ({"growing": eidetic.Growing(groups=("nope",))}, eidetic.TaskError, r"Growing\(groups=...\): no unit group"),
    ({"goal": 0.5, "optimizer": "instance"}, eidetic.TaskError, "factory"),
    ({"picking": eidetic.Picking(layers=("bn",))}, eidetic.TaskError, "not layers with weights"),
])
def test_bad_configurations_are_refused_and_change_nothing(kwargs, error, match):
    torch.manual_seed(0)
    net = Net()
    _train(net, 0, goal=0.0)
    saved = _state(net)
    if kwargs.get("optimizer") == "instance":
        kwargs["optimizer"] = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(error, match=match):
        _train(net, 1, **kwargs)
    _unchanged(net, saved, 1)


@pytest.mark.parametrize("kwargs, match", [
    ({"threshold": 0.02}, "below"),
    ({"threshold": float("nan")}, "finite"),
    ({"lr": 0.0}, "positive"),
])
def test_bad_picking_is_refused(kwargs, match):
    with pytest.raises(eidetic.TaskError, match=match):
        eidetic.Picking(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"step": 0}, "positive"),
    ({"step": True}, "positive"),
    ({"max_ratio": 0.9}, ">= 1"),
    ({"groups": "fc1"}, "tuple"),
])
def test_bad_growing_is_refused(kwargs, match):
    with pytest.raises(eidetic.TaskError, match=match):
        eidetic.Growing(**kwargs)


class Grouped(eidetic.CPGMixin, eidetic.ContinualNetwork):
    """A grouped convolution reads conv1's channels: conv1's group cannot grow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, groups=2)

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x)))).mean(dim=(2, 3))


def test_growth_of_a_group_that_cannot_grow_is_refused_and_changes_nothing():
    torch.manual_seed(0)
    net = Grouped()
    data = TensorDataset(torch.randn(16, 1, 5, 5), torch.randint(0, 2, (16,)))
    train = dict(num_classes=2, batch_size=8, epochs=1, progress=False,
                 optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    net.train_task(0, data, goal=0.0, **train)
    saved = _state(net)
    with pytest.raises(eidetic.UnsupportedLayerError, match="module 'conv2'"):
        net.train_task(1, data, goal=1.0, growing=eidetic.Growing(groups=("conv1",)), **train)
    _unchanged(net, saved, 1)
    report = net.train_task(1, data, goal=1.0, **train)  # by default, only what can grow grows
    assert set(report.grown) <= {"conv2"}


def test_a_failing_task_undoes_its_growth():
    torch.manual_seed(0)
    net = Net()
    _train(net, 0, goal=0.0)
    saved = _state(net)

    class Boom(eidetic.Callback):
        def on_epoch_end(self, task, stats):
            if net._eidetic.graph is not None and _sizes(net)["fc1"] > 8:
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _train(net, 1, goal=1.0, growing=eidetic.Growing(step=2), callbacks=[Boom()])
    assert _sizes(net) == {"fc1": 8, "fc2": 8}
    _unchanged(net, saved, 1)
    x = _data(4)[:][0]
    before = all_logits(net, x)
    _train(net, 1, goal=0.0)
    assert torch.equal(all_logits(net, x)[0], before[0])
