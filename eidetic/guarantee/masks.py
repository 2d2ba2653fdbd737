"""Task masks: per-task multiplicative masks over parameters, applied only in that task's pass.

Task ``k`` may carry masks ``M_k`` over chosen parameters of the body (element-wise, per kernel
``out x in``, or per unit: any shape that broadcasts against the parameter). Its forward pass
computes with ``W * M_k`` in place of ``W``; every other task is computed without them, and the
tasks without masks share one pass of the body as before. This is what CPG's picking and
GROWN's selective and attentive masks are made of (the mixins in :mod:`eidetic.mixins`).

While task ``k`` trains, a mask may be a tensor or a function returning one (a binarised
learnable score with a straight-through gradient, for instance); when the task ends it is
evaluated once and must be binary. Finished tasks' masks are kept as booleans and stored in
checkpoints at 1 bit per entry.

**Released entries.** An entry that a task's mask zeroes is never read by that task. A later
task may retrain an entry of a frozen row only if no finished task reads its current value:
every finished task from the one whose value it holds (the owner of its row, or the task that
last retrained it) onwards must mask it out (:meth:`TaskMasks.release` checks this). Its owner
is then recorded per entry, for the tensors that have released entries: the per-unit owners
stay the truth everywhere else. While the releasing task trains, the guard leaves the released
entries to the optimizer; when it ends, they are frozen with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from ..errors import TaskError
from ..graph.layers import grown, substituted
from .ownership import FREE, OWNER_DTYPE

Mask = torch.Tensor | Callable[[], torch.Tensor]
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
_active: tuple[int, dict[str, torch.Tensor]] | None = None  # the masked pass being computed


def active() -> tuple[int, dict[str, torch.Tensor]] | None:
    """``(task, {tensor: mask})`` of the masked pass being computed, or ``None``."""
    return _active


def pack(mask: torch.Tensor) -> dict:
    """A boolean tensor as 1 bit per entry (``uint8``), with its shape."""
    flat = mask.detach().flatten().cpu().bool()
    padded = torch.cat([flat, flat.new_zeros(-len(flat) % 8)]).view(-1, 8)
    return {"shape": list(mask.shape), "bits": (padded.to(torch.uint8) * _BITS).sum(dim=1).to(torch.uint8)}


def unpack(state: dict) -> torch.Tensor:
    """The boolean tensor of :func:`pack`."""
    shape = state["shape"]
    count = int(torch.tensor(shape).prod()) if shape else 1
    bits = (state["bits"][:, None] & _BITS) != 0
    return bits.flatten()[:count].view(shape)


class TaskMasks:
    """The masks of every task, the open task's released entries and the entries' owners.

    Tensors are named ``"module.tensor"`` as in ``net.named_parameters()`` of the body.
    """

    def __init__(self) -> None:
        self.masks: dict[int, dict[str, Mask]] = {}
        self.released: dict[str, torch.Tensor] = {}  # the open task's, boolean, full shape
        self.entry_owner: dict[str, torch.Tensor] = {}  # tensors with released entries: owner per entry
        self._factors: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def set(self, task: int, name: str, mask: Mask, parameter: torch.Tensor) -> None:
        """Give task ``task`` (the open one) mask ``mask`` over ``parameter`` (named ``name``)."""
        value = mask() if callable(mask) else mask
        if not isinstance(value, torch.Tensor):
            raise TaskError(f"the mask of '{name}' must be a tensor or a function returning one, got "
                            f"{type(value).__name__}")
        try:
            torch.broadcast_shapes(value.shape, parameter.shape)
        except RuntimeError:
            raise TaskError(f"a mask of shape {tuple(value.shape)} does not broadcast against '{name}' of shape "
                            f"{tuple(parameter.shape)}") from None
        if torch.broadcast_shapes(value.shape, parameter.shape) != parameter.shape:
            raise TaskError(f"a mask of shape {tuple(value.shape)} would change the shape of '{name}' "
                            f"{tuple(parameter.shape)}")
        self.masks.setdefault(task, {})[name] = mask

    def has(self, task: int) -> bool:
        return bool(self.masks.get(task))

    def values(self, task: int) -> dict[str, torch.Tensor]:
        """Task ``task``'s masks as tensors (functions evaluated)."""
        return {name: m() if callable(m) else m for name, m in self.masks.get(task, {}).items()}

    def _factor(self, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A stored boolean mask as a factor of ``like``'s dtype and device (cached)."""
        if mask.dtype != torch.bool:
            return mask.to(like.dtype)
        key = (id(mask), like.dtype, like.device)
        cached = self._factors.get(key)
        if cached is None or cached[0] is not mask:
            cached = self._factors[key] = (mask, mask.to(device=like.device, dtype=like.dtype))
        return cached[1]

    @contextlib.contextmanager
    def applied(self, task: int, body: nn.Module):
        """Compute ``body`` with task ``task``'s masks inside the block."""
        global _active
        values = self.values(task)
        masked: dict[str, dict[str, torch.Tensor]] = {}
        for name, mask in values.items():
            module_name, _, tensor_name = name.rpartition(".")
            original = body.get_submodule(module_name)._parameters[tensor_name]
            masked.setdefault(module_name, {})[tensor_name] = original * self._factor(mask, original)
        previous = _active
        with contextlib.ExitStack() as stack:
            for module_name, tensors in masked.items():
                stack.enter_context(substituted(body.get_submodule(module_name), tensors))
            _active = (task, values)
            try:
                yield
            finally:
                _active = previous

    def freeze(self, task: int, row_owner: Callable[[str], torch.Tensor]) -> None:
        """End task ``task``: binarise its masks, and give it the entries it released."""
        stored = {}
        for name, value in self.values(task).items():
            value = value.detach()
            if not bool(((value == 0) | (value == 1)).all()):
                raise TaskError(f"task {task}'s mask of '{name}' is not binary when the task ends; binarise it "
                                "(a threshold in the forward) so that it can be frozen")
            stored[name] = value.bool()
        if stored:
            self.masks[task] = stored
        for name, entries in self.released.items():
            owner = self.entry_owner.setdefault(name, row_owner(name).clone())
            owner[entries.to(owner.device)] = task
        self.released = {}

    def owners(self, name: str, row_owner: Callable[[str], torch.Tensor]) -> torch.Tensor:
        """The task whose value each entry of tensor ``name`` holds (FREE for free rows)."""
        return self.entry_owner[name] if name in self.entry_owner else row_owner(name)

    def release(self, task: int, name: str, entries: torch.Tensor, row_owner: Callable[[str], torch.Tensor],
                finished: int) -> None:
        """Let the open task ``task`` retrain ``entries`` (a boolean mask) of frozen tensor
        ``name``; refused if a finished task reads one of them."""
        owner = self.owners(name, row_owner).to(entries.device)
        entries = entries.bool() & (owner != FREE)
        for k in range(finished):
            reads = entries & (owner <= k)
            if not reads.any():
                continue
            mask = self.masks.get(k, {}).get(name)
            if mask is None or bool((reads & mask.to(reads.device).expand_as(reads)).any()):
                raise TaskError(f"cannot release entries of '{name}': task {k} reads them (they are not masked out "
                                f"by task {k}'s mask); only entries every task from their owner on masks out can "
                                "be retrained")
        self.released[name] = self.released.get(name, torch.zeros_like(entries)) | entries

    def checkpoint(self) -> tuple:
        """Everything :meth:`rollback` puts back (the masks themselves are never changed in
        place, only replaced)."""
        return ({k: dict(v) for k, v in self.masks.items()}, dict(self.released),
                {k: v.clone() for k, v in self.entry_owner.items()})

    def rollback(self, saved: tuple) -> None:
        masks, released, entry_owner = saved
        self.masks, self.released, self.entry_owner = {k: dict(v) for k, v in masks.items()}, dict(released), \
            {k: v.clone() for k, v in entry_owner.items()}

    def widen(self, name: str, layout: list[tuple[int, torch.Tensor, int]],
              row_owner: Callable[[str], torch.Tensor]) -> None:
        """Tensor ``name`` was widened, its entries moved as ``layout`` says (see
        :meth:`LayerSpec.grown_layout`). New mask entries are 0: no finished task reads a new
        entry. New entries take the owner of their row, and are not released."""
        for masks in self.masks.values():
            mask = masks.get(name)
            if isinstance(mask, torch.Tensor):
                masks[name] = grown(mask, [m for m in layout if mask.shape[m[0]] != 1])
        if name in self.released:  # the open task's released entries follow; new entries are not released
            self.released[name] = grown(self.released[name], layout)
        if name in self.entry_owner:
            old = self.entry_owner[name]
            moved = grown(torch.ones_like(old, dtype=torch.bool), layout)
            self.entry_owner[name] = torch.where(moved, grown(old, layout), row_owner(name))

    def state(self, frozen: int) -> dict:
        return {"masks": {k: {n: pack(m) for n, m in self.masks[k].items()} for k in range(frozen) if k in self.masks},
                "entry_owner": {n: o.cpu() for n, o in self.entry_owner.items()}}

    def load(self, state: dict) -> None:
        self.masks = {int(k): {n: unpack(m) for n, m in v.items()} for k, v in state.get("masks", {}).items()}
        self.entry_owner = {n: o.to(OWNER_DTYPE) for n, o in state.get("entry_owner", {}).items()}
        self.released = {}
