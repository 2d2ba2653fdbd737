"""``ContinualNetwork``, the base class users subclass, and ``Wrapped``.

The class is a facade: each verb is a few lines that hand the work to the module that owns the
concept (see docs/architecture.md):

* set-up: :mod:`eidetic.graph` measures the unit table, :class:`eidetic.state.State` holds it;
* training: :mod:`eidetic.training.task` (``train_task``, ``prune_until``);
* the guarantee: :mod:`eidetic.guarantee.lifecycle` (guard, freeze, recycle, task masks) and
  :mod:`eidetic.guarantee.widening` (widening, inside a task or between tasks);
* inference: :mod:`eidetic.inference.predict` (routing, the learned router) and
  :mod:`eidetic.inference.export`;
* persistence: :mod:`eidetic.checkpoint`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import checkpoint
from .errors import GraphError, TaskError
from .evaluation.capacity import Capacity, measure_capacity
from .graph import UnitGraph, discover, validate
from .guarantee import lifecycle, widening
from .guarantee.eras import paused
from .guarantee.masks import Mask
from .inference import export as exporting
from .inference import predict as prediction
from .inference.heads import TaskHeads
from .state import State, body_parameters, check_batch, device, features, require_graph
from .state import example as synthetic_batch
from .training import task as tasks
from .training.data import as_loader
from .training.session import Plan, TaskSession


class ContinualNetwork(nn.Module):
    """A network that learns tasks one after another without forgetting any of them.

    Subclass it like ``nn.Module``; ``forward`` returns features (any shape, flattened per
    sample), and ``train_task`` adds a head per task on top of them.

    Args:
        single_head: one output layer shared by all tasks, each task reading the feature units
            owned by it and earlier tasks (CLNP's single-head setting; every task must have the
            same number of classes), instead of one head per task.

    Example::

        class Net(eidetic.ContinualNetwork):
            def __init__(self):
                super().__init__()
                self.fc1 = nn.Linear(784, 256)
                self.bn1 = nn.BatchNorm1d(256)
                self.fc2 = nn.Linear(256, 256)

            def forward(self, x):
                return F.relu(self.fc2(F.relu(self.bn1(self.fc1(x.flatten(1))))))

        net = Net()
        for task, (train_loader, val_loader) in enumerate(tasks):
            net.train_task(task, train_loader, num_classes=10,
                           optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
                           epochs=5, val_data=val_loader)
        logits = net.logits(x, task=0)
    """

    def __init__(self, *, single_head: bool = False) -> None:
        super().__init__()
        self.heads = TaskHeads(shared=single_head)
        self._eidetic = State()
        self.register_load_state_dict_post_hook(checkpoint.after_load)

    # ------------------------------------------------------------------ set-up

    @property
    def graph(self) -> UnitGraph | None:
        """The unit table, or ``None`` before the first task (see :meth:`setup`)."""
        return self._eidetic.graph

    @property
    def num_tasks(self) -> int:
        """Number of tasks with an output (finished, plus the open one if any)."""
        return self.heads.num_tasks

    @property
    def open_task(self) -> int | None:
        """The task trained with ``finish=False`` and not frozen yet, or ``None``."""
        return self.num_tasks - 1 if self.num_tasks > self._eidetic.frozen_tasks else None

    def setup(self, example: torch.Tensor) -> UnitGraph:
        """Discover the unit graph from an example input batch (done by the first ``train_task``).
        Refused layers (LayerNorm, attention, unknown modules with parameters) raise
        :class:`~eidetic.errors.UnsupportedLayerError` here.

        Example::

            graph = net.setup(torch.randn(2, 1, 28, 28))
            print(graph.describe())
        """
        if not isinstance(self.heads, TaskHeads):
            raise GraphError("the attribute 'heads' is reserved by ContinualNetwork for the task heads; rename your "
                             "module")
        if self._eidetic.graph is not None:
            raise GraphError("the network is already set up; its graph is fixed")
        example = example.detach()[:2].to(device(self))
        with paused():
            graph = discover(self, self.forward, example, exclude=[self.heads])
        parameters = sum(p.numel() for p in body_parameters(self).values())
        self._eidetic.set_up(graph, dict(self.named_modules()), example, parameters)
        return graph

    def validate_graph(self, example: torch.Tensor | None = None) -> None:
        """Re-measure the couplings by perturbation and raise :class:`GraphError` if the unit
        table disagrees (it lists every difference).

        Example::

            net.validate_graph()                        # silent when the table is right
            net.validate_graph(next(iter(loader))[0])   # probe with real inputs
        """
        graph = require_graph(self)
        probe = synthetic_batch(self) if example is None else example.detach()[:2].to(device(self))
        with paused():
            problems = validate(self, self.forward, probe, graph, exclude=[self.heads])
        if problems:
            raise GraphError("the unit table disagrees with the network:\n" + "\n".join(problems))

    # ------------------------------------------------------------------ training (eidetic.training.task)

    train_task = tasks.train_task
    prune_until = tasks.prune_until

    def freeze(self, task: int, data=None, *, batch_size: int | None = None, memory: int = 200) -> dict[str, int]:
        """Freeze the open task: its alive units and its head become constant forever, and their
        weights reading free units are cut to zero. Returns units frozen per group.

        With ``data`` (the task's training data), also record what the routers need: the
        task's feature and input statistics and ``memory`` exemplars (``train_task`` does this
        for you).

        Example::

            frozen = net.freeze(0, train_loader)   # {"fc1": 37, "fc2": 52}
        """
        if task != self.open_task:
            raise TaskError(f"task {task} is not open; freeze() applies to the task left open by "
                            "train_task(..., finish=False)")
        tasks.check_int("memory", memory, 0)
        loader = None if data is None else as_loader(data, batch_size, shuffle=False, name="data")
        counts = lifecycle.freeze(self, task)
        if loader is not None:
            prediction.remember(self, task, loader, memory)
        return counts

    def recycle(self) -> int:
        """Re-initialise every free unit (pruned or unused) for the next task; returns how many
        units were re-initialised. The learned router, trained through them, is fitted again
        when ``predict`` next needs it.

        Example::

            net.freeze(0, train_loader)
            net.recycle()
        """
        if self.open_task is not None:
            raise TaskError(f"task {self.open_task} is still open: freeze({self.open_task}) it first")
        require_graph(self)
        return lifecycle.release_free_units(self)

    def widen(self, units: dict[str, int]) -> dict[str, int]:
        """Add free units to unit groups, between tasks; returns the new size of every group.

        ``units`` maps group keys (``net.graph.keys()``, the first layer producing the group, as
        :meth:`capacity` and ``graph.describe()`` show them) to how many units to add. Every layer
        producing the group grows (weight rows, biases, BatchNorm affine and fresh statistics, all
        producers of a residual stream, the gate rows of a recurrent layer in every layer and
        direction), every layer reading it gets input columns, zero in the rows of frozen units.
        Every finished task's outputs stay bitwise identical; the free units, new and old, are
        re-initialised. Parameters are replaced by bigger ones: pass ``train_task`` an optimizer
        factory (an optimizer instance holding the old parameters is refused).

        Example::

            net.widen({"fc1": 16, "conv2": 8})     # {"conv1": 32, "conv2": 72, "fc1": 144}
        """
        if self.open_task is not None:
            raise TaskError(f"task {self.open_task} is still open: freeze({self.open_task}) and recycle() "
                            "before widening")
        return widening.widen(self, units, recycle=True)

    # ------------------------------------------------------------------ inference (eidetic.inference)

    def logits(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """Task ``task``'s output: its head on top of one pass of the body.

        Example::

            net.eval()
            with torch.no_grad():
                scores = net.logits(x, task=0)
        """
        if not isinstance(task, int) or not 0 <= task < self.num_tasks:
            trained = f"trained tasks are 0..{self.num_tasks - 1}" if self.num_tasks else "no task is trained yet"
            raise TaskError(f"task {task!r} has no head; {trained}")
        check_batch(self, x, f"logits(x, task={task})")
        return self.heads.output(features(self, x, task), task)

    predict = prediction.predict
    fit_router = prediction.fit_router
    export = exporting.export

    # ------------------------------------------------------------------ diagnostics and persistence

    def capacity(self) -> Capacity:
        """Per layer: units in total, free, owned by each task, and reused by each task (units
        of earlier tasks that a task's own units or head read through non-zero weights).

        Example::

            print(net.capacity())
        """
        graph, state = require_graph(self), self._eidetic
        heads = [self.heads.reads(k, graph.feature_dim) for k in range(state.frozen_tasks)]
        return measure_capacity(state.layers, graph, state.ownership, heads)

    def parameter_count(self) -> int:
        """Number of parameter entries of the body and every task's head (task masks are not
        parameters; they take 1 bit per entry, see :meth:`mask_bits`).

        Example::

            net.parameter_count()                  # 201,482
        """
        return sum(p.numel() for p in self.parameters())

    def mask_bits(self) -> int:
        """Bits that the finished tasks' masks take in a checkpoint (1 per entry).

        Example::

            net.parameter_count() + net.mask_bits() / 32   # the size in float32 parameters
        """
        state = self._eidetic
        return sum(m.numel() for k in range(state.frozen_tasks) for m in state.masks.masks.get(k, {}).values()
                   if isinstance(m, torch.Tensor))

    def get_extra_state(self) -> dict:
        return checkpoint.extra_state(self)

    def set_extra_state(self, extra: dict) -> None:
        checkpoint.load_extra_state(self, extra)

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        self._eidetic.routers.apply(fn)
        if self._eidetic.graph is not None:
            lifecycle.make_guard(self)  # frozen copies follow the tensors to their new device or dtype
        return result

    # ------------------------------------------------------------------ extension points for mixins

    def _begin_task(self, task: int, head: nn.Linear) -> None:
        """Called by ``train_task`` once the task's head exists, before training: the place for a
        mixin to set the task's masks (:meth:`_set_mask`), release entries or widen."""

    def _learn(self, plan: Plan) -> TaskSession:
        """Train and prune the task in training (called by ``train_task`` inside its transaction,
        after :meth:`_begin_task`); returns the session the task ended in. Mixins override it to
        change how a task is learned, calling ``plan.build()`` for a session over the network's
        current parameters (after a widening, say)."""
        return tasks.learn(self, plan)

    def _set_mask(self, name: str, mask: Mask) -> None:
        """Give the open task a mask over body parameter ``name`` (``"fc1.weight"``): a tensor
        that broadcasts against it or a function returning one, binary by the time the task
        ends. See :mod:`eidetic.guarantee.masks`."""
        lifecycle.set_mask(self, name, mask)

    def _release(self, name: str, entries: torch.Tensor) -> None:
        """Let the open task train ``entries`` (a boolean mask) of frozen parameter ``name``:
        refused unless every finished task that reads them masks them out."""
        lifecycle.release(self, name, entries)

    def _widen(self, units: dict[str, int]) -> dict[str, int]:
        """Widen inside the open task (see :func:`eidetic.guarantee.widening.widen`): the widening
        joins the task's transaction, and nothing the open task computes changes."""
        return widening.widen(self, units)

    def _undo_widening(self) -> None:
        """Undo the open task's last widening (a growth step over budget, a better earlier attempt)."""
        widening.undo(self)

    def _keep_new_units(self, kept: dict[str, torch.Tensor]) -> Callable[[str, torch.Tensor], torch.Tensor]:
        """Keep only the ``kept`` units of the open task's last widening; returns the function that
        narrows a mixin's per-entry state (see :func:`eidetic.guarantee.widening.keep_new_units`)."""
        return widening.keep_new_units(self, kept)

    def _row_owner(self, name: str) -> torch.Tensor:
        """The owner of the unit that each entry of body tensor ``name`` belongs to."""
        return lifecycle.row_owner(self, name)

    def _body_parameters(self) -> dict[str, nn.Parameter]:
        """The body's parameters by name (every parameter but the heads')."""
        return body_parameters(self)

    def _make_guard(self, head: nn.Module | None = None):
        """Compile the guard of the current ownership (see :func:`eidetic.guarantee.lifecycle.make_guard`)."""
        return lifecycle.make_guard(self, head)


class Wrapped(ContinualNetwork):
    """Any module as the body of a :class:`ContinualNetwork`: its outputs are the features.

    For networks you already have, such as torchvision's models, instead of writing a subclass
    whose ``forward`` calls them. A checkpoint loads into ``Wrapped`` of the same architecture.

    Example::

        model = torchvision.models.resnet18(weights=None)
        model.fc = nn.Identity()                   # the 512 pooled channels are the features
        net = eidetic.Wrapped(model)
        net.train_task(0, loader, num_classes=10, epochs=1,
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9))

    Args:
        model: the body; ``net.model`` afterwards.
        single_head: as for :class:`ContinualNetwork`.
    """

    def __init__(self, model: nn.Module, *, single_head: bool = False) -> None:
        super().__init__(single_head=single_head)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

