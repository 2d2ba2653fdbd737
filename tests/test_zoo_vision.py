"""The seed papers' networks in the zoo (VGG16-BN, the CIFAR and ImageNet ResNets, LeNet-5):
their architecture at full width, the guarantee as a property at reduced width, each with the CPG
and LSG mixins (growth included) and through a checkpoint, and the refusal of too-small inputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import strategies as st

import eidetic
from eidetic import zoo
from eidetic.testing import assert_never_forgets, never_forgets_property, task_plans

tv = pytest.importorskip("torchvision")

SHAPES = {"vgg16-bn": (3, 32, 32), "resnet18-cifar": (3, 8, 8), "resnet50-cifar": (3, 8, 8),
          "resnet18": (3, 16, 16), "resnet50": (3, 16, 16), "lenet5": (1, 16, 16)}
VISION = sorted(SHAPES)
short_runs = st.lists(task_plans, min_size=2, max_size=3)


def test_the_new_models_are_in_the_zoo():
    assert set(VISION) <= set(zoo.MODELS) and set(VISION) <= set(zoo.IMAGE_MODELS)
    for method in zoo.METHODS:
        assert set(VISION) <= set(zoo.CLASSES[method])


@pytest.mark.parametrize(("name", "reference"), [("resnet18", "resnet18"), ("resnet50", "resnet50"),
                                                 ("resnet18-cifar", "resnet18"), ("resnet50-cifar", "resnet50")])
def test_resnets_are_torchvisions_without_the_classifier(name, reference):
    """Same stages as torchvision's model; the CIFAR stem swaps the 7x7 convolution for a 3x3 one."""
    ours = zoo.build_model(name, (3, 32, 32))
    theirs = getattr(tv.models, reference)(weights=None)
    mine = {k: v.shape for k, v in ours.state_dict().items() if k.startswith("layer")}
    expected = {k: v.shape for k, v in theirs.state_dict().items() if k.startswith("layer")}
    assert mine == expected
    stem = (ours.conv1.kernel_size, ours.conv1.stride, ours.maxpool is None)
    assert stem == (((3, 3), (1, 1), True) if name.endswith("cifar") else ((7, 7), (2, 2), False))
    assert ours(torch.randn(2, 3, 32, 32)).shape == (2, theirs.fc.in_features)


def test_vgg16_bn_is_cpgs_cifar_network():
    net = zoo.build_model("vgg16-bn", (3, 32, 32))
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [v for v in tv.models.vgg.cfgs["D"] if v != "M"]
    assert all(c.bias is None for c in convs) and len(convs) == 13
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.features) == 13
    assert [(m.in_features, m.out_features) for m in net.classifier if isinstance(m, torch.nn.Linear)] == [
        (512, 4096), (4096, 4096)]
    assert sum(p.numel() for p in net.parameters()) == 33_601_472


def test_lenet5_is_20_50_800_500():
    net = zoo.build_model("lenet5", (3, 32, 32))
    assert (net.conv1.out_channels, net.conv2.out_channels, net.fc1.out_features, net.fc2.out_features) == (
        20, 50, 800, 500)
    assert net.fc1.in_features == 50 * 5 * 5
    half = zoo.build_model("lenet5", (3, 32, 32), width=4)
    assert (half.conv2.out_channels, half.fc1.out_features, half.fc2.out_features) == (10, 160, 100)


def test_width_scales_every_layer():
    small = zoo.build_model("resnet50-cifar", (3, 32, 32), width=8)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 8 * 8 * 4)
    assert zoo.build_model("vgg16-bn", (3, 32, 32), width=4)(torch.randn(2, 3, 32, 32)).shape == (2, 256)


@pytest.mark.parametrize(("name", "shape", "message"), [
    ("vgg16-bn", (3, 16, 16), "at least 32x32"), ("lenet5", (1, 8, 8), "at least 16x16"),
    ("resnet18-cifar", (784,), "needs image inputs")])
def test_too_small_or_flat_inputs_are_refused(name, shape, message):
    with pytest.raises(ValueError, match=f"the {name} model .*{message}"):
        zoo.build_model(name, shape)


def _factory(name: str, method: str = "eidetic", width: int = 2):
    def build() -> eidetic.ContinualNetwork:
        return zoo.build_model(name, SHAPES[name], width=width, method=method)

    build.__name__ = f"{name.replace('-', '_')}_{method}"
    return build


# The guarantee as a property, each model at width 2 (a few examples each: the drawn runs train
# two or three tasks with real pruning under every optimizer set-up).
for _name in VISION:
    globals()[f"test_{_name.replace('-', '_')}_never_forgets"] = never_forgets_property(
        _factory(_name), SHAPES[_name], plans=short_runs, max_examples=2 if _name in ("vgg16-bn", "resnet50-cifar")
        else 3)


@pytest.mark.parametrize("method", ["cpg", "lsg"])
@pytest.mark.parametrize("name", VISION)
def test_each_model_never_forgets_with_each_mixin_and_round_trips(name, method, tmp_path):
    """Growth on: CPG grows while it misses a goal of 1.0; LSG grows the first group of the graph
    (every group would mean dozens of growth stages at this width)."""
    torch.manual_seed(0)
    first = next(iter(zoo.build_model(name, SHAPES[name], width=2).setup(torch.randn(2, *SHAPES[name])))).key
    if method == "cpg":
        kwargs = {"goal": 1.0, "growing": eidetic.Growing(step=0.5, max_ratio=2.5)}
    else:
        growth = eidetic.SparseGrowth(candidates=1, max_width=2.0, mask_lr=0.1, groups=(first,))
        kwargs = {"goal": 1.0, "growth": growth}
    reports = []

    def recording() -> eidetic.ContinualNetwork:
        net = _factory(name, method)()
        train_task = net.train_task
        net.train_task = lambda *args, **kw: reports.append(train_task(*args, **kw)) or reports[-1]
        return net

    net = assert_never_forgets(recording, SHAPES[name], tasks=2, samples=16, classes=2,
                               pruning=None if method == "lsg" else eidetic.Pruning(step=0.3, max_steps=1),
                               train_kwargs=kwargs, optimizers=eidetic.testing.OptimizerChoice(
                                   "SGD", (("lr", 0.05), ("momentum", 0.9)), shared=False))
    assert any(len(r.attempts) > 1 for r in reports), f"{method} never grew"  # growth, kept or given back
    loaded = zoo.load_checkpoint(zoo.save_checkpoint(net, tmp_path / "model.pt"))
    assert type(loaded) is type(net) and loaded.config == net.config
    x = torch.randn(4, *SHAPES[name])
    net.eval(), loaded.eval()
    with torch.no_grad():
        assert all(torch.equal(loaded.logits(x, k), net.logits(x, k)) for k in range(2))
