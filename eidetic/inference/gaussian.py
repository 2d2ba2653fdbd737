"""The default router: Gaussians of every class of every task, on a fixed projection of the inputs.

When a task ends, :class:`GaussianRecord` reads its training inputs through the fixed
:class:`~eidetic.inference.projection.InputProjection` (the inputs themselves when small, their
lowest DCT frequencies when large), projected in their own precision (at least float32) as
``predict`` projects them, and records each class's count, sum and sum of outer products there
(in float64). Then each class is split in two along its first principal direction and each half
recorded the same way: from the projected inputs of the first pass, kept while they take at most
64 MiB (:data:`KEEP_BYTES`), else from a second pass over the inputs. :class:`GaussianRouter`
keeps, per class and per half, the mean, the ``rank`` leading principal directions with their
variances and one variance for every other direction (probabilistic PCA, Tipping and Bishop
1999), and scores an input for a task by the log of the mean likelihood of the task's classes,
each class the mixture of its two halves weighted by their counts.

The inputs never change, so what a task records stays valid forever; no input is kept once the
task is recorded, and a task's record does not grow with its data: per class and half
``d * (rank + 1) + rank + 2`` numbers for ``d`` projected values. Scoring is one pass of the body
(whose features it does not read) plus a small product of the projected inputs, in the inputs'
dtype: its columns, a mean and the directions of every Gaussian of every task, are held to
``budget`` in all, so its cost does not grow with the number of tasks: with many classes each
keeps fewer directions (the dropped variance goes to the residual), and below ``split_rank``
directions per half a class is scored as one Gaussian.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .discriminant import class_indices, tracing
from .projection import InputProjection

_OVERSAMPLE, _ITERATIONS = 8, 6  # the leading directions' subspace iteration
_NAMES = ("means", "bases", "variances", "residual", "count")
KEEP_BYTES = 64 * 2**20  # projected inputs a task's first pass keeps for its halves (else a second pass)
_SPLIT_CHUNK = 8192  # kept inputs split into halves at a time
HALF_SAMPLES = 8  # samples per direction: a Gaussian keeps at most count / 8 - 1 directions, a class is split
# only if each half has this many samples per direction


class ClassScatter:
    """Streaming per-group count, sum and sum of outer products of projected inputs (float64)."""

    def __init__(self, groups: int, size: int, device: torch.device) -> None:
        self.count = torch.zeros(groups, dtype=torch.float64, device=device)
        self.sum = torch.zeros(groups, size, dtype=torch.float64, device=device)
        self.second = torch.zeros(groups, size, size, dtype=torch.float64, device=device)

    def add(self, values: torch.Tensor, groups: torch.Tensor) -> None:
        """Add rows ``values`` ``(n, size)`` of groups ``groups`` ``(n,)``."""
        self.count.index_add_(0, groups, torch.ones_like(groups, dtype=torch.float64))
        self.sum.index_add_(0, groups, values)
        for g in groups.unique().tolist():
            rows = values[groups == g]
            self.second[g] += rows.T @ rows


class GaussianRecord:
    """What one task's pass (two, with ``split``) over its training inputs accumulates.

    With ``split``, the first pass also keeps its projected inputs while they take at most
    ``keep_bytes``; the halves are then taken from them when the router records the task, and
    no second pass is needed (:attr:`second_pass`).

    Example::

        record = router.record_for(num_classes=2, device=torch.device("cpu"))
        for x, y in loader:
            record.add(x, y)
        for x, y in loader if record.second_pass else ():
            record.add_halves(x, y)
        router.record(record)
    """

    def __init__(self, projection: InputProjection, num_classes: int, split: bool, device: torch.device,
                 keep_bytes: int = KEEP_BYTES) -> None:
        self.projection = projection
        self.num_classes = num_classes
        self.classes = ClassScatter(num_classes, projection.size, device)
        self.halves = ClassScatter(2 * num_classes, projection.size, device) if split else None
        self._split: tuple[torch.Tensor, torch.Tensor] | None = None  # per class: centre, direction
        self._kept: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if split else None
        self._room = keep_bytes

    @property
    def second_pass(self) -> bool:
        """Whether :meth:`add_halves` wants a second pass over the inputs: the halves are
        modelled and the first pass's projected inputs were too many to keep."""
        return self.halves is not None and self._kept is None and self._split is None

    def _project(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The projected inputs, in their precision (at least float32, as ``predict`` projects
        them), and their class indices, on the statistics' device."""
        labels = class_indices(labels, self.num_classes, len(inputs)).to(self.classes.count.device)
        x = inputs.detach()
        z = self.projection(x.to(torch.promote_types(x.dtype, torch.float32)))
        return z.to(self.classes.count.device), labels

    def add(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """First pass: a batch of the task's inputs and targets (targets that are not class
        indices count as one class)."""
        z, labels = self._project(inputs, labels)
        self.classes.add(z.double(), labels)
        if self._kept is not None:
            self._room -= z.numel() * z.element_size() + labels.numel() * labels.element_size()
            if self._room >= 0:
                self._kept.append((z, labels))
            else:
                self._kept = None  # too many to keep: the halves need a second pass

    def add_halves(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """Second pass: each input to the half of its class on its side of the class's first
        principal direction."""
        self._kept = None  # the halves come from this pass
        self._add_halves(*self._project(inputs, labels))

    def _add_halves(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        if self._split is None:
            fitted = fit(self.classes, 1, 1e-3)
            self._split = fitted["means"], fitted["bases"][:, :, 0]
        z = z.double()
        centre, direction = self._split
        side = ((z - centre[labels]) * direction[labels]).sum(dim=1) > 0
        self.halves.add(z, 2 * labels + side.long())

    def split_kept(self) -> None:
        """Take the halves from the first pass's kept projected inputs, if it kept them all
        (called by the router when it records the task)."""
        if self.halves is None or not self._kept:
            return
        kept, self._kept = self._kept, None
        z, labels = torch.cat([z for z, _ in kept]), torch.cat([y for _, y in kept])
        for start in range(0, len(z), _SPLIT_CHUNK):
            self._add_halves(z[start:start + _SPLIT_CHUNK], labels[start:start + _SPLIT_CHUNK])


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


def fit(scatter: ClassScatter, rank: int, floor: float) -> dict[str, torch.Tensor]:
    """Per group of ``scatter``: its mean, ``rank`` leading directions and their variances, and
    the mean variance of the other directions (at least ``floor`` times the mean variance)."""
    fitted = [_fit(n, s, q, rank, floor) for n, s, q in zip(scatter.count.tolist(), scatter.sum, scatter.second)]
    record = {name: torch.stack([f[i] for f in fitted]) for i, name in enumerate(_NAMES[:4])}
    record["count"] = scatter.count.clone()
    return record


def _fit(count: float, total: torch.Tensor, second: torch.Tensor, rank: int, floor: float):
    n = max(count, 1.0)
    mean = total / n
    covariance = (second - n * torch.outer(mean, mean)) / max(n - 1.0, 1.0)
    size = len(mean)
    rank = min(rank, size - 1)
    values, vectors = leading(covariance, rank)
    kept = min(rank, max(int(count) // HALF_SAMPLES - 1, 0))  # directions the samples can tell
    trace = float(covariance.diagonal().sum())
    least = max(trace / size * floor, 1e-12)
    residual = max((trace - float(values[:kept].clamp(min=0).sum())) / (size - kept), least)
    vectors[:, kept:] = 0  # the directions beyond: no variance of their own
    values = values.clamp(min=residual)
    values[kept:] = residual
    return mean, vectors, values, torch.tensor(residual, dtype=torch.float64, device=mean.device)


@dataclass(frozen=True)
class _Packed:
    """The scoring product's matrix and constants for some tasks, on one device and dtype: every
    Gaussian has a slot (``slots`` per task, unused ones never win); the matrix's columns are the
    slots' scaled directions, then their means over their residual variance."""

    centre: torch.Tensor  # (d,)
    matrix: torch.Tensor  # (d, rank * slots + slots)
    offsets: torch.Tensor  # (rank * slots,)
    half_inverse: torch.Tensor  # (slots,): half the inverse residual variance
    constant: torch.Tensor  # (slots,): half the mean's norm term and log-determinant, minus log-weight
    rank: int


class GaussianRouter:
    """Route by the likelihood of each task's classes under Gaussians with low-rank covariances
    on a fixed projection of the inputs (nothing kept but statistics; any input size).

    Args:
        rank: principal directions recorded per class and per half (16: the best of 4-64 when
            measured on the raw pixels of Split digits and Split MNIST); at most one per 8
            samples, less one.
        split: also model each class as a mixture of its two halves along its first principal
            direction (one more pass over the task's inputs when it ends), where each half has
            at least ``8 * (rank + 1)`` samples.
        budget: columns of the scoring product, every task together (a mean and the directions
            of every Gaussian): it bounds ``predict``'s cost whatever the number of tasks.
        split_rank: the fewest directions per half with which the halves are used; with fewer,
            every class is scored as one Gaussian.
        floor: the smallest variance, as a fraction of the Gaussian's mean variance.

    Example::

        prediction = net.predict(x, router="gaussian")
    """

    reads_inputs = True

    def __init__(self, rank: int = 16, split: bool = True, budget: int = 320, split_rank: int = 8,
                 floor: float = 1e-3) -> None:
        self.rank, self.split, self.budget, self.split_rank, self.floor = rank, split, budget, split_rank, floor
        self.projection: InputProjection | None = None
        self.refusal: str | None = None  # why the inputs cannot be modelled, if they cannot
        self.classes: list[dict[str, torch.Tensor]] = []  # per task: its classes' Gaussians
        self.halves: list[dict[str, torch.Tensor] | None] = []  # per task: its halves' Gaussians, if recorded
        self._cache: tuple | None = None

    @property
    def tasks(self) -> int:
        return len(self.classes)

    def set_up(self, input_shape: tuple[int, ...], dtype: torch.dtype) -> None:
        """Fix the projection for inputs of per-sample ``input_shape``; inputs that are not
        floating point (token ids) are refused (:attr:`refusal` says why)."""
        self.projection = InputProjection.for_shape(input_shape)
        self.refusal = None if dtype.is_floating_point else (
            f"the gaussian router models floating-point inputs; these are {dtype} (token ids?), so it records no "
            "task")

    def record_for(self, num_classes: int, device: torch.device) -> GaussianRecord | None:
        """The accumulator for a new task's training inputs (``None`` if the router refuses them)."""
        if self.refusal is not None or self.projection is None:
            return None
        halves = self.split and num_classes * 2 * (self.split_rank + 1) <= self.budget
        return GaussianRecord(self.projection, num_classes, halves, device)

    def record(self, record: GaussianRecord) -> None:
        """Add a task from its accumulated statistics."""
        record.split_kept()
        classes = fit(record.classes, self.rank, self.floor)
        halves = None if record.halves is None else fit(record.halves, self.rank, self.floor)
        if halves is not None:  # a class with a half too small to fit is its own two halves
            small = (halves["count"].view(-1, 2) < HALF_SAMPLES * (self.rank + 1)).any(dim=1).repeat_interleave(2)
            for name in _NAMES[:4]:
                halves[name][small] = classes[name].repeat_interleave(2, dim=0)[small]
            halves["count"][small] = classes["count"].repeat_interleave(2)[small] / 2
        self.classes.append(classes)
        self.halves.append(halves)
        self._cache = None

    def scores(self, features: torch.Tensor, logits: list[torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """Per task, the log of the mean likelihood of its classes (up to a constant shared by
        every task): one product of the projected inputs, centred, with every Gaussian's scaled
        directions and mean, then per Gaussian its squared distance and per task a log-sum-exp."""
        packed = self._packed(len(logits), inputs.device, inputs.dtype)
        z = self.projection(inputs) - packed.centre
        products = z @ packed.matrix
        slots = len(packed.constant)
        directions = slots * packed.rank
        likelihood = products[:, directions:] - z.square().sum(dim=1, keepdim=True) * packed.half_inverse \
            - packed.constant
        if packed.rank:
            along = (products[:, :directions] - packed.offsets).square_()
            likelihood = likelihood + along.view(-1, packed.rank, slots).sum(dim=1)
        return _logsumexp(likelihood.view(-1, slots // len(logits), len(logits))).to(features.dtype)

    def _packed(self, tasks: int, device: torch.device, dtype: torch.dtype) -> _Packed:
        """The scoring product for the first ``tasks`` tasks (cached)."""
        key = (tasks, device, dtype)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        packed = _pack(self._gaussians(tasks), self.projection.size, device, dtype)
        if not tracing():  # a cache filled while tracing would hold the tracer's fake tensors
            self._cache = (key, packed)
        return packed

    def _gaussians(self, tasks: int) -> tuple[list[list[tuple]], int]:
        """Per task its Gaussians as ``(mean, directions, variances, residual, log-weight)`` at
        the rank the budget allows, and that rank."""
        classes = sum(len(t["means"]) for t in self.classes[:tasks])
        share = self.budget // max(classes, 1)
        use_halves = all(h is not None for h in self.halves[:tasks]) and share // 2 - 1 >= self.split_rank
        rank = min(self.rank, share // 2 - 1 if use_halves else max(share - 1, 0))
        per_task = []
        for k in range(tasks):
            counts = self.classes[k]["count"]
            present = max(int((counts > 0).sum()), 1)
            if use_halves:
                record, weight = self.halves[k], self.halves[k]["count"] / counts.repeat_interleave(2).clamp(min=1)
            else:
                record, weight = self.classes[k], (counts > 0).double()
            per_task.append([(*_truncated(record, g, rank), math.log(w) - math.log(present) if w > 0 else -math.inf)
                             for g, w in enumerate(weight.tolist())])
        return per_task, rank

    def truncate(self, tasks: int) -> None:
        """Forget the tasks recorded after the first ``tasks``."""
        del self.classes[tasks:], self.halves[tasks:]
        self._cache = None

    def state(self) -> dict:
        return {"projection": None if self.projection is None else self.projection.state(),
                "classes": list(self.classes), "halves": list(self.halves)}

    def load(self, state: dict | list | None) -> None:
        """Load :meth:`state`; checkpoints from before the projection (a list of tasks, on the
        raw inputs) load on the identity, and those from before this router record nothing."""
        if isinstance(state, dict):
            if state["projection"] is not None:
                self.projection = InputProjection.from_state(state["projection"])
            self.classes, self.halves = [dict(t) for t in state["classes"]], list(state["halves"])
        else:
            self.classes = [dict(task, count=torch.ones(len(task["means"]), dtype=torch.float64))
                            for task in state or []]
            self.halves = [None] * len(self.classes)
            if self.classes:
                self.projection = InputProjection((self.classes[0]["means"].shape[1],))
        self._cache = None

    def to(self, device: torch.device) -> None:
        """Move the statistics to ``device`` (they stay in float64 whatever the network's dtype)."""
        self.classes = [{k: v.to(device) for k, v in task.items()} for task in self.classes]
        self.halves = [None if h is None else {k: v.to(device) for k, v in h.items()} for h in self.halves]
        self._cache = None


def _logsumexp(x: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over dimension 1, with the terms below ``exp(-80)`` of the largest
    counted as ``exp(-80)``: their exponentials would be subnormal numbers, which take some
    processors a hundred times longer (a relative change of at most ``e^-80`` per term)."""
    top = x.amax(dim=1, keepdim=True)
    return (x - top).clamp_(min=-80.0).exp_().sum(dim=1).log_() + top.squeeze(1)


def _truncated(record: dict[str, torch.Tensor], g: int, rank: int) -> tuple:
    """Gaussian ``g`` of ``record`` with at most ``rank`` directions: the variance of the
    directions dropped joins the residual (the mean variance of every direction not kept)."""
    mean, bases, variances, residual = (record[name][g] for name in _NAMES[:4])
    size, kept = len(mean), min(rank, variances.shape[0])
    dropped = variances[kept:].sum() + residual * (size - variances.shape[0])
    residual = dropped / (size - kept)
    return mean, bases[:, :kept], variances[:kept].clamp(min=residual), residual


def _pack(gaussians: tuple[list[list[tuple]], int], size: int, device: torch.device, dtype: torch.dtype) -> _Packed:
    """Lay the Gaussians out in slots and fold each one's log-density,
    ``-1/2 [|z - m|^2 / s - sum_i (v_i.(z - m))^2 (1/s - 1/l_i) + log det]``, into one product.

    Slot ``j`` of task ``t`` is column ``j * tasks + t``, and direction ``i`` of a slot is
    ``i * slots`` after it: the sums run over a leading dimension (contiguous rows), which is
    much faster than over a short trailing one."""
    per_task, rank = gaussians
    depth = max(len(t) for t in per_task)
    laid = [per_task[t][j] if j < len(per_task[t]) else None for j in range(depth) for t in range(len(per_task))]
    used = [g for g in laid if g is not None and g[4] > -math.inf]
    centre = torch.stack([g[0].to(device) for g in used]).mean(dim=0)
    directions = torch.zeros(rank, len(laid), size, dtype=torch.float64, device=device)
    means = torch.zeros(len(laid), size, dtype=torch.float64, device=device)
    inverse = torch.zeros(len(laid), dtype=torch.float64, device=device)
    constant = torch.full((len(laid),), math.inf, dtype=torch.float64, device=device)
    for j, g in enumerate(laid):
        if g is None or g[4] == -math.inf:
            continue
        mean, bases, variances, residual, log_weight = (t.to(device) if isinstance(t, torch.Tensor) else t for t in g)
        scale = (0.5 / residual - 0.5 / variances).clamp(min=0).sqrt()  # the 1/2 folded in
        directions[: len(variances), j] = (bases * scale).T
        means[j] = mean - centre
        inverse[j] = 1 / residual
        log_det = variances.log().sum() + (size - len(variances)) * residual.log()
        constant[j] = 0.5 * (means[j].square().sum() / residual + log_det) - log_weight
    offsets = torch.einsum("rjd,jd->rj", directions, means).reshape(-1)
    matrix = torch.cat([directions.reshape(-1, size).T, (means * inverse[:, None]).T], dim=1)
    return _Packed(centre.to(dtype), matrix.to(dtype), offsets.to(dtype), (0.5 * inverse).to(dtype),
                   constant.to(dtype), rank)
