"""Unit-graph discovery, the validator, and the layers eidetic refuses."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import eidetic
from eidetic.graph import FEATURES, Slot, UnitGraph, UnitGroup, collect_layers, measure, propose
from eidetic.graph import validate as validate_table

from models import CNN, MLP, ConcatNet, ResNet, input_shape
from strategies import cnn_specs, mlp_specs, resnet_specs


def slot_pairs(group: UnitGroup, module: str, role: str = "in") -> list[tuple[int, int]]:
    slots = group.ins if role == "in" else group.outs
    (slot,) = [s for s in slots if s.module == module]
    return list(zip(slot.units.tolist(), slot.index.tolist()))


def test_mlp_groups_pair_linear_rows_with_batchnorm_channels():
    net = MLP({"in": 5, "widths": [4, 3], "bn": True, "act": "relu"})
    graph = net.setup(torch.randn(2, 5))
    assert graph.keys() == ["fcs.0", "fcs.1"]
    first = graph["fcs.0"]
    assert first.size == 4 and first.modules == ["fcs.0", "bns.0"]
    assert slot_pairs(first, "fcs.1") == [(u, u) for u in range(4)]
    assert slot_pairs(graph["fcs.1"], FEATURES) == [(u, u) for u in range(3)]
    assert graph.feature_dim == 3


def test_flatten_gives_each_channel_its_block_of_columns():
    net = CNN({"channels_in": 1, "size": 4, "layers": [(3, "plain")], "bn": True, "pool": True, "features": 5})
    graph = net.setup(torch.randn(2, 1, 4, 4))
    pairs = slot_pairs(graph["convs.0"], "fc")
    assert pairs == [(c, c * 4 + k) for c in range(3) for k in range(4)]


def test_residual_stream_is_one_group_of_all_its_producers():
    net = ResNet({"channels_in": 1, "size": 4, "stem": 3, "blocks": [(3, 1), (5, 2)], "head": "pool"})
    graph = net.setup(torch.randn(2, 1, 4, 4))
    stream = graph["stem"]
    assert set(stream.modules) == {"stem", "stem_bn", "blocks.0.conv2", "blocks.0.bn2"}
    assert {s.module for s in stream.ins} == {"blocks.0.conv1", "blocks.1.conv1", "blocks.1.project.0"}
    (projected,) = [g for g in graph if "blocks.1.conv2" in g.modules]
    assert {"blocks.1.conv2", "blocks.1.bn2", "blocks.1.project.0", "blocks.1.project.1"} <= set(projected.modules)


def test_depthwise_joins_its_input_and_grouped_reads_its_group():
    net = CNN({"channels_in": 2, "size": 4, "layers": [(4, "plain"), (4, "depthwise"), (6, "grouped")],
               "bn": True, "pool": False, "features": 3})
    graph = net.setup(torch.randn(2, 2, 4, 4))
    assert {"convs.0", "bns.0", "convs.1", "bns.1"} <= set(graph["convs.0"].modules)
    assert slot_pairs(graph["convs.0"], "convs.2") == [(u, u) for u in range(4)]
    positions = eidetic.graph.input_positions(net.convs[2], graph.layers["convs.2"])
    assert positions.tolist() == [[0, 1]] * 3 + [[2, 3]] * 3


class CatPool(eidetic.ContinualNetwork):
    """Two convolutions concatenated, pooled and flattened into a Linear layer."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 3, 1)
        self.fc = nn.Linear(5 * 4, 4)

    def forward(self, x):
        h = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.fc(F.adaptive_avg_pool2d(h, 2).flatten(1))


def test_concat_then_flatten_is_measured_right_where_torch_pruning_is_wrong():
    net = CatPool()
    example = torch.randn(2, 2, 4, 4)
    graph = net.setup(example)
    assert graph.keys() == ["a", "b", "fc"]
    assert slot_pairs(graph["a"], "fc") == [(c, c * 4 + k) for c in range(2) for k in range(4)]
    assert slot_pairs(graph["b"], "fc") == [(c, 8 + c * 4 + k) for c in range(3) for k in range(4)]
    proposal = propose(net, net.forward, collect_layers(net, [net.heads]), example, graph.feature_dim)
    problems = eidetic.graph.compare(proposal, graph)
    assert problems, "torch-pruning 1.6.1 couples the concatenated branches; the validator must say so"
    assert any("fc inputs [8-" in p for p in problems)


