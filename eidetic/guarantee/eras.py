"""Widened layers computed so that every frozen unit keeps its bits.

A matrix product's rounding depends on its shape: the kernels of ``F.linear`` and ``F.conv2d``
block and vectorise the sum differently for another number of inputs or outputs, so a frozen
unit whose row gains zero columns, or whose layer gains rows, can change in its last bit (on a
CPU with MKL, about half the shapes we tried did; computing a subset of a layer's rows changes
bits as often). Zero entries alone cannot keep the guarantee across
:meth:`~eidetic.ContinualNetwork.widen`.

So when a layer that reads units (a Linear layer, a convolution) is widened while it has frozen
units, it records an **era**: its shape before the call, where that shape's units and inputs now
sit, and which of those units were frozen. Eras are replayed in one of two ways:

* **Blocks** (layers whose spec is ``additive``: ``nn.Linear`` and ungrouped convolutions). The
  layer's forward is computed in blocks that keep their shapes forever: the units of the oldest
  era at that era's shape on its inputs, then, for each later widening, the units it added on the
  inputs the layer had then, and for the units that were not frozen at that widening the
  contribution of the inputs it added, summed on in order. Every unit is computed once, at a shape
  that never changes after it is frozen, and the whole costs about what the layer born at its
  present width costs (``benchmarks/widen.py``). Frozen units skip the contributions of inputs
  added after they froze: those weights are cut to zero.
* **Replay** (other layers: recurrent ones, and layers loaded from checkpoints of eidetic before
  blocks). A forward hook computes, for every era, the layer at the era's shape on the era's
  inputs, and writes the frozen units' outputs from it, on top of the whole layer: about one more
  pass of the layer's old shape per era.

Frozen rows never change, so a replayed era's weights are cached copies of them, made when the era
is created and again after a load or a move to another device. Every computation is recorded by
autograd, so gradients are those of what the forward computes.

Layers that compute each unit on its own (BatchNorm, depthwise convolutions, embeddings) do not
need eras: their per-unit results do not depend on the number of units.

The rounding of a matrix product also depends on where its input sits in memory (MKL's kernels
take other paths for an input that does not start on a 64-byte boundary, such as the view
``h_n[-1]`` of a recurrent layer's final state), and widening moves such views. So every layer
that reads units, from set-up on, is given its input as a fresh aligned, contiguous tensor when
it is not one already (:class:`AlignedInputs`; a copy only for such views), and an era's input
is one too.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..graph import LayerSpec
from ..graph.layers import substituted
from .masks import active

_ATTR = "_eidetic_eras"


@dataclass
class Era:
    """One earlier shape of a layer.

    Attributes:
        sizes: the layer's size attributes then (``in_features``, ``out_channels``...).
        rows: for each unit position then, its position now.
        inputs: for each input position then, its position now.
        frozen: unit positions (then) whose outputs this era provides (replay), or that were
            frozen at the widening (blocks).
        tasks: ``(first, stop)``: the tasks that ended while the layer had this shape (a masked
            pass of one of them computes the layer at this shape, every unit of it; replay only).
        open: blocks only: the positions now of the units then that were not frozen at the
            widening, which read the inputs it added; ``None`` for a replayed era.
    """

    sizes: dict[str, int]
    rows: torch.Tensor
    inputs: torch.Tensor
    frozen: torch.Tensor
    tasks: tuple[int, int] = (0, 0)
    open: torch.Tensor | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def blocks(self) -> bool:
        """Whether the layer is computed in blocks (else this era is replayed)."""
        return self.open is not None

    def follow(self, out_map: torch.Tensor, in_map: torch.Tensor) -> None:
        """The layer was widened again: move the positions along."""
        self.rows, self.inputs = out_map[self.rows], in_map[self.inputs]
        if self.open is not None:
            self.open = out_map[self.open]

    def cache(self, module: nn.Module, spec: LayerSpec) -> None:
        """Copy the era's slices of the layer's tensors (their frozen rows never change)."""
        self.tensors = {name: spec.era_tensor(spec.sliced(name, getattr(module, name).detach(), self.rows,
                                                          self.inputs).contiguous())
                        for name in spec.tensor_names()}

    def output(self, module: nn.Module, spec: LayerSpec, args: tuple, masks: dict[str, torch.Tensor] | None = None):
        """The layer at the era's shape on the era's inputs of ``args`` (with ``masks``, a task's
        masks over the layer's tensors at today's shape, applied to the era's tensors)."""
        x = spec.era_input(args, self.inputs, len(self.rows))
        tensors = self.tensors
        if masks:
            tensors = dict(tensors)
            for name, mask in masks.items():
                tensors[name] = tensors[name] * spec.sliced(name, mask, self.rows, self.inputs).to(tensors[name].dtype)
        with substituted(module, tensors, self.sizes):
            return type(module).forward(module, x)

    def state(self) -> dict:
        state = {"sizes": dict(self.sizes), "rows": self.rows, "inputs": self.inputs, "frozen": self.frozen,
                 "tasks": list(self.tasks)}
        if self.open is not None:
            state["open"] = self.open
        return state

    @classmethod
    def from_state(cls, state: dict) -> Era:
        """An era from :meth:`state`; one saved before blocks existed (no ``open``) is replayed."""
        return cls(dict(state["sizes"]), state["rows"], state["inputs"], state["frozen"], tuple(state["tasks"]),
                   state.get("open"))

    def copy(self) -> Era:
        return Era(dict(self.sizes), self.rows, self.inputs, self.frozen, self.tasks, self.open)


@dataclass
class _Step:
    """One block of a layer computed in blocks: its units at ``rows`` (positions now) on the inputs
    at ``inputs``; a ``base`` step gives those units their value (with the bias), a term adds to it.
    ``row_range`` and ``input_range`` are ``(start, length)`` where the positions are consecutive."""

    rows: torch.Tensor
    inputs: torch.Tensor
    base: bool
    row_range: tuple[int, int] | None = None
    input_range: tuple[int, int] | None = None


def _without(positions: torch.Tensor, taken: torch.Tensor) -> torch.Tensor:
    """``positions`` not in ``taken``, in their order."""
    return positions[~torch.isin(positions, taken)]


def _range(positions: torch.Tensor) -> tuple[int, int] | None:
    """``(start, length)`` if ``positions`` are consecutive and increasing, else ``None``."""
    if not len(positions):
        return None
    start = int(positions[0])
    return (start, len(positions)) if torch.equal(positions, torch.arange(start, start + len(positions))) else None


def _steps(records: list[Era], units: int, inputs: int, device: torch.device) -> list[_Step]:
    """The blocks of a layer with ``units`` and ``inputs`` positions now and the eras ``records``
    (oldest first), in the order they are computed and summed."""
    shapes = [(era.rows, era.inputs) for era in records] + [(torch.arange(units), torch.arange(inputs))]
    steps: list[_Step] = []
    before_rows = before_inputs = None
    for k, (rows, read) in enumerate(shapes):
        if k:  # widening k: the units open then read the inputs it added
            added = _without(read, before_inputs)
            if len(added) and len(records[k - 1].open):
                steps.append(_Step(records[k - 1].open, added, False))
        born = rows if before_rows is None else _without(rows, before_rows)
        if len(born):
            steps.append(_Step(born, read, True))
        before_rows, before_inputs = rows, read
    for step in steps:
        step.row_range, step.input_range = _range(step.rows), _range(step.inputs)
        step.rows, step.inputs = step.rows.to(device), step.inputs.to(device)
    return steps


def _part(tensor: torch.Tensor, dim: int, positions: torch.Tensor, span: tuple[int, int] | None) -> torch.Tensor:
    """``tensor``'s entries at ``positions`` along ``dim``: the tensor itself, a view of it where the
    positions are consecutive, else a copy."""
    if span is None:
        return tensor.index_select(dim, positions)
    return tensor if span == (0, tensor.shape[dim]) else tensor.narrow(dim, *span)


def _compute(module: nn.Module, name: str, x: torch.Tensor, weight: torch.Tensor,
             extra: dict[str, torch.Tensor | None]) -> torch.Tensor:
    """``module``'s forward with ``weight`` as its tensor ``name`` and ``extra`` (the bias; ``None``
    for none) in place of its own: what ``forward`` computes, called directly for the built-in layers."""
    if type(module) is nn.Linear:
        return F.linear(x, weight, extra.get("bias"))
    if type(module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        return module._conv_forward(x, weight, extra.get("bias"))
    with substituted(module, {name: weight, **extra}):
        return type(module).forward(module, x)


class Blocks:
    """The forward of a widened additive layer, computed in blocks (installed as its ``forward``)."""

    def __init__(self, module: nn.Module, spec: LayerSpec, steps: list[_Step]) -> None:
        self.module, self.spec, self.steps = module, spec, steps

    def __call__(self, x: torch.Tensor, *args, **kwargs):
        module, spec = self.module, self.spec
        if _paused or args or kwargs:
            return type(module).forward(module, x, *args, **kwargs)
        weight = getattr(module, spec.in_tensor)
        rows_dim, read_dim = spec.out_dim_of(spec.in_tensor), spec.in_unit_dim % x.dim()
        extra = [(name, dim, getattr(module, name)) for name, dim in spec.out_tensors if name != spec.in_tensor]
        out = None
        for step in self.steps:
            w = _part(_part(weight, spec.in_dim, step.inputs, step.input_range), rows_dim, step.rows, step.row_range)
            tensors = {name: aligned(_part(t, dim, step.rows, step.row_range)) if step.base and t is not None else None
                       for name, dim, t in extra}
            part = aligned(_part(x, read_dim, step.inputs, step.input_range))
            y = _compute(module, spec.in_tensor, part, aligned(w), tensors)
            if out is None:
                shape = list(y.shape)
                out_dim = spec.out_unit_dim % y.dim()
                shape[out_dim] = weight.shape[rows_dim]
                out = y.new_empty(shape)
            if step.row_range is not None:
                target = out.narrow(out_dim, *step.row_range)
                target.copy_(y) if step.base else target.add_(y)
            elif step.base:
                out.index_copy_(out_dim, step.rows, y)
            else:
                out.index_add_(out_dim, step.rows, y)
        return out


def _era_hook(module: nn.Module, args, output):
    eras = module.__dict__.get(_ATTR)
    if not eras or _paused:
        return None
    name, spec, records = eras
    masked = active()
    if masked is not None:  # a masked task's pass: the layer at the shape it had when the task ended
        task, masks = masked
        era = next((e for e in records if e.tasks[0] <= task < e.tasks[1]), None)
        if era is None:
            return None
        mine = {t: masks[f"{name}.{t}"] for t in spec.tensor_names() if f"{name}.{t}" in masks}
        every = torch.arange(len(era.rows))
        return spec.overwrite(output, era.output(module, spec, args, mine), era.rows, every)
    for era in records:
        if len(era.frozen):  # an era kept only for masked tasks has nothing to give the shared pass
            output = spec.overwrite(output, era.output(module, spec, args), era.rows[era.frozen], era.frozen)
    return output


_paused = False


@contextlib.contextmanager
def paused():
    """Switch the era hooks off (the probe measures the layers as they are)."""
    global _paused
    previous, _paused = _paused, True
    try:
        yield
    finally:
        _paused = previous


class Eras:
    """The eras of every widened layer of a network, and their forward hooks."""

    def __init__(self) -> None:
        self.records: dict[str, list[Era]] = {}
        self._handles: dict[str, torch.utils.hooks.RemovableHandle] = {}

    def add(self, name: str, era: Era) -> None:
        self.records.setdefault(name, []).append(era)

    def first_task(self, name: str) -> int:
        """The first task that ended at layer ``name``'s present shape."""
        records = self.records.get(name)
        return records[-1].tasks[1] if records else 0

    def covered(self, name: str) -> torch.Tensor | None:
        """Unit positions (now) of layer ``name`` whose outputs come from an era."""
        records = self.records.get(name)
        if not records:
            return None
        return torch.cat([era.rows[era.frozen] for era in records])

    def attach(self, layers: dict[str, tuple[nn.Module, LayerSpec]]) -> None:
        """(Re)install, on ``layers``, the blocked forward of the layers computed in blocks and the
        hooks (with their eras' cached tensors) of the replayed ones."""
        for name in list(self._handles):
            if name not in self.records or self.records[name][0].blocks:
                self._handles.pop(name).remove()
        for module, _ in layers.values():
            unblocked(module)
        for name, records in self.records.items():
            module, spec = layers[name]
            if records[0].blocks:
                weight = getattr(module, spec.in_tensor)
                steps = _steps(records, spec.unit_count(module), spec.input_size(module), weight.device)
                module.__dict__["forward"] = Blocks(module, spec, steps)
                continue
            for era in records:
                era.cache(module, spec)
            module.__dict__[_ATTR] = (name, spec, records)
            if name not in self._handles:
                self._handles[name] = module.register_forward_hook(_era_hook)

    def remove(self, layers: dict[str, tuple[nn.Module, LayerSpec]]) -> None:
        """Remove every hook, blocked forward and their state."""
        for handle in self._handles.values():
            handle.remove()
        self._handles = {}
        for module, _ in layers.values():
            module.__dict__.pop(_ATTR, None)
            unblocked(module)

    def copy(self) -> dict[str, list[Era]]:
        return {name: [e.copy() for e in records] for name, records in self.records.items()}

    def state(self) -> dict[str, list[dict]]:
        return {name: [era.state() for era in records] for name, records in self.records.items()}

    def load(self, state: dict[str, list[dict]]) -> None:
        self.records = {name: [Era.from_state(s) for s in records] for name, records in state.items()}


def unblocked(module: nn.Module) -> None:
    """Give ``module`` back its class's forward, if it was computed in blocks."""
    if isinstance(module.__dict__.get("forward"), Blocks):
        del module.__dict__["forward"]


ALIGNMENT = 64  # bytes


def aligned(x):
    """``x`` itself if it is a contiguous tensor starting on a 64-byte boundary, else such a copy."""
    if not isinstance(x, torch.Tensor):
        return x
    try:
        address = x.data_ptr()
    except RuntimeError:  # a tensor without storage (inside a torch.func transform): nothing to align
        return x
    if x.is_contiguous() and address % ALIGNMENT == 0:
        return x
    return x.clone(memory_format=torch.contiguous_format)


def _aligned_input(module: nn.Module, args):
    if args and isinstance(args[0], torch.Tensor) and not _paused:
        first = aligned(args[0])
        if first is not args[0]:
            return (first, *args[1:])
    return None


class AlignedInputs:
    """Forward pre-hooks giving every layer that reads units an aligned, contiguous input."""

    def __init__(self, layers: dict[str, tuple[nn.Module, LayerSpec]]) -> None:
        self._handles = [module.register_forward_pre_hook(_aligned_input)
                         for module, spec in layers.values() if spec.input_size(module)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
