"""The cost of eidetic's defaults against fine-tuning, and their accuracy against independent networks.

The set-up of a new user (issue 32): a body of Linear(784, 256)-BatchNorm1d-ReLU-Linear(256, 256)-
BatchNorm1d-ReLU wrapped in ``eidetic.Wrapped``, trained task after task with::

    net.train_task(t, TensorDataset(x, y), batch_size=128, num_classes=k, epochs=E, optimizer=make_opt)

and every other argument at its default (``Pruning()``, the routers' statistics and exemplars, the
learned router's refit). In the same run, on the same tensors, batch size, epochs and optimizer:

* **fine-tuning**: one plain PyTorch network, a new head per task, the whole body retrained on each
  task (the time baseline);
* **independent**: a fresh plain PyTorch network per task (the accuracy baseline).

The three are interleaved task by task (task t of each, then task t + 1 of each), so that all see
the same machine state; one torch thread. Printed: the time of each, eidetic / fine-tuning, the
average test accuracy over the tasks (task id given) and eidetic's gap to independent networks,
and where eidetic's time goes (``report.seconds``: training, pruning, finishing; pruning's recovery
epochs and evaluations).

Benchmarks:

* ``permuted-mnist``: 10 tasks of the offline MNIST set (the 10k test file: the first 8,000 images
  train, the last 2,000 test), AdamW lr 1e-3, batch 128, 5 epochs;
* ``split-fashion``: Split Fashion-MNIST, 5 tasks of 2 classes, the 60k training images, tested on
  the 10k test images, Adam lr 1e-3, batch 128, 3 epochs;
* ``permuted-fashion``: Permuted Fashion-MNIST, 5 tasks, the first 20,000 training images, tested on
  the 10k test images, Adam lr 1e-3, batch 128, 3 epochs.

Run::

    python benchmarks/pruning.py --mnist ../shared/data/mnist                      # about 1 minute
    python benchmarks/pruning.py --fashion ../shared/data/fashion-mnist --benchmarks split-fashion permuted-fashion
    python benchmarks/pruning.py --mnist ../shared/data/mnist --pruning default previous paper
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import eidetic
from eidetic.datasets import read_idx

from common import text_table, train_plain, write_json

WIDTH = 256

# pruning configurations to compare: "default" is what train_task uses when given nothing
CONFIGS: dict[str, Callable[[int], eidetic.Pruning | None]] = {
    "default": lambda tasks: None,
    # the defaults before issue 32: steps of 20%, tolerance 0.005, 2 recovery epochs, the metric on all the data
    "previous": lambda tasks: eidetic.Pruning(step=0.2, tolerance=0.005, recovery_epochs=2, sample=None,
                                              max_pruning_ratio=1.0),
    "share": lambda tasks: eidetic.Pruning(tasks=tasks),  # the number of tasks given
    "paper": lambda tasks: eidetic.Pruning.paper(tasks=tasks),
}


@dataclass
class Task:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int


@dataclass
class Bench:
    name: str
    tasks: list[Task]
    epochs: int
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer]
    source: str


def _images(folder: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    def find(name: str) -> Path:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"{name}[.gz] not found in {folder}")

    x = read_idx(find(f"{prefix}-images-idx3-ubyte")).float().div(255.0).flatten(1)
    return x, read_idx(find(f"{prefix}-labels-idx1-ubyte")).long()


def permuted(x_train, y_train, x_test, y_test, tasks: int, seed: int) -> list[Task]:
    """Task 0 on the images as they are, task k on a fixed random permutation of the pixels."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for k in range(tasks):
        order = torch.arange(x_train.shape[1]) if k == 0 else torch.randperm(x_train.shape[1], generator=generator)
        out.append(Task(x_train[:, order].contiguous(), y_train, x_test[:, order].contiguous(), y_test, 10))
    return out


def split(x_train, y_train, x_test, y_test, tasks: int) -> list[Task]:
    """Task k: classes 2k and 2k + 1, relabelled 0 and 1."""
    out = []
    for k in range(tasks):
        train = (y_train == 2 * k) | (y_train == 2 * k + 1)
        test = (y_test == 2 * k) | (y_test == 2 * k + 1)
        out.append(Task(x_train[train], y_train[train] - 2 * k, x_test[test], y_test[test] - 2 * k, 2))
    return out