def test_concat_with_batchnorm_gives_each_branch_its_offsets():
    spec = {"kind": "conv", "in": 2, "size": 4, "branches": [2, 3], "after": "flatten", "features": 4}
    net = ConcatNet(spec)
    graph = net.setup(torch.randn(2, 2, 4, 4))
    assert slot_pairs(graph["branches.0"], "after") == [(c, c * 4 + k) for c in range(2) for k in range(4)]
    assert slot_pairs(graph["branches.1"], "after") == [(c, 8 + c * 4 + k) for c in range(3) for k in range(4)]
    assert slot_pairs(graph["branches.1"], "bn", role="out") == [(c, 2 + c) for c in range(3)]


def test_torch_pruning_agrees_on_a_plain_residual_net():
    net = ResNet({"channels_in": 1, "size": 4, "stem": 3, "blocks": [(3, 1)], "head": "pool"})
    example = torch.randn(2, 1, 4, 4)
    graph = net.setup(example)
    proposal = propose(net, net.forward, collect_layers(net, [net.heads]), example, graph.feature_dim)
    assert eidetic.graph.compare(proposal, graph) == []


def _replace_group(graph: UnitGraph, key: str, **changes) -> UnitGraph:
    groups = tuple(dataclasses.replace(g, **changes) if g.key == key else g for g in graph.groups)
    return UnitGraph(groups=groups, layers=graph.layers, feature_dim=graph.feature_dim)


def test_validator_catches_a_wrong_consumer_column():
    net = MLP({"in": 5, "widths": [4, 3], "bn": False, "act": "relu"})
    graph = net.setup(torch.randn(2, 5))
    group = graph["fcs.0"]
    (slot,) = group.ins
    wrong = Slot(slot.module, slot.units, slot.index.flip(0))
    bad = _replace_group(graph, "fcs.0", ins=(wrong,))
    problems = validate_table(net, net.forward, torch.randn(2, 5), bad, exclude=[net.heads])
    assert problems and all("fcs.1 inputs" in p for p in problems)
    net._eidetic.graph = bad
    with pytest.raises(eidetic.GraphError, match=r"fcs\.1 inputs"):
        net.validate_graph()


def test_validator_catches_a_missing_producer_and_a_missing_reader():
    net = MLP({"in": 5, "widths": [4, 3], "bn": True, "act": "relu"})
    graph = net.setup(torch.randn(2, 5))
    no_bn = _replace_group(graph, "fcs.0", outs=tuple(s for s in graph["fcs.0"].outs if s.module != "bns.0"))
    assert any("bns.0 outputs" in p for p in validate_table(net, net.forward, torch.randn(2, 5), no_bn,
                                                            exclude=[net.heads]))
    no_reader = _replace_group(graph, "fcs.1", ins=())
    assert any("<features> inputs" in p for p in validate_table(net, net.forward, torch.randn(2, 5), no_reader,
                                                                 exclude=[net.heads]))
    net.validate_graph()  # the discovered table itself is right


def test_tables_compare_by_couplings_not_by_numbering():
    net = ResNet({"channels_in": 2, "size": 4, "stem": 3, "blocks": [(4, 2)], "head": "flatten"})
    graph = net.setup(torch.randn(2, 2, 4, 4))
    group = graph.groups[1]
    perm = torch.randperm(group.size, generator=torch.Generator().manual_seed(0)).flip(0)
    renumber = lambda slots: tuple(Slot(s.module, perm[s.units], s.index) for s in slots)  # noqa: E731
    renumbered = _replace_group(graph, group.key, outs=renumber(group.outs), ins=renumber(group.ins))
    assert renumbered.canonical() == graph.canonical() and renumbered.same_couplings(graph)
    (slot, *rest) = group.ins
    moved = _replace_group(graph, group.key, ins=(Slot(slot.module, slot.units.roll(1), slot.index), *rest))
    assert moved.canonical() != graph.canonical() and not moved.same_couplings(graph)


def test_measurement_does_not_depend_on_the_example():
    net = ResNet({"channels_in": 2, "size": 4, "stem": 3, "blocks": [(4, 2)], "head": "flatten"})
    layers = collect_layers(net, [net.heads])
    net.eval()
    a = measure(net.forward, layers, torch.randn(1, 2, 4, 4))
    b = measure(net.forward, layers, torch.randn(2, 2, 4, 4) * 10)
    assert a.canonical() == b.canonical() and a.same_couplings(b)


