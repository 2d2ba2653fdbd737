"""Mixed precision: ``train_task(..., precision="bf16" | "fp16")`` trains under ``torch.autocast``
(fp16 with a gradient scaler). Whatever precision later tasks train in, every earlier task's
outputs in the network's dtype stay bitwise identical: a property over architectures, optimizers,
pruning and the precision of each task. Plus refusals, and the CUDA run when a GPU is present.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_widening import _check_unchanged
from torch.utils.data import DataLoader, TensorDataset

import eidetic
from eidetic.testing import OptimizerChoice, all_logits, optimizers, prunings, unit_state

from models import CNN, MLP, input_shape
from strategies import cnn_specs, mlp_specs

examples = settings(max_examples=max(10, settings.default.max_examples // 8))  # 18 by default, 250 deep
precisions = st.lists(st.sampled_from(["bf16", "fp16", None]), min_size=2, max_size=3)


def _loader(shape, classes, t, n=24):
    x = torch.randn(n, *shape) * (1 + t)
    return DataLoader(TensorDataset(x, torch.randint(0, classes, (n,))), batch_size=8, shuffle=True)


def train_and_check(family, spec, optimizer, plan, pruning, seed, device="cpu"):
    torch.manual_seed(seed)
    net = family(spec).to(device)
    shape = input_shape(family, spec)
    fixed = torch.randn(6, *shape, device=device)
    make_optimizer = optimizer.factory()
    logits, states = [], []
    for t, precision in enumerate(plan):
        loader = _loader(shape, 3, t)
        report = net.train_task(t, loader, num_classes=3, optimizer=make_optimizer, epochs=1, pruning=pruning,
                                precision=precision, progress=False)
        assert report.final_metric is not None
        logits.append(all_logits(net, fixed)[t])
        assert logits[-1].dtype == torch.float32  # evaluated in the network's dtype
        _check_unchanged(net, fixed, logits, states, spec.get("dropout", 0.0) > 0)
        states.append(unit_state(net))


@given(spec=mlp_specs(), optimizer=optimizers(), plan=precisions, pruning=prunings, seed=st.integers(0, 2**16))
@examples
def test_mixed_precision_mlp_never_forgets(spec, optimizer, plan, pruning, seed):
    train_and_check(MLP, {**spec, "single_head": False}, optimizer, plan, pruning, seed)


@given(spec=cnn_specs(), optimizer=optimizers(), plan=precisions, pruning=prunings, seed=st.integers(0, 2**16))
@examples
def test_mixed_precision_cnn_never_forgets(spec, optimizer, plan, pruning, seed):
    train_and_check(CNN, spec, optimizer, plan, pruning, seed)


def test_training_runs_in_the_requested_precision():
    torch.manual_seed(0)
    net = MLP({"in": 5, "widths": [4], "bn": True, "act": "relu"})
    seen = []
    net.fcs[0].register_forward_hook(lambda module, args, out: seen.append(out.dtype) if module.training else None)
    net.train_task(0, _loader((5,), 3, 0), num_classes=3, optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                   epochs=1, pruning=None, precision="bf16", progress=False, memory=0)
    assert seen and set(seen) == {torch.bfloat16}  # (memory=0: the learned router's fit runs in float32)


def test_an_unknown_precision_is_refused_and_changes_nothing():
    net = MLP({"in": 5, "widths": [4], "bn": False, "act": "relu"})
    with pytest.raises(eidetic.TaskError, match="precision='fp8'"):
        net.train_task(0, _loader((5,), 3, 0), num_classes=3, optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                       epochs=1, precision="fp8", progress=False)
    assert net.num_tasks == 0 and net.graph is None


def test_cpg_picking_under_fp16_is_refused():
    net = type("CPGMLP", (eidetic.CPGMixin, MLP), {})({"in": 5, "widths": [4], "bn": False, "act": "relu"})
    with pytest.raises(eidetic.TaskError, match="bf16"):
        net.train_task(0, _loader((5,), 3, 0), num_classes=3, optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                       epochs=1, precision="fp16", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda_never_forgets(precision):
    spec = {"in": 6, "widths": [8, 8], "bn": True, "act": "relu"}
    choice = OptimizerChoice("AdamW", (("lr", 1e-2),), False)
    train_and_check(MLP, spec, choice, [None, precision, precision], eidetic.Pruning(max_steps=2), 0, device="cuda")
