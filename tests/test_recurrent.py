"""Recurrent layers: LSTM, GRU and RNN bodies never forget; the validator agrees with the
recurrent table (stacked and bidirectional included) and catches a wrong one."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils.data import DataLoader, TensorDataset

import eidetic
from eidetic.graph.recurrent import RecurrentSpec, check_recurrent
from eidetic.testing import all_logits, check_after_task, optimizers, runs

KINDS = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}
FEATURES, STEPS = 3, 4


class SeqNet(eidetic.ContinualNetwork):
    """An optional Linear embedding, a recurrent layer, and features read from its last step,
    its final hidden state or its mean over time; sequences optionally packed by length
    (trailing all-zero steps are padding)."""

    def __init__(self, spec: dict) -> None:
        super().__init__()
        self.spec = spec
        size = FEATURES
        self.embed = nn.Linear(FEATURES, spec["embed"]) if spec["embed"] else None
        size = spec["embed"] or FEATURES
        self.rnn = KINDS[spec["kind"]](size, spec["hidden"], num_layers=spec["layers"],
                                       bidirectional=spec["bidirectional"], batch_first=spec["batch_first"])

    def forward(self, x):
        spec = self.spec
        lengths = (x.abs().sum(dim=-1) > 0).sum(dim=1).clamp(min=1)
        h = self.embed(x) if self.embed is not None else x
        if not spec["batch_first"]:
            h = h.transpose(0, 1)
        if spec["packed"]:
            h = pack_padded_sequence(h, lengths.cpu(), batch_first=spec["batch_first"], enforce_sorted=False)
        out, state = self.rnn(h)
        if spec["read"] == "state":
            return (state[0] if isinstance(state, tuple) else state)[-1]
        if spec["packed"]:
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        elif not spec["batch_first"]:
            out = out.transpose(0, 1)
        if spec["read"] == "last":
            return out[torch.arange(x.shape[0]), lengths - 1]
        return out.sum(dim=1) / lengths[:, None]


recurrent_specs = st.fixed_dictionaries({
    "kind": st.sampled_from(sorted(KINDS)),
    "layers": st.integers(1, 2),
    "bidirectional": st.booleans(),
    "hidden": st.integers(2, 6),
    "batch_first": st.booleans(),
    "packed": st.booleans(),
    "read": st.sampled_from(["last", "state", "mean"]),
    "embed": st.sampled_from([0, 4]),
})


def sequences(n: int, classes: int, generator: torch.Generator) -> TensorDataset:
    x = torch.randn(n, STEPS, FEATURES, generator=generator)
    lengths = torch.randint(1, STEPS + 1, (n,), generator=generator)
    x[torch.arange(STEPS)[None, :] >= lengths[:, None]] = 0.0  # padding
    return TensorDataset(x, torch.randint(0, classes, (n,), generator=generator))


@given(spec=recurrent_specs, optimizer=optimizers(), plans=runs, seed=st.integers(0, 2**16))
def test_recurrent_bodies_never_forget(spec, optimizer, plans, seed, device):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = SeqNet(spec).to(device)
    fixed = sequences(6, 2, g).tensors[0].to(device)
    make_optimizer = optimizer.factory()
    logits, frozen = [], []
    for t, plan in enumerate(plans[:3]):
        loader = DataLoader(sequences(plan.samples, plan.classes, g), batch_size=plan.batch_size, shuffle=True)
        net.train_task(t, loader, num_classes=plan.classes, optimizer=make_optimizer, epochs=plan.epochs,
                       pruning=plan.pruning, clip_grad_norm=plan.clip, progress=False)
        check_after_task(net, fixed, t, logits, frozen)
        net.train()
        with torch.no_grad():  # no dropout or BatchNorm here: training mode gives the same outputs
            assert all(torch.equal(net.logits(fixed, j), logits[j]) for j in range(t + 1))


def spec_of_net(**overrides) -> dict:
    base = {"kind": "LSTM", "layers": 2, "bidirectional": True, "hidden": 3, "batch_first": True,
            "packed": False, "read": "last", "embed": 4}
    return {**base, **overrides}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize(("layers", "bidirectional"), [(1, False), (1, True), (2, False), (2, True)])
def test_the_validator_agrees_with_the_recurrent_table(kind, layers, bidirectional):
    net = SeqNet(spec_of_net(kind=kind, layers=layers, bidirectional=bidirectional))
    g = torch.Generator().manual_seed(0)
    graph = net.setup(sequences(2, 2, g).tensors[0])
    net.validate_graph()
    group = graph["rnn"]
    directions = 2 if bidirectional else 1
    assert group.size == layers * directions * 3
    (features,) = [s for s in group.ins if s.module == eidetic.graph.FEATURES]
    last = (layers - 1) * directions * 3
    assert features.units.tolist() == list(range(last, last + directions * 3))
    assert features.index.tolist() == list(range(directions * 3))
    (embedding,) = [s for s in graph["embed"].ins]
    assert embedding.module == "rnn" and embedding.index.tolist() == [0, 1, 2, 3]


class OffByOne(RecurrentSpec):
    """Gives unit j the gate rows of unit j + 1: a wrong table."""

    def producer_slices(self, module, positions):
        return super().producer_slices(module, (positions // self.hidden) * self.hidden
                                       + (positions + 1) % self.hidden)


class NoRecurrence(RecurrentSpec):
    """Forgets that weight_hh reads the layer's own units: a wrong table."""

    def consumer_entries(self, module, rows, columns):
        return [(n, m) for n, m in super().consumer_entries(module, rows, columns) if "weight_hh" not in n]


