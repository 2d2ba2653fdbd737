"""The ``eidetic`` command line: ``eidetic run`` trains a benchmark and writes a results folder;
``eidetic reproduce`` runs a seed paper's experiment with its settings (:mod:`eidetic.reproduce`).

``eidetic run`` (also ``python -m eidetic run``) learns the tasks of a benchmark one after
another with :meth:`~eidetic.ContinualNetwork.train_task`, evaluates every task learnt so far
after each one, and writes to the results folder:

* ``results.json``: configuration, benchmark, accuracy matrix, average accuracy, BWT, routing
  accuracy, units kept per task and per layer, timings, versions and machine;
* ``accuracy_matrix.csv``: the accuracy matrix (row ``i``: after training task ``i``);
* ``accuracy_matrix.png`` and ``capacity.png``: the matrix and the units per layer per task;
* ``model.pt``: the final network (:func:`eidetic.zoo.load_checkpoint` rebuilds it).

With no option it learns Split digits (scikit-learn's bundled digits, five tasks of two
classes, no download) with an MLP, in seconds. ``--method cpg`` learns with
:class:`~eidetic.CPGMixin` (picking, growth to ``--goal``, compacting; see docs/cpg.md), and
``--method lsg`` with :class:`~eidetic.LSGMixin` from a seed of 1/8 of the width (learnable
sparse growth to ``--goal``; see docs/lsg.md).

The benchmarks (:mod:`eidetic.datasets`) include Fashion-MNIST, CIFAR-10/100 (the superclasses
too) and Imagenette, the models (:mod:`eidetic.zoo`) the seed papers' VGG16-BN, ResNets and
LeNet-5; ``--device cuda`` with ``--workers``, ``--precision`` and ``--channels-last`` is the GPU
data path.

Example::

    eidetic run
    eidetic run --benchmark split-cifar10 --data-dir data --model resnet18-cifar --device cuda --precision bf16
    eidetic reproduce --list
    eidetic run --benchmark permuted-mnist --data-dir data/mnist --model mlp --tasks 10 --epochs 3
    python -m eidetic run --model resnet --epochs 2 --out runs/resnet
    eidetic run --method cpg --goal 0.98 --max-growth 2
    eidetic run --method lsg --goal 0.98
"""

from __future__ import annotations

import argparse
import csv
import importlib
import importlib.metadata
import json
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__, datasets, zoo
from .errors import EideticError
from .evaluation.runs import Results, evaluate
from .mixins.growing import Growing
from .mixins.picking import Picking
from .mixins.sparse import SparseGrowth
from .network import ContinualNetwork
from .training.pruning import Pruning
from .training.session import Callback

PRUNING_METHODS = ("l1", "l2", "taylor", "random", "activation", "none")
METHOD_OPTIONS = {
    "cpg": {"goal": 0.95, "grow_step": 0.25, "max_growth": 1.5, "pick_lr": 1e-4},
    "lsg": {"goal": 0.95, "seed_fraction": 0.125, "candidates": 1.0, "max_width": 8.0, "mask_lr": 5e-4},
}
"""The options of each method, with their defaults (``--goal`` is both methods')."""
OPTIMIZERS = ("adamw", "adam", "sgd")
"""The optimizers ``--optimizer`` takes."""
ROUTERS = ("auto", "gaussian", "learned", "discriminant", "statistics", "confidence", "entropy", "energy", "none")
FILES = ("results.json", "accuracy_matrix.csv", "accuracy_matrix.png", "capacity.png", "model.pt")
"""The files ``eidetic run`` writes into its results folder (the pictures unless ``--no-plots``)."""


@dataclass(frozen=True)
class Defaults:
    """Per-benchmark defaults of the options left out."""

    model: str
    epochs: int
    batch_size: int
    lr: float
    tolerance: float
    mlp_width: int
    threads: int | None  # None: torch's default (all cores)


