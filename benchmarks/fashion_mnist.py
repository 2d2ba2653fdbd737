"""Split and Permuted Fashion-MNIST, for real: eidetic, CPG and LSG against fine-tuning and
independent networks, on an MLP and a small convolutional network.

The three methods run exactly as ``eidetic run`` runs them with its defaults (``cli.resolve`` of
``eidetic run --benchmark B --model M --method X`` and nothing else: its optimizer, batch size,
epochs, pruning, CPG's and LSG's goals and growth, the default router), so the figures are what a
new user gets; the tables say which settings those were. The baselines train the same network
(the zoo's, as a plain module with one ``nn.Linear`` head per task) on the same loaders with the
same optimizer, learning rate and training epochs:

* **fine-tuning**: one network, a new head per task, the whole body trained on each task in turn;
* **independent**: one fresh network per task (T times the parameters), the upper reference.

Reported per benchmark and network: the accuracy matrix of every method, average accuracy with
the task id given, BWT, the routed accuracy (no task id; eidetic, CPG and LSG only) against that
oracle, whether every earlier task's test logits stayed bitwise identical, the parameters at the
end (with the masks' bits as float32 equivalents), and the wall time. Fashion-MNIST's 60,000
training and 10,000 test images are read from ``--data-dir`` (default:
``../shared/data/fashion-mnist`` next to the repository).

``--doc docs/reproduce.md`` writes the tables, with the date, the machine and the command, into
that page between its begin and end markers: after a change of defaults, rerun it to bring the
page up to date.

Run::

    python benchmarks/fashion_mnist.py --doc docs/reproduce.md --json fashion.json   # hours, 1 thread
    python benchmarks/fashion_mnist.py --benchmarks split-fashion-mnist --models mlp --tasks 2   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import eidetic
from eidetic import cli, datasets, zoo

from common import train_plain, write_json

DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "fashion-mnist"
BENCHMARKS = ("split-fashion-mnist", "permuted-fashion-mnist")
MODELS = ("mlp", "convnet")
METHODS = ("eidetic", "cpg", "lsg", "fine-tuning", "independent")


def run_method(benchmark: str, model: str, method: str, args: argparse.Namespace) -> dict:
    """eidetic, CPG or LSG through ``eidetic run``'s own code, with its defaults."""
    with tempfile.TemporaryDirectory() as out:
        argv = ["run", "--benchmark", benchmark, "--model", model, "--method", method, "--data-dir", str(args.data_dir),
                "--threads", str(args.threads), "--seed", str(args.seed), "--no-plots", "--no-progress", "--out", out,
                *_tasks(args)]
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


def _tasks(args: argparse.Namespace) -> list[str]:
    return [] if args.tasks is None else ["--tasks", str(args.tasks)]


def _body(model: str, shape: tuple[int, ...], config: cli.Config) -> tuple[nn.Module, int]:
    body = zoo.build_model(model, shape, config.width)
    with torch.no_grad():
        features = body(torch.zeros(2, *shape)).shape[1]
    return body, features


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
                                            str(args.seed), *_tasks(args)])
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
        train_plain(*nets[-1], task.train, cli.make_optimizer(config), config.epochs)
        row = [eidetic.TaskEvaluation(k, len(t.test.dataset), _accuracy(b, h, t.test))
               for k, ((b, h), t) in enumerate(zip(nets, tasks))]
        results.add(eidetic.Evaluation(row))
    seconds = time.perf_counter() - start
    modules = {id(m): m for pair in nets for m in pair}.values()  # fine-tuning: one body, shared
    parameters = sum(p.numel() for module in modules for p in module.parameters())
    return {"matrix": results.matrix, "average": results.average_accuracy, "bwt": results.bwt, "routed": None,
            "routing": None, "parameters": parameters, "mask_bits": 0, "seconds": seconds, "epochs": config.epochs,
            "config": config.to_dict()}


BASELINES = ("fine-tuning", "independent")
TITLES = {"split-fashion-mnist": "Split Fashion-MNIST", "permuted-fashion-mnist": "Permuted Fashion-MNIST",
          "mlp": "MLP", "convnet": "conv net"}
BEGIN = "<!-- begin: written by benchmarks/fashion_mnist.py --doc; rerun it instead of editing -->"
END = "<!-- end: written by benchmarks/fashion_mnist.py --doc -->"


def settings(config: dict, method: str) -> str:
    """What a method ran with, in words, from the resolved ``eidetic run`` configuration."""
    optimizer = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD"}[config["optimizer"]]
    words = [f"{optimizer} lr {config['lr']:g}, weight decay {config['weight_decay']:g}",
             f"batch {config['batch_size']}", f"{config['epochs']} training epochs per task"]
    if method in BASELINES:
        return ", ".join(words) + "; nothing pruned, frozen or routed"
    if config["pruning"] != "none":
        share = ", each task pruned to at most its share of the free units" if config["share"] and \
            method == "eidetic" else ""
        words.append(f"{config['pruning'].upper()} pruning in steps of {config['prune_step']:g} of the units, "
                     f"tolerance {config['tolerance']:g}, {config['recovery_epochs']} recovery epochs per step{share}")
    if method == "cpg":
        words.append(f"goal {config['goal']:g} on the training data, growth steps of {config['grow_step']:g} of the "
                     f"width up to {config['max_growth']:g}x the parameters, picking lr {config['pick_lr']:g}")
    if method == "lsg":
        seed = "the network as built" if config["seed_fraction"] == 1 else \
            f"a seed of {config['seed_fraction']:g} of the width"
        first = "the first task on" if config.get("grow_first_task") else "the second task on"
        words.append(f"from {seed}, goal {config['goal']:g} on the training data, growth from {first} up to "
                     f"{config['max_growth']:g}x the parameters, {config['candidates']:g}x the seed width in "
                     f"candidates per growth step, layers up to {config['max_width']:g}x their seed width, mask lr "
                     f"{config['mask_lr']:g}")
    words.append(f"router {config['router']}")
    return ", ".join(words)


