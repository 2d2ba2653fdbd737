"""Task-ID-free inference: predict, the routers, fitting without side effects, the exemplar memory,
and the routing figures on Split digits."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import TensorDataset

import eidetic
from eidetic.inference.memory import Exemplars
from eidetic.testing import all_logits, assert_persistent, frozen_state

from models import MLP

SPEC = {"in": 8, "widths": [16, 12], "bn": True, "act": "relu"}


def separable_tasks(tasks: int = 3, n: int = 64, seed: int = 0) -> list[tuple[TensorDataset, TensorDataset]]:
    """Each task lives in its own region of input space (a distinct mean), two classes each."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(tasks):
        centre = torch.zeros(8)
        centre[t] = 6.0
        def sample(n_, centre=centre):
            y = torch.randint(0, 2, (n_,), generator=g)
            x = centre + torch.randn(n_, 8, generator=g) * 0.5
            x[:, 7] += (2 * y - 1) * 1.5
            return TensorDataset(x, y)
        out.append((sample(n), sample(n)))
    return out


def train(tasks, **kwargs) -> MLP:
    torch.manual_seed(0)
    net = MLP(SPEC)
    for t, (train_set, _) in enumerate(tasks):
        net.train_task(t, train_set, batch_size=16, num_classes=2, epochs=3, progress=False,
                       optimizer=lambda p: torch.optim.Adam(p, lr=0.02),
                       pruning=eidetic.Pruning(step=0.3, tolerance=0.0), **kwargs)
    return net


@pytest.fixture(scope="module")
def trained():
    tasks = separable_tasks()
    return train(tasks, memory=32), tasks


def routing_accuracy(net, tasks, router) -> float:
    x = torch.cat([test.tensors[0] for _, test in tasks])
    truth = torch.cat([torch.full((len(test),), k) for k, (_, test) in enumerate(tasks)])
    net.eval()
    with torch.no_grad():
        return float((net.predict(x, router=router).task == truth).float().mean())


def test_the_learned_router_routes_separable_tasks(trained):
    net, tasks = trained
    assert routing_accuracy(net, tasks, "learned") >= 0.98


def test_the_discriminant_router_routes_separable_tasks_without_exemplars():
    tasks = separable_tasks()
    net = train(tasks, memory=0)
    assert routing_accuracy(net, tasks, "discriminant") >= 0.98


def test_the_statistics_router_routes_separable_tasks_far_better_than_chance(trained):
    # Data-free: it only sees what each task's frozen features see, so it is weaker than the
    # learned router (docs/routing.md); chance is 1/3 here.
    net, tasks = trained
    assert routing_accuracy(net, tasks, "statistics") >= 0.8


@pytest.mark.parametrize("measure", ["confidence", "max_softmax", "entropy", "energy"])
def test_confidence_routers_return_valid_predictions(trained, measure):
    net, tasks = trained
    x = tasks[0][1].tensors[0]
    net.eval()
    with torch.no_grad():
        p = net.predict(x, router=measure)
    assert p.task.shape == (len(x),) and p.task.max() < 3 and p.label.max() < 2
    assert torch.allclose(p.task_probs.sum(dim=1), torch.ones(len(x)))  # probabilities: approximate by nature


def test_predict_uses_one_pass_of_the_body_and_the_chosen_head(trained):
    net, tasks = trained
    calls = []
    handle = net.fcs[0].register_forward_hook(lambda *a: calls.append(1))
    x = tasks[1][1].tensors[0]
    net.eval()
    with torch.no_grad():
        p = net.predict(x)
        oracle = net.logits(x, task=1)
    handle.remove()
    assert len(calls) == 2  # one for predict (all tasks), one for logits
    assert torch.equal(p.logits[1], oracle)
    chosen = p.task == 1
    assert torch.equal(p.label[chosen], oracle.argmax(dim=1)[chosen])


def test_fitting_the_router_changes_no_head_and_no_frozen_unit(trained):
    net, tasks = trained
    fixed = tasks[0][1].tensors[0]
    before_logits, before_state = all_logits(net, fixed), frozen_state(net)
    heads = [h.weight.detach().clone() for h in net.heads]
    net.fit_router()
    net.fit_router([train_set for train_set, _ in tasks], batch_size=32)
    assert all(torch.equal(a, b) for a, b in zip(all_logits(net, fixed), before_logits))
    assert all(torch.equal(h.weight, w) for h, w in zip(net.heads, heads))
    assert_persistent(net, before_state)


def wide_net(tasks: int = 2, memory: int = 16):
    """A network with free units left after every task (pruning stops at 30%)."""
    torch.manual_seed(0)
    net = MLP(SPEC)
    data = separable_tasks(tasks)
    for t, (train_set, _) in enumerate(data):
        net.train_task(t, train_set, batch_size=16, num_classes=2, epochs=1, progress=False, memory=memory,
                       optimizer=lambda p: torch.optim.Adam(p, lr=0.02), pruning=eidetic.Pruning(step=0.3, max_steps=1))
    return net, data


def free_rows(net) -> torch.Tensor:
    free = net._eidetic.ownership.masks("free")["fcs.0"]
    return net.fcs[0].weight[free].detach().clone()


def test_the_router_trains_the_free_units_and_the_next_task_starts_from_fresh_ones():
    net, data = wide_net()
    assert net._eidetic.routers.learned.fitted_tasks == 2
    trained_rows = free_rows(net)
    net.recycle()  # fresh free units, and the router refitted through them
    refitted = free_rows(net)
    assert not torch.equal(trained_rows, refitted)
    seen = []

    class Watch(eidetic.Callback):
        def on_step_end(self, task, loss):
            if not seen:
                seen.append(net._eidetic.routers.learned.fitted_tasks)

    net.train_task(2, data[0][0], batch_size=16, num_classes=2, epochs=1, progress=False, callbacks=[Watch()],
                   optimizer=lambda p: torch.optim.Adam(p, lr=0.02), pruning=None, finish=False)
    assert seen == [0]  # the open task trains without the router, from re-initialised free units
    with pytest.raises(eidetic.TaskError, match="task 2 is open"):
        net.fit_router()


