"""Accuracy of eidetic against two baselines on the same data, network and epochs.

For each benchmark (Permuted MNIST, 10 tasks, and Split MNIST, 5 tasks of 2 classes, on the
offline MNIST files: with only the 10k test set, 8,000 images train and a fixed 2,000 test), the
same MLP (784-256-256, BatchNorm, ReLU; one head per task) is trained three ways, with the same
optimizer (AdamW), learning rate, batch size, epochs and shuffling:

* **eidetic**: ``train_task`` per task (train, prune, freeze, recycle); multi-head, task id given.
  Its pruning loop adds recovery epochs after each pruning step (counted and printed).
* **independent**: one fresh network per task, trained on that task alone: the "single task"
  upper reference of the Eidetic paper, at T times the size. No forgetting by construction.
* **fine-tuning**: one network, a new head per task, the whole body trained on each new task
  in turn with nothing protected: the accuracy of earlier tasks drops (forgetting).

Printed per method: average accuracy after the last task (task id given), BWT (mean over earlier
tasks of final accuracy minus accuracy right after learning the task), FWT against the
independent networks, units of the body used, and wall time. For eidetic also the task-ID-free
(routed) accuracy.

Run::

    python benchmarks/accuracy.py --data-dir /work/shared/data/mnist            # about 3 minutes on 2 cores
    python benchmarks/accuracy.py --data-dir data --benchmarks split-mnist --epochs 2 --json acc.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

import eidetic
from eidetic import datasets, zoo

from common import text_table, train_plain, write_json

Optimizer = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def make_body(args: argparse.Namespace, shape: tuple[int, ...]) -> zoo.MLP:
    """The MLP body every method uses (a ContinualNetwork; the baselines use it as a plain module)."""
    return zoo.MLP(shape, width=args.width)


@torch.no_grad()
def accuracy(body: nn.Module, head: nn.Linear, loader: DataLoader) -> eidetic.TaskEvaluation:
    """Test accuracy of ``head(body(x))`` in evaluation mode."""
    body.eval()
    right, total = 0, 0
    for x, y in loader:
        right += int((head(body(x)).argmax(dim=1) == y).sum())
        total += len(y)
    return eidetic.TaskEvaluation(task=-1, samples=total, oracle=right / total)


def row(evaluations: list[eidetic.TaskEvaluation]) -> eidetic.Evaluation:
    """One row of the accuracy matrix, tasks numbered in order."""
    for k, e in enumerate(evaluations):
        e.task = k
    return eidetic.Evaluation(list(evaluations))


def units_total(net: nn.Module) -> int:
    """Units (hidden neurons) of the body."""
    return sum(fc.out_features for fc in net.fcs)


def run_independent(args, bench, tasks, optimizer) -> tuple[eidetic.Results, dict]:
    results, heads, finals = eidetic.Results(), [], []
    for k, task in enumerate(tasks):
        torch.manual_seed(args.seed + k)
        body, head = make_body(args, bench.input_shape), nn.Linear(args.width, task.num_classes)
        train_plain(body, head, task.train, optimizer, args.epochs)
        finals.append(accuracy(body, head, task.test))
        heads.append((body, head))
        results.add(row([eidetic.TaskEvaluation(j, e.samples, e.oracle) for j, e in enumerate(finals)]))
    body = heads[0][0]
    return results, {"units": units_total(body) * len(tasks), "parameters": sum(
        p.numel() for b, h in heads for p in [*b.parameters(), *h.parameters()])}


def run_finetune(args, bench, tasks, optimizer) -> tuple[eidetic.Results, dict]:
    torch.manual_seed(args.seed)
    body = make_body(args, bench.input_shape)
    heads = nn.ModuleList()
    results = eidetic.Results()
    for task in tasks:
        heads.append(nn.Linear(args.width, task.num_classes))
        train_plain(body, heads[-1], task.train, optimizer, args.epochs)
        results.add(row([accuracy(body, h, t.test) for h, t in zip(heads, tasks)]))
    return results, {"units": units_total(body), "parameters": sum(
        p.numel() for p in [*body.parameters(), *heads.parameters()])}


def run_eidetic(args, bench, tasks, optimizer) -> tuple[eidetic.Results, dict]:
    torch.manual_seed(args.seed)
    net = make_body(args, bench.input_shape)
    given = {"step": args.prune_step, "tolerance": args.tolerance, "recovery_epochs": args.recovery_epochs,
             "patience": args.patience}
    pruning = eidetic.Pruning(method=args.pruning, tasks=len(tasks) if args.share else None,
                              **{k: v for k, v in given.items() if v is not None})
    results = eidetic.run_tasks(net, tasks, optimizer=optimizer, epochs=args.epochs, pruning=pruning,
                                progress=False)
    capacity = net.capacity()
    used = sum(layer.total - layer.free for layer in capacity.layers)
    recovery = sum(s.epochs for r in results.reports for s in r.prune_steps)
    return results, {"units": used, "parameters": results.parameters, "recovery_epochs": recovery,
                     "free_units_left": {layer.group: layer.free for layer in capacity.layers},
                     "units_per_task": results.units}


METHODS = {"eidetic": run_eidetic, "independent": run_independent, "fine-tuning": run_finetune}


def measure(name: str, args: argparse.Namespace) -> dict:
    bench = datasets.load_benchmark(name, tasks=args.tasks.get(name), seed=args.seed, data_dir=args.data_dir)
    optimizer = lambda params: torch.optim.AdamW(params, lr=args.lr)  # noqa: E731
    out = {"benchmark": bench.describe(), "methods": {}}
    reference = None
    for method in ("independent", "eidetic", "fine-tuning"):
        tasks = bench.as_tasks(args.batch_size, seed=args.seed)  # the same shuffling for every method
        start = time.perf_counter()
        results, extra = METHODS[method](args, bench, tasks, optimizer)
        seconds = time.perf_counter() - start
        if method == "independent":
            reference = [results.matrix[j][j] for j in range(len(tasks))]
        results.baseline = reference
        out["methods"][method] = {**extra, "seconds": seconds, "average_accuracy": results.average_accuracy,
                                  "bwt": results.bwt, "fwt": results.fwt, "matrix": results.matrix,
                                  "routed_accuracy": results.routed_accuracy}
        print(f"  {method}: average {results.average_accuracy:.4f}, BWT {results.bwt:+.4f}, {seconds:.1f}s",
              flush=True)
    return out


def table(name: str, result: dict, total_units: int) -> str:
    header = ("method", "avg acc", "BWT", "FWT", "routed acc", "units used", "parameters", "time s")
    one = f"one network: {total_units} units"
    rows = [header]
    for method, r in result["methods"].items():
        routed = f"{r['routed_accuracy']:.4f}" if r["routed_accuracy"] is not None else "-"
        rows.append((method, f"{r['average_accuracy']:.4f}", f"{r['bwt']:+.4f}", f"{r['fwt']:+.4f}", routed,
                     str(r["units"]), f"{r['parameters']:,}", f"{r['seconds']:.1f}"))
    title = f"{name}: {len(result['benchmark']['tasks'])} tasks, {result['benchmark']['source']}; {one}"
    return title + "\n" + text_table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="MNIST IDX folder or torchvision root")
    parser.add_argument("--benchmarks", nargs="+", choices=["permuted-mnist", "split-mnist"],
                        default=["permuted-mnist", "split-mnist"])
    parser.add_argument("--permuted-tasks", type=int, default=10, help="tasks of Permuted MNIST (default: 10)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per task, every method (default: 5)")
    parser.add_argument("--width", type=int, default=256, help="hidden units per layer (default: 256)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: 1e-3)")
    parser.add_argument("--pruning", default="l2", help="eidetic's importance method (default: l2)")
    parser.add_argument("--prune-step", type=float, help="eidetic's pruning step (default: Pruning's, adaptive)")
    parser.add_argument("--tolerance", type=float, help="eidetic's pruning tolerance (default: Pruning's)")
    parser.add_argument("--recovery-epochs", type=int,
                        help="eidetic's recovery epochs per pruning step at most (default: Pruning's)")
    parser.add_argument("--no-share", dest="share", action="store_false",
                        help="do not tell eidetic the number of tasks (Pruning(tasks=None): no share per task, "
                             "the tolerance alone decides)")
    parser.add_argument("--patience", type=int,
                        help="failed pruning steps retried at half the step (default: Pruning's)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    args = parser.parse_args()
    args.tasks = {"permuted-mnist": args.permuted_tasks, "split-mnist": 5}
    torch.set_num_threads(args.threads)
    print(f"MLP {args.width}-{args.width}, {args.epochs} epochs, batch {args.batch_size}, AdamW lr {args.lr}, "
          f"pruning {args.pruning} step {args.prune_step} tolerance {args.tolerance} recovery {args.recovery_epochs} "
          f"patience {args.patience} share {args.share}, "
          f"seed {args.seed}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    results = {}
    for name in args.benchmarks:
        print(f"{name}:", flush=True)
        results[name] = measure(name, args)
    print()
    for name, result in results.items():
        print(table(name, result, 2 * args.width))
        recovery = result["methods"]["eidetic"]["recovery_epochs"]
        print(f"eidetic ran {recovery} pruning recovery epoch(s) in all, on top of {args.epochs} per task; "
              f"free units left: {result['methods']['eidetic']['free_units_left']}\n")
    if args.json:
        write_json(args.json, args, results)


if __name__ == "__main__":
    main()
