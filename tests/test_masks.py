"""Task masks, as a property: a task with masks over frozen and own entries computes its logits
with ``W * M`` (equal to a ``torch.func.functional_call`` on the masked weights), every other
task is unchanged, later tasks and widenings leave it unchanged, and entries that every task
reading them masks out can be retrained by a later task without moving any of them.

Run a deeper search with ``pytest tests/test_masks.py --hypothesis-profile=deep``.
"""

from __future__ import annotations

import contextlib
import io
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_widening import LAYOUT_STABLE
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

import eidetic
from eidetic.guarantee.masks import pack, unpack
from eidetic.testing import all_logits, assert_resistance, assert_same_units, optimizers, runs, unit_state

from models import CNN, MLP, input_shape
from strategies import cnn_specs, mlp_specs

examples = settings(max_examples=max(10, settings.default.max_examples // 8))


def random_mask(parameter: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """A binary mask over ``parameter``: element-wise, per kernel (``out x in``) or per unit."""
    if kind == "element" or parameter.dim() == 1:
        shape = parameter.shape
    elif kind == "kernel":
        shape = (*parameter.shape[:2], *[1] * (parameter.dim() - 2))
    else:
        shape = (parameter.shape[0], *[1] * (parameter.dim() - 1))
    return (torch.rand(shape, generator=generator) > 0.4).float()


class RandomMasks:
    """Mixin: the tasks in ``masked`` get random masks over every weight of the body."""

    masked: ClassVar[dict[int, tuple[int, str]]] = {}

    def _begin_task(self, task, head):
        if task not in self.masked:
            return
        seed, kind = self.masked[task]
        generator = torch.Generator().manual_seed(seed)
        for name, parameter in self._body_parameters().items():
            if name.endswith("weight") and parameter.dim() >= 2:
                self._set_mask(name, random_mask(parameter, kind, generator))


def masked_reference(net, x: torch.Tensor, task: int) -> torch.Tensor:
    """Task ``task``'s logits computed by ``functional_call`` on its masked weights."""
    masks = net._eidetic.masks.values(task)
    tensors = {n: (p * masks[n].to(p.dtype) if n in masks else p) for n, p in net.named_parameters()}
    tensors.update(dict(net.named_buffers()))
    was = net.training
    net.eval()
    with torch.no_grad():
        features = functional_call(net, tensors, (x,)).flatten(1)
        out = net.heads.output(features, task)
    net.train(was)
    return out


def run_masked(family, spec, optimizer, plans, seed, masked, widen) -> None:
    torch.manual_seed(seed)
    net = type(f"Masked{family.__name__}", (RandomMasks, family), {"masked": masked})(spec)
    shape = input_shape(family, spec)
    fixed = torch.randn(6, *shape)
    make_optimizer = optimizer.factory() if not optimizer.shared else None
    logits, states = [], []
    for t, plan in enumerate(plans):
        classes = plans[0].classes if spec.get("single_head") else plan.classes
        x = torch.randn(plan.samples, *shape) * (1 + t)
        y = torch.randint(0, classes, (plan.samples,))
        loader = DataLoader(TensorDataset(x, y), batch_size=plan.batch_size, shuffle=True, drop_last=True)
        net.train_task(t, loader, num_classes=classes, optimizer=make_optimizer or optimizer.factory(),
                       epochs=plan.epochs, pruning=plan.pruning, clip_grad_norm=plan.clip, progress=False)
        now = all_logits(net, fixed)
        for k in range(t):
            assert torch.equal(now[k], logits[k]), f"task {k} changed after task {t}"
        if t in masked and not net._eidetic.eras.records:
            assert torch.equal(now[t], masked_reference(net, fixed, t)), f"task {t} does not compute W * M"
        logits.append(now[t])
        for state in states:
            assert_same_units(net, state)
        assert_resistance(net)
        states.append(unit_state(net))
        if t in widen:
            keys = net.graph.keys()
            with contextlib.suppress(eidetic.UnsupportedLayerError):  # a refusal changes nothing
                net.widen({keys[widen[t] % len(keys)]: 2})
            now = all_logits(net, fixed)
            assert all(torch.equal(now[k], logits[k]) for k in range(t + 1)), "a widening moved a task"


masked_tasks = st.dictionaries(st.integers(0, 3), st.tuples(st.integers(0, 99), st.sampled_from(["element", "kernel",
                                                                                                    "unit"])))
widenings = st.dictionaries(st.integers(0, 3), st.integers(0, 5), max_size=2)


@given(spec=mlp_specs(LAYOUT_STABLE), optimizer=optimizers(), plans=runs, seed=st.integers(0, 2**16),
       masked=masked_tasks, widen=widenings)
@examples
def test_masked_mlp_tasks_never_forget(spec, optimizer, plans, seed, masked, widen):
    run_masked(MLP, spec, optimizer, plans, seed, masked, widen)


@given(spec=cnn_specs(), optimizer=optimizers(), plans=runs, seed=st.integers(0, 2**16), masked=masked_tasks,
       widen=widenings)
@examples
def test_masked_cnn_tasks_never_forget(spec, optimizer, plans, seed, masked, widen):
    run_masked(CNN, spec, optimizer, plans, seed, masked, widen)


@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_masks_pack_to_one_bit_per_entry(shape, seed):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.5
    packed = pack(mask)
    assert packed["bits"].dtype == torch.uint8 and packed["bits"].numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack(packed), mask)


class Pair(eidetic.ContinualNetwork):
    def __init__(self, masks: dict | None = None, release: dict | None = None) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 8)
        self.masks, self.release = masks or {}, release or {}

    def forward(self, x):
        return F.relu(self.fc2(F.relu(self.fc1(x))))

    def _begin_task(self, task, head):
        if task in self.masks:
            self._set_mask("fc2.weight", self.masks[task])
        if task in self.release:
            self._release("fc2.weight", self.release[task])


def _data(seed, n=32):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def _train(net, task, **kwargs):
    return net.train_task(task, _data(task), num_classes=3, epochs=2, batch_size=8, progress=False,
                          optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), **kwargs)


