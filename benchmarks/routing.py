"""Every router's routing and routed accuracy next to the oracle, what each keeps, and what
``predict`` costs, on Split digits, Split MNIST and Permuted MNIST, in one run.

Each benchmark is learnt with ``eidetic run``'s defaults for it (the same training, pruning and
exemplar memory; ``--memory`` overrides the memory). Then, on the test images of every task,
the script reports for each router:

* **routing**: the fraction of inputs sent to their own task, and **routed**: right task and
  right class, next to the **oracle** accuracy (task id given);
* what the router keeps per task: exemplars and their bytes (the learned router), or the bytes
  of its statistics (the data-free routers);
* the time of ``net.predict(x, router=...)`` on a batch of test images, as a multiple of one
  forward pass of the same architecture in plain PyTorch with one head (a fresh ``eidetic.zoo``
  model, no hook), measured interleaved in the same run.

Run::

    python benchmarks/routing.py --data-dir /work/shared/data/mnist                 # about 4 minutes
    python benchmarks/routing.py --benchmarks split-digits --memory 100 --json routing.json
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import eidetic
from eidetic import cli, zoo

from common import interleaved, text_table, write_json

ROUTERS = ("gaussian", "learned", "discriminant", "statistics", "energy", "max_softmax")


class Plain(nn.Module):
    """The body in plain PyTorch with one head: the baseline of the timings."""

    def __init__(self, net: eidetic.ContinualNetwork) -> None:
        super().__init__()
        config = net.config
        self.body = zoo.build_model(config["model"], tuple(config["input_shape"]), config["width"])
        self.head = nn.Linear(net.graph.feature_dim, net.heads.classes[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def learn(benchmark: str, args: argparse.Namespace) -> cli.Run:
    """The benchmark learnt as ``eidetic run`` does with its defaults."""
    argv = ["run", "--benchmark", benchmark, "--no-plots", "--no-progress", "--threads", str(args.threads),
            "--seed", str(args.seed), "--router", "none"]
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    if args.memory is not None:
        argv += ["--memory", str(args.memory)]
    parsed = cli.build_parser().parse_args(argv)
    return cli.train(cli.resolve(parsed, parsed.error))


def router_bytes(net: eidetic.ContinualNetwork, router: str) -> int:
    """Bytes per task of what the router keeps."""
    routers = net._eidetic.routers
    tasks = net.num_tasks
    if router == "learned":
        kept = sum(routers.memory.bytes_per_task()) + routers.learned.weight.numel() * 4
    elif router == "gaussian":
        kept = sum(t.numel() * 8 for task in routers.gaussian.classes for t in task.values())
    elif router == "discriminant":
        d = routers.discriminant
        kept = d.scatter.numel() * 8 + sum(m.numel() * 8 for m in d.means)
    elif router == "statistics":
        kept = sum(s.means.numel() * 4 + s.variance.numel() * 4 + s.mask.numel() for s in routers.stats.tasks)
    else:
        kept = 0
    return kept // tasks


def measure(run: cli.Run, args: argparse.Namespace) -> list[dict]:
    net = run.net.eval()
    tests = [t.test for t in run.benchmark.as_tasks(256)]
    x = next(iter(tests[0]))[0][: args.batch]
    plain = Plain(net).eval()
    rows = []
    with torch.no_grad():
        methods = {"plain": lambda: plain(x)} | {r: (lambda r=r: net.predict(x, router=r)) for r in ROUTERS}
        times = interleaved(methods, args.rounds)
        for router in ROUTERS:
            evaluation = eidetic.evaluate(net, tests, router=router)
            rows.append({"benchmark": run.config.benchmark, "tasks": net.num_tasks, "router": router,
                         "oracle": evaluation.oracle, "routing": evaluation.routing, "routed": evaluation.routed,
                         "exemplars": run.config.memory if router == "learned" else 0,
                         "bytes_per_task": router_bytes(net, router),
                         "predict_ms": times[router], "plain_ms": times["plain"],
                         "predict_ratio": times[router] / times["plain"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmarks", nargs="+", default=["split-digits", "split-mnist", "permuted-mnist"])
    parser.add_argument("--data-dir", default=None, help="folder with the MNIST files (the MNIST benchmarks)")
    parser.add_argument("--memory", type=int, default=None, help="exemplars per task (default: eidetic run's)")
    parser.add_argument("--batch", type=int, default=256, help="batch size of the timed predict (default: 256)")
    parser.add_argument("--rounds", type=int, default=100, help="timed rounds (default: 100)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for benchmark in args.benchmarks:
        rows += measure(learn(benchmark, args), args)
    table = [["benchmark", "tasks", "router", "oracle", "routing", "routed", "exemplars", "bytes/task", "predict"]]
    for r in rows:
        table.append([r["benchmark"], str(r["tasks"]), r["router"], f"{r['oracle']:.4f}", f"{r['routing']:.4f}",
                      f"{r['routed']:.4f}", str(r["exemplars"]), f"{r['bytes_per_task']:,}",
                      f"{r['predict_ratio']:.2f}x"])
    print(text_table(table))
    print(f"predict at batch {args.batch}, as a multiple of one plain forward pass with one head (median of "
          f"{args.rounds} interleaved rounds, {args.threads} thread(s))")
    if args.json:
        write_json(args.json, args, rows)


if __name__ == "__main__":
    main()
