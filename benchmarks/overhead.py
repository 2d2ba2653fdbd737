"""Per-step overhead of ``train_task`` over a plain PyTorch training loop.

For each model (an MLP 784-256-256 and a small CNN, both with BatchNorm), the script trains
task 0 with pruning so that some units are frozen and some are free, then times task 1
(``pruning=None``): one optimizer step inside ``train_task`` (guard, frozen BatchNorm hook,
metric accumulation, callbacks) against the same step written in plain PyTorch on a copy of
the architecture with an ``nn.Linear`` head: ``zero_grad(set_to_none=True)``, forward,
cross-entropy, backward, ``optimizer.step()``, both with Adam (``--fused``: fused Adam).

The two loops are interleaved in one run: a callback's ``on_epoch_end`` runs one plain epoch
after every eidetic epoch, so that both see the same machine state. Both read the same
batches of random MNIST-shaped data (1x28x28, 10 classes), built once and served by a
DataLoader, and both are timed the same way: ``time.perf_counter`` from the end of one step to
the end of the next (fetching the batch included). The first epochs are a warm-up; the table
gives the median milliseconds per step, the mean over whole epochs (which adds the per-epoch
work), and the ratios eidetic / plain.

Run::

    python benchmarks/overhead.py                 # about 40 s on an idle two-core CPU
    python benchmarks/overhead.py --fused --threads 1 --json overhead.json
    python benchmarks/overhead.py --models cnn --steps 100 --epochs 20
    python benchmarks/overhead.py --compile inductor    # both loops compiled (eidetic: train_task(compile=...))

With ``--compile BACKEND`` the eidetic loop trains with ``train_task(compile={"backend": BACKEND})``
(its steps' forward and loss compiled; optimizer step and guard eager) and the plain loop runs
``torch.compile(model, backend=BACKEND)``; compilation happens in the warm-up epoch, untimed.
Compare the table with the one of a run without ``--compile`` for the compiler's effect.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import eidetic

from common import text_table, write_json

NUM_CLASSES = 10
INPUT_SHAPE = (1, 28, 28)


def mlp() -> nn.Sequential:
    """784 -> 256 -> 256, BatchNorm and ReLU after each Linear."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256), nn.BatchNorm1d(256), nn.ReLU(),
        nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(),
    )


def cnn() -> nn.Sequential:
    """conv 1->16, BN, ReLU, pool, conv 16->32, BN, ReLU, pool, Linear to 128 features."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(),
    )


MODELS: dict[str, tuple[Callable[[], nn.Sequential], int]] = {"mlp": (mlp, 256), "cnn": (cnn, 128)}


class Continual(eidetic.ContinualNetwork):
    """The body inside eidetic: ``train_task`` adds the heads."""

    def __init__(self, body: nn.Sequential) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Plain(nn.Module):
    """The same body with an ``nn.Linear`` head, in plain PyTorch."""

    def __init__(self, body: nn.Sequential, features: int) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(features, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def plain_epoch(model: Plain, optimizer: torch.optim.Optimizer, loader: DataLoader) -> list[float]:
    """One epoch of the plain loop; seconds per step, from the end of one step to the next."""
    model.train()
    times = []
    mark = time.perf_counter()
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        now = time.perf_counter()
        times.append(now - mark)
        mark = now
    return times


class Interleave(eidetic.Callback):
    """Times eidetic's steps and runs one timed plain epoch after each eidetic epoch."""

    def __init__(self, plain: Plain, optimizer: torch.optim.Optimizer, loader: DataLoader, warmup: int) -> None:
        self.plain, self.optimizer, self.loader, self.warmup = plain, optimizer, loader, warmup
        self.epoch = 0
        self.steps: dict[str, list[float]] = {"plain": [], "eidetic": []}
        self.epochs: dict[str, list[float]] = {"plain": [], "eidetic": []}
        self._epoch_steps: list[float] = []
        self._epoch_start = self._mark = time.perf_counter()

    def on_step_end(self, task: int, loss: torch.Tensor) -> None:
        now = time.perf_counter()
        self._epoch_steps.append(now - self._mark)
        self._mark = now

    def on_epoch_end(self, task: int, stats: eidetic.EpochStats) -> None:
        eidetic_epoch = time.perf_counter() - self._epoch_start
        plain_steps = plain_epoch(self.plain, self.optimizer, self.loader)
        if self.epoch >= self.warmup:
            self.steps["eidetic"] += self._epoch_steps
            self.steps["plain"] += plain_steps
            self.epochs["eidetic"].append(eidetic_epoch)
            self.epochs["plain"].append(sum(plain_steps))
        self.epoch += 1
        self._epoch_steps = []
        self._epoch_start = self._mark = time.perf_counter()


