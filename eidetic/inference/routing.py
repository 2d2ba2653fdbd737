"""Task-ID-free inference: routers that pick the task of an input from one pass of the body.

Every router turns the body's features (and the heads' logits, computed from the same pass;
and, for routers with ``reads_inputs``, the inputs) into one score per task; the input goes to
the task with the highest score, and that task's head gives the class.

* :class:`~eidetic.inference.gaussian.GaussianRouter` (the default): nothing kept but statistics
  of the inputs, on a fixed projection of them; two Gaussians with low-rank covariances per class.
* :class:`LearnedRouter` (the Eidetic paper's): a task classifier trained through the network's
  free units on exemplars of every task (see :class:`ExemplarMemory`) or on data you pass, with
  task ids as labels, fitted when ``predict`` first needs it after new tasks. It costs one small
  layer on top of the pass, since the free units are computed by it anyway; fitting it never
  touches a task head or a frozen unit.
* :class:`~eidetic.inference.discriminant.DiscriminantRouter`: nothing kept but statistics of
  the inputs; linear discriminant analysis over every class of every task.
* :class:`FeatureStatsRouter`: nothing kept but statistics recorded when each task ends, on the
  features owned by that task and earlier ones (which never change again): the mean of each
  class and a pooled per-feature variance. An input goes to the task of which it is most
  typical: the (diagonal) Mahalanobis distance to the task's nearest class mean, in the task's
  own feature subspace, turned into a chi-squared tail probability so that subspaces of
  different sizes compare.
* :class:`ConfidenceRouter`: no data at all; picks the head that is most confident, by maximum
  softmax probability, by (negative) entropy, or by (negative) energy.

See ``docs/routing.md`` for how they compare.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .discriminant import DiscriminantRouter, InputMoments, class_indices
from .gaussian import GaussianRecord, GaussianRouter
from .memory import ExemplarMemory


class ConfidenceRouter:
    """Route to the most confident head.

    Args:
        measure: ``"max_softmax"`` (highest class probability), ``"entropy"`` (lowest entropy
            of the softmax, divided by the log of the head's number of classes so that heads of
            different sizes compare) or ``"energy"`` (highest ``logsumexp`` of the logits).

    Example::

        prediction = net.predict(x, router=eidetic.ConfidenceRouter("energy"))
    """

    MEASURES = ("max_softmax", "entropy", "energy")

    def __init__(self, measure: str = "max_softmax") -> None:
        if measure not in self.MEASURES:
            raise ValueError(f"ConfidenceRouter(measure={measure!r}): choose one of {self.MEASURES}")
        self.measure = measure

    def scores(self, features: torch.Tensor, logits: list[torch.Tensor]) -> torch.Tensor:
        """``(inputs, tasks)`` scores, higher meaning more likely."""
        columns = []
        for out in logits:
            if self.measure == "energy":
                columns.append(torch.logsumexp(out, dim=1))
                continue
            log_p = F.log_softmax(out, dim=1)
            if self.measure == "max_softmax":
                columns.append(log_p.max(dim=1).values.exp())
            else:
                entropy = -(log_p.exp() * log_p).sum(dim=1)
                columns.append(-entropy / math.log(max(out.shape[1], 2)))
        return torch.stack(columns, dim=1)


@dataclass
class _TaskStats:
    mask: torch.Tensor  # features the task can rely on (owned by it or earlier tasks)
    means: torch.Tensor  # (classes, features)
    variance: torch.Tensor  # (features,), pooled within classes


FEATURE_SAMPLES = 1024  # per class: the features' moments of a task come from this many of its samples


class ClassMoments:
    """Streaming per-class sums of features and of their squares (in float64), from the first
    ``per_class`` samples of each class (or a batch more): the features cost a forward pass each,
    and the statistics router needs means and variances, which that many samples estimate well.

    Example::

        moments = ClassMoments(num_classes=2, num_features=128, device=torch.device("cpu"))
        for x, y in loader:
            rows = moments.wanted(y)
            if rows is None:
                moments.add(body(x), y)
            elif len(rows):
                moments.add(body(x[rows]), y[rows])
    """

    def __init__(self, num_classes: int, num_features: int, device: torch.device,
                 per_class: int = FEATURE_SAMPLES) -> None:
        self.count = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.sum = torch.zeros(num_classes, num_features, dtype=torch.float64, device=device)
        self.squares = torch.zeros(num_classes, num_features, dtype=torch.float64, device=device)
        self.per_class = per_class

    def wanted(self, labels: torch.Tensor) -> torch.Tensor | None:
        """The rows of a batch with targets ``labels`` whose class still wants samples: ``None``
        for every row (no class has enough yet), else their indices (maybe none)."""
        full = self.count >= self.per_class
        if not bool(full.any()):
            return None
        classes = class_indices(labels, len(self.count), len(labels)).to(full.device)
        return (~full[classes]).nonzero().flatten().to(labels.device)

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch; targets that are not class indices (a custom loss) count as one class."""
        labels = class_indices(labels, len(self.count), len(features))
        features = features.detach().double()
        self.count.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        self.sum.index_add_(0, labels, features)
        self.squares.index_add_(0, labels, features**2)

    def stats(self, mask: torch.Tensor, eps: float) -> _TaskStats:
        """Class means and the pooled within-class variance per feature."""
        count = self.count.clamp(min=1)[:, None]
        means = self.sum / count
        within = (self.squares - self.sum * means).sum(dim=0) / self.count.sum().clamp(min=1)
        return _TaskStats(mask.to(means.device), means.float(), within.clamp(min=0).float() + eps)