_DEFAULTS = {
    "digits": Defaults("mlp", epochs=3, batch_size=32, lr=1e-2, tolerance=0.005, mlp_width=128, threads=1),
    "mnist": Defaults("mlp", epochs=3, batch_size=128, lr=1e-3, tolerance=0.005, mlp_width=256, threads=None),
    "fashion-mnist": Defaults("mlp", epochs=3, batch_size=128, lr=1e-3, tolerance=0.005, mlp_width=256,
                              threads=None),
    "cifar10": Defaults("resnet18-cifar", epochs=3, batch_size=128, lr=1e-3, tolerance=0.02, mlp_width=256,
                        threads=None),
    "cifar100": Defaults("resnet18-cifar", epochs=3, batch_size=128, lr=1e-3, tolerance=0.02, mlp_width=256,
                         threads=None),
    "imagenette": Defaults("resnet18", epochs=3, batch_size=32, lr=1e-3, tolerance=0.02, mlp_width=256,
                           threads=None),
    "sequential-digits": Defaults("lstm", epochs=10, batch_size=32, lr=1e-2, tolerance=0.02, mlp_width=128,
                                  threads=1),
    "sequential-mnist": Defaults("lstm", epochs=3, batch_size=128, lr=3e-3, tolerance=0.02, mlp_width=256,
                                 threads=None),
}


def defaults(benchmark: str) -> Defaults:
    """The defaults of ``benchmark``: tiny digits tensors run fastest on one thread; the
    sequential (row-by-row) benchmarks default to the LSTM model, CIFAR to ResNet-18 with the
    low-resolution stem, Imagenette to ResNet-18.

    Example::

        defaults("split-mnist").batch_size    # 128
        defaults("split-cifar10").model       # 'resnet18-cifar'
    """
    if benchmark.startswith("sequential"):
        return _DEFAULTS[benchmark]
    return _DEFAULTS[datasets.spec(benchmark).data]


# ------------------------------------------------------------------------------------- parser


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"int>={minimum}"
    return parse


