"""Export for deployment: a plain ``torch.export`` module holding only the units its tasks use.

:meth:`ContinualNetwork.export` builds, for each *view* of the body (the shared pass, plus one
per exported task with a mask, whose frozen weights it reads through that mask), a copy of the
body with the units no exported task reads removed: free units, pruned units and units of later
tasks. A unit of task ``j`` is read by task ``k`` only if ``j <= k``, so a view for tasks up to
``k`` keeps the units owned by tasks ``0..k``; the columns that read removed units are zero in
every kept row (the guarantee's cut), so removing them changes no kept output beyond float
rounding. The heads keep the columns of the kept features, and a router is traced with them.

The copies lose eidetic's hooks (the eras that replay old shapes and the aligned inputs exist
only for bitwise equality) and the result is traced by ``torch.export`` into a ``GraphModule``
of plain torch operations: it imports nothing from eidetic, and matches ``logits(x, task)``
within float tolerance, not bitwise (the matrix products run at other shapes).

Layers eidetic cannot resize keep their full width, and so do the unit groups they produce or
read: recurrent layers (one hidden size for every layer and direction), grouped convolutions
and registered layers without ``size_attributes``; so do the channels of BatchNorm or depthwise
layers applied to the raw input (they are the input's channels).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GraphError, TaskError
from ..graph import FEATURES
from ..graph.recurrent import RecurrentSpec
from ..guarantee.eras import unblocked
from ..guarantee.ownership import FREE
from ..guarantee.slices import in_mask, out_positions
from ..state import Network, example, features
from .predict import fit_router
from .routing import router_scores

UnitMasks = dict[str, torch.Tensor]

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
               "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
               "_load_state_dict_post_hooks")


def export(net: Network, tasks: int | Sequence[int] | None = None, router=None) -> nn.Module:
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
    state = net._eidetic
    frozen = state.frozen_tasks
    if frozen == 0:
        raise TaskError("export() needs at least one finished task")
    chosen = _chosen_tasks(tasks, frozen)
    scorer = None if router is None else state.routers.choose(None if router == "auto" else router, frozen)
    if scorer is state.routers.learned and scorer.fitted_tasks < frozen:
        fit_router(net)  # as predict does: fitted when first needed after new tasks
    masked = [k for k in chosen if state.masks.has(k)]
    shared_tasks = list(range(frozen)) if scorer is not None else [k for k in chosen if k not in masked]
    views: list[tuple[int | None, list[int]]] = []  # (masked task or None, tasks whose logits it gives)
    if shared_tasks:
        views.append((None, shared_tasks))
    views += [(k, [k]) for k in masked]
    deployment = Deployment(net, chosen, views, scorer, single=isinstance(tasks, int))
    deployment.eval()
    sample = example(net)
    with torch.no_grad():
        _check_views(net, deployment, sample)
        return _traced(deployment, sample)


def _chosen_tasks(tasks, frozen: int) -> list[int]:
    if (not isinstance(tasks, (int, Sequence)) and tasks is not None) or isinstance(tasks, (bool, str)):
        raise TaskError(f"export(tasks={tasks!r}): give a task id, a sequence of task ids, or None (every finished "
                        "task)")
    chosen = [tasks] if isinstance(tasks, int) else list(range(frozen)) if tasks is None else list(tasks)
    for k in chosen:
        if not isinstance(k, int) or not 0 <= k < frozen:
            raise TaskError(f"export(tasks=...): task {k!r} is not a finished task; finished tasks are 0..{frozen - 1}")
    if not chosen or len(set(chosen)) != len(chosen):
        raise TaskError(f"export(tasks={tasks!r}): give each task once, and at least one")
    return chosen


class Deployment(nn.Module):
    """The module ``torch.export`` traces: one pruned body per view, the kept heads, a router."""

    def __init__(self, net: Network, tasks: list[int], views: list[tuple[int | None, list[int]]],
                 scorer, single: bool) -> None:
        super().__init__()
        self.tasks, self.single, self.scorer = tasks, single, scorer
        self.bodies = nn.ModuleList()
        self.views = [mask_task for mask_task, _ in views]
        self.heads = nn.ModuleDict()
        self.columns: list[torch.Tensor] = []  # per view: the feature positions its body gives
        self.checked: list[torch.Tensor] = []  # per view: which of those are its tasks' own units
        self.source: dict[int, tuple[int, str]] = {}  # task: (view, head key)
        for v, (mask_task, view_tasks) in enumerate(views):
            last = max(view_tasks) if mask_task is not None or scorer is None else None
            free = mask_task is None and getattr(scorer, "reads_free_units", False)
            body, columns = _pruned_body(net, _kept_units(net, last, free), mask_task)
            self.bodies.append(body)
            self.columns.append(columns)
            own = _kept_inputs(net, FEATURES, net.graph.feature_dim, _owned_units(net, last, free))
            self.checked.append(torch.isin(columns, own).nonzero().flatten())
            for k in view_tasks:
                self.heads[f"{v}_{k}"] = _pruned_head(net, k, columns)
                if k in tasks and (k not in self.source or mask_task is not None):
                    self.source[k] = (v, f"{v}_{k}")
        self.feature_dim = net.graph.feature_dim
        self.frozen = net._eidetic.frozen_tasks

    def forward(self, x: torch.Tensor):
        features = [body(x).flatten(1) for body in self.bodies]
        if self.scorer is None:
            logits = {k: self.heads[key](features[v]) for k, (v, key) in self.source.items()}
            return logits[self.tasks[0]] if self.single else tuple(logits[k] for k in self.tasks)
        full = features[0].new_zeros((features[0].shape[0], self.feature_dim))
        full = full.index_copy(1, self.columns[0].to(full.device), features[0])
        shared = [self.heads[f"0_{k}"](features[0]) for k in range(self.frozen)]
        scores = router_scores(self.scorer, full, shared, x)[:, self.tasks]
        own = []
        for k in self.tasks:  # a masked task's logits from its own body, the others from the shared pass
            v, key = self.source[k]
            own.append(shared[k] if v == 0 else self.heads[key](features[v]))
        return _routed(scores, own, self.tasks)


def _routed(scores: torch.Tensor, logits: list[torch.Tensor], tasks: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(task, label)``: the best-scoring task of each input and its class there."""
    pick = scores.argmax(dim=1)
    widest = max(out.shape[1] for out in logits)
    padded = torch.stack([F.pad(out, (0, widest - out.shape[1]), value=-math.inf) for out in logits], dim=1)
    label = padded.gather(1, pick[:, None, None].expand(-1, 1, widest)).squeeze(1).argmax(dim=1)
    return torch.tensor(tasks, device=pick.device)[pick], label


