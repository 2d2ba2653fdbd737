"""Methods compared in one run: eidetic, eidetic + CPG, eidetic + LSG, independent networks and fine-tuning.

On the same data, network, optimizer, batch size, epochs and shuffling (the set-up of
``benchmarks/accuracy.py``, whose loaders and baselines this script imports):

* **eidetic**: ``train_task`` per task with ``accuracy.py``'s pruning (L2, step 0.2, tolerance
  0.02, one recovery epoch per step); one head per task, task id given.
* **eidetic + CPG**: the same network with ``eidetic.CPGMixin``: picking masks over the frozen
  weights, growth while a task misses its accuracy goal (within ``--max-ratio`` of the body's
  parameters), and compacting with the same pruning while the goal holds.
* **eidetic + LSG**: ``eidetic.LSGMixin`` from a seed of ``--seed-fraction`` of the width (1/8):
  attentive and selective masks, released kernels retrained, growth by candidates behind a
  learnable gate while a task misses the goal (up to ``--max-width`` times the seed), no pruning.
* **independent**: one fresh network per task, trained on that task alone (T times the size).
* **fine-tuning**: one network, a new head per task, the whole body retrained on each task.

Benchmarks: ``permuted-mnist`` (10 tasks) and ``split-mnist`` (5 tasks of 2 classes) on a
784-256-256 MLP, and ``small-permuted-mnist``: Permuted MNIST on a 784-64-64 MLP, too small for
ten tasks (plain eidetic runs out of free units for the last ones). MNIST is read from the
offline IDX files as ``accuracy.py`` does (with only the 10k test set: 8,000 images train and a
fixed 2,000 test).

CPG's goal is measured on validation data: ``--val`` of each task's training split is held out
(the same held-out images for every method; every method trains on the rest, and only CPG looks
at the held-out part). Test data is never used in a decision.

Printed per method: average accuracy after the last task (task id given), BWT (exactly 0 for
eidetic and CPG), the accuracy of every task after the last one, the parameters at the end
(raw, the masks' bits, and both as float32 equivalents: parameters + mask bits / 32), wall time,
for CPG and LSG the units grown per task, and the parameters and accuracy after each task
(GROWN's Table 4 layout). A Markdown table; ``--json`` also writes everything, ``--plot`` draws
the parameters after each task.

Run::

    python benchmarks/methods.py                         # about 4 minutes on two CPU cores
    python benchmarks/methods.py --quick                 # a smoke run, under a minute
    python benchmarks/methods.py --benchmarks small-permuted-mnist --goal 0.9 --json methods.json
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accuracy import run_eidetic, run_finetune, run_independent
from torch.utils.data import DataLoader, TensorDataset

import eidetic
from eidetic import datasets, zoo

from common import write_json


@dataclass(frozen=True)
class Spec:
    """One benchmark: the task sequence, its number of tasks, the MLP's width and CPG's default goal."""

    data: str
    tasks: int
    width: int
    goal: float
    title: str


# Goals: an absolute validation accuracy a little below what an independent network reaches on
# each task at this width (measured, see docs/benchmarks.md).
BENCHMARKS = {
    "permuted-mnist": Spec("permuted-mnist", 10, 256, 0.95, "Permuted MNIST, 10 tasks, MLP 784-256-256"),
    "split-mnist": Spec("split-mnist", 5, 256, 0.98, "Split MNIST, 5 tasks, MLP 784-256-256"),
    "small-permuted-mnist": Spec("permuted-mnist", 10, 64, 0.93, "Permuted MNIST, 10 tasks, MLP 784-64-64"),
}
METHODS = ("independent", "eidetic", "cpg", "lsg", "fine-tuning")
LABELS = {"independent": "independent", "eidetic": "eidetic", "cpg": "eidetic + CPG", "lsg": "eidetic + LSG",
          "fine-tuning": "fine-tuning"}

DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mnist"
CPG_CLASSES: dict[type, type] = {}


def cpg_class(base: type) -> type:
    """``class CPG<Base>(eidetic.CPGMixin, Base)``."""
    if base not in CPG_CLASSES:
        CPG_CLASSES[base] = type(f"CPG{base.__name__}", (eidetic.CPGMixin, base), {})
    return CPG_CLASSES[base]


def cut(data: TensorDataset, start: int, stop: int | None) -> TensorDataset:
    return TensorDataset(*(t[start:stop] for t in data.tensors))


def prepare(bench: datasets.Benchmark, args: argparse.Namespace) -> list[TensorDataset]:
    """Shorten the training and test sets (``--train``, ``--test``) and hold out ``--val`` of each
    task's training set, in place; return the validation sets. The split is fixed (seed 0)."""
    vals = []
    generator = torch.Generator().manual_seed(datasets.SPLIT_SEED)
    for k, (train, test) in enumerate(zip(bench.train, bench.test)):
        order = torch.randperm(len(train), generator=generator)
        train = TensorDataset(*(t[order] for t in train.tensors))
        if args.train is not None:
            train = cut(train, 0, args.train)
        held = round(args.val * len(train))
        vals.append(cut(train, 0, held))
        bench.train[k] = cut(train, held, None)
        if args.test is not None:
            bench.test[k] = cut(test, 0, args.test)
    return vals


