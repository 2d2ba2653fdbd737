"""Widening, as a property: whatever the architecture, the groups widened, the optimizer and the
tasks, widening leaves every finished task's logits, frozen slices and BatchNorm buffers bitwise
unchanged, the new units are free and trained by the next task, and every later task leaves
the earlier ones unchanged too. Plus round trips and refusals.

Run a deeper search with ``pytest tests/test_widening.py --hypothesis-profile=deep``.
"""

from __future__ import annotations

import copy
import io
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_recurrent import SeqNet, recurrent_specs, sequences
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import eidetic
from eidetic.testing import (
    OptimizerChoice,
    all_logits,
    assert_resistance,
    assert_same_units,
    optimizers,
    runs,
    unit_state,
)

from models import CNN, MLP, ConcatNet, ResNet, input_shape
from strategies import cnn_specs, concat_specs, mlp_specs, resnet_specs

seeds = st.integers(0, 2**16)
examples = settings(max_examples=max(10, settings.default.max_examples // 8))  # 18 by default, 250 deep


def _loader(shape, plan, classes, t):
    x = torch.randn(plan.samples, *shape) * (1 + t)
    y = torch.randint(0, classes, (plan.samples,))
    return DataLoader(TensorDataset(x, y), batch_size=plan.batch_size, shuffle=True, drop_last=True)


def _train_mode_logits(net, x, tasks):
    net.train()
    with torch.no_grad():
        return [net.logits(x, k) for k in range(tasks)]


def _check_unchanged(net, fixed, logits, states, dropout):
    now = all_logits(net, fixed)
    for k, before in enumerate(logits):
        assert torch.equal(now[k], before), f"task {k} changed"
    if not dropout:
        for k, before in enumerate(_train_mode_logits(net, fixed, len(logits))):
            assert torch.equal(before, logits[k]), f"task {k} differs in training mode"
    for state in states:
        assert_same_units(net, state)
    assert_resistance(net)


def widen_and_check(family, spec, optimizer: OptimizerChoice, plans, seed, amounts) -> None:
    torch.manual_seed(seed)
    net = family(spec)
    shape = input_shape(family, spec)
    fixed = torch.randn(6, *shape)
    make_optimizer = optimizer.factory()
    dropout = spec.get("dropout", 0.0) > 0
    logits, states = [], []
    widened = False
    for t, plan in enumerate(plans):
        classes = plans[0].classes if spec.get("single_head") else plan.classes
        loader = _loader(shape, plan, classes, t)
        if widened and optimizer.shared:  # the shared optimizer holds the parameters widen() replaced
            with pytest.raises(eidetic.TaskError, match="widen"):
                net.train_task(t, loader, num_classes=classes, optimizer=make_optimizer, epochs=1, progress=False)
            make_optimizer = OptimizerChoice(optimizer.name, optimizer.kwargs, True).factory()
        widened = False
        net.train_task(t, loader, num_classes=classes, optimizer=make_optimizer, epochs=plan.epochs,
                       pruning=plan.pruning, clip_grad_norm=plan.clip, progress=False)
        logits.append(all_logits(net, fixed)[t])
        _check_unchanged(net, fixed, logits, states, dropout)
        states.append(unit_state(net))
        keys = net.graph.keys()
        request = {keys[i % len(keys)]: n for i, n in amounts[t]}
        sizes = {g.key: g.size for g in net.graph}
        try:
            grown = net.widen(request)
        except eidetic.UnsupportedLayerError as error:  # a refusal names a module and changes nothing
            assert "module '" in str(error)
            assert {g.key: g.size for g in net.graph} == sizes
            _check_unchanged(net, fixed, logits, states, dropout)
            continue
        widened = any(request.values())
        assert grown == {k: n + sum(m for key, m in request.items() if key == k) for k, n in sizes.items()}
        _check_unchanged(net, fixed, logits, states, dropout)
        free = net._eidetic.ownership.free_counts()
        assert all(free[k] >= n for k, n in request.items()), "new units must be free"


amounts = st.lists(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3)), max_size=2), min_size=4, max_size=4)


