"""Continual-learning evaluation: the accuracy matrix and the numbers derived from it.

* :func:`evaluate` measures the network as it is now, on the test data of every finished task:
  accuracy with the task id given (*oracle*), accuracy when a router picks the task (*routed*:
  the input is right only if both the task and the class are), and *routing* accuracy.
* :class:`Results` collects one evaluation per trained task into the accuracy matrix
  ``R[i][j]`` (accuracy on task ``j`` after training task ``i``) and derives average accuracy,
  backward transfer (exactly 0 for eidetic), forward transfer against a baseline, model size
  and units per task.
* :func:`run_tasks` trains a sequence of tasks and evaluates after each one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import TaskError
from ..state import device
from ..training.data import as_loader, batches
from ..training.report import TaskReport


@dataclass
class TaskEvaluation:
    """One task's test accuracies (``routed`` and ``routing`` are ``None`` without a router)."""

    task: int
    samples: int
    oracle: float
    routed: float | None = None
    routing: float | None = None


@dataclass
class Evaluation:
    """The test accuracies of every finished task at one point in time."""

    tasks: list[TaskEvaluation]

    def _mean(self, name: str) -> float | None:
        values = [getattr(t, name) for t in self.tasks]
        return None if not values or None in values else sum(values) / len(values)

    @property
    def oracle(self) -> float | None:
        """Mean oracle accuracy over tasks."""
        return self._mean("oracle")

    @property
    def routed(self) -> float | None:
        """Mean routed accuracy over tasks."""
        return self._mean("routed")

    @property
    def routing(self) -> float | None:
        """Mean routing accuracy over tasks."""
        return self._mean("routing")


@torch.no_grad()
def evaluate(net, test_data: Sequence, *, batch_size: int | None = None, router="auto") -> Evaluation:
    """Evaluate every finished task of ``net`` on its test data, from one body pass per batch.

    Args:
        net: a :class:`~eidetic.ContinualNetwork`.
        test_data: one DataLoader or Dataset per task (``test_data[k]`` for task ``k``); entries
            beyond the finished tasks are ignored.
        batch_size: batch size for Dataset entries.
        router: the router for routed and routing accuracy (see :meth:`ContinualNetwork.predict`);
            ``"auto"`` is the network's default, ``None`` skips routing.

    Example::

        result = eidetic.evaluate(net, [test0, test1], batch_size=256)
        print(result.oracle, result.routing, result.routed)
    """
    tasks = net._eidetic.frozen_tasks
    if isinstance(test_data, (Dataset, DataLoader)) or not isinstance(test_data, Sequence):
        raise TaskError(f"evaluate(test_data=...): give one DataLoader or Dataset per task, in a list "
                        f"(test_data[k] for task k), got a {type(test_data).__name__}")
    if len(test_data) < tasks:
        raise TaskError(f"evaluate needs test data for each of the {tasks} finished tasks, got {len(test_data)}")
    was_training = net.training
    net.eval()
    rows = []
    for k in range(tasks):
        loader = as_loader(test_data[k], batch_size, shuffle=False, name=f"test_data[{k}]")
        samples, oracle, routed, routing = 0, 0, 0, 0
        own_pass = router is None or net._eidetic.masks.has(k)  # a masked task's logits need its own pass
        for x, y in batches(loader, device(net), f"test_data[{k}]"):
            p = None if router is None else net.predict(x, router=None if router == "auto" else router)
            logits = net.logits(x, k) if own_pass else p.logits[k]
            oracle += int((logits.argmax(dim=1) == y).sum())
            if p is not None:
                right_task = p.task == k
                routing += int(right_task.sum())
                routed += int((right_task & (p.label == y)).sum())
            samples += len(x)
        rows.append(TaskEvaluation(k, samples, oracle / samples, None if router is None else routed / samples,
                                   None if router is None else routing / samples))
    net.train(was_training)
    return Evaluation(rows)


