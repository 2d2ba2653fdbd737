"""Avalanche benchmarks and evaluation for eidetic networks (extra ``eidetic[avalanche]``).

* :func:`tasks_from_benchmark` turns an Avalanche benchmark's train and test streams into
  :class:`eidetic.Task` objects, one per experience, that :func:`eidetic.run_tasks` and
  :meth:`~eidetic.ContinualNetwork.train_task` take as they are.
* :class:`EideticStrategy` is an Avalanche strategy (``train(experience)``, ``eval(stream)``)
  that learns each experience with ``train_task`` and is measured by Avalanche's own evaluation
  plugins and loggers, so its accuracy, forgetting and timing sit next to those of Avalanche's
  other strategies in the same tables.

Class labels are kept as Avalanche gives them: a task's head has one output per class of its
experience (``classes_in_this_experience``, in increasing order), and the strategy's outputs are
laid out in Avalanche's label space, so ``nc_benchmark(..., class_ids_from_zero_in_each_exp=True)``
and global class ids both work. See docs/avalanche.md.

Example::

    from eidetic.integrations.avalanche import EideticStrategy, tasks_from_benchmark

    tasks = tasks_from_benchmark(benchmark, batch_size=128)
    results = eidetic.run_tasks(net, tasks, optimizer=make_optimizer, epochs=3)

    strategy = EideticStrategy(net, optimizer=torch.optim.Adam(net.parameters(), lr=1e-3),
                               train_mb_size=128, train_epochs=3, evaluator=evaluator)
    for experience in benchmark.train_stream:
        strategy.train(experience)
        strategy.eval(benchmark.test_stream)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

try:
    from avalanche.core import BasePlugin, BaseSGDPlugin
    from avalanche.evaluation.metric_definitions import PluginMetric
    from avalanche.training.plugins.evaluation import EvaluationPlugin, default_evaluator
    from avalanche.training.templates import SupervisedTemplate
    from avalanche.training.templates.base import BaseTemplate
except ImportError as error:  # pragma: no cover - exercised only where Avalanche is missing
    raise ImportError('eidetic.integrations.avalanche needs Avalanche: pip install "eidetic[avalanche]" '
                      "(avalanche-lib 0.6)") from error

from .. import Callback, ContinualNetwork, GracefulPruning, Pruning, Task, TaskError, TaskReport

__all__ = ["EideticStrategy", "ExperienceTask", "tasks_from_benchmark"]

UNSUPPORTED_CALLBACKS = ("before_train_dataset_adaptation", "after_train_dataset_adaptation", "before_forward",
                         "after_forward", "before_backward", "after_backward", "before_update", "after_update")
"""Plugin callbacks :class:`EideticStrategy` never fires: eidetic's ``train_task`` owns the
forward, backward and update of every step (and the guard around them)."""

_RESERVED = ("task", "train_data", "num_classes", "optimizer", "epochs", "pruning", "loss_fn", "batch_size",
             "val_data", "finish")


# ------------------------------------------------------------------------------ experiences

def _name(experience) -> str:
    """``"train_stream experience 2"``: how errors name an experience."""
    stream = getattr(getattr(experience, "origin_stream", None), "name", None)
    prefix = f"{stream}_stream " if stream else ""
    return f"{prefix}experience {experience.current_experience}"


def _classes(experience) -> list[int]:
    """The experience's class labels, in increasing order."""
    classes = getattr(experience, "classes_in_this_experience", None)
    if classes is None:
        targets = getattr(experience.dataset, "targets", None)
        if targets is None:
            raise TaskError(f"{_name(experience)} has no class labels (no classes_in_this_experience and no "
                            "dataset.targets): eidetic learns classification experiences")
        classes = targets.uniques
    return sorted(int(c) for c in classes)


