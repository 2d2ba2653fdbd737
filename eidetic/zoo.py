"""Ready-made networks for the command line and the benchmarks, and checkpoints that rebuild them.

Every model is a :class:`~eidetic.ContinualNetwork` built only from layers eidetic supports
(Linear, Conv2d, BatchNorm, residual additions, pooling, flatten, LSTM), takes the per-sample
input shape and a width, and returns features; ``train_task`` adds the heads.

* :class:`MLP`: Linear + BatchNorm1d + ReLU layers.
* :class:`ConvNet`: two convolution + BatchNorm2d + ReLU + max-pool stages, then a Linear layer.
* :class:`ResNet`: a stem and three residual blocks (one with an identity skip, two with
  projection skips that halve the resolution), global average pooling.
* :class:`RowLSTM`: a two-layer LSTM reading the input row by row, features from its last step.

Each has a twin with :class:`~eidetic.CPGMixin` (compacting, picking, growing): :class:`CPGMLP`,
:class:`CPGConvNet`, :class:`CPGResNet` and :class:`CPGRowLSTM` (``build_model(..., method="cpg")``),
and one with :class:`~eidetic.LSGMixin` (learnable sparse growth): :class:`LSGMLP` and the others
(``method="lsg"``).
A model's ``config`` records its method, so that :func:`load_checkpoint` rebuilds the same class;
checkpoints saved before methods existed load as plain ``"eidetic"`` models.

Example::

    from eidetic import zoo

    net = zoo.build_model("convnet", input_shape=(1, 28, 28), width=16)
    net.train_task(0, loader, num_classes=10, optimizer=make_optimizer, epochs=3)
    zoo.save_checkpoint(net, "model.pt")
    same = zoo.load_checkpoint("model.pt")            # same class, same weights, same tasks
    cpg = zoo.build_model("mlp", (1, 8, 8), method="cpg")   # train_task takes goal=, picking=, growing=
"""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError
from .mixins.cpg import CPGMixin
from .mixins.lsg import LSGMixin
from .network import ContinualNetwork

_CHECKPOINT_FORMAT = 1


class _ZooModel(ContinualNetwork):
    """A ContinualNetwork that remembers how it was built (``config``), for checkpoints; its
    ``"method"`` is ``"cpg"`` for the classes with :class:`~eidetic.CPGMixin`, ``"lsg"`` for those
    with :class:`~eidetic.LSGMixin`, else ``"eidetic"``."""

    name = ""
    default_width = 0

    def __init__(self, input_shape: tuple[int, ...], width: int | None) -> None:
        super().__init__()
        width = self.default_width if width is None else width
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        method = "cpg" if isinstance(self, CPGMixin) else "lsg" if isinstance(self, LSGMixin) else "eidetic"
        self.config = {"model": self.name, "method": method,
                       "input_shape": [int(d) for d in input_shape], "width": width}


class MLP(_ZooModel):
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


class ConvNet(_ZooModel):
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
        channels, height, side = _image_shape(input_shape, minimum=4, model=self.name)
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