def _owned_units(net: Network, last: int | None, free: bool = False) -> UnitMasks:
    """Units owned by tasks ``0..last`` (every finished task for ``None``; with ``free``, the
    free units too: the learned router reads them)."""
    owned = {}
    for key, owner in net._eidetic.ownership.owner.items():
        mine = (owner != FREE) | free
        owned[key] = mine if last is None else mine & (owner <= last)
    return owned


def _kept_units(net: Network, last: int | None, free: bool = False) -> UnitMasks:
    """The :func:`_owned_units`, and every unit of a group that a layer eidetic cannot resize
    produces or reads, or that only pass-through layers (BatchNorm, depthwise convolutions)
    produce from the raw input."""
    state = net._eidetic
    keep = _owned_units(net, last, free)
    for name, (_module, spec) in state.layers.items():
        if _resizable(spec):
            continue
        for group, _ in net.graph.out_slots(name) + net.graph.in_slots(name):
            keep[group.key] = torch.ones_like(keep[group.key])
    for group in net.graph:  # BatchNorm or depthwise layers on the raw input: its channels are the units
        if all(state.layers[slot.module][1].passthrough for slot in group.outs):
            keep[group.key] = torch.ones_like(keep[group.key])
    return keep


def _resizable(spec) -> bool:
    return spec.size_attributes is not None and not isinstance(spec, RecurrentSpec)


def _kept_inputs(net: Network, module: str, size: int, keep: UnitMasks) -> torch.Tensor:
    """Sorted input positions of ``module`` (``FEATURES`` for the heads) that read a kept unit or
    no unit at all (the raw input)."""
    everything = {key: torch.ones_like(mask) for key, mask in keep.items()}
    reads_units = in_mask(net.graph, module, everything, size)
    return (in_mask(net.graph, module, keep, size) | ~reads_units).nonzero().flatten()