def _float_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if too_low or too_high or value != value:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it has none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_device_options(group) -> None:
    """The options of where and how a run computes: device, threads, workers, precision, memory format.

    Example::

        add_device_options(parser.add_argument_group("device"))
    """
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1, mps")
    group.add_argument("--threads", type=_int_at_least(1), default=None,
                       help="CPU threads for torch (default: 1 on digits, else all cores)")
    group.add_argument("--workers", type=_int_at_least(0), default=None,
                       help="DataLoader worker processes that read, decode and augment the data (default: 4 on "
                            "cuda, at most the CPUs; 0 otherwise: in the main process)")
    group.add_argument("--no-pin-memory", dest="pin_memory", action="store_false",
                       help="on cuda, do not put batches in page-locked memory (pinned by default, copied "
                            "without blocking)")
    group.add_argument("--precision", choices=("bf16", "fp16"), default=None,
                       help="train under torch.autocast in bfloat16, or float16 with a gradient scaler (default: the "
                            "network's float32); evaluation stays in float32")
    group.add_argument("--channels-last", action="store_true",
                       help="image models and batches in the channels-last memory format (faster convolutions on "
                            "recent GPUs)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``eidetic`` command.

    Example::

        args = build_parser().parse_args(["run", "--tasks", "2"])
    """
    parser = argparse.ArgumentParser(prog="eidetic", description="Continual learning without forgetting.")
    parser.add_argument("--version", action="version", version=f"eidetic {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    run = commands.add_parser(
        "run", help="train a benchmark task after task and write a results folder",
        description="Train a benchmark's tasks one after another (train, prune, freeze, recycle), evaluate "
                    "every task after each one, print the accuracy matrix and write results.json, "
                    "accuracy_matrix.csv, accuracy_matrix.png, capacity.png and model.pt to --out.",
        formatter_class=_HelpFormatter)
    data = run.add_argument_group("benchmark")
    data.add_argument("--benchmark", choices=datasets.BENCHMARKS, default="split-digits",
                      help="task sequence: digits are bundled with scikit-learn; the others need --data-dir or "
                           "--download (see docs/cli.md)")
    data.add_argument("--tasks", type=_int_at_least(1), default=None,
                      help="number of tasks (default: 10 for permuted and split-cifar100 (5, 10 or 20), 20 for "
                           "cifar100-superclasses, else 5; fewer keep the first tasks)")
    data.add_argument("--data-dir", type=Path, default=Path("data"),
                      help="the data's folder: MNIST or Fashion-MNIST IDX files (or a torchvision root holding "
                           "MNIST/raw, FashionMNIST/raw); the folder holding cifar-10-batches-py/ or "
                           "cifar-100-python/ (or that folder); Imagenette's folder holding train/ and val/")
    data.add_argument("--download", action="store_true",
                      help="download the data into --data-dir with torchvision first (needs a network)")
    data.add_argument("--no-augment", dest="augment", action="store_false",
                      help="CIFAR, Imagenette: no augmentation of the training split (random crops and flips "
                           "by default; every split is normalised)")
    data.add_argument("--image-size", type=_int_at_least(8), default=None,
                      help="split-imagenette: the input size (default: 224)")
    model = run.add_argument_group("model and training")
    model.add_argument("--model", choices=tuple(zoo.MODELS), default=None,
                       help="mlp: Linear+BatchNorm; convnet: 2 conv+BatchNorm stages; resnet: small ResNet; "
                            "lstm: 2-layer LSTM reading rows; vgg16-bn: VGG16 with BatchNorm for 32x32 (CPG, "
                            "CL-LSG); resnet18-cifar, resnet50-cifar: low-resolution stems; resnet18, resnet50: "
                            "ImageNet stems; lenet5: 20-50-800-500 (default: lstm for sequential benchmarks, "
                            "resnet18-cifar on CIFAR, resnet18 on Imagenette, else mlp)")
    model.add_argument("--width", type=_int_at_least(1), default=None,
                       help="hidden units (mlp, lstm) or first-layer channels (the others) (default: mlp "
                            "128 on digits and 256 otherwise; lstm 64; convnet and resnet 16; vgg16-bn and the "
                            "resnets 64; lenet5 20)")
    model.add_argument("--epochs", type=_int_at_least(0), default=None,
                       help="training epochs per task, before pruning (default: 3; 10 on sequential-digits)")
    model.add_argument("--batch-size", type=_int_at_least(2), default=None,
                       help="training batch size (default: 32 on digits and Imagenette, else 128)")
    model.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw",
                       help="the optimizer of the weights")
    model.add_argument("--lr", type=_float_in(0, 10, low_open=True), default=None,
                       help="learning rate (default: 1e-2 on digits, 3e-3 on sequential-mnist, else 1e-3)")
    model.add_argument("--momentum", type=_float_in(0, 1, high_open=True), default=None,
                       help="sgd: momentum (default: 0.9)")
    model.add_argument("--nesterov", action="store_true", help="sgd: Nesterov momentum")
    model.add_argument("--weight-decay", type=_float_in(0, 1), default=None,
                       help="weight decay (default: torch's, 0.01 for adamw, 0 for adam and sgd)")
    model.add_argument("--lr-milestones", type=_int_at_least(1), nargs="+", default=None, metavar="EPOCH",
                       help="divide the learning rate by 10 at these epochs of each task (MultiStepLR)")
    model.add_argument("--early-stopping", type=_int_at_least(1), default=None, metavar="EPOCHS",
                       help="stop a task's training after this many epochs without progress (default: never)")
    prune = run.add_argument_group("pruning")
    prune.add_argument("--pruning", choices=PRUNING_METHODS, default="l2",
                       help="importance method of structured pruning ('none': keep every free unit)")
    prune.add_argument("--prune-step", type=_float_in(0, 1, low_open=True), default=0.2,
                       help="fraction of the task's units removed per pruning step")
    prune.add_argument("--threshold", type=_float_in(0, float("inf")), default=None,
                       help="prune every unit scoring at most this, per step, instead of a fraction (CLNP's "
                            "threshold; with --pruning activation: mean absolute activity)")
    prune.add_argument("--tolerance", type=_float_in(0, 1, high_open=True), default=None,
                       help="allowed relative drop of the training accuracy while pruning (default: 0.005 on "
                            "digits and mnist, 0.02 otherwise; higher prunes more, which leaves the "
                            "router fewer features)")
    prune.add_argument("--recovery-epochs", type=_int_at_least(0), default=2,
                       help="retraining epochs after each pruning step (default: 2)")
    prune.add_argument("--patience", type=_int_at_least(0), default=0,
                       help="failed pruning steps retried at half the step before pruning stops")
    prune.add_argument("--no-share", dest="share", action="store_false",
                       help="eidetic: do not prune each task to its share of the free units (1 / tasks left), "
                            "let the tolerance alone decide (Pruning(tasks=None))")
    method = run.add_argument_group("method")
    method.add_argument("--method", choices=zoo.METHODS, default="eidetic",
                        help="eidetic: train, prune, freeze, recycle; cpg: the CPG mixin on top (picking masks over "
                             "old weights, growth while a task misses --goal, compacting while the goal holds); lsg: "
                             "learnable sparse growth from a seed network (masks instead of pruning; --pruning is "
                             "not used)")
    method.add_argument("--goal", type=_float_in(0, 1), default=None,
                        help="cpg, lsg: the accuracy goal on the training data; a task grows while it misses it "
                             "(cpg: from the second task on), and cpg's pruning keeps its steps while the goal holds "
                             "(instead of --tolerance) (default: 0.95)")
    method.add_argument("--grow-step", type=_float_in(0, 1, low_open=True), default=None,
                        help="cpg: units added per growth step, as a fraction of each layer's initial width "
                             "(default: 0.25)")
    method.add_argument("--max-growth", type=_float_in(1, 100), default=None,
                        help="cpg: the body grows to at most this many times its initial parameters (default: 1.5)")
    method.add_argument("--pick-lr", type=_float_in(0, 10, low_open=True), default=None,
                        help="cpg: Adam learning rate of the picking scores over the old weights (default: 1e-4, "
                             "CPG's; a score needs about 50 steps at 1e-4 to drop its weight, so short runs keep "
                             "every old weight)")
    method.add_argument("--seed-fraction", type=_float_in(0, 1, low_open=True), default=None,
                        help="lsg: the seed network's width as a fraction of --width (or of the model's default "
                             "width) (default: 0.125, the papers' 1/8)")
    method.add_argument("--candidates", type=_float_in(0, 100, low_open=True), default=None,
                        help="lsg: candidate units per growth step, as a fraction of each layer's seed width "
                             "(default: 1.0)")
    method.add_argument("--max-width", type=_float_in(1, 1000), default=None,
                        help="lsg: a layer grows to at most this many times its seed width (default: 8.0)")
    method.add_argument("--mask-lr", type=_float_in(0, 10, low_open=True), default=None,
                        help="lsg: Adam learning rate of the masks (default: 5e-4, the papers'; short runs then "
                             "keep nearly every kernel and candidate)")
    other = run.add_argument_group("run")
    other.add_argument("--router", choices=ROUTERS, default="auto",
                       help="router for task-ID-free (routed) accuracy ('auto': the first of gaussian, learned and "
                            "discriminant that covers every task; 'none': skip it)")
    other.add_argument("--memory", type=_int_at_least(0), default=200,
                       help="exemplars kept per task to fit the learned router (more: better routing)")
    other.add_argument("--seed", type=int, default=0, help="random seed (initialisation, shuffling, permutations)")
    add_device_options(other)
    other.add_argument("--out", type=Path, default=None,
                       help="results folder (default: runs/<benchmark>-<model>[-cpg|-lsg]-<date>-<time>)")
    other.add_argument("--no-plots", action="store_true", help="skip the PNG pictures (no matplotlib needed)")
    other.add_argument("--no-progress", action="store_true", help="no progress bars")
    other.add_argument("-v", "--verbose", action="store_true",
                       help="log eidetic's pruning steps (INFO), and the traceback of an error")
    run.set_defaults(error=run.error)
    _add_reproduce(commands)
    return parser


def _add_reproduce(commands) -> None:
    parser = commands.add_parser(
        "reproduce", help="run one of the seed papers' experiments with the paper's settings",
        description="Run a seed experiment (eidetic reproduce --list) with its paper's settings and write the "
                    "run's results folder plus comparison.md: the paper's figures next to ours, task by task. "
                    "--epochs, --tasks and --width override for a quick look; the results record it.",
        formatter_class=_HelpFormatter)
    parser.add_argument("name", nargs="?", default=None, help="the experiment (see --list)")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="the folder the experiment's data is in")
    parser.add_argument("--download", action="store_true", help="download the data with torchvision first")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: runs/<name>-<date>-<time>)")
    quick = parser.add_argument_group("overrides for a quick look (recorded in the results)")
    quick.add_argument("--epochs", type=_int_at_least(0), default=None, help="training epochs per task")
    quick.add_argument("--tasks", type=_int_at_least(1), default=None, help="train only the first tasks")
    quick.add_argument("--width", type=_int_at_least(1), default=None, help="the network's width")
    other = parser.add_argument_group("run")
    other.add_argument("--seed", type=int, default=0, help="random seed")
    add_device_options(other)
    other.add_argument("--no-plots", action="store_true", help="skip the PNG pictures")
    other.add_argument("--no-progress", action="store_true", help="no progress bars")
    other.add_argument("-v", "--verbose", action="store_true", help="log eidetic's steps, show tracebacks")
    parser.set_defaults(error=parser.error)


@dataclass
class Config:
    """The resolved settings of one run (every default filled in)."""

    benchmark: str
    tasks: int
    model: str
    width: int | None
    epochs: int
    batch_size: int
    lr: float
    pruning: str
    prune_step: float
    threshold: float | None
    tolerance: float
    recovery_epochs: int
    share: bool
    method: str
    goal: float | None
    grow_step: float | None
    max_growth: float | None
    pick_lr: float | None
    seed_fraction: float | None
    candidates: float | None
    max_width: float | None
    mask_lr: float | None
    router: str
    memory: int
    seed: int
    device: str
    threads: int
    data_dir: str | None
    download: bool
    out: str
    plots: bool
    progress: bool
    optimizer: str = "adamw"
    momentum: float | None = None
    nesterov: bool = False
    weight_decay: float = 0.01
    lr_milestones: list[int] | None = None
    early_stopping: int | None = None
    patience: int = 0
    augment: bool = True
    image_size: int | None = None
    workers: int = 0
    pin_memory: bool = False
    precision: str | None = None
    channels_last: bool = False
    first: int | None = None  # train only the first tasks of the benchmark (eidetic reproduce --tasks)

    def to_dict(self) -> dict:
        """A JSON-serialisable dictionary."""
        return dict(vars(self))


def resolve(args: argparse.Namespace, error) -> Config:
    """Fill in the per-benchmark defaults and check what argparse cannot; ``error(message)``
    reports a bad option (the ``run`` parser's ``error``, in ``args.error``).

    Example::

        args = build_parser().parse_args(["run", "--tasks", "2"])
        config = resolve(args, args.error)
    """
    base = defaults(args.benchmark)
    tasks = datasets.default_tasks(args.benchmark) if args.tasks is None else args.tasks
    try:
        datasets.spec(args.benchmark).check_tasks(tasks)
    except ValueError as exc:
        error(f"argument --tasks: {exc}")
    model = args.model or base.model
    if model in zoo.IMAGE_MODELS and args.benchmark.startswith("sequential"):
        error(f"argument --model: {args.benchmark} gives sequences of rows, not images; use lstm or mlp")
    if args.image_size is not None and args.benchmark != "split-imagenette":
        error(f"argument --image-size: only with --benchmark split-imagenette ({args.benchmark}'s images have a "
              "fixed size)")
    width = args.width if args.width is not None else (base.mlp_width if model == "mlp" else None)
    options = {}
    for name, default in {**METHOD_OPTIONS["cpg"], **METHOD_OPTIONS["lsg"]}.items():
        methods = [m for m, names in METHOD_OPTIONS.items() if name in names]
        value = getattr(args, name)
        if args.method not in methods:
            if value is not None:
                error(f"argument --{name.replace('_', '-')}: only with --method {' or '.join(methods)}")
            options[name] = None
        else:
            options[name] = default if value is None else value
    if args.method == "lsg":  # the seed: a fraction of the full width
        full = width if width is not None else zoo.MODELS[model].default_width
        width = max(1, round(full * options["seed_fraction"]))
    tag = "" if args.method == "eidetic" else f"-{args.method}"
    out = args.out or Path("runs") / f"{args.benchmark}-{model}{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        error(f"argument --out: {out} exists and is not a folder")
    device = _check_device(args.device, error)
    return Config(
        benchmark=args.benchmark, tasks=tasks, model=model, width=width,
        epochs=base.epochs if args.epochs is None else args.epochs,
        batch_size=base.batch_size if args.batch_size is None else args.batch_size,
        lr=base.lr if args.lr is None else args.lr,
        pruning=args.pruning, prune_step=args.prune_step, threshold=args.threshold,
        tolerance=base.tolerance if args.tolerance is None else args.tolerance,
        recovery_epochs=args.recovery_epochs, share=args.share, method=args.method, **options, router=args.router,
        memory=args.memory,
        seed=args.seed,
        device=device,
        threads=args.threads or base.threads or torch.get_num_threads(),
        data_dir=None if args.benchmark.endswith("digits") else str(args.data_dir),
        download=args.download, out=str(out), plots=not args.no_plots, progress=not args.no_progress,
        **_optimizer_options(args, error), early_stopping=args.early_stopping, patience=args.patience,
        augment=args.augment, image_size=args.image_size, **_device_options(args, device, model, error),
    )


def _optimizer_options(args: argparse.Namespace, error) -> dict:
    """The optimizer's settings, defaults filled in; SGD's options refused for the others."""
    if args.optimizer != "sgd":
        for name in ("momentum", "nesterov"):
            if getattr(args, name) not in (None, False):
                error(f"argument --{name}: only with --optimizer sgd")
    momentum = (0.9 if args.momentum is None else args.momentum) if args.optimizer == "sgd" else None
    if args.nesterov and not momentum:
        error("argument --nesterov: Nesterov momentum needs --momentum above 0")
    decay = args.weight_decay if args.weight_decay is not None else 0.01 if args.optimizer == "adamw" else 0.0
    return {"optimizer": args.optimizer, "momentum": momentum, "nesterov": args.nesterov, "weight_decay": decay,
            "lr_milestones": sorted(args.lr_milestones) if args.lr_milestones else None}


def _device_options(args: argparse.Namespace, device: str, model: str, error) -> dict:
    """Workers, pinned memory, precision and memory format, checked against the device, the model
    and the method."""
    cuda = device.startswith("cuda")
    if args.precision == "fp16" and args.method != "eidetic":
        error(f"argument --precision: fp16 trains {args.method}'s learnable masks badly (their gradient "
              "scaler would skip steps); use bf16")
    if args.channels_last and model not in zoo.IMAGE_MODELS:
        error(f"argument --channels-last: {model} reads no images; it is for "
              f"{', '.join(zoo.IMAGE_MODELS)}")
    workers = args.workers if args.workers is not None else min(4, os.cpu_count() or 1) if cuda else 0
    return {"workers": workers, "pin_memory": cuda and args.pin_memory, "precision": args.precision,
            "channels_last": args.channels_last}


def _check_device(name: str, error) -> str:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        error(f"argument --device: not a torch device: {name!r} (try cpu or cuda)")
    if device.type == "cuda" and not torch.cuda.is_available():
        error(f"argument --device: {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        error(f"argument --device: {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        error(f"argument --device: {name}: MPS is not available on this machine")
    return str(device)


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
        net = net.to(memory_format=torch.channels_last)
    extra = _method_arguments(config)
    optimizer, scheduler = make_optimizer(config), make_scheduler(config)
    run = Run(config, net, bench)
    run.timings = {"load": time.perf_counter() - start, "tasks": []}
    print(f"eidetic {__version__}: {config.benchmark}, {len(bench)} tasks, {config.model} "
          f"({sum(p.numel() for p in net.parameters()):,} parameters), {config.epochs} epoch(s) per task, "
          f"pruning {config.pruning if config.method != 'lsg' else 'none (learned masks)'}, method {config.method}"
          f"{'' if config.goal is None else f' (goal {config.goal:g})'}, "
          f"device {config.device}{_precision_note(config)}\ndata: {bench.source}"
          + "".join(f"\n{split}: {text}" for split, text in bench.preprocessing.items()))
    pruning = None if config.pruning == "none" or config.method == "lsg" else Pruning(
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
                                                            mask_lr=config.mask_lr)}
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
    return (f"task {k + 1}/{total} [{names}]: train acc {report.final_metric:.3f}, "
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
        from .evaluation.plots import plot_accuracy_matrix, plot_capacity

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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``eidetic`` command and return its exit status (0 success, 1 runtime error such
    as a missing dataset, 2 bad options, 130 interrupted).

    Example::

        main(["run", "--tasks", "2", "--epochs", "1", "--out", "runs/quick"])
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "reproduce":
            return _reproduce(args, argv)
        config = resolve(args, args.error)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    _log(args)
    try:
        run = train(config)
        paths = write_outputs(run, argv)
    except KeyboardInterrupt:
        print("eidetic: interrupted", file=sys.stderr)
        return 130
    except (EideticError, FileNotFoundError, ImportError, ValueError, OSError) as exc:
        if args.verbose:
            logging.getLogger("eidetic").exception("the run failed")
        print(f"eidetic: error: {exc}", file=sys.stderr)
        return 1
    print(summary(run, paths))
    return 0


def _log(args: argparse.Namespace) -> None:
    if args.verbose:
        logging.basicConfig(format="%(name)s %(levelname)s: %(message)s")
        logging.getLogger("eidetic").setLevel(logging.INFO)


def _reproduce(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``eidetic reproduce``: list the experiments, or run one and print its comparison."""
    from . import reproduce

    if args.list:
        if args.name is not None:
            args.error("give an experiment name or --list, not both")
        print(reproduce.listing(reproduce.EXPERIMENTS.values()))
        return 0
    if args.name is None:
        args.error("give an experiment name (eidetic reproduce --list shows them)")
    if args.name not in reproduce.EXPERIMENTS:
        args.error(f"argument name: unknown experiment {args.name!r}; choose one of "
                   f"{', '.join(reproduce.EXPERIMENTS)}")
    chosen = reproduce.EXPERIMENTS[args.name]
    if args.tasks is not None and args.tasks > chosen.tasks:
        args.error(f"argument --tasks: {args.name} has {chosen.tasks} tasks, got {args.tasks}")
    out = args.out or Path("runs") / f"{args.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    options = _passed_on(args)
    _log(args)
    try:
        done = reproduce.reproduce(args.name, args.data_dir, out, epochs=args.epochs, tasks=args.tasks,
                                   width=args.width, run_options=options, argv=argv)
    except KeyboardInterrupt:
        print("eidetic: interrupted", file=sys.stderr)
        return 130
    except (EideticError, FileNotFoundError, ImportError, ValueError, OSError) as exc:
        if args.verbose:
            logging.getLogger("eidetic").exception("the experiment failed")
        print(f"eidetic: error: {exc}", file=sys.stderr)
        return 1
    print(f"\n{(Path(out) / reproduce.COMPARISON).read_text()}\nresults in {out}/: "
          + ", ".join(p.name for p in done.paths))
    return 0


def _passed_on(args: argparse.Namespace) -> list[str]:
    """The ``eidetic run`` options of a ``reproduce`` command line."""
    words = ["--device", args.device, "--seed", str(args.seed)]
    for name in ("threads", "workers", "precision"):
        if getattr(args, name) is not None:
            words += [f"--{name}", str(getattr(args, name))]
    flags = {"--channels-last": args.channels_last, "--no-pin-memory": not args.pin_memory,
             "--download": args.download, "--no-plots": args.no_plots, "--no-progress": args.no_progress,
             "--verbose": args.verbose}
    return words + [flag for flag, on in flags.items() if on]


if __name__ == "__main__":
    sys.exit(main())