def load(name: str, args: argparse.Namespace) -> Bench:
    adamw = lambda params: torch.optim.AdamW(params, lr=1e-3)  # noqa: E731
    adam = lambda params: torch.optim.Adam(params, lr=1e-3)  # noqa: E731
    if name == "permuted-mnist":
        x, y = _images(Path(args.mnist), "t10k")
        tasks = permuted(x[:8000], y[:8000], x[8000:], y[8000:], args.permuted_tasks, args.seed)
        return Bench(name, tasks, 5, adamw,
                     f"MNIST 10k test file from {args.mnist}: first 8,000 train, last 2,000 test")
    x_train, y_train = _images(Path(args.fashion), "train")
    x_test, y_test = _images(Path(args.fashion), "t10k")
    if name == "split-fashion":
        return Bench(name, split(x_train, y_train, x_test, y_test, 5), 3, adam,
                     f"Fashion-MNIST from {args.fashion}: 60,000 train, 10,000 test")
    tasks = permuted(x_train[:20000], y_train[:20000], x_test, y_test, 5, args.seed)
    return Bench(name, tasks, 3, adam, f"Fashion-MNIST from {args.fashion}: first 20,000 train, 10,000 test")


def body() -> nn.Sequential:
    return nn.Sequential(nn.Linear(784, WIDTH), nn.BatchNorm1d(WIDTH), nn.ReLU(),
                         nn.Linear(WIDTH, WIDTH), nn.BatchNorm1d(WIDTH), nn.ReLU())


def train_baseline(model: nn.Module, head: nn.Linear, task: Task, bench: Bench) -> None:
    """Plain PyTorch on the task's tensors: shuffled batches of 128, the benchmark's optimizer."""
    loader = DataLoader(TensorDataset(task.x_train, task.y_train), batch_size=128, shuffle=True)
    train_plain(model, head, loader, bench.optimizer, bench.epochs)


@torch.no_grad()
def plain_accuracy(model: nn.Module, head: nn.Linear, task: Task) -> float:
    model.eval()
    head.eval()
    return float((head(model(task.x_test)).argmax(1) == task.y_test).float().mean())


@dataclass
class Eidetic:
    """One eidetic network learning the benchmark with one pruning configuration."""

    label: str
    pruning: eidetic.Pruning | None  # None: train_task's default
    net: eidetic.Wrapped = field(default_factory=lambda: eidetic.Wrapped(body()))
    reports: list = field(default_factory=list)
    seconds: float = 0.0

    def learn(self, t: int, task: Task, bench: Bench) -> None:
        extra = {} if self.pruning is None else {"pruning": self.pruning}
        start = time.perf_counter()
        report = self.net.train_task(t, TensorDataset(task.x_train, task.y_train), batch_size=128,
                                     num_classes=task.num_classes, epochs=bench.epochs, optimizer=bench.optimizer,
                                     **extra)
        self.seconds += time.perf_counter() - start
        self.reports.append(report)

    @torch.no_grad()
    def accuracy(self, tasks: list[Task]) -> list[float]:
        self.net.eval()
        return [float((self.net.logits(task.x_test, t).argmax(1) == task.y_test).float().mean())
                for t, task in enumerate(tasks)]


def run(bench: Bench, configs: list[str], seed: int) -> dict:
    torch.manual_seed(seed)
    finetune, heads = body(), []
    independent: list[tuple[nn.Module, nn.Linear]] = []
    systems = [Eidetic(name, CONFIGS[name](len(bench.tasks))) for name in configs]
    seconds = {"fine-tuning": 0.0, "independent": 0.0}
    for t, task in enumerate(bench.tasks):
        start = time.perf_counter()
        heads.append(nn.Linear(WIDTH, task.num_classes))
        train_baseline(finetune, heads[-1], task, bench)
        seconds["fine-tuning"] += time.perf_counter() - start
        start = time.perf_counter()
        independent.append((body(), nn.Linear(WIDTH, task.num_classes)))
        train_baseline(*independent[-1], task, bench)
        seconds["independent"] += time.perf_counter() - start
        for system in systems:
            system.learn(t, task, bench)
        print(f"  task {t}: fine-tuning {seconds['fine-tuning']:.1f}s, independent {seconds['independent']:.1f}s, "
              + ", ".join(f"eidetic {s.label} {s.seconds:.1f}s" for s in systems), flush=True)
    out = {"benchmark": bench.name, "source": bench.source, "epochs": bench.epochs, "tasks": len(bench.tasks),
           "seconds": seconds, "accuracy": {
               "fine-tuning": [plain_accuracy(finetune, h, task) for h, task in zip(heads, bench.tasks)],
               "independent": [plain_accuracy(m, h, task) for (m, h), task in zip(independent, bench.tasks)]},
           "eidetic": {}}
    for system in systems:
        out["eidetic"][system.label] = {"seconds": system.seconds, "accuracy": system.accuracy(bench.tasks),
                                        "phases": phases(system.reports),
                                        "reports": [r.to_dict() for r in system.reports]}
    return out


