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
``--method lsg`` with :class:`~eidetic.LSGMixin` (learnable
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
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import EideticError
from .options import FILES, METHOD_OPTIONS, Config, build_parser, defaults, resolve
from .run import Run, make_optimizer, make_scheduler, summary, train, write_outputs

__all__ = ["FILES", "METHOD_OPTIONS", "Config", "Run", "build_parser", "defaults", "main", "make_optimizer",
           "make_scheduler", "resolve", "summary", "train", "write_outputs"]


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

    def execute():
        run = train(config)
        return run, write_outputs(run, argv)

    code, done = _attempt(execute, "the run failed", args.verbose)
    if code:
        return code
    print(summary(*done))
    return 0


def _attempt(action, what: str, verbose: bool) -> tuple[int, object]:
    """``(0, action())``, or the exit code of a failure the CLI reports in one line (130 when
    interrupted, 1 for an error; ``verbose`` logs the traceback as ``what``) and ``None``."""
    try:
        return 0, action()
    except KeyboardInterrupt:
        print("eidetic: interrupted", file=sys.stderr)
        return 130, None
    except (EideticError, FileNotFoundError, ImportError, ValueError, OSError) as exc:
        if verbose:
            logging.getLogger("eidetic").exception(what)
        print(f"eidetic: error: {exc}", file=sys.stderr)
        return 1, None


def _log(args: argparse.Namespace) -> None:
    if args.verbose:
        logging.basicConfig(format="%(name)s %(levelname)s: %(message)s")
        logging.getLogger("eidetic").setLevel(logging.INFO)


def _reproduce(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``eidetic reproduce``: list the experiments, or run one and print its comparison."""
    from .. import reproduce

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
    code, done = _attempt(lambda: reproduce.reproduce(args.name, args.data_dir, out, epochs=args.epochs,
                                                      tasks=args.tasks, width=args.width, run_options=options,
                                                      argv=argv),
                          "the experiment failed", args.verbose)
    if code:
        return code
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
