"""The training loop of one task, with the guard around every optimizer step.

A :class:`TaskSession` holds what one task's training needs (data, head, optimizer, loss,
guard) and offers the steps the phases are made of: one optimizer step, one epoch, the
monitored metric, and the scoring context used by pruning.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..errors import NonFiniteLossError, TaskError
from ..guarantee.guard import Guard
from ..guarantee.slices import out_mask
from . import distributed
from .data import batches, fixed_sample
from .report import EpochStats, TaskReport
from .scoring import ScoringContext

log = logging.getLogger("eidetic")

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_FINITE_CHECK_EVERY = 32  # steps between NaN checks (each check waits for the device)
Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}  # train_task(precision=...) -> autocast dtype


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose arg-max equals the target class."""
    return (logits.argmax(dim=1) == targets).float().mean()


class Callback:
    """Hooks into ``train_task``; subclass and override what you need.

    Example::

        class PrintLoss(eidetic.Callback):
            def on_epoch_end(self, task, stats):
                print(task, stats.epoch, stats.loss)
    """

    def on_step_end(self, task: int, loss: torch.Tensor) -> None:
        """After every optimizer step (``loss`` is a detached tensor; reading it syncs)."""

    def on_epoch_end(self, task: int, stats: EpochStats) -> None:
        """After every training epoch, pruning recovery epochs included."""


class L1Penalty:
    """CLNP's L1 regulariser: ``sum of coefficient * |w|`` over the weights of each layer's free
    rows (the rows the task trains; frozen rows are left out, their gradients being discarded).

    Args:
        layers, graph, ownership: the network's layers, unit table and owners.
        l1: one coefficient for every layer with weights, or ``{layer name: coefficient}``.
    """

    def __init__(self, layers, graph, ownership, l1: float | dict[str, float]) -> None:
        weighted = [name for name, (module, spec) in layers.items() if spec.input_size(module)]
        coefficients = dict.fromkeys(weighted, float(l1)) if isinstance(l1, (int, float)) else dict(l1)
        unknown = sorted(set(coefficients) - set(weighted))
        if unknown:
            raise TaskError(f"l1 names {unknown}, which are not layers with weights; choose among {weighted}")
        bad = {name: c for name, c in coefficients.items()
               if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 0}
        if bad:
            raise TaskError(f"l1={l1!r}: a coefficient is a finite number >= 0 (a negative one rewards large "
                            f"weights), got {bad}")
        free = ownership.masks("free")
        self.terms = []
        for name, coefficient in coefficients.items():
            module, spec = layers[name]
            rows = out_mask(graph, name, free, spec.unit_count(module))
            every_input = torch.ones(spec.input_size(module), dtype=torch.bool)
            for tensor_name, mask in spec.consumer_entries(module, rows, every_input):
                weight = getattr(module, tensor_name)
                self.terms.append((weight, mask.to(weight.dtype), coefficient))

    def __call__(self) -> torch.Tensor:
        return sum(c * (w.abs() * rows).sum() for w, rows, c in self.terms)


