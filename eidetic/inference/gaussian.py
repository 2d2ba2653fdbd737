"""A data-free router on the inputs: one Gaussian per class, with a low-rank covariance.

When a task ends, :class:`ClassScatter` records, in the pass over its training data that the
other routers' statistics take, each class's sum of inputs and sum of outer products. The
:class:`GaussianRouter` then keeps, per class, its mean input, the ``rank`` leading principal
directions of its inputs with their variances, and one variance for every other direction
(probabilistic PCA, Tipping and Bishop 1999), and scores an input for a task by the log of the
mean likelihood of its classes. Unlike the discriminant router (one covariance shared by every
class of every task, so only the class means differ), each class has its own shape, which is
what tells apart tasks whose classes have similar means (the digit pairs of Split MNIST).

No input is kept: per class, ``D * (rank + 1) + rank + 1`` numbers for inputs of ``D`` values.
While a task's statistics are gathered, each class holds a ``D x D`` sum (float64), so the
router records tasks only for inputs of at most ``max_features`` values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .discriminant import class_indices, tracing

_OVERSAMPLE, _ITERATIONS = 8, 6  # the leading directions' subspace iteration


@dataclass(frozen=True)
class _Matrix:
    """The scores' product: inputs minus ``centre``, times ``matrix``."""

    matrix: torch.Tensor
    centre: torch.Tensor