@dataclass
class _PackedStats:
    """Every task's statistics stacked: per task the inverse variances on its features, per
    class (of every task) its mean times those weights and its weighted squared norm."""

    weights: torch.Tensor  # (tasks, features)
    weighted_means: torch.Tensor  # (classes of all tasks, features)
    mean_terms: torch.Tensor  # (classes of all tasks,)
    task_of_class: torch.Tensor  # (classes of all tasks,)
    dof: torch.Tensor  # (tasks,): half the degrees of freedom

    def to(self, device: torch.device) -> _PackedStats:
        return _PackedStats(*(t.to(device) for t in vars(self).values()))


@dataclass
class FeatureStatsRouter:
    """Route by distance to each task's class means in that task's frozen feature subspace.

    Statistics are recorded by ``train_task`` at the end of every task; no input is kept.
    """

    tasks: list[_TaskStats] = field(default_factory=list)
    eps: float = 1e-6
    _cache: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def record(self, moments: ClassMoments, mask: torch.Tensor) -> None:
        """Add a task from the class moments of its training features and the mask of its
        frozen features."""
        self.tasks.append(moments.stats(mask, self.eps))
        self._cache = None

    def truncate(self, tasks: int) -> None:
        del self.tasks[tasks:]
        self._cache = None

    def scores(self, features: torch.Tensor, logits: list[torch.Tensor]) -> torch.Tensor:
        """Per task, how typical the input is of the task: the log-probability that a sample of
        the task lies farther from its nearest class mean (squared distance in per-feature
        standard deviations, chi-squared with as many degrees of freedom as the task has frozen
        features). Tasks with different numbers of features compare on the same scale."""
        packed = self._packed(len(logits), features.device)
        f = features.double()
        # Squared distances to every class mean of every task at once: sum_i w_i (f_i - m_ci)^2
        # expanded as f^2.w - 2 f.(m w) + m^2.w, with w_i = 1 / variance_i on the task's features.
        distance = ((f**2) @ packed.weights.T)[:, packed.task_of_class] - 2 * f @ packed.weighted_means.T
        distance = (distance + packed.mean_terms).clamp(min=0)
        nearest = torch.full((f.shape[0], len(packed.dof)), math.inf, dtype=torch.float64, device=f.device)
        nearest.scatter_reduce_(1, packed.task_of_class.expand(f.shape[0], -1), distance, "amin")
        survival = torch.special.gammaincc(packed.dof, nearest / 2).clamp(min=torch.finfo(torch.float64).tiny)
        return survival.log().to(features.dtype)

    def _packed(self, tasks: int, device: torch.device) -> _PackedStats:
        """The statistics of the first ``tasks`` tasks stacked for :meth:`scores` (cached)."""
        key = (tasks, device)
        if self._cache is None or self._cache[0] != key:
            weights = torch.stack([torch.where(s.mask, 1.0 / s.variance.double(), 0.0) for s in self.tasks[:tasks]])
            means = torch.cat([s.means.double() for s in self.tasks[:tasks]])
            task_of_class = torch.cat([torch.full((len(s.means),), k) for k, s in enumerate(self.tasks[:tasks])])
            task_of_class = task_of_class.to(means.device)
            dof = torch.tensor([max(int(s.mask.sum()), 1) / 2 for s in self.tasks[:tasks]], dtype=torch.float64)
            packed = _PackedStats(weights, means * weights[task_of_class], (means**2 * weights[task_of_class]).sum(1),
                                  task_of_class, dof)
            self._cache = (key, packed.to(device))
        return self._cache[1]

    def state(self) -> list[dict[str, torch.Tensor]]:
        return [{"mask": s.mask, "means": s.means, "variance": s.variance} for s in self.tasks]

    @classmethod
    def from_state(cls, state: list[dict[str, torch.Tensor]]) -> FeatureStatsRouter:
        return cls([_TaskStats(s["mask"], s["means"], s["variance"]) for s in state])

    def widen(self, positions: torch.Tensor, size: int) -> None:
        """The features grew to ``size``, old feature ``i`` now at ``positions[i]`` (the new
        features are no task's: masked out)."""
        self.tasks = [_TaskStats(_spread(s.mask, positions, size, False), _spread(s.means, positions, size, 0.0),
                                 _spread(s.variance, positions, size, 1.0)) for s in self.tasks]
        self._cache = None

    def apply(self, fn) -> None:
        """Apply a tensor conversion (``nn.Module._apply``'s ``fn``) to the statistics."""
        self.tasks = [_TaskStats(fn(s.mask), fn(s.means), fn(s.variance)) for s in self.tasks]
        self._cache = None


