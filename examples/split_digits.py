"""Split digits: five two-class tasks learnt one after another, with no forgetting.

scikit-learn's bundled digits (1797 greyscale 8x8 images, no download) are split into five
tasks: 0 vs 1, 2 vs 3, 4 vs 5, 6 vs 7 and 8 vs 9, each relabelled 0/1. An MLP learns them in
order with ``train_task``; after every task the script prints the test accuracy of every task
learnt so far. The accuracies of earlier tasks never change, not even in the last digit: their
outputs are bitwise identical.

Run::

    python examples/split_digits.py            # a few seconds on one CPU core
    python examples/split_digits.py --epochs 5 --quiet
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import eidetic

TASKS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]


class MLP(eidetic.ContinualNetwork):
    """64 -> 128 -> 128 with BatchNorm and ReLU; ``train_task`` adds one head per task."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.bn1 = nn.BatchNorm1d(128)
        self.fc2 = nn.Linear(128, 128)
        self.bn2 = nn.BatchNorm1d(128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.fc1(x.flatten(1))))
        return F.relu(self.bn2(self.fc2(x)))


def split_tasks(seed: int) -> list[tuple[TensorDataset, TensorDataset]]:
    """One (train, test) pair per task: a stratified 75/25 split, classes relabelled 0/1."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    tasks = []
    for a, b in TASKS:
        index = torch.nonzero((y == a) | (y == b)).flatten().numpy()
        labels = (y[index] == b).long()
        train, test = train_test_split(index, test_size=0.25, stratify=labels.numpy(), random_state=seed)
        tasks.append(tuple(TensorDataset(x[i], (y[i] == b).long()) for i in (train, test)))
    return tasks


@torch.no_grad()
def test_logits(net: eidetic.ContinualNetwork, data: TensorDataset, task: int) -> torch.Tensor:
    net.eval()
    return net.logits(data.tensors[0], task=task)


def accuracy(logits: torch.Tensor, data: TensorDataset) -> float:
    return (logits.argmax(dim=1) == data.tensors[1]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per task (default: 3)")
    parser.add_argument("--quiet", action="store_true", help="only the accuracies: no task reports, no progress bars")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # the tensors are tiny: extra threads cost more than they save

    tasks = split_tasks(args.seed)
    net = MLP()
    first_logits: list[torch.Tensor] = []  # each task's test logits right after it was learnt
    for t, (train, test) in enumerate(tasks):
        # drop_last: a last batch of one sample cannot be trained through BatchNorm
        loader = DataLoader(train, batch_size=32, shuffle=True, drop_last=True)
        report = net.train_task(
            t,
            loader,
            num_classes=2,
            optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2),
            epochs=args.epochs,
            pruning=eidetic.Pruning(method="l2", step=0.2, tolerance=0.02, recovery_epochs=1),
            progress=not args.quiet,
        )
        if not args.quiet:
            print(report)
        first_logits.append(test_logits(net, test, t))
        cells = []
        for k, (a, b) in enumerate(TASKS[: t + 1]):
            test_k = tasks[k][1]
            cells.append(f"task {k} ({a}v{b}): {accuracy(test_logits(net, test_k, k), test_k):.4f}")
        print(f"after task {t}:  " + "  ".join(cells))

    identical = all(torch.equal(test_logits(net, test, k), first_logits[k]) for k, (_, test) in enumerate(tasks))
    print(f"\nevery task's test logits bitwise identical to when it was learnt: {identical}\n")
    print(net.capacity())


if __name__ == "__main__":
    main()