def run_cpg(args, bench, tasks, optimizer, *, vals: list[TensorDataset], goal: float) -> tuple[eidetic.Results, dict]:
    torch.manual_seed(args.seed)
    net = cpg_class(zoo.MLP)(bench.input_shape, width=args.width)
    for task, val in zip(tasks, vals):
        task.val = DataLoader(val, batch_size=1000) if len(val) else None
    pruning = eidetic.Pruning(method=args.pruning, step=args.prune_step, tolerance=args.tolerance)
    results = eidetic.run_tasks(net, tasks, optimizer=optimizer, epochs=args.epochs, pruning=pruning,
                                goal=goal, picking=eidetic.Picking(lr=args.pick_lr),
                                growing=eidetic.Growing(step=args.grow_step, max_ratio=args.max_ratio),
                                progress=False)
    reports, capacity = results.reports, net.capacity()
    return results, {
        "parameters": net.parameter_count(), "mask_bits": net.mask_bits(),
        "grown": [sum(r.grown.values()) for r in reports], "grown_per_group": [r.grown for r in reports],
        "goal": goal, "goal_met": [r.goal_met for r in reports], "attempts": [r.attempts for r in reports],
        "picked": [r.picked for r in reports], "units_per_task": results.units,
        "recovery_epochs": sum(s.epochs for r in reports for s in r.prune_steps),
        "free_units_left": {layer.group: layer.free for layer in capacity.layers},
        "units_at_end": {layer.group: layer.total for layer in capacity.layers},
    }


def run_lsg(args, bench, tasks, optimizer, *, vals: list[TensorDataset], goal: float) -> tuple[eidetic.Results, dict]:
    torch.manual_seed(args.seed)
    net = zoo.LSGMLP(bench.input_shape, width=max(1, round(args.width * args.seed_fraction)))
    for task, val in zip(tasks, vals):
        task.val = DataLoader(val, batch_size=1000) if len(val) else None
    growth = eidetic.SparseGrowth(candidates=args.candidates, max_width=args.max_width, mask_lr=args.mask_lr)
    pruning = None if not args.lsg_pruning else eidetic.Pruning(
        method=args.pruning, step=args.prune_step, tolerance=args.tolerance, recovery_epochs=args.recovery_epochs)
    results = eidetic.run_tasks(net, tasks, optimizer=optimizer, epochs=args.epochs, pruning=pruning, goal=goal,
                                growth=growth, progress=False)
    reports = results.reports
    return results, {
        "parameters": net.parameter_count(), "mask_bits": net.mask_bits(), "seed_width": net.config["width"],
        "grown": [sum(r.grown.values()) for r in reports], "grown_per_group": [r.grown for r in reports],
        "goal": goal, "goal_met": [r.goal_met for r in reports], "attempts": [r.attempts for r in reports],
        "picked": [r.picked for r in reports], "released": [sum(r.released.values()) for r in reports],
        "units_per_task": results.units,
    }