def _task_labels(experience) -> list[int]:
    """The experience's task labels, in increasing order (empty when its data has none)."""
    labels = getattr(experience, "task_labels", None)
    if labels is None:
        attribute = getattr(experience.dataset, "targets_task_labels", None)
        labels = () if attribute is None else attribute.uniques
    return sorted(int(t) for t in labels)


class _Pairs(Dataset):
    """An experience's samples as ``(input, class index within the task)`` pairs, the batches
    eidetic trains on (Avalanche's samples are ``(input, class label, task label)``)."""

    def __init__(self, data, classes: Sequence[int]) -> None:
        self.data = data
        self.index = {c: i for i, c in enumerate(classes)}

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        x, y = self.data[i][:2]
        return x, self.index[int(y)]


class _LastBatch(DataLoader):
    """A DataLoader that remembers the batch it yielded last (the strategy's ``mbatch``)."""

    last: tuple | None = None

    def __iter__(self) -> Iterator:
        for batch in super().__iter__():
            self.last = batch
            yield batch


def _loader(data, classes: Sequence[int], batch_size: int, *, train: bool, num_workers: int = 0,
            generator: torch.Generator | None = None, kind: type[DataLoader] = DataLoader) -> DataLoader:
    """A loader of ``(input, class index)`` batches; training loaders shuffle and drop a last
    batch of one sample, which BatchNorm cannot train on."""
    return kind(_Pairs(data, classes), batch_size=batch_size, shuffle=train, generator=generator,
                num_workers=num_workers, drop_last=train and len(data) % batch_size == 1)


def _check_covered(experience, classes: Sequence[int], trained_on) -> None:
    extra = sorted(set(_classes(experience)) - set(classes))
    if extra:
        raise TaskError(f"{_name(experience)} holds class(es) {extra}, which {_name(trained_on)} (its task's "
                        f"training data, classes {list(classes)}) does not: the task's head has no output for them")


