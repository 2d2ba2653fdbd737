"""Time and memory of ``train_task`` as tasks accumulate: task 1, 5, 10, 20 on the same network.

eidetic keeps no replay buffer of old tasks' data and never retrains them: a new task costs the
same whatever came before it. This script checks it. One MLP (784-256-256, BatchNorm, ReLU)
learns 20 Permuted MNIST tasks (offline MNIST files) with the same work per task: the same
epochs, and a pruning schedule of fixed length (``Pruning(step=0.5, max_steps=3,
tolerance=0.99)``: three steps, each removing half of the task's units, always kept, no
recovery epochs), so that a change in time can only come from the number of tasks before.

Per task it records, from the :class:`eidetic.TaskReport` and the process:

* wall time of ``train_task`` and of its phases: training (per epoch), pruning (per step) and
  finishing (freeze, recycle, and the routers' statistics, exemplars and learned-router fit);
* peak resident memory of the process during the call (Linux ``VmHWM``, reset before each call
  through ``/proc/self/clear_refs``), and resident memory after it;
* the size of the network's ``state_dict`` (weights, owners, exemplars kept for the router),
  the only state that grows with the number of tasks.

The training phase is also compared, in the same run, with a plain PyTorch epoch of the same
architecture (``plain s/epoch``), so the ratio does not depend on the machine's speed.

Run::

    python benchmarks/scaling.py --data-dir /work/shared/data/mnist          # about 4 minutes on 2 cores
    python benchmarks/scaling.py --data-dir data --tasks 20 --report 1 5 10 20 --json scaling.json
"""

from __future__ import annotations

import argparse
import io
import time

import torch
import torch.nn.functional as F
from torch import nn

import eidetic
from eidetic import datasets, zoo

from common import memory_kib, reset_peak, text_table, write_json


def state_bytes(net: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    return buffer.tell()


def plain_epoch_seconds(shape: tuple[int, ...], width: int, loader, lr: float) -> float:
    """One epoch of the same architecture and head in plain PyTorch."""
    body, head = zoo.MLP(shape, width=width), nn.Linear(width, 10)
    opt = torch.optim.AdamW([*body.parameters(), *head.parameters()], lr=lr)
    start = time.perf_counter()
    for x, y in loader:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(head(body(x)), y).backward()
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="MNIST IDX folder or torchvision root")
    parser.add_argument("--tasks", type=int, default=20, help="tasks to learn (default: 20)")
    parser.add_argument("--report", nargs="+", type=int, default=[1, 5, 10, 20],
                        help="tasks shown in the table (default: 1 5 10 20; every task goes to --json)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs per task (default: 2)")
    parser.add_argument("--width", type=int, default=256, help="hidden units per layer (default: 256)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: 1e-3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--json", metavar="PATH", help="also write every task's numbers to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    bench = datasets.load_benchmark("permuted-mnist", tasks=args.tasks, seed=args.seed, data_dir=args.data_dir)
    tasks = bench.as_tasks(128, seed=args.seed)
    net = zoo.MLP(bench.input_shape, width=args.width)
    pruning = eidetic.Pruning(step=0.5, max_steps=3, tolerance=0.99, recovery_epochs=0)
    rows = []
    for k, task in enumerate(tasks):
        plain = plain_epoch_seconds(bench.input_shape, args.width, task.train, args.lr)
        reset_peak()
        before = memory_kib()["now"]
        report = net.train_task(k, task.train, num_classes=10, epochs=args.epochs, pruning=pruning,
                                progress=False, optimizer=lambda p: torch.optim.AdamW(p, lr=args.lr))
        memory = memory_kib()
        s = report.seconds
        rows.append({
            "task": k + 1, "total_s": s["total"], "train_s_per_epoch": s["train"] / max(len(report.epochs), 1),
            "plain_s_per_epoch": plain, "prune_s_per_step": s["prune"] / max(len(report.prune_steps), 1),
            "finish_s": s["finish"], "rss_before_mib": before and before / 1024,
            "peak_rss_mib": memory["peak"] and memory["peak"] / 1024,
            "rss_after_mib": memory["now"] and memory["now"] / 1024,
            "state_dict_kib": state_bytes(net) / 1024, "units_frozen": sum(report.units.values()),
            "free_units": sum(report.free_units.values()), "train_accuracy": report.final_metric,
        })
        r = rows[-1]
        print(f"task {k + 1:2d}: total {r['total_s']:.2f}s, train {r['train_s_per_epoch']:.3f}s/epoch "
              f"(plain {plain:.3f}s), prune {r['prune_s_per_step']:.3f}s/step, finish {r['finish_s']:.3f}s, "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB, state {r['state_dict_kib']:.0f} KiB, "
              f"{r['units_frozen']} units frozen, {r['free_units']} free", flush=True)
    header = ["task", "train_task s", "train s/epoch", "ratio to plain", "prune s/step", "finish s",
              "peak RSS MiB", "RSS after MiB", "state_dict KiB", "free units"]
    lines = [header]
    for r in rows:
        if r["task"] in args.report:
            lines.append([str(r["task"]), f"{r['total_s']:.2f}", f"{r['train_s_per_epoch']:.3f}",
                          f"{r['train_s_per_epoch'] / r['plain_s_per_epoch']:.2f}x", f"{r['prune_s_per_step']:.3f}",
                          f"{r['finish_s']:.3f}", f"{r['peak_rss_mib']:.0f}", f"{r['rss_after_mib']:.0f}",
                          f"{r['state_dict_kib']:.0f}", str(r["free_units"])])
    print(f"\n{args.epochs} epoch(s) + 3 pruning steps per task, batch 128, {args.threads} thread(s), "
          f"torch {torch.__version__}")
    print(text_table(lines))
    if args.json:
        write_json(args.json, args, rows)


if __name__ == "__main__":
    main()