def measure(name: str, args: argparse.Namespace) -> dict:
    spec = BENCHMARKS[name]
    goal = spec.goal if args.goal is None else args.goal
    run_args = copy.copy(args)
    run_args.width = spec.width
    bench = datasets.load_benchmark(spec.data, tasks=spec.tasks, seed=args.seed, data_dir=args.data_dir)
    vals = prepare(bench, args)
    optimizer = lambda params: torch.optim.AdamW(params, lr=args.lr)  # noqa: E731
    out = {"benchmark": {**bench.describe(), "val_samples": [len(v) for v in vals]}, "title": spec.title,
           "width": spec.width, "goal": goal, "methods": {}}
    runs = {"independent": run_independent, "eidetic": run_eidetic, "fine-tuning": run_finetune,
            "cpg": lambda *a: run_cpg(*a, vals=vals, goal=goal), "lsg": lambda *a: run_lsg(*a, vals=vals, goal=goal)}
    for method in args.methods:
        tasks = bench.as_tasks(args.batch_size, seed=args.seed)  # the same shuffling for every method
        start = time.perf_counter()
        results, extra = runs[method](run_args, bench, tasks, optimizer)
        seconds = time.perf_counter() - start
        extra.setdefault("mask_bits", 0)
        extra["float32_equivalent"] = extra["parameters"] + extra["mask_bits"] / 32
        out["methods"][method] = {
            **extra, "seconds": seconds, "average_accuracy": results.average_accuracy, "bwt": results.bwt,
            "bwt_exact": [results.matrix[-1][j] == results.matrix[j][j] for j in range(len(tasks))],
            "final_accuracies": results.matrix[-1], "matrix": results.matrix,
            "routed_accuracy": results.routed_accuracy,
            "parameters_per_task": [r.parameters for r in results.reports] if results.reports else None}
        grown = f", grown {extra['grown']}" if "grown" in extra else ""
        print(f"  {LABELS[method]}: average {results.average_accuracy:.4f}, BWT {results.bwt:+.4f}, "
              f"{extra['float32_equivalent']:,.0f} float32-equivalent parameters, {seconds:.1f}s{grown}", flush=True)
    return out


def bwt_cell(r: dict) -> str:
    if all(r["bwt_exact"]):
        return "0 (exactly)"
    return f"{r['bwt']:+.4f}"