def test_released_entries_are_retrained_without_moving_any_task():
    torch.manual_seed(0)
    released = torch.rand(8, 8, generator=torch.Generator().manual_seed(1)) > 0.5
    keep = (~released).float()
    net = Pair(masks={0: keep, 1: keep, 2: torch.ones(8, 8)}, release={2: released})
    x = _data(9)[:][0]
    _train(net, 0, pruning=None)  # task 0 owns every unit
    _train(net, 1, pruning=None)
    before = all_logits(net, x)
    weights = net.fc2.weight.detach().clone()
    _train(net, 2, pruning=None)
    now = net.fc2.weight.detach()
    assert not torch.equal(now[released], weights[released]), "the released entries were not trained"
    assert torch.equal(now[~released], weights[~released])
    assert all(torch.equal(a, b) for a, b in zip(all_logits(net, x)[:2], before))
    owner = net._eidetic.masks.entry_owner["fc2.weight"]
    assert bool((owner[released] == 2).all()) and bool((owner[~released] == 0).all())
    after_2 = all_logits(net, x)
    trained = now.clone()
    _train(net, 3, pruning=None)  # task 2 froze them: task 3 cannot move them
    assert torch.equal(net.fc2.weight.detach(), trained)
    assert all(torch.equal(a, b) for a, b in zip(all_logits(net, x)[:3], after_2))


def test_release_is_refused_while_a_task_reads_the_entries():
    torch.manual_seed(0)
    released = torch.zeros(8, 8, dtype=torch.bool)
    released[0, :4] = True
    net = Pair(masks={0: (~released).float()}, release={2: released})  # task 1 has no mask: it reads them
    _train(net, 0, pruning=None)
    _train(net, 1, pruning=None)
    weights = net.fc2.weight.detach().clone()
    with pytest.raises(eidetic.TaskError, match="task 1 reads them"):
        _train(net, 2, pruning=None)
    assert torch.equal(net.fc2.weight.detach(), weights) and net.num_tasks == 2


def test_a_mask_that_is_not_binary_when_the_task_ends_is_refused():
    torch.manual_seed(0)
    net = Pair(masks={0: torch.full((8, 8), 0.5)})
    with pytest.raises(eidetic.TaskError, match="not binary"):
        _train(net, 0)
    assert net.num_tasks == 0 and not net._eidetic.masks.masks


def test_masked_network_round_trip_and_predict():
    torch.manual_seed(0)
    kernel = (torch.rand(8, 8, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    net = Pair(masks={1: kernel})
    x = _data(9)[:][0]
    _train(net, 0)
    _train(net, 1)
    net.widen({"fc2": 2})
    _train(net, 2)
    before = all_logits(net, x)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    fresh = Pair(masks={1: kernel})
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(all_logits(fresh, x), before))
    packed = fresh.state_dict()["_extra_state"]["masks"]["masks"][1]["fc2.weight"]["bits"]
    assert packed.numel() == -(-fresh.fc2.weight.numel() // 8)  # 1 bit per entry, at the widened size
    fresh.eval()
    with torch.no_grad():
        p = fresh.predict(x)
        rows = (p.task == 1).nonzero().flatten()
        assert len(rows)
        assert torch.equal(p.logits[1][rows], fresh.logits(x[rows], 1))
        assert torch.equal(p.label[rows], fresh.logits(x[rows], 1).argmax(1))


def test_masked_pass_gradients_after_a_widening():
    torch.manual_seed(0)
    net = Pair(masks={0: (torch.rand(8, 8, generator=torch.Generator().manual_seed(5)) > 0.3).float()})
    _train(net, 0)
    net.widen({"fc1": 2, "fc2": 2})
    _train(net, 1)
    net.double().eval()
    x = _data(9, n=3)[:][0].double().requires_grad_()
    assert torch.autograd.gradcheck(lambda inp: net.logits(inp, 0), (x,))


def test_a_masked_task_keeps_its_shape_when_a_covered_layer_is_widened_again():
    """Found by the property above: a layer whose frozen units an older era already covers is
    widened again; the masked task that ended in between must still see it at its own shape."""
    from eidetic.testing import OptimizerChoice, TaskPlan

    spec = {"in": 3, "widths": [4, 7, 2], "bn": True, "act": "tanh", "dropout": 0.25, "single_head": False}
    sgd = OptimizerChoice("SGD", (("lr", 0.01), ("momentum", 0.9), ("nesterov", False), ("weight_decay", 0.0)), False)
    plans = [TaskPlan(classes=2, samples=16, batch_size=8, epochs=1, pruning=None, clip=None)] * 2
    run_masked(MLP, spec, sgd, plans, 0, {1: (1, "unit")}, {0: 0, 1: 0})
