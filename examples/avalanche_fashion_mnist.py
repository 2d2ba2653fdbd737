"""Split Fashion-MNIST in Avalanche: EideticStrategy next to PackNet and Naive, in one run.

    pip install -c constraints.txt -e ".[avalanche]"
    python examples/avalanche_fashion_mnist.py --data-dir ../shared/data/fashion-mnist

Builds Avalanche benchmarks from the Fashion-MNIST IDX files (five experiences of two classes, in
class order) and trains every strategy on them with the same settings: an MLP 784-256-256 with
BatchNorm and ReLU (PackNet without BatchNorm, which it refuses), Adam at 1e-3, batches of 128,
3 epochs per experience, one torch thread. After each experience it evaluates the whole test
stream with Avalanche's own EvaluationPlugin (accuracy per experience, forgetting, epoch timing)
and, at the end, prints per strategy the accuracy of every experience, their average, the
forgetting of each earlier experience and the training time (also as a ratio to Naive's, measured
in the same run).

Two settings, as Avalanche builds them:

* task-incremental (``nc_benchmark(task_labels=True, class_ids_from_zero_in_each_exp=True)``):
  the task label is given at evaluation. EideticStrategy scores each input with its task's head;
  PackNet (Avalanche's, with an equal-capacity pruning schedule) masks its weights per task;
  Naive fine-tunes a shared body with one head per task (Avalanche's ``MultiHeadClassifier``).
* class-incremental (``task_labels=False``, global class ids): no task label at evaluation.
  ``EideticStrategy(task_labels=False)`` routes each input with ``predict``; Naive fine-tunes one
  10-way head. PackNet needs task labels, so it has no class-incremental row.

EideticStrategy uses eidetic's default ``Pruning()``; a second row gives it the number of tasks
(``Pruning(tasks=5)``, each task keeps at most its share of the free units), as PackNet's
schedule knows it.
"""

from __future__ import annotations

import argparse
import re
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import eidetic
from eidetic.datasets import load_mnist

TASKS = 5
PACKNET_SCHEDULE = [1 - 1 / (TASKS - k) for k in range(TASKS)]  # every task keeps 1/5 of the weights
"""PackNet's prune proportion per experience: the fraction of the still-free weights pruned after
training it, so that every experience keeps the same share (0.8, 0.75, 0.67, 0.5, 0)."""


