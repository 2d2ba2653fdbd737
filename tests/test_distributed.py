"""Data-parallel training: two processes on the CPU with gloo, each with its shard of the data
(``DistributedSampler``) and its own random state, train three tasks with pruning. After every
task both ranks hold bitwise identical networks (every parameter and buffer, the owners and the
router records), and every earlier task's logits are what they were when it ended, on each rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import eidetic

from models import CNN, MLP

WORLD = 2
SPECS = {
    "mlp": (MLP, {"in": 6, "widths": [8, 8], "bn": True, "act": "relu", "dropout": 0.0}, (6,)),
    "cnn": (CNN, {"channels_in": 2, "size": 6, "layers": [(4, "plain"), (4, "depthwise")], "bn": True,
                  "pool": True, "features": 6}, (2, 6, 6)),
}


RELEASING = eidetic.SparseGrowth(candidates=2, max_width=3.0, mask_lr=1.0, penalty=0.5)  # masks that flip at once
GROWING = eidetic.SparseGrowth(candidates=2, max_width=3.0, mask_lr=0.1)  # gates that stay open


def _state(net) -> dict:
    tensors = {k: v.clone() for k, v in net.state_dict().items() if isinstance(v, torch.Tensor)}
    owners = {k: v.clone() for k, v in net._eidetic.ownership.owner.items()}
    return {"tensors": tensors, "owners": owners, "routers": net._eidetic.routers.state()}


class Trace(eidetic.Callback):
    """Every parameter after every epoch: the ranks must train in step, not only end the same."""

    def __init__(self, net) -> None:
        self.net, self.epochs = net, []

    def on_epoch_end(self, task, stats) -> None:
        self.epochs.append((torch.cat([p.detach().flatten() for p in self.net.parameters()]), stats.metric))


def _worker(rank: int, init: str, out: str, model: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    torch.manual_seed(100 + rank)  # each rank draws differently: eidetic must keep them in step
    family, spec, shape = SPECS[model] if model in SPECS else SPECS["mlp"]
    mixin = {"cpg": eidetic.CPGMixin, "lsg": eidetic.LSGMixin}.get(model)
    cls = type("MixedNet", (mixin, family), {}) if mixin else family
    net = cls(spec)
    fixed = torch.randn(5, *shape, generator=torch.Generator().manual_seed(0))
    ended, history, states, attempts = [], [], [], []
    trace = Trace(net)
    for t in range(3):
        g = torch.Generator().manual_seed(t)
        data = TensorDataset(torch.randn(48, *shape, generator=g), torch.randint(0, 3, (48,), generator=g))
        loader = DataLoader(data, batch_size=8, sampler=DistributedSampler(data, WORLD, rank, seed=t))
        extra = {"cpg": {"goal": 1.0 if t == 1 else 0.0, "growing": eidetic.Growing(step=2)},
                 "lsg": {"goal": 1.0 if t == 1 else 0.0, "growth": GROWING if t == 1 else RELEASING}}.get(model, {})
        report = net.train_task(t, loader, val_data=loader, num_classes=3, epochs=2, progress=False,
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                       pruning=eidetic.Pruning(method="taylor", step=0.3, max_steps=2), callbacks=[trace],
                                **extra)
        net.eval()
        with torch.no_grad():
            logits = [net.logits(fixed, k) for k in range(t + 1)]
        net.train()
        ended.append(logits[t])
        history.append(logits)
        states.append(_state(net))
        attempts.append((report.attempts, report.kept_attempt, report.grown, report.released))
    torch.save({"ended": ended, "history": history, "states": states, "attempts": attempts,
                "epochs": trace.epochs}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def _run(model: str, tmp_path) -> list[dict]:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path), model), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in range(WORLD)]


def _assert_identical(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _check(results: list[dict]) -> None:
    _assert_identical(results[0]["epochs"], results[1]["epochs"], "after an epoch")
    for t in range(3):
        _assert_identical(results[0]["states"][t], results[1]["states"][t], f"after task {t}")
    for result in results:
        for t, logits in enumerate(result["history"]):
            for k in range(t + 1):
                assert torch.equal(logits[k], result["ended"][k]), f"task {k} changed by task {t}"


def test_two_ranks_stay_identical_and_never_forget(tmp_path):
    _check(_run("mlp", tmp_path))


def test_two_ranks_of_a_cnn_stay_identical_and_never_forget(tmp_path):
    _check(_run("cnn", tmp_path))


def test_two_ranks_with_cpg_growth_stay_identical(tmp_path):
    results = _run("cpg", tmp_path)
    _check(results)
    assert results[0]["attempts"] == results[1]["attempts"]  # the same decisions on both ranks
    assert len(results[0]["attempts"][1][0]) > 1  # task 1 missed its goal and tried a wider network


def test_two_ranks_with_learnable_sparse_growth_stay_identical(tmp_path):
    """Each rank draws its own Gumbel noise; the masks' gradients are averaged, so their scores,
    decisions, the kept candidates and the released kernels are the same on both ranks."""
    results = _run("lsg", tmp_path)
    _check(results)
    assert results[0]["attempts"] == results[1]["attempts"]
    assert results[0]["attempts"][1][2], "task 1 did not grow"
    assert any(a[3] for a in results[0]["attempts"]), "no kernel was released"
