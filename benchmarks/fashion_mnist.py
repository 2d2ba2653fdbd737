"""Split and Permuted Fashion-MNIST, for real: eidetic, CPG and LSG against fine-tuning and
independent networks, on an MLP and a small convolutional network.

The three methods run exactly as ``eidetic run`` runs them with its defaults (``cli.resolve`` of
``eidetic run --benchmark B --model M --method X``: AdamW at 1e-3, batch 128, 3 epochs per task,
L2 pruning in steps of 0.2 with tolerance 0.005 and 2 recovery epochs, CPG's and LSG's default
goals and growth, the default router), so the figures are what a new user gets. The baselines
train the same network (the zoo's, as a plain module with one ``nn.Linear`` head per task) on the
same loaders with the same optimizer, learning rate and training epochs:

* **fine-tuning**: one network, a new head per task, the whole body trained on each task in turn;
* **independent**: one fresh network per task (T times the parameters), the upper reference.

Reported per benchmark and network: the accuracy matrix of every method, average accuracy with
the task id given, BWT, the routed accuracy (no task id; eidetic, CPG and LSG only) against that
oracle, the parameters at the end (with the masks' bits as float32 equivalents), and the wall
time. Fashion-MNIST's 60,000 training and 10,000 test images are read from ``--data-dir``
(default: ``../shared/data/fashion-mnist`` next to the repository).

Run::

    python benchmarks/fashion_mnist.py --json fashion.json --markdown fashion.md   # about an hour, 1 thread
    python benchmarks/fashion_mnist.py --benchmarks split-fashion-mnist --models mlp --methods eidetic fine-tuning
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import eidetic
from eidetic import cli, datasets, zoo

from common import write_json

DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "fashion-mnist"
BENCHMARKS = ("split-fashion-mnist", "permuted-fashion-mnist")
MODELS = ("mlp", "convnet")
METHODS = ("eidetic", "cpg", "lsg", "fine-tuning", "independent")


def run_method(benchmark: str, model: str, method: str, args: argparse.Namespace) -> dict:
    """eidetic, CPG or LSG through ``eidetic run``'s own code, with its defaults."""
    with tempfile.TemporaryDirectory() as out:
        argv = ["run", "--benchmark", benchmark, "--model", model, "--method", method, "--data-dir", str(args.data_dir),
                "--threads", str(args.threads), "--seed", str(args.seed), "--no-plots", "--no-progress", "--out", out]
        parsed = cli.build_parser().parse_args(argv)
        config = cli.resolve(parsed, parsed.error)
        start = time.perf_counter()
        run = cli.train(config)
        seconds = time.perf_counter() - start
    net = run.net
    results = run.results
    return {"matrix": results.matrix, "average": results.average_accuracy, "bwt": results.bwt,
            "routed": results.routed_accuracy, "routing": results.routing_accuracy,
            "parameters": net.parameter_count(), "mask_bits": net.mask_bits(), "seconds": seconds,
            "logits_identical": run.identical, "epochs": config.epochs, "config": config.to_dict(),
            "epochs_trained": [len(r.epochs) for r in results.reports],
            "parameters_per_task": [r.parameters for r in results.reports]}


def _body(model: str, shape: tuple[int, ...], config: cli.Config) -> tuple[nn.Module, int]:
    body = zoo.build_model(model, shape, config.width)
    with torch.no_grad():
        features = body(torch.zeros(2, *shape)).shape[1]
    return body, features


def _train(body: nn.Module, head: nn.Linear, loader, config: cli.Config) -> None:
    optimizer = cli.make_optimizer(config)([*body.parameters(), *head.parameters()])
    body.train()
    for _ in range(config.epochs):
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(head(body(x)), y).backward()
            optimizer.step()


@torch.no_grad()
def _accuracy(body: nn.Module, head: nn.Linear, loader) -> float:
    body.eval()
    right = total = 0
    for x, y in loader:
        right += int((head(body(x)).argmax(1) == y).sum())
        total += len(y)
    return right / total


