"""CLNP as a configuration: activation importance, thresholds, graceful forgetting, L1."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import eidetic


class Net(eidetic.ContinualNetwork):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 10), nn.Linear(10, 5)

    def forward(self, x):
        return F.relu(self.fc2(F.relu(self.fc1(x))))


def data(seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(48, 6, generator=g), torch.randint(0, 2, (48,), generator=g))


def sgd(params):
    return torch.optim.SGD(params, lr=0.05)


def open_net(dead: list[int]) -> Net:
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # these units of fc1 never fire: ReLU of a very negative pre-activation
        net.fc1.weight[dead] = 0.0
        net.fc1.bias[dead] = -100.0
    net.train_task(0, data(), batch_size=8, num_classes=2, optimizer=sgd, epochs=1, pruning=None, finish=False,
                   progress=False)
    return net


def test_activation_pruning_removes_dead_units_first():
    dead = [1, 4, 7]
    net = open_net(dead)
    steps = net.prune_until(0, data(), batch_size=8, optimizer=sgd, progress=False,
                            pruning=eidetic.Pruning(method="activation", step=0.3, tolerance=0.99, max_steps=1))
    assert steps[0].removed["fc1"] == 3
    assert net._eidetic.ownership.pruned["fc1"].nonzero().flatten().tolist() == dead


def test_a_threshold_removes_exactly_the_units_at_or_below_it():
    dead = [0, 9]
    net = open_net(dead)
    net.prune_until(0, data(), batch_size=8, optimizer=sgd, progress=False,
                    pruning=eidetic.Pruning(method="activation", threshold=0.0, tolerance=0.99, recovery_epochs=0))
    assert net._eidetic.ownership.pruned["fc1"].nonzero().flatten().tolist() == dead


class Rank:
    """Scores fc1's unit i as i (and every other unit as unprunable), for a known order."""

    def __call__(self, context):
        return {g.key: (torch.arange(g.size, dtype=torch.float64) if g.key == "fc1"
                        else torch.full((g.size,), 1e9, dtype=torch.float64)) for g in context.graph}


def test_graceful_pruning_keeps_the_sparsest_result_within_the_margin(isolated_registries):
    eidetic.register_importance("rank", Rank())
    net = open_net([])

    def metric(logits, targets):  # 1.0 unpruned, 0.01 less per pruned unit
        pruned = int(net._eidetic.ownership.pruned["fc1"].sum())
        return torch.tensor(1.0 - 0.01 * pruned)

    steps = net.prune_until(0, data(), batch_size=8, optimizer=sgd, metric=metric, progress=False,
                            pruning=eidetic.GracefulPruning(method="rank", thresholds=(0.5, 1.5, 2.5, 3.5, 4.5),
                                                            margin=0.035, monitor="train"))
    assert [s.removed["fc1"] for s in steps] == [1, 2, 3, 4, 5]
    assert [s.accepted for s in steps] == [False, False, True, False, False]
    assert steps[2].threshold == 2.5
    assert net._eidetic.ownership.pruned["fc1"].nonzero().flatten().tolist() == [0, 1, 2]
    assert steps[2].metric == pytest.approx(0.97)  # float arithmetic of the metric itself


def test_graceful_pruning_tries_each_selection_once_and_keeps_only_what_holds_when_redone(isolated_registries):
    """Thresholds that remove the same units are one trial. The chosen trial is redone (with
    recovery epochs the redone training differs); if it then falls short of the margin, the next
    sparsest is kept."""
    eidetic.register_importance("rank", Rank())
    net = open_net([])
    calls: dict[int, int] = {}

    def metric(logits, targets):  # 1.0 unpruned, 0.01 less per pruned unit; 3 pruned units fall short when redone
        pruned = int(net._eidetic.ownership.pruned["fc1"].sum())
        calls[pruned] = calls.get(pruned, 0) + 1
        redone = pruned == 3 and calls[pruned] > len(data()) // 8  # one measurement is 6 batches
        return torch.tensor(0.5 if redone else 1.0 - 0.01 * pruned)

    steps = net.prune_until(0, data(), batch_size=8, optimizer=sgd, metric=metric, progress=False,
                            pruning=eidetic.GracefulPruning(method="rank", thresholds=(0.5, 0.7, 1.5, 2.5, 2.6),
                                                            margin=0.035, monitor="train"))
    assert [s.removed["fc1"] for s in steps] == [1, 2, 3]
    assert [s.accepted for s in steps] == [False, True, False]
    assert net._eidetic.ownership.pruned["fc1"].nonzero().flatten().tolist() == [0, 1]


