"""A data-free router on the inputs: linear discriminant analysis over every class of every task.

When a task ends, :class:`InputMoments` records, in one pass over its training data, the mean
input of each class and, from its first 4,096 samples, the within-class scatter (the sum of the
outer products of the centred inputs), scaled to the task's size. The
:class:`DiscriminantRouter` pools these into one within-class covariance shared by every class
of every task (shrunk towards its mean variance, so that it stays invertible with few samples)
and scores an input for a task by the log of the Gaussian likelihood of its classes, averaged
with equal class weights. No input is kept: per task, the class means; for the network, one
``D x D`` matrix for inputs of ``D`` values (per-value variances above ``max_features``).

The inputs never change, so what is recorded for a task stays valid forever, and later tasks
sharpen every task's covariance estimate. It suits inputs whose classes differ in their mean
(images, tabular data); it cannot tell apart tasks whose inputs share their distribution.
"""

from __future__ import annotations

import math

import torch


def class_indices(labels: torch.Tensor, classes: int, rows: int) -> torch.Tensor:
    """``labels`` if they are class indices in ``0..classes - 1``, else every row in class 0
    (targets of a custom loss)."""
    if labels.dim() != 1 or labels.dtype.is_floating_point or int(labels.min()) < 0 or int(labels.max()) >= classes:
        return torch.zeros(rows, dtype=torch.long, device=labels.device)
    return labels


