"""What ``eidetic run`` does with a :class:`~eidetic.cli.options.Config`: learn the benchmark's tasks
(:func:`train`), write the results folder (:func:`write_outputs`) and summarise it."""

from __future__ import annotations

import csv
import importlib
import importlib.metadata
import json
import os
import platform
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__, datasets, zoo
from ..evaluation.runs import Results, evaluate
from ..mixins.growing import Growing
from ..mixins.picking import Picking
from ..mixins.sparse import SparseGrowth
from ..network import ContinualNetwork
from ..training.pruning import Pruning
from ..training.session import Callback
from .options import Config

# ---------------------------------------------------------------------------------------- run


@dataclass
class Run:
    """What a run produced: the network, the results, and what the summary needs."""

    config: Config
    net: ContinualNetwork
    benchmark: datasets.Benchmark
    results: Results = field(default_factory=Results)
    identical: bool = True
    timings: dict = field(default_factory=dict)


class _Postfix(Callback):
    """Shows the last epoch's loss and accuracy on the tasks progress bar."""

    def __init__(self, bar) -> None:
        self.bar = bar

    def on_epoch_end(self, task: int, stats) -> None:
        self.bar.set_postfix_str(f"epoch {stats.epoch} loss {stats.loss:.3f} acc {stats.metric:.3f}")


def _require(module: str, why: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{why} needs {module.split('.')[0]}: pip install 'eidetic[examples]'") from None


def channels_last(net: ContinualNetwork, device: str) -> ContinualNetwork:
    """``net`` in the channels-last memory format; refused on a CPU whose oneDNN kernels would
    corrupt memory training it.

    On AVX2 CPUs without AVX-512, oneDNN's weight gradient of a 1x1 convolution of stride 2 or
    more in channels-last with fewer than 8 input channels writes past its buffer
    (uxlfoundation/oneDNN#6035): the process aborts, or goes on with a corrupted heap.
    """
    if torch.device(device).type == "cpu" and torch.backends.cpu.get_cpu_capability() == "AVX2":
        for name, module in net.named_modules():
            if (isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1) and module.stride != (1, 1)
                    and module.in_channels < 8):
                raise ValueError(
                    f"--channels-last: on this CPU (AVX2, no AVX-512) PyTorch's oneDNN kernel for the weight "
                    f"gradient of {name} (a 1x1 convolution of stride {module.stride[0]} reading "
                    f"{module.in_channels} channels) writes past its buffer and corrupts memory "
                    "(uxlfoundation/oneDNN#6035); leave --channels-last off on the CPU, or use --width 8 or more")
    return net.to(memory_format=torch.channels_last)


def train(config: Config) -> Run:
    """Load the benchmark, build the model and learn the tasks, evaluating after each one.

    Example::

        args = build_parser().parse_args(["run", "--tasks", "2"])
        run = train(resolve(args, args.error))
        print(run.results)
    """
    from tqdm.auto import tqdm

    if config.plots:
        _require("matplotlib", "drawing the pictures (or pass --no-plots)")
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    bench = datasets.load_benchmark(config.benchmark, tasks=config.tasks, seed=config.seed,
                                    data_dir=config.data_dir, download=config.download, augment=config.augment,
                                    image_size=config.image_size)
    if config.first is not None:
        bench = bench.first(config.first)
    tasks = bench.as_tasks(config.batch_size, seed=config.seed, workers=config.workers, pin_memory=config.pin_memory,
                           channels_last=config.channels_last)
    net = zoo.build_model(config.model, bench.input_shape, config.width, method=config.method).to(config.device)
    if config.channels_last:
        net = channels_last(net, config.device)
    extra = _method_arguments(config)
    optimizer, scheduler = make_optimizer(config), make_scheduler(config)
    run = Run(config, net, bench)
    run.timings = {"load": time.perf_counter() - start, "tasks": []}
    print(f"eidetic {__version__}: {config.benchmark}, {len(bench)} tasks, {config.model} "
          f"({sum(p.numel() for p in net.parameters()):,} parameters), {config.epochs} epoch(s) per task, "
          f"pruning {config.pruning}, method {config.method}"
          f"{'' if config.goal is None else f' (goal {config.goal:g})'}, "
          f"device {config.device}{_precision_note(config)}\ndata: {bench.source}"
          + "".join(f"\n{split}: {text}" for split, text in bench.preprocessing.items()))
    pruning = None if config.pruning == "none" else Pruning(
        method=config.pruning, step=config.prune_step, threshold=config.threshold, tolerance=config.tolerance,
        recovery_epochs=config.recovery_epochs, patience=config.patience,
        tasks=len(tasks) if config.share and config.method == "eidetic" else None)
    router = None if config.router == "none" else config.router
    first_logits = []
    bar = tqdm(total=len(tasks), desc="tasks", unit="task", disable=None if config.progress else True)
    with bar:
        for k, task in enumerate(tasks):
            report = net.train_task(
                k, task.train, num_classes=task.num_classes, epochs=config.epochs, pruning=pruning,
                optimizer=optimizer, scheduler=scheduler, early_stopping=config.early_stopping,
                precision=config.precision, memory=config.memory, callbacks=[_Postfix(bar)],
                progress=config.progress, **extra)
            mark = time.perf_counter()
            evaluation = evaluate(net, [t.test for t in tasks], router=router)
            first_logits.append(_test_logits(net, task.test, k))
            run.results.add(evaluation, report, net)
            run.timings["tasks"].append({**report.seconds, "evaluate": time.perf_counter() - mark})
            bar.update(1)
            tqdm.write(_task_line(k, len(tasks), bench.classes[k], report, evaluation, config.method != "eidetic"))
    run.identical = all(torch.equal(_test_logits(net, t.test, k), first_logits[k]) for k, t in enumerate(tasks))
    run.timings["total"] = time.perf_counter() - start
    return run