@pytest.mark.parametrize("wrong", [OffByOne, NoRecurrence])
def test_the_validator_catches_a_wrong_recurrent_table(wrong):
    net = SeqNet(spec_of_net())
    g = torch.Generator().manual_seed(0)
    net.setup(sequences(2, 2, g).tensors[0])
    right = net._eidetic.layers["rnn"][1]
    bad = wrong(**{f.name: getattr(right, f.name) for f in dataclasses.fields(right)})
    inputs = (torch.randn(2, STEPS, 4),)
    assert check_recurrent("rnn", net.rnn, right, inputs) == []
    problems = check_recurrent("rnn", net.rnn, bad, inputs)
    assert problems and all("recurrent layer 'rnn'" in p for p in problems)


def test_projections_are_refused():
    class Projected(eidetic.ContinualNetwork):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(3, 4, proj_size=2, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0][:, -1]

    with pytest.raises(eidetic.UnsupportedLayerError, match="proj_size=2 is not supported"):
        Projected().setup(torch.randn(2, STEPS, FEATURES))


def test_a_recurrent_checkpoint_round_trips():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    spec = spec_of_net(packed=True, read="state")
    net = SeqNet(spec)
    for t in range(2):
        net.train_task(t, sequences(32, 3, g), batch_size=8, num_classes=3, epochs=2, progress=False,
                       optimizer=lambda p: torch.optim.Adam(p, lr=0.02),
                       pruning=eidetic.Pruning(step=0.3, tolerance=0.2))
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    copy = SeqNet(spec)
    copy.load_state_dict(torch.load(buffer, weights_only=True))
    fixed = sequences(5, 3, g).tensors[0]
    assert all(torch.equal(a, b) for a, b in zip(all_logits(net, fixed), all_logits(copy, fixed), strict=True))


def test_each_layer_and_direction_is_pruned_and_reported_apart():
    torch.manual_seed(0)
    net = SeqNet(spec_of_net(kind="GRU", hidden=10, embed=0))
    with torch.no_grad():  # layer 1 forward weights dwarf the rest: a global ranking would prune elsewhere
        net.rnn.weight_ih_l1.mul_(100.0)
    g = torch.Generator().manual_seed(0)
    net.train_task(0, sequences(16, 2, g), batch_size=8, num_classes=2, epochs=1, progress=False,
                   optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
                   pruning=eidetic.Pruning(method="l2", step=0.5, tolerance=0.99, max_steps=1))
    rows = {layer.group: layer for layer in net.capacity().layers}
    assert sorted(rows) == ["rnn.l0", "rnn.l0_reverse", "rnn.l1", "rnn.l1_reverse"]
    for row in rows.values():  # half of every block's ten units pruned, the other five frozen
        assert (row.total, row.owned, row.free) == (10, {0: 5}, 5)
