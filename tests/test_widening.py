"""Widening, as a property: whatever the architecture, the groups widened, the optimizer and the
tasks, widening leaves every finished task's logits, frozen slices and BatchNorm buffers bitwise
unchanged, the new units are free and trained by the next task, and every later task leaves
the earlier ones unchanged too. Plus round trips and refusals.

Run a deeper search with ``pytest tests/test_widening.py --hypothesis-profile=deep``.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import eidetic
from checks import all_logits, assert_resistance, assert_same_units, unit_state
from models import CNN, MLP, ConcatNet, ResNet, input_shape
from strategies import OptimizerChoice, cnn_specs, concat_specs, mlp_specs, optimizers, resnet_specs, runs

seeds = st.integers(0, 2**16)


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
# (sigmoid, SiLU and ELU do not: see test_layout_sensitive_activation_is_refused_or_kept).
LAYOUT_STABLE = ("gelu", "leaky_relu", "relu", "tanh")


@given(spec=mlp_specs(LAYOUT_STABLE), optimizer=optimizers(), plans=runs, seed=seeds, amounts=amounts)
def test_widened_mlp_never_forgets(spec, optimizer, plans, seed, amounts):
    widen_and_check(MLP, spec, optimizer, plans, seed, amounts)


@given(spec=cnn_specs(), optimizer=optimizers(), plans=runs, seed=seeds, amounts=amounts)
def test_widened_cnn_never_forgets(spec, optimizer, plans, seed, amounts):
    """Plain and depthwise convolutions grow; a group read by a grouped convolution is refused."""
    widen_and_check(CNN, spec, optimizer, plans, seed, amounts)


@given(spec=resnet_specs(), optimizer=optimizers(), plans=runs, seed=seeds, amounts=amounts)
def test_widened_residual_net_never_forgets(spec, optimizer, plans, seed, amounts):
    """Widening a residual stream grows its every producer (stem, projections, last BN of each block)."""
    widen_and_check(ResNet, spec, optimizer, plans, seed, amounts)


@given(spec=concat_specs(), optimizer=optimizers(), plans=runs, seed=seeds, amounts=amounts)
def test_widened_concatenation_never_forgets(spec, optimizer, plans, seed, amounts):
    """A widened branch moves every offset after it in the concatenation."""
    widen_and_check(ConcatNet, spec, optimizer, plans, seed, amounts)
