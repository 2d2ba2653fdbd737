"""train_task: argument errors, transactions (rollback on failure), optimizers, data forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import eidetic
from eidetic.testing import all_logits

from models import MLP

SPEC = {"in": 6, "widths": [8, 5], "bn": True, "act": "relu"}


def data(n: int = 32, classes: int = 3, seed: int = 0, features: int = 6) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g))


def adam(params):
    return torch.optim.Adam(params, lr=0.01)


def trained(tasks: int = 1, **kwargs) -> MLP:
    torch.manual_seed(0)
    net = MLP(SPEC)
    for t in range(tasks):
        net.train_task(t, data(seed=t), batch_size=8, num_classes=3, optimizer=adam, epochs=1, progress=False,
                       **kwargs)
    return net


def state(net) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if isinstance(v, torch.Tensor)}


def assert_same_state(net, before: dict) -> None:
    after = state(net)
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_report_describes_what_happened():
    net = MLP(SPEC)
    report = net.train_task(0, data(), batch_size=8, num_classes=3, optimizer=adam, epochs=2,
                            val_data=data(seed=9), pruning=eidetic.Pruning(step=0.25, tolerance=0.5, max_steps=2),
                            progress=False)
    assert report.task == 0 and report.num_classes == 3
    assert [e.epoch for e in report.epochs] == [1, 2]
    assert all(e.val_metric is not None for e in report.epochs)
    assert report.val_metric is not None
    assert 1 <= len(report.prune_steps) <= 2
    assert report.units.keys() == {"fcs.0", "fcs.1"}
    assert {k: report.units[k] + report.free_units[k] for k in report.units} == {"fcs.0": 8, "fcs.1": 5}
    assert set(report.seconds) == {"train", "prune", "prune_training", "prune_evaluating", "finish", "freeze",
                                   "recycle", "total"}
    assert "task 0" in str(report)
    assert report.to_dict()["task"] == 0


def test_tasks_are_trained_in_order_and_only_once():
    net = trained(1)
    with pytest.raises(eidetic.TaskError, match="already trained"):
        net.train_task(0, data(), batch_size=8, num_classes=3, optimizer=adam, epochs=1)
    with pytest.raises(eidetic.TaskError, match="next task is 1, not 3"):
        net.train_task(3, data(), batch_size=8, num_classes=3, optimizer=adam, epochs=1)
    with pytest.raises(eidetic.TaskError, match="task must be a non-negative int"):
        net.train_task("1", data(), batch_size=8, num_classes=3, optimizer=adam, epochs=1)
    with pytest.raises(eidetic.TaskError, match="task must be a non-negative int"):
        net.train_task(-1, data(), batch_size=8, num_classes=3, optimizer=adam, epochs=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 2}, "num_classes=2 but its data holds class 2"),
        ({"num_classes": 0}, "num_classes must be an int >= 1"),
        ({"epochs": -1}, "epochs must be an int >= 0"),
        ({"batch_size": None}, "train_data is a Dataset: pass batch_size"),
        ({"pruning": "l1"}, "pruning must be an eidetic.Pruning"),
        ({"optimizer": 0.1}, "optimizer must be a function"),
        ({"optimizer": lambda p: None}, "returned NoneType, not a torch.optim.Optimizer"),
        ({"pruning": eidetic.Pruning(monitor="val")}, "needs val_data"),
    ],
)
def test_bad_arguments_give_clear_errors_and_leave_the_network_as_it_was(kwargs, message):
    net = trained(1)
    before = state(net)
    args = {"batch_size": 8, "num_classes": 3, "optimizer": adam, "epochs": 1, "progress": False, **kwargs}
    with pytest.raises(eidetic.TaskError, match=message):
        net.train_task(1, data(), **args)
    assert net.num_tasks == 1
    assert_same_state(net, before)


def test_empty_data_and_wrong_shapes_are_refused():
    net = trained(1)
    empty = TensorDataset(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long))
    with pytest.raises(eidetic.TaskError, match="train_data is empty"):
        net.train_task(1, empty, batch_size=8, num_classes=3, optimizer=adam, epochs=1)
    with pytest.raises(eidetic.TaskError, match=r"inputs of shape \(7,\).*set up with inputs of shape \(6,\)"):
        net.train_task(1, data(features=7), batch_size=8, num_classes=3, optimizer=adam, epochs=1, progress=False)
    with pytest.raises(eidetic.TaskError, match="must be a torch DataLoader or Dataset"):
        net.train_task(1, 42, num_classes=3, optimizer=adam, epochs=1)
    with pytest.raises(eidetic.TaskError, match="pair \\(inputs, targets\\)"):
        net.train_task(1, DataLoader(torch.randn(8, 6), batch_size=4), num_classes=3, optimizer=adam, epochs=1)
    assert net.num_tasks == 1


def test_the_first_task_failing_leaves_a_fresh_network():
    torch.manual_seed(0)
    net = MLP(SPEC)
    before = state(net)
    with pytest.raises(eidetic.TaskError):
        net.train_task(0, data(), batch_size=8, num_classes=2, optimizer=adam, epochs=1, progress=False)
    assert net.graph is None and net.num_tasks == 0
    assert_same_state(net, before)
    net.train_task(0, data(), batch_size=8, num_classes=3, optimizer=adam, epochs=1, progress=False)
    assert net.num_tasks == 1


class Explode(eidetic.Callback):
    """Raise ``error`` at the ``at``-th optimizer step."""

    def __init__(self, error: BaseException, at: int = 3) -> None:
        self.error, self.at, self.steps = error, at, 0

    def on_step_end(self, task, loss):
        self.steps += 1
        if self.steps == self.at:
            raise self.error


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
@pytest.mark.parametrize("at", [2, 9])  # during training, or during pruning's recovery epochs
def test_an_exception_or_interrupt_rolls_everything_back(error, at):
    net = trained(1)
    shared = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    groups = len(shared.param_groups)
    fixed = torch.randn(5, 6)
    before, logits = state(net), all_logits(net, fixed)
    owners = {k: v.clone() for k, v in net._eidetic.ownership.owner.items()}
    def metric(logits, targets):  # perfect until something is pruned: every step needs recovery
        pruned = any(m.any() for m in net._eidetic.ownership.pruned.values())
        return torch.tensor(0.0 if pruned else 1.0)

    with pytest.raises(type(error)):
        net.train_task(1, data(seed=1), batch_size=8, num_classes=3, optimizer=shared, epochs=2, progress=False,
                       pruning=eidetic.Pruning(step=0.5, tolerance=0.0, recovery_epochs=1, max_steps=3),
                       metric=metric, callbacks=[Explode(error, at)])
    assert net.num_tasks == 1
    assert_same_state(net, before)
    assert all(torch.equal(a, b) for a, b in zip(all_logits(net, fixed), logits))
    assert all(torch.equal(net._eidetic.ownership.owner[k], v) for k, v in owners.items())
    assert len(shared.param_groups) == groups
    assert shared.state_dict()["state"] == {}  # momentum buffers are back to before the call
    net.train_task(1, data(seed=1), batch_size=8, num_classes=3, optimizer=shared, epochs=1, progress=False)
    assert net.num_tasks == 2


def test_a_nan_loss_rolls_back_with_a_clear_error():
    net = trained(1)
    before = state(net)
    nan_loss = lambda logits, y: logits.sum() * math.nan  # noqa: E731
    with pytest.raises(eidetic.NonFiniteLossError, match="loss of task 1 became nan in epoch 1 while"):
        net.train_task(1, data(seed=1), batch_size=8, num_classes=3, optimizer=adam, epochs=1, loss_fn=nan_loss,
                       progress=False)
    assert net.num_tasks == 1
    assert_same_state(net, before)


def test_non_finite_inputs_are_named_as_the_cause():
    net = trained(1)
    before = state(net)
    broken = data(seed=1)
    broken.tensors[0][5, 2] = math.inf
    with pytest.raises(eidetic.NonFiniteLossError, match="inputs of task 1 hold NaN or infinite values"):
        net.train_task(1, broken, batch_size=8, num_classes=3, optimizer=adam, epochs=2, progress=False)
    assert_same_state(net, before)


def test_diverging_training_is_named_with_the_epoch_it_happened_in():
    net = trained(1)
    before = state(net)
    with pytest.raises(eidetic.NonFiniteLossError, match="outputs of task 1 became NaN or infinite in epoch 1 "):
        net.train_task(1, data(seed=1), batch_size=8, num_classes=3, epochs=1, progress=False,
                       optimizer=lambda p: torch.optim.SGD(p, lr=1e30))
    assert_same_state(net, before)


def test_one_optimizer_instance_is_carried_across_tasks_and_gets_each_new_head():
    torch.manual_seed(0)
    net = MLP(SPEC)
    fixed = torch.randn(5, 6)
    shared = torch.optim.Adam(net.parameters(), lr=0.05, weight_decay=0.1)
    net.train_task(0, data(), batch_size=8, num_classes=3, optimizer=shared, epochs=2, progress=False)
    assert any(p is net.heads[0].weight for g in shared.param_groups for p in g["params"])
    logits = all_logits(net, fixed)
    head1 = None
    for t in (1, 2):
        net.train_task(t, data(seed=t), batch_size=8, num_classes=3, optimizer=shared, epochs=2, progress=False)
        assert torch.equal(all_logits(net, fixed)[0], logits[0])
        if t == 1:
            head1 = net.heads[1].weight.detach().clone()
    assert not torch.equal(head1, torch.zeros_like(head1))


def test_a_dataloader_and_a_dataset_train_identically():
    outputs = []
    for as_loader in (False, True):
        torch.manual_seed(0)
        net = MLP(SPEC)
        train = DataLoader(data(), batch_size=8, shuffle=True) if as_loader else data()
        net.train_task(0, train, batch_size=None if as_loader else 8, num_classes=3, optimizer=adam, epochs=2,
                       pruning=None, progress=False)
        outputs.append(all_logits(net, torch.randn(4, 6, generator=torch.Generator().manual_seed(5)))[0])
    assert torch.equal(*outputs)


@pytest.mark.parametrize("shuffle", [True, False])
def test_a_tensor_dataset_is_batched_as_a_dataloader_would_batch_it(shuffle):
    from eidetic.training.data import as_loader

    dataset = TensorDataset(torch.randn(37, 3), torch.arange(37))  # a last batch of 5
    torch.manual_seed(1)
    expected, after = list(DataLoader(dataset, batch_size=8, shuffle=shuffle)), torch.rand(1)
    torch.manual_seed(1)
    loader = as_loader(dataset, 8, shuffle=shuffle, name="train_data")
    got = list(loader)
    assert len(loader) == len(got) == len(expected) == 5
    assert all(torch.equal(a, b) for pair, wanted in zip(got, expected) for a, b in zip(pair, wanted))
    assert torch.equal(torch.rand(1), after)  # the same draws from torch's random stream


def test_early_stopping_and_scheduler():
    net = MLP(SPEC)
    steps = []

    def scheduler(optimizer):
        sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        steps.append(sched)
        return sched

    report = net.train_task(0, data(), batch_size=8, num_classes=3, optimizer=adam, epochs=50, early_stopping=1,
                            scheduler=scheduler, pruning=None, progress=False)
    assert len(report.epochs) < 50
    assert steps and steps[0].last_epoch == len(report.epochs)


def test_train_task_leaves_the_mode_as_it_found_it():
    for pruning in (None, eidetic.Pruning(step=0.5, tolerance=0.99, max_steps=1)):
        for training in (True, False):
            net = MLP(SPEC).train(training)
            net.train_task(0, data(), batch_size=8, num_classes=3, optimizer=adam, epochs=1, pruning=pruning,
                           progress=False)
            assert net.training is training


def test_pruning_configuration_is_checked():
    for kwargs, message in [({"method": "l3"}, "choose one of"), ({"step": 0.0}, "fraction in"),
                            ({"tolerance": 1.0}, "fraction in"), ({"monitor": "test"}, "'train' or 'val'"),
                            ({"patience": -1}, "non-negative int"), ({"tasks": 0}, "positive int"),
                            ({"tasks": 2.0}, "positive int")]:
        with pytest.raises(eidetic.TaskError, match=message):
            eidetic.Pruning(**kwargs)


def test_logits_needs_a_trained_task():
    net = trained(1)
    with pytest.raises(eidetic.TaskError, match="task 1 has no head"):
        net.logits(torch.randn(2, 6), task=1)
    with pytest.raises(eidetic.TaskError, match="task 0 has no head; no task is trained yet"):
        MLP({"in": 6, "widths": [8], "bn": False, "act": "relu"}).logits(torch.randn(2, 6), task=0)


def test_pruning_none_gives_every_free_unit_to_the_task():
    net = trained(1, pruning=None)
    assert all(v == 0 for v in net.capacity().to_dict()["layers"][0]["owned"].values()) is False
    cap = net.capacity()
    assert all(layer.free == 0 for layer in cap.layers)
    report = net.train_task(1, data(seed=1), batch_size=8, num_classes=3, optimizer=adam, epochs=1, progress=False)
    assert sum(report.units.values()) == 0  # only the head could learn


def test_a_task_that_leaves_fewer_free_units_than_it_kept_is_reported(caplog):
    torch.manual_seed(0)
    net = MLP(SPEC)
    kwargs = {"batch_size": 8, "num_classes": 3, "optimizer": adam, "epochs": 1, "progress": False}
    with caplog.at_level("WARNING", logger="eidetic"):
        net.train_task(0, data(), pruning=eidetic.Pruning(step=0.5, tolerance=0.99, max_steps=1), **kwargs)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # kept half, half free
    with caplog.at_level("WARNING", logger="eidetic"):
        net.train_task(1, data(seed=1), pruning=None, **kwargs)  # keeps every free unit
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "task 1 left fewer free units than it kept" in warned[0]
    assert "fcs.0: kept 4, 0 free" in warned[0] and "Pruning(tasks=T)" in warned[0]
    assert "recovery epoch" not in warned[0]  # no pruning: nothing ran out
    caplog.clear()
    planned = MLP(SPEC)
    with caplog.at_level("WARNING", logger="eidetic"):
        planned.train_task(0, data(), pruning=eidetic.Pruning(tasks=1), **kwargs)  # planned: the share decides
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_task_whose_pruning_ran_out_of_recovery_says_how_to_give_it_more(caplog):
    torch.manual_seed(0)
    net = MLP(SPEC)

    def alive(logits, targets):  # the share of fcs.0's units with weights: below 1 after any step, forever
        return float((net.fcs[0].weight.detach().abs().sum(1) > 0).float().mean())

    with caplog.at_level("WARNING", logger="eidetic"):  # so every step uses its whole recovery, then rolls back
        report = net.train_task(0, data(), batch_size=8, num_classes=3, optimizer=adam, epochs=1, progress=False,
                                metric=alive, pruning=eidetic.Pruning(tolerance=0.0, recovery_epochs=2))
    assert report.prune_steps and not any(s.accepted for s in report.prune_steps)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "task 0 left fewer free units than it kept" in warned[0]
    assert "2 recovery epoch(s) (8 optimizer steps)" in warned[0] and "Pruning(recovery_epochs=...)" in warned[0]


def test_capacity_counts_owned_free_and_reused_units():
    net = trained(2, pruning=eidetic.Pruning(step=0.5, tolerance=1e-9 + 0.99, max_steps=1))
    cap = net.capacity()
    first = cap["fcs.0"]
    assert first.total == 8
    assert first.free + sum(first.owned.values()) == 8
    assert set(first.owned) <= {0, 1}
    assert first.reused.get(1, 0) <= first.owned.get(0, 0)
    assert "layer" in str(cap) and "fcs.0" in str(cap)


class _RunningCentre(torch.nn.Module):
    """Subtracts a running mean of its inputs, kept in a buffer and updated in training mode:
    state eidetic does not know how to freeze."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("scale", torch.ones(size))  # constant: never changes
        self.update = True

    def forward(self, x):
        if self.training and self.update:
            self.mean.mul_(0.9).add_(0.1 * x.detach().mean(0))
        return (x - self.mean) * self.scale