class LearnedRouter:
    """A task classifier trained through the network's free units: a linear layer on the body's
    features (every unit's, frozen and free) trained jointly with the free units on exemplars of
    every task, with task ids as labels (the Eidetic paper's task-classifier head, trained last
    through the capacity left). ``predict`` fits it the first time it is asked for after the
    free units were re-initialised (by a new task, ``recycle`` or ``widen``), once for all the
    tasks since; the next task re-initialises the free units again before it trains, so the
    router holds them only between tasks. Frozen units and heads never change.

    This object holds the router's layer; the free units' weights are the network's own.
    """

    reads_free_units = True

    def __init__(self) -> None:
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    @property
    def fitted_tasks(self) -> int:
        return 0 if self.weight is None else self.weight.shape[0]

    def set(self, layer: torch.nn.Linear) -> None:
        """Keep a trained router layer's weights."""
        self.weight, self.bias = layer.weight.detach(), layer.bias.detach()

    def clear(self) -> None:
        """Forget the fit (the free units it was trained with are being re-initialised)."""
        self.weight = self.bias = None

    def scores(self, features: torch.Tensor, logits: list[torch.Tensor]) -> torch.Tensor:
        """Task-classifier logits."""
        if self.weight is None or self.fitted_tasks < len(logits):
            raise RuntimeError(f"the learned router is fitted for {self.fitted_tasks} task(s) but the network has "
                               f"{len(logits)}; call net.fit_router()")
        return F.linear(features, self.weight, self.bias)[:, : len(logits)]

    def state(self) -> dict[str, torch.Tensor] | None:
        return None if self.weight is None else {"weight": self.weight, "bias": self.bias}

    def load(self, state: dict[str, torch.Tensor] | None) -> None:
        """Load :meth:`state`; the linear routers of checkpoints before 0.2 (on standardised frozen
        features, with a ``mask``) do not load: refit with ``fit_router()``."""
        if state is None or "mask" in state:
            self.clear()
        else:
            self.weight, self.bias = state["weight"], state["bias"]

    def apply(self, fn) -> None:
        """Apply a tensor conversion (``nn.Module._apply``'s ``fn``) to the router's layer."""
        if self.weight is not None:
            self.weight, self.bias = fn(self.weight), fn(self.bias)


