"""Routed inference time for T tasks against one plain forward pass, for T = 1, 5, 10.

One MLP (784-256-256, BatchNorm, ReLU) learns Permuted MNIST tasks one after another with
``train_task`` (offline MNIST files; 1 epoch per task by default: only the timings matter).
Right after task T (T in ``--tasks``) the script times, on the same batch of test images, in
evaluation mode under ``torch.no_grad()``:

* **plain**: the same architecture in plain PyTorch (a fresh ``eidetic.zoo.MLP`` that never
  learnt a task, so eidetic installed nothing on it) with one ``nn.Linear`` head: the baseline;
* **logits**: ``net.logits(x, task=0)``: one task, its id given;
* **predict (learned / statistics / confidence)**: ``net.predict(x, router=...)``: one body pass,
  the T heads and a router that picks each input's task (no task id);
* **T plain passes**: T forward passes of the plain network, what inference costs when every
  task needs its own pass (per-task masks, as in PackNet or CPG's picking).

Methods run in interleaved rounds (one call of each per round) so that they see the same machine
state; the table gives median milliseconds per call and the ratio to the plain pass measured in
the same run.

Run::

    python benchmarks/inference.py --data-dir /work/shared/data/mnist            # about 2 minutes on 2 cores
    python benchmarks/inference.py --data-dir data --batch-sizes 1 256 --rounds 300 --json inference.json
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn

import eidetic
from eidetic import datasets, zoo

from common import interleaved, text_table, write_json


class Plain(nn.Module):
    """The body in plain PyTorch with one head."""

    def __init__(self, shape: tuple[int, ...], width: int, classes: int) -> None:
        super().__init__()
        self.body = zoo.MLP(shape, width=width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def measure(net: eidetic.ContinualNetwork, plain: Plain, x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median milliseconds per call of each method, interleaved round by round."""
    tasks = net.num_tasks
    methods: dict[str, Callable[[], object]] = {
        "plain": lambda: plain(x),
        "logits (task id given)": lambda: net.logits(x, task=0),
        "predict, learned router": lambda: net.predict(x, router="learned"),
        "predict, statistics router": lambda: net.predict(x, router="statistics"),
        "predict, confidence router": lambda: net.predict(x, router="confidence"),
        f"{tasks} plain passes": lambda: [plain(x) for _ in range(tasks)],
    }
    with torch.no_grad():
        return interleaved(methods, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="MNIST IDX folder or torchvision root")
    parser.add_argument("--tasks", nargs="+", type=int, default=[1, 5, 10], help="T values (default: 1 5 10)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 256],
                        help="inference batch sizes (default: 1 256)")
    parser.add_argument("--rounds", type=int, default=200, help="timed rounds per setting (default: 200)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs per task (default: 1)")
    parser.add_argument("--width", type=int, default=256, help="hidden units per layer (default: 256)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    bench = datasets.load_benchmark("permuted-mnist", tasks=max(args.tasks), seed=args.seed, data_dir=args.data_dir)
    tasks = bench.as_tasks(128, seed=args.seed)
    net = zoo.MLP(bench.input_shape, width=args.width)
    plain = Plain(bench.input_shape, args.width, 10).eval()
    test = torch.cat([t.test.dataset.tensors[0] for t in tasks])[torch.randperm(len(tasks) * len(bench.test[0]))]
    rows = []
    for k, task in enumerate(tasks):
        net.train_task(k, task.train, num_classes=10, epochs=args.epochs, progress=False,
                       optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), pruning=eidetic.Pruning(step=0.2))
        if k + 1 not in args.tasks:
            continue
        net.eval()
        for batch in args.batch_sizes:
            result = measure(net, plain, test[:batch], args.rounds)
            rows.append({"tasks": k + 1, "batch": batch, "ms": result})
            base = result["plain"]
            print(f"T={k + 1:<2d} batch {batch:<4d} " + "  ".join(
                f"{name}: {ms:.3f} ms ({ms / base:.2f}x)" for name, ms in result.items()), flush=True)
        net.train()
    print(f"\nmedian ms per call over {args.rounds} interleaved rounds (ratio to the plain pass of the same run), "
          f"{args.threads} thread(s), torch {torch.__version__}")
    names = list(rows[0]["ms"])
    header = ["T", "batch", "plain ms", *[n.split(",")[-1].strip() if "," in n else n for n in names[1:-1]],
              "T plain passes"]
    lines = [header]
    for r in rows:
        ms = list(r["ms"].values())
        lines.append([str(r["tasks"]), str(r["batch"]), f"{ms[0]:.3f}",
                      *[f"{v:.3f} ({v / ms[0]:.2f}x)" for v in ms[1:]]])
    print(text_table(lines))
    if args.json:
        write_json(args.json, args, rows)


if __name__ == "__main__":
    main()