class Gated(eidetic.ContinualNetwork):
    """``relu(a(x)) * sigmoid(s(x))`` read by ``c``; ``a`` is dead at any input (bias -100)."""

    def __init__(self):
        super().__init__()
        self.a, self.s, self.c = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(3, 2)
        with torch.no_grad():
            self.a.bias.fill_(-100.0)

    def forward(self, x):
        return self.c(F.relu(self.a(x)) * torch.sigmoid(self.s(x)))


def test_a_gate_closed_at_the_example_still_couples_its_units():
    graph = Gated().setup(torch.randn(2, 4))
    (gate,) = [g for g in graph if "s" in g.modules]
    assert gate.key == "a" and gate.modules == ["a", "s"]
    assert slot_pairs(gate, "c") == [(u, u) for u in range(3)]
    assert slot_pairs(gate, "s", role="out") == [(u, u) for u in range(3)]


class Blocks(eidetic.ContinualNetwork):
    """Conv-BN-activation blocks with a residual sum and a Linear read-out, in place or not."""

    def __init__(self, act: str, inplace: bool):
        super().__init__()
        self.inplace = inplace
        make = {"silu": nn.SiLU, "hardswish": nn.Hardswish, "leaky_relu": nn.LeakyReLU, "relu": nn.ReLU}[act]
        self.c1, self.b1, self.a1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), make(inplace=inplace)
        self.c2, self.b2, self.a2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), make(inplace=inplace)
        self.fc, self.a3 = nn.Linear(4 * 16, 5), make(inplace=inplace)

    def forward(self, x):
        h = self.a1(self.b1(self.c1(x)))
        y = self.b2(self.c2(h))
        if self.inplace:
            y += h
            y.relu_()
        else:
            y = F.relu(y + h)
        return self.a3(self.fc(y.flatten(1)))


@pytest.mark.parametrize("act", ["silu", "hardswish", "leaky_relu", "relu"])
def test_in_place_operations_give_the_same_table(act):
    example = torch.randn(2, 2, 4, 4)
    torch.manual_seed(0)
    plain = Blocks(act, inplace=False).setup(example)
    torch.manual_seed(0)
    net = Blocks(act, inplace=True)
    assert net.setup(example).canonical() == plain.canonical()
    net.validate_graph()
    assert {"c1", "b1", "c2", "b2"} <= set(net.graph["c1"].modules)


def test_lazy_layers_are_materialised_before_discovery():
    class Lazy(eidetic.ContinualNetwork):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.LazyLinear(4), nn.Linear(4, 3)

        def forward(self, x):
            return self.b(F.relu(self.a(x)))

    net = Lazy()
    graph = net.setup(torch.randn(2, 5))
    assert isinstance(net.a, nn.Linear) and net.a.weight.shape == (4, 5)
    assert slot_pairs(graph["a"], "b") == [(u, u) for u in range(4)]


def test_discovery_passes_do_not_grow_with_the_number_of_units():
    def passes(width: int) -> int:
        net = MLP({"in": 5, "widths": [width, width], "bn": True, "act": "relu"})
        calls = []
        net.fcs[0].register_forward_pre_hook(lambda module, args: calls.append(1))
        net.setup(torch.randn(2, 5))
        return len(calls)

    assert passes(512) <= passes(8) + 2  # codes of log2(units) copies per pass, not a pass per unit


class _Wrap(eidetic.ContinualNetwork):
    def __init__(self, layer: nn.Module, features: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(6, features)
        self.layer = layer

    def forward(self, x):
        return self.layer(self.fc(x))


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (nn.LayerNorm(4), "LayerNorm.*normalises across units"),
        (nn.GroupNorm(2, 4), "GroupNorm.*normalises across units"),
        (nn.MultiheadAttention(4, 2), "attention mixes units"),
        (nn.LSTMCell(4, 4), "recurrent cells stepped by hand"),
        (nn.BatchNorm1d(4, track_running_stats=False), "track_running_stats=False"),
        (nn.PReLU(4), "not supported"),
    ],
)
def test_refused_layers_raise_a_clear_error_naming_the_module(layer, message):
    net = _Wrap(layer)
    with pytest.raises(eidetic.UnsupportedLayerError, match=rf"'layer'.*{message}"):
        net.setup(torch.randn(2, 6))
    assert net.graph is None