def run_baseline(benchmark: str, model: str, method: str, args: argparse.Namespace) -> dict:
    """Fine-tuning or independent networks, on ``eidetic run``'s loaders, optimizer and epochs."""
    parsed = cli.build_parser().parse_args(["run", "--benchmark", benchmark, "--model", model, "--seed",
                                            str(args.seed)])
    config = cli.resolve(parsed, parsed.error)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    bench = datasets.load_benchmark(benchmark, tasks=config.tasks, seed=config.seed, data_dir=args.data_dir)
    tasks = bench.as_tasks(config.batch_size, seed=config.seed)
    results = eidetic.Results()
    nets: list[tuple[nn.Module, nn.Linear]] = []
    shared = None
    for task in tasks:
        if method == "independent" or shared is None:
            shared = _body(model, bench.input_shape, config)
        body, features = shared
        nets.append((body, nn.Linear(features, task.num_classes)))
        _train(*nets[-1], task.train, config)
        row = [eidetic.TaskEvaluation(k, len(t.test.dataset), _accuracy(b, h, t.test))
               for k, ((b, h), t) in enumerate(zip(nets, tasks))]
        results.add(eidetic.Evaluation(row))
    seconds = time.perf_counter() - start
    modules = {id(m): m for pair in nets for m in pair}.values()  # fine-tuning: one body, shared
    parameters = sum(p.numel() for module in modules for p in module.parameters())
    return {"matrix": results.matrix, "average": results.average_accuracy, "bwt": results.bwt, "routed": None,
            "routing": None, "parameters": parameters, "mask_bits": 0, "seconds": seconds, "epochs": config.epochs}


def markdown(results: dict) -> str:
    """Summary tables per benchmark and network, then every method's accuracy matrix."""
    lines = []
    for key, methods in results.items():
        lines += [f"### {key}", "", "| method | avg acc, task id given | routed acc | routed - oracle | BWT | "
                  "parameters | + mask bits as float32 | time s |", "|---|---|---|---|---|---|---|---|"]
        for method, r in methods.items():
            routed = "-" if r["routed"] is None else f"{r['routed']:.4f}"
            gap = "-" if r["routed"] is None else f"{r['routed'] - r['average']:+.4f}"
            bwt = "0 (exactly)" if r["bwt"] == 0 and method in ("eidetic", "cpg", "lsg") else f"{r['bwt']:+.4f}"
            size = r["parameters"] + r["mask_bits"] / 32
            lines.append(f"| {method} | {r['average']:.4f} | {routed} | {gap} | {bwt} | {r['parameters']:,} | "
                         f"{size:,.0f} | {r['seconds']:.0f} |")
        lines.append("")
        for method, r in methods.items():
            size = len(r["matrix"])
            lines += [f"<details><summary>{key}, {method}: accuracy matrix (row i: after task i)</summary>", "",
                      "| after | " + " | ".join(f"task {j}" for j in range(size)) + " |", "|---" * (size + 1) + "|"]
            for i, row in enumerate(r["matrix"]):
                lines.append(f"| {i} | " + " | ".join("" if v is None else f"{v:.4f}" for v in row) + " |")
            lines += ["", "</details>", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR,
                        help="Fashion-MNIST's IDX files (default: ../shared/data/fashion-mnist from the repository)")
    parser.add_argument("--benchmarks", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--markdown", metavar="PATH", help="also write the tables to this Markdown file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Fashion-MNIST from {args.data_dir}; eidetic run's defaults; {args.threads} thread(s), seed {args.seed}, "
          f"torch {torch.__version__}", flush=True)
    results: dict = {}
    start = time.perf_counter()
    for benchmark in args.benchmarks:
        for model in args.models:
            key = f"{benchmark}, {model}"
            results[key] = {}
            for method in args.methods:
                measure = run_baseline if method in ("fine-tuning", "independent") else run_method
                r = measure(benchmark, model, method, args)
                results[key][method] = r
                routed = "" if r["routed"] is None else f", routed {r['routed']:.4f}"
                print(f"{key}, {method}: average {r['average']:.4f}{routed}, BWT {r['bwt']:+.4f}, "
                      f"{r['parameters']:,} parameters, {r['seconds']:.0f}s", flush=True)
    text = markdown(results)
    print(f"\n{text}\ntotal {time.perf_counter() - start:.0f}s")
    if args.json:
        write_json(args.json, args, results)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