def markdown(results: dict) -> str:
    """The Markdown tables: one row per benchmark and method, then the accuracy per task."""
    header = ["benchmark", "method", "avg acc", "BWT", "parameters", "mask bits", "float32 equiv.",
              "vs eidetic", "grown per task", "time s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results.values():
        methods = result["methods"]
        reference = methods.get("eidetic", {}).get("float32_equivalent")
        first = True
        for method, r in methods.items():
            ratio = f"{r['float32_equivalent'] / reference:.2f}x" if reference else "-"
            grown = " ".join(str(g) for g in r["grown"]) if "grown" in r else "-"
            cells = [result["title"] if first else "", LABELS[method], f"{r['average_accuracy']:.4f}", bwt_cell(r),
                     f"{r['parameters']:,}", f"{r['mask_bits']:,}", f"{r['float32_equivalent']:,.0f}", ratio, grown,
                     f"{r['seconds']:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
            first = False
    lines.append("")
    for result in results.values():
        size = len(result["benchmark"]["tasks"])
        header = ["method"] + [f"task {k}" for k in range(size)]
        lines += [f"{result['title']}: accuracy per task after the last task", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method, r in result["methods"].items():
            lines.append("| " + " | ".join([LABELS[method]] + [f"{a:.4f}" for a in r["final_accuracies"]]) + " |")
        lines.append("")
    for result in results.values():
        rows = {m: r for m, r in result["methods"].items() if r.get("parameters_per_task")}
        if not rows:
            continue
        size = len(result["benchmark"]["tasks"])
        header = ["method"] + [f"after task {k}" for k in range(size)]
        lines += [f"{result['title']}: accuracy of the task just learnt / parameters after each task", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method, r in rows.items():
            cells = [f"{r['matrix'][k][k]:.4f} / {r['parameters_per_task'][k]:,}" for k in range(size)]
            lines.append("| " + " | ".join([LABELS[method], *cells]) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    """Parameters after each task, one panel per benchmark (matplotlib)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.5), squeeze=False)
    for ax, result in zip(axes[0], results.values()):
        for method, r in result["methods"].items():
            if r.get("parameters_per_task"):
                ax.plot(range(1, len(r["parameters_per_task"]) + 1), r["parameters_per_task"], marker="o",
                        label=LABELS[method])
        ax.set(title=result["title"], xlabel="tasks learnt", ylabel="parameters",
               xticks=range(1, len(result["benchmark"]["tasks"]) + 1))
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(DATA_DIR),
                        help="MNIST IDX folder or torchvision root (default: ../shared/data/mnist from the repository)")
    parser.add_argument("--benchmarks", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1,000 training and 500 test images per task, 1 epoch")
    parser.add_argument("--goal", type=float, help="CPG's accuracy goal on the validation data, every benchmark "
                        "(default: per benchmark, " + ", ".join(f"{k} {s.goal}" for k, s in BENCHMARKS.items()) + ")")
    parser.add_argument("--val", type=float, default=0.1,
                        help="fraction of each task's training split held out for CPG's goal (default: 0.1)")
    parser.add_argument("--grow-step", type=float, default=0.25, help="CPG's Growing.step (default: 0.25)")
    parser.add_argument("--max-ratio", type=float, default=1.5, help="CPG's Growing.max_ratio (default: 1.5)")
    parser.add_argument("--pick-lr", type=float, default=1e-3, help="CPG's Picking.lr (default: 1e-3)")
    parser.add_argument("--seed-fraction", type=float, default=0.125,
                        help="LSG's seed width as a fraction of the MLP's (default: 0.125, the papers' 1/8)")
    parser.add_argument("--candidates", type=float, default=1.0, help="LSG's SparseGrowth.candidates (default: 1.0)")
    parser.add_argument("--max-width", type=float, default=8.0, help="LSG's SparseGrowth.max_width (default: 8.0)")
    parser.add_argument("--mask-lr", type=float, default=5e-4, help="LSG's SparseGrowth.mask_lr (default: 5e-4)")
    parser.add_argument("--lsg-pruning", action="store_true",
                        help="LSG compacts each task with eidetic's pruning after its masks are learnt (default: no "
                             "pruning, as the papers)")
    parser.add_argument("--train", type=int, help="training images per task before the validation hold-out "
                        "(default: all)")
    parser.add_argument("--test", type=int, help="test images per task (default: all)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per task, every method (default: 5)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: 1e-3)")
    parser.add_argument("--pruning", default="l2", help="importance method of the pruning (default: l2)")
    parser.add_argument("--prune-step", type=float, default=0.2, help="pruning step (default: 0.2)")
    parser.add_argument("--tolerance", type=float, default=0.02, help="pruning tolerance (default: 0.02)")
    parser.add_argument("--recovery-epochs", type=int, default=1,
                        help="eidetic's recovery epochs per pruning step (default: 1)")
    parser.add_argument("--patience", type=int, default=0,
                        help="eidetic's failed pruning steps retried at half the step (default: 0)")
    parser.add_argument("--share", action="store_true",
                        help="eidetic prunes each task to its share of the free units (Pruning(tasks=T))")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--plot", metavar="PATH", help="also draw the parameters after each task to this PNG")
    args = parser.parse_args()
    if args.quick:
        args.train = args.train or 1000
        args.test = args.test or 500
        args.epochs = 1
    torch.set_num_threads(args.threads)
    print(f"{args.epochs} epochs, batch {args.batch_size}, AdamW lr {args.lr}, pruning {args.pruning} step "
          f"{args.prune_step} tolerance {args.tolerance}; CPG: {args.val:.0%} of the training split held out for "
          f"the goal, Growing(step={args.grow_step}, max_ratio={args.max_ratio}), Picking(lr={args.pick_lr}); "
          f"LSG: seed {args.seed_fraction:g} of the width, SparseGrowth(candidates={args.candidates:g}, max_width="
          f"{args.max_width:g}, mask_lr={args.mask_lr:g}){' + pruning' if args.lsg_pruning else ''}; "
          f"seed {args.seed}, {args.threads} thread(s), torch {torch.__version__}")
    results = {}
    start = time.perf_counter()
    for name in args.benchmarks:
        print(f"{name}:", flush=True)
        results[name] = measure(name, args)
    print(f"\n{markdown(results)}\ntotal {time.perf_counter() - start:.0f}s")
    if args.json:
        write_json(args.json, args, results)
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
