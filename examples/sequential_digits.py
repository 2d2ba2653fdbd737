"""Sequential digits: an LSTM reads each image row by row, over five tasks, and never forgets.

scikit-learn's bundled digits (8x8 images, no download) become sequences of 8 rows of 8 pixels,
split into five two-class tasks (0v1, 2v3, 4v5, 6v7, 8v9). A two-layer LSTM reads the rows and
its last step's output feeds one head per task. After every task the script prints the test
accuracy of every task learnt so far: the earlier columns never change, and at the end it checks
that every task's test logits are bitwise identical to when the task was learnt.

Run::

    python examples/sequential_digits.py           # about ten seconds on two CPU cores
    python examples/sequential_digits.py --epochs 15 --bidirectional
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import eidetic

TASKS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]


class RowLSTM(eidetic.ContinualNetwork):
    """Rows of an 8x8 image in, the LSTM's last output step out (the features the heads read)."""

    def __init__(self, hidden: int = 64, layers: int = 2, bidirectional: bool = False) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.reshape(len(x), 8, 8))  # (batch, 8 rows, 8 pixels)
        return out[:, -1]


def split_tasks(seed: int) -> list[tuple[TensorDataset, TensorDataset]]:
    """One (train, test) pair per task: a stratified 75/25 split, classes relabelled 0/1."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32) / 16.0
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per task (default: 10)")
    parser.add_argument("--hidden", type=int, default=64, help="LSTM hidden units per layer (default: 64)")
    parser.add_argument("--bidirectional", action="store_true", help="read the rows in both directions")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--quiet", action="store_true", help="no task reports")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)

    tasks = split_tasks(args.seed)
    net = RowLSTM(args.hidden, bidirectional=args.bidirectional)
    first: list[torch.Tensor] = []
    for t, (train, test) in enumerate(tasks):
        report = net.train_task(
            t, DataLoader(train, batch_size=32, shuffle=True), num_classes=2, epochs=args.epochs,
            optimizer=lambda params: torch.optim.Adam(params, lr=1e-2), progress=False,
            pruning=eidetic.Pruning(method="l2", step=0.2, tolerance=0.02),
        )
        if not args.quiet:
            print(report)
        first.append(test_logits(net, test, t))
        cells = []
        for k, (a, b) in enumerate(TASKS[: t + 1]):
            logits = test_logits(net, tasks[k][1], k)
            accuracy = (logits.argmax(dim=1) == tasks[k][1].tensors[1]).float().mean().item()
            cells.append(f"{a}v{b} {accuracy:.4f}")
        print(f"after task {t}:  " + "  ".join(cells))
    identical = all(torch.equal(test_logits(net, test, k), first[k]) for k, (_, test) in enumerate(tasks))
    print(f"\nevery task's test logits bitwise identical to when it was learnt: {identical}\n")
    print(net.capacity())


if __name__ == "__main__":
    main()