# Activations whose CPU kernels give each element the same bits wherever it sits in the tensor
# (sigmoid, SiLU, ELU and GELU do not: widening under them is refused, see
# test_widening_under_a_layout_sensitive_function_is_refused_and_changes_nothing).
LAYOUT_STABLE = ("leaky_relu", "relu", "tanh")


@given(spec=mlp_specs(LAYOUT_STABLE), optimizer=optimizers(), plans=runs, seed=seeds, amounts=amounts)
@examples
def test_widened_mlp_never_forgets(spec, optimizer, plans, seed, amounts):
    widen_and_check(MLP, spec, optimizer, plans, seed, amounts)


@given(spec=cnn_specs(), optimizer=optimizers(), plans=runs, seed=seeds, amounts=amounts)
@examples
def test_widened_cnn_never_forgets(spec, optimizer, plans, seed, amounts):
    """Plain and depthwise convolutions grow; a group read by a grouped convolution is refused."""
    widen_and_check(CNN, spec, optimizer, plans, seed, amounts)


@given(spec=resnet_specs(), optimizer=optimizers(), plans=runs, seed=seeds, amounts=amounts)
@examples
def test_widened_residual_net_never_forgets(spec, optimizer, plans, seed, amounts):
    """Widening a residual stream grows its every producer (stem, projections, last BN of each block)."""
    widen_and_check(ResNet, spec, optimizer, plans, seed, amounts)


@given(spec=concat_specs(), optimizer=optimizers(), plans=runs, seed=seeds, amounts=amounts)
@examples
def test_widened_concatenation_never_forgets(spec, optimizer, plans, seed, amounts):
    """A widened branch moves every offset after it in the concatenation."""
    widen_and_check(ConcatNet, spec, optimizer, plans, seed, amounts)


class Small(eidetic.ContinualNetwork):
    """conv -> BN -> ReLU -> pool -> conv -> ReLU -> flatten -> Linear."""

    def __init__(self, act=F.relu, view: bool = False) -> None:
        super().__init__()
        self.act, self.view = act, view
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 3 * 3, 6)

    def forward(self, x):
        x = F.max_pool2d(self.act(self.bn1(self.conv1(x))), 2)
        x = self.act(self.conv2(x))
        x = x.view(-1, 36) if self.view else x.flatten(1)
        return self.act(self.fc(x))


def _data(seed, n=24):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def _same_tensors(before: dict, after: dict) -> bool:
    tensors = [k for k, v in before.items() if isinstance(v, torch.Tensor)]
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in tensors)


def _train(net, task, **kwargs):
    kwargs.setdefault("optimizer", lambda p: torch.optim.AdamW(p, lr=1e-2))
    kwargs.setdefault("pruning", eidetic.Pruning(step=0.5, tolerance=0.99, max_steps=1, recovery_epochs=0))
    return net.train_task(task, _data(task), num_classes=3, epochs=1, batch_size=8, progress=False, **kwargs)


def test_widened_checkpoint_loads_into_a_fresh_network_at_the_original_width():
    torch.manual_seed(0)
    net = Small()
    x = _data(9)[:][0]
    _train(net, 0)
    net.widen({"conv1": 3, "fc": 2})
    _train(net, 1)
    net.widen({"conv2": 2})
    before = all_logits(net, x)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    fresh = Small()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert {g.key: g.size for g in fresh.graph} == {g.key: g.size for g in net.graph}
    assert all(torch.equal(a, b) for a, b in zip(all_logits(fresh, x), before))
    _train(fresh, 2)
    assert all(torch.equal(a, b) for a, b in zip(all_logits(fresh, x)[:2], before))


def test_new_units_are_trained_by_the_next_task():
    torch.manual_seed(0)
    net = Small()
    _train(net, 0, pruning=None)  # task 0 keeps every unit: only the new ones are left
    assert net._eidetic.ownership.free_counts()["fc"] == 0
    net.widen({"fc": 3})
    assert net._eidetic.ownership.free_counts()["fc"] == 3
    new_rows = net.fc.weight.detach()[6:].clone()
    _train(net, 1, pruning=None)
    assert not torch.equal(net.fc.weight.detach()[6:], new_rows)
    assert net.capacity().layers[-1].owned[1] == 3


