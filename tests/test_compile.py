"""``net.compile()``: the body compiled by ``torch.compile`` (in place, so that ``logits``,
``predict`` and ``train_task`` use it). Compiled logits of a finished task stay bitwise identical
from task to task, through pruning, task masks and widening; they are close to the eager ones,
not bitwise equal (the compiler fuses and reorders the arithmetic).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import eidetic


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
