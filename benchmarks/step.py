"""Seconds per training step of the seed papers' networks at the papers' width, in plain PyTorch,
and what that makes an epoch: the compute an ``eidetic reproduce`` experiment needs.

For each model (``eidetic.zoo``, full width), one SGD step (forward, cross-entropy, backward,
step) on a batch of the experiment's input size and batch size, timed as the median of
``--repeat`` steps after one warm-up step; the epoch estimate multiplies it by the steps of one
pass over the training split (50,000 CIFAR images, 9,469 Imagenette images, 8,000 or 60,000
MNIST images). It is an extrapolation from measured steps, not a measured epoch, and it leaves
out pruning, recovery and evaluation (``benchmarks/epoch.py`` measures ``train_task``'s epoch).

Run::

    python benchmarks/step.py                          # CPU: about 5 minutes on two cores
    python benchmarks/step.py --device cuda --precision bf16 --channels-last
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from eidetic import zoo

from common import text_table, write_json

# model, input shape, batch size, training images per epoch, the experiments that use it
CASES = [
    ("mlp", (1, 28, 28), 256, 8_000, "eidetic-pmnist (width 2000), eidetic-routing-mnist5 (width 512)"),
    ("resnet18-cifar", (3, 32, 32), 256, 50_000, "eidetic-routing-cifar10-5"),
    ("resnet50-cifar", (3, 32, 32), 256, 50_000, "eidetic-cifar100, eidetic-routing-cifar100-5"),
    ("resnet18", (3, 224, 224), 32, 9_469, "eidetic-imagenette-resnet18"),
    ("resnet50", (3, 224, 224), 32, 9_469, "eidetic-imagenette-resnet50"),
    ("vgg16-bn", (3, 32, 32), 32, 50_000, "cpg-cifar100-superclasses, lsg-cifar100-superclasses (seed 1/8)"),
    ("lenet5", (3, 32, 32), 64, 50_000, "lsg-cifar100-split-lenet5 (seed 1/8)"),
]
WIDTHS = {"mlp": 2000}


def step_seconds(name: str, shape: tuple[int, ...], batch: int, args: argparse.Namespace) -> float:
    torch.manual_seed(0)
    body = zoo.build_model(name, shape, WIDTHS.get(name))
    features = body(torch.zeros(2, *shape)).shape[1]
    model = nn.Sequential(body, nn.Linear(features, 10)).to(args.device)
    memory = torch.channels_last if args.channels_last and len(shape) == 3 else torch.preserve_format
    if memory is torch.channels_last:
        model = model.to(memory_format=memory)
    x = torch.randn(batch, *shape, device=args.device).contiguous(memory_format=memory)
    y = torch.randint(0, 10, (batch,), device=args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(torch.device(args.device).type, enabled=args.precision == "fp16")
    times = []
    for _ in range(args.repeat + 1):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(args.device).type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=[c[0] for c in CASES], default=[c[0] for c in CASES])
    parser.add_argument("--repeat", type=int, default=3, help="timed steps per model (default: 3)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--precision", choices=["bf16", "fp16"], help="autocast (default: float32)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last images and networks")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, results = [("model", "input", "batch", "s / step", "steps / epoch", "min / epoch", "experiments")], []
    for name, shape, batch, images, used in CASES:
        if name not in args.models:
            continue
        seconds = step_seconds(name, shape, batch, args)
        steps = -(-images // batch)
        results.append({"model": name, "input": list(shape), "batch": batch, "seconds_per_step": seconds,
                        "steps_per_epoch": steps, "minutes_per_epoch": seconds * steps / 60})
        rows.append((name, "x".join(map(str, shape)), str(batch), f"{seconds:.3f}", str(steps),
                     f"{seconds * steps / 60:.1f}", used))
        print(f"{name}: {seconds:.3f} s per step", flush=True)
    where = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else \
        f"CPU, {args.threads} thread(s)"
    print(f"\n{where}, {args.precision or 'float32'}{', channels-last' if args.channels_last else ''}, "
          f"torch {torch.__version__}")
    print(text_table(rows))
    if args.json:
        write_json(args.json, args, results)


if __name__ == "__main__":
    main()
