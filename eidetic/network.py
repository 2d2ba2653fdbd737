"""``ContinualNetwork``: the base class users subclass.

A subclass writes an ordinary ``__init__`` and a ``forward`` that returns features; the base
class owns the task heads, discovers the unit graph on first use, and drives the phases of each
task: train, prune, freeze, recycle. Outputs of every finished task stay bitwise identical.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import checkpoint
from .errors import GraphError, TaskError
from .evaluation.capacity import Capacity, measure_capacity
from .evaluation.report import PruneStep, TaskReport
from .graph import FEATURES, UnitGraph, discover, validate
from .guarantee import phases
from .guarantee.eras import AlignedInputs, Era, paused
from .guarantee.guard import Guard
from .guarantee.layout import LayoutSensitiveCalls, moved_calls
from .guarantee.masks import Mask
from .guarantee.narrowing import narrow_maps, new_units, shrunk
from .guarantee.norm import FrozenNorms
from .guarantee.ownership import Ownership
from .guarantee.slices import head_columns, out_mask, row_owners
from .guarantee.widening import Resized, check_request, position_map, resize_body, touched
from .inference import export as exporting
from .inference import predict as prediction
from .inference.heads import TaskHeads
from .inference.routing import Prediction
from .state import State
from .training import distributed
from .training.data import as_loader, first_inputs
from .training.pruning import GracefulPruning, Pruning, prune
from .training.session import PRECISIONS, Callback, L1Penalty, Loss, Metric, Plan, TaskSession, accuracy
from .transaction import Widening, transaction

log = logging.getLogger("eidetic")

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
Data = DataLoader | Dataset
class ContinualNetwork(nn.Module):
    """A network that learns tasks one after another without forgetting any of them.

    Subclass it like ``nn.Module``; ``forward`` returns features (any shape, flattened per
    sample), and ``train_task`` adds a head per task on top of them.

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
        """Args:
        single_head: one output layer shared by all tasks, each task reading the feature units
            owned by it and earlier tasks (CLNP's single-head setting; every task must have the
            same number of classes), instead of one head per task.
        """
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
        state = self._eidetic
        if not isinstance(self.heads, TaskHeads):
            raise GraphError("the attribute 'heads' is reserved by ContinualNetwork for the task "
                             "heads; rename your module")
        if state.graph is not None:
            raise GraphError("the network is already set up; its graph is fixed")
        example = example.detach()[:2].to(self._device())
        with paused():
            graph = discover(self, self.forward, example, exclude=[self.heads])
        state.graph = graph
        modules = dict(self.named_modules())
        state.layers = {name: (modules[name], spec) for name, spec in graph.layers.items()}
        state.ownership = Ownership(graph)
        state.input_shape = tuple(example.shape[1:])
        state.input_dtype = example.dtype
        state.norms = FrozenNorms(state.layers)
        state.inputs = AlignedInputs(state.layers)
        state.initial_sizes = {g.key: g.size for g in graph}
        state.initial_parameters = sum(p.numel() for p in self._body_parameters().values())
        return graph

    def validate_graph(self, example: torch.Tensor | None = None) -> None:
        """Re-measure the couplings by perturbation and raise :class:`GraphError` if the unit
        table disagrees (it lists every difference).

        Example::

            net.validate_graph()                        # silent when the table is right
            net.validate_graph(next(iter(loader))[0])   # probe with real inputs
        """
        graph = self._require_graph()
        example = self._example() if example is None else example.detach()[:2].to(self._device())
        with paused():
            problems = validate(self, self.forward, example, graph, exclude=[self.heads])
        if problems:
            raise GraphError("the unit table disagrees with the network:\n" + "\n".join(problems))

    # ------------------------------------------------------------------ inference

    def logits(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """Task ``task``'s output: its head on top of one pass of the body.

        Example::

            net.eval()
            with torch.no_grad():
                scores = net.logits(x, task=0)
        """
        if not isinstance(task, int) or not 0 <= task < self.num_tasks:
            raise TaskError(f"task {task!r} has no head; trained tasks are 0..{self.num_tasks - 1}")
        return self.heads.output(self._features(x, task), task)

    def _features(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """The body's flattened features as task ``task`` sees them (with its masks, if any)."""
        masks = self._eidetic.masks
        if not masks.has(task):
            return self(x).flatten(1)
        with masks.applied(task, self):
            return self(x).flatten(1)

    def predict(self, x: torch.Tensor, router=None) -> Prediction:
        """Predict the task and the class of every input, with no task id: one pass of the body,
        every finished task's head, and a router that picks the task.

        Args:
            x: a batch of inputs.
            router: ``None`` (the first of the Gaussian, learned and discriminant routers that
                covers every task, else the statistics router, else confidence), ``"gaussian"``,
                ``"learned"``, ``"discriminant"``, ``"statistics"``, ``"confidence"`` (maximum
                softmax), ``"entropy"``, ``"energy"``, or any object with ``scores(features,
                logits)`` (see docs/routing.md).

        Example::

            net.eval()
            with torch.no_grad():
                p = net.predict(x)
            p.task, p.label            # the task each input was routed to, and its class there
        """
        return prediction.predict(self, x, router)

    def fit_router(self, data: Sequence[Data] | None = None, *, batch_size: int | None = None,
                   steps: int | None = None, lr: float = prediction.ROUTER_LR) -> None:
        """Fit the learned router: a task classifier on the features, trained with task ids as
        labels jointly with the free units (Adam, batches of 64).

        Fitting changes no head and no frozen unit (the guard holds them, as in any task's
        training); it trains the free units, which :meth:`recycle` re-initialises, and which the
        next task re-initialises before it trains. :meth:`recycle` calls it when every task has
        exemplars, so you need it only to fit on your own data.

        Args:
            data: one dataset or loader per finished task (inputs, or ``(inputs, targets)``
                batches whose targets are ignored); ``None`` uses the exemplars ``train_task``
                kept (``memory=``).
            batch_size: batch size for reading Dataset arguments.
            steps: optimizer steps; ``None``: 10 passes over the data, within 20 to 300 steps.
            lr: Adam's learning rate.

        Example::

            net.fit_router()                          # on the exemplar memory
            net.fit_router([task0_data, task1_data], batch_size=256)
        """
        prediction.fit_router(self, data, batch_size=batch_size, steps=steps, lr=lr)

    def export(self, tasks: int | Sequence[int] | None = None, *, router=None) -> nn.Module:
        """A plain module for deployment that computes the given finished tasks' logits with only
        the units they read: free, pruned and later tasks' units are physically removed.

        The result is ``torch.export``'s module (a ``torch.fx.GraphModule`` of plain torch
        operations, importing nothing from eidetic) with a dynamic batch size, in evaluation
        mode. Its outputs match :meth:`logits` within float tolerance, not bitwise: its matrix
        products run at the smaller shapes. See docs/scaling.md.

        Args:
            tasks: a task (the module returns its logits), a sequence of tasks (a tuple of their
                logits, in that order) or ``None`` for every finished task.
            router: also route, as :meth:`predict` does: ``"auto"`` (predict's default router),
                ``"learned"``, ``"statistics"``, a confidence measure or a router object. The
                module then returns ``(task, label)`` for each input, choosing among ``tasks``;
                the body keeps every finished task's units (the router reads them).

        Example::

            small = net.export(tasks=[0, 1])
            logits0, logits1 = small(x)
            batch = {0: torch.export.Dim("batch")}   # without it the saved program fixes len(x)
            program = torch.export.export(net.export(router="auto"), (x,), dynamic_shapes=(batch,))
            torch.export.save(program, "net.pt2")     # load with torch.export.load, no eidetic needed
        """
        return exporting.export(self, tasks, router)

    # ------------------------------------------------------------------ training

    def train_task(
        self,
        task: int,
        train_data: Data,
        *,
        num_classes: int,
        optimizer: OptimizerFactory | torch.optim.Optimizer,
        epochs: int,
        val_data: Data | None = None,
        batch_size: int | None = None,
        pruning: Pruning | GracefulPruning | None = Pruning(),
        loss_fn: Loss | None = None,
        metric: Metric | None = None,
        l1: float | dict[str, float] | None = None,
        scheduler: Callable[[torch.optim.Optimizer], object] | None = None,
        early_stopping: int | None = None,
        clip_grad_norm: float | None = None,
        finish: bool = True,
        memory: int = 200,
        callbacks: Sequence[Callback] = (),
        progress: bool = True,
        precision: str | None = None,
        compile: bool | dict = False,
    ) -> TaskReport:
        """Train a new task, prune it, freeze the units it kept and recycle the rest.

        If anything fails (an exception, a NaN loss, Ctrl-C) the network is put back as it was
        before the call.

        Args:
            task: the task id: tasks are numbered 0, 1, 2, ... in training order.
            train_data: a DataLoader of ``(inputs, targets)``, or a Dataset with ``batch_size``.
            num_classes: number of outputs of the task's head.
            optimizer: a factory ``params -> Optimizer`` (called with the body's parameters and
                the new head's), or one optimizer instance to carry across tasks. Parameters the
                optimizer lacks (a new head) are added to it as a new parameter group.
            epochs: training epochs before pruning.
            val_data: optional validation data (reported; used by early stopping and by
                ``Pruning(monitor="val")``).
            batch_size: batch size for Dataset arguments.
            pruning: a :class:`Pruning` (iterative) or :class:`GracefulPruning` (CLNP's one-shot
                thresholds) configuration, or ``None`` to keep every unit.
            loss_fn: ``(logits, targets) -> loss``; cross-entropy by default.
            metric: ``(logits, targets) -> score in [0, 1]``; accuracy by default.
            l1: an L1 penalty on the trained weights of every layer (a coefficient), or per
                layer (``{"fc1": 1e-4}``), added to the loss during training (CLNP).
            scheduler: optional factory ``optimizer -> LR scheduler``, stepped per epoch.
            early_stopping: stop training after this many epochs without progress (``None``: never).
            clip_grad_norm: clip the gradient norm of the trained weights to this value.
            finish: freeze and recycle at the end (``False`` leaves the task open, so that
                :meth:`prune_until`, :meth:`freeze` and :meth:`recycle` can be called by hand).
            memory: exemplars of the task to keep for fitting the learned router (0: none),
                at one byte per value for floating-point inputs. The data-free routers'
                statistics are recorded in any case.
            callbacks: :class:`Callback` objects.
            progress: show progress bars (on a terminal).
            precision: ``"bf16"`` or ``"fp16"`` to run the training steps under ``torch.autocast``
                with that dtype (fp16 with a gradient scaler), ``None`` for the network's dtype.
                Evaluation (the monitored metric, pruning decisions) runs in the network's dtype,
                and the guarantee holds for the outputs in the dtype a task was evaluated in.
            compile: compile each training step's forward pass and loss (and so their backward)
                with ``torch.compile``: ``True`` for its defaults, or a dict of its arguments
                (``{"mode": "max-autotune"}``, ``{"backend": "aot_eager"}``). The optimizer step,
                the guard's restores and every evaluation stay eager. See docs/scaling.md.

        Returns:
            a :class:`TaskReport`.

        Example::

            report = net.train_task(0, train_loader, num_classes=10,
                                    optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                                    epochs=3, pruning=eidetic.Pruning(method="l1", step=0.2))
            print(report)
        """
        self._check_new_task(task)
        _check_int("num_classes", num_classes, 1)
        _check_int("epochs", epochs, 0)
        _check_int("memory", memory, 0)
        if early_stopping is not None:
            _check_int("early_stopping", early_stopping, 1)
        _check_precision(precision)
        compile_options = _compile_options(compile)
        if pruning is not None and not isinstance(pruning, (Pruning, GracefulPruning)):
            raise TaskError(f"pruning must be an eidetic.Pruning, an eidetic.GracefulPruning or None, got "
                            f"{type(pruning).__name__}")
        if isinstance(pruning, Pruning):
            pruning.share(task)  # refuses a task past Pruning(tasks=...) before any training
        train_loader = as_loader(train_data, batch_size, shuffle=True, name="train_data")
        val_loader = None if val_data is None else as_loader(val_data, batch_size, shuffle=False, name="val_data")
        if pruning is not None and pruning.monitor == "val" and val_loader is None:
            raise TaskError("Pruning(monitor='val') needs val_data")
        example = first_inputs(train_loader, "train_data")
        report = TaskReport(task=task, num_classes=num_classes)
        start = time.perf_counter()
        with transaction(self, example, optimizer) as tx:
            if self._eidetic.routers.learned.fitted_tasks:  # the router holds the free units: free them
                self._release_router()
            head = self.heads.add(self._eidetic.graph.feature_dim, num_classes, like=self._reference_tensor())
            self._begin_task(task, head)
            self._synchronise()  # the new head and the recycled units, drawn at random on each rank

            def build() -> tuple[TaskSession, object]:
                session = self._session(task, head, train_loader, val_loader, tx.optimizer(self._trainable(head)),
                                        loss_fn, metric, clip_grad_norm, callbacks, progress, l1, precision,
                                        compile_options)
                return session, scheduler(session.optimizer) if scheduler is not None else None

            plan = Plan(build, report, epochs, early_stopping, pruning,
                        pruning.monitor if pruning is not None else "train", start)
            session = self._learn(plan)
            report.final_metric = session.monitored(plan.monitor)
            if val_loader is not None:
                report.val_metric = session.evaluate(val_loader, "val_data")
            if finish:
                report.units = self.freeze(task, train_loader, memory=memory)
                self.recycle()
            self._synchronise()
            report.free_units = self._eidetic.ownership.free_counts()
            report.parameters = self.parameter_count()
        report.seconds["total"] = time.perf_counter() - start
        report.seconds["finish"] = report.seconds["total"] - report.seconds["train"] - report.seconds["prune"]
        log.info("%s", report)
        return report

    def prune_until(
        self,
        task: int,
        train_data: Data,
        *,
        optimizer: OptimizerFactory | torch.optim.Optimizer,
        pruning: Pruning | GracefulPruning = Pruning(),
        val_data: Data | None = None,
        batch_size: int | None = None,
        loss_fn: Loss | None = None,
        metric: Metric | None = None,
        clip_grad_norm: float | None = None,
        callbacks: Sequence[Callback] = (),
        progress: bool = True,
        precision: str | None = None,
    ) -> list[PruneStep]:
        """Prune the open task ``task`` (see ``train_task(..., finish=False)``) until its metric
        would drop by more than the tolerance. Transactional like ``train_task``.

        Example::

            net.train_task(0, loader, num_classes=10, optimizer=make_opt, epochs=5,
                           pruning=None, finish=False)
            steps = net.prune_until(0, loader, optimizer=make_opt,
                                    pruning=eidetic.Pruning(method="taylor"))
            net.freeze(0)
            net.recycle()
        """
        if task != self.open_task:
            raise TaskError(f"task {task} is not open; prune_until works on the task left open by "
                            "train_task(..., finish=False)")
        _check_precision(precision)
        if not isinstance(pruning, (Pruning, GracefulPruning)):
            raise TaskError(f"pruning must be an eidetic.Pruning or an eidetic.GracefulPruning, got "
                            f"{type(pruning).__name__}")
        if pruning.monitor == "val" and val_data is None:
            raise TaskError(f"{type(pruning).__name__}(monitor='val') needs val_data")
        train_loader = as_loader(train_data, batch_size, shuffle=True, name="train_data")
        val_loader = None if val_data is None else as_loader(val_data, batch_size, shuffle=False, name="val_data")
        example = first_inputs(train_loader, "train_data")
        head = self.heads.head(task)
        with transaction(self, example, optimizer) as tx:
            session = self._session(task, head, train_loader, val_loader, tx.optimizer(self._trainable(head)),
                                    loss_fn, metric, clip_grad_norm, callbacks, progress, precision=precision)
            _, steps = prune(session, self._eidetic.layers, self._eidetic.graph, self._eidetic.ownership, pruning)
        return steps

    def freeze(self, task: int, data: Data | None = None, *, batch_size: int | None = None,
               memory: int = 200) -> dict[str, int]:
        """Freeze the open task: its alive units and its head become constant forever, and their
        weights reading free units are cut to zero. Returns units frozen per group.

        With ``data`` (the task's training data), also record what the routers need: the
        task's feature and input statistics and ``memory`` exemplars (``train_task`` does this
        for you; :meth:`recycle` then refits the learned router).

        Example::

            frozen = net.freeze(0, train_loader)   # {"fc1": 37, "fc2": 52}
        """
        if task != self.open_task:
            raise TaskError(f"task {task} is not open; freeze() applies to the task left open by "
                            "train_task(..., finish=False)")
        _check_int("memory", memory, 0)
        loader = None if data is None else as_loader(data, batch_size, shuffle=False, name="data")
        state = self._eidetic
        state.masks.freeze(task, self._row_owner)
        counts = phases.freeze(state.layers, state.graph, state.ownership, task, self.heads.head(task))
        self.heads.freeze(task, head_columns(state.graph, state.ownership.masks("frozen")))
        state.frozen_tasks += 1
        self._make_guard()
        if loader is not None:
            prediction.remember(self, task, loader, memory)
        return counts

    def recycle(self) -> int:
        """Re-initialise every free unit (pruned or unused) for the next task, then, when every
        finished task has exemplars, fit the learned router through them (:meth:`fit_router`);
        returns how many units were re-initialised.

        Example::

            net.freeze(0, train_loader)
            net.recycle()
        """
        if self.open_task is not None:
            raise TaskError(f"task {self.open_task} is still open: freeze({self.open_task}) it first")
        self._require_graph()
        count = self._release_router()
        self._refit_router()
        return count

    def _release_router(self) -> int:
        """Re-initialise the free units and forget the learned router trained with them."""
        state = self._eidetic
        state.routers.learned.clear()
        return phases.recycle(state.layers, state.graph, state.ownership)

    def _refit_router(self) -> None:
        """Fit the learned router on the exemplars if it is not fitted and every task has some."""
        routers = self._eidetic.routers
        tasks = self._eidetic.frozen_tasks
        if routers.learned.fitted_tasks < tasks and routers.memory.complete(tasks):
            prediction.fit_router(self)

    # ------------------------------------------------------------------ widening

    def widen(self, units: dict[str, int]) -> dict[str, int]:
        """Add free units to unit groups, between tasks; returns the new size of every group.

        ``units`` maps group keys (``net.graph.keys()``, the first layer producing the group, as
        :meth:`capacity` and ``graph.describe()`` show them) to how many units to add. Every layer
        producing the group grows (weight rows, biases, BatchNorm affine and fresh statistics, all
        producers of a residual stream, the gate rows of a recurrent layer, whose hidden size grows
        by the same number in every layer and direction), every layer reading it gets input columns, zero in the
        rows of frozen units. Every finished task's outputs stay bitwise identical; the free
        units, new and old, are re-initialised for the next task. Parameters are replaced by
        bigger ones: pass ``train_task`` an optimizer factory (an optimizer instance holding the
        old parameters is refused).

        Example::

            net.widen({"fc1": 16, "conv2": 8})     # {"conv1": 32, "conv2": 72, "fc1": 144}
        """
        if self.open_task is not None:
            raise TaskError(f"task {self.open_task} is still open: freeze({self.open_task}) and recycle() "
                            "before widening")
        sizes = self._widen(units, recycle=True)
        self._refit_router()
        return sizes

    def _widen(self, units: dict[str, int], *, recycle: bool = False) -> dict[str, int]:
        """Widen (see :meth:`widen`), also inside a task: there the widening joins the task's
        transaction, so a failing task undoes it. With ``recycle=False`` only the new units are
        initialised, and nothing the open task computes changes (the new units' outputs reach
        the old rows through zero columns)."""
        state = self._eidetic
        graph = self._require_graph()
        added = check_request(graph, units)
        if added:
            undo = Widening(self)
            with LayoutSensitiveCalls() as calls_before:
                before = self._finished_outputs()
            try:
                resized = self._resize(added)
                undo.unit_maps, undo.layouts = resized.unit_maps, resized.layouts
                if recycle:
                    phases.recycle(state.layers, state.graph, state.ownership)
                self._make_guard()
                with LayoutSensitiveCalls() as calls_after:
                    after = self._finished_outputs()
                sensitive = moved_calls(calls_before.seen, calls_after.seen)
                if sensitive:
                    raise GraphError(
                        f"widening {added} would reshape the input of {'; '.join(sensitive)} in the forward pass, "
                        "whose CPU kernel rounds an element differently depending on where it sits in the tensor, "
                        "so a finished task's outputs could change in their last bits on some batches; nothing was "
                        "changed. Use a ReLU-family, tanh or hardswish activation after the layers you widen, or do "
                        "not widen that group.")
                moved = [k for k, (a, b) in enumerate(zip(before, after)) if not torch.equal(a, b)]
                if moved:
                    raise GraphError(
                        f"widening {added} would change the outputs of task(s) {moved} in their last bits, so nothing "
                        "was changed. The usual cause is an element-wise function whose CPU kernel rounds an element "
                        "differently depending on where it sits in the tensor (sigmoid, SiLU, ELU: their vectorised "
                        "and scalar paths differ), applied to a widened layer's output. Use a ReLU-family, tanh or "
                        "GELU activation there, or do not widen that group.")
            except BaseException:
                undo.restore()
                raise
            current = {id(p) for p in self.parameters()}
            for saved in undo.modules:
                for param in saved.parameters.values():
                    if param is not None and id(param) not in current:
                        state.replaced[id(param)] = weakref.ref(param)
            if state.undo is not None:
                state.undo.append(undo)
        return {g.key: g.size for g in state.graph}

    def _undo_widening(self) -> None:
        """Undo the last widening of the open task (``_widen`` inside ``train_task``): a mixin's
        growth step over its budget, or a return to an earlier, better attempt."""
        state = self._eidetic
        if not state.undo:
            raise TaskError("no widening of the open task to undo")
        state.undo.pop().restore()
        state.restored(self.parameters())

    def _keep_new_units(self, kept: dict[str, torch.Tensor]) -> Callable[[str, torch.Tensor], torch.Tensor]:
        """Keep, of the units that the open task's last widening added, those that ``kept``
        selects (``{group: mask over the group's units}``), and give the others back: the network
        ends as wide as if it had been widened by the kept units only, holding the wide network's
        values on them (see :mod:`eidetic.guarantee.narrowing`). The dropped units must not reach
        the open task's outputs (a mixin's gate at exactly 0). Returns a function narrowing a
        tensor laid out as body tensor ``"module.tensor"`` was, for a mixin's per-entry state."""
        state = self._eidetic
        if not state.undo:
            raise TaskError("no widening of the open task to narrow")
        to_wide, wide_graph = state.undo[-1].unit_maps, state.graph
        names = touched(wide_graph, kept)  # the others kept their tensors through the widening
        wide = {name: (spec.unit_count(m), spec.input_size(m), {t: getattr(m, t).detach().clone()
                                                                 for t in spec.tensor_names()})
                for name, (m, spec) in state.layers.items() if name in names}
        head = self.heads.head(self.num_tasks - 1)
        wide_head = head.weight.detach().clone()
        counts = {key: int((mask & new_units(wide_graph[key].size, to_wide[key])).sum()) for key, mask in kept.items()}
        self._undo_widening()
        to_narrow = {}
        if any(counts.values()):
            self._widen(counts)
            to_narrow = state.undo[-1].unit_maps
        maps = narrow_maps(state.graph, wide_graph, to_wide, to_narrow, kept)
        layouts = {}
        with torch.no_grad():
            for name in names:
                module, spec = state.layers[name]
                units, inputs, tensors = wide[name]
                out_map = position_map(state.graph, wide_graph, name, maps, spec.unit_count(module), units, "outs")
                in_map = position_map(state.graph, wide_graph, name, maps, spec.input_size(module), inputs, "ins")
                for tensor_name, value in tensors.items():
                    layout = layouts[f"{name}.{tensor_name}"] = spec.grown_layout(tensor_name, out_map, units, in_map,
                                                                                  inputs)
                    getattr(module, tensor_name).copy_(shrunk(value, layout))
            features = position_map(state.graph, wide_graph, FEATURES, maps, state.graph.feature_dim,
                                    wide_graph.feature_dim, "ins")
            head.weight.copy_(wide_head[:, features.to(wide_head.device)])
        self._make_guard()
        return lambda name, tensor: shrunk(tensor, layouts[name]) if name in layouts else tensor

    def _resize(self, added: dict[str, int]) -> Resized:
        state = self._eidetic
        graph, layers = state.graph, state.layers
        names = [n for n in touched(graph, added) if layers[n][1].input_size(layers[n][0])]  # layers reading units
        frozen = state.ownership.masks("frozen")
        eras = {n: out_mask(graph, n, frozen, layers[n][1].unit_count(layers[n][0])) for n in names}
        with paused():
            resized = resize_body(layers, graph, state.ownership, added,
                                  lambda: discover(self, self.forward, self._example(), exclude=[self.heads]))
        for name in names:
            covered = state.eras.covered(name)
            if covered is not None:
                eras[name][covered] = False
            for era in state.eras.records.get(name, []):
                era.follow(resized.out_maps[name], resized.in_maps[name])
            tasks = (state.eras.first_task(name), state.frozen_tasks)
            # an era for the units frozen since the last one, or for masked tasks that ended at this shape
            if eras[name].any() or any(state.masks.has(k) for k in range(*tasks)):
                _, spec = layers[name]
                sizes = {a: resized.saved[name].attributes[a] for a in spec.size_names()}
                state.eras.add(name, Era(sizes, resized.out_maps[name], resized.in_maps[name],
                                         eras[name].nonzero().flatten(), tasks))
        state.graph, state.layers, state.ownership = resized.graph, resized.layers, resized.ownership
        for name, layout in resized.layouts.items():
            state.masks.widen(name, layout, self._row_owner)
        self.heads.widen(resized.features, resized.graph.feature_dim, state.frozen_tasks)
        state.routers.widen(resized.features, resized.graph.feature_dim)
        phases.reinitialize(state.layers, state.graph, resized.new_units)
        return resized

    def _finished_outputs(self) -> list[torch.Tensor]:
        """Every finished task's logits on the synthetic example, in evaluation mode."""
        if not self._eidetic.frozen_tasks:
            return []
        training = self.training
        self.eval()
        try:
            with torch.no_grad():
                x = self._example()
                return [self.logits(x, k) for k in range(self._eidetic.frozen_tasks)]
        finally:
            self.train(training)

    # ------------------------------------------------------------------ task masks (for mixins)

    def _learn(self, plan: Plan) -> TaskSession:
        """Train and prune the task in training (called by ``train_task`` inside its transaction,
        after :meth:`_begin_task`); returns the session the task ended in. Mixins override it to
        change how a task is learned (attempts, growth), calling ``plan.build()`` for a session
        over the network's current parameters."""
        session, scheduler = plan.build()
        plan.report.epochs = session.fit(plan.epochs, plan.early_stopping, scheduler)
        plan.report.seconds["train"] = time.perf_counter() - plan.start
        if plan.pruning is not None:
            plan.report.reference_metric, plan.report.prune_steps = prune(
                session, self._eidetic.layers, self._eidetic.graph, self._eidetic.ownership, plan.pruning)
        plan.report.seconds["prune"] = time.perf_counter() - plan.start - plan.report.seconds["train"]
        return session

    def _synchronise(self) -> None:
        """Under ``torch.distributed``, give every rank rank 0's parameters, buffers and router
        records (what each rank drew at random, or recorded from its own shard)."""
        if not distributed.active():
            return
        distributed.broadcast_module(self)
        routers = self._eidetic.routers
        routers.load(distributed.broadcast_object(routers.state()))
        routers.apply(lambda t: t.to(self._device()))

    def _begin_task(self, task: int, head: nn.Linear) -> None:
        """Called by ``train_task`` once the task's head exists, before training: the place for a
        mixin to set the task's masks (:meth:`_set_mask`), release entries or widen."""

    def _set_mask(self, name: str, mask: Mask) -> None:
        """Give the open task a mask over body parameter ``name`` (``"fc1.weight"``): a tensor
        that broadcasts against it (element-wise, per kernel, per unit) or a function returning
        one, binary by the time the task ends. See :mod:`eidetic.guarantee.masks`."""
        task = self._open_or_new()
        params = self._body_parameters()
        if name not in params:
            raise TaskError(f"'{name}' is not a parameter of the body; masks go on {sorted(params)}")
        self._eidetic.masks.set(task, name, mask, params[name])

    def _release(self, name: str, entries: torch.Tensor) -> None:
        """Let the open task train ``entries`` (a boolean mask) of frozen parameter ``name``:
        refused unless every finished task that reads them masks them out."""
        task = self._open_or_new()
        state = self._eidetic
        if name not in self._body_parameters():
            raise TaskError(f"'{name}' is not a parameter of the body")
        state.masks.release(task, name, entries, self._row_owner, state.frozen_tasks)
        if state.guard is not None:  # a new guard: the transaction's snapshot keeps the old one, to roll back with
            self._make_guard()

    def _open_or_new(self) -> int:
        if self.num_tasks == self._eidetic.frozen_tasks:
            raise TaskError("masks belong to the task in training; set them from _begin_task()")
        return self.num_tasks - 1

    def _body_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if not n.startswith("heads.")}

    def _row_owner(self, name: str) -> torch.Tensor:
        """The owner of the unit that each entry of body tensor ``name`` belongs to."""
        state = self._eidetic
        module_name, _, tensor_name = name.rpartition(".")
        module, spec = state.layers[module_name]
        return row_owners(state.graph, state.ownership.owner, module_name, module, spec, tensor_name)

    # ------------------------------------------------------------------ diagnostics

    def capacity(self) -> Capacity:
        """Per layer: units in total, free, owned by each task, and reused by each task (units
        of earlier tasks that a task's own units or head read through non-zero weights).

        Example::

            print(net.capacity())
        """
        state = self._eidetic
        heads = [self.heads.reads(k, state.graph.feature_dim) for k in range(state.frozen_tasks)]
        return measure_capacity(state.layers, self._require_graph(), state.ownership, heads)

    def parameter_count(self) -> int:
        """Number of parameter entries of the network: the body and every task's head (task
        masks are not parameters; they take 1 bit per entry, see ``mask_bits()``).

        Example::

            net.parameter_count()                  # 201,482
        """
        return sum(p.numel() for p in self.parameters())

    def mask_bits(self) -> int:
        """Bits that the finished tasks' masks take in a checkpoint (1 per entry).

        Example::

            net.parameter_count() + net.mask_bits() / 32   # the size in float32 parameters
        """
        masks = self._eidetic.masks.masks
        return sum(m.numel() for k in range(self._eidetic.frozen_tasks) for m in masks.get(k, {}).values()
                   if isinstance(m, torch.Tensor))

    # ------------------------------------------------------------------ persistence

    def get_extra_state(self) -> dict:
        return checkpoint.extra_state(self)

    def set_extra_state(self, extra: dict) -> None:
        checkpoint.load_extra_state(self, extra)

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        self._eidetic.routers.apply(fn)
        if self._eidetic.graph is not None:
            self._make_guard()  # frozen copies follow the tensors to their new device or dtype
        return result

    # ------------------------------------------------------------------ internals

    def _require_graph(self) -> UnitGraph:
        if self._eidetic.graph is None:
            raise GraphError("the network has no unit graph yet: train a task or call setup(example)")
        return self._eidetic.graph

    def _reference_tensor(self) -> torch.Tensor:
        for p in self.parameters():
            return p
        raise GraphError(f"{type(self).__name__} has no parameters to train")

    def _device(self) -> torch.device:
        return self._reference_tensor().device

    def _example(self) -> torch.Tensor:
        state = self._eidetic
        return checkpoint.synthetic_example(state.input_shape, state.input_dtype, self._device())

    def _check_new_task(self, task) -> None:
        if not isinstance(task, int) or isinstance(task, bool) or task < 0:
            raise TaskError(f"task must be a non-negative int, got {task!r}")
        if self.open_task is not None:
            raise TaskError(f"task {self.open_task} is still open: call freeze({self.open_task}) and "
                            "recycle() before training another task")
        if task < self.num_tasks:
            raise TaskError(f"task {task} was already trained and is frozen; train a new task with "
                            f"id {self.num_tasks}")
        if task != self.num_tasks:
            raise TaskError(f"tasks are trained in order 0, 1, 2, ...: the next task is "
                            f"{self.num_tasks}, not {task}")

    def _trainable(self, head: nn.Module) -> list[nn.Parameter]:
        frozen = self.heads.frozen_modules(self._eidetic.frozen_tasks)
        frozen_heads = {id(p) for h in frozen if h is not head for p in h.parameters()}
        return [p for p in self.parameters() if id(p) not in frozen_heads]

    def _make_guard(self, head: nn.Module | None = None) -> Guard:
        state = self._eidetic
        features = head_columns(state.graph, state.ownership.masks("frozen"))
        guard = Guard(state.layers, state.graph, state.ownership,
                      self.heads.frozen_slices(state.frozen_tasks, features), head, state.masks.released)
        state.norms.attach(guard)
        state.eras.attach(state.layers)
        state.guard = guard
        return guard

    def _session(self, task, head, train_loader, val_loader, optimizer, loss_fn, metric, clip_grad_norm,
                 callbacks, progress, l1=None, precision=None, compile_options=None) -> TaskSession:
        state = self._eidetic
        penalty = None if l1 is None else L1Penalty(state.layers, state.graph, state.ownership, l1)
        return TaskSession(
            body=self, head=head, task=task, num_classes=head.out_features, guard=self._make_guard(head),
            train_loader=train_loader, val_loader=val_loader, optimizer=optimizer,
            loss_fn=loss_fn or F.cross_entropy, metric=metric or accuracy, check_labels=loss_fn is None,
            input_shape=state.input_shape, clip_grad_norm=clip_grad_norm, callbacks=callbacks,
            progress=progress, penalty=penalty, features=lambda x: self._features(x, task), precision=precision,
            compile=compile_options,
        )

    def _forget_graph(self) -> None:
        state = self._eidetic
        if state.norms is not None:
            state.norms.remove()
        if state.inputs is not None:
            state.inputs.remove()
        state.eras.remove(state.layers)
        self._eidetic = State()


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


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise TaskError(f"{name} must be an int >= {minimum}, got {value!r}")


_COMPILE_ARGUMENTS = ("fullgraph", "dynamic", "backend", "mode", "options", "disable")


def _compile_options(compile) -> dict | None:
    """``train_task``'s ``compile=`` as ``torch.compile`` keyword arguments, ``None`` for eager."""
    if compile is False:
        return None
    if compile is True:
        return {}
    if not isinstance(compile, dict):
        raise TaskError(f"compile={compile!r}: use False, True or a dict of torch.compile's arguments")
    unknown = sorted(set(compile) - set(_COMPILE_ARGUMENTS))
    if unknown:
        raise TaskError(f"compile={compile!r}: {unknown} are not torch.compile arguments; use {_COMPILE_ARGUMENTS}")
    backend = compile.get("backend", "inductor")
    if isinstance(backend, str) and backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise TaskError(f"compile={compile!r}: unknown torch.compile backend {backend!r}; choose among "
                        f"{torch._dynamo.list_backends(exclude_tags=())}")
    return dict(compile)


def _check_precision(precision) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise TaskError(f"precision={precision!r}: use None (the network's dtype), 'bf16' or 'fp16'")