def _check_size(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TaskError(f"{name} must be a positive int, got {value!r}")


# --------------------------------------------------------------------------- benchmark -> tasks

@dataclass
class ExperienceTask(Task):
    """An :class:`eidetic.Task` made from an Avalanche experience.

    Attributes:
        classes: the Avalanche class label of each output of the task's head (class index ``i``
            of the task is label ``classes[i]``).
        task_labels: the experience's Avalanche task labels (empty when it has none).
    """

    classes: list[int] = field(default_factory=list)
    task_labels: list[int] = field(default_factory=list)


def tasks_from_benchmark(benchmark, batch_size: int, *, test_batch_size: int | None = None, seed: int = 0,
                         num_workers: int = 0) -> list[ExperienceTask]:
    """An Avalanche benchmark as eidetic tasks: one :class:`ExperienceTask` per experience of its
    train stream, with the matching experience of its test stream (and of its ``valid_stream``,
    if it has one, as validation data).

    A task's head has one output per class of its experience; targets are the class's index in
    ``task.classes`` (the identity when Avalanche already numbers each experience's classes from
    zero). Training loaders shuffle with a generator seeded by ``seed`` and use the datasets'
    train transforms; test loaders use the eval transforms.

    Args:
        benchmark: an Avalanche benchmark with ``train_stream`` and ``test_stream`` (``nc_benchmark``,
            ``benchmark_from_datasets``, ``SplitMNIST``, ...).
        batch_size: training batch size.
        test_batch_size: batch size of the test and validation loaders (default: ``batch_size``).
        seed: seed of the training loaders' shuffling.
        num_workers: DataLoader worker processes.

    Raises:
        TaskError: the streams differ in length, or a test experience holds a class its training
            experience lacks (the message names the experience).

    Example::

        tasks = tasks_from_benchmark(benchmark, batch_size=128)
        results = eidetic.run_tasks(net, tasks, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3), epochs=3)
        net.train_task(0, tasks[0].train, num_classes=tasks[0].num_classes, optimizer=..., epochs=3)
    """
    _check_size("batch_size", batch_size)
    test_batch_size = batch_size if test_batch_size is None else test_batch_size
    _check_size("test_batch_size", test_batch_size)
    streams = {}
    for name in ("train_stream", "test_stream"):
        streams[name] = list(getattr(benchmark, name, None) or [])
        if not streams[name]:
            raise TaskError(f"the benchmark has no {name} (or it is empty): pass an Avalanche benchmark")
    valid = list(getattr(benchmark, "valid_stream", None) or [])
    train, test = streams["train_stream"], streams["test_stream"]
    for name, stream in (("test_stream", test), ("valid_stream", valid)):
        if stream and len(stream) != len(train):
            raise TaskError(f"the benchmark's train_stream has {len(train)} experiences but its {name} "
                            f"{len(stream)}: eidetic needs one {name} experience per task")
    generator = torch.Generator().manual_seed(seed)
    tasks = []
    for k, experience in enumerate(train):
        classes = _classes(experience)
        held_out = [s[k] for s in (test, valid) if s]
        for other in held_out:
            _check_covered(other, classes, experience)
        val = _loader(valid[k].dataset.eval(), classes, test_batch_size, train=False, num_workers=num_workers) \
            if valid else None
        tasks.append(ExperienceTask(
            train=_loader(experience.dataset.train(), classes, batch_size, train=True, num_workers=num_workers,
                          generator=generator),
            test=_loader(test[k].dataset.eval(), classes, test_batch_size, train=False, num_workers=num_workers),
            num_classes=len(classes), val=val, classes=classes, task_labels=_task_labels(experience)))
    return tasks


# ------------------------------------------------------------------------------------ strategy

@dataclass
class _Head:
    """What the strategy knows of one trained task: its classes and where they came from."""

    classes: list[int]
    task_label: int | None
    experience: str


class _Relay(Callback):
    """Tells Avalanche's plugins what ``train_task`` does, through eidetic's public hooks.

    An iteration begins at its loss (``train_task`` calls ``loss_fn`` once its forward pass is
    done) and ends at ``on_step_end``; an epoch begins at its first iteration and ends at
    ``on_epoch_end`` (pruning's recovery epochs included). The loss of a step counts only when
    the network is in training mode: pruning scores and evaluates in evaluation mode.
    """

    def __init__(self, strategy: EideticStrategy, criterion: Callable, classes: list[int], task_label: int) -> None:
        self.strategy = strategy
        self.criterion = criterion
        self.classes = torch.tensor(classes, device=strategy.device)
        self.width = max(strategy._width(), classes[-1] + 1)
        self.task_label = task_label
        self.in_epoch = False

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        s = self.strategy
        if s.model.training:
            if not self.in_epoch:
                self.in_epoch = True
                s._before_training_epoch()
            x = s.dataloader.last[0]
            labels = self.classes.to(targets.device)[targets]
            s.mbatch = [x.to(targets.device), labels, torch.full_like(labels, self.task_label)]
            s._before_training_iteration()
            s.mb_output = _spread(logits.detach(), self.classes, self.width)
        return self.criterion(logits, targets)

    def on_step_end(self, task: int, loss: torch.Tensor) -> None:
        self.strategy.loss = loss
        self.strategy._after_training_iteration()

    def on_epoch_end(self, task: int, stats) -> None:
        self.in_epoch = False
        self.strategy._after_training_epoch()


def _spread(logits: torch.Tensor, classes: torch.Tensor, width: int) -> torch.Tensor:
    """One task's logits in Avalanche's label space: its classes' columns, ``-inf`` elsewhere."""
    out = logits.new_full((len(logits), width), -math.inf)
    out[:, classes.to(logits.device)] = logits
    return out


def _check_plugins(plugins: Sequence, evaluator) -> None:
    """Refuse plugins whose callbacks the strategy would never fire (they change training)."""
    observers = [*plugins, *(getattr(evaluator, "metrics", None) or [])]
    for plugin in observers:
        base = PluginMetric if isinstance(plugin, PluginMetric) else BaseSGDPlugin
        used = [name for name in UNSUPPORTED_CALLBACKS if getattr(type(plugin), name, None) not in
                (None, getattr(base, name))]
        if used:
            raise TaskError(f"plugin {type(plugin).__name__} implements {', '.join(used)}, which EideticStrategy "
                            "never calls: eidetic's train_task runs every training step itself (with the guard "
                            "that keeps earlier tasks bitwise), so plugins that change training (replay, "
                            "regularisers) do not apply. Metrics, loggers and plugins that observe "
                            "experiences, epochs and iterations work")


class EideticStrategy(SupervisedTemplate):
    """An Avalanche strategy that learns each experience with eidetic's ``train_task``.

    ``train(experience)`` trains, prunes and freezes one new task per experience; ``eval(stream)``
    runs Avalanche's own evaluation loop, so every metric and logger of the ``evaluator`` (accuracy
    per experience, forgetting, timing, ...) measures it as it measures Avalanche's other
    strategies. With ``task_labels=True`` an input is scored by the head of its experience's task
    label, whose outputs never change once learnt (forgetting exactly 0); with
    ``task_labels=False`` by :meth:`~eidetic.ContinualNetwork.predict`, which routes each input to
    a task without a task label.

    The outputs (``mb_output``) are laid out in Avalanche's label space: the chosen task's logits
    in its classes' columns, ``-inf`` in the others (so the evaluation loss of an input routed to
    the wrong task is infinite; accuracy and forgetting are unaffected); an experience not learnt
    yet gets zero scores.

    Plugins see before/after ``training``, ``training_exp``, ``training_epoch`` (pruning's
    recovery epochs included) and ``training_iteration`` (``mbatch``, ``mb_output``, ``loss``
    set), and the whole evaluation loop. An iteration is seen from its loss on: its forward pass
    is not in minibatch timings. Plugins that change training (forward, backward, update or
    dataset-adaptation callbacks: replay, regularisers) are refused.

    Args:
        model: a :class:`~eidetic.ContinualNetwork` with no task yet.
        optimizer: an optimizer over ``model.parameters()`` (carried across experiences; each
            new head is added to it) or a factory ``params -> Optimizer``.
        pruning: each task's pruning, as in ``train_task`` (eidetic's default ``Pruning()``).
        criterion: the training loss ``(logits, targets) -> loss``; cross-entropy by default.
        train_mb_size, train_epochs, eval_mb_size: batch sizes and training epochs per
            experience (before pruning), as in Avalanche.
        device: where the network runs (default: where its parameters are).
        plugins: Avalanche plugins (observers only, see above).
        evaluator: an ``EvaluationPlugin`` (or a factory of one); Avalanche's default if omitted.
        eval_every: ``-1`` (no evaluation inside ``train``) or ``0`` (evaluate the ``eval_streams``
            after each experience). Evaluating in the middle of an experience is refused: its task
            is not frozen until ``train_task`` ends.
        task_labels: score inputs with their task label's head (it needs experiences with one task
            label each, distinct across experiences), or route them with ``predict``.
        router: the router ``predict`` uses when ``task_labels=False`` (see docs/routing.md).
        **train_kwargs: further ``train_task`` arguments (``memory``, ``l1``, ``scheduler``,
            ``early_stopping``, ``clip_grad_norm``, ``callbacks``, ``progress``, ...).

    Attributes:
        reports: the :class:`~eidetic.TaskReport` of each experience learnt.

    Example::

        strategy = EideticStrategy(net, optimizer=torch.optim.Adam(net.parameters(), lr=1e-3),
                                   train_mb_size=128, train_epochs=3, evaluator=evaluator)
        for experience in benchmark.train_stream:
            strategy.train(experience)
            strategy.eval(benchmark.test_stream)
    """

    def __init__(
        self,
        model: ContinualNetwork,
        *,
        optimizer: torch.optim.Optimizer | Callable[[list[nn.Parameter]], torch.optim.Optimizer],
        pruning: Pruning | GracefulPruning | None = Pruning(),
        criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        train_mb_size: int = 128,
        train_epochs: int = 1,
        eval_mb_size: int | None = None,
        device: str | torch.device | None = None,
        plugins: Sequence[BasePlugin] | None = None,
        evaluator: EvaluationPlugin | Callable[[], EvaluationPlugin] | None = default_evaluator,
        eval_every: int = -1,
        task_labels: bool = True,
        router=None,
        **train_kwargs,
    ) -> None:
        if not isinstance(model, ContinualNetwork):
            raise TaskError(f"EideticStrategy needs an eidetic.ContinualNetwork, got {type(model).__name__}: "
                            "subclass eidetic.ContinualNetwork, or wrap the model in eidetic.Wrapped")
        if model.num_tasks:
            raise TaskError(f"EideticStrategy starts from a fresh network; this one already has {model.num_tasks} "
                            "task(s), and the strategy would not know their experiences' classes and task labels")
        if eval_every not in (-1, 0):
            raise TaskError(f"eval_every={eval_every!r}: use -1 or 0. An experience's task is frozen only when "
                            "train_task ends, so EideticStrategy cannot be evaluated in the middle of one")
        _check_size("train_mb_size", train_mb_size)
        _check_size("train_epochs", train_epochs)
        allowed = set(inspect.signature(ContinualNetwork.train_task).parameters) - {"self", *_RESERVED}
        unknown = sorted(set(train_kwargs) - allowed)
        if unknown:
            raise TypeError(f"EideticStrategy got unexpected argument(s) {unknown}; train_task arguments it "
                            f"passes on: {sorted(allowed)}")
        if device is None:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.pruning = pruning
        self.task_labels = bool(task_labels)
        self.router = router
        self.train_kwargs = train_kwargs
        self.reports: list[TaskReport] = []
        self._heads: list[_Head] = []
        self._optimizer_arg = optimizer if isinstance(optimizer, torch.optim.Optimizer) else self._recording(optimizer)
        super().__init__(model=model, optimizer=optimizer, criterion=criterion or nn.CrossEntropyLoss(),
                         train_mb_size=train_mb_size, train_epochs=train_epochs, eval_mb_size=eval_mb_size,
                         device=device, plugins=plugins, evaluator=evaluator, eval_every=eval_every)
        _check_plugins(plugins or [], self.evaluator)

    def _recording(self, factory: Callable) -> Callable:
        """The optimizer factory, recording each optimizer it builds as ``self.optimizer``."""
        def build(params):
            self.optimizer = factory(params)
            return self.optimizer
        return build

    def _width(self) -> int:
        """Columns of the outputs: one per class label any learnt task has."""
        return max((h.classes[-1] + 1 for h in self._heads), default=0)

    # ---------------------------------------------------------------- training

    def _task_label(self, experience) -> int:
        """The task label training records for ``experience`` (checked when the strategy needs them)."""
        labels = _task_labels(experience)
        if not self.task_labels:
            return labels[0] if len(labels) == 1 else 0
        if len(labels) != 1:
            found = "no task labels" if not labels else f"several task labels {labels}"
            raise TaskError(f"{_name(experience)} has {found}, but EideticStrategy(task_labels=True) picks each "
                            "input's head by its experience's one task label: use a task-incremental benchmark "
                            "(nc_benchmark(..., task_labels=True)), or task_labels=False to route with predict")
        for head in self._heads:
            if head.task_label == labels[0]:
                raise TaskError(f"{_name(experience)} has task label {labels[0]}, as {head.experience} had: the "
                                "benchmark's task labels do not tell its experiences apart (class-incremental). "
                                "Use EideticStrategy(..., task_labels=False) to route inputs with predict")
        return labels[0]

    def _before_training_exp(self, **kwargs) -> None:
        experience = self.experience
        classes = _classes(experience)
        self._relay = _Relay(self, self._criterion, classes, self._task_label(experience))
        self.adapted_dataset = experience.dataset.train()
        self.dataloader = _loader(self.adapted_dataset, classes, self.train_mb_size, train=True,
                                  num_workers=kwargs.get("num_workers", 0), kind=_LastBatch)
        data, loader = self.adapted_dataset, self.dataloader
        BaseTemplate._before_training_exp(self, **kwargs)  # the plugins, without Avalanche's own data set-up
        if self.adapted_dataset is not data or self.dataloader is not loader:
            raise TaskError(f"a plugin replaced the training data of {_name(experience)} (replay?): "
                            "EideticStrategy trains each experience's task on that experience's data only")

    def _train_exp(self, experience, eval_streams=None, **kwargs) -> None:
        relay = self._relay
        report = self.model.train_task(
            self.model.num_tasks, self.dataloader, num_classes=len(relay.classes), optimizer=self._optimizer_arg,
            epochs=self.train_epochs, pruning=self.pruning, loss_fn=relay.loss,
            **{**self.train_kwargs, "callbacks": [*self.train_kwargs.get("callbacks", ()), relay]})
        self.reports.append(report)
        self._heads.append(_Head(relay.classes.tolist(), relay.task_label if self.task_labels else None,
                                 _name(experience)))

    # -------------------------------------------------------------- evaluation

    def _before_eval_exp(self, **kwargs) -> None:
        if self.task_labels and not _task_labels(self.experience):
            raise TaskError(f"{_name(self.experience)} has no task labels, but EideticStrategy(task_labels=True) "
                            "picks each input's head by its task label: evaluate a task-incremental stream, or "
                            "use task_labels=False to route with predict")
        super()._before_eval_exp(**kwargs)

    def forward(self) -> torch.Tensor:
        """The scores of the current evaluation batch in Avalanche's label space."""
        x, y = self.mb_x, self.mb_y
        width = max(self._width(), int(y.max()) + 1)
        dtype = next(self.model.parameters()).dtype
        out = torch.zeros(len(x), width, device=y.device, dtype=dtype)  # experiences not learnt yet
        if not self._heads:
            return out
        if self.task_labels:
            labels = self.mb_task_id
            by_label = {h.task_label: k for k, h in enumerate(self._heads)}
            for label in labels.unique().tolist():
                k = by_label.get(label)
                if k is not None:
                    rows = (labels == label).nonzero().flatten()
                    self._check_classes(k, y[rows], label)
                    out[rows] = self._spread(self.model.logits(x[rows], k), k, width)
        else:
            routed = self.model.predict(x, router=self.router)
            for k in routed.task.unique().tolist():
                rows = (routed.task == k).nonzero().flatten()
                out[rows] = self._spread(routed.logits[k][rows], k, width)
        return out

    def _spread(self, logits: torch.Tensor, k: int, width: int) -> torch.Tensor:
        return _spread(logits, torch.tensor(self._heads[k].classes), width)

    def _check_classes(self, k: int, targets: torch.Tensor, label: int) -> None:
        head = self._heads[k]
        extra = sorted(set(targets.unique().tolist()) - set(head.classes))
        if extra:
            raise TaskError(f"{_name(self.experience)} (task label {label}) holds class(es) {extra}, but the head "
                            f"of task label {label}, learnt on {head.experience}, has classes {head.classes}: "
                            "evaluate the test stream of the benchmark the strategy was trained on, or use "
                            "task_labels=False to route inputs with predict")


# Avalanche wraps every strategy's __init__ to warn about positional arguments on their way out;
# the network is this strategy's one positional argument, as in EideticStrategy(net, optimizer=...).
EideticStrategy.__init__ = EideticStrategy.__init__.__wrapped__
