"""What widening and task masks cost: ``widen()`` itself, and the forward passes they slow down.

For each of the zoo's MLP, ConvNet and ResNet (default widths, 1x28x28 inputs, 10 classes), one
run trains task 0 with one step of pruning (``--prune``: the fraction of units left free), so
that the network has frozen and free units, on a fixed random data set (no downloads), and
measures:

* ``widen``: ``net.widen(...)`` adding ``--units`` units to the first and the last unit group,
  and to the first residual stream (a group with several producing convolutions) if neither is
  one; each timed call widens a fresh ``copy.deepcopy`` of the trained network (the copy is not
  timed). It is reported as a multiple of ``setup``: ``net.setup(example)`` (discovering the
  unit table) on a fresh untrained instance of the same model, timed in the same run. Target:
  under 2 s on the ResNet.
* ``grown / born``: the same for a CPG growth step (``eidetic.Growing()``'s request: every group
  that can be widened, by a quarter of its size), against the body born at that width.
* ``widened / born``: the body's forward pass (``net(x)``) on the widened network against the
  same body *born that wide*: a fresh instance of the model widened before any task, which has
  no eras and computes each layer in one piece. The widened layers are computed in blocks (see
  :mod:`eidetic.guarantee.eras`). Target: at most 1.10x. ``widened / before`` compares it with the
  network before widening (its layers are smaller); task 0's logits before and after must agree
  bitwise (``bitwise``).
* ``masked / unmasked``: after a second task whose ``_begin_task`` gives every body weight a
  random per-kernel binary mask (``_set_mask``), task 1's masked pass (``net.logits(x, 1)``)
  against task 0's plain one (``net.logits(x, 0)``). Target: at most 1.3x.

Times are medians over repeats after one warm-up; the forward passes are in evaluation mode under
``torch.no_grad()`` at batch ``--batch-size``, the passes compared interleaved, in rotating order. Run::

    python benchmarks/widen.py                      # about 80 s on a two-core CPU
    python benchmarks/widen.py --models resnet --repeats 10 --forward-repeats 100
    python benchmarks/widen.py --threads 2 --json widen.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.data import TensorDataset

import eidetic
from eidetic import zoo

from common import text_table, write_json

MODELS = ["mlp", "convnet", "resnet"]
INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
SAMPLES = 256


def masked(cls: type[eidetic.ContinualNetwork]) -> type[eidetic.ContinualNetwork]:
    """``cls`` whose task 1 masks every body weight with a random per-kernel binary mask."""

    class Masked(cls):
        def _begin_task(self, task: int, head: torch.nn.Linear) -> None:
            if task != 1:
                return
            gen = torch.Generator().manual_seed(task)
            for name, p in self.named_parameters():
                if name.startswith("heads.") or p.dim() < 2:
                    continue
                keep = (torch.rand(p.shape[:2], generator=gen) > 0.5).float()
                self._set_mask(name, keep.view(*p.shape[:2], *[1] * (p.dim() - 2)).to(p.device))

    Masked.__name__ = Masked.__qualname__ = f"Masked{cls.__name__}"
    return Masked


def dataset(seed: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn((SAMPLES, *INPUT_SHAPE), generator=gen),
                         torch.randint(0, NUM_CLASSES, (SAMPLES,), generator=gen))


def train(net: eidetic.ContinualNetwork, task: int, args: argparse.Namespace) -> eidetic.TaskReport:
    pruning = eidetic.Pruning(step=args.prune, tolerance=0.99, max_steps=1, recovery_epochs=0)
    return net.train_task(task, dataset(args.seed + task), num_classes=NUM_CLASSES,
                          optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), epochs=1, batch_size=64,
                          pruning=pruning, progress=False)


def request(net: eidetic.ContinualNetwork, units: int) -> dict[str, int]:
    """The first and the last group, and the first residual stream if neither is one."""
    graph = net.graph
    keys = graph.keys()
    residual = [g.key for g in graph if sum(graph.layers[m].in_tensor is not None for m in g.modules) > 1]
    chosen = [keys[0], keys[-1]]
    if residual and not set(residual) & set(chosen):
        chosen.insert(1, residual[0])
    return dict.fromkeys(chosen, units)


def median_seconds(fn: Callable[[object], object], repeats: int, fresh: Callable[[], object]) -> float:
    """Median of ``repeats`` timed ``fn(fresh())`` after a warm-up, ``fresh()`` outside the timing."""
    times = []
    for i in range(repeats + 1):
        arg = fresh()
        start = time.perf_counter()
        fn(arg)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_ms(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median milliseconds of each of ``fns``, called in turn ``repeats`` times after a warm-up, under
    ``torch.no_grad()``; the order rotates from one round to the next, so that none always goes first."""
    times: list[list[float]] = [[] for _ in fns]
    with torch.no_grad():
        for i in range(repeats + 1):
            for j in range(len(fns)):
                k = (i + j) % len(fns)
                start = time.perf_counter()
                fns[k]()
                if i:
                    times[k].append(time.perf_counter() - start)
    return [statistics.median(t) * 1e3 for t in times]


def born_wide(name: str, units: dict[str, int], example: torch.Tensor) -> eidetic.ContinualNetwork:
    """A fresh instance of zoo model ``name`` widened by ``units`` before any task: the same body, born
    that wide (nothing is frozen, so it records no era)."""
    net = zoo.build_model(name, INPUT_SHAPE)
    net.setup(example)
    net.widen(units)
    return net