def test_a_transformer_is_refused_for_both_of_its_reasons_before_anything_runs():
    class Encoder(nn.Module):  # holds a parameter of its own, as torchvision's VisionTransformer does
        def __init__(self):
            super().__init__()
            self.token = nn.Parameter(torch.zeros(1, 1, 4))
            self.norm, self.attn = nn.LayerNorm(4), nn.MultiheadAttention(4, 2)

    class WindowAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(3))

    class Net(eidetic.ContinualNetwork):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            raise AssertionError("refusals come before any forward pass")

    with pytest.raises(eidetic.UnsupportedLayerError,
                       match=r"'body.norm' \(LayerNorm\).*normalises across units.*also has module 'body.attn' "
                             r"\(MultiheadAttention\): attention mixes units"):
        Net(Encoder()).setup(torch.randn(2, 4))
    with pytest.raises(eidetic.UnsupportedLayerError, match=r"'body' \(WindowAttention\).*attention mixes units"):
        Net(WindowAttention()).setup(torch.randn(2, 4))


def test_transposed_convolution_is_refused():
    class Net(eidetic.ContinualNetwork):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(1, 2, 2)

        def forward(self, x):
            return self.up(x).flatten(1)

    with pytest.raises(eidetic.UnsupportedLayerError, match=r"'up'.*transposed"):
        Net().setup(torch.randn(2, 1, 3, 3))


def test_unknown_module_with_parameters_asks_for_registration():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return x * self.s

    with pytest.raises(eidetic.UnsupportedLayerError, match=r"'layer'.*register_layer"):
        _Wrap(Scale()).setup(torch.randn(2, 6))


def test_a_layer_called_twice_is_refused():
    class Twice(eidetic.ContinualNetwork):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(F.relu(self.fc(x)))

    with pytest.raises(eidetic.UnsupportedLayerError, match=r"'fc' is called 2 times"):
        Twice().setup(torch.randn(2, 4))


def test_mixing_units_in_forward_is_refused():
    class Softmax(eidetic.ContinualNetwork):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.b(torch.softmax(self.a(x), dim=1))

    with pytest.raises(eidetic.UnsupportedLayerError, match=r"of module 'a' are mixed together"):
        Softmax().setup(torch.randn(2, 4))


def test_parameters_held_directly_by_the_network_are_refused():
    class Direct(eidetic.ContinualNetwork):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.scale = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return self.fc(x) * self.scale

    with pytest.raises(eidetic.UnsupportedLayerError, match=r"Direct holds parameters \['scale'\] directly"):
        Direct().setup(torch.randn(2, 4))


def test_the_heads_attribute_is_reserved():
    class Clash(eidetic.ContinualNetwork):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.heads = nn.Identity()

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(eidetic.GraphError, match=r"'heads' is reserved"):
        Clash().setup(torch.randn(2, 4))


def test_unused_layers_are_left_out_with_a_warning(caplog):
    class Unused(eidetic.ContinualNetwork):
        def __init__(self):
            super().__init__()
            self.fc, self.spare = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x)

    with caplog.at_level(logging.WARNING, logger="eidetic"):
        graph = Unused().setup(torch.randn(2, 4))
    assert "spare" not in graph.layers
    assert "never called" in caplog.text