def test_widen_refuses_bad_requests_and_changes_nothing():
    torch.manual_seed(0)
    net = Small()
    _train(net, 0)
    state = copy.deepcopy(net.state_dict())
    for request, error, match in [
        ({"nope": 2}, eidetic.TaskError, "no unit group"),
        ({"fc": -1}, eidetic.TaskError, "int >= 0"),
        (["fc"], TypeError, "dict"),
    ]:
        with pytest.raises(error, match=match):
            net.widen(request)
    assert _same_tensors(state, net.state_dict())
    _train(net, 1, finish=False)
    with pytest.raises(eidetic.TaskError, match="still open"):
        net.widen({"fc": 1})


def test_widen_refuses_a_forward_that_hard_codes_a_width():
    torch.manual_seed(0)
    net = Small(view=True)
    _train(net, 0)
    x = _data(9)[:][0]
    before = all_logits(net, x)
    with pytest.raises(eidetic.GraphError, match="hard-code a width"):
        net.widen({"conv2": 2})
    assert net.conv2.weight.shape[0] == 4 and net.fc.weight.shape[1] == 36
    assert all(torch.equal(a, b) for a, b in zip(all_logits(net, x), before))
    _train(net, 1)  # and the network still trains


def test_widen_refuses_layers_it_cannot_grow():
    class Scaled(nn.Module):
        def __init__(self, n_in, n_out):
            super().__init__()
            self.w = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)

        def forward(self, x):
            return x @ self.w

    eidetic.register_layer(Scaled, eidetic.LayerSpec(out_tensors=(("w", 1),), in_tensor="w", in_dim=0,
                                                     out_unit_dim=-1, in_unit_dim=-1, score_tensors=("w",)))

    class Custom(eidetic.ContinualNetwork):
        def __init__(self):
            super().__init__()
            self.fc, self.scaled = nn.Linear(5, 4), Scaled(4, 3)

        def forward(self, x):
            return self.scaled(F.relu(self.fc(x)))

    class Grouped(eidetic.ContinualNetwork):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 1, groups=2)

        def forward(self, x):
            return self.conv2(F.relu(self.conv1(x))).flatten(1)

    for net, shape, group, match in [(Custom(), (5,), "fc", "module 'scaled' .*size_attributes"),
                                     (Grouped(), (2, 4, 4), "conv1", "module 'conv2' .*grouped convolution")]:
        net.setup(torch.randn(2, *shape))
        with pytest.raises(eidetic.UnsupportedLayerError, match=match):
            net.widen({group: 2})
        assert net.graph[group].size == 4


def test_an_optimizer_instance_holding_replaced_parameters_is_refused():
    torch.manual_seed(0)
    net = Small()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    _train(net, 0, optimizer=optimizer)
    net.widen({"fc": 2})
    with pytest.raises(eidetic.TaskError, match="widen"):
        _train(net, 1, optimizer=optimizer)
    _train(net, 1)  # a factory builds one for the new parameters


SENSITIVE = {"sigmoid": torch.sigmoid, "silu": F.silu, "elu": F.elu, "selu": F.selu, "celu": F.celu,
             "softplus": F.softplus, "mish": F.mish, "gelu": F.gelu, "gelu_tanh": partial(F.gelu, approximate="tanh"),
             "sigmoid_module": nn.Sigmoid(), "silu_module": nn.SiLU(), "gelu_module": nn.GELU()}
STABLE = {"relu": F.relu, "tanh": torch.tanh, "leaky_relu": F.leaky_relu, "hardswish": F.hardswish,
          "hardsigmoid": F.hardsigmoid, "logsigmoid": F.logsigmoid, "relu6": F.relu6}


