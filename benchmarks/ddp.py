"""Data-parallel training throughput on the CPU: samples per second with 1 and 2 processes.

Each process is a gloo rank with one torch thread, trains the zoo's MLP (784-256-256, BatchNorm)
on its ``DistributedSampler`` shard of the same fixed random data (``--samples`` 28x28 images,
10 classes, no downloads) for ``--epochs`` epochs without pruning, and times its ``train_task``.
Throughput is the samples of all ranks over the slowest rank's time; the ratio is 2 processes
over 1, measured in the same run (1.0 would mean no gain; 2.0 perfect scaling). The ranks are
checked to end bitwise identical.

Run::

    python benchmarks/ddp.py                     # about a minute on a two-core CPU
    python benchmarks/ddp.py --samples 8192 --epochs 3 --json ddp.json
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import eidetic  # noqa: F401  (the continual network below)
from eidetic import zoo

from common import text_table, write_json


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(args.samples, 1, 28, 28, generator=g),
                         torch.randint(0, 10, (args.samples,), generator=g))
    loader = DataLoader(data, batch_size=args.batch_size, sampler=DistributedSampler(data, world, rank, seed=0))
    net = zoo.MLP((1, 28, 28), width=256)
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


def measure(world: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "result.pt")
        mp.spawn(_worker, args=(world, _free_port(), args, out), nprocs=world, join=True)
        result = torch.load(out)
    return {"processes": world, "seconds": result["seconds"], "identical": result["identical"],
            "samples_per_second": args.samples * args.epochs / result["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=128, help="per rank")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.threads = 1
    results = [measure(world, args) for world in (1, 2)]
    lines = [["processes", "train s", "samples/s", "ratio to 1 process", "ranks identical"]]
    for r in results:
        lines.append([str(r["processes"]), f"{r['seconds']:.2f}", f"{r['samples_per_second']:.0f}",
                      f"{r['samples_per_second'] / results[0]['samples_per_second']:.2f}x", str(r["identical"])])
    print(text_table(lines))
    if args.json:
        write_json(args.json, args, results)


if __name__ == "__main__":
    main()