@torch.no_grad()
def _test_logits(net: ContinualNetwork, loader, task: int) -> torch.Tensor:
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    out = torch.cat([net.logits(x.to(device), task).cpu() for x, _ in loader])
    net.train(was_training)
    return out


def make_optimizer(config: Config):
    """The ``params -> Optimizer`` factory of ``config`` (a new optimizer per task).

    Example::

        make = make_optimizer(config)
        net.train_task(0, loader, num_classes=2, optimizer=make, epochs=1)
    """
    if config.optimizer == "sgd":
        return lambda params: torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                                              weight_decay=config.weight_decay)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return lambda params: cls(params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(config: Config):
    """The ``optimizer -> scheduler`` factory of ``config`` (``MultiStepLR`` at ``lr_milestones``,
    stepped per epoch), or ``None``.

    Example::

        make_scheduler(config)    # None unless --lr-milestones
    """
    if not config.lr_milestones:
        return None
    return lambda optimizer: torch.optim.lr_scheduler.MultiStepLR(optimizer, config.lr_milestones, gamma=0.1)


def _precision_note(config: Config) -> str:
    notes = [f"{config.precision} autocast"] if config.precision else []
    notes += ["channels-last"] if config.channels_last else []
    notes += [f"{config.workers} worker(s)"] if config.workers else []
    notes += ["pinned memory"] if config.pin_memory else []
    return f" ({', '.join(notes)})" if notes else ""


def _method_arguments(config: Config) -> dict:
    """The mixin's ``train_task`` arguments of ``config.method``."""
    if config.method == "cpg":
        return {"goal": config.goal, "growing": Growing(step=config.grow_step, max_ratio=config.max_growth),
                "picking": Picking(lr=config.pick_lr)}
    if config.method == "lsg":
        return {"goal": config.goal, "growth": SparseGrowth(candidates=config.candidates, max_width=config.max_width,
                                                            mask_lr=config.mask_lr, max_ratio=config.max_growth,
                                                            first_task=config.grow_first_task)}
    return {}


def _task_line(k: int, total: int, classes: list[int], report, evaluation, parameters: bool = False) -> str:
    names = ",".join(str(c) for c in classes) if len(classes) <= 4 else f"{len(classes)} classes"
    kept = sum(s.accepted for s in report.prune_steps)
    units = sum(report.units.values())
    free = sum(report.free_units.values())
    accuracies = " ".join(f"{t.oracle:.3f}" for t in evaluation.tasks)
    grown = "" if report.goal is None else (  # cpg: the goal, the attempts (one per growth step), the growth kept
        f"goal {'met' if report.goal_met else 'missed'}, {len(report.attempts)} attempt(s), kept "
        f"{report.kept_attempt + 1}, grew {sum(report.grown.values())} units, ")
    size = f"{report.parameters:,} parameters, " if parameters else ""
    return (f"task {k} ({k + 1} of {total}) [{names}]: train acc {report.final_metric:.3f}, "
            f"{kept}/{len(report.prune_steps)} pruning steps kept, {grown}{units} units frozen, {free} free, {size}"
            f"{report.seconds['total']:.1f}s | test acc of tasks so far: {accuracies}")


# ------------------------------------------------------------------------------------ outputs


def write_outputs(run: Run, argv: Sequence[str]) -> list[Path]:
    """Write results.json, accuracy_matrix.csv, the pictures and model.pt; return their paths.

    Example::

        paths = write_outputs(run, sys.argv[1:])
    """
    out = Path(run.config.out)
    out.mkdir(parents=True, exist_ok=True)
    capacity = run.net.capacity()
    paths = [out / "accuracy_matrix.csv"]
    _write_csv(run.results.matrix, paths[0])
    if run.config.plots:
        from ..evaluation.plots import plot_accuracy_matrix, plot_capacity

        paths.append(plot_accuracy_matrix(run.results, out / "accuracy_matrix.png",
                                          title=f"{run.config.benchmark}, {run.config.model}: "
                                                f"average {run.results.average_accuracy:.3f}, "
                                                f"BWT {run.results.bwt:+.3f}"))
        paths.append(plot_capacity(capacity, out / "capacity.png",
                                   title=f"units per layer ({run.config.model}, {run.config.benchmark})"))
    paths.append(zoo.save_checkpoint(run.net, out / "model.pt"))
    paths.insert(0, out / "results.json")
    document = {
        "eidetic_version": __version__,
        "command": "eidetic " + " ".join(shlex.quote(a) for a in argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": run.config.to_dict(),
        "benchmark": run.benchmark.describe(),
        "model": {**run.net.config, "parameters": sum(p.numel() for p in run.net.parameters())},
        "results": run.results.to_dict(),
        "logits_identical": run.identical,
        "capacity": capacity.to_dict(),
        "timings": run.timings,
        "versions": versions(),
        "machine": machine(run.config),
        "files": [p.name for p in paths],
    }
    paths[0].write_text(json.dumps(document, indent=2) + "\n")
    return paths


def _write_csv(matrix: list[list[float | None]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["after_task", *(f"task_{j}" for j in range(len(matrix)))])
        for i, row in enumerate(matrix):
            writer.writerow([i, *("" if v is None else repr(v) for v in row)])


def versions() -> dict[str, str | None]:
    """Versions of Python and of the packages a run depends on (``None``: not installed).

    Example::

        versions()["torch"]    # '2.14.1'
    """
    found: dict[str, str | None] = {"python": platform.python_version(), "eidetic": __version__,
                                    "torch": torch.__version__}
    for package in ("torch-pruning", "numpy", "tqdm", "scikit-learn", "torchvision", "matplotlib"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def machine(config: Config) -> dict:
    """The machine a run ran on: platform, processor, CPU count, torch threads, device.

    Example::

        machine(config)["cpus"]
    """
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "threads": config.threads, "device": config.device}
    if config.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(config.device))
    return info


def summary(run: Run, paths: Sequence[Path]) -> str:
    """The text printed at the end of a run: accuracy matrix, averages, units per task, files.

    Example::

        print(summary(run, paths))
    """
    results = run.results
    matrix = results.matrix
    unchanged = all(matrix[i][j] == matrix[j][j] for i in range(len(matrix)) for j in range(i + 1))
    lines = [
        "",
        "accuracy matrix: row i = after training task i, column j = test accuracy on task j",
        str(results),
        f"earlier tasks' accuracy unchanged by later tasks: {'yes' if unchanged else 'NO'}; "
        f"test logits of every task bitwise identical to when it was learnt: {'yes' if run.identical else 'NO'}",
        "",
        "units per layer (owned by each task; '+n reused': earlier tasks' units it reads)",
        str(run.net.capacity()),
        "",
        f"time {run.timings['total']:.1f}s; results in {Path(run.config.out)}/: " + ", ".join(p.name for p in paths),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- main
