"""What CPG's picking costs: training a task with a picking mask against training it without one.

For each of the zoo's MLP and ConvNet (1x28x28 inputs, 10 classes, fixed random data, no
downloads), task 0 is trained and pruned once with ``CPGMixin`` (``--prune``, the fraction of
units pruned, so that task 1 has frozen weights to pick from). Then, from copies of that same
network, task 1 is trained for ``--epochs`` epochs without pruning, once with
``picking=eidetic.Picking()`` and once with ``picking=None``, alternately, ``--repeats`` times:

* ``train picking / none``: the median training time of task 1 with picking over without it
  (each step computes ``W * M`` for every masked weight and steps the scores' Adam);
* ``forward masked / plain``: task 1's forward pass (its masked pass) against task 0's plain one
  on the network trained with picking, in evaluation mode at batch ``--batch-size``.

Run::

    python benchmarks/picking.py                    # about a minute on a two-core CPU
    python benchmarks/picking.py --models mlp --repeats 5 --json picking.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch.utils.data import TensorDataset

import eidetic
from eidetic import zoo

from common import text_table, write_json

_CLASSES = {name: type(f"CPG{cls.__name__}", (eidetic.CPGMixin, cls), {}) for name, cls in zoo.MODELS.items()}


def _data(seed: int, samples: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(samples, 1, 28, 28, generator=g), torch.randint(0, 10, (samples,), generator=g))


def _optimizer(params):
    return torch.optim.AdamW(params, lr=1e-3)


def measure(name: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    net = _CLASSES[name]((1, 28, 28), None)
    common = dict(num_classes=10, batch_size=args.batch_size, optimizer=_optimizer, progress=False)
    net.train_task(0, _data(0, args.samples), epochs=1, **common,
                   pruning=eidetic.Pruning(step=args.prune, max_steps=1, tolerance=0.99, recovery_epochs=0))
    task1 = _data(1, args.samples)
    times: dict[str, list[float]] = {"picking": [], "none": []}
    picked = None
    for _ in range(args.repeats):
        for label, picking in (("picking", eidetic.Picking()), ("none", None)):
            copy_ = copy.deepcopy(net)
            report = copy_.train_task(1, task1, epochs=args.epochs, pruning=None, picking=picking, **common)
            times[label].append(report.seconds["train"])
            if picking is not None:
                picked = copy_
    x = _data(2, args.batch_size)[:][0]
    picked.eval()
    forward = {"masked": [], "plain": []}
    with torch.no_grad():
        for _ in range(args.forward_repeats):
            for label, task in (("masked", 1), ("plain", 0)):
                start = time.perf_counter()
                picked.logits(x, task)
                forward[label].append(time.perf_counter() - start)
    train = statistics.median(times["picking"]) / statistics.median(times["none"])
    passes = statistics.median(forward["masked"]) / statistics.median(forward["plain"])
    return {"model": name, "train_seconds": {k: statistics.median(v) for k, v in times.items()},
            "train_ratio": train, "forward_ratio": passes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "convnet"], choices=["mlp", "convnet", "resnet"])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--prune", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--forward-repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [measure(name, args) for name in args.models]
    lines = [["model", "train (picking)", "train (none)", "train picking / none", "forward masked / plain"]]
    for r in results:
        lines.append([r["model"], f"{r['train_seconds']['picking']:.2f} s", f"{r['train_seconds']['none']:.2f} s",
                      f"{r['train_ratio']:.2f}x", f"{r['forward_ratio']:.2f}x"])
    print(text_table(lines))
    if args.json:
        write_json(args.json, args, results)


if __name__ == "__main__":
    main()