class EideticMLP(eidetic.ContinualNetwork):
    """784-256-256 with BatchNorm and ReLU; train_task adds a head per experience."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 256)
        self.bn1 = nn.BatchNorm1d(256)
        self.fc2 = nn.Linear(256, 256)
        self.bn2 = nn.BatchNorm1d(256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.fc2(F.relu(self.bn1(self.fc1(x.flatten(1)))))))


def body(batch_norm: bool = True) -> nn.Sequential:
    """The same 784-256-256 body as a plain module (for Naive and PackNet)."""
    norm = nn.BatchNorm1d if batch_norm else (lambda _: nn.Identity())
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), norm(256), nn.ReLU(),
                         nn.Linear(256, 256), norm(256), nn.ReLU())


def benchmarks(data_dir: str, per_class: int | None):
    """The task- and class-incremental Split Fashion-MNIST benchmarks, as Avalanche builds them."""
    from avalanche.benchmarks import nc_benchmark

    data = load_mnist(data_dir)  # Fashion-MNIST has MNIST's file names and format

    def dataset(x, y, limit):
        if limit is not None:  # the first `limit` images of each class (a quick run)
            keep = torch.cat([(y == c).nonzero().flatten()[:limit] for c in range(10)]).sort().values
            x, y = x[keep], y[keep]
        result = TensorDataset(x, y)
        result.targets = y.tolist()
        return result

    test_limit = None if per_class is None else max(per_class // 5, 2)
    train, test = dataset(data.x_train, data.y_train, per_class), dataset(data.x_test, data.y_test, test_limit)
    common = {"n_experiences": TASKS, "fixed_class_order": list(range(10))}
    return {"task-incremental": nc_benchmark(train, test, task_labels=True, class_ids_from_zero_in_each_exp=True,
                                             **common),
            "class-incremental": nc_benchmark(train, test, task_labels=False, **common)}


def strategies(setting: str, args):
    """(name, factory of a fresh strategy given an evaluator) for each strategy of ``setting``."""
    from avalanche.models import MultiHeadClassifier, MultiTaskModule
    from avalanche.models.packnet import PackNetModel
    from avalanche.training import Naive, PackNet

    from eidetic.integrations.avalanche import EideticStrategy

    class MultiHeadMLP(MultiTaskModule):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = body(), MultiHeadClassifier(256, initial_out_features=2)

        def forward_single_task(self, x, task_label):
            return self.head(self.body(x), task_label)

    common = {"train_mb_size": args.batch_size, "train_epochs": args.epochs, "eval_mb_size": 1000}

    def adam(model):
        return torch.optim.Adam(model.parameters(), lr=1e-3)

    def eidetic_strategy(pruning, task_labels):
        def make(evaluator):
            net = EideticMLP()
            return EideticStrategy(net, optimizer=adam(net), pruning=pruning, task_labels=task_labels,
                                   evaluator=evaluator, progress=False, **common)
        return make

    def naive(model_class):
        def make(evaluator):
            model = model_class()
            return Naive(model=model, optimizer=adam(model), evaluator=evaluator, **common)
        return make

    def packnet(evaluator):
        model = PackNetModel(nn.Sequential(body(batch_norm=False), nn.Linear(256, 2)))
        return PackNet(model=model, optimizer=adam(model), post_prune_epochs=1, prune_proportion=PACKNET_SCHEDULE,
                       evaluator=evaluator, **common)

    if setting == "task-incremental":
        return [("EideticStrategy, Pruning()", eidetic_strategy(eidetic.Pruning(), True)),
                (f"EideticStrategy, Pruning(tasks={TASKS})", eidetic_strategy(eidetic.Pruning(tasks=TASKS), True)),
                ("PackNet", packnet),
                ("Naive, multi-head", naive(MultiHeadMLP))]
    return [("EideticStrategy(task_labels=False), Pruning()", eidetic_strategy(eidetic.Pruning(), False)),
            ("Naive, one head", naive(lambda: nn.Sequential(body(), nn.Linear(256, 10))))]


def evaluate(make, benchmark) -> dict:
    """Train ``make(evaluator)`` on every experience, evaluating the test stream after each;
    return the last evaluation's accuracies and forgetting, and the training time."""
    from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics, timing_metrics
    from avalanche.training.plugins import EvaluationPlugin

    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True),
                                 forgetting_metrics(experience=True, stream=True),
                                 timing_metrics(epoch=True), loggers=[])
    strategy = make(evaluator)
    seconds = 0.0
    for experience in benchmark.train_stream:
        start = time.perf_counter()
        strategy.train(experience)
        seconds += time.perf_counter() - start
        metrics = strategy.eval(benchmark.test_stream)
    epochs = [v for k, (_, values) in evaluator.get_all_metrics().items() if k.startswith("Time_Epoch")
              for v in values]  # Avalanche's own epoch timer, every epoch of every experience
    per_experience = _by_experience(metrics, "Top1_Acc_Exp")
    return {"accuracy": per_experience,
            "average": sum(per_experience.values()) / len(per_experience),
            "forgetting": _by_experience(metrics, "ExperienceForgetting"),
            "stream_forgetting": next(v for k, v in metrics.items() if k.startswith("StreamForgetting")),
            "train_seconds": seconds, "epochs": len(epochs), "epoch_seconds": sum(epochs) / len(epochs)}


def _by_experience(metrics: dict, prefix: str) -> dict[int, float]:
    found = {int(re.search(r"Exp(\d+)$", k).group(1)): v for k, v in metrics.items() if k.startswith(prefix)}
    return dict(sorted(found.items()))


def table(results: dict) -> str:
    lines = [f"| setting | strategy | {' | '.join(f'exp {e}' for e in range(TASKS))} | average | forgetting "
             "(exp 0-3) | train s | vs Naive |", "|---" * (TASKS + 6) + "|"]
    for setting, rows in results.items():
        naive = next(r["train_seconds"] for name, r in rows.items() if name.startswith("Naive"))
        for name, r in rows.items():
            accuracy = " | ".join(f"{r['accuracy'][e]:.4f}" for e in range(TASKS))
            forgetting = " ".join(f"{r['forgetting'][e]:+.4f}" for e in sorted(r["forgetting"]))
            lines.append(f"| {setting} | {name} | {accuracy} | {r['average']:.4f} | {forgetting} | "
                         f"{r['train_seconds']:.1f} | {r['train_seconds'] / naive:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/fashion-mnist",
                        help="folder of the Fashion-MNIST IDX files (train-* and t10k-*)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--per-class", type=int, default=None,
                        help="use only this many training images per class (a quick run; default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", module="avalanche")  # its deprecation notices, not ours
    results: dict = {}
    for setting, benchmark in benchmarks(args.data_dir, args.per_class).items():
        results[setting] = {}
        for name, make in strategies(setting, args):
            torch.manual_seed(args.seed)
            r = results[setting][name] = evaluate(make, benchmark)
            forgetting = " ".join(f"{v:+.4f}" for v in r["forgetting"].values())
            print(f"{setting:17s}  {name:46s}  average {r['average']:.4f}  forgetting {forgetting}  "
                  f"train {r['train_seconds']:.1f} s ({r['epochs']} epochs of {r['epoch_seconds']:.2f} s)", flush=True)
    print()
    print(table(results))
    return results


if __name__ == "__main__":
    main()
