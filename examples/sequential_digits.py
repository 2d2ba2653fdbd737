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
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import eidetic
from eidetic import datasets


class RowLSTM(eidetic.ContinualNetwork):
    """Rows of an 8x8 image in, the LSTM's last output step out (the features the heads read)."""

    def __init__(self, hidden: int = 64, layers: int = 2, bidirectional: bool = False) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.reshape(len(x), 8, 8))  # (batch, 8 rows, 8 pixels)
        return out[:, -1]


@torch.no_grad()
def evaluate(net: eidetic.ContinualNetwork, data: TensorDataset, task: int) -> tuple[torch.Tensor, float]:
    """Task ``task``'s test logits, and its accuracy."""
    net.eval()
    x, y = data.tensors
    logits = net.logits(x, task=task)
    return logits, (logits.argmax(dim=1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per task (default: 10)")
    parser.add_argument("--hidden", type=int, default=64, help="LSTM hidden units per layer (default: 64)")
    parser.add_argument("--bidirectional", action="store_true", help="read the rows in both directions")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation and shuffling (default: 0)")
    parser.add_argument("--quiet", action="store_true", help="no task reports")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)

    bench = datasets.load_benchmark("sequential-digits")  # five tasks of 8 rows of 8 pixels per image
    net = RowLSTM(args.hidden, bidirectional=args.bidirectional)
    first: list[torch.Tensor] = []
    for t, (train, test) in enumerate(zip(bench.train, bench.test)):
        report = net.train_task(
            t, DataLoader(train, batch_size=32, shuffle=True), num_classes=2, epochs=args.epochs,
            optimizer=lambda params: torch.optim.Adam(params, lr=1e-2), progress=False,
            pruning=eidetic.Pruning(method="l2", step=0.2, tolerance=0.02),
        )
        if not args.quiet:
            print(report)
        first.append(evaluate(net, test, t)[0])
        cells = [f"{a}v{b} {evaluate(net, bench.test[k], k)[1]:.4f}" for k, (a, b) in enumerate(bench.classes[: t + 1])]
        print(f"after task {t}:  " + "  ".join(cells))
    identical = all(torch.equal(evaluate(net, test, k)[0], first[k]) for k, test in enumerate(bench.test))
    print(f"\nevery task's test logits bitwise identical to when it was learnt: {identical}\n")
    print(net.capacity())


if __name__ == "__main__":
    main()