def _pruned_body(net: Network, keep: UnitMasks, mask_task: int | None) -> tuple[nn.Module, torch.Tensor]:
    """A hook-free copy of the body with only the ``keep`` units (and ``mask_task``'s masks
    applied to its weights), and the feature positions it outputs."""
    state = net._eidetic
    body = _stripped_copy(net)
    masks = state.masks.values(mask_task) if mask_task is not None else {}
    for name, (module, spec) in state.layers.items():
        target = body.get_submodule(name)
        rows = out_positions(net.graph, name, keep)
        inputs = _kept_inputs(net, name, spec.input_size(module), keep)
        for tensor_name in spec.tensor_names():
            tensor = getattr(module, tensor_name).detach()
            mask = masks.get(f"{name}.{tensor_name}")
            if mask is not None:
                tensor = tensor * mask.to(device=tensor.device, dtype=tensor.dtype)
            if _resizable(spec):
                tensor = spec.sliced(tensor_name, tensor, rows, inputs)
            _put(target, tensor_name, tensor.clone())
        if _resizable(spec):
            for attribute, role in spec.size_attributes:
                setattr(target, attribute, len(rows) if role == "out" else len(inputs) // spec.groups)
    return body, _kept_inputs(net, FEATURES, net.graph.feature_dim, keep)


def _stripped_copy(net: Network) -> nn.Module:
    """A deep copy of the body without the task heads, eidetic's state or any hook."""
    memo = {id(net._eidetic): None, id(net.heads): None}
    body = copy.deepcopy(net, memo)
    for module in body.modules():
        for hooks in _HOOK_DICTS:
            getattr(module, hooks, {}).clear()
        for attribute in [a for a in vars(module) if a.startswith("_eidetic_")]:
            delattr(module, attribute)
        unblocked(module)
    for module in body.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                module._parameters[name] = nn.Parameter(param.detach().clone(), requires_grad=False)
    return body


def _put(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[name] = tensor
    if hasattr(module, "_init_flat_weights"):  # a recurrent module keeps its own list of weights
        module._init_flat_weights()


def _pruned_head(net: Network, task: int, columns: torch.Tensor) -> nn.Linear:
    """Task ``task``'s head reading only the feature positions ``columns``."""
    heads = net.heads
    layer = heads.head(task)
    weight = layer.weight.detach()
    inputs = getattr(heads, f"inputs_{task}", None)
    mask = getattr(heads, f"mask_{task}", None) if heads.shared else None
    if mask is not None:
        weight = weight * (mask if inputs is None else mask.index_select(0, inputs)).to(weight.dtype)
        if inputs is not None:
            weight = weight.index_select(1, inputs)
    if inputs is not None:  # a head from before a widening: its columns sit at ``inputs`` today
        full = weight.new_zeros((weight.shape[0], net.graph.feature_dim))
        weight = full.index_copy(1, inputs.to(weight.device), weight)
    head = nn.Linear(len(columns), weight.shape[0], dtype=weight.dtype, device=weight.device)
    head.weight = nn.Parameter(weight.index_select(1, columns.to(weight.device)).clone(), requires_grad=False)
    head.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
    return head


def _check_views(net: Network, deployment: Deployment, example: torch.Tensor) -> None:
    """Each pruned body gives the network's features at the positions of its tasks' own units,
    within float tolerance (a forward that hard-codes a width, or an operation that mixes units,
    would not). Units kept only because their layer cannot be resized (a recurrent layer's free
    units) are not compared: no exported head reads them, and in a masked task's view the
    network computes them at the shape the layer had when that task ended."""
    was_training = net.training
    net.eval()
    try:
        for body, columns, checked, mask_task in zip(deployment.bodies, deployment.columns, deployment.checked,
                                                     deployment.views):
            try:
                got = body(example).flatten(1)
            except RuntimeError as error:
                raise GraphError(f"export: the pruned body fails on the example input ({error}); does forward "
                                 "hard-code a width (view(-1, n))? Use flatten(1)") from error
            if got.shape[1] != len(columns):
                raise GraphError(f"export: the pruned body gives {got.shape[1]} features where the kept units "
                                 f"give {len(columns)}; does forward hard-code a width (view(-1, n))? Use "
                                 "flatten(1)")
            full = net(example) if mask_task is None else features(net, example, mask_task)
            expected = full.flatten(1).index_select(1, columns[checked].to(full.device))
            got = got.index_select(1, checked.to(got.device))
            scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
            if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * scale):
                difference = float((got - expected).abs().max())
                raise GraphError(f"export: the pruned body's features differ from the network's by {difference:.3g}; "
                                 "an operation in forward mixes units that the unit table keeps apart")
    finally:
        net.train(was_training)


def _traced(deployment: Deployment, example: torch.Tensor) -> nn.Module:
    """``deployment`` traced by ``torch.export`` with a dynamic batch size."""
    batch = torch.export.Dim("batch")
    with torch.no_grad():  # one eager call first: the routers build their cached constants from real tensors
        deployment(example)
    try:
        with warnings.catch_warnings():  # recurrent modules re-list their weights while traced: harmless
            warnings.filterwarnings("ignore", message="The tensor attributes .*_flat_weights")
            program = torch.export.export(deployment, (example,), dynamic_shapes=({0: batch},))
    except Exception as error:  # torch.export raises many types; say which step failed and why
        raise GraphError(f"export: torch.export could not trace the pruned network ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}). The forward must be traceable "
                         "by torch.export and must not fix the batch size (use x.shape[0], not a constant)") from error
    return program.module()
