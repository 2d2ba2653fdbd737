"""The pruning loop of issue 32: the metric on a fixed sample, recovery that stops within an epoch,
the adaptive step, the pruning ratio's bound, the paper's preset, and configurations that cannot
converge (a NaN metric, tolerance 0, a step of 1.0)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import eidetic
from eidetic.guarantee.ownership import Ownership
from eidetic.training.data import fixed_sample
from eidetic.training.pruning import alive_counts, group_blocks, select

from models import MLP

SPEC = {"in": 6, "widths": [8, 5], "bn": True, "act": "relu"}


def data(seed: int = 0, n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def adam(params):
    return torch.optim.Adam(params, lr=0.01)


def open_task(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    net = MLP(SPEC)
    net.train_task(0, data(), batch_size=8, num_classes=3, optimizer=adam, epochs=1, pruning=None, finish=False,
                   progress=False)
    return net


def tensors(net) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if isinstance(v, torch.Tensor)}


def pruned(net) -> int:
    return sum(int(m.sum()) for m in net._eidetic.ownership.pruned.values())


class PerfectUntil:
    """A metric that is perfect until more than ``limit`` units are pruned, then zero."""

    def __init__(self, net, limit: int) -> None:
        self.net, self.limit = net, limit

    def __call__(self, logits, targets):
        return torch.tensor(1.0 if pruned(self.net) <= self.limit else 0.0)


class RecoversAfter(eidetic.Callback):
    """A metric that drops to zero when units are pruned and is back to one after ``steps``
    optimizer steps (counted by its ``on_step_end``)."""

    def __init__(self, net, steps: int) -> None:
        self.net, self.needed, self.seen, self.steps = net, steps, 0, 0

    def on_step_end(self, task, loss):
        self.steps += 1

    def __call__(self, logits, targets):
        if pruned(self.net) != self.seen:
            self.seen, self.steps = pruned(self.net), 0
        return torch.tensor(1.0 if self.seen == 0 or self.steps >= self.needed else 0.0)


def indexed(n: int = 100) -> TensorDataset:
    return TensorDataset(torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.arange(n))


def test_a_fixed_sample_is_the_same_at_every_call_and_leaves_the_random_stream_alone():
    loader = DataLoader(indexed(), batch_size=16, shuffle=True)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    first = torch.cat([y for _, y in fixed_sample(loader, torch.device("cpu"), "data", 40)])
    second = torch.cat([y for _, y in fixed_sample(loader, torch.device("cpu"), "data", 40)])
    assert torch.equal(first, second) and len(first) == 40  # two whole batches and half of a third
    assert len(set(first.tolist())) == 40 and not torch.equal(first, torch.arange(40))  # shuffled, no repeats
    assert torch.equal(torch.get_rng_state(), state)  # training's shuffling is not disturbed


def test_a_fixed_sample_of_a_loader_with_its_own_generator():
    generator = torch.Generator().manual_seed(5)
    loader = DataLoader(indexed(), batch_size=16, shuffle=True, generator=generator)
    state = generator.get_state()
    first = torch.cat([y for _, y in fixed_sample(loader, torch.device("cpu"), "data", 24)])
    assert torch.equal(generator.get_state(), state)
    next(iter(loader))  # training draws from the generator in between
    second = torch.cat([y for _, y in fixed_sample(loader, torch.device("cpu"), "data", 24)])
    assert torch.equal(first, second)


def test_the_metric_is_measured_on_the_sample_only():
    seen = []

    def counting(logits, targets):
        seen.append(len(targets))
        return (logits.argmax(1) == targets).float().mean()

    net = open_task()
    net.prune_until(0, data(n=64), batch_size=8, optimizer=adam, metric=counting, progress=False,
                    pruning=eidetic.Pruning(sample=12, step=0.5, tolerance=0.99, recovery_epochs=0, max_steps=1))
    assert sum(seen[:2]) == 12  # the reference: a batch of 8 and 4 of the next
    assert seen and max(seen) <= 8


def test_recovery_stops_within_an_epoch_once_the_metric_is_back():
    net = open_task()
    metric = RecoversAfter(net, steps=5)
    steps = net.prune_until(0, data(n=128), batch_size=8, optimizer=adam, metric=metric, callbacks=[metric],
                            progress=False, pruning=eidetic.Pruning(step=0.5, tolerance=0.0, recovery_epochs=2,
                                                                    max_steps=1))
    # 16 batches an epoch, looked at every 4 steps: back at the look after the 8th step, not at the epoch's end
    assert len(steps) == 1 and steps[0].accepted
    assert steps[0].epochs == 1 and steps[0].steps == 8


def test_recovery_that_does_not_make_it_runs_its_epochs_and_is_rolled_back():
    net = open_task()
    metric = RecoversAfter(net, steps=1000)
    before = tensors(net)
    steps = net.prune_until(0, data(n=64), batch_size=8, optimizer=adam, metric=metric, callbacks=[metric],
                            progress=False, pruning=eidetic.Pruning(step=0.5, tolerance=0.0, recovery_epochs=2))
    assert [s.accepted for s in steps] == [False] and steps[0].epochs == 2 and steps[0].steps == 16
    assert pruned(net) == 0
    # the rollback restores the trained state exactly (prune_until's own optimizer moved nothing it kept)
    assert all(torch.equal(tensors(net)[key], value) for key, value in before.items())


def test_the_adaptive_step_halves_after_a_failure_and_retries_once():
    net = open_task()
    steps = net.prune_until(0, data(), batch_size=8, optimizer=adam, metric=PerfectUntil(net, limit=8),
                            progress=False, pruning=eidetic.Pruning(tolerance=0.0, recovery_epochs=0))
    # half of 8 and of 5 (2.5 rounds up): 7, kept; half of the 4 + 2 left: 3, too many; a quarter: 2, too many
    assert [sum(s.removed.values()) for s in steps] == [7, 3, 2]
    assert [s.accepted for s in steps] == [True, False, False]
    assert pruned(net) == 7


def test_a_fixed_step_stops_at_its_first_failure_as_before():
    net = open_task()
    steps = net.prune_until(0, data(), batch_size=8, optimizer=adam, metric=PerfectUntil(net, limit=8),
                            progress=False, pruning=eidetic.Pruning(step=0.5, tolerance=0.0, recovery_epochs=0))
    assert [s.accepted for s in steps] == [True, False]


@given(ratio=st.floats(0.05, 1.0), widths=st.lists(st.integers(1, 12), min_size=1, max_size=3),
       frozen=st.integers(0, 3), fraction=st.floats(0.01, 1.0), rounds=st.integers(1, 6))
def test_selection_never_prunes_past_the_ratio_nor_a_frozen_unit(ratio, widths, frozen, fraction, rounds):
    torch.manual_seed(0)
    net = MLP({"in": 4, "widths": widths, "bn": False, "act": "relu"})
    net.setup(torch.randn(2, 4))
    graph, blocks = net.graph, group_blocks(net._eidetic.layers, net.graph)
    ownership = Ownership(graph)
    for key in ownership.group_keys():
        ownership.owner[key][:frozen] = 0
    start = alive_counts(ownership, blocks)
    least = {key: [math.ceil((1.0 - ratio) * n - 1e-9) for n in counts] for key, counts in start.items()}
    for _ in range(rounds):
        select(ownership, {k: torch.rand(graph[k].size, dtype=torch.float64) for k in ownership.group_keys()}, blocks,
               fraction=fraction, least=least)
    for key, counts in alive_counts(ownership, blocks).items():
        assert all(n >= bound for n, bound in zip(counts, least[key]))
        assert not ownership.pruned[key][:frozen].any()


def test_the_loop_never_prunes_past_the_ratio():
    net = open_task()
    steps = net.prune_until(0, data(), batch_size=8, optimizer=adam, progress=False,
                            pruning=eidetic.Pruning(step=1.0, tolerance=0.99, recovery_epochs=0,
                                                    max_pruning_ratio=0.5))
    assert steps and all(s.accepted for s in steps)
    alive = {key: int(net._eidetic.ownership.alive(key).sum()) for key in net._eidetic.ownership.group_keys()}
    assert alive == {"fcs.0": 4, "fcs.1": 3}  # half of 8; 2.5 of 5 rounds up to 3 kept


def assert_task_1_refused_and_put_back(match: str, **kwargs) -> None:
    """After task 0, ``train_task(1, ..., **kwargs)`` raises a TaskError matching ``match`` and
    leaves the network exactly as it was."""
    torch.manual_seed(0)
    net = MLP(SPEC)
    net.train_task(0, data(), batch_size=8, num_classes=3, optimizer=adam, epochs=1, progress=False)
    before = tensors(net)
    with pytest.raises(eidetic.TaskError, match=match):
        net.train_task(1, data(1), batch_size=8, num_classes=3, optimizer=adam, epochs=1, progress=False, **kwargs)
    assert net.num_tasks == 1
    assert all(torch.equal(tensors(net)[key], value) for key, value in before.items())


def test_a_nan_metric_is_refused_with_a_clear_error_and_the_network_is_put_back():
    assert_task_1_refused_and_put_back(r"monitored metric is nan .*finite",
                                       metric=lambda logits, targets: torch.tensor(float("nan")))


def test_register_importance_checks_what_it_is_given(isolated_registries):
    with pytest.raises(TypeError, match="non-empty str"):
        eidetic.register_importance(123, lambda ctx: {})
    with pytest.raises(TypeError, match="must be callable"):
        eidetic.register_importance("mine", 3)
    with pytest.raises(eidetic.TaskError, match="'activation' is a built-in method"):
        eidetic.register_importance("activation", lambda ctx: {})
    eidetic.register_importance("mine", lambda ctx: {})
    eidetic.register_importance("mine", lambda ctx: {})  # one's own name again: replaced
    assert "mine" in eidetic.Pruning(method="mine").method


@pytest.mark.parametrize(("scores", "message"), [
    (lambda ctx: {}, r"group 'fcs.0' scores of shape NoneType; it needs one score per unit, a tensor of shape \(8,\)"),
    (lambda ctx: {g.key: torch.zeros(g.size + 1) for g in ctx.graph}, r"shape \(9,\); it needs .*\(8,\)"),
    (lambda ctx: [0.0], "returned a list"),
])
def test_an_importance_method_with_scores_of_the_wrong_shape_is_refused(scores, message, isolated_registries):
    eidetic.register_importance("wrong", scores)
    net = MLP(SPEC)
    with pytest.raises(eidetic.TaskError, match=message):
        net.train_task(0, data(), batch_size=8, num_classes=3, optimizer=adam, epochs=1, progress=False,
                       pruning=eidetic.Pruning(method="wrong"))
    assert net.num_tasks == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("kind", [eidetic.Pruning, eidetic.GracefulPruning])
def test_an_importance_method_with_non_finite_scores_is_refused(bad, kind, isolated_registries):
    """A NaN score ranks past the pruned units, so a step would remove nothing, forever."""
    eidetic.register_importance("broken", lambda ctx: {g.key: torch.full((g.size,), bad) for g in ctx.graph})
    assert_task_1_refused_and_put_back(r"importance 'broken' gave \d+ non-finite score\(s\).*'fcs.0'",
                                       pruning=kind(method="broken", monitor="train"))


@pytest.mark.parametrize(("pruning", "removed"), [
    (eidetic.Pruning(step=1.0, tolerance=0.0, recovery_epochs=3, max_pruning_ratio=1.0), 11),
    (eidetic.Pruning(tolerance=0.0, recovery_epochs=1, patience=5, max_pruning_ratio=1.0), 11),
    (eidetic.Pruning(threshold=1e9, tolerance=0.0, patience=3, max_pruning_ratio=1.0), 11),
    (eidetic.Pruning.paper(tolerance=0.0, recovery_epochs=1), 0),  # 5% of 8 or 5 units rounds to none
])
def test_configurations_that_cannot_converge_still_end(pruning, removed):
    """Tolerance 0 with a perfect metric keeps every step and a step of 1.0 removes all it may:
    each loop ends when a step rounds to zero units or the retries run out, within a bounded
    number of steps (all but one unit per group, 8 + 5 - 2, is all there is to remove)."""
    net = open_task()
    steps = net.prune_until(0, data(), batch_size=8, optimizer=adam, progress=False, pruning=pruning,
                            metric=lambda logits, targets: torch.tensor(1.0))
    assert all(s.accepted for s in steps)
    assert sum(sum(s.removed.values()) for s in steps) == removed == pruned(net)
    assert len(steps) <= removed


def test_the_paper_preset():
    few, many = eidetic.Pruning.paper(), eidetic.Pruning.paper(tasks=10)
    assert (few.method, few.step, few.recovery_epochs, few.patience, few.sample) == ("l2", 0.05, 5, 0, None)
    assert (few.tolerance, many.tolerance, many.tasks, few.max_pruning_ratio) == (0.01, 0.04, 10, 0.95)
    assert eidetic.Pruning.paper(tasks=3, step=0.01).step == 0.01


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sample": 0}, r"Pruning\(sample=0\)"),
    ({"sample": True}, r"Pruning\(sample=True\)"),
    ({"step": True}, r"Pruning\(step=True\)"),
    ({"step": 0.0}, r"Pruning\(step=0.0\)"),
    ({"max_pruning_ratio": 0.0}, r"Pruning\(max_pruning_ratio=0.0\)"),
    ({"max_pruning_ratio": 1.5}, r"Pruning\(max_pruning_ratio=1.5\)"),
    ({"patience": -1}, r"Pruning\(patience=-1\)"),
])
def test_bad_fields_are_refused(kwargs, message):
    with pytest.raises(eidetic.TaskError, match=message):
        eidetic.Pruning(**kwargs)


def test_the_report_times_the_phases_of_pruning_and_finishing():
    torch.manual_seed(0)
    net = MLP(SPEC)
    report = net.train_task(0, data(), batch_size=8, num_classes=3, optimizer=adam, epochs=1, progress=False)
    seconds = report.seconds
    assert {"train", "prune", "prune_training", "prune_evaluating", "finish", "freeze", "recycle", "total"} <= set(
        seconds)
    assert seconds["prune_training"] + seconds["prune_evaluating"] <= seconds["prune"]
    assert seconds["freeze"] + seconds["recycle"] <= seconds["finish"] + 1e-3
    assert all(s.steps >= 0 for s in report.prune_steps)
