"""The ``eidetic`` command's options: the benchmarks' defaults, the parser of ``eidetic run`` and
``eidetic reproduce``, and :class:`Config`, what a run is asked to do (:func:`resolve`)."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__, datasets, zoo

PRUNING_METHODS = ("l1", "l2", "taylor", "random", "activation", "none")
METHOD_OPTIONS = {
    "cpg": {"goal": 0.95, "grow_step": 0.25, "max_growth": 1.5, "pick_lr": 1e-4},
    "lsg": {"goal": 0.95, "max_growth": 1.5, "seed_fraction": 1.0, "candidates": 1.0, "max_width": 8.0,
            "mask_lr": 5e-4, "grow_first_task": False},
}
"""The options of each method, with their defaults (``--goal`` and the budget ``--max-growth`` are both
methods')."""
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
    """Shows an option's default unless it has none, is a switch (a ``--no-...`` flag's default True
    would read as the flag being on), or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool) or "(default:" in (action.help or ""):
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
    data.add_argument("--first", type=_int_at_least(1), default=None,
                      help="train only the first N of the benchmark's tasks, split as --tasks says (default: all; "
                           "eidetic reproduce --tasks uses it)")
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
                             "learnable sparse growth (attentive, selective and grown masks, released kernels "
                             "retrained, growth while a task misses --goal, compacting as cpg)")
    method.add_argument("--goal", type=_float_in(0, 1), default=None,
                        help="cpg, lsg: the accuracy goal on the training data; a task grows while it misses it "
                             "(cpg: from the second task on), and cpg's pruning keeps its steps while the goal holds "
                             "(instead of --tolerance) (default: 0.95)")
    method.add_argument("--grow-step", type=_float_in(0, 1, low_open=True), default=None,
                        help="cpg: units added per growth step, as a fraction of each layer's initial width "
                             "(default: 0.25)")
    method.add_argument("--max-growth", type=_float_in(1, 100), default=None,
                        help="cpg, lsg: the body grows to at most this many times its initial parameters, the "
                             "budget of both methods (default: 1.5)")
    method.add_argument("--pick-lr", type=_float_in(0, 10, low_open=True), default=None,
                        help="cpg: Adam learning rate of the picking scores over the old weights (default: 1e-4, "
                             "CPG's; a score needs about 50 steps at 1e-4 to drop its weight, so short runs keep "
                             "every old weight)")
    method.add_argument("--seed-fraction", type=_float_in(0, 1, low_open=True), default=None,
                        help="lsg: the seed network's width as a fraction of --width (or of the model's default "
                             "width); the budget (--max-growth) is relative to it, so a small seed (the papers' 1/8) "
                             "needs a larger budget (default: 1.0, the network cpg starts from)")
    method.add_argument("--candidates", type=_float_in(0, 100, low_open=True), default=None,
                        help="lsg: candidate units per growth step, as a fraction of each layer's seed width "
                             "(default: 1.0)")
    method.add_argument("--max-width", type=_float_in(1, 1000), default=None,
                        help="lsg: a layer grows to at most this many times its seed width (default: 8.0)")
    method.add_argument("--grow-first-task", action="store_const", const=True, default=None,
                        help="lsg: let the first task grow too, as the papers do from their seed of 1/8 (give "
                             "--max-growth room for it) (default: growth starts with the second task, as cpg's)")
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
    first: int | None = None  # train only the first tasks of the benchmark (--first; eidetic reproduce --tasks)
    grow_first_task: bool | None = None  # lsg: the first task grows too (SparseGrowth(first_task=True))

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
    if args.first is not None and args.first > tasks:
        error(f"argument --first: {args.benchmark} is split into {tasks} tasks here, got --first {args.first}")
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
        first=args.first,
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