def _rounds_by_position(fn) -> bool:
    """Whether ``fn`` gives some element other bits when computed in a shorter or shifted tensor."""
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 3
    full = fn(x)
    return any(not torch.equal(fn(x[off:off + n].clone()), full[off:off + n])
               for n in [*range(1, 70), 100, 257, 1000] for off in (0, 1, 3, 7, 13))


@pytest.mark.parametrize("name", sorted(SENSITIVE))
def test_the_layout_sensitive_list_is_what_the_cpu_does(name):
    """Each listed function rounds by position here (so refusing it is needed), and each
    unlisted activation does not (so accepting it is safe)."""
    assert _rounds_by_position(SENSITIVE[name]), f"{name} is listed as layout-sensitive but is not"


@pytest.mark.parametrize("name", sorted(STABLE))
def test_the_unlisted_activations_keep_their_bits_wherever_they_sit(name):
    assert not _rounds_by_position(STABLE[name]), f"{name} rounds by position: add it to LAYOUT_SENSITIVE"


@pytest.mark.parametrize("name", sorted(SENSITIVE))
def test_widening_under_a_layout_sensitive_function_is_refused_and_changes_nothing(name):
    """The refusal does not depend on the probe batch showing a difference: a reshaped input of
    such a function is enough, so no batch can see a changed bit."""
    torch.manual_seed(0)
    net = Small(act=SENSITIVE[name])
    _train(net, 0)
    x = _data(9)[:][0]
    before, sizes, state = all_logits(net, x), {g.key: g.size for g in net.graph}, unit_state(net)
    with pytest.raises(eidetic.GraphError, match="rounds an element differently"):
        net.widen({"fc": 3})
    assert {g.key: g.size for g in net.graph} == sizes
    assert all(torch.equal(a, b) for a, b in zip(all_logits(net, x), before))
    assert_same_units(net, state)


@pytest.mark.parametrize("name", sorted(STABLE))
def test_widening_under_a_layout_stable_function_keeps_every_bit(name):
    torch.manual_seed(0)
    net = Small(act=STABLE[name])
    _train(net, 0)
    x = torch.randn(37, 1, 6, 6)
    before = all_logits(net, x)
    net.widen({"fc": 3, "conv2": 1})
    assert all(torch.equal(a, b) for a, b in zip(all_logits(net, x), before))


class GrowsInsideTask(Small):
    """A mixin-like network that widens from inside the task (as CPG's growing step will)."""

    def _begin_task(self, task, head):
        if task == 1:
            self._widen({"conv2": 2, "fc": 2})


def test_a_failing_task_undoes_a_widening_made_inside_it():
    torch.manual_seed(0)
    net = GrowsInsideTask()
    _train(net, 0)
    x = _data(9)[:][0]
    before, state = all_logits(net, x), copy.deepcopy(net.state_dict())
    sizes = {g.key: g.size for g in net.graph}

    def broken(logits, targets):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _train(net, 1, loss_fn=broken)
    assert {g.key: g.size for g in net.graph} == sizes
    assert _same_tensors(state, net.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(all_logits(net, x), before))
    _train(net, 1)
    assert net.graph["conv2"].size == sizes["conv2"] + 2
    assert torch.equal(all_logits(net, x)[0], before[0])


def test_era_outputs_have_the_gradient_of_what_the_forward_computes():
    """After widening, frozen units' outputs come from the layer at its old shape; autograd
    differentiates that forward (checked against finite differences in double precision)."""
    torch.manual_seed(0)
    net = Small()
    _train(net, 0)
    net.widen({"conv1": 2, "fc": 2})
    _train(net, 1)
    net.double().eval()
    assert net._eidetic.eras.records, "the widened layers must have eras"
    x = _data(9, n=2)[:][0].double().requires_grad_()
    for task in (0, 1):
        assert torch.autograd.gradcheck(lambda inp, k=task: net.logits(inp, k), (x,))