def measure(name: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    net = masked(zoo.MODELS[name])(INPUT_SHAPE)
    first = train(net, 0, args)
    frozen = {k: f"{v}/{v + first.free_units[k]}" for k, v in first.units.items()}
    units = request(net, args.units)

    example = torch.randn(2, *INPUT_SHAPE)
    setup_s = median_seconds(lambda fresh: fresh.setup(example), args.repeats,
                             lambda: zoo.build_model(name, INPUT_SHAPE))
    copies = []  # the last one, widened, is timed below
    widen_s = median_seconds(lambda c: c.widen(units), args.repeats,
                             lambda: copies.append(copy.deepcopy(net)) or copies[-1])
    wide = copies[-1]

    step = eidetic.Growing().request(net.graph, net._eidetic.layers, net._eidetic.initial_sizes)
    grown = copy.deepcopy(net)
    grown.widen(step)
    born, born_grown = born_wide(name, units, example), born_wide(name, step, example)
    x = torch.randn(args.batch_size, *INPUT_SHAPE, generator=torch.Generator().manual_seed(args.seed))
    for model in (net, wide, born, grown, born_grown):
        model.eval()
    with torch.no_grad():
        same = torch.equal(net.logits(x, 0), wide.logits(x, 0)) and torch.equal(net.logits(x, 0), grown.logits(x, 0))
    before_ms, born_ms, widened_ms, born_grown_ms, grown_ms = interleaved_ms(
        [lambda: net(x), lambda: born(x), lambda: wide(x), lambda: born_grown(x), lambda: grown(x)],
        args.forward_repeats)

    train(net, 1, args)
    net.eval()
    unmasked_ms, masked_ms = interleaved_ms([lambda: net.logits(x, 0), lambda: net.logits(x, 1)],
                                            args.forward_repeats)
    return {
        "model": name, "frozen_units": frozen, "widened": units,
        "sizes": {g.key: g.size for g in wide.graph},
        "setup_s": setup_s, "widen_s": widen_s, "widen_ratio": widen_s / setup_s,
        "before_ms": before_ms, "born_ms": born_ms, "widened_ms": widened_ms,
        "widened_ratio": widened_ms / before_ms, "born_ratio": widened_ms / born_ms,
        "grown": step, "born_grown_ms": born_grown_ms, "grown_ms": grown_ms, "grown_ratio": grown_ms / born_grown_ms,
        "widened_bitwise_same": same,
        "unmasked_ms": unmasked_ms, "masked_ms": masked_ms, "masked_ratio": masked_ms / unmasked_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS, help="zoo models (default: all)")
    parser.add_argument("--units", type=int, default=8, help="units added to each widened group (default: 8)")
    parser.add_argument("--prune", type=float, default=0.5,
                        help="fraction of units task 0 prunes, left free (default: 0.5)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed setup and widen calls per model, median kept (default: 5)")
    parser.add_argument("--forward-repeats", type=int, default=30,
                        help="timed forward passes of each kind, median kept (default: 30)")
    parser.add_argument("--batch-size", type=int, default=256, help="inputs per forward pass (default: 256)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    args = parser.parse_args()
    if min(args.units, args.repeats, args.forward_repeats, args.batch_size, args.threads) < 1:
        parser.error("--units, --repeats, --forward-repeats, --batch-size and --threads must be at least 1")
    torch.set_num_threads(args.threads)

    rows = []
    for name in args.models:
        rows.append(measure(name, args))
        r = rows[-1]
        frozen = ", ".join(f"{k} {v}" for k, v in r["frozen_units"].items())
        print(f"{name}: units frozen by task 0: {frozen}; widened {', '.join(r['widened'])} "
              f"by {args.units}", flush=True)
    print(f"\nmedians, {args.threads} thread(s), torch {torch.__version__}; widen: of {args.repeats} calls, each on a "
          f"fresh copy; forward: of {args.forward_repeats} passes at batch {args.batch_size}, eval, no_grad")
    lines = [["model", "setup s", "widen s", "widen / setup", "before ms", "born ms", "widened ms",
              "widened / born", "widened / before", "grown / born", "bitwise", "unmasked ms", "masked ms",
              "masked / unmasked"]]
    for r in rows:
        lines.append([r["model"], f"{r['setup_s']:.3f}", f"{r['widen_s']:.3f}", f"{r['widen_ratio']:.2f}x",
                      f"{r['before_ms']:.2f}", f"{r['born_ms']:.2f}", f"{r['widened_ms']:.2f}",
                      f"{r['born_ratio']:.2f}x", f"{r['widened_ratio']:.2f}x", f"{r['grown_ratio']:.2f}x",
                      "same" if r["widened_bitwise_same"] else "DIFFERENT", f"{r['unmasked_ms']:.2f}",
                      f"{r['masked_ms']:.2f}", f"{r['masked_ratio']:.2f}x"])
    print(text_table(lines))
    targets = []
    if any(r["model"] == "resnet" for r in rows):
        resnet = next(r for r in rows if r["model"] == "resnet")
        targets.append(f"widen on the ResNet under 2 s: {'met' if resnet['widen_s'] < 2 else 'MISSED'}")
    for key, what in (("born_ratio", "widened"), ("grown_ratio", "grown")):
        slowest = max(rows, key=lambda r, key=key: r[key])
        targets.append(f"{what} / born at most 1.10x: {'met' if slowest[key] <= 1.10 else 'MISSED'} "
                       f"(worst {slowest[key]:.2f}x, {slowest['model']})")
    worst = max(rows, key=lambda r: r["masked_ratio"])
    targets.append(f"masked / unmasked at most 1.3x: {'met' if worst['masked_ratio'] <= 1.3 else 'MISSED'} "
                   f"(worst {worst['masked_ratio']:.2f}x, {worst['model']})")
    print("targets: " + "; ".join(targets))
    if args.json:
        write_json(args.json, args, rows)


if __name__ == "__main__":
    main()