class Scaled(nn.Module):
    """``y = (x @ w) * s`` with ``w`` stored (in, out): its unit dimension is 1, not 0."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)
        self.s = nn.Parameter(torch.ones(n_out))

    def forward(self, x):
        return (x @ self.w) * self.s

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.w.normal_(0, self.w.shape[0] ** -0.5)
            self.s.fill_(1.0)


@pytest.mark.parametrize(("spec", "message"), [
    # transposed: on a square layer the shapes fit either way, the units do not
    (eidetic.LayerSpec(out_tensors=(("w", 0), ("s", 0)), in_tensor="w", in_dim=1, out_unit_dim=-1, in_unit_dim=-1),
     r"'b' \(Scaled\): its LayerSpec says slice 0 of 'w' along dim 0 belongs to output unit 0.*moves output unit"),
    (eidetic.LayerSpec(out_tensors=(("w", 1), ("s", 0), ("nope", 0)), in_tensor="w", in_dim=0, out_unit_dim=-1,
                       in_unit_dim=-1), r"out_tensors names 'nope', which is not a parameter or buffer.*\['s', 'w'\]"),
    (eidetic.LayerSpec(out_tensors=(("w", 1), ("s", 0)), in_tensor="w", in_dim=0, out_unit_dim=-1, in_unit_dim=-1,
                       score_tensors=("typo",)), r"score_tensors names 'typo'"),
    (eidetic.LayerSpec(out_tensors=(("w", 2), ("s", 0)), in_tensor="w", in_dim=0, out_unit_dim=-1, in_unit_dim=-1),
     r"out_tensors give 'w' dim 2, but it has 2 dimension"),
], ids=["transposed", "unknown-tensor", "unknown-score-tensor", "no-such-dim"])
def test_a_custom_layer_spec_that_does_not_describe_its_layer_is_refused_at_set_up(spec, message,
                                                                                   isolated_registries):
    eidetic.register_layer(Scaled, spec)

    class Net(eidetic.ContinualNetwork):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(5, 6), Scaled(6, 6)

        def forward(self, x):
            return F.relu(self.b(F.relu(self.a(x))))  # the ReLU zeroes some of b's inputs

    net = Net()
    with pytest.raises(eidetic.UnsupportedLayerError, match=message):
        net.setup(torch.randn(2, 5))
    assert net.graph is None


def test_a_registered_custom_layer_is_mapped_and_never_forgets(isolated_registries):
    eidetic.register_layer(Scaled, eidetic.LayerSpec(out_tensors=(("w", 1), ("s", 0)), in_tensor="w", in_dim=0,
                                                     out_unit_dim=-1, in_unit_dim=-1, score_tensors=("w",)))

    class Net(eidetic.ContinualNetwork):
        def __init__(self):
            super().__init__()
            self.a, self.b = Scaled(5, 6), Scaled(6, 4)

        def forward(self, x):
            return F.relu(self.b(F.relu(self.a(x))))

    torch.manual_seed(0)
    net = Net()
    graph = net.setup(torch.randn(2, 5))
    assert slot_pairs(graph["a"], "b") == [(u, u) for u in range(6)]
    net.validate_graph()
    fixed = torch.randn(8, 5)
    data = torch.utils.data.TensorDataset(torch.randn(32, 5), torch.randint(0, 2, (32,)))
    make = lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1)  # noqa: E731
    net.train_task(0, data, batch_size=8, num_classes=2, optimizer=make, epochs=2,
                   pruning=eidetic.Pruning(step=0.5, tolerance=0.5, max_steps=1), progress=False)
    net.eval()
    before = net.logits(fixed, 0).detach().clone()
    net.train_task(1, data, batch_size=8, num_classes=2, optimizer=make, epochs=2, progress=False)
    net.eval()
    assert torch.equal(net.logits(fixed, 0), before)


def test_embedding_on_the_input_side_never_forgets():
    class Bag(eidetic.ContinualNetwork):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(12, 6)
            self.fc = nn.Linear(6, 5)

        def forward(self, x):
            return F.relu(self.fc(self.emb(x).mean(dim=1)))

    torch.manual_seed(1)
    net = Bag()
    tokens = torch.randint(0, 12, (32, 4))
    data = torch.utils.data.TensorDataset(tokens, torch.randint(0, 3, (32,)))
    make = lambda p: torch.optim.Adam(p, lr=0.05)  # noqa: E731
    net.train_task(0, data, batch_size=8, num_classes=3, optimizer=make, epochs=2,
                   pruning=eidetic.Pruning(step=0.5, tolerance=0.5, max_steps=1), progress=False)
    assert {s.module for s in net.graph["emb"].outs} == {"emb"}
    net.eval()
    before = net.logits(tokens, 0).detach().clone()
    net.train_task(1, data, batch_size=8, num_classes=3, optimizer=make, epochs=2, progress=False)
    net.eval()
    assert torch.equal(net.logits(tokens, 0), before)


@settings(max_examples=40)
@given(st.one_of(st.tuples(st.just(MLP), mlp_specs()), st.tuples(st.just(CNN), cnn_specs()),
                 st.tuples(st.just(ResNet), resnet_specs())),
       st.integers(0, 2**16))
def test_measured_table_matches_torch_pruning_where_torch_pruning_is_right(family_spec, seed):
    """An independent reference for the probe: torch-pruning's trace of the same network, on the
    families it handles correctly: no split, 3-D concatenation or recurrence, no grouped
    convolution (torch-pruning couples a grouped layer with as many groups as outputs like a
    depthwise one), and no depthwise convolution of the raw input (torch-pruning's groups leave its
    channels without readers)."""
    family, spec = family_spec
    if family is CNN:
        kinds = [kind for _, kind in spec["layers"]]
        assume("grouped" not in kinds and kinds[0] != "depthwise")
    torch.manual_seed(seed)
    net = family(spec)
    example = torch.randn(2, *input_shape(family, spec))
    graph = net.setup(example)
    net.eval()
    proposal = propose(net, net.forward, collect_layers(net, [net.heads]), example, graph.feature_dim)
    assert eidetic.graph.compare(proposal, graph) == []