@dataclass
class Result:
    """Timings of one model (milliseconds per step) and the units task 0 froze per group."""

    model: str
    steps: int
    plain_median_ms: float
    eidetic_median_ms: float
    median_ratio: float
    plain_epoch_ms: float
    eidetic_epoch_ms: float
    epoch_ratio: float
    frozen_units: dict[str, int]
    free_units: dict[str, int]


def random_batches(args: argparse.Namespace, seed: int) -> DataLoader:
    """``args.steps`` batches of random inputs and labels, built once, served as they are."""
    gen = torch.Generator().manual_seed(seed)
    n = args.steps * args.batch_size
    data = TensorDataset(torch.randn((n, *INPUT_SHAPE), generator=gen),
                         torch.randint(0, NUM_CLASSES, (n,), generator=gen))
    return DataLoader(list(DataLoader(data, batch_size=args.batch_size)), batch_size=None)


def measure(name: str, args: argparse.Namespace) -> Result:
    build, features = MODELS[name]
    torch.manual_seed(args.seed)
    net = Continual(build())
    plain = Plain(build(), features)
    compile_options = {"backend": args.compile} if args.compile else False
    timed_plain = torch.compile(plain, backend=args.compile) if args.compile else plain
    adam = functools.partial(torch.optim.Adam, lr=1e-3, fused=args.fused)
    first = net.train_task(0, random_batches(args, args.seed), num_classes=NUM_CLASSES, optimizer=adam,
                           epochs=1, pruning=eidetic.Pruning(step=args.prune, tolerance=0.99, max_steps=1,
                                                             recovery_epochs=0), progress=False)
    loader = random_batches(args, args.seed + 1)
    timer = Interleave(timed_plain, adam(plain.parameters()), loader, args.warmup)
    net.train_task(1, loader, num_classes=NUM_CLASSES, optimizer=adam, epochs=args.warmup + args.epochs,
                   pruning=None, callbacks=[timer], progress=False, compile=compile_options)
    medians = {k: statistics.median(v) * 1e3 for k, v in timer.steps.items()}
    per_epoch = {k: sum(v) / len(timer.steps[k]) * 1e3 for k, v in timer.epochs.items()}
    return Result(name, len(timer.steps["eidetic"]), medians["plain"], medians["eidetic"],
                  medians["eidetic"] / medians["plain"], per_epoch["plain"], per_epoch["eidetic"],
                  per_epoch["eidetic"] / per_epoch["plain"], first.units, first.free_units)


def table(results: list[Result]) -> str:
    header = ("model", "steps", "plain ms", "eidetic ms", "ratio", "plain ms (epoch)", "eidetic ms (epoch)",
              "ratio (epoch)")
    rows = [header] + [(r.model, str(r.steps), f"{r.plain_median_ms:.3f}", f"{r.eidetic_median_ms:.3f}",
                        f"{r.median_ratio:.3f}x", f"{r.plain_epoch_ms:.3f}", f"{r.eidetic_epoch_ms:.3f}",
                        f"{r.epoch_ratio:.3f}x") for r in results]
    return text_table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                        help="models to time (default: all)")
    parser.add_argument("--batch-size", type=int, default=128, help="samples per step (default: 128)")
    parser.add_argument("--steps", type=int, default=50, help="steps per epoch (default: 50)")
    parser.add_argument("--epochs", type=int, default=10,
                        help="timed epochs of each loop, after the warm-up (default: 10)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed epochs of each loop first, at least 1 (default: 1)")
    parser.add_argument("--prune", type=float, default=0.5,
                        help="fraction of units task 0 prunes, left free for task 1 (default: 0.5)")
    parser.add_argument("--fused", action="store_true", help="use Adam(fused=True) in both loops")
    parser.add_argument("--compile", choices=["inductor", "aot_eager"],
                        help="compile both loops' training steps with this torch.compile backend")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    args = parser.parse_args()
    if min(args.batch_size, args.steps, args.epochs, args.warmup, args.threads) < 1:
        parser.error("--batch-size, --steps, --epochs, --warmup and --threads must be at least 1")
    torch.set_num_threads(args.threads)

    results = []
    for name in args.models:
        result = measure(name, args)
        results.append(result)
        frozen = ", ".join(f"{k} {v}/{v + result.free_units[k]}" for k, v in result.frozen_units.items())
        print(f"{name}: units frozen by task 0: {frozen}")
    print(f"\nmedian ms per step (epoch: mean over whole epochs), batch {args.batch_size}, "
          f"{'fused ' if args.fused else ''}Adam, {args.threads} thread(s), torch {torch.__version__}"
          f"{', compiled (' + args.compile + ')' if args.compile else ''}")
    print(table(results))
    if args.json:
        write_json(args.json, args, [asdict(r) for r in results])


if __name__ == "__main__":
    main()