def test_a_failing_task_leaves_the_router_and_its_free_units_as_they_were():
    net, data = wide_net()
    x = data[0][1].tensors[0]
    net.eval()
    with torch.no_grad():
        before = net.predict(x).task_scores
    rows = free_rows(net)

    class Fail(eidetic.Callback):
        def on_step_end(self, task, loss):
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        net.train_task(2, data[0][0], batch_size=16, num_classes=2, epochs=1, progress=False, callbacks=[Fail()],
                       optimizer=lambda p: torch.optim.Adam(p, lr=0.02))
    net.eval()
    with torch.no_grad():
        assert torch.equal(net.predict(x).task_scores, before)
    assert torch.equal(free_rows(net), rows)


def test_fit_router_refuses_bad_arguments(trained):
    net, _ = trained
    with pytest.raises(eidetic.TaskError, match="steps=0"):
        net.fit_router(steps=0)
    with pytest.raises(eidetic.TaskError, match="lr=-1"):
        net.fit_router(lr=-1)
    with pytest.raises(eidetic.TaskError, match="one dataset per finished task"):
        net.fit_router([torch.zeros(4, 8)])


def test_exemplars_are_kept_at_one_byte_per_value_within_half_a_step():
    x = torch.rand(50, 1, 8, 8) * 3 - 1
    kept = Exemplars.compress(x)
    assert kept.values.dtype == torch.uint8 and kept.nbytes == x.numel()
    assert (kept.inputs(torch.float32) - x).abs().max() <= kept.step / 2 + 1e-6
    tokens = torch.randint(0, 100, (5, 7))
    assert torch.equal(Exemplars.compress(tokens).inputs(torch.float32), tokens)  # ids are kept as they are
    assert torch.equal(Exemplars.from_state(x).inputs(torch.float32), x)  # checkpoints from before compression


def test_the_router_state_survives_a_checkpoint(trained):
    net, tasks = trained
    copy = MLP(SPEC)
    copy.load_state_dict(net.state_dict())
    x = torch.cat([test.tensors[0] for _, test in tasks])
    net.eval()
    copy.eval()
    with torch.no_grad():
        for router in ("learned", "discriminant", "statistics"):
            assert torch.equal(net.predict(x, router=router).task_scores, copy.predict(x, router=router).task_scores)


def test_without_memory_the_learned_router_needs_data():
    tasks = separable_tasks(2)
    net = train(tasks, memory=0)
    with pytest.raises(eidetic.TaskError, match="no exemplars"):
        net.fit_router()
    x = torch.cat([test.tensors[0] for _, test in tasks])
    net.eval()
    with torch.no_grad():  # the default falls back to the discriminant router
        assert torch.equal(net.predict(x).task_scores, net.predict(x, router="discriminant").task_scores)
    net.fit_router([train_set for train_set, _ in tasks], batch_size=32)
    assert routing_accuracy(net, tasks, "learned") >= 0.98


def test_unknown_router_and_missing_tasks_are_clear_errors(trained):
    net, tasks = trained
    with pytest.raises(ValueError, match="unknown router 'psychic'"):
        net.predict(tasks[0][1].tensors[0], router="psychic")
    with pytest.raises(eidetic.TaskError, match="at least one finished task"):
        MLP(SPEC).predict(torch.randn(2, 8))


def test_a_float64_network_fits_and_uses_every_router():
    """``train_task`` on ``net.double()`` fits the learned router in float64 (it used to fail in
    fit_router with a dtype error), every router scores in float64, and the routers round-trip
    through the state_dict."""
    from eidetic import zoo

    torch.manual_seed(0)
    net = zoo.build_model("mlp", (6,), width=8).double()
    for t in range(2):
        data = torch.utils.data.TensorDataset(torch.randn(40, 6, dtype=torch.float64) + 3 * t,
                                              torch.randint(0, 2, (40,)))
        net.train_task(t, data, batch_size=8, num_classes=2, epochs=1, progress=False, memory=5,
                       optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    assert net._eidetic.routers.learned.weight.dtype == torch.float64
    x = torch.randn(7, 6, dtype=torch.float64)
    net.eval()
    with torch.no_grad():
        for router in ("learned", "discriminant", "statistics", "energy"):
            assert net.predict(x, router=router).task_scores.dtype == torch.float64
        fresh = zoo.build_model("mlp", (6,), width=8).double()
        fresh.load_state_dict(net.state_dict())
        assert torch.equal(fresh.eval().predict(x).task_scores, net.predict(x).task_scores)


def test_split_digits_with_the_run_defaults_routes_nearly_as_well_as_the_oracle(tmp_path):
    """docs/routing.md's figures on real offline data: ``eidetic run``'s defaults (Split digits,
    seed 0) route at least 95% of the test images to their task, and the routed accuracy is within
    4 points of the accuracy with the task id given. Measured 0.973 and 2.5 points on one machine,
    0.966 and 3.4 points on another (the CPU kernels' rounding changes which units pruning keeps);
    the bounds leave room for that, and the goal of 2 points is missed (docs/routing.md)."""
    pytest.importorskip("sklearn")
    from eidetic import cli

    assert cli.main(["run", "--no-plots", "--no-progress", "--out", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())["results"]
    assert results["routing_accuracy"] >= 0.95
    assert results["routed_accuracy"] >= results["average_accuracy"] - 0.04
