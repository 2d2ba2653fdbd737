"""Small networks built from plain specs, shared by the tests.

Each family is a ContinualNetwork subclass whose ``__init__`` takes a spec dict, so that a
fresh instance of the same architecture can be built for checkpoint round trips.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

import eidetic

ACTIVATIONS = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "leaky_relu": F.leaky_relu,
    "gelu": F.gelu,
}


class MLP(eidetic.ContinualNetwork):
    """Linear layers, optional BatchNorm and dropout; ``spec``: in, widths, bn, act, dropout,
    single_head (default False)."""

    def __init__(self, spec: dict) -> None:
        super().__init__(single_head=spec.get("single_head", False))
        self.spec = spec
        sizes = [spec["in"], *spec["widths"]]
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
        self.bns = nn.ModuleList(nn.BatchNorm1d(b) if spec["bn"] else nn.Identity() for b in sizes[1:])
        self.drop = nn.Dropout(spec.get("dropout", 0.0))

    def forward(self, x):
        act = ACTIVATIONS[self.spec["act"]]
        x = x.flatten(1)
        for fc, bn in zip(self.fcs, self.bns):
            x = self.drop(act(bn(fc(x))))
        return x


class CNN(eidetic.ContinualNetwork):
    """Convolutions with BatchNorm (plain, grouped or depthwise), pooling, flatten into Linear.

    ``spec``: dims (1 or 2, default 2), channels_in, size, layers (list of (channels,
    groups_kind)), bn, pool, features.
    """

    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.spec = spec
        dims = spec.get("dims", 2)
        conv_type, bn_type = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
        convs, bns = [], []
        c = spec["channels_in"]
        for out, kind in spec["layers"]:
            if kind == "depthwise":
                out, groups = c, c
            elif kind == "grouped" and c % 2 == 0 and out % 2 == 0:
                groups = 2
            else:
                groups = 1
            convs.append(conv_type(c, out, 3, padding=1, groups=groups, bias=not spec["bn"]))
            bns.append(bn_type(out) if spec["bn"] else nn.Identity())
            c = out
        self.convs, self.bns = nn.ModuleList(convs), nn.ModuleList(bns)
        side = spec["size"] // 2 if spec["pool"] else spec["size"]
        self.fc = nn.Linear(c * side**dims, spec["features"])

    def forward(self, x):
        for conv, bn in zip(self.convs, self.bns):
            x = F.relu(bn(conv(x)))
        if self.spec["pool"]:
            x = F.max_pool1d(x, 2) if self.spec.get("dims", 2) == 1 else F.max_pool2d(x, 2)
        return F.relu(self.fc(x.flatten(1)))


class ResNet(eidetic.ContinualNetwork):
    """A stem and residual blocks with identity or projection (1x1 conv + BN) skips.

    ``spec``: channels_in, stem, blocks (list of (channels, stride)), head ("pool" or "flatten").
    """

    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.spec = spec
        c = spec["stem"]
        self.stem = nn.Conv2d(spec["channels_in"], c, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(c)
        blocks = []
        for out, stride in spec["blocks"]:
            blocks.append(Block(c, out, stride))
            c = out
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = c

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        if self.spec["head"] == "pool":
            return F.adaptive_avg_pool2d(x, 1).flatten(1)
        return F.adaptive_avg_pool2d(x, 2).flatten(1)


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.project = None
        if stride != 1 or c_in != c_out:
            self.project = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        skip = x if self.project is None else self.project(x)
        return F.relu(skip + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class ConcatNet(eidetic.ContinualNetwork):
    """Branches concatenated along channels (conv) or features (Linear), then read on.

    ``spec``: kind ("conv" or "linear"), in, branches (list of widths), after ("conv" or
    "flatten" for conv; ignored for linear), features.
    """

    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.spec = spec
        total = sum(spec["branches"])
        if spec["kind"] == "conv":
            self.branches = nn.ModuleList(nn.Conv2d(spec["in"], w, 3, padding=1) for w in spec["branches"])
            self.bn = nn.BatchNorm2d(total)
            if spec["after"] == "conv":
                self.after = nn.Conv2d(total, spec["features"], 1)
            else:
                self.after = nn.Linear(total * 4, spec["features"])
        else:
            self.branches = nn.ModuleList(nn.Linear(spec["in"], w) for w in spec["branches"])
            self.bn = nn.BatchNorm1d(total)
            self.after = nn.Linear(total, spec["features"])

    def forward(self, x):
        h = torch.cat([branch(x) for branch in self.branches], dim=1)
        h = F.relu(self.bn(h))
        if self.spec["kind"] == "conv":
            if self.spec["after"] == "conv":
                return F.adaptive_avg_pool2d(F.relu(self.after(h)), 1).flatten(1)
            return F.relu(self.after(F.adaptive_avg_pool2d(h, 2).flatten(1)))
        return F.relu(self.after(h))


def input_shape(family: type, spec: dict) -> tuple[int, ...]:
    """Shape of one input sample for a network of ``family`` built from ``spec``."""
    if family is MLP:
        return (spec["in"],)
    if family is ConcatNet and spec["kind"] == "linear":
        return (spec["in"],)
    channels = spec.get("channels_in", spec.get("in"))
    size = spec.get("size", 6)
    return (channels, size) if spec.get("dims", 2) == 1 else (channels, size, size)
