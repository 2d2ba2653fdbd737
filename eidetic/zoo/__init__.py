"""Ready-made networks for the command line and the benchmarks, and checkpoints that rebuild them.

Every model is a :class:`~eidetic.ContinualNetwork` built only from layers eidetic supports
(Linear, Conv2d, BatchNorm, residual additions, pooling, flatten, LSTM), takes the per-sample
input shape and a width, and returns features; ``train_task`` adds the heads.

Small models (:mod:`~eidetic.zoo.small`):

* :class:`MLP` (``"mlp"``): Linear + BatchNorm1d + ReLU layers.
* :class:`ConvNet` (``"convnet"``): two convolution + BatchNorm2d + ReLU + max-pool stages, then
  a Linear layer.
* :class:`ResNet` (``"resnet"``): a stem and three residual blocks, global average pooling.
* :class:`RowLSTM` (``"lstm"``): a two-layer LSTM reading the input row by row.

The seed papers' networks, from torchvision's blocks (:mod:`~eidetic.zoo.vision`):

* :class:`VGG16BN` (``"vgg16-bn"``): VGG16 with BatchNorm for 32x32 inputs (CPG, CL-LSG).
* :class:`ResNet18CIFAR`, :class:`ResNet50CIFAR` (``"resnet18-cifar"``, ``"resnet50-cifar"``):
  the low-resolution stem (3x3, stride 1, no max-pool).
* :class:`ResNet18`, :class:`ResNet50` (``"resnet18"``, ``"resnet50"``): ImageNet stems, for
  Imagenette.
* :class:`LeNet5` (``"lenet5"``): CL-LSG's 20-50-800-500.

Each has a twin with :class:`~eidetic.CPGMixin` (compacting, picking, growing), e.g.
:class:`CPGMLP` (``build_model(..., method="cpg")``), and one with :class:`~eidetic.LSGMixin`
(learnable sparse growth), e.g. :class:`LSGMLP` (``method="lsg"``).
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

from .base import ZooModel
from .checkpoints import load_checkpoint, save_checkpoint
from .registry import (
    CLASSES,
    CPG_MODELS,
    CPGMLP,
    CPGVGG16BN,
    IMAGE_MODELS,
    LSG_MODELS,
    LSGMLP,
    LSGVGG16BN,
    METHODS,
    MODELS,
    CPGConvNet,
    CPGLeNet5,
    CPGResNet,
    CPGResNet18,
    CPGResNet18CIFAR,
    CPGResNet50,
    CPGResNet50CIFAR,
    CPGRowLSTM,
    LSGConvNet,
    LSGLeNet5,
    LSGResNet,
    LSGResNet18,
    LSGResNet18CIFAR,
    LSGResNet50,
    LSGResNet50CIFAR,
    LSGRowLSTM,
    build_model,
)
from .small import MLP, Block, ConvNet, ResNet, RowLSTM
from .vision import VGG16BN, LeNet5, ResNet18, ResNet18CIFAR, ResNet50, ResNet50CIFAR

__all__ = [
    "CLASSES", "CPG_MODELS", "IMAGE_MODELS", "LSG_MODELS", "METHODS", "MODELS", "MLP", "VGG16BN", "Block",
    "CPGConvNet", "CPGLeNet5", "CPGMLP", "CPGResNet", "CPGResNet18", "CPGResNet18CIFAR", "CPGResNet50",
    "CPGResNet50CIFAR", "CPGRowLSTM", "CPGVGG16BN", "ConvNet", "LSGConvNet", "LSGLeNet5", "LSGMLP", "LSGResNet",
    "LSGResNet18", "LSGResNet18CIFAR", "LSGResNet50", "LSGResNet50CIFAR", "LSGRowLSTM", "LSGVGG16BN", "LeNet5",
    "ResNet", "ResNet18", "ResNet18CIFAR", "ResNet50", "ResNet50CIFAR", "RowLSTM", "ZooModel", "build_model",
    "load_checkpoint", "save_checkpoint",
]
