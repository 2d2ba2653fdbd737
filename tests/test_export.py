"""Export for deployment: ``net.export(tasks, router=...)`` gives a plain ``torch.export``
module with only the units its tasks read, whose outputs match ``logits(x, task)`` within float
tolerance (not bitwise: the products run at smaller shapes), which routes as ``predict`` does,
runs without eidetic, and leaves the network unchanged."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_recurrent import FEATURES, STEPS, SeqNet, recurrent_specs
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import eidetic

from models import CNN, MLP, ConcatNet, ResNet, input_shape
from strategies import cnn_specs, concat_specs, mlp_specs, resnet_specs

examples = settings(max_examples=max(6, settings.default.max_examples // 25))  # 6 by default, 80 deep
_CPG = {family: type(f"CPG{family.__name__}", (eidetic.CPGMixin, family), {})
        for family in (MLP, CNN, ResNet, SeqNet)}

architectures = st.one_of(
    st.tuples(st.just(MLP), mlp_specs()),
    st.tuples(st.just(CNN), cnn_specs()),
    st.tuples(st.just(ResNet), resnet_specs()),
    st.tuples(st.just(ConcatNet), concat_specs()),
    st.tuples(st.just(SeqNet), recurrent_specs.filter(lambda s: not s["packed"])),  # packing: see below
)


def _shape(family, spec) -> tuple[int, ...]:
    return (STEPS, FEATURES) if family is SeqNet else input_shape(family, spec)


def _trained(net, shape, tasks: int, pruning, seed: int, **options):
    generator = torch.Generator().manual_seed(seed)
    classes = 3
    for t in range(tasks):
        x = torch.randn(32, *shape, generator=generator) * (1 + t)
        y = torch.randint(0, classes, (32,), generator=generator)
        net.train_task(t, DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True), num_classes=classes,
                       epochs=1, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), pruning=pruning,
                       progress=False, **options)
    return net.eval()


def _close(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Approximate by nature: the export's products run at smaller shapes, with other kernels."""
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def _body_parameters(module: nn.Module) -> int:
    return sum(p.numel() for name, p in module.named_parameters() if "heads" not in name)


@given(architecture=architectures, tasks=st.integers(2, 3), cpg=st.booleans(),
       pruning=st.sampled_from([None, eidetic.Pruning(step=0.5, max_steps=1, tolerance=0.99)]),
       seed=st.integers(0, 2**16))
@examples
def test_export_matches_every_task(architecture, tasks, cpg, pruning, seed):
    """Every family, with and without pruning and CPG's masks: each task's exported logits match
    its logits, for all tasks at once, one task alone and at another batch size; the module holds
    no eidetic object and the network is unchanged by exporting."""
    family, spec = architecture
    torch.manual_seed(seed)
    shape = _shape(family, spec)
    net = _trained((_CPG[family] if cpg and family in _CPG else family)(spec), shape, tasks, pruning, seed)
    x = torch.randn(5, *shape)
    with torch.no_grad():
        before = [net.logits(x, k) for k in range(tasks)]
        every, last = net.export(), net.export(tasks - 1)
        for k, out in enumerate(every(x)):
            _close(out, before[k])
        _close(last(x), before[-1])
        _close(last(x[:1]), before[-1][:1])
        assert all(torch.equal(net.logits(x, k), before[k]) for k in range(tasks))
    assert all(not type(m).__module__.startswith("eidetic") for m in every.modules())
    assert not any(p.requires_grad for p in every.parameters())


def test_export_removes_the_units_no_exported_task_reads():
    """Pruned and later tasks' units are gone: the exported tensors have the owned sizes."""
    torch.manual_seed(0)
    net = _trained(MLP({"in": 6, "widths": [10, 8], "bn": True, "act": "relu"}), (6,), 2,
                   eidetic.Pruning(step=0.5, max_steps=1, tolerance=0.99), seed=0)
    owner = net._eidetic.ownership.owner
    first = {key: int((o == 0).sum()) for key, o in owner.items()}
    both = {key: int((o >= 0).sum()) for key, o in owner.items()}
    assert first["fcs.0"] < both["fcs.0"] < 10  # pruning freed some units, the second task took some
    shapes = {name: tuple(t.shape) for name, t in net.export(0).state_dict().items()}
    assert shapes["bodies.0.fcs.0.weight"] == (first["fcs.0"], 6)
    assert shapes["bodies.0.fcs.1.weight"] == (first["fcs.1"], first["fcs.0"])
    assert shapes["bodies.0.bns.0.running_mean"] == (first["fcs.0"],)
    assert shapes["heads.0_0.weight"] == (3, first["fcs.1"])
    shapes = {name: tuple(t.shape) for name, t in net.export().state_dict().items()}
    assert shapes["bodies.0.fcs.1.weight"] == (both["fcs.1"], both["fcs.0"])
    assert _body_parameters(net.export(0)) < _body_parameters(net.export()) < _body_parameters(net)


