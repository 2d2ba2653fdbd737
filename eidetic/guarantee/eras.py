"""Old outputs of widened layers, computed at the width they were computed at.

A matrix product's rounding depends on its shape: the kernels of ``F.linear`` and ``F.conv2d``
block and vectorise the sum differently for another number of inputs or outputs, so a frozen
unit whose row gains zero columns, or whose layer gains rows, can change in its last bit (on a
CPU with MKL, about half the shapes we tried did). Zero entries alone cannot keep the guarantee
across :meth:`~eidetic.ContinualNetwork.widen`.

So when a layer that reads units (a Linear layer, a convolution) is widened while it has frozen
units, it records an **era**: its shape before the call, where that shape's units and inputs now
sit, and which of those units were frozen. A forward hook then computes, for every era, the
layer at the era's shape on the era's inputs, and writes the frozen units' outputs from it: the
same operation on the same shapes and the same values as when those units were frozen, hence
the same bits. Frozen rows never change, so the era's weights are cached copies of them, made
when the era is created and again after a load or a move to another device. The copy into the
output is recorded by autograd, so gradients are those of what the forward computes.

Layers that compute each unit on its own (BatchNorm, depthwise convolutions, embeddings) do not
need eras: their per-unit results do not depend on the number of units.

The rounding of a matrix product also depends on where its input sits in memory (MKL's kernels
take other paths for an input that does not start on a 64-byte boundary, such as the view
``h_n[-1]`` of a recurrent layer's final state), and widening moves such views. So every layer
that reads units, from set-up on, is given its input as a fresh aligned, contiguous tensor when
it is not one already (:class:`AlignedInputs`; a copy only for such views), and an era's input
is one too.

The cost: every era evaluates its layer once more, at the old shape (almost the layer's own work),
in every forward pass; ``benchmarks/widen.py`` measures it (a widened network's forward pass about
2.1-2.5x the unwidened one's on the zoo's models).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
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
        frozen: unit positions (then) whose outputs this era provides.
        tasks: ``(first, stop)``: the tasks that ended while the layer had this shape (a masked
            pass of one of them computes the layer at this shape, every unit of it).
    """

    sizes: dict[str, int]
    rows: torch.Tensor
    inputs: torch.Tensor
    frozen: torch.Tensor
    tasks: tuple[int, int] = (0, 0)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def follow(self, out_map: torch.Tensor, in_map: torch.Tensor) -> None:
        """The layer was widened again: move the positions along."""
        self.rows, self.inputs = out_map[self.rows], in_map[self.inputs]

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
        return {"sizes": dict(self.sizes), "rows": self.rows, "inputs": self.inputs, "frozen": self.frozen,
                "tasks": list(self.tasks)}

    @classmethod
    def from_state(cls, state: dict) -> Era:
        return cls(dict(state["sizes"]), state["rows"], state["inputs"], state["frozen"], tuple(state["tasks"]))


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
        """Cache every era's tensors and (re)install the hooks on ``layers``."""
        for name in list(self._handles):
            if name not in self.records:
                self._handles.pop(name).remove()
        for name, records in self.records.items():
            module, spec = layers[name]
            for era in records:
                era.cache(module, spec)
            module.__dict__[_ATTR] = (name, spec, records)
            if name not in self._handles:
                self._handles[name] = module.register_forward_hook(_era_hook)

    def remove(self, layers: dict[str, tuple[nn.Module, LayerSpec]]) -> None:
        """Remove every hook and its state."""
        for handle in self._handles.values():
            handle.remove()
        self._handles = {}
        for module, _ in layers.values():
            module.__dict__.pop(_ATTR, None)

    def copy(self) -> dict[str, list[Era]]:
        return {name: [Era(dict(e.sizes), e.rows, e.inputs, e.frozen, e.tasks) for e in records]
                for name, records in self.records.items()}

    def state(self) -> dict[str, list[dict]]:
        return {name: [era.state() for era in records] for name, records in self.records.items()}

    def load(self, state: dict[str, list[dict]]) -> None:
        self.records = {name: [Era.from_state(s) for s in records] for name, records in state.items()}


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
