"""``net.compile()``: the body compiled by ``torch.compile`` (in place, so that ``logits``,
``predict`` and ``train_task`` use it). Compiled logits of a finished task stay bitwise identical
from task to task, through pruning, task masks and widening; they are close to the eager ones,
not bitwise equal (the compiler fuses and reorders the arithmetic).

``train_task(..., compile=...)``: the training steps' forward and loss compiled; finished tasks
stay bitwise identical, the gradients are the eager ones, and what cannot be compiled is refused
clearly, with the network rolled back.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import eidetic

from models import CNN, MLP


class Net(eidetic.CPGMixin, eidetic.ContinualNetwork):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn = nn.Linear(10, 12), nn.BatchNorm1d(12)
        self.fc2 = nn.Linear(12, 12)

    def forward(self, x):
        return F.relu(self.fc2(F.relu(self.bn(self.fc1(x)))))


def _logits(net, x):
    net.eval()
    with torch.no_grad():
        return [net.logits(x, k) for k in range(net.num_tasks)]


def test_compiled_logits_of_old_tasks_stay_bitwise_identical():
    torch.manual_seed(0)
    data = [TensorDataset(torch.randn(48, 10), torch.randint(0, 3, (48,))) for _ in range(3)]
    x = torch.randn(8, 10)
    net = Net()
    train = dict(num_classes=3, batch_size=16, epochs=1, progress=False, pruning=eidetic.Pruning(max_steps=1),
                 optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    net.train_task(0, data[0], **train)
    eager = _logits(net, x)
    net.compile()
    compiled = _logits(net, x)
    assert torch.allclose(compiled[0], eager[0], atol=1e-5)  # close, not bitwise: inductor fuses and reorders
    net.train_task(1, data[1], picking=eidetic.Picking(lr=1e-2), **train)  # trains through the compiled body
    after = _logits(net, x)
    assert torch.equal(after[0], compiled[0])
    net.widen({"fc1": 2, "fc2": 2})
    net.train_task(2, data[2], **train)
    final = _logits(net, x)
    assert torch.equal(final[0], compiled[0]) and torch.equal(final[1], after[1])


# ---------------------------------------------------------------- train_task(compile=...)

CPGMLP = type("CPGMLP", (eidetic.CPGMixin, MLP), {})
_MLP = {"in": 6, "widths": [10, 8], "bn": True, "act": "relu"}
_CNN = {"channels_in": 1, "size": 6, "layers": [(4, "plain"), (5, "plain")], "bn": True, "pool": True, "features": 6}


def _train_tasks(net, shape, compile, tasks=3, seed=0, **options):
    """Train ``tasks`` tasks with ``compile=``; after each, every earlier task's eager logits are
    bitwise what they were."""
    torch.manual_seed(seed)
    fixed, before = torch.randn(6, *shape), []
    for t in range(tasks):
        data = TensorDataset(torch.randn(48, *shape) * (1 + t), torch.randint(0, 3, (48,)))
        net.train_task(t, data, batch_size=16, num_classes=3, epochs=2, progress=False, compile=compile,
                       optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
                       pruning=eidetic.Pruning(step=0.3, max_steps=1), **options)
        now = _logits(net, fixed)
        assert all(torch.equal(a, b) for a, b in zip(now, before)), f"an earlier task changed after task {t}"
        before = now
    return net


@pytest.mark.parametrize(("family", "spec", "shape", "options"), [
    (MLP, _MLP, (6,), {}), (CNN, _CNN, (1, 6, 6), {}), (CPGMLP, _MLP, (6,), {"goal": 1.0}),
], ids=["mlp", "cnn", "cpg-growing"])
def test_compiled_training_steps_keep_the_guarantee(family, spec, shape, options):
    """Training steps compiled by torch.compile (aot_eager: dynamo and AOTAutograd without code
    generation, fast to compile) never change a finished task, through pruning, BatchNorm's
    frozen statistics, CPG's picking masks and growth."""
    _train_tasks(family(spec), shape, {"backend": "aot_eager"}, **options)


def test_inductor_compiled_training_keeps_the_guarantee():
    _train_tasks(CNN(_CNN), (1, 6, 6), True, tasks=2)


def test_compiled_steps_compute_the_eager_gradients():
    """One task trained with compiled steps ends where the eager one ends (SGD, same batches),
    up to float rounding: the compiled backward is the gradient of the same forward."""
    def trained(compile):
        torch.manual_seed(5)
        net = MLP(_MLP)
        data = TensorDataset(torch.randn(32, 6), torch.randint(0, 3, (32,)))
        torch.manual_seed(6)
        net.train_task(0, torch.utils.data.DataLoader(data, batch_size=8), num_classes=3, epochs=2, pruning=None,
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1), progress=False, compile=compile)
        return dict(net.named_parameters())

    eager, compiled = trained(False), trained({"backend": "aot_eager"})
    for name, value in eager.items():
        # approximate by nature: the compiled kernels sum in another order than the eager ones
        torch.testing.assert_close(compiled[name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(("compile", "message"), [
    ("yes", "use False, True or a dict"),
    ({"bogus": 1}, r"\['bogus'\] are not torch.compile arguments"),
    ({"backend": "nope"}, "unknown torch.compile backend 'nope'"),
    ({"fullgraph": True, "backend": "aot_eager"}, "could not compile the training step of task 1"),
])
def test_compile_refusals_are_clear_and_change_nothing(compile, message):
    """Bad arguments are refused before training; a step that cannot be compiled whole
    (eidetic's hooks break the graph) rolls the network back."""
    torch.manual_seed(7)
    net = MLP(_MLP)
    data = TensorDataset(torch.randn(32, 6), torch.randint(0, 3, (32,)))
    net.train_task(0, data, batch_size=8, num_classes=3, epochs=1, progress=False,
                   optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    x = torch.randn(5, 6)
    before, state = _logits(net, x), {k: v.clone() for k, v in net.state_dict().items() if torch.is_tensor(v)}
    with pytest.raises(eidetic.TaskError, match=message):
        net.train_task(1, data, batch_size=8, num_classes=3, epochs=1, progress=False, compile=compile,
                       optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    assert net.num_tasks == 1 and torch.equal(_logits(net, x)[0], before[0])
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items() if torch.is_tensor(v))