class ClassScatter:
    """Streaming per-class sums of flattened inputs and of their outer products (float64).

    A class's rows are buffered and added ``chunk`` at a time: one ``D x D`` update per chunk
    rather than per batch (a batch holds a few rows of each of many classes).
    """

    def __init__(self, num_classes: int, num_features: int, device: torch.device, chunk: int = 512) -> None:
        self.count = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.sum = torch.zeros(num_classes, num_features, dtype=torch.float64, device=device)
        self._second = torch.zeros(num_classes, num_features, num_features, dtype=torch.float64, device=device)
        self._pending: list[list[torch.Tensor]] = [[] for _ in range(num_classes)]
        self.chunk = chunk

    def add(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch (targets that are not class indices count as one class)."""
        labels = class_indices(labels, len(self.count), len(inputs))
        x = inputs.detach().flatten(1).double()
        self.count.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        self.sum.index_add_(0, labels, x)
        for c in labels.unique().tolist():
            self._pending[c].append(x[labels == c])
            if sum(len(rows) for rows in self._pending[c]) >= self.chunk:
                self._flush(c)

    def _flush(self, c: int) -> None:
        if self._pending[c]:
            rows = torch.cat(self._pending[c])
            self._second[c] += rows.T @ rows
            self._pending[c] = []

    @property
    def second(self) -> torch.Tensor:
        """Per class, the sum of the outer products of its inputs, ``(classes, D, D)``."""
        for c in range(len(self._pending)):
            self._flush(c)
        return self._second


def leading(covariance: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``rank`` largest eigenvalues of a symmetric matrix and their eigenvectors (columns),
    largest first: exact for small matrices, else by subspace iteration from a fixed start (so the
    same statistics always give the same router)."""
    size = len(covariance)
    if size <= 4 * (rank + _OVERSAMPLE):
        values, vectors = torch.linalg.eigh(covariance)
    else:
        start = torch.randn(size, rank + _OVERSAMPLE, dtype=covariance.dtype,
                            generator=torch.Generator().manual_seed(0)).to(covariance.device)
        basis = torch.linalg.qr(start).Q
        for _ in range(_ITERATIONS):
            basis = torch.linalg.qr(covariance @ basis).Q
        values, small = torch.linalg.eigh(basis.T @ covariance @ basis)
        vectors = basis @ small
    return values.flip(0)[:rank], vectors.flip(1)[:, :rank]


class GaussianRouter:
    """Route by the likelihood of each task's classes under a Gaussian with a low-rank
    covariance (nothing kept but statistics).

    Args:
        rank: principal directions kept per class (16: measured best of 4-64 on Split digits and
            Split MNIST, see docs/routing.md).
        budget: principal directions kept per task in all: a task of many classes keeps
            ``budget // classes`` per class (at least 2), so that scoring stays cheap.
        max_features: inputs of more values are not recorded (the router then covers no task
            from there on, and the next router is used).
        floor: the smallest variance, as a fraction of the class's mean variance (few samples
            leave directions without variance).

    Example::

        prediction = net.predict(x, router="gaussian")
    """

    reads_inputs = True

    def __init__(self, rank: int = 16, budget: int = 32, max_features: int = 1024, floor: float = 1e-3) -> None:
        self.rank, self.budget, self.max_features, self.floor = rank, budget, max_features, floor
        self.classes: list[dict[str, torch.Tensor]] = []  # per task: means, bases, variances, residual
        self._cache: tuple | None = None

    @property
    def tasks(self) -> int:
        return len(self.classes)

    def moments(self, num_classes: int, num_features: int, device: torch.device) -> ClassScatter | None:
        """The accumulator for a new task's training inputs, or ``None`` if they are too large."""
        if num_features > self.max_features:
            return None
        return ClassScatter(num_classes, num_features, device)

    def record(self, scatter: ClassScatter) -> None:
        """Add a task from its accumulated statistics."""
        rank = max(2, min(self.rank, self.budget // len(scatter.count)))
        fitted = [self._fit(n, s, q, rank) for n, s, q in zip(scatter.count.tolist(), scatter.sum, scatter.second)]
        self.classes.append({name: torch.stack([f[i] for f in fitted])
                             for i, name in enumerate(("means", "bases", "variances", "residual"))})
        self._cache = None

    def _fit(self, count: float, total: torch.Tensor, second: torch.Tensor, rank: int) -> tuple[torch.Tensor, ...]:
        n = max(count, 1.0)
        mean = total / n
        covariance = (second - n * torch.outer(mean, mean)) / max(n - 1.0, 1.0)
        size = len(mean)
        rank = min(rank, size - 1)
        values, vectors = leading(covariance, rank)
        trace = float(covariance.diagonal().sum())
        floor = max(trace / size * self.floor, 1e-12)
        residual = max((trace - float(values.clamp(min=0).sum())) / (size - rank), floor)
        variances = values.clamp(min=residual)
        return mean, vectors, variances, torch.tensor(residual, dtype=torch.float64, device=mean.device)

    def scores(self, features: torch.Tensor, logits: list[torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """Per task, the log of the mean likelihood of its classes (up to a constant shared by
        every task), computed in the inputs' dtype: one product of the inputs, centred on the mean
        of the class means, with every class's mean and directions, then sums per class."""
        tasks = len(logits)
        weight, constants = self._projection(tasks, inputs.device, inputs.dtype)
        means_dot_bases, mean_norms, inverse, class_of_direction, residual, log_det, task_of_class, sizes = constants
        x = inputs.flatten(1) - weight.centre
        products = x @ weight.matrix  # (inputs, classes + directions)
        classes = len(mean_norms)
        squares = (products[:, classes:] - means_dot_bases).square()  # along each class's directions
        inside = products.new_zeros((x.shape[0], classes))
        weighted = inside.index_add(1, class_of_direction, squares * inverse)
        inside = inside.index_add(1, class_of_direction, squares)
        norms = x.square().sum(1, keepdim=True)
        outside = (norms - 2 * products[:, :classes] + mean_norms - inside).clamp(min=0)
        likelihood = -0.5 * (weighted + outside / residual + log_det)
        best = products.new_full((x.shape[0], tasks), -math.inf)
        best = best.scatter_reduce(1, task_of_class.expand(x.shape[0], -1), likelihood, "amax")
        shifted = (likelihood - best.gather(1, task_of_class.expand(x.shape[0], -1))).exp()
        total = torch.zeros_like(best).index_add(1, task_of_class, shifted)
        return (best + total.log() - sizes.log()).to(features.dtype)

    def _projection(self, tasks: int, device: torch.device, dtype: torch.dtype):
        """The product's matrix (every class's mean, then every class's directions) and each
        class's constants (cached)."""
        key = (tasks, device, dtype)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        parts = [{k: v.to(device) for k, v in t.items()} for t in self.classes[:tasks]]
        means = torch.cat([t["means"] for t in parts])
        centre = means.mean(dim=0)
        centred = means - centre
        bases = [b for t in parts for b in t["bases"]]  # per class, (D, its rank)
        variances = [v for t in parts for v in t["variances"]]
        residual = torch.cat([t["residual"].reshape(-1) for t in parts])
        size = len(centre)
        matrix = torch.cat([centred.T, *bases], dim=1)
        constants = (
            torch.cat([m @ b for m, b in zip(centred, bases)]), centred.square().sum(1),
            1 / torch.cat(variances),
            torch.cat([torch.full((len(v),), c) for c, v in enumerate(variances)]).to(device), residual,
            torch.stack([v.log().sum() for v in variances]) + torch.tensor(
                [size - len(v) for v in variances], dtype=torch.float64, device=device) * residual.log(),
            torch.cat([torch.full((len(t["means"]),), k) for k, t in enumerate(parts)]).to(device),
            torch.tensor([float(len(t["means"])) for t in parts], dtype=torch.float64, device=device))
        constants = tuple(c if c.dtype == torch.long else c.to(dtype) for c in constants)
        weight = _Matrix(matrix.to(dtype), centre.to(dtype))
        if not tracing():  # a cache filled while tracing would hold the tracer's fake tensors
            self._cache = (key, (weight, constants))
        return weight, constants

    def truncate(self, tasks: int) -> None:
        """Forget the tasks recorded after the first ``tasks``."""
        del self.classes[tasks:]
        self._cache = None

    def state(self) -> list[dict[str, torch.Tensor]]:
        return list(self.classes)

    def load(self, state: list | None) -> None:
        """Load :meth:`state` (``None``: checkpoints from before this router record nothing)."""
        self.classes = [dict(task) for task in state or []]
        self._cache = None

    def to(self, device: torch.device) -> None:
        """Move the statistics to ``device`` (they stay in float64 whatever the network's dtype)."""
        self.classes = [{k: v.to(device) for k, v in task.items()} for task in self.classes]
        self._cache = None
