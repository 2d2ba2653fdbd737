"""The models by name, their twins with the CPG and LSG mixins, and :func:`build_model`."""

from __future__ import annotations

from ..mixins.cpg import CPGMixin
from ..mixins.lsg import LSGMixin
from ..network import ContinualNetwork
from .base import ZooModel
from .small import MLP, ConvNet, ResNet, RowLSTM
from .vision import VGG16BN, LeNet5, ResNet18, ResNet18CIFAR, ResNet50, ResNet50CIFAR

MODELS: dict[str, type[ZooModel]] = {
    "mlp": MLP, "convnet": ConvNet, "resnet": ResNet, "lstm": RowLSTM, "vgg16-bn": VGG16BN,
    "resnet18-cifar": ResNet18CIFAR, "resnet50-cifar": ResNet50CIFAR, "resnet18": ResNet18, "resnet50": ResNet50,
    "lenet5": LeNet5,
}
"""The models by name."""
IMAGE_MODELS = ("convnet", "resnet", "vgg16-bn", "resnet18-cifar", "resnet50-cifar", "resnet18", "resnet50", "lenet5")
"""The models that read images ``(channels, height, width)`` only."""


class CPGMLP(CPGMixin, MLP):
    """:class:`MLP` with the CPG mixin (compacting, picking, growing)."""


class CPGConvNet(CPGMixin, ConvNet):
    """:class:`ConvNet` with the CPG mixin."""


class CPGResNet(CPGMixin, ResNet):
    """:class:`ResNet` with the CPG mixin."""


class CPGRowLSTM(CPGMixin, RowLSTM):
    """:class:`RowLSTM` with the CPG mixin."""


class CPGVGG16BN(CPGMixin, VGG16BN):
    """:class:`VGG16BN` with the CPG mixin (the CPG paper's CIFAR-100 network)."""


class CPGResNet18CIFAR(CPGMixin, ResNet18CIFAR):
    """:class:`ResNet18CIFAR` with the CPG mixin."""


class CPGResNet50CIFAR(CPGMixin, ResNet50CIFAR):
    """:class:`ResNet50CIFAR` with the CPG mixin."""


class CPGResNet18(CPGMixin, ResNet18):
    """:class:`ResNet18` with the CPG mixin."""


class CPGResNet50(CPGMixin, ResNet50):
    """:class:`ResNet50` with the CPG mixin."""


class CPGLeNet5(CPGMixin, LeNet5):
    """:class:`LeNet5` with the CPG mixin."""


CPG_MODELS: dict[str, type[ZooModel]] = {
    "mlp": CPGMLP, "convnet": CPGConvNet, "resnet": CPGResNet, "lstm": CPGRowLSTM, "vgg16-bn": CPGVGG16BN,
    "resnet18-cifar": CPGResNet18CIFAR, "resnet50-cifar": CPGResNet50CIFAR, "resnet18": CPGResNet18,
    "resnet50": CPGResNet50, "lenet5": CPGLeNet5,
}
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


class LSGVGG16BN(LSGMixin, VGG16BN):
    """:class:`VGG16BN` with the learnable sparse growth mixin (CL-LSG's CIFAR-100 network)."""


class LSGResNet18CIFAR(LSGMixin, ResNet18CIFAR):
    """:class:`ResNet18CIFAR` with the learnable sparse growth mixin."""


class LSGResNet50CIFAR(LSGMixin, ResNet50CIFAR):
    """:class:`ResNet50CIFAR` with the learnable sparse growth mixin."""


class LSGResNet18(LSGMixin, ResNet18):
    """:class:`ResNet18` with the learnable sparse growth mixin."""


class LSGResNet50(LSGMixin, ResNet50):
    """:class:`ResNet50` with the learnable sparse growth mixin."""


class LSGLeNet5(LSGMixin, LeNet5):
    """:class:`LeNet5` with the learnable sparse growth mixin (CL-LSG's CIFAR-100 Split network)."""


LSG_MODELS: dict[str, type[ZooModel]] = {
    "mlp": LSGMLP, "convnet": LSGConvNet, "resnet": LSGResNet, "lstm": LSGRowLSTM, "vgg16-bn": LSGVGG16BN,
    "resnet18-cifar": LSGResNet18CIFAR, "resnet50-cifar": LSGResNet50CIFAR, "resnet18": LSGResNet18,
    "resnet50": LSGResNet50, "lenet5": LSGLeNet5,
}
"""The models by name, with :class:`~eidetic.LSGMixin`."""
METHODS = ("eidetic", "cpg", "lsg")
"""How a model learns: the base class alone, with the CPG mixin, or with the LSG mixin."""
CLASSES = {"eidetic": MODELS, "cpg": CPG_MODELS, "lsg": LSG_MODELS}
"""The model classes by method, then by name."""


def build_model(name: str, input_shape: tuple[int, ...], width: int | None = None,
                method: str = "eidetic") -> ContinualNetwork:
    """A fresh model by name (see :data:`MODELS`) for inputs of ``input_shape``; ``width``
    (``None``: the model's default) sets its size, and ``method`` (``"eidetic"``, ``"cpg"`` or
    ``"lsg"``) whether it learns with :class:`~eidetic.CPGMixin` or :class:`~eidetic.LSGMixin`.

    Example::

        net = build_model("resnet", (1, 8, 8), width=8)
        cpg = build_model("mlp", (1, 8, 8), method="cpg")     # train_task takes goal=, picking=, growing=
        vgg = build_model("vgg16-bn", (3, 32, 32), width=8, method="cpg")
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if width is not None and (isinstance(width, bool) or not isinstance(width, int) or width < 1):
        raise ValueError(f"build_model(width={width!r}): use a positive int, or None for the model's default")
    return CLASSES[method][name](tuple(input_shape), width)
