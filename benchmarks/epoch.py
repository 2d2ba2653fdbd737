"""Time per training epoch of ``train_task`` against a plain PyTorch loop, on ResNet-18-CIFAR.

Both loops train the same network (``eidetic.zoo``'s ``resnet18-cifar``: torchvision's BasicBlock
stages behind a 3x3 stem) on the same synthetic CIFAR-shaped batches (3x32x32, 10 classes),
served by one DataLoader, with the same optimizer (SGD with Nesterov momentum), the same
precision (``--precision``: autocast, fp16 with a gradient scaler in both) and memory format
(``--channels-last``), on the same device. The plain loop is what a user writes:
``zero_grad``, forward, cross-entropy, backward, ``step`` (``scaler.step`` under fp16).

Task 0 is trained first with pruning, so that task 1 runs with frozen units, cut synapses and
frozen BatchNorm channels: that is the state whose cost matters. Task 1 is then timed, one plain
epoch after every eidetic epoch (a callback's ``on_epoch_end``), so that both loops see the same
machine state; the first ``--warmup`` epochs of each are not timed. Reported: the median and mean
seconds per epoch of each loop and their ratio, eidetic / plain.

``--pipeline`` serves the batches through the benchmarks' own data path instead of prebuilt
tensors: uint8 images in memory, CIFAR's random crop and flip, normalisation, ``--workers``
processes, pinned memory on CUDA (:class:`eidetic.datasets.TensorImages`).

Run::

    python benchmarks/epoch.py                       # CPU, width 16, one thread: about 3 minutes
    python benchmarks/epoch.py --width 64 --device cuda --precision bf16 --channels-last --pipeline --workers 4
    python benchmarks/epoch.py --json epoch.json
    python benchmarks/epoch.py --breakdown           # also epochs with the frozen BatchNorm channels off

``--breakdown`` says where the difference goes: every other eidetic epoch runs with the frozen-channel handling that
keeps frozen BatchNorm channels on their statistics switched off (timing only: those epochs do
not keep the guarantee), the rest of ``train_task`` (the guard, the NaN checks, the running
metric) left as it is.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import eidetic
from eidetic import zoo
from eidetic.datasets import CIFAR10_STATS, ImageTransform, TensorImages

from common import text_table, write_json

CLASSES, SHAPE = 10, (3, 32, 32)


class Plain(nn.Module):
    """The zoo's ResNet-18-CIFAR as a plain module, with an ``nn.Linear`` head."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = zoo.build_model("resnet18-cifar", SHAPE, width)
        self.head = nn.Linear(8 * width, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def batches(args: argparse.Namespace, seed: int) -> DataLoader:
    """``args.steps`` batches of synthetic CIFAR-shaped data, prebuilt or through the data path."""
    gen = torch.Generator().manual_seed(seed)
    n = args.steps * args.batch_size
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    cuda = args.device.startswith("cuda")
    if args.pipeline:
        images = torch.randint(0, 256, (n, *SHAPE), generator=gen, dtype=torch.uint8)
        data = TensorImages(images, labels, transform=ImageTransform(CIFAR10_STATS, crop_padding=4, flip=True))
        return DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                          pin_memory=cuda, generator=gen)
    data = TensorDataset(torch.randn((n, *SHAPE), generator=gen), labels)
    prebuilt = list(DataLoader(data, batch_size=args.batch_size))
    if cuda:
        prebuilt = [(x.pin_memory(), y.pin_memory()) for x, y in prebuilt]
    return DataLoader(prebuilt, batch_size=None)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class PlainLoop:
    """One epoch of the plain loop, in the benchmark's precision and memory format."""

    def __init__(self, model: Plain, loader: DataLoader, args: argparse.Namespace) -> None:
        self.model, self.loader, self.args = model, loader, args
        self.optimizer = sgd(model.parameters())
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
        self.scaler = torch.amp.GradScaler(torch.device(args.device).type, enabled=args.precision == "fp16")

    def epoch(self) -> float:
        device, memory = self.args.device, torch.channels_last if self.args.channels_last else torch.preserve_format
        self.model.train()
        _sync(device)
        start = time.perf_counter()
        for x, y in self.loader:
            x = x.to(device, non_blocking=True, memory_format=memory)
            y = y.to(device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(torch.device(device).type, dtype=self.dtype, enabled=self.dtype is not None):
                loss = F.cross_entropy(self.model(x), y)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        _sync(device)
        return time.perf_counter() - start


def sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)


class Interleave(eidetic.Callback):
    """Times eidetic's epochs and runs one timed plain epoch after each; with ``breakdown`` (the
    network), every other eidetic epoch runs with the frozen BatchNorm channels switched off."""

    def __init__(self, plain: PlainLoop, device: str, warmup: int, breakdown: nn.Module | None = None) -> None:
        self.plain, self.device, self.warmup, self.breakdown = plain, device, warmup, breakdown
        self.switch = None
        self.seconds: dict[str, list[float]] = {"plain": [], "eidetic": []}
        if breakdown is not None:
            self.seconds["eidetic, frozen BatchNorm channels off"] = []
        self.epoch = 0
        self.frozen_on = True
        self.start = time.perf_counter()

    def on_epoch_end(self, task: int, stats: eidetic.EpochStats) -> None:
        _sync(self.device)
        eidetic_epoch = time.perf_counter() - self.start
        plain_epoch = self.plain.epoch()
        if self.epoch >= self.warmup:
            kind = "eidetic" if self.frozen_on else "eidetic, frozen BatchNorm channels off"
            self.seconds[kind].append(eidetic_epoch)
            self.seconds["plain"].append(plain_epoch)
        self.epoch += 1
        if self.breakdown is not None and self.epoch >= self.warmup:
            self.switch = self.switch or frozen_switch(self.breakdown)  # the frozen state of this task's session
            self.frozen_on = not self.frozen_on
            self.switch(self.frozen_on)
        _sync(self.device)
        self.start = time.perf_counter()