def phases(reports) -> dict:
    """Seconds per phase summed over the tasks, and the pruning loop's counts."""
    total = {key: sum(r.seconds.get(key, 0.0) for r in reports)
             for key in ("train", "prune", "prune_training", "prune_evaluating", "finish", "freeze", "recycle",
                         "total")}
    total["training_epochs"] = sum(len(r.epochs) for r in reports)
    total["recovery_steps"] = sum(s.steps for r in reports for s in r.prune_steps)
    total["prune_steps"] = sum(len(r.prune_steps) for r in reports)
    total["units_kept"] = [sum(r.units.values()) for r in reports]
    return total


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def report(result: dict) -> str:
    ft, ind = result["seconds"]["fine-tuning"], result["seconds"]["independent"]
    reference = mean(result["accuracy"]["independent"])
    rows = [("system", "seconds", "/ fine-tuning", "avg acc", "gap to independent")]
    rows.append(("fine-tuning", f"{ft:.1f}", "1.00x", f"{mean(result['accuracy']['fine-tuning']):.4f}",
                 f"{reference - mean(result['accuracy']['fine-tuning']):+.4f}"))
    rows.append(("independent", f"{ind:.1f}", f"{ind / ft:.2f}x", f"{reference:.4f}", "0"))
    for label, r in result["eidetic"].items():
        acc = mean(r["accuracy"])
        rows.append((f"eidetic {label}", f"{r['seconds']:.1f}", f"{r['seconds'] / ft:.2f}x", f"{acc:.4f}",
                     f"{reference - acc:+.4f}"))
    lines = [f"{result['benchmark']}: {result['tasks']} tasks, {result['epochs']} epochs; {result['source']}",
             text_table(rows), ""]
    for label, r in result["eidetic"].items():
        p = r["phases"]
        lines.append(f"eidetic {label}: training {p['train']:.1f}s ({p['training_epochs']} epochs); pruning "
                     f"{p['prune']:.1f}s ({p['prune_steps']} steps, recovery {p['prune_training']:.1f}s in "
                     f"{p['recovery_steps']} optimizer steps, the metric {p['prune_evaluating']:.1f}s); finishing "
                     f"{p['finish']:.1f}s (freeze and the routers' records {p['freeze']:.1f}s, recycle and the "
                     f"learned router's fit {p['recycle']:.1f}s); units kept per task {p['units_kept']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", default="../shared/data/mnist", help="folder of the MNIST IDX files")
    parser.add_argument("--fashion", default="../shared/data/fashion-mnist", help="folder of Fashion-MNIST")
    parser.add_argument("--benchmarks", nargs="+", default=["permuted-mnist"],
                        choices=["permuted-mnist", "split-fashion", "permuted-fashion"])
    parser.add_argument("--pruning", nargs="+", default=["default"], choices=sorted(CONFIGS),
                        help="eidetic configurations, each its own network in the same run (default: default)")
    parser.add_argument("--permuted-tasks", type=int, default=10, help="tasks of Permuted MNIST (default: 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), seed {args.seed}")
    results = {}
    for name in args.benchmarks:
        print(f"{name}:", flush=True)
        results[name] = run(load(name, args), args.pruning, args.seed)
    print()
    for result in results.values():
        print(report(result) + "\n")
    if args.json:
        write_json(args.json, args, results)


if __name__ == "__main__":
    main()