@dataclass
class TaskSession:
    """Everything the training of one task needs.

    ``seconds`` counts the wall time spent in training epochs (``"training"``, evaluations within
    them excepted) and in evaluations (``"evaluating"``) since the session began."""

    body: nn.Module
    head: nn.Linear
    task: int
    num_classes: int
    guard: Guard
    train_loader: DataLoader
    val_loader: DataLoader | None
    optimizer: torch.optim.Optimizer
    loss_fn: Loss = F.cross_entropy
    metric: Metric = accuracy
    check_labels: bool = True
    input_shape: tuple[int, ...] = ()
    clip_grad_norm: float | None = None
    callbacks: Sequence[Callback] = ()
    progress: bool = True
    penalty: Callable[[], torch.Tensor] | None = None
    features: Callable[[torch.Tensor], torch.Tensor] | None = None  # inputs -> the task's features
    precision: str | None = None  # None, "bf16" or "fp16": the training steps' autocast
    compile: dict | None = None  # torch.compile's arguments for the step's forward and loss; None: eager
    epochs_run: int = field(default=0, init=False)
    seconds: dict[str, float] = field(default_factory=lambda: {"training": 0.0, "evaluating": 0.0}, init=False)
    _finite: list[torch.Tensor] = field(default_factory=list, init=False, repr=False)  # per step since the last check

    def __post_init__(self) -> None:
        self.guard.watch(self.optimizer)
        self._scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self._forward_loss = self._eager_forward_loss if self.compile is None else compiled(
            self._eager_forward_loss, self.compile, self.task)

    def _autocast(self):
        if self.precision is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1) if self.features is None else self.features(x)

    def _check(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.input_shape:
            raise TaskError(f"inputs of shape {tuple(x.shape[1:])} (per sample) do not fit the network, "
                            f"which was set up with inputs of shape {self.input_shape}")
        if self.check_labels:
            if y.dtype.is_floating_point or y.dim() != 1:
                raise TaskError("targets must be a 1-D tensor of class indices for the default "
                                "cross-entropy loss; pass loss_fn= and metric= for other targets")
            low, high = int(y.min()), int(y.max())
            if low < 0 or high >= self.num_classes:
                raise TaskError(f"task {self.task} has num_classes={self.num_classes} but its data "
                                f"holds class {high if high >= self.num_classes else low}; "
                                "pass the right num_classes or relabel the classes 0..num_classes-1")

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; returns the detached loss and the batch metric."""
        self.optimizer.zero_grad(set_to_none=True)
        logits, loss = self._forward_loss(x, y)
        self._watch_finite(x, logits, loss)
        scaler = self._scaler
        (loss if scaler is None else scaler.scale(loss)).backward()
        distributed.average_gradients(p for group in self.optimizer.param_groups for p in group["params"])
        if self.clip_grad_norm is not None:
            if scaler is not None:
                scaler.unscale_(self.optimizer)
            self.guard.zero_grads()
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        if scaler is None:
            self.optimizer.step()
        else:  # skips the step when the scaled gradients overflowed
            scaler.step(self.optimizer)
            scaler.update()
        self.guard.enforce()
        with torch.no_grad():
            return loss.detach(), self.metric(logits.detach(), y)

    def _eager_forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training step's logits and loss (what ``compile=`` compiles)."""
        with self._autocast():
            logits = self.logits(x)
            loss = self.loss_fn(logits, y)
            if self.penalty is not None:
                loss = loss + self.penalty()
        return logits, loss

    def train_epoch(self, stop: Callable[[int], bool] | None = None, every: int = 1) -> EpochStats:
        """One pass over the training data in training mode.

        With ``stop``, the epoch ends early once ``stop(steps run)``, asked after every
        ``every`` steps, returns true (it may evaluate: the modules are put back in training
        mode after it); the statistics are those of the steps run (``EpochStats.steps``)."""
        from tqdm.auto import tqdm

        start, evaluating = time.perf_counter(), self.seconds["evaluating"]
        self.body.train()
        self.head.train()
        first = self.epochs_run == 0
        epoch = self.epochs_run + 1
        self._finite = []
        total_loss = torch.zeros((), device=self.device)
        total_metric = torch.zeros((), device=self.device)
        samples = 0
        data = batches(self.train_loader, self.device, "train_data")
        shown = self.progress and distributed.rank() == 0
        bar = tqdm(data, desc=f"task {self.task} epoch {epoch}", leave=False, disable=None if shown else True,
                   total=_length(self.train_loader))
        for step, (x, y) in enumerate(bar, 1):
            if first:
                self._check(x, y)
            loss, metric = self.step(x, y)
            total_loss += loss * len(x)
            total_metric += metric * len(x)
            samples += len(x)
            for cb in self.callbacks:
                cb.on_step_end(self.task, loss)
            if step % _FINITE_CHECK_EVERY == 0 and not distributed.active():  # ranks check together, below
                self._check_finite(float(total_loss), epoch)
            if stop is not None and step % every == 0 and self._stopped(stop, step):
                break
        bar.close()
        total_loss, total_metric, samples = distributed.total(
            torch.stack([total_loss, total_metric, torch.tensor(float(samples), device=self.device)])).tolist()
        mean_loss = total_loss / samples
        self._check_finite(mean_loss, epoch)
        self.epochs_run = epoch
        stats = EpochStats(self.epochs_run, mean_loss, total_metric / samples, steps=step)
        self.seconds["training"] += time.perf_counter() - start - (self.seconds["evaluating"] - evaluating)
        if self.val_loader is not None:
            stats.val_metric = self.evaluate(self.val_loader, "val_data")
        for cb in self.callbacks:
            cb.on_epoch_end(self.task, stats)
        log.debug("task %d epoch %d: loss %.4f metric %.4f", self.task, stats.epoch, stats.loss, stats.metric)
        return stats

    def _stopped(self, stop: Callable[[int], bool], step: int) -> bool:
        """``stop(step)`` asked between training steps, the modules put back in training mode."""
        done = bool(stop(step))
        self.body.train()
        self.head.train()
        return done

    def _watch_finite(self, x: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor) -> None:
        """Keep, without waiting for the device, float32 sums of the step's inputs, outputs and loss:
        a NaN or infinity in any of them makes its sum non-finite (looked at only when the epoch's
        loss is not finite)."""
        inputs = (x.sum(dtype=torch.float32).to(logits.device) if x.is_floating_point()
                  else logits.new_zeros((), dtype=torch.float32))
        self._finite.append(torch.stack([inputs, logits.detach().sum(dtype=torch.float32),
                                         loss.detach().float()]))

    def _check_finite(self, loss: float, epoch: int) -> None:
        """Raise if the loss summed since the epoch began is not finite, naming what broke first."""
        steps, self._finite = self._finite, []
        if math.isfinite(loss):
            return
        flags = torch.isfinite(torch.stack(steps)).cpu() if steps else torch.ones(1, 3, dtype=torch.bool)
        first = int((~flags).any(dim=1).float().argmax())
        inputs, outputs, _ = flags[first].tolist()
        if not inputs:
            cause = (f"the training inputs of task {self.task} hold NaN or infinite values (epoch {epoch}): the "
                     "data is broken, not the network. Clean or normalise the inputs")
        elif not outputs:
            cause = (f"the outputs of task {self.task} became NaN or infinite in epoch {epoch} while its inputs "
                     "were finite: training diverged. Lower the learning rate or pass clip_grad_norm=...")
        else:
            cause = (f"the loss of task {self.task} became {loss} in epoch {epoch} while the network's outputs "
                     "were finite: check loss_fn and the targets")
        raise NonFiniteLossError(f"{cause}. The network was rolled back to its state before the call.")

    def fit(self, epochs: int, early_stopping: int | None, scheduler=None) -> list[EpochStats]:
        """Train for ``epochs`` epochs, stopping after ``early_stopping`` epochs without progress.

        Progress is the validation metric when validation data was given, else the training metric.
        """
        history: list[EpochStats] = []
        best, stale = -math.inf, 0
        for _ in range(epochs):
            stats = self.train_epoch()
            history.append(stats)
            if scheduler is not None:
                scheduler.step()
            score = stats.val_metric if stats.val_metric is not None else stats.metric
            if score > best:
                best, stale = score, 0
            else:
                stale += 1
            if early_stopping is not None and stale >= early_stopping:
                break
        return history

    @torch.no_grad()
    def evaluate(self, loader: DataLoader, name: str, sample: int | None = None) -> float:
        """The metric over ``loader`` in evaluation mode; with ``sample``, over the same first
        ``sample`` samples of it at every call (:func:`~eidetic.training.data.fixed_sample`; per
        process under ``torch.distributed``)."""
        start = time.perf_counter()
        was_training = self.body.training
        self.body.eval()
        self.head.eval()
        distributed.broadcast_buffers([self.body, self.head])  # every rank evaluates rank 0's statistics
        total, samples = torch.zeros((), device=self.device), 0
        data = batches(loader, self.device, name) if sample is None else fixed_sample(loader, self.device, name,
                                                                                       sample)
        for x, y in data:
            if samples == 0:
                self._check(x, y)
            total += self.metric(self.logits(x), y) * len(x)
            samples += len(x)
        self.body.train(was_training)
        self.head.train(was_training)
        total, samples = distributed.total(torch.stack([total, torch.tensor(float(samples), device=self.device)]))
        self.seconds["evaluating"] += time.perf_counter() - start
        return float(total) / float(samples)

    def monitored(self, monitor: str, sample: int | None = None) -> float:
        """The metric pruning watches: on the training data or on the validation data, all of
        it or a fixed ``sample`` of it."""
        if monitor == "val":
            if self.val_loader is None:
                raise TaskError("Pruning(monitor='val') needs val_data")
            return self.evaluate(self.val_loader, "val_data", sample)
        return self.evaluate(self.train_loader, "train_data", sample)

    def scoring_context(self, layers, graph, max_batches: int | None) -> ScoringContext:
        """Inputs for importance strategies (evaluation mode, training data)."""
        self.body.eval()
        self.head.eval()
        return ScoringContext(layers=layers, graph=graph,
                              batches=batches(self.train_loader, self.device, "train_data"),
                              loss=lambda x, y: self.loss_fn(self.logits(x), y), features=self.forward_features,
                              max_batches=max_batches)


def compiled(step: Callable, options: dict, task: int) -> Callable:
    """``step`` compiled by ``torch.compile(**options)``; a failure to compile it raises a
    :class:`TaskError` that says so (and ``train_task`` rolls the network back).

    Dynamo's caches are reset first: every session has its own parameters, guard and head, so
    the previous sessions' compiled code would never run again, but it would count towards
    dynamo's recompile limit, past which frames fall back to eager in the middle of a compiled
    step (which autograd then rejects), and it would keep the old sessions alive."""
    torch._dynamo.reset()
    function = torch.compile(step, **options)

    def run(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return function(x, y)
        except torch._dynamo.exc.TorchDynamoException as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise TaskError(f"compile={options!r}: torch.compile could not compile the training step of task "
                            f"{task} ({type(error).__name__}: {first}). Train with compile=False, or without "
                            "fullgraph=True if the network's forward breaks the graph") from error

    return run


def _length(loader: DataLoader) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


@dataclass
class Plan:
    """How ``train_task`` asked for the open task to be learned, for ``ContinualNetwork._learn``.

    ``build()`` returns a fresh :class:`TaskSession` (a new optimizer from the user's factory)
    over the network's current parameters, with its LR scheduler or ``None``: call it again
    after widening. ``monitor`` is the data the task's metric is measured on (``"train"`` or
    ``"val"``); ``start`` is the ``time.perf_counter()`` at which the task began.
    """

    build: Callable[[], tuple[TaskSession, object]]
    report: TaskReport
    epochs: int
    early_stopping: int | None
    pruning: object  # Pruning | GracefulPruning | None
    monitor: str
    start: float