def tracing() -> bool:
    """Whether torch.compile or torch.export is tracing the call (a router's cache filled then
    would hold the tracer's fake tensors)."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


SCATTER_SAMPLES = 4096  # the within-class scatter of a task is estimated from this many of its samples


class InputMoments:
    """Streaming per-class sums of flattened inputs (float64), and the second moment of the
    first ``limit`` of them: with ``D`` values per input it costs ``D * D`` products a sample,
    more than the body's forward pass for image-sized inputs."""

    def __init__(self, num_classes: int, num_features: int, full: bool, device: torch.device,
                 limit: int = SCATTER_SAMPLES) -> None:
        self.count = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.sum = torch.zeros(num_classes, num_features, dtype=torch.float64, device=device)
        self.sampled_count = torch.zeros_like(self.count)
        self.sampled_sum = torch.zeros_like(self.sum)
        self.sampled = 0  # a Python count: no device sync per batch
        shape = (num_features, num_features) if full else (num_features,)
        self.second = torch.zeros(shape, dtype=torch.float64, device=device)
        self.limit = limit

    def add(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch (targets that are not class indices count as one class)."""
        labels = class_indices(labels, len(self.count), len(inputs))
        x = inputs.detach().flatten(1)
        self.count.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        self.sum.index_add_(0, labels, x.double())
        room = self.limit - self.sampled
        if room <= 0:
            return
        x, labels = x[:room], labels[:room]
        self.sampled += len(x)
        self.sampled_count.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        self.sampled_sum.index_add_(0, labels, x.double())
        x = x.float()  # one batch's products in float32 (the cost of a pass), summed over batches in float64
        self.second += (x.T @ x if self.second.dim() == 2 else (x**2).sum(dim=0)).double()

    def scatter(self) -> torch.Tensor:
        """The within-class scatter of every sample, estimated from the sampled ones (scaled by
        samples / sampled)."""
        means = self.sampled_sum / self.sampled_count.clamp(min=1)[:, None]
        between = self.sampled_sum.T @ means if self.second.dim() == 2 else (self.sampled_sum * means).sum(dim=0)
        return (self.second - between) * (float(self.count.sum()) / max(self.sampled, 1))


class DiscriminantRouter:
    """Route by linear discriminant analysis on the inputs (nothing kept but statistics).

    Args:
        shrinkage: weight of the mean variance on the diagonal of the pooled covariance
            (``(1 - s) * covariance + s * mean variance * identity``).
        max_features: inputs of more values keep per-value variances only (a diagonal
            covariance), so that the router's state stays small.

    Example::

        prediction = net.predict(x, router="discriminant")
    """

    reads_inputs = True

    def __init__(self, shrinkage: float = 0.1, max_features: int = 1024) -> None:
        self.shrinkage, self.max_features = shrinkage, max_features
        self.means: list[torch.Tensor] = []  # per task: (classes, D)
        self.counts: list[torch.Tensor] = []  # per task: (classes,)
        self.scatter: torch.Tensor | None = None  # pooled within-class scatter, (D, D) or (D,)
        self._cache: tuple | None = None

    @property
    def tasks(self) -> int:
        return len(self.means)

    def moments(self, num_classes: int, num_features: int, device: torch.device) -> InputMoments:
        """The accumulator for a new task's training inputs."""
        return InputMoments(num_classes, num_features, num_features <= self.max_features, device)

    def record(self, moments: InputMoments) -> None:
        """Add a task from its accumulated moments."""
        means = moments.sum / moments.count.clamp(min=1)[:, None]
        scatter = moments.scatter()
        self.scatter = scatter if self.scatter is None else self.scatter + scatter.to(self.scatter.device)
        self.means.append(means)
        self.counts.append(moments.count)
        self._cache = None

    def checkpoint(self) -> tuple[int, torch.Tensor | None]:
        """What :meth:`rollback` needs to forget the tasks recorded after this call."""
        return self.tasks, None if self.scatter is None else self.scatter.clone()

    def rollback(self, checkpoint: tuple[int, torch.Tensor | None]) -> None:
        tasks, self.scatter = checkpoint
        del self.means[tasks:], self.counts[tasks:]
        self._cache = None

    def scores(self, features: torch.Tensor, logits: list[torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """Per task, the log of the mean Gaussian likelihood of its classes (up to a constant
        shared by every task)."""
        weight, bias, task_of_class, log_classes = self._discriminants(len(logits), inputs.device)
        per_class = inputs.flatten(1).double() @ weight.T + bias
        best = torch.full((inputs.shape[0], len(log_classes)), -math.inf, dtype=torch.float64, device=inputs.device)
        best = best.scatter_reduce(1, task_of_class.expand(inputs.shape[0], -1), per_class, "amax")
        shifted = (per_class - best.gather(1, task_of_class.expand(inputs.shape[0], -1))).exp()
        total = torch.zeros_like(best).index_add(1, task_of_class, shifted)
        return (best + total.log() - log_classes).to(features.dtype)

    def _discriminants(self, tasks: int, device: torch.device):
        """``x @ weight.T + bias`` gives every class's discriminant (cached)."""
        key = (tasks, device)
        if self._cache is None or self._cache[0] != key:
            means = torch.cat(self.means[:tasks]).to(device)
            samples = sum(float(c.sum()) for c in self.counts)
            covariance = self.scatter.to(device) / max(samples, 1.0)
            variance = covariance if covariance.dim() == 1 else covariance.diagonal()
            floor = float(variance.mean()) * self.shrinkage + 1e-12
            if covariance.dim() == 2:
                regular = (1 - self.shrinkage) * covariance + floor * torch.eye(len(covariance), device=device,
                                                                                 dtype=torch.float64)
                weight = torch.linalg.solve(regular, means.T).T
            else:
                weight = means / ((1 - self.shrinkage) * covariance + floor)
            bias = -0.5 * (weight * means).sum(dim=1)
            task_of_class = torch.cat([torch.full((len(m),), k) for k, m in enumerate(self.means[:tasks])]).to(device)
            log_classes = torch.tensor([math.log(len(m)) for m in self.means[:tasks]], dtype=torch.float64,
                                       device=device)
            if tracing():
                return weight, bias, task_of_class, log_classes
            self._cache = (key, (weight, bias, task_of_class, log_classes))
        return self._cache[1]

    def state(self) -> dict:
        return {"means": list(self.means), "counts": list(self.counts), "scatter": self.scatter}

    def load(self, state: dict | None) -> None:
        """Load :meth:`state` (``None``: checkpoints from before this router record nothing)."""
        state = state or {"means": [], "counts": [], "scatter": None}
        self.means, self.counts, self.scatter = list(state["means"]), list(state["counts"]), state["scatter"]
        self._cache = None

    def to(self, device: torch.device) -> None:
        """Move the statistics to ``device`` (they stay in float64 whatever the network's dtype)."""
        self.means = [m.to(device) for m in self.means]
        self.counts = [c.to(device) for c in self.counts]
        self.scatter = None if self.scatter is None else self.scatter.to(device)
        self._cache = None
