"""The small models: an MLP, a small convolutional network, a small ResNet and a row-reading LSTM.

* :class:`MLP`: Linear + BatchNorm1d + ReLU layers.
* :class:`ConvNet`: two convolution + BatchNorm2d + ReLU + max-pool stages, then a Linear layer.
* :class:`ResNet`: a stem and three residual blocks (one with an identity skip, two with
  projection skips that halve the resolution), global average pooling.
* :class:`RowLSTM`: a two-layer LSTM reading the input row by row, features from its last step.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from .base import ZooModel, image_shape


class MLP(ZooModel):
    """``depth`` hidden layers of ``width`` units: Linear, BatchNorm1d, ReLU; inputs are flattened.

    Example::

        net = MLP((1, 28, 28), width=256)          # 784 -> 256 -> 256 features
    """

    name = "mlp"
    default_width = 256

    def __init__(self, input_shape: tuple[int, ...], width: int | None = None, depth: int = 2) -> None:
        super().__init__(input_shape, width)
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.config["depth"] = depth
        sizes = [math.prod(input_shape)] + [self.config["width"]] * depth
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(sizes))
        self.bns = nn.ModuleList(nn.BatchNorm1d(b) for b in sizes[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for fc, bn in zip(self.fcs, self.bns):
            x = F.relu(bn(fc(x)))
        return x


class ConvNet(ZooModel):
    """Two stages of 3x3 convolution, BatchNorm2d, ReLU and 2x2 max-pooling (``width`` and
    ``2 * width`` channels), then a Linear layer of ``8 * width`` features.

    Inputs are ``(channels, height, width)`` images, at least 4x4.

    Example::

        net = ConvNet((1, 28, 28), width=16)       # 16 and 32 channels, 128 features
    """

    name = "convnet"
    default_width = 16

    def __init__(self, input_shape: tuple[int, ...], width: int | None = None) -> None:
        super().__init__(input_shape, width)
        channels, height, side = image_shape(input_shape, minimum=4, model=self.name)
        w = self.config["width"]
        self.conv1 = nn.Conv2d(channels, w, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * w)
        self.fc = nn.Linear(2 * w * (height // 4) * (side // 4), 8 * w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return F.relu(self.fc(x.flatten(1)))


class Block(nn.Module):
    """A residual block: two 3x3 convolutions with BatchNorm; the skip is the identity when the
    shape is kept, else a 1x1 convolution with BatchNorm (a projection)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.project: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.project = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        skip = x if self.project is None else self.project(x)
        return F.relu(out + skip)


class ResNet(ZooModel):
    """A small ResNet: a 3x3 stem of ``width`` channels, a block with an identity skip, two
    blocks with projection skips (``2 * width`` and ``4 * width`` channels, stride 2), and global
    average pooling to ``4 * width`` features.

    Example::

        net = ResNet((1, 28, 28), width=16)         # 64 features
    """

    name = "resnet"
    default_width = 16

    def __init__(self, input_shape: tuple[int, ...], width: int | None = None) -> None:
        super().__init__(input_shape, width)
        channels, _, _ = image_shape(input_shape, minimum=4, model=self.name)
        w = self.config["width"]
        self.stem = nn.Conv2d(channels, w, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(w)
        self.blocks = nn.ModuleList([Block(w, w), Block(w, 2 * w, stride=2), Block(2 * w, 4 * w, stride=2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class RowLSTM(ZooModel):
    """A ``depth``-layer LSTM of ``width`` hidden units that reads each input as a sequence of
    rows; its last step's output is the features.

    Inputs of shape ``(steps, features)`` are sequences already; an image ``(C, H, W)`` is read
    as ``H`` steps of ``C * W`` pixels.

    Example::

        net = RowLSTM((8, 8), width=64)            # 8 rows of 8 pixels, 64 features
    """

    name = "lstm"
    default_width = 64

    def __init__(self, input_shape: tuple[int, ...], width: int | None = None, depth: int = 2) -> None:
        super().__init__(input_shape, width)
        if len(input_shape) not in (2, 3):
            raise ValueError(f"the lstm model reads sequences (steps, features) or images (channels, height, "
                             f"width), got inputs of shape {tuple(input_shape)}")
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.config["depth"] = depth
        self.steps = input_shape[-2]
        features = math.prod(input_shape) // self.steps
        self.lstm = nn.LSTM(features, self.config["width"], num_layers=depth, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # (N, C, H, W): H rows of C * W pixels
            x = x.permute(0, 2, 1, 3)
        out, _ = self.lstm(x.reshape(x.shape[0], self.steps, -1))
        return out[:, -1]