@dataclass
class Results:
    """Evaluations after each task, and what follows from them.

    Attributes:
        evaluations: ``evaluations[i]`` was measured after training task ``i``.
        reports: the :class:`TaskReport` of each task (if recorded).
        baseline: per task, the accuracy of a reference model trained on that task alone (for
            forward transfer), or ``None``.
        parameters: the number of parameters of the network (body and heads).
        units: per task, the units it froze in each layer.
    """

    evaluations: list[Evaluation] = field(default_factory=list)
    reports: list[TaskReport] = field(default_factory=list)
    baseline: list[float] | None = None
    parameters: int = 0
    units: list[dict[str, int]] = field(default_factory=list)

    def add(self, evaluation: Evaluation, report: TaskReport | None = None, net=None) -> None:
        """Record the evaluation made after the next task (with its report and the network)."""
        self.evaluations.append(evaluation)
        if report is not None:
            self.reports.append(report)
            self.units.append(dict(report.units))
        if net is not None:
            self.parameters = sum(p.numel() for p in net.parameters())

    @property
    def matrix(self) -> list[list[float | None]]:
        """``R[i][j]``: oracle accuracy on task ``j`` after training task ``i`` (``None`` for j > i)."""
        size = len(self.evaluations)
        return [[row.tasks[j].oracle if j < len(row.tasks) else None for j in range(size)]
                for row in self.evaluations]

    @property
    def average_accuracy(self) -> float:
        """Mean oracle accuracy over all tasks after the last one."""
        return self.evaluations[-1].oracle

    @property
    def bwt(self) -> float:
        """Backward transfer: mean over earlier tasks of ``R[T-1][j] - R[j][j]``."""
        r, size = self.matrix, len(self.evaluations)
        if size < 2:
            return 0.0
        return sum(r[-1][j] - r[j][j] for j in range(size - 1)) / (size - 1)

    @property
    def fwt(self) -> float | None:
        """Forward transfer: mean over tasks of ``R[j][j] - baseline[j]`` (accuracy right after
        learning a task, against a reference model trained on it alone); ``None`` without one."""
        if self.baseline is None:
            return None
        r, size = self.matrix, len(self.evaluations)
        return sum(r[j][j] - self.baseline[j] for j in range(size)) / size

    @property
    def routing_accuracy(self) -> float | None:
        """Mean routing accuracy over all tasks after the last one."""
        return self.evaluations[-1].routing

    @property
    def routed_accuracy(self) -> float | None:
        """Mean routed accuracy over all tasks after the last one."""
        return self.evaluations[-1].routed

    def to_dict(self) -> dict:
        """A JSON-serialisable summary (NaN-free)."""
        return {
            "matrix": self.matrix,
            "average_accuracy": self.average_accuracy,
            "bwt": self.bwt,
            "fwt": self.fwt,
            "routing_accuracy": self.routing_accuracy,
            "routed_accuracy": self.routed_accuracy,
            "parameters": self.parameters,
            "units": self.units,
            "evaluations": [asdict(e) for e in self.evaluations],
            "reports": [r.to_dict() for r in self.reports],
            "baseline": self.baseline,
        }

    def __str__(self) -> str:
        size = len(self.evaluations)
        lines = ["after  " + "  ".join(f"task {j:<3d}" for j in range(size))]
        for i, row in enumerate(self.matrix):
            cells = [f"{v:8.4f}" if v is not None else " " * 8 for v in row]
            lines.append(f"task {i:<2d}" + "  ".join(cells))
        last = self.evaluations[-1] if self.evaluations else None
        lines.append(f"average accuracy {self.average_accuracy:.4f}, BWT {self.bwt:+.4f}"
                     + (f", FWT {self.fwt:+.4f}" if self.fwt is not None else ""))
        if last is not None and last.routing is not None:
            lines.append(f"routed accuracy {last.routed:.4f} (oracle, task id given: {last.oracle:.4f}), "
                         f"routing accuracy {last.routing:.4f}")
        return "\n".join(lines)


@dataclass
class Task:
    """One task of a sequence: training data, test data, number of classes, and optional
    validation data (DataLoaders, or Datasets with ``batch_size``)."""

    train: object
    test: object
    num_classes: int
    val: object | None = None


def run_tasks(net, tasks: Sequence[Task], *, baseline: Sequence[float] | None = None, router="auto",
              batch_size: int | None = None, **train_kwargs) -> Results:
    """Train ``tasks`` in order on a fresh network and evaluate every finished task after each.

    Args:
        net: a :class:`~eidetic.ContinualNetwork` with no task yet.
        tasks: a sequence of :class:`Task`.
        baseline: accuracies of a reference model per task, for forward transfer.
        router: the router used for routed and routing accuracy (``None`` to skip).
        batch_size: batch size for Dataset arguments.
        **train_kwargs: passed to :meth:`ContinualNetwork.train_task` (``optimizer``,
            ``epochs``, ``pruning``, ...).

    Example::

        tasks = [eidetic.Task(train, test, num_classes=2) for train, test in splits]
        results = eidetic.run_tasks(net, tasks, batch_size=64, optimizer=make_optimizer, epochs=3)
        print(results)
    """
    if net.num_tasks:
        raise TaskError(f"run_tasks starts from a fresh network; this one already has {net.num_tasks} task(s)")
    results = Results(baseline=None if baseline is None else list(baseline))
    tests = [t.test for t in tasks]
    for k, task in enumerate(tasks):
        report = net.train_task(k, task.train, num_classes=task.num_classes, val_data=task.val,
                                batch_size=batch_size, **train_kwargs)
        results.add(evaluate(net, tests, batch_size=batch_size, router=router), report, net)
    return results