class ResNet(_ZooModel):
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
        channels, _, _ = _image_shape(input_shape, minimum=4, model=self.name)
        w = self.config["width"]
        self.stem = nn.Conv2d(channels, w, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(w)
        self.blocks = nn.ModuleList([Block(w, w), Block(w, 2 * w, stride=2), Block(2 * w, 4 * w, stride=2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class RowLSTM(_ZooModel):
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


def _image_shape(shape: tuple[int, ...], minimum: int, model: str) -> tuple[int, int, int]:
    if len(shape) != 3 or min(shape[1:]) < minimum:
        raise ValueError(f"the {model} model needs image inputs (channels, height, width) of at least "
                         f"{minimum}x{minimum}, got {tuple(shape)}")
    return shape[0], shape[1], shape[2]


MODELS: dict[str, type[_ZooModel]] = {"mlp": MLP, "convnet": ConvNet, "resnet": ResNet, "lstm": RowLSTM}
"""The models by name."""


class CPGMLP(CPGMixin, MLP):
    """:class:`MLP` with the CPG mixin (compacting, picking, growing)."""


class CPGConvNet(CPGMixin, ConvNet):
    """:class:`ConvNet` with the CPG mixin."""


class CPGResNet(CPGMixin, ResNet):
    """:class:`ResNet` with the CPG mixin."""


class CPGRowLSTM(CPGMixin, RowLSTM):
    """:class:`RowLSTM` with the CPG mixin."""


CPG_MODELS: dict[str, type[_ZooModel]] = {"mlp": CPGMLP, "convnet": CPGConvNet, "resnet": CPGResNet,
                                          "lstm": CPGRowLSTM}
"""The models by name, with :class:`~eidetic.CPGMixin`."""


class LSGMLP(LSGMixin, MLP):
    """:class:`MLP` with the learnable sparse growth mixin (build it at seed width)."""


class LSGConvNet(LSGMixin, ConvNet):
    """:class:`ConvNet` with the learnable sparse growth mixin."""


class LSGResNet(LSGMixin, ResNet):
    """:class:`ResNet` with the learnable sparse growth mixin."""


class LSGRowLSTM(LSGMixin, RowLSTM):
    """:class:`RowLSTM` with the learnable sparse growth mixin (its two-layer LSTM does not grow:
    see docs/lsg.md)."""


LSG_MODELS: dict[str, type[_ZooModel]] = {"mlp": LSGMLP, "convnet": LSGConvNet, "resnet": LSGResNet,
                                          "lstm": LSGRowLSTM}
"""The models by name, with :class:`~eidetic.LSGMixin`."""
METHODS = ("eidetic", "cpg", "lsg")
"""How a model learns: the base class alone, with the CPG mixin, or with the LSG mixin."""
_CLASSES = {"eidetic": MODELS, "cpg": CPG_MODELS, "lsg": LSG_MODELS}


def build_model(name: str, input_shape: tuple[int, ...], width: int | None = None,
                method: str = "eidetic") -> ContinualNetwork:
    """A fresh model by name (``"mlp"``, ``"convnet"``, ``"resnet"`` or ``"lstm"``) for inputs of
    ``input_shape``; ``width`` (``None``: the model's default) sets its size, and ``method``
    (``"eidetic"``, ``"cpg"`` or ``"lsg"``) whether it learns with :class:`~eidetic.CPGMixin` or
    :class:`~eidetic.LSGMixin`.

    Example::

        net = build_model("resnet", (1, 8, 8), width=8)
        cpg = build_model("mlp", (1, 8, 8), method="cpg")     # train_task takes goal=, picking=, growing=
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return _CLASSES[method][name](tuple(input_shape), width)


def save_checkpoint(net: _ZooModel, path: str | Path) -> Path:
    """Save a zoo model: how to build it and its ``state_dict`` (weights, heads, owners, routers),
    all plain data that loads with ``torch.load(..., weights_only=True)``.

    Example::

        save_checkpoint(net, "runs/x/model.pt")
    """
    if not isinstance(net, _ZooModel):
        raise TypeError(f"save_checkpoint saves eidetic.zoo models; for {type(net).__name__} save "
                        "net.state_dict() with torch.save")
    path = Path(path)
    torch.save({"format": _CHECKPOINT_FORMAT, "config": dict(net.config), "state_dict": net.state_dict()}, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> ContinualNetwork:
    """Rebuild a zoo model saved by :func:`save_checkpoint`, with every task it learnt, as the
    class it was saved from (its ``config["method"]``; ``"eidetic"`` when the checkpoint has none).

    Example::

        net = load_checkpoint("runs/x/model.pt").eval()
        with torch.no_grad():
            prediction = net.predict(x)        # task and class, no task id needed
    """
    saved = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != _CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an eidetic.zoo checkpoint")
    config = dict(saved["config"])
    name, method = config.pop("model"), config.pop("method", "eidetic")  # older checkpoints: no method
    if name not in MODELS:
        raise CheckpointError(f"{path} holds an unknown model {name!r}")
    if method not in METHODS:
        raise CheckpointError(f"{path} holds a model of an unknown method {method!r}; this eidetic knows "
                              f"{', '.join(METHODS)}")
    net = _CLASSES[method][name](tuple(config.pop("input_shape")), **config)
    net.load_state_dict(saved["state_dict"])
    return net
