"""The seed papers' image networks, built from torchvision's blocks (torchvision is needed).

* :class:`VGG16BN`: VGG16 with BatchNorm for 32x32 inputs, as the CPG and CL-LSG code use it:
  torchvision's configuration ``"D"`` (13 convolutions of 64 to 512 channels, 5 max-pools), each
  3x3 convolution without bias, BatchNorm and ReLU, then two fully connected layers of 4096.
* :class:`ResNet18CIFAR` and :class:`ResNet50CIFAR`: torchvision's ``BasicBlock`` and
  ``Bottleneck`` stages (2-2-2-2 and 3-4-6-3 blocks) behind the low-resolution stem of CIFAR
  networks: one 3x3 convolution of stride 1 and no max-pool, so a 32x32 image keeps its
  resolution into the first stage.
* :class:`ResNet18` and :class:`ResNet50`: the same stages behind torchvision's ImageNet stem
  (a 7x7 convolution of stride 2 and a 3x3 max-pool), for Imagenette.
* :class:`LeNet5`: CL-LSG's LeNet-5, 20-50-800-500: two 5x5 convolutions with ReLU and 2x2
  max-pooling, two fully connected layers.

``width`` scales every layer: it is the first stage's channels (64 in the papers; the ResNets'
later stages have 2, 4 and 8 times as many, VGG's up to 8 times and its fully connected layers
64 times), or LeNet's first convolution (20). Weights are initialised as torchvision does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import ZooModel, image_shape


def _torchvision(model: str):
    try:
        import torchvision.models as models
    except ImportError:
        raise ImportError(f"the {model} model is built from torchvision's classes: pip install torchvision "
                          "(or pip install 'eidetic[examples]')") from None
    return models


def _initialise(module: nn.Module) -> None:
    """torchvision's initialisation: Kaiming-normal (fan out) convolutions, N(0, 0.01) Linear
    layers, BatchNorm at identity, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class VGG16BN(ZooModel):
    """VGG16 with BatchNorm for 32x32 inputs (CPG's and CL-LSG's ``custom_vgg_cifar100``): 13
    bias-free 3x3 convolutions with BatchNorm and ReLU in torchvision's configuration ``"D"``,
    5 max-pools, global average pooling (a no-op at 32x32), and two Linear + ReLU layers of
    ``64 * width`` features (4096 at the papers' width 64).

    Inputs are images of at least 32x32 (five 2x2 max-pools).

    Example::

        net = VGG16BN((3, 32, 32))               # 64..512 channels, 4096 features: 33.6M parameters
        small = VGG16BN((3, 32, 32), width=8)    # 8..64 channels, 512 features
    """

    name = "vgg16-bn"
    default_width = 64

    def __init__(self, input_shape: tuple[int, ...], width: int | None = None) -> None:
        super().__init__(input_shape, width)
        channels, _, _ = image_shape(input_shape, minimum=32, model=self.name)
        w = self.config["width"]
        layers: list[nn.Module] = []
        for v in _torchvision(self.name).vgg.cfgs["D"]:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out = v * w // 64
                layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                           nn.ReLU(inplace=True)]
                channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(channels, 64 * w), nn.ReLU(inplace=True),
                                        nn.Linear(64 * w, 64 * w), nn.ReLU(inplace=True))
        _initialise(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class _TorchvisionResNet(ZooModel):
    """torchvision's ResNet stages of ``block`` (``layers`` blocks per stage, ``width``, 2, 4
    and 8 times ``width`` channels) behind a ``"cifar"`` stem (3x3, stride 1, no max-pool) or an
    ``"imagenet"`` one (7x7, stride 2, 3x3 max-pool); global average pooling to the features."""

    block = ""
    layers: tuple[int, ...] = ()
    stem = ""
    minimum = 8
    default_width = 64

    def __init__(self, input_shape: tuple[int, ...], width: int | None = None) -> None:
        super().__init__(input_shape, width)
        channels, _, _ = image_shape(input_shape, minimum=self.minimum, model=self.name)
        resnet = _torchvision(self.name).resnet
        block = getattr(resnet, self.block)
        w = self.config["width"]
        if self.stem == "cifar":
            self.conv1 = nn.Conv2d(channels, w, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(channels, w, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if self.stem == "imagenet" else None
        inplanes, stages = w, []
        for i, blocks in enumerate(self.layers):
            planes, stride = w * 2 ** i, 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nn.Sequential(resnet.conv1x1(inplanes, planes * block.expansion, stride),
                                           nn.BatchNorm2d(planes * block.expansion))
            stage = [block(inplanes, planes, stride, downsample)]
            inplanes = planes * block.expansion
            stage += [block(inplanes, planes) for _ in range(1, blocks)]
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        _initialise(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class ResNet18CIFAR(_TorchvisionResNet):
    """ResNet-18 for 32x32 inputs: torchvision's ``BasicBlock`` stages (2-2-2-2) behind a 3x3
    stride-1 stem with no max-pool; ``8 * width`` features (512 at width 64, 11.2M parameters).

    Example::

        net = ResNet18CIFAR((3, 32, 32), width=8)   # 8, 16, 32, 64 channels
    """

    name = "resnet18-cifar"
    block, layers, stem = "BasicBlock", (2, 2, 2, 2), "cifar"


class ResNet50CIFAR(_TorchvisionResNet):
    """ResNet-50 for 32x32 inputs (the Eidetic paper's low-resolution ResNet-50): torchvision's
    ``Bottleneck`` stages (3-4-6-3) behind a 3x3 stride-1 stem with no max-pool; ``32 * width``
    features (2048 at width 64, 23.5M parameters).

    Example::

        net = ResNet50CIFAR((3, 32, 32), width=8)
    """

    name = "resnet50-cifar"
    block, layers, stem = "Bottleneck", (3, 4, 6, 3), "cifar"


class ResNet18(_TorchvisionResNet):
    """ResNet-18 with torchvision's ImageNet stem (7x7 stride-2 convolution, 3x3 max-pool), for
    Imagenette; the same layers as ``torchvision.models.resnet18`` without its classifier.

    Example::

        net = ResNet18((3, 224, 224))            # 512 features
    """

    name = "resnet18"
    block, layers, stem = "BasicBlock", (2, 2, 2, 2), "imagenet"


class ResNet50(_TorchvisionResNet):
    """ResNet-50 with torchvision's ImageNet stem, for Imagenette; the layers of
    ``torchvision.models.resnet50`` without its classifier (2048 features).

    Example::

        net = ResNet50((3, 224, 224), width=16)
    """

    name = "resnet50"
    block, layers, stem = "Bottleneck", (3, 4, 6, 3), "imagenet"


class LeNet5(ZooModel):
    """CL-LSG's LeNet-5, 20-50-800-500 at the default width 20: 5x5 convolutions of ``width``
    and ``2.5 * width`` channels, each with ReLU and 2x2 max-pooling, then Linear + ReLU layers
    of ``40 * width`` and ``25 * width`` features.

    Inputs are images of at least 16x16.

    Example::

        net = LeNet5((3, 32, 32))                # 20-50-800-500
    """

    name = "lenet5"
    default_width = 20

    def __init__(self, input_shape: tuple[int, ...], width: int | None = None) -> None:
        super().__init__(input_shape, width)
        channels, height, side = image_shape(input_shape, minimum=16, model=self.name)
        w = self.config["width"]
        second, hidden, features = math.ceil(2.5 * w), 40 * w, 25 * w
        self.conv1 = nn.Conv2d(channels, w, 5)
        self.conv2 = nn.Conv2d(w, second, 5)
        spatial = ((height - 4) // 2 - 4) // 2, ((side - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(second * spatial[0] * spatial[1], hidden)
        self.fc2 = nn.Linear(hidden, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))
