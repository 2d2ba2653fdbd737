"""``eidetic.testing``, the forgetting tests users run in their CI: they pass on every architecture
family of our core and recurrent tests, CPG and widened networks included, and they catch real
breakage (a guard that skips a restore, a BatchNorm that updates its frozen statistics, a head that
reads a free unit) with a message naming the broken tensor. Plus the ready Hypothesis property,
the docs' example, and the import guard of the ``testing`` extra.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import Phase
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from test_recurrent import FEATURES, STEPS, SeqNet, sequences
from torch import nn

import eidetic
import eidetic.guarantee.guard
import eidetic.guarantee.norm
import eidetic.guarantee.phases
import eidetic.inference.heads
from eidetic.testing import (
    ForgettingError,
    OptimizerChoice,
    TaskPlan,
    assert_never_forgets,
    assert_same_units,
    has_dropout,
    never_forgets_property,
    unit_state,
)

from models import CNN, MLP, ConcatNet, ResNet

ROOT = Path(__file__).resolve().parent.parent


class TokenNet(eidetic.ContinualNetwork):
    """Token ids through an Embedding and a GRU; the features are the GRU's last hidden state."""

    def __init__(self, vocab: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 5)
        self.gru = nn.GRU(5, 6, batch_first=True)

    def forward(self, tokens):
        return self.gru(self.embed(tokens))[1][-1]


def tokens(generator: torch.Generator, n: int) -> torch.Tensor:
    return torch.randint(0, 16, (n, 7), generator=generator)


def padded_sequences(generator: torch.Generator, n: int) -> torch.Tensor:
    return sequences(n, 2, generator).tensors[0]


def seq_spec(**changes) -> dict:
    spec = {"kind": "LSTM", "layers": 2, "bidirectional": True, "hidden": 4, "batch_first": True, "packed": True,
            "read": "last", "embed": 4}
    return {**spec, **changes}


MLP_SPEC = {"in": 6, "widths": [8, 8], "bn": True, "act": "relu", "dropout": 0.0}
CNN_SPEC = {"channels_in": 2, "size": 6, "layers": [(4, "plain"), (4, "grouped"), (4, "depthwise")], "bn": True,
            "pool": True, "features": 6}
CPGCNN = type("CPGCNN", (eidetic.CPGMixin, CNN), {})
CPGMLP = type("CPGMLP", (eidetic.CPGMixin, MLP), {})
LSGMLP = type("LSGMLP", (eidetic.LSGMixin, MLP), {})
LSGCNN = type("LSGCNN", (eidetic.LSGMixin, CNN), {})
RELEASING = eidetic.SparseGrowth(candidates=2, max_width=2.0, mask_lr=1.0, penalty=0.5)  # masks that flip at once

