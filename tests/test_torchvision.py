"""torchvision's classification networks as the body of a ContinualNetwork.

Each family is built from torchvision's own classes and blocks, at reduced width and depth so
that CI runs them in seconds; three tasks with real pruning, under a shared AdamW instance and
under SGD with Nesterov momentum, must leave every earlier task bitwise unchanged. The families
built on LayerNorm or attention are refused at once, for the real reason. The full-size models
run with ``pytest -m slow tests/test_torchvision.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import eidetic
from eidetic.testing import check_after_task

tv = pytest.importorskip("torchvision")
from torchvision.models import (  # noqa: E402
    convnext,
    densenet,
    efficientnet,
    inception,
    maxvit,
    mnasnet,
    mobilenetv2,
    mobilenetv3,
    regnet,
    resnet,
    shufflenetv2,
    squeezenet,
    swin_transformer,
    vgg,
    vision_transformer,
)

googlenet = __import__("torchvision.models.googlenet", fromlist=["Inception"])  # the name is also a function


class Blocks(nn.Module):
    """A stem convolution, torchvision blocks, global pooling and a Linear read-out."""

    def __init__(self, stem: int, blocks: list[nn.Module], width: int, features: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem),
                                  nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(width, features)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


def _downsample(inplanes: int, planes: int, stride: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))


def _resnet_basic():  # resnet18's BasicBlock, identity and projection skips
    return Blocks(8, [resnet.BasicBlock(8, 8), resnet.BasicBlock(8, 16, 2, _downsample(8, 16, 2))], 16)


def _resnet_bottleneck(groups: int = 1, base_width: int = 64):  # resnet50 / resnext50 / wide_resnet50
    def block(inplanes, planes, stride=1):
        out = planes * resnet.Bottleneck.expansion
        down = _downsample(inplanes, out, stride) if stride != 1 or inplanes != out else None
        return resnet.Bottleneck(inplanes, planes, stride, down, groups=groups, base_width=base_width)

    return Blocks(8, [block(8, 4), block(16, 4), block(16, 8, 2)], 32)


def _vgg_bn():
    model = vgg.VGG(vgg.make_layers([8, "M", 16, 16, "M"], batch_norm=True), init_weights=False)
    model.classifier = nn.Sequential(nn.Linear(16 * 7 * 7, 16), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(16, 8))
    return model


def _googlenet():
    return nn.Sequential(
        googlenet.BasicConv2d(3, 8, kernel_size=3, padding=1),
        googlenet.Inception(8, 4, 4, 4, 2, 4, 4),
        nn.MaxPool2d(3, stride=2, ceil_mode=True),
        googlenet.Inception(16, 4, 4, 8, 2, 4, 4),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(20, 8),
    )


def _inception_v3():
    return nn.Sequential(
        inception.BasicConv2d(3, 8, kernel_size=3, padding=1),
        inception.InceptionA(8, pool_features=4),  # 228 channels
        inception.InceptionC(228, channels_7x7=4),  # 768 channels, 1x7 and 7x1 factorised
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(768, 8),
    )


def _densenet():
    return densenet.DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=8)


def _mobilenet_v2():
    setting = [[1, 8, 1, 1], [6, 8, 2, 2], [6, 16, 1, 2]]
    return mobilenetv2.MobileNetV2(num_classes=8, width_mult=0.25, inverted_residual_setting=setting)


def _mobilenet_v3():
    def conf(*args):
        return mobilenetv3.InvertedResidualConfig(*args, width_mult=1.0)

    setting = [conf(8, 3, 8, 8, True, "RE", 2, 1), conf(8, 3, 24, 16, False, "RE", 2, 1),
               conf(16, 5, 32, 16, True, "HS", 1, 1)]
    return mobilenetv3.MobileNetV3(setting, last_channel=32, num_classes=8)


def _efficientnet():
    setting = [efficientnet.MBConvConfig(1, 3, 1, 8, 8, 1), efficientnet.MBConvConfig(6, 3, 2, 8, 16, 2)]
    return efficientnet.EfficientNet(setting, dropout=0.2, stochastic_depth_prob=0.2, num_classes=8, last_channel=32)


def _regnet(se_ratio):
    params = regnet.BlockParams.from_init_params(depth=3, w_0=8, w_a=8, w_m=2, group_width=4, se_ratio=se_ratio)
    return regnet.RegNet(params, num_classes=8)


FAMILIES = {
    "resnet18": _resnet_basic,
    "resnet50": _resnet_bottleneck,
    "resnext50_32x4d": lambda: _resnet_bottleneck(groups=2, base_width=64),
    "wide_resnet50_2": lambda: _resnet_bottleneck(base_width=128),
    "vgg_bn": _vgg_bn,
    "googlenet": _googlenet,
    "inception_v3": _inception_v3,
    "densenet": _densenet,
    "mobilenet_v2": _mobilenet_v2,
    "mobilenet_v3": _mobilenet_v3,
    "efficientnet": _efficientnet,
    "mnasnet": lambda: mnasnet.MNASNet(0.25, num_classes=8),
    "shufflenet_v2": lambda: shufflenetv2.ShuffleNetV2([1, 1, 1], [8, 16, 32, 64, 32], num_classes=8),
    "squeezenet1_1": lambda: squeezenet.SqueezeNet("1_1", num_classes=8),
    "regnet_x": lambda: _regnet(None),
    "regnet_y": lambda: _regnet(0.25),
}

SIZES = {"squeezenet1_1": 32, "mnasnet": 32}  # inputs that survive the families' down-sampling
# MNASNet diverges under SGD at lr 1e-2 on these tiny tasks without eidetic too (its outputs reach 1e7 in
# training mode after one epoch), so it gets a smaller step.
SGD_LR = {"mnasnet": 1e-3}
OPTIMIZERS = ["shared_adamw", "sgd_nesterov"]


def _never_forgets(model: nn.Module, optimizer: str, size: int, tasks: int = 3, samples: int = 16,
                   lr: float = 0.01) -> eidetic.Wrapped:
    """Train ``tasks`` small tasks with real pruning; after each, every earlier task is unchanged."""
    net = eidetic.Wrapped(model)
    fixed = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(99))
    shared = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    logits, frozen, pruned = [], [], 0
    for t in range(tasks):
        gen = torch.Generator().manual_seed(t)
        data = torch.utils.data.TensorDataset(torch.randn(samples, 3, size, size, generator=gen),
                                              torch.randint(0, 2, (samples,), generator=gen))
        make = shared if optimizer == "shared_adamw" else (
            lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4))
        report = net.train_task(t, data, batch_size=8, num_classes=2, optimizer=make, epochs=1, progress=False,
                                memory=0, pruning=eidetic.Pruning(step=0.3, tolerance=0.5, max_steps=1))
        pruned += len(report.prune_steps)
        check_after_task(net, fixed, t, logits, frozen)
    assert pruned, "the pruning loop ran"
    return net


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_torchvision_family_never_forgets(family, optimizer):
    torch.manual_seed(0)
    net = _never_forgets(FAMILIES[family](), optimizer, size=SIZES.get(family, 16), lr=SGD_LR.get(family, 0.01))
    assert sum(int(m.sum()) for m in net._eidetic.ownership.masks("frozen").values()) > 0


def test_a_checkpoint_of_a_torchvision_network_loads_into_a_fresh_instance():
    torch.manual_seed(0)
    net = _never_forgets(_mobilenet_v3(), "shared_adamw", size=16, tasks=2)
    torch.manual_seed(1)
    fresh = eidetic.Wrapped(_mobilenet_v3())
    fresh.load_state_dict(net.state_dict())
    x = torch.randn(4, 3, 16, 16)
    net.eval()
    fresh.eval()
    with torch.no_grad():
        assert all(torch.equal(net.logits(x, k), fresh.logits(x, k)) for k in range(2))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: convnext.ConvNeXt([convnext.CNBlockConfig(8, 16, 1), convnext.CNBlockConfig(16, None, 1)],
                                   num_classes=8),
         r"'model\.features\.0\.1' \(LayerNorm2d\).*normalises across units"),
        (lambda: swin_transformer.SwinTransformer([4, 4], 8, [1, 1], [2, 2], [2, 2], num_classes=8),
         r"\(LayerNorm\).*normalises across units.*\(ShiftedWindowAttention\): attention mixes units"),
        (lambda: vision_transformer.VisionTransformer(16, 8, 1, 2, 8, 16, num_classes=8),
         r"\(LayerNorm\).*normalises across units.*\(MultiheadAttention\): attention mixes units"),
        (lambda: maxvit.MaxVit((16, 16), 8, 2, [8], [1], 4, 0.0, num_classes=8), r"attention mixes units"),
    ],
)
def test_transformers_and_layernorm_networks_are_refused_for_the_real_reason(build, message):
    with pytest.raises(eidetic.UnsupportedLayerError, match=message):
        eidetic.Wrapped(build()).setup(torch.randn(2, 3, 16, 16))


FULL_SIZE = ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "vgg11_bn", "vgg16_bn", "googlenet",
             "inception_v3", "densenet121", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
             "efficientnet_b0", "mnasnet0_5", "shufflenet_v2_x0_5", "squeezenet1_1", "regnet_x_400mf",
             "regnet_y_400mf"]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_torchvision_model_never_forgets(name, optimizer):
    extra = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    torch.manual_seed(0)
    model = getattr(tv.models, name)(weights=None, **extra)
    _never_forgets(model, optimizer, size=75 if name == "inception_v3" else 32)
