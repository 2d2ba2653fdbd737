"""Running one seed experiment: its ``eidetic run`` with the paper's settings (and the overrides
of a quick look), then the comparison with the paper written next to the run's results."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import zoo
from ..cli.options import build_parser, resolve
from ..cli.run import Run, train, write_outputs
from .experiments import EXPERIMENTS, Experiment
from .report import body_parameters, compare, markdown

COMPARISON = "comparison.md"
"""The Markdown table ``eidetic reproduce`` writes next to the run's files."""


@dataclass
class Reproduction:
    """What a reproduced experiment produced: the run, the comparison and the files."""

    experiment: Experiment
    run: Run
    comparison: dict
    overrides: dict
    paths: list[Path]


def experiment(name: str) -> Experiment:
    """The experiment ``name``, or a ``ValueError`` listing the names.

    Example::

        experiment("eidetic-pmnist").table      # 'Table 3'
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)} "
                         "(eidetic reproduce --list)")
    return EXPERIMENTS[name]


def reproduce(name: str, data_dir: str | Path, out: str | Path, *, epochs: int | None = None,
              tasks: int | None = None, width: int | None = None, run_options: Sequence[str] = (),
              argv: Sequence[str] = ()) -> Reproduction:
    """Run the experiment ``name`` on the data in ``data_dir`` with the paper's settings, write
    the run's files into ``out``, add the experiment and the comparison to ``results.json``, and
    write :data:`COMPARISON`.

    Args:
        name: one of :data:`~eidetic.reproduce.EXPERIMENTS`.
        data_dir: the folder the experiment's data is in.
        out: the results folder.
        epochs, tasks, width: overrides for a quick look (recorded in the results): training
            epochs per task, only the first ``tasks`` tasks, the network's width.
        run_options: more ``eidetic run`` options (device, workers, precision, ``--no-plots``...).
        argv: the command line, for the record.

    Raises:
        ValueError: an unknown experiment or a bad override (``SystemExit`` from a bad run option).

    Example::

        done = reproduce("eidetic-routing-mnist5", "data/mnist", "runs/t7", epochs=1, tasks=2)
        print(done.comparison["summary"])
    """
    chosen = experiment(name)
    overrides = {k: v for k, v in (("epochs", epochs), ("tasks", tasks), ("width", width)) if v is not None}
    if tasks is not None and not 1 <= tasks <= chosen.tasks:
        raise ValueError(f"--tasks: {name} has {chosen.tasks} tasks; keep 1 to {chosen.tasks} of them, got {tasks}")
    words = chosen.command(str(data_dir), {k: v for k, v in overrides.items() if k != "tasks"})[1:]
    words += [*(["--first", str(tasks)] if tasks is not None else []), *run_options, "--out", str(out)]
    args = build_parser().parse_args(words)
    config = resolve(args, args.error)
    run = train(config)
    paths = write_outputs(run, argv or ["reproduce", name])
    initial = body_parameters(zoo.build_model(config.model, run.benchmark.input_shape, config.width,
                                              method=config.method))
    comparison = compare(chosen, run, initial)
    command = "eidetic " + " ".join(words)
    document = json.loads(paths[0].read_text())
    document.update(experiment=chosen.describe(), overrides=overrides, run_command=command, comparison=comparison)
    paths[0].write_text(json.dumps(document, indent=2) + "\n")
    table = Path(out) / COMPARISON
    table.write_text(markdown(chosen, comparison, command, overrides))
    return Reproduction(chosen, run, comparison, overrides, [*paths, table])