@pytest.mark.parametrize("router", ["auto", "gaussian", "discriminant", "statistics", "learned", "energy"])
def test_exported_router_answers_as_predict(router):
    """With a router the module returns ``(task, label)`` as ``predict`` picks them; the heads of
    a subset of tasks choose among those tasks only."""
    torch.manual_seed(1)
    net = _trained(CNN({"channels_in": 1, "size": 6, "layers": [(4, "plain"), (5, "plain")], "bn": True,
                        "pool": True, "features": 6}), (1, 6, 6), 3, eidetic.Pruning(step=0.5, max_steps=1),
                   seed=1, memory=8)
    x = torch.randn(64, 1, 6, 6) * torch.tensor([1.0, 2.0, 3.0]).repeat_interleave(22)[:64, None, None, None]
    with torch.no_grad():
        expected = net.predict(x, router=None if router == "auto" else router)
        task, label = net.export(router=router)(x)
        assert torch.equal(task, expected.task) and torch.equal(label, expected.label)
        task, _ = net.export([0, 2], router=router)(x)
        scores = expected.task_scores[:, [0, 2]]
        assert torch.equal(task, torch.tensor([0, 2])[scores.argmax(dim=1)])


@pytest.mark.parametrize("router", ["gaussian", "discriminant", "learned"])
def test_exporting_before_any_predict_leaves_the_router_usable(router):
    """The routers cache constants on first use; the first use being the export's trace, the
    cache must not keep the tracer's fake tensors (predict then returned fake tensors). The
    learned router is fitted there, as predict would fit it."""
    torch.manual_seed(5)
    net = _trained(MLP({"in": 6, "widths": [8, 8], "bn": True, "act": "relu"}), (6,), 2, None, seed=5)
    x = torch.randn(11, 6)
    with torch.no_grad():
        task, _ = net.export(router=router)(x)
        predicted = net.predict(x, router=router)
        assert type(predicted.task) is torch.Tensor and torch.equal(predicted.task, task)


def test_exported_cpg_task_uses_its_own_picked_weights():
    """A masked task's exported logits are those of its own pass, not of the shared one."""
    torch.manual_seed(2)
    net = _trained(_CPG[MLP]({"in": 6, "widths": [8, 8], "bn": False, "act": "relu"}), (6,), 2, None, seed=2,
                   picking=eidetic.Picking(lr=0.5))
    assert not all(bool(m.all()) for m in net._eidetic.masks.values(1).values())  # it dropped some weights
    x = torch.randn(9, 6)
    with torch.no_grad():
        _close(net.export(1)(x), net.logits(x, 1))
        shared = net.heads.output(net(x).flatten(1), 1)
        assert not torch.allclose(net.export(1)(x), shared)
        task, label = net.export(router="confidence")(x)
        expected = net.predict(x, router="confidence")
        assert torch.equal(task, expected.task) and torch.equal(label, expected.label)


def test_exported_lsg_tasks_match_after_growth_and_released_kernels():
    """Learnable sparse growth: kernel masks, grown units, and kernels released by task 0's masks
    and retrained by task 1 (which task 0's export must not read)."""
    torch.manual_seed(4)
    net = type("LSGMLP", (eidetic.LSGMixin, MLP), {})({"in": 6, "widths": [6, 6], "bn": True, "act": "relu"})
    strong = eidetic.SparseGrowth(candidates=2, max_width=2.0, mask_lr=1.0, penalty=0.5)
    _trained(net, (6,), 1, None, seed=4, growth=strong)
    growing = eidetic.SparseGrowth(candidates=2, max_width=2.0, mask_lr=0.05)
    generator = torch.Generator().manual_seed(5)
    x, y = torch.randn(32, 6, generator=generator), torch.randint(0, 3, (32,), generator=generator)
    report = net.train_task(1, DataLoader(TensorDataset(x, y), batch_size=8), num_classes=3, epochs=1,
                            optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), progress=False, goal=1.0,
                            growth=growing)
    assert report.released and report.grown
    net.eval()
    x = torch.randn(9, 6)
    with torch.no_grad():
        for k, out in enumerate(net.export()(x)):
            _close(out, net.logits(x, k))