def summary_table(methods: dict) -> list[str]:
    lines = ["| method | avg acc, task id given | routed acc | routed - task id given | BWT | earlier tasks' "
             "logits | parameters | + masks as float32 | time s |", "|---|---|---|---|---|---|---|---|---|"]
    for method, r in methods.items():
        routed = "-" if r["routed"] is None else f"{r['routed']:.4f}"
        gap = "-" if r["routed"] is None else f"{r['routed'] - r['average']:+.4f}"
        kept = "-" if "logits_identical" not in r else "bitwise identical" if r["logits_identical"] else "CHANGED"
        size = r["parameters"] + r["mask_bits"] / 32
        lines.append(f"| {method} | {r['average']:.4f} | {routed} | {gap} | {r['bwt']:+.4f} | {kept} | "
                     f"{r['parameters']:,} | {size:,.0f} | {r['seconds']:.0f} |")
    return lines


def matrix_tables(key: str, methods: dict) -> list[str]:
    lines = []
    for method, r in methods.items():
        size = len(r["matrix"])
        lines += [f"<details><summary>{key}, {method}: accuracy matrix (row i: after task i)</summary>", "",
                  "| after | " + " | ".join(f"task {j}" for j in range(size)) + " |", "|---" * (size + 1) + "|"]
        for i, row in enumerate(r["matrix"]):
            lines.append(f"| {i} | " + " | ".join("" if v is None else f"{v:.4f}" for v in row) + " |")
        lines += ["", "</details>", ""]
    return lines


def markdown(results: dict) -> str:
    """Per benchmark and network: the settings of each method, the summary table, then every
    method's accuracy matrix."""
    lines = []
    for key, methods in results.items():
        benchmark, model = key.split(", ")
        widths = {r["config"]["width"] for m, r in methods.items() if m not in ("lsg", *BASELINES)}
        widths.discard(None)  # None: the model's own widths
        width = f" (width {widths.pop()})" if len(widths) == 1 else ""
        lines += [f"### {TITLES[benchmark]}, {TITLES[model]}{width}", ""]
        lines += [f"- {method}: {settings(r['config'], method)}" for method, r in methods.items()]
        lines += ["", *summary_table(methods), "", *matrix_tables(key, methods)]
    return "\n".join(lines)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores ({platform.machine()}, {platform.system()})"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return ""
    return f", commit {out.stdout.strip()}"


def record(args: argparse.Namespace, seconds: float) -> str:
    """When, where and how the tables were measured."""
    command = " ".join(["python benchmarks/fashion_mnist.py", *sys.argv[1:]])
    return (f"Measured {time.strftime('%Y-%m-%d')} with `{command}`: {seconds / 3600:.1f} hours in all on "
            f"{_machine()}, {args.threads} torch thread(s), seed {args.seed}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, eidetic {eidetic.__version__}{_commit()}. Each method ran with what "
            "`eidetic run --benchmark B --model M --method X` resolves when given nothing else:")


def update_doc(path: Path, block: str) -> None:
    """Replace the text between :data:`BEGIN` and :data:`END` in ``path`` by ``block``."""
    text = path.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"{path} needs one line {BEGIN!r} and, after it, one line {END!r} where the tables go")
    head, rest = text.split(BEGIN, 1)
    path.write_text(f"{head}{BEGIN}\n{block}\n{END}{rest.split(END, 1)[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR,
                        help="Fashion-MNIST's IDX files (default: ../shared/data/fashion-mnist from the repository)")
    parser.add_argument("--benchmarks", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--tasks", type=int, default=None, help="only the first tasks, for a quick look (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--markdown", metavar="PATH", help="also write the tables to this Markdown file")
    parser.add_argument("--doc", type=Path, metavar="PATH",
                        help="write the tables into this page between its begin and end markers "
                             "(docs/reproduce.md); only a full run (every benchmark, model, method and task)")
    args = parser.parse_args()
    full = (args.benchmarks, args.models, args.methods) == (list(BENCHMARKS), list(MODELS), list(METHODS))
    if args.doc is not None and not (full and args.tasks is None):
        parser.error("--doc records only a full run: leave out --benchmarks, --models, --methods and --tasks")
    if args.tasks is not None and args.tasks < 1:
        parser.error("--tasks must be at least 1")
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
                measure = run_baseline if method in BASELINES else run_method
                r = measure(benchmark, model, method, args)
                results[key][method] = r
                routed = "" if r["routed"] is None else f", routed {r['routed']:.4f}"
                print(f"{key}, {method}: average {r['average']:.4f}{routed}, BWT {r['bwt']:+.4f}, "
                      f"{r['parameters']:,} parameters, {r['seconds']:.0f}s", flush=True)
    seconds = time.perf_counter() - start
    text = f"{record(args, seconds)}\n\n{markdown(results)}"
    print(f"\n{text}")
    if args.json:
        write_json(args.json, args, results)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.doc is not None:
        update_doc(args.doc, text)
        print(f"wrote the tables into {args.doc}")


if __name__ == "__main__":
    main()