def frozen_switch(net: eidetic.ContinualNetwork):
    """``switch(on)``: the frozen-channel handling of every BatchNorm layer of ``net`` on or off, by
    taking away the frozen statistics it reads (for timing only: off, the guarantee does not hold)."""
    from eidetic.guarantee import norm

    state = {m: m.__dict__[norm._ATTR] for m in net.modules() if norm._ATTR in m.__dict__}
    if not state:
        raise SystemExit("--breakdown: no BatchNorm layer holds frozen statistics (did eidetic.guarantee.norm "
                         "change where it keeps them?)")

    def switch(on: bool) -> None:
        for module, frozen in state.items():
            if on:
                module.__dict__[norm._ATTR] = frozen
            else:
                module.__dict__.pop(norm._ATTR, None)

    return switch


def measure(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    net = zoo.build_model("resnet18-cifar", SHAPE, args.width).to(args.device)
    plain = Plain(args.width).to(args.device)
    if args.channels_last:
        net, plain = net.to(memory_format=torch.channels_last), plain.to(memory_format=torch.channels_last)
    first = net.train_task(0, batches(args, args.seed), num_classes=CLASSES, optimizer=sgd, epochs=1,
                           pruning=eidetic.Pruning(step=args.prune, tolerance=0.99, max_steps=1, recovery_epochs=0),
                           precision=args.precision, progress=False, memory=0)
    loader = batches(args, args.seed + 1)
    timer = Interleave(PlainLoop(plain, loader, args), args.device, args.warmup, net if args.breakdown else None)
    epochs = args.warmup + args.epochs * (2 if args.breakdown else 1)
    net.train_task(1, loader, num_classes=CLASSES, optimizer=sgd, epochs=epochs, pruning=None,
                   precision=args.precision, callbacks=[timer], progress=False, memory=0)
    seconds = timer.seconds
    median = {k: statistics.median(v) for k, v in seconds.items()}
    mean = {k: statistics.fmean(v) for k, v in seconds.items()}
    frozen = sum(first.units.values())
    return {"epochs": len(seconds["eidetic"]), "seconds": seconds, "median": median, "mean": mean,
            "median_ratio": median["eidetic"] / median["plain"], "mean_ratio": mean["eidetic"] / mean["plain"],
            "frozen_units": frozen, "units": frozen + sum(first.free_units.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=16, help="first-stage channels (default: 16; the paper's 64)")
    parser.add_argument("--batch-size", type=int, default=128, help="samples per step (default: 128)")
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch (default: 20)")
    parser.add_argument("--epochs", type=int, default=10, help="timed epochs of each loop (default: 10)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs of each loop first (default: 1)")
    parser.add_argument("--prune", type=float, default=0.5,
                        help="fraction of units task 0 prunes, left free for task 1 (default: 0.5)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--precision", choices=["bf16", "fp16"], help="autocast in both loops (default: float32)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last network and batches in both")
    parser.add_argument("--pipeline", action="store_true",
                        help="serve uint8 images through the augmentation path instead of prebuilt tensors")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers with --pipeline (default: 0)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time every other eidetic epoch with the frozen BatchNorm channels switched off "
                             "(timing only: those epochs do not keep the guarantee)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    args = parser.parse_args()
    if min(args.width, args.batch_size, args.steps, args.epochs, args.warmup, args.threads) < 1:
        parser.error("--width, --batch-size, --steps, --epochs, --warmup and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    result = measure(args)
    where = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else \
        f"CPU, {args.threads} thread(s)"
    print(f"ResNet-18-CIFAR width {args.width}, batch {args.batch_size}, {args.steps} steps per epoch, SGD Nesterov, "
          f"{args.precision or 'float32'}{', channels-last' if args.channels_last else ''}"
          f"{', data path with ' + str(args.workers) + ' worker(s)' if args.pipeline else ', prebuilt batches'}; "
          f"{where}; torch {torch.__version__}; task 1 with {result['frozen_units']} of {result['units']} units "
          "frozen by task 0")
    rows = [("loop", "median s/epoch", "mean s/epoch")]
    rows += [(k, f"{result['median'][k]:.3f}", f"{result['mean'][k]:.3f}") for k in result["median"]]
    rows += [(f"{k} / plain", f"{result['median'][k] / result['median']['plain']:.3f}x",
              f"{result['mean'][k] / result['mean']['plain']:.3f}x") for k in result["median"] if k != "plain"]
    print(text_table(rows))
    if args.json:
        write_json(args.json, args, result)


if __name__ == "__main__":
    main()