def test_exported_masked_task_after_its_recurrent_layer_grew():
    """A recurrent layer keeps its whole width in the export (it cannot be resized), free units
    included, and in task 0's masked view the network computes those at the shape the layer had
    when task 0 ended; no head reads them, so only the tasks' own units are compared, and every
    task's logits match."""
    spec = {"kind": "LSTM", "layers": 1, "bidirectional": False, "hidden": 8, "batch_first": True,
            "packed": False, "read": "last", "embed": 0}
    torch.manual_seed(0)
    net = type("LSGSeqNet", (eidetic.LSGMixin, SeqNet), {})(spec)
    growth = eidetic.SparseGrowth(mask_lr=1e-2, max_ratio=3.0, select=False, release=False)
    _trained(net, (STEPS, FEATURES), 2, eidetic.Pruning(step=0.5, max_steps=2, tolerance=0.99), seed=1,
             goal=1.0, growth=growth)
    state = net._eidetic
    assert state.eras.records and state.masks.has(0)  # grew with task 0 frozen and masked
    assert (state.ownership.owner["rnn"][:spec["hidden"]] == -1).any()  # free units where the layer was then
    x = torch.randn(9, STEPS, FEATURES)
    with torch.no_grad():
        for k, out in enumerate(net.export()(x)):
            _close(out, net.logits(x, k))


def test_export_after_widening():
    """Heads from before a widening read their old features at their new positions."""
    torch.manual_seed(3)
    net = _trained(MLP({"in": 5, "widths": [6, 6], "bn": True, "act": "relu"}), (5,), 1, None, seed=3)
    net.widen({"fcs.0": 3, "fcs.1": 2})
    net.train_task(1, DataLoader(TensorDataset(torch.randn(24, 5), torch.randint(0, 2, (24,))), batch_size=8),
                   num_classes=2, epochs=1, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), progress=False)
    net.eval()
    x = torch.randn(7, 5)
    with torch.no_grad():
        for k, out in enumerate(net.export()(x)):
            _close(out, net.logits(x, k))


def test_exported_program_runs_without_eidetic(tmp_path):
    """``torch.export.save`` of the module loads and runs in a process where eidetic cannot be
    imported, with the same outputs."""
    torch.manual_seed(4)
    net = _trained(ResNet({"channels_in": 2, "size": 6, "stem": 4, "blocks": [(4, 1), (5, 2)], "head": "pool"}),
                   (2, 6, 6), 2, eidetic.Pruning(step=0.5, max_steps=1), seed=4, memory=4)
    x = torch.randn(3, 2, 6, 6)
    module = net.export(router="auto")
    path = tmp_path / "net.pt2"
    batch = {0: torch.export.Dim("batch")}
    torch.export.save(torch.export.export(module, (x,), dynamic_shapes=(batch,)), str(path))
    x = torch.randn(5, 2, 6, 6)  # another batch size than the one traced
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        task, label = module(x)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["eidetic"] = None  # any import of eidetic fails
        import torch
        program = torch.export.load({str(path)!r})
        task, label = program.module()(torch.load({str(tmp_path / "x.pt")!r}))
        print(task.tolist(), label.tolist())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[0] == f"{task.tolist()} {label.tolist()}"


def test_export_refusals_name_the_cause():
    """Nothing finished, unknown or repeated tasks: clear errors."""
    net = MLP({"in": 4, "widths": [6], "bn": False, "act": "relu"})
    with pytest.raises(eidetic.TaskError, match="at least one finished task"):
        net.export()
    _trained(net, (4,), 1, eidetic.Pruning(step=0.5, max_steps=1, tolerance=0.99), seed=5)
    for tasks, message in [(3, "task 3 is not a finished task"), ([0, 0], "each task once"),
                           ([], "at least one"), (1.0, "give a task id"), ("0", "give a task id")]:
        with pytest.raises(eidetic.TaskError, match=message):
            net.export(tasks)


class _Reshaping(eidetic.ContinualNetwork):
    """One Linear layer whose features go through ``reshape``."""

    def __init__(self, reshape):
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.reshape = reshape

    def forward(self, x):
        return self.reshape(torch.relu(self.fc(x)))


@pytest.mark.parametrize(("reshape", "pruning", "message"), [
    (lambda h: h.reshape(len(h), 6), None, "batch size"),  # len() fixes the batch size in torch.export
    (lambda h: h.view(-1, 6), eidetic.Pruning(step=0.5, max_steps=1, tolerance=0.99), "hard-code a width"),
], ids=["fixed-batch", "hard-coded-width"])
def test_export_refuses_a_forward_that_fixes_a_size(reshape, pruning, message):
    net = _Reshaping(reshape)
    _trained(net, (4,), 1, pruning, seed=7)
    with pytest.raises(eidetic.GraphError, match=message):
        net.export()


def test_export_refuses_packed_sequences_with_the_reason():
    """torch.export cannot trace ``pack_padded_sequence`` over data-dependent lengths."""
    spec = {"kind": "LSTM", "layers": 1, "bidirectional": False, "hidden": 4, "batch_first": True,
            "packed": True, "read": "last", "embed": 0}
    net = _trained(SeqNet(spec), (STEPS, FEATURES), 1, None, seed=9)
    with pytest.raises(eidetic.GraphError, match=r"torch\.export could not trace"):
        net.export()