class _Centred(eidetic.ContinualNetwork):
    def __init__(self) -> None:
        super().__init__()
        self.centre, self.fc = _RunningCentre(6), torch.nn.Linear(6, 8)

    def forward(self, x):
        return torch.relu(self.fc(self.centre(x)))


def test_a_later_task_that_changes_a_buffer_eidetic_does_not_know_is_refused_and_undone():
    torch.manual_seed(0)
    net = _Centred()
    kwargs = {"batch_size": 8, "num_classes": 3, "optimizer": adam, "epochs": 1, "progress": False}
    net.train_task(0, data(), **kwargs)  # the first task may change it: no earlier task reads it yet
    net.eval()
    x = torch.randn(5, 6)
    logits = net.logits(x, 0)
    before = state(net)
    with pytest.raises(eidetic.TaskError, match=r"changed buffer\(s\) \['centre.mean'\]"):
        net.train_task(1, data(seed=1), **kwargs)
    assert net.num_tasks == 1
    assert_same_state(net, before)
    assert torch.equal(net.eval().logits(x, 0), logits)
    net.centre.update = False
    net.train_task(1, data(seed=1), **kwargs)  # buffers that stay as they were are fine
    assert torch.equal(net.eval().logits(x, 0), logits)


def test_a_network_moved_to_float64_widens_checks_its_graph_and_routes():
    """Synthetic examples and exemplars follow the parameters' dtype after ``net.double()``."""
    net = trained(2, memory=8)
    net.double().eval()
    x = torch.randn(5, 6, dtype=torch.float64)
    logits = net.logits(x, 0)
    net.validate_graph()
    assert net.predict(x, router="learned").task.shape == (5,)
    net.widen({"fcs.0": 2})
    assert torch.equal(net.eval().logits(x, 0), logits)
