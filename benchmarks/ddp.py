"""Data-parallel training throughput on the CPU: samples per second with 1 and 2 processes.

Each process is a gloo rank with one torch thread, trains the zoo's MLP (784-256-256, BatchNorm)
on its ``DistributedSampler`` shard of the same fixed random data (``--samples`` 28x28 images,
10 classes, no downloads) for ``--epochs`` epochs without pruning, and times its ``train_task``.
Throughput is the samples of all ranks over the slowest rank's time; the ratio is 2 processes
over 1, measured in the same run (1.0 would mean no gain; 2.0 perfect scaling). The ranks are
checked to end bitwise identical. The baseline, in the same run: a plain PyTorch training loop of
the same architecture (with a 10-class head), wrapped in ``DistributedDataParallel`` with 2
processes, on the same shards, optimizer and epochs: what data parallelism gives on this machine
without eidetic.

Run::

    python benchmarks/ddp.py                     # about 15 seconds on a two-core CPU
    python benchmarks/ddp.py --samples 8192 --epochs 3 --json ddp.json
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import eidetic  # noqa: F401  (the continual network below)
from eidetic import zoo

from common import text_table, write_json


def _plain_training(model: nn.Module, loader: DataLoader, args: argparse.Namespace) -> float:
    """Seconds for ``args.epochs`` epochs of a plain AdamW loop."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        loader.sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    return time.perf_counter() - start


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str, plain: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(args.samples, 1, 28, 28, generator=g),
                         torch.randint(0, 10, (args.samples,), generator=g))
    loader = DataLoader(data, batch_size=args.batch_size, sampler=DistributedSampler(data, world, rank, seed=0))
    net = zoo.MLP((1, 28, 28), width=256)
    torch.optim.AdamW(net.parameters())  # the first optimizer imports torch._dynamo (seconds): not timed
    if plain:
        net = nn.Sequential(net, nn.Linear(256, 10))  # zoo.MLP's forward alone is a plain module's
        seconds = torch.tensor([_plain_training(net if world == 1 else DistributedDataParallel(net), loader, args)])
    else:
        net.setup(data[:2][0])  # the unit table is discovered once per network, not per epoch: not timed
        report = net.train_task(0, loader, num_classes=10, epochs=args.epochs, pruning=None, progress=False,
                                optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
        seconds = torch.tensor([report.seconds["train"]])
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    checksum = torch.cat([p.detach().flatten() for p in net.parameters()])
    copies = [torch.empty_like(checksum) for _ in range(world)]
    dist.all_gather(copies, checksum)
    if rank == 0:
        identical = all(torch.equal(c, checksum) for c in copies)
        torch.save({"seconds": float(seconds), "identical": identical}, out)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(world: int, args: argparse.Namespace, plain: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "result.pt")
        mp.spawn(_worker, args=(world, _free_port(), args, out, plain), nprocs=world, join=True)
        result = torch.load(out)
    return {"training": "plain PyTorch + DDP" if plain else "eidetic train_task", "processes": world,
            "seconds": result["seconds"], "identical": result["identical"],
            "samples_per_second": args.samples * args.epochs / result["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=128, help="per rank")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.threads = 1
    results = [measure(world, args, plain) for plain in (False, True) for world in (1, 2)]
    lines = [["training", "processes", "train s", "samples/s", "ratio to 1 process", "ranks identical"]]
    for r in results:
        one = next(o for o in results if o["training"] == r["training"] and o["processes"] == 1)
        lines.append([r["training"], str(r["processes"]), f"{r['seconds']:.2f}", f"{r['samples_per_second']:.0f}",
                      f"{r['samples_per_second'] / one['samples_per_second']:.2f}x", str(r["identical"])])
    print(text_table(lines))
    if args.json:
        write_json(args.json, args, results)


if __name__ == "__main__":
    main()