def test_a_layer_computed_in_blocks_has_the_gradient_of_the_whole_layer():
    """Two widenings with frozen units in between: the widened convolution and Linear layer are
    computed in blocks (eras.Blocks), which never read the weights of frozen units on inputs
    added after they froze (those weights are cut to 0). Their outputs and the gradients of their
    inputs and of every weight they read match the whole layer computed in one piece (the sums run
    in another order, so within double-precision rounding); the weights they do not read get no
    gradient; gradcheck confirms the weight gradient by finite differences."""
    from eidetic.graph.layers import substituted
    from eidetic.guarantee.eras import Blocks, paused

    torch.manual_seed(0)
    net = Small()
    _train(net, 0)
    net.widen({"conv1": 2, "fc": 2})
    _train(net, 1)
    net.widen({"conv1": 1, "conv2": 2, "fc": 1})
    net.double().eval()
    x = _data(9, n=3)[:][0].double()
    for name, inputs in (("conv2", torch.randn(3, net.conv2.in_channels, 6, 6)), ("fc", None)):
        layer = getattr(net, name)
        assert isinstance(layer.__dict__.get("forward"), Blocks), f"{name} is not computed in blocks"
        if inputs is None:
            inputs = torch.randn(3, layer.in_features)
        inputs = inputs.double().requires_grad_()
        weight = layer.weight.detach().clone().requires_grad_()

        def blocked(inp, w, layer=layer):
            with substituted(layer, {"weight": w}):
                return layer(inp)

        def whole(inp, w, layer=layer):
            with paused(), substituted(layer, {"weight": w}):
                return layer(inp)

        read = torch.zeros(weight.shape[:2], dtype=torch.bool)
        for step in layer.forward.steps:
            read[step.rows[:, None], step.inputs[None, :]] = True
        read = read.view(*read.shape, *[1] * (weight.dim() - 2)).expand_as(weight)
        assert not read.all() and bool((layer.weight[~read] == 0).all())  # unread: frozen rows' cut entries
        out_blocked, out_whole = blocked(inputs, weight), whole(inputs, weight)
        # approximate by nature: the blocks and the whole layer sum in another order (float64)
        assert torch.allclose(out_blocked, out_whole, rtol=0, atol=1e-12)
        v = torch.randn_like(out_whole)
        (x_blocked, w_blocked) = torch.autograd.grad((out_blocked * v).sum(), (inputs, weight))
        (x_whole, w_whole) = torch.autograd.grad((out_whole * v).sum(), (inputs, weight))
        assert torch.allclose(x_blocked, x_whole, rtol=0, atol=1e-12)
        assert torch.allclose(w_blocked[read], w_whole[read], rtol=0, atol=1e-12)
        assert bool((w_blocked[~read] == 0).all())
        assert torch.autograd.gradcheck(blocked, (inputs[:1].detach().requires_grad_(), weight))
    assert net(x).shape[0] == 3


@given(spec=recurrent_specs, optimizer=optimizers(), plans=runs, seed=seeds, amounts=amounts)
@examples
def test_widened_recurrent_net_never_forgets(spec, optimizer, plans, seed, amounts):
    """LSTM, GRU and RNN, stacked and bidirectional, packed or padded: the hidden size grows by the
    same number of units in every layer and direction; an embedding before it grows too."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = SeqNet(spec)
    fixed = sequences(6, 2, g).tensors[0]
    blocks = spec["layers"] * (2 if spec["bidirectional"] else 1)
    logits, states = [], []
    for t, plan in enumerate(plans[:3]):
        loader = DataLoader(sequences(plan.samples, plan.classes, g), batch_size=plan.batch_size, shuffle=True)
        net.train_task(t, loader, num_classes=plan.classes, optimizer=optimizer.factory(), epochs=plan.epochs,
                       pruning=plan.pruning, clip_grad_norm=plan.clip, progress=False)
        logits.append(all_logits(net, fixed)[t])
        _check_unchanged(net, fixed, logits, states, dropout=False)
        states.append(unit_state(net))
        request = {key: n * blocks if key == "rnn" else n
                   for i, n in amounts[t] for key in [net.graph.keys()[i % len(net.graph)]]}
        grown = net.widen(request)
        assert grown["rnn"] == net.rnn.hidden_size * blocks
        _check_unchanged(net, fixed, logits, states, dropout=False)
