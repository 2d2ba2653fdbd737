"""Size and speed of ``net.export()`` against the network it comes from, for every zoo model.

Each zoo model (``mlp``, ``convnet``, ``resnet``, ``lstm``), with each method (``eidetic``: the
library's default ``Pruning()``; ``cpg``: ``CPGMixin`` with CPG's defaults, picking masks over the
frozen weights, no goal so no growth), learns ``--tasks`` tasks of Split digits (scikit-learn's
bundled 8x8 digits, two classes per task, no download) with ``train_task`` as ``eidetic run`` does
(AdamW lr 1e-2, batch 32, ``--memory`` exemplars per task so that the learned router is fitted).
Then, in evaluation mode under ``torch.no_grad()``, on the test images of every task:

* **parameters** of the network (body and every head; ``net.parameter_count()``) against those of
  ``net.export()`` (every task) and of ``net.export(T - 1)`` (the last task alone), and their
  ratios; buffers (BatchNorm statistics) are counted on neither side, nor are CPG's mask bits;
* **latency** at each ``--batch-sizes``, median milliseconds per call over ``--rounds``
  interleaved rounds (one call of each method per round), of: every task's logits computed by the
  network the best way it can (one body pass ``net(x).flatten(1)`` and ``net.heads.output`` for
  each unmasked task, ``net.logits(x, k)`` for each masked one) against the exported all-task
  module; and ``net.predict(x)`` against ``net.export(router="auto")``; the ratios are the
  export's time over the network's in the same run;
* **sanity**: the largest absolute difference between the exported logits (all tasks, and the
  last task alone) and ``net.logits(x, k)``, and the fraction of inputs that the exported router
  sends to the task ``net.predict`` picks.

CPG's masked tasks (every task after the first) read the frozen weights through their own masks:
the export holds one pruned body per masked task, so ``export()`` of several CPG tasks can be
larger than the network while ``export(k)`` alone is small. Recurrent layers keep their full width.

Run::

    python benchmarks/export.py                       # about 2 minutes on 2 cores
    python benchmarks/export.py --models mlp resnet --methods cpg --tasks 5 --rounds 300 --json export.json
"""

from __future__ import annotations

import argparse
import time

import torch

import eidetic
from eidetic import datasets, zoo

from common import interleaved, text_table, write_json

MLP_WIDTH = 128  # ``eidetic run``'s MLP width on digits; the other models keep their default width


def masked(net: eidetic.ContinualNetwork, task: int) -> bool:
    """Whether ``task`` reads the body through masks of its own (CPG's picking)."""
    return net._eidetic.masks.has(task)


def every_task(net: eidetic.ContinualNetwork, x: torch.Tensor) -> list[torch.Tensor]:
    """Every finished task's logits the cheapest way the network has: one shared body pass for
    the unmasked tasks, one pass per masked task."""
    tasks = range(net.num_tasks)
    shared = [k for k in tasks if not masked(net, k)]
    features = net(x).flatten(1) if shared else None
    return [net.logits(x, k) if masked(net, k) else net.heads.output(features, k) for k in tasks]


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def trained(name: str, method: str, bench: datasets.Benchmark, args: argparse.Namespace) -> eidetic.ContinualNetwork:
    width = args.width if args.width is not None else MLP_WIDTH if name == "mlp" else None
    net = zoo.build_model(name, bench.input_shape, width, method=method)
    for k, task in enumerate(bench.as_tasks(args.batch_size, seed=args.seed)):
        net.train_task(k, task.train, num_classes=task.num_classes, epochs=args.epochs, progress=False,
                       optimizer=lambda p: torch.optim.AdamW(p, lr=args.lr), pruning=eidetic.Pruning(),
                       memory=args.memory)
    return net.eval()


