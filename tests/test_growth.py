"""Growth on deep networks under one parameter budget (CPG and LSG at their defaults).

A VGG-like stack of six conv-BN layers, a stack of torchvision's ResNet ``BasicBlock`` and a
five-layer MLP are given a task they cannot learn (random labels, goal 1.0): each grows, a step
scaled to the budget at a time, until the budget is spent, ends at or below ``max_ratio`` (1.5)
times the parameters it was built with, and every earlier task stays bitwise identical, through
a checkpoint round trip too. The budget is counted before widening (``parameter_growth``), exactly.
"""

from __future__ import annotations

import io
import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_widening import _check_unchanged
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models.resnet import BasicBlock

import eidetic
from eidetic.guarantee.resizing import parameter_growth
from eidetic.mixins.growing import within_budget
from eidetic.testing import all_logits, unit_state

from models import CNN, MLP, ResNet, input_shape
from strategies import cnn_specs, mlp_specs, resnet_specs


class VGG(nn.Module):
    """Six 3x3 conv-BN-ReLU layers in three stages with max pooling, as VGG builds them."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        layers, c = [], 3
        for stage, out in enumerate((width, width, 2 * width, 2 * width, 2 * width, 2 * width)):
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            if stage % 2:
                layers.append(nn.MaxPool2d(2))
            c = out
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)


class Blocks(nn.Module):
    """A stem and torchvision's ``BasicBlock``: two at one width, a strided one with a projection."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        project = nn.Sequential(nn.Conv2d(width, 2 * width, 1, stride=2, bias=False), nn.BatchNorm2d(2 * width))
        self.blocks = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width),
                                    BasicBlock(width, 2 * width, stride=2, downsample=project))

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)


class Deep(nn.Module):
    """A five-layer MLP with BatchNorm."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        sizes = [12, width, width, width, width, width]
        self.layers = nn.Sequential(*[m for a, b in itertools.pairwise(sizes)
                                      for m in (nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU())])

    def forward(self, x):
        return self.layers(x)


BODIES = {"vgg": (VGG, (3, 8, 8)), "basic-blocks": (Blocks, (3, 8, 8)), "mlp5": (Deep, (12,))}
MIXINS = {"cpg": eidetic.CPGMixin, "lsg": eidetic.LSGMixin}


def build(body: str, method: str, width: int) -> eidetic.ContinualNetwork:
    module, _ = BODIES[body]
    cls = type(f"{method}{module.__name__}", (MIXINS[method], eidetic.Wrapped), {})
    return cls(module(width))


def _data(shape, task: int, random_labels: bool, n: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(task)
    x = torch.randn(n, *shape, generator=g) * (1 + task)
    y = torch.randint(0, 3, (n,), generator=g) if random_labels else (x.flatten(1)[:, :3]).argmax(1)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=g)


def _body(net) -> int:
    return sum(p.numel() for name, p in net.named_parameters() if not name.startswith("heads."))


class _Widest(eidetic.Callback):
    """The body's size after every training step: growth, candidate pools included."""

    def __init__(self, net) -> None:
        self.net, self.sizes = net, []

    def on_step_end(self, task, loss) -> None:
        self.sizes.append(_body(self.net))


def grow_and_check(body: str, method: str, width: int, seed: int) -> eidetic.ContinualNetwork:
    torch.manual_seed(seed)
    net = build(body, method, width)
    shape = BODIES[body][1]
    fixed = torch.randn(5, *shape)
    optimizer = lambda p: torch.optim.Adam(p, lr=1e-2)  # noqa: E731
    net.train_task(0, _data(shape, 0, False), num_classes=3, optimizer=optimizer, epochs=1, progress=False)
    logits, states = [all_logits(net, fixed)[0]], [unit_state(net)]
    built = net._eidetic.initial_parameters
    watch = _Widest(net)
    report = net.train_task(1, _data(shape, 1, True), num_classes=3, optimizer=optimizer, epochs=1, goal=1.0,
                            progress=False, callbacks=[watch])
    assert report.goal_met is False and len(report.attempts) > 1 and max(watch.sizes) > built, \
        f"{method} did not grow {body}: {report.growth_stop}"
    assert max(watch.sizes) <= 1.5 * built and _body(net) <= 1.5 * built, "the budget was exceeded"
    assert report.growth_stop.startswith("budget"), report.growth_stop
    _check_unchanged(net, fixed, logits, states, dropout=False)
    return net


@pytest.mark.parametrize("method", sorted(MIXINS))
@pytest.mark.parametrize("body", sorted(BODIES))
def test_deep_networks_grow_within_the_budget_with_the_defaults(body, method):
    net = grow_and_check(body, method, 4 if body != "mlp5" else 8, seed=0)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    fresh = build(body, method, 4 if body != "mlp5" else 8)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fixed = torch.randn(5, *BODIES[body][1])
    for a, b in zip(all_logits(net, fixed), all_logits(fresh, fixed), strict=True):
        assert torch.equal(a, b)


@given(body=st.sampled_from(sorted(BODIES)), method=st.sampled_from(sorted(MIXINS)), width=st.integers(3, 6),
       seed=st.integers(0, 2**16))
@settings(max_examples=max(5, settings.default.max_examples // 30))  # 5 by default, 66 deep
def test_growth_on_deep_networks_never_forgets(body, method, width, seed):
    grow_and_check(body, method, width if body != "mlp5" else 2 * width, seed)


@given(family_spec=st.one_of(st.tuples(st.just(MLP), mlp_specs()), st.tuples(st.just(CNN), cnn_specs()),
                             st.tuples(st.just(ResNet), resnet_specs())),
       units=st.integers(1, 5), pick=st.randoms(use_true_random=False))
def test_the_parameters_a_widening_adds_are_counted_exactly_before_it(family_spec, units, pick):
    family, spec = family_spec
    net = family(spec)
    net.setup(torch.randn(2, *input_shape(family, spec)))
    keys = pick.sample(net.graph.keys(), pick.randint(1, len(net.graph.keys())))
    request = dict.fromkeys(keys, units)
    try:
        predicted = parameter_growth(net._eidetic.layers, net.graph, request)
        before = _body(net)
        net.widen(request)
    except (eidetic.UnsupportedLayerError, eidetic.GraphError):
        return  # a group widening refuses (grouped convolutions, layout-sensitive activations)
    assert _body(net) - before == predicted


@pytest.mark.parametrize("ratio", [1.0, 1.2, 1.5, 3.0])
def test_a_step_is_scaled_down_to_the_largest_that_fits(ratio):
    torch.manual_seed(0)
    net = build("vgg", "cpg", 4)
    net.setup(torch.randn(2, 3, 8, 8))
    full = eidetic.Growing().request(net.graph, net._eidetic.layers, net._eidetic.initial_sizes)
    request = within_budget(net, full, ratio)
    room = ratio * net._eidetic.initial_parameters - _body(net)
    growth = parameter_growth(net._eidetic.layers, net.graph, request) if request else 0
    assert growth <= room
    cost = lambda request: parameter_growth(net._eidetic.layers, net.graph, request)  # noqa: E731
    if not request:  # not one unit of any group fits
        assert all(cost({key: 1}) > room for key in full)
    elif request != full:  # scaled down only when the whole step does not fit
        assert cost(full) > room and all(1 <= request[k] <= full[k] for k in request)
        if request.keys() != full.keys():  # a unit in some groups only: one unit in every group does not fit
            assert cost(dict.fromkeys(full, 1)) > room and set(request.values()) == {1}
            assert all(cost({**request, key: 1}) > room for key in full.keys() - request.keys())
