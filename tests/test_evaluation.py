"""The accuracy matrix and what follows from it; evaluate() and run_tasks()."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import eidetic
from eidetic.evaluation.runs import Evaluation, TaskEvaluation

from models import MLP


def row(*accuracies: float) -> Evaluation:
    return Evaluation([TaskEvaluation(k, 10, a) for k, a in enumerate(accuracies)])


def test_a_hand_computed_matrix():
    results = eidetic.Results(baseline=[1.0, 0.8, 0.6])
    for r in (row(0.9), row(0.9, 0.8), row(0.6, 0.8, 0.7)):
        results.add(r)
    assert results.matrix == [[0.9, None, None], [0.9, 0.8, None], [0.6, 0.8, 0.7]]
    assert results.average_accuracy == pytest.approx(0.7)
    assert results.bwt == pytest.approx(((0.6 - 0.9) + (0.8 - 0.8)) / 2)
    assert results.fwt == pytest.approx(((0.9 - 1.0) + (0.8 - 0.8) + (0.7 - 0.6)) / 3)
    assert results.routing_accuracy is None
    json.dumps(results.to_dict())
    assert "BWT -0.1500" in str(results)


def split_tasks(count: int = 3) -> list[eidetic.Task]:
    g = torch.Generator().manual_seed(0)
    tasks = []
    for t in range(count):
        def sample(n, t=t):
            y = torch.randint(0, 2, (n,), generator=g)
            x = torch.randn(n, 6, generator=g) * 0.5
            x[:, t] += 4.0
            x[:, 5] += (2 * y - 1) * 1.5
            return TensorDataset(x, y)
        tasks.append(eidetic.Task(sample(64), sample(40), num_classes=2))
    return tasks


def test_run_tasks_gives_a_matrix_with_exactly_zero_backward_transfer():
    torch.manual_seed(0)
    net = MLP({"in": 6, "widths": [12, 8], "bn": True, "act": "relu"})
    results = eidetic.run_tasks(net, split_tasks(), batch_size=16, epochs=2, progress=False,
                                optimizer=lambda p: torch.optim.Adam(p, lr=0.02),
                                pruning=eidetic.Pruning(step=0.3, tolerance=0.05), baseline=[0.9, 0.9, 0.9])
    r = results.matrix
    assert len(r) == 3 and all(len(line) == 3 for line in r)
    assert all(r[i][j] is None for i in range(3) for j in range(i + 1, 3))
    assert all(r[i][j] == r[j][j] for i in range(3) for j in range(i + 1))  # exact: old tasks never change
    assert results.bwt == 0.0
    assert results.fwt is not None and results.routing_accuracy is not None
    assert results.parameters == sum(p.numel() for p in net.parameters())
    assert len(results.units) == 3 and set(results.units[0]) == {"fcs.0", "fcs.1"}
    evaluation = results.evaluations[-1]
    assert all(t.routed <= t.routing and t.routed <= t.oracle for t in evaluation.tasks)


def test_evaluate_without_a_router_and_its_errors():
    torch.manual_seed(0)
    net = MLP({"in": 6, "widths": [8], "bn": False, "act": "relu"})
    tasks = split_tasks(2)
    eidetic.run_tasks(net, tasks[:1], batch_size=16, epochs=1, progress=False,
                      optimizer=lambda p: torch.optim.Adam(p, lr=0.02))
    evaluation = eidetic.evaluate(net, [t.test for t in tasks], batch_size=16, router=None)
    assert evaluation.tasks[0].routing is None and evaluation.routing is None
    assert evaluation.oracle == evaluation.tasks[0].oracle
    with pytest.raises(eidetic.TaskError, match="test data for each of the 1 finished tasks"):
        eidetic.evaluate(net, [], batch_size=16)
    for one in (tasks[0].test, DataLoader(tasks[0].test, batch_size=16)):  # one data set, not one per task
        with pytest.raises(eidetic.TaskError, match=r"one DataLoader or Dataset per task.*got a (TensorDataset|"
                                                    r"DataLoader)"):
            eidetic.evaluate(net, one, batch_size=16)
    with pytest.raises(eidetic.TaskError, match="starts from a fresh network"):
        eidetic.run_tasks(net, tasks, batch_size=16, epochs=1, optimizer=lambda p: torch.optim.Adam(p))