def measure(name: str, method: str, bench: datasets.Benchmark, test: torch.Tensor,
            args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    net = trained(name, method, bench, args)
    train_s = time.perf_counter() - start
    tasks = net.num_tasks
    with torch.no_grad():
        start = time.perf_counter()
        every = net.export()
        export_s = time.perf_counter() - start
        last, routed = net.export(tasks - 1), net.export(router="auto")
        expected = [net.logits(test, k) for k in range(tasks)]
        difference = max(max(float((out - ref).abs().max()) for out, ref in zip(every(test), expected)),
                         float((last(test) - expected[-1]).abs().max()))
        task, _label = routed(test)
        agreement = float((task == net.predict(test).task).float().mean())
        latency = {}
        for batch in args.batch_sizes:
            x = test.repeat((batch + len(test) - 1) // len(test), *[1] * (test.dim() - 1))[:batch]
            latency[batch] = interleaved({
                "network, every task": lambda x=x: every_task(net, x),
                "export(), every task": lambda x=x: every(x),
                "predict": lambda x=x: net.predict(x),
                "export(router='auto')": lambda x=x: routed(x),
            }, args.rounds)
    return {"model": name, "method": method, "tasks": tasks,
            "masked tasks": [k for k in range(tasks) if masked(net, k)],
            "parameters": {"network": net.parameter_count(), "export()": parameters(every),
                           f"export({tasks - 1})": parameters(last)},
            "max abs difference": difference, "routing agreement": agreement, "ms": latency,
            "train s": train_s, "export s": export_s}


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=zoo.MODELS, default=list(zoo.MODELS),
                        help="zoo models (default: all four)")
    parser.add_argument("--methods", nargs="+", choices=zoo.METHODS, default=["eidetic", "cpg"],
                        help="methods (default: eidetic cpg, as docs/benchmarks.md measured them)")
    parser.add_argument("--tasks", type=int, default=3, help="Split digits tasks (default: 3)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs per task, before pruning (default: 2)")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size (default: 32)")
    parser.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate (default: 1e-2)")
    parser.add_argument("--memory", type=int, default=100, help="exemplars kept per task for the router (default: 100)")
    parser.add_argument("--width", type=int, default=None,
                        help=f"width of every model (default: {MLP_WIDTH} for mlp, each model's default otherwise)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 256],
                        help="inference batch sizes (default: 1 256)")
    parser.add_argument("--rounds", type=int, default=200, help="timed rounds per setting (default: 200)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    bench = datasets.load_benchmark("split-digits", tasks=args.tasks, seed=args.seed)
    test = torch.cat([t.tensors[0] for t in bench.test])
    rows = []
    for name in args.models:
        for method in args.methods:
            r = measure(name, method, bench, test, args)
            rows.append(r)
            p = r["parameters"]
            print(f"{name} {method}: trained in {r['train s']:.1f} s, exported in {r['export s']:.1f} s; "
                  f"parameters {', '.join(f'{k} {v:,}' for k, v in p.items())}; max |difference| "
                  f"{r['max abs difference']:.1e}; routing agreement {r['routing agreement']:.3f}", flush=True)

    last = f"export({args.tasks - 1})"
    print(f"\n{args.tasks} Split digits tasks per network; parameters (ratio to the network's), the largest "
          f"|exported - logits| over the {len(test)} test images, and the fraction of them the exported router "
          "sends where predict does")
    lines = [["model", "method", "masked tasks", "network", "export()", last, "max |diff|", "routing agreement",
              "export s"]]
    for r in rows:
        p = r["parameters"]
        lines.append([r["model"], r["method"], ",".join(map(str, r["masked tasks"])) or "-", f"{p['network']:,}",
                      f"{p['export()']:,} ({ratio(p['export()'], p['network'])})",
                      f"{p[last]:,} ({ratio(p[last], p['network'])})", f"{r['max abs difference']:.1e}",
                      f"{r['routing agreement']:.3f}", f"{r['export s']:.1f}"])
    print(text_table(lines))

    print(f"\nmedian ms per call over {args.rounds} interleaved rounds (ratio to the network's call in the same "
          f"run), {args.threads} thread(s), torch {torch.__version__}")
    lines = [["model", "method", "batch", "network, every task", "export()", "predict", "export(router='auto')"]]
    for r in rows:
        for batch, ms in r["ms"].items():
            network, exported, predict, routed = ms.values()
            lines.append([r["model"], r["method"], str(batch), f"{network:.3f}",
                          f"{exported:.3f} ({ratio(exported, network)})", f"{predict:.3f}",
                          f"{routed:.3f} ({ratio(routed, predict)})"])
    print(text_table(lines))
    if args.json:
        write_json(args.json, args, rows)


if __name__ == "__main__":
    main()