# (factory, input shape, more arguments of assert_never_forgets)
FAMILIES = {
    "mlp": (lambda: MLP(MLP_SPEC), (6,), {}),
    "mlp-dropout-tanh": (lambda: MLP({**MLP_SPEC, "act": "tanh", "dropout": 0.25}), (6,), {}),
    "mlp-single-head": (lambda: MLP({**MLP_SPEC, "single_head": True}), (6,), {}),
    "cnn2d": (lambda: CNN(CNN_SPEC), (2, 6, 6), {}),
    "cnn1d": (lambda: CNN({**CNN_SPEC, "dims": 1, "pool": False}), (2, 6), {}),
    "resnet": (lambda: ResNet({"channels_in": 2, "stem": 4, "blocks": [(4, 1), (6, 2)], "head": "pool"}), (2, 6, 6),
               {}),
    "concat-conv": (lambda: ConcatNet({"kind": "conv", "in": 2, "branches": [3, 4], "after": "flatten",
                                       "features": 5}), (2, 4, 4), {}),
    "concat-linear": (lambda: ConcatNet({"kind": "linear", "in": 4, "branches": [3, 2, 4], "after": "flatten",
                                         "features": 5}), (4,), {}),
    "lstm": (lambda: SeqNet(seq_spec()), None, {"input_sampler": padded_sequences}),
    "gru": (lambda: SeqNet(seq_spec(kind="GRU", bidirectional=False, packed=False, read="mean", embed=0)), None,
            {"input_sampler": padded_sequences}),
    "rnn": (lambda: SeqNet(seq_spec(kind="RNN", layers=1, batch_first=False, read="state")), (STEPS, FEATURES), {}),
    "embedding": (TokenNet, None, {"input_sampler": tokens}),
    "cpg-cnn-grows": (lambda: CPGCNN(CNN_SPEC), (2, 6, 6),
                      {"train_kwargs": {"goal": 1.0, "growing": eidetic.Growing(step=2, max_ratio=1.6)}}),
    "cpg-mlp-picks": (lambda: CPGMLP(MLP_SPEC), (6,), {"train_kwargs": lambda t: {"goal": 0.0 if t else None}}),
    "lsg-mlp-releases": (lambda: LSGMLP(MLP_SPEC), (6,), {"train_kwargs": {"goal": 1.0, "growth": RELEASING}}),
    "lsg-cnn-grows": (lambda: LSGCNN(CNN_SPEC), (2, 6, 6), {"train_kwargs": {"goal": 1.0, "growth": RELEASING}}),
    "widened-mlp": (lambda: MLP(MLP_SPEC), (6,), {"widen": {0: {"fcs.0": 3}, 1: {"fcs.1": 2, "fcs.0": 1}}}),
    "widened-cnn": (lambda: CNN({**CNN_SPEC, "layers": [(4, "plain"), (4, "depthwise")]}), (2, 6, 6),
                    {"widen": {0: {"fc": 2}, 1: {"convs.0": 2}}}),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_never_forgets(family):
    factory, shape, kwargs = FAMILIES[family]
    net = assert_never_forgets(factory, shape, **kwargs)
    assert net.num_tasks == 3 and net.open_task is None


def test_entries_released_since_the_snapshot_are_the_only_ones_that_may_change():
    torch.manual_seed(0)
    net = assert_never_forgets(lambda: LSGMLP(MLP_SPEC), (6,), train_kwargs={"goal": 1.0, "growth": RELEASING})
    owners = net._eidetic.masks.entry_owner
    assert owners, "no entry was released: the run did not exercise the exemption"
    name, owner = next(iter(owners.items()))
    module, tensor_name = name.rsplit(".", 1)
    weight = getattr(net.get_submodule(module), tensor_name)
    later = owner > torch.as_tensor(net._row_owner(name)).to(owner.device)
    assert bool(later.any())
    before = unit_state(net)  # the released entries already belong to the task that retrained them
    with torch.no_grad():
        weight[later] += 1.0
    with pytest.raises(ForgettingError, match="changed"):
        assert_same_units(net, before)


def test_the_run_prunes_for_real_and_follows_its_plans():
    net = assert_never_forgets(lambda: MLP(MLP_SPEC), (6,))
    for layer in net.capacity().layers:
        assert 0 < layer.owned[0] < layer.total, f"{layer.group}: task 0 kept {layer.owned[0]} of {layer.total}"
    plans = [TaskPlan(classes=c, samples=20, batch_size=8, epochs=1, pruning=None, clip=1.0) for c in (2, 4)]
    sgd = OptimizerChoice("SGD", (("lr", 0.1),), shared=True)
    net = assert_never_forgets(lambda: MLP(MLP_SPEC), (6,), tasks=plans, optimizers=[sgd])
    assert net.heads.classes == [2, 4]
    assert all(layer.free == 0 for layer in net.capacity().layers)  # no pruning: each task took every free unit


def test_a_shared_choice_is_one_instance_until_a_widening(monkeypatch):
    made = []

    class Counted(torch.optim.SGD):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(torch.optim, "SGD", Counted)
    shared = OptimizerChoice("SGD", (("lr", 0.1), ("momentum", 0.9)), shared=True)
    assert_never_forgets(lambda: MLP(MLP_SPEC), (6,), tasks=4, optimizers=[shared, shared], widen={1: {"fcs.0": 2}})
    assert len(made) == 2  # tasks 0 and 1 share one instance; tasks 2 and 3 a new one, for the widened parameters
    made.clear()
    assert_never_forgets(lambda: MLP(MLP_SPEC), (6,), tasks=2, optimizers=OptimizerChoice("SGD", (("lr", 0.1),), False))
    assert len(made) == 2


def test_widening_a_group_that_cannot_grow_is_refused():
    """A group read by a grouped convolution cannot grow: the refusal reaches the caller."""
    with pytest.raises(eidetic.UnsupportedLayerError, match=r"module 'convs\.1' .* is a grouped convolution"):
        assert_never_forgets(lambda: CNN(CNN_SPEC), (2, 6, 6), tasks=1, widen={0: {"convs.0": 2}})


def test_dropout_is_detected():
    assert has_dropout(MLP({**MLP_SPEC, "dropout": 0.25})) and not has_dropout(MLP(MLP_SPEC))


# ------------------------------------------------------------------------------------- breakage


def skip_a_restore(monkeypatch) -> None:
    """The guard no longer writes back the frozen rows of ``fcs.0.weight``."""
    restore = eidetic.guarantee.guard.FrozenSlice.restore

    def restore_but_fcs0(self):
        if (self.module, self.name) != ("fcs.0", "weight"):
            restore(self)

    monkeypatch.setattr(eidetic.guarantee.guard.FrozenSlice, "restore", restore_but_fcs0)


def update_frozen_statistics(monkeypatch) -> None:
    """BatchNorm layers lose what keeps frozen channels on their frozen statistics in training mode."""
    monkeypatch.setattr(eidetic.guarantee.norm, "frozen_state", lambda module: None)


def read_free_units(monkeypatch) -> None:
    """A finished task's head keeps its columns of pruned units: neither the guard (while the task
    trains) nor the cut (when it freezes) zeroes them."""
    cut, init = eidetic.guarantee.phases.cut, eidetic.guarantee.guard.Guard.__init__
    monkeypatch.setattr(eidetic.guarantee.phases, "cut",
                        lambda layers, graph, ownership, rows, head: cut(layers, graph, ownership, rows, None))

    def guard_without_head(self, layers, graph, ownership, head_slices, head=None, released=None):
        init(self, layers, graph, ownership, head_slices, None, released)

    monkeypatch.setattr(eidetic.guarantee.guard.Guard, "__init__", guard_without_head)


def read_every_feature(monkeypatch) -> None:
    """A shared head: each task reads every feature, free ones included."""
    freeze = eidetic.inference.heads.TaskHeads.freeze
    monkeypatch.setattr(eidetic.inference.heads.TaskHeads, "freeze",
                        lambda self, task, features: freeze(self, task, torch.ones_like(features)))


@pytest.mark.parametrize(("breakage", "spec", "when", "message"), [
    (skip_a_restore, MLP_SPEC, "after task 1",
     r"frozen slice fcs\.0\.weight of task 0 changed: \d+ of \d+ entries differ, largest difference [0-9.e-]+"),
    (update_frozen_statistics, MLP_SPEC, "after task 0",
     r"in a training-mode pass: frozen slice bns\.0\.running_mean of task 0 changed: .* largest difference"),
    (read_free_units, MLP_SPEC, "after task 0",
     r"heads\.0\.weight: task 0's head reads a free or later unit through \d+ non-zero entries"),
    (read_every_feature, {**MLP_SPEC, "single_head": True}, "after task 0",
     r"heads\.mask_0: task 0 reads the shared head through a wrong feature mask"),
], ids=["guard-skips-a-restore", "batchnorm-updates-statistics", "head-reads-free-units", "shared-head-reads-all"])
def test_breaking_the_guarantee_fails_with_the_broken_tensor(monkeypatch, breakage, spec, when, message):
    breakage(monkeypatch)
    with pytest.raises(ForgettingError, match=message) as error:
        assert_never_forgets(lambda: MLP(spec), (6,))
    assert error.value.when == when and str(error.value).startswith(f"eidetic forgot {when}:")
    assert "the run: seed=0" in str(error.value)


def test_a_logit_change_alone_is_reported(monkeypatch):
    """Task 0's head silently changes with the task count: no tensor of the body moved."""
    output = eidetic.inference.heads.TaskHeads.output
    monkeypatch.setattr(eidetic.inference.heads.TaskHeads, "output",
                        lambda self, features, task: output(self, features, task) + (self.num_tasks - 1) * 1e-3)
    with pytest.raises(ForgettingError, match=r"task 0's logits changed: 24 of 24 entries differ, largest difference "
                                              r"0\.001") as error:
        assert_never_forgets(lambda: MLP(MLP_SPEC), (6,), tasks=2)
    assert len(error.value.problems) == 1


# ------------------------------------------------------------------------------------- the property

test_cnn_property = never_forgets_property(lambda: CNN(CNN_SPEC), (2, 6, 6), max_examples=3,
                                           plans=st.lists(st.sampled_from([
                                               TaskPlan(2, 16, 8, 1, eidetic.Pruning(step=0.5, max_steps=1)),
                                               TaskPlan(3, 24, 8, 1, None, clip=1.0)]), min_size=2, max_size=3))


def test_the_property_is_a_named_test_that_catches_breakage(monkeypatch):
    sgd = OptimizerChoice("SGD", (("lr", 0.1), ("weight_decay", 0.1)), shared=False)  # decay moves any weight
    prop = never_forgets_property(lambda: MLP(MLP_SPEC), (6,), train_mode=st.just(True), optimizers=st.just(sgd),
                                  plans=st.lists(st.just(TaskPlan(3, 24, 8, 1, None)), min_size=2, max_size=3),
                                  settings=hypothesis_settings(max_examples=2, phases=[Phase.generate], database=None,
                                                               deadline=None))
    assert prop.__name__ == "test_lambda_never_forgets" and prop.hypothesis.inner_test
    skip_a_restore(monkeypatch)
    with pytest.raises(ForgettingError, match=r"frozen slice fcs\.0\.weight of task 0 changed"):
        prop()


def test_the_property_refuses_what_it_draws_itself():
    with pytest.raises(TypeError, match=r"\['seed'\]: drawn by the property"):
        never_forgets_property(TokenNet, seed=3)
    with pytest.raises(TypeError, match="settings or max_examples"):
        never_forgets_property(TokenNet, max_examples=3, settings=hypothesis_settings())


# ------------------------------------------------------------------------------------- docs, extra


def test_the_docs_example_runs():
    """docs/testing.md: the network, then the lines of the test file; each test they define runs."""
    page = (ROOT / "docs" / "testing.md").read_text()
    namespace: dict = {"__name__": "docs_testing"}
    for i, code in enumerate(re.findall(r"```python\n(.*?)```", page, re.DOTALL)):
        exec(compile(code, f"testing.md[{i}]", "exec"), namespace)
    tests = {name: f for name, f in namespace.items() if name.startswith("test_") and callable(f)}
    assert tests, "docs/testing.md defines no test"
    for test in tests.values():
        test()


def test_import_eidetic_does_not_import_hypothesis_and_the_extra_is_named():
    code = ("import sys, eidetic\n"
            "assert 'hypothesis' not in sys.modules, 'import eidetic imported hypothesis'\n"
            "sys.modules['hypothesis'] = None\n"
            "try:\n"
            "    import eidetic.testing\n"
            "except ImportError as error:\n"
            "    print(error)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert 'pip install "eidetic[testing]"' in done.stdout


def test_a_plain_function_of_the_network_is_refused():
    with pytest.raises(TypeError, match=r"eidetic\.ContinualNetwork, got Linear"):
        assert_never_forgets(lambda: nn.Linear(3, 3), (3,))
    with pytest.raises(ValueError, match="input_sampler"):
        assert_never_forgets(TokenNet)
