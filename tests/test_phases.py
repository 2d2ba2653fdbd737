"""Each phase on its own: the guard, frozen BatchNorm, pruning selection and loop, freeze,
recycle, snapshots, and driving the phases by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import eidetic
from eidetic.guarantee.ownership import Ownership
from eidetic.testing import all_logits, assert_resistance
from eidetic.training.pruning import group_blocks, select

from models import MLP

SPEC = {"in": 6, "widths": [8, 5], "bn": True, "act": "relu"}


def data(seed: int = 0, n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01)


def open_task(pruning=None, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    net = MLP(SPEC)
    net.train_task(0, data(), batch_size=8, num_classes=3, optimizer=sgd, epochs=1, pruning=pruning, finish=False,
                   progress=False)
    return net


def test_select_never_takes_frozen_units_and_rounds():
    net = open_task()
    graph, blocks = net.graph, group_blocks(net._eidetic.layers, net.graph)
    ownership = Ownership(graph)
    ownership.owner["fcs.0"][:5] = 0  # five frozen units, three free
    scores = {key: torch.zeros(group.size, dtype=torch.float64) for key, group in zip(graph.keys(), graph)}
    removed = select(ownership, scores, blocks, fraction=1.0)
    assert removed == {"fcs.0": 3, "fcs.1": 4}  # all free units; a group with no frozen unit keeps one
    assert not ownership.pruned["fcs.0"][:5].any()
    assert select(ownership, scores, blocks, fraction=1.0) == {}
    fresh = Ownership(graph)
    assert select(fresh, scores, blocks, fraction=0.05) == {}  # round(0.05 * 8) == 0 everywhere
    assert select(fresh, scores, blocks, fraction=0.2) == {"fcs.0": 2, "fcs.1": 1}


@pytest.mark.parametrize("method", ["l1", "l2", "taylor", "random"])
def test_pruning_on_a_later_task_never_touches_frozen_units(method):
    torch.manual_seed(0)
    net = MLP(SPEC)
    net.train_task(0, data(), batch_size=8, num_classes=3, optimizer=sgd, epochs=1, progress=False,
                   pruning=eidetic.Pruning(step=0.5, tolerance=0.99, max_steps=1))
    owned = {k: v.clone() for k, v in net._eidetic.ownership.owner.items()}
    net.train_task(1, data(1), batch_size=8, num_classes=3, optimizer=sgd, epochs=1, finish=False, progress=False,
                   pruning=eidetic.Pruning(method=method, step=1.0, tolerance=0.99, max_steps=3))
    for key, owner in owned.items():
        frozen = owner != eidetic.FREE
        assert not net._eidetic.ownership.pruned[key][frozen].any()
        assert torch.equal(net._eidetic.ownership.owner[key], owner)


class StepMetric:
    """A metric that is perfect until more than ``limit`` units are pruned, then zero."""

    def __init__(self, net, limit: int) -> None:
        self.net, self.limit = net, limit

    def __call__(self, logits, targets):
        pruned = sum(int(m.sum()) for m in self.net._eidetic.ownership.pruned.values())
        return torch.tensor(1.0 if pruned <= self.limit else 0.0)


def test_a_step_beyond_tolerance_is_rolled_back_to_the_last_good_state():
    net = open_task()
    metric = StepMetric(net, limit=4)
    steps = net.prune_until(0, data(), batch_size=8, optimizer=sgd, metric=metric, progress=False,
                            pruning=eidetic.Pruning(step=0.3, tolerance=0.0, recovery_epochs=0))
    assert [s.accepted for s in steps] == [True] * (len(steps) - 1) + [False]
    pruned = sum(int(m.sum()) for m in net._eidetic.ownership.pruned.values())
    assert pruned == sum(sum(s.removed.values()) for s in steps if s.accepted) <= 4
    # the pruned units are exactly zero after the rollback
    for key, mask in net._eidetic.ownership.pruned.items():
        group = net.graph[key]
        for slot in group.outs:
            module, spec = net._eidetic.layers[slot.module]
            if spec.passthrough:
                continue
            rows = slot.index[mask[slot.units]]
            assert torch.all(module.weight[rows] == 0) and torch.all(module.bias[rows] == 0)


def test_patience_retries_a_failed_step_at_half_size():
    net = open_task()
    steps = net.prune_until(0, data(), batch_size=8, optimizer=sgd, metric=StepMetric(net, limit=3), progress=False,
                            pruning=eidetic.Pruning(step=1.0, tolerance=0.0, recovery_epochs=0, patience=2))
    removed = [sum(s.removed.values()) for s in steps]
    assert removed[:3] == [11, 7, 3]  # all but one unit per group (8 + 5 - 2), then half, then a quarter
    assert not steps[0].accepted and not steps[1].accepted and steps[2].accepted


def test_a_known_number_of_tasks_prunes_each_task_to_its_share_first(caplog):
    net = open_task()
    # the metric drops below the floor at the first pruned unit: the share step is kept anyway, ends the loop, and
    # says so
    with caplog.at_level("WARNING", logger="eidetic"):
        steps = net.prune_until(0, data(), batch_size=8, optimizer=sgd, metric=StepMetric(net, limit=0),
                                progress=False, pruning=eidetic.Pruning(tasks=4, tolerance=0.0, recovery_epochs=0))
    assert len(steps) == 1 and steps[0].accepted
    assert any("pruned to its share of the free units (Pruning(tasks=4))" in r.getMessage() for r in caplog.records)
    assert steps[0].removed == {"fcs.0": 6, "fcs.1": 4}  # keeps a quarter: 2 of 8, 1 of 5
    # within the floor, the tolerance loop goes on from the share
    net = open_task()
    steps = net.prune_until(0, data(), batch_size=8, optimizer=sgd, progress=False,
                            pruning=eidetic.Pruning(tasks=2, step=0.5, tolerance=0.99, recovery_epochs=0))
    assert steps[0].removed == {"fcs.0": 4, "fcs.1": 3}  # keeps half: 4 of 8, 2 of 5 (2.5 rounds up to 3 removed)
    assert len(steps) > 1 and all(s.accepted for s in steps)


def test_the_last_of_the_known_tasks_leaves_a_share_free_and_a_later_one_is_refused():
    """The last task keeps at most half of the free units: the rest stays free for the learned
    router, which is trained through them."""
    torch.manual_seed(0)
    net = MLP(SPEC)
    pruning = eidetic.Pruning(tasks=2, tolerance=0.99)
    first = net.train_task(0, data(), batch_size=8, num_classes=3, optimizer=sgd, epochs=1, pruning=pruning,
                           progress=False)
    free = {layer.group: layer.free for layer in net.capacity().layers}
    last = net.train_task(1, data(1), batch_size=8, num_classes=3, optimizer=sgd, epochs=1, pruning=pruning,
                          progress=False)
    assert first.prune_steps and last.prune_steps
    assert all(last.prune_steps[0].removed[group] >= free[group] // 2 for group in free)  # half of what was left
    assert all(layer.free > 0 for layer in net.capacity().layers)
    with pytest.raises(eidetic.TaskError, match=r"Pruning\(tasks=2\) plans for tasks 0..1, but this is task 2"):
        net.train_task(2, data(2), batch_size=8, num_classes=3, optimizer=sgd, epochs=1, pruning=pruning,
                       progress=False)


def test_a_step_that_rounds_to_zero_ends_the_loop():
    net = open_task()
    steps = net.prune_until(0, data(), batch_size=8, optimizer=sgd, progress=False,
                            pruning=eidetic.Pruning(step=0.01, tolerance=0.5))
    assert steps == []


def test_freeze_assigns_cuts_and_freezes_the_head():
    net = open_task(pruning=eidetic.Pruning(step=0.5, tolerance=0.99, max_steps=1))
    pruned = {k: v.clone() for k, v in net._eidetic.ownership.pruned.items()}
    assert any(m.any() for m in pruned.values())
    counts = net.freeze(0)
    owner = net._eidetic.ownership.owner
    assert counts == {k: int((~m).sum()) for k, m in pruned.items()}
    for key, mask in pruned.items():
        assert torch.all(owner[key][mask] == eidetic.FREE) and torch.all(owner[key][~mask] == 0)
    assert not any(p.requires_grad for p in net.heads[0].parameters())
    assert_resistance(net)


def test_recycle_reinitialises_free_units_only():
    net = open_task(pruning=eidetic.Pruning(step=0.5, tolerance=0.99, max_steps=1))
    net.freeze(0)
    before = net.fcs[0].weight.detach().clone()
    free = (net._eidetic.ownership.owner["fcs.0"] == eidetic.FREE)
    assert torch.all(before[free] == 0)  # pruned rows are zero until recycled
    recycled = net.recycle()
    after = net.fcs[0].weight.detach()
    assert recycled == sum(int((o == eidetic.FREE).sum()) for o in net._eidetic.ownership.owner.values())
    assert torch.equal(after[~free], before[~free])
    assert torch.all(after[free] != 0)
    assert not any(m.any() for m in net._eidetic.ownership.pruned.values())
    assert torch.all(net.bns[0].running_var[free] == 1) and torch.all(net.bns[0].weight[free] == 1)


def test_driving_the_phases_by_hand():
    net = open_task()
    assert net.open_task == 0
    with pytest.raises(eidetic.TaskError, match="task 0 is still open"):
        net.train_task(1, data(1), batch_size=8, num_classes=3, optimizer=sgd, epochs=1)
    with pytest.raises(eidetic.TaskError, match="freeze\\(0\\) it first"):
        net.recycle()
    with pytest.raises(eidetic.TaskError, match="task 1 is not open"):
        net.freeze(1)
    net.prune_until(0, data(), batch_size=8, optimizer=sgd, progress=False,
                    pruning=eidetic.Pruning(step=0.5, tolerance=0.99, max_steps=1))
    net.freeze(0)
    net.recycle()
    assert net.open_task is None
    fixed = torch.randn(4, 6)
    before = all_logits(net, fixed)[0]
    net.train_task(1, data(1), batch_size=8, num_classes=3, optimizer=sgd, epochs=1, progress=False)
    assert torch.equal(all_logits(net, fixed)[0], before)
    with pytest.raises(eidetic.TaskError, match="task 1 is not open"):
        net.prune_until(1, data(), optimizer=sgd)


def test_guard_holds_frozen_rows_against_weight_decay_and_momentum():
    net = open_task(pruning=eidetic.Pruning(step=0.5, tolerance=0.99, max_steps=1))
    net.freeze(0)
    net.recycle()
    guard = net._make_guard()
    frozen_rows = net._eidetic.ownership.owner["fcs.0"] != eidetic.FREE
    before = net.fcs[0].weight.detach().clone()
    opt = torch.optim.AdamW(net.parameters(), lr=0.5, weight_decay=0.5)
    net.train()
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(8, 6)).sum().backward()
        guard.zero_grads()
        assert torch.all(net.fcs[0].weight.grad[frozen_rows] == 0)
        opt.step()
        guard.enforce()
    after = net.fcs[0].weight.detach()
    assert torch.equal(after[frozen_rows], before[frozen_rows])
    assert not torch.equal(after[~frozen_rows], before[~frozen_rows])


def test_frozen_batchnorm_channels_use_frozen_statistics_in_training_mode():
    net = open_task(pruning=eidetic.Pruning(step=0.5, tolerance=0.99, max_steps=1))
    net.freeze(0)
    net.recycle()
    bn = net.bns[0]
    frozen = net._eidetic.ownership.owner["fcs.0"] != eidetic.FREE
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    x = torch.randn(16, 6) * 3
    h = net.fcs[0](x)
    bn.train()
    train_out = bn(h)
    assert torch.equal(bn.running_mean[frozen], mean[frozen])
    assert torch.equal(bn.running_var[frozen], var[frozen])
    assert not torch.equal(bn.running_mean[~frozen], mean[~frozen])  # free channels still learn statistics
    bn.eval()
    eval_out = bn(h)
    assert torch.equal(train_out[:, frozen], eval_out[:, frozen])
    batch_stats = F.batch_norm(h, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    assert torch.equal(train_out[:, ~frozen], batch_stats[:, ~frozen])
    train_out.sum().backward()  # the hook leaves the graph differentiable