def test_graceful_pruning_with_default_thresholds_prunes_within_the_margin():
    net = open_net([2, 3])
    report_steps = net.prune_until(0, data(), batch_size=8, optimizer=sgd, val_data=data(1), progress=False,
                                   pruning=eidetic.GracefulPruning(margin=0.05))
    assert 1 <= len(report_steps) <= 9  # the 10%..90% quantiles of the scores, one trial per distinct selection
    assert sum(s.accepted for s in report_steps) <= 1
    net.freeze(0)
    net.recycle()


def l1_norm_of_free_rows(l1) -> float:
    torch.manual_seed(0)
    net = Net()
    net.train_task(0, data(), batch_size=8, num_classes=2, optimizer=sgd, epochs=1, progress=False,
                   pruning=eidetic.Pruning(step=0.5, tolerance=0.99, max_steps=1))
    frozen_rows = net._eidetic.ownership.owner["fc1"] != eidetic.FREE
    before = net.fc1.weight.detach()[frozen_rows].clone()
    net.train_task(1, data(1), batch_size=8, num_classes=2, optimizer=sgd, epochs=3, l1=l1, pruning=None,
                   finish=False, progress=False)
    assert torch.equal(net.fc1.weight.detach()[frozen_rows], before)  # the penalty never moves frozen rows
    return float(net.fc1.weight.detach()[~frozen_rows].abs().sum())


def test_the_l1_penalty_shrinks_the_trained_weights_only():
    plain = l1_norm_of_free_rows(None)
    assert l1_norm_of_free_rows(0.05) < plain
    assert l1_norm_of_free_rows({"fc1": 0.05}) < plain


def test_the_l1_penalty_names_layers():
    net = Net()
    with pytest.raises(eidetic.TaskError, match=r"l1 names \['fc9'\]"):
        net.train_task(0, data(), batch_size=8, num_classes=2, optimizer=sgd, epochs=1, l1={"fc9": 0.1},
                       progress=False)
    for bad in (-1.0, {"fc1": float("nan")}):
        with pytest.raises(eidetic.TaskError, match="finite number >= 0"):
            net.train_task(0, data(), batch_size=8, num_classes=2, optimizer=sgd, epochs=1, l1=bad, progress=False)
    assert net.num_tasks == 0


def test_graceful_pruning_configuration_is_checked():
    with pytest.raises(eidetic.TaskError, match="margin"):
        eidetic.GracefulPruning(margin=1.5)
    with pytest.raises(eidetic.TaskError, match="at least one threshold"):
        eidetic.GracefulPruning(thresholds=())
    with pytest.raises(eidetic.TaskError, match="needs val_data"):
        Net().train_task(0, data(), batch_size=8, num_classes=2, optimizer=sgd, epochs=1,
                         pruning=eidetic.GracefulPruning())


def test_graceful_pruning_with_no_free_unit_prunes_nothing():
    torch.manual_seed(0)
    net = Net()
    net.train_task(0, data(), batch_size=8, num_classes=2, optimizer=sgd, epochs=1, pruning=None, progress=False)
    report = net.train_task(1, data(1), batch_size=8, num_classes=2, optimizer=sgd, epochs=1, progress=False,
                            val_data=data(2), pruning=eidetic.GracefulPruning())
    assert report.prune_steps == []
