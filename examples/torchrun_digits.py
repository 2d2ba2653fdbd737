"""Split digits on several processes: data-parallel ``train_task`` under ``torchrun``.

Each process is one rank (gloo on the CPU here; use NCCL and one GPU per rank on GPUs). It
initialises ``torch.distributed``, gives ``train_task`` its shard of every task's training data
through a ``DistributedSampler``, and trains the five Split digits tasks (scikit-learn's bundled
digits, no download) with the zoo's MLP. eidetic averages the gradients over the ranks and takes
every decision once, so all ranks end every task with bitwise identical networks; rank 0 prints
and saves the checkpoint. The script checks both claims at the end.

Run::

    torchrun --standalone --nproc-per-node 2 examples/torchrun_digits.py
    torchrun --standalone --nproc-per-node 2 examples/torchrun_digits.py --epochs 5 --out model.pt
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

import eidetic
from eidetic import datasets, zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=None, help="where rank 0 saves the checkpoint")
    args = parser.parse_args()
    dist.init_process_group("gloo")  # torchrun sets the rank, world size and address
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    torch.manual_seed(rank)  # on purpose: eidetic keeps the ranks in step whatever each one draws
    bench = datasets.load_benchmark("split-digits")
    net = zoo.MLP(bench.input_shape, width=128)
    ended = []
    for t, train in enumerate(bench.train):
        loader = DataLoader(train, batch_size=32, sampler=DistributedSampler(train, world, rank, seed=t))
        report = net.train_task(t, loader, num_classes=bench.num_classes[t], epochs=args.epochs, progress=False,
                                optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
        results = eidetic.evaluate(net, bench.test[: t + 1], batch_size=256, router=None)
        ended.append(results.tasks[t].oracle)
        if rank == 0:
            accuracies = " ".join(f"{e.oracle:.3f}" for e in results.tasks)
            print(f"task {t}: train acc {report.final_metric:.3f}, test acc of tasks so far: {accuracies}")
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    copies = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(copies, flat)
    final = eidetic.evaluate(net, bench.test, batch_size=256, router=None)
    assert all(torch.equal(c, flat) for c in copies), "the ranks' networks differ"
    assert [e.oracle for e in final.tasks] == ended, "an earlier task's accuracy changed"
    if rank == 0:
        print(f"{world} ranks, bitwise identical networks; every task's accuracy unchanged since it was learnt")
        if args.out:
            torch.save(net.state_dict(), args.out)
    dist.barrier()  # the other ranks wait for rank 0's save before the group is torn down
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
