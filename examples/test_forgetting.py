"""A user's own networks with their forgetting tests, as they would sit in a project's test suite.

Run them with::

    pip install -c constraints.txt -e ".[testing]"
    pytest examples/test_forgetting.py

Each test trains the network on small random tasks with real pruning and checks, after every
task, that no earlier task moved: its logits, its frozen weights and BatchNorm statistics, its cut
synapses, training mode against evaluation mode. See docs/testing.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import eidetic
from eidetic.testing import OptimizerChoice, assert_never_forgets, never_forgets_property, optimizers

torch.set_num_threads(1)  # small networks train fastest on one thread


class SmallCNN(eidetic.ContinualNetwork):
    """Two convolutions with BatchNorm and pooling, then a Linear layer: 3 x 16 x 16 images."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels)
        self.fc = nn.Linear(2 * channels * 4 * 4, 32)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return F.relu(self.fc(x.flatten(1)))


class CPGSmallCNN(eidetic.CPGMixin, SmallCNN):
    """The same network learning with CPG: picking masks over frozen weights, growth to a goal."""


class TextNet(eidetic.ContinualNetwork):
    """Token ids (a batch of sequences of 10 tokens out of 50) through an Embedding and an LSTM."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.lstm = nn.LSTM(8, 12, batch_first=True, bidirectional=True)

    def forward(self, tokens):
        out, _ = self.lstm(self.embed(tokens))
        return out[:, -1]


def token_ids(generator: torch.Generator, n: int) -> torch.Tensor:
    """The input sampler of TextNet: ``n`` sequences of token ids, drawn with ``generator``."""
    return torch.randint(0, 50, (n, 10), generator=generator)


# The property: runs of 2 to 4 tasks, every pruning method, SGD / Adam / AdamW / RMSprop with weight
# decay, shared instances or not, drawn by Hypothesis.
test_small_cnn_never_forgets = never_forgets_property(SmallCNN, (3, 16, 16))

# The same for token ids, with one optimizer instance shared by every task.
test_text_net_never_forgets = never_forgets_property(TextNet, input_sampler=token_ids,
                                                     optimizers=optimizers(shared=True))


def test_small_cnn_never_forgets_across_widening():
    """One run, with more channels after task 0 and more features after task 1."""
    assert_never_forgets(SmallCNN, (3, 16, 16), tasks=3, widen={0: {"conv1": 4}, 1: {"fc": 8}})


def test_cpg_small_cnn_never_forgets_while_it_grows():
    """Random labels never reach the goal, so every task after the first grows the network."""
    adam = OptimizerChoice("Adam", (("lr", 0.01),), shared=False)
    net = assert_never_forgets(CPGSmallCNN, (3, 16, 16), tasks=3, optimizers=adam,
                               train_kwargs={"goal": 1.0, "growing": eidetic.Growing(step=2, max_ratio=1.5)})
    assert net.graph["conv1"].size > 8


def test_small_cnn_with_its_own_data():
    """Your own input distribution: here, images in [0, 1]."""
    assert_never_forgets(SmallCNN, input_sampler=lambda g, n: torch.rand(n, 3, 16, 16, generator=g), seed=1)