@dataclass
class Prediction:
    """What :meth:`ContinualNetwork.predict` returns, one entry per input.

    Attributes:
        task: the task the router picked.
        label: the class predicted by that task's head (a class index of that task).
        task_scores: the router's scores, ``(inputs, tasks)``.
        task_probs: softmax of the router's scores (computed when first read).
        label_probs: softmax of the chosen head's logits, padded with zeros to the widest head
            (computed when first read).
        logits: every finished task's logits (``logits[k]`` is task ``k``'s head output). A task
            with a mask (CPG's picking) has its own logits only on the inputs routed to it; the
            other rows come from the shared pass: use ``net.logits(x, k)`` for all of them.
    """

    task: torch.Tensor
    label: torch.Tensor
    task_scores: torch.Tensor
    logits: list[torch.Tensor]
    chosen: torch.Tensor = field(repr=False)  # the chosen head's logits, padded with -inf

    @functools.cached_property
    def task_probs(self) -> torch.Tensor:
        return F.softmax(self.task_scores, dim=1)

    @functools.cached_property
    def label_probs(self) -> torch.Tensor:
        return F.softmax(self.chosen, dim=1)  # padding columns get probability 0


def router_scores(router, features: torch.Tensor, logits: list[torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    """``router``'s ``(inputs, tasks)`` scores; routers with ``reads_inputs`` also get the inputs."""
    if getattr(router, "reads_inputs", False):
        return router.scores(features, logits, inputs)
    return router.scores(features, logits)


def route(scores: torch.Tensor, logits: list[torch.Tensor]) -> Prediction:
    """Pick each input's task by the highest score, then its class with that task's head."""
    task = scores.argmax(dim=1)
    widest = max(out.shape[1] for out in logits)
    padded = [out if out.shape[1] == widest else F.pad(out, (0, widest - out.shape[1]), value=-math.inf)
              for out in logits]
    chosen = torch.stack(padded, dim=1).gather(1, task[:, None, None].expand(-1, 1, widest)).squeeze(1)
    return Prediction(task, chosen.argmax(dim=1), scores, logits, chosen)


class Routers:
    """Everything a network keeps for task-ID-free inference: exemplars, the statistics of the
    data-free routers and the learned router, with their checkpoint state."""

    def __init__(self) -> None:
        self.memory = ExemplarMemory()
        self.stats = FeatureStatsRouter()
        self.discriminant = DiscriminantRouter()
        self.gaussian = GaussianRouter()
        self.learned = LearnedRouter()

    def set_up(self, input_shape: tuple[int, ...], dtype: torch.dtype) -> None:
        """The network was set up for inputs of per-sample ``input_shape`` and ``dtype``: fix the
        input routers' projection, and say now if the default router cannot model such inputs."""
        self.gaussian.set_up(input_shape, dtype)
        if self.gaussian.refusal is not None:
            warnings.warn(f"{self.gaussian.refusal}: predict() will route with the learned router, fitted on the "
                          "exemplars train_task keeps (memory=...), or without them with the discriminant router",
                          stacklevel=4)

    def choose(self, router, tasks: int):
        """The router object for ``router``. ``None``: the Gaussian router if it covers every task,
        else the learned router if it is fitted for every task or can be (every task has
        exemplars; ``predict`` fits it), else the discriminant router, else the statistics
        router (networks trained before these routers existed), else confidence."""
        if router is None:
            if self.gaussian.tasks >= tasks:
                return self.gaussian
            if self.learned.fitted_tasks >= tasks or self.memory.complete(tasks):
                return self.learned
            if self.discriminant.tasks >= tasks:
                return self.discriminant
            return self.stats if len(self.stats.tasks) >= tasks else ConfidenceRouter()
        if not isinstance(router, str):
            return router
        named = {"learned": self.learned, "gaussian": self.gaussian, "discriminant": self.discriminant,
                 "statistics": self.stats}
        if router in named:
            chosen = named[router]
        elif router in ConfidenceRouter.MEASURES or router == "confidence":
            return ConfidenceRouter("max_softmax" if router == "confidence" else router)
        else:
            raise ValueError(f"unknown router {router!r}: use 'learned', 'gaussian', 'discriminant', 'statistics', "
                             f"'confidence', one of {ConfidenceRouter.MEASURES}, or an object with a scores() method")
        if chosen is not self.learned and _covered(chosen) < tasks:
            why = f"{self.gaussian.refusal}; use router='learned'" if chosen is self.gaussian and \
                self.gaussian.refusal else "tasks frozen by hand need freeze(task, data=...) to record them"
            raise RuntimeError(f"the {router} router covers {_covered(chosen)} of {tasks} tasks: {why}")
        return chosen

    def gaussian_record(self, num_classes: int, device: torch.device) -> GaussianRecord | None:
        """The Gaussian router's accumulator for a new task, or ``None`` if it refuses the inputs
        or missed an earlier task (it covers tasks only from the first)."""
        if self.gaussian.tasks != len(self.stats.tasks):
            return None
        return self.gaussian.record_for(num_classes, device)

    def record(self, moments: ClassMoments, mask: torch.Tensor, inputs: InputMoments,
               gaussian: GaussianRecord | None, exemplars: torch.Tensor) -> None:
        """Record a frozen task."""
        if gaussian is not None:
            self.gaussian.record(gaussian)
        self.stats.record(moments, mask)
        self.discriminant.record(inputs)
        self.memory.add(exemplars)

    def checkpoint(self) -> tuple:
        return (len(self.stats.tasks), self.discriminant.checkpoint(), self.gaussian.tasks, len(self.memory),
                self.learned.state())

    def rollback(self, checkpoint: tuple) -> None:
        stats, discriminant, gaussian, memory, learned = checkpoint
        self.stats.truncate(stats)
        self.discriminant.rollback(discriminant)
        self.gaussian.truncate(gaussian)
        self.memory.truncate(memory)
        self.learned.load(learned)

    def state(self) -> dict:
        return {"memory": self.memory.state(), "stats": self.stats.state(), "learned": self.learned.state(),
                "discriminant": self.discriminant.state(), "gaussian": self.gaussian.state()}

    def load(self, state: dict) -> None:
        self.memory = ExemplarMemory.from_state(state["memory"])
        self.stats = FeatureStatsRouter.from_state(state["stats"])
        self.learned.load(state["learned"])
        self.discriminant.load(state.get("discriminant"))
        self.gaussian.load(state.get("gaussian"))

    def widen(self, positions: torch.Tensor, size: int) -> None:
        """The features grew: the statistics follow them; the learned router, trained with the
        free units a widening re-initialises, is fitted again when next needed. The input
        routers do not read the features."""
        self.stats.widen(positions, size)
        self.learned.clear()

    def apply(self, fn) -> None:
        self.stats.apply(fn)
        self.learned.apply(fn)
        self.discriminant.to(fn(torch.zeros(0)).device)
        self.gaussian.to(fn(torch.zeros(0)).device)


def _covered(router) -> int:
    """Tasks a router of the network can score."""
    if isinstance(router, LearnedRouter):
        return router.fitted_tasks
    return router.tasks if isinstance(router, (DiscriminantRouter, GaussianRouter)) else len(router.tasks)


def _spread(tensor: torch.Tensor, positions: torch.Tensor, size: int, fill) -> torch.Tensor:
    """``tensor`` along its last dim at ``positions`` of ``size`` entries, ``fill`` elsewhere."""
    out = tensor.new_full((*tensor.shape[:-1], size), fill)
    out[..., positions.to(tensor.device)] = tensor
    return out
