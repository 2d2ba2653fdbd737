"""What a reproduced experiment reports: the paper's figures next to ours, task by task, as a
JSON-serialisable record and a Markdown table."""

from __future__ import annotations

from ..network import ContinualNetwork
from .experiments import Experiment


def body_parameters(net: ContinualNetwork) -> int:
    """Parameters of the network without its task heads."""
    return sum(p.numel() for name, p in net.named_parameters() if not name.startswith("heads."))


def compare(experiment: Experiment, run, initial_parameters: int) -> dict:
    """Per task and on average, the paper's figures (percent, ``None``: not verified) and ours
    after the last task: accuracy with the task id (oracle), routed accuracy, parameters.

    Example::

        comparison = compare(EXPERIMENTS["eidetic-pmnist"], run, initial_parameters=1_000_000)
    """
    results, figures = run.results, experiment.figures
    last = results.evaluations[-1]
    rows = []
    for k, task in enumerate(last.tasks):
        report = results.reports[k] if k < len(results.reports) else None
        rows.append({"task": k, "classes": run.benchmark.classes[k],
                     "paper": None if figures.per_task is None else figures.per_task[k],
                     "oracle": _percent(task.oracle), "routed": _percent(task.routed),
                     "parameters": None if report is None else report.parameters})
    oracle, routed = _percent(results.average_accuracy), _percent(results.routed_accuracy)
    final = body_parameters(run.net)
    summary = {
        "average": {"paper": figures.average, "ours": oracle},
        "routed": {"paper": figures.routed, "ours": routed},
        "routing_cost": {"paper": figures.routing_cost,
                         "ours": None if routed is None else round(routed - oracle, 2)},
        "parameters": {"paper": figures.parameters, "ours": round(final / initial_parameters, 3),
                       "initial": initial_parameters, "final": final},
    }
    return {"tasks": rows, "summary": summary, "figures_source": figures.source}


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def _cell(value, digits: int = 1) -> str:
    if value is None:
        return "not verified"
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def _ours(value) -> str:
    return "-" if value is None else _cell(value, 2)


def markdown(experiment: Experiment, comparison: dict, command: str, overrides: dict) -> str:
    """The comparison as Markdown: the experiment, the command, the overrides, the table task by
    task, the summary, the settings with their sources and the notes.

    Example::

        (out / "comparison.md").write_text(markdown(experiment, comparison, command, {"epochs": 1}))
    """
    lines = [f"# {experiment.name}", "", f"{experiment.paper}, {experiment.table}: {experiment.compared}.", "",
             f"Command: `{command}`", ""]
    if overrides:
        changed = ", ".join(f"--{k} {v}" for k, v in overrides.items())
        lines += [f"**Overridden for a quick look: {changed}.** These numbers are not comparable with the paper's.",
                  ""]
    lines += ["Accuracy in percent after the last task.", "",
              "| task | classes | paper | ours, task id given | ours, routed | parameters after the task |",
              "|---|---|---|---|---|---|"]
    for row in comparison["tasks"]:
        classes = ", ".join(map(str, row["classes"]))
        parameters = "-" if row["parameters"] is None else f"{row['parameters']:,}"
        lines.append(f"| {row['task']} | {classes} | {_cell(row['paper'])} | {_ours(row['oracle'])} | "
                     f"{_ours(row['routed'])} | {parameters} |")
    summary = comparison["summary"]
    lines += ["", "| | paper | ours |", "|---|---|---|",
              f"| average accuracy, task id given | {_cell(summary['average']['paper'])} | "
              f"{_ours(summary['average']['ours'])} |",
              f"| average accuracy, routed | {_cell(summary['routed']['paper'])} | "
              f"{_ours(summary['routed']['ours'])} |",
              f"| routing cost, points (routed - task id given) | {_cell(summary['routing_cost']['paper'])} | "
              f"{_ours(summary['routing_cost']['ours'])} |",
              f"| body parameters at the end / at the start | {_cell(summary['parameters']['paper'], 2)} | "
              f"{summary['parameters']['ours']:.3f} ({summary['parameters']['final']:,} / "
              f"{summary['parameters']['initial']:,}) |",
              "", f"Paper figures: {comparison['figures_source'] or 'none verified'}.", "",
              "| setting | value | source |", "|---|---|---|"]
    lines += [f"| `{s.option}` | {'' if s.value is None else s.value} | {s.source} |" for s in experiment.settings]
    if experiment.notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in experiment.notes]
    return "\n".join(lines) + "\n"


def listing(experiments) -> str:
    """The experiments as a text table: name, paper and table, benchmark, model and method, what
    is compared.

    Example::

        print(listing(EXPERIMENTS.values()))
    """
    rows = [("name", "paper, table", "benchmark", "model, method", "compared")]
    for e in experiments:
        rows.append((e.name, f"{e.paper.split(':')[0].split(' (')[0]}, {e.table}", f"{e.benchmark} ({e.tasks} tasks)",
                     f"{e.model}, {e.method}", e.compared))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)
