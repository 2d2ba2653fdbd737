"""The guarantee, as a property: whatever the architecture, optimizer, data and pruning, every
earlier task's logits, frozen slices and BatchNorm buffers are bitwise unchanged by later tasks,
and frozen rows never read free or later units.

Run a deeper search with ``pytest tests/test_guarantee.py --hypothesis-profile=deep``, and on a GPU
with ``pytest tests/test_guarantee.py --device cuda`` (skipped where there is none).
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from eidetic.testing import assert_persistent, check_after_task, optimizers, runs

from models import CNN, MLP, ConcatNet, ResNet, input_shape
from strategies import cnn_specs, concat_specs, mlp_specs, resnet_specs

seeds = st.integers(0, 2**16)


def run_and_check(family, spec, optimizer, plans, seed, device=torch.device("cpu")) -> None:
    torch.manual_seed(seed)
    net = family(spec).to(device)
    shape = input_shape(family, spec)
    fixed = torch.randn(6, *shape).to(device)
    make_optimizer = optimizer.factory()
    logits: list[torch.Tensor] = []
    frozen: list[dict] = []
    for t, plan in enumerate(plans):
        classes = plans[0].classes if spec.get("single_head") else plan.classes  # one shared head: same classes
        x = (torch.randn(plan.samples, *shape) * (1 + t)).to(device)
        y = torch.randint(0, classes, (plan.samples,)).to(device)
        # drop_last: a last batch of one sample cannot be trained through BatchNorm
        loader = DataLoader(TensorDataset(x, y), batch_size=plan.batch_size, shuffle=True, drop_last=True)
        net.train_task(t, loader, num_classes=classes, optimizer=make_optimizer, epochs=plan.epochs,
                       pruning=plan.pruning, clip_grad_norm=plan.clip, progress=False)
        check_after_task(net, fixed, t, logits, frozen)

        # A training-mode forward uses frozen statistics for frozen channels and updates none.
        net.train()
        with torch.no_grad():
            train_mode = [net.logits(fixed, j) for j in range(t + 1)]
        for state in frozen:
            assert_persistent(net, state)
        if spec.get("dropout", 0.0) == 0.0:
            for j in range(t + 1):
                assert torch.equal(train_mode[j], logits[j]), f"task {j} differs in training mode"


@given(spec=mlp_specs(), optimizer=optimizers(), plans=runs, seed=seeds)
def test_mlp_never_forgets(spec, optimizer, plans, seed, device):
    """MLPs with one head per task or one shared head (CLNP's single-head setting)."""
    run_and_check(MLP, spec, optimizer, plans, seed, device)


@given(spec=cnn_specs(), optimizer=optimizers(), plans=runs, seed=seeds)
def test_cnn_with_batchnorm_never_forgets(spec, optimizer, plans, seed, device):
    """Conv1d and Conv2d, plain, grouped and depthwise, with BatchNorm1d/2d."""
    run_and_check(CNN, spec, optimizer, plans, seed, device)


@given(spec=resnet_specs(), optimizer=optimizers(), plans=runs, seed=seeds)
def test_residual_net_never_forgets(spec, optimizer, plans, seed, device):
    run_and_check(ResNet, spec, optimizer, plans, seed, device)


@given(spec=concat_specs(), optimizer=optimizers(), plans=runs, seed=seeds)
def test_concatenating_net_never_forgets(spec, optimizer, plans, seed, device):
    run_and_check(ConcatNet, spec, optimizer, plans, seed, device)
