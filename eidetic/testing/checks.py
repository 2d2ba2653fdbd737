"""Independent checks of the guarantee: what must hold after every task, and after a widening.

These helpers read the unit table, the owners and each layer's :class:`~eidetic.LayerSpec`
(where a unit's slices live), but work out the frozen positions and the cut entries on their own
rather than through eidetic's guard, so that a bug in the guard cannot hide itself.

Two ways to address what a task owns:

* by position (:func:`frozen_state`, :func:`assert_persistent`): fast, but positions move when
  the network is widened;
* by unit (:func:`unit_state`, :func:`assert_same_units`): each unit is named by its place in its
  layer's block at set-up, which widening does not change, so the comparison holds across
  ``net.widen(...)`` and CPG's growth.

:class:`ForgettingCheck` puts them together for a training loop: logits of every finished task
(evaluation and training mode), frozen slices, BatchNorm statistics and cut entries.
Every failure is a :class:`ForgettingError` naming the task, the layer and the tensor that moved,
and the largest difference.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

from ..graph import FEATURES
from ..guarantee.ownership import FREE
from ..network import ContinualNetwork

RAW = -2  # the owner of an input position that reads no unit (the network's own input)

__all__ = [
    "RAW",
    "ForgettingCheck",
    "ForgettingError",
    "UnitSlice",
    "all_logits",
    "assert_persistent",
    "assert_resistance",
    "assert_same_units",
    "check_after_task",
    "frozen_state",
    "has_dropout",
    "unit_state",
]


class ForgettingError(AssertionError):
    """The guarantee does not hold: something a finished task computes or owns moved.

    Attributes:
        problems: one line per tensor or task output that moved, each naming it and giving the
            largest difference.
        when: when it was seen (``"after task 2"``), or ``""``.

    Example::

        try:
            check.after("after task 2")
        except eidetic.testing.ForgettingError as error:
            print(error.problems)
    """

    def __init__(self, problems: Sequence[str], when: str = "", context: str = "") -> None:
        self.problems, self.when, self.context = list(problems), when, context
        where = f" {when}" if when else ""
        lines = [f"eidetic forgot{where}: {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems]
        if context:
            lines.append(context)
        super().__init__("\n".join(lines))


def _raise(problems: list[str], when: str) -> None:
    if problems:
        raise ForgettingError(problems, when)


def _difference(now: torch.Tensor, before: torch.Tensor) -> str:
    """How two tensors that are not ``torch.equal`` differ: entries and the largest difference."""
    if now.shape != before.shape:
        return f"its shape went from {tuple(before.shape)} to {tuple(now.shape)}"
    a, b = now.detach().cpu().double(), before.detach().cpu().double()
    moved = a != b
    count = int(moved.sum())
    gap = (a - b).abs()[moved]
    largest = float(gap.max()) if gap.numel() else math.nan
    return f"{count} of {a.numel()} entries differ, largest difference {largest:.3g}"


def _tasks(owners: torch.Tensor) -> str:
    found = sorted({int(o) for o in owners.flatten().tolist() if o >= 0})
    if not found:
        return "no task"
    return ("task " if len(found) == 1 else "tasks ") + ", ".join(map(str, found))


# ---------------------------------------------------------------------------- owners of positions


def _owners(net: ContinualNetwork, module: str, size: int, side: str, fill: int) -> torch.Tensor:
    """The owner of each output (``side="outs"``) or input (``"ins"``) position of ``module``."""
    result = torch.full((size,), fill, dtype=torch.long)
    for group in net.graph:
        owner = net._eidetic.ownership.owner[group.key].long()
        for slot in getattr(group, side):
            if slot.module == module:
                result[slot.index] = owner[slot.units]
    return result


def _output_owners(net: ContinualNetwork, module: str, size: int) -> torch.Tensor:
    return _owners(net, module, size, "outs", FREE)


def _input_owners(net: ContinualNetwork, module: str, size: int) -> torch.Tensor:
    return _owners(net, module, size, "ins", RAW)


def _feature_owners(net: ContinualNetwork) -> torch.Tensor:
    return _input_owners(net, FEATURES, net.graph.feature_dim)


# ---------------------------------------------------------------------------- by position


def frozen_state(net: ContinualNetwork) -> dict[tuple[str, str], tuple[int, torch.Tensor, torch.Tensor]]:
    """Every owned slice of ``net`` by position: ``{(module, tensor): (dim, positions, values)}``.

    Covers the producer slices of every owned unit (weight rows, biases, BatchNorm affine
    parameters and running statistics, gate rows), every finished task's head, and the frozen
    columns and bias of a shared head. Compare with :func:`assert_persistent`; positions move
    when the network is widened, so across a widening use :func:`unit_state`.

    Example::

        before = frozen_state(net)
        net.train_task(2, loader, num_classes=3, optimizer=make_optimizer, epochs=1)
        assert_persistent(net, before)
    """
    state = {}
    for name, (module, spec) in net._eidetic.layers.items():
        owned = (_output_owners(net, name, spec.unit_count(module)) != FREE).nonzero().flatten()
        for tensor_name, dim, index, _ in spec.producer_slices(module, owned):
            values = getattr(module, tensor_name).detach().index_select(dim, index.to(_device(module, tensor_name)))
            state[(name, tensor_name)] = (dim, index, values.clone())
    finished = net._eidetic.frozen_tasks
    if net.heads.shared and finished:
        head = net.heads[0]
        owned = (_feature_owners(net) >= 0).nonzero().flatten()
        state[("heads.0", "weight")] = (1, owned, head.weight.detach().index_select(1, owned.to(head.weight.device))
                                        .clone())
        state[("heads.0", "bias")] = (0, torch.arange(head.out_features), head.bias.detach().clone())
    elif not net.heads.shared:
        for k in range(finished):
            for tensor_name, tensor in net.heads[k].named_parameters():
                state[(f"heads.{k}", tensor_name)] = (0, torch.arange(tensor.shape[0]), tensor.detach().clone())
    return state


def _device(module: nn.Module, tensor_name: str) -> torch.device:
    return getattr(module, tensor_name).device


def _persistence_problems(net: ContinualNetwork, earlier: dict) -> list[str]:
    modules = dict(net.named_modules())
    problems = []
    for (module, tensor_name), (dim, index, values) in earlier.items():
        tensor = getattr(modules[module], tensor_name).detach()
        now = tensor.index_select(dim, index.to(tensor.device))
        if not torch.equal(now, values):
            problems.append(f"frozen slice {module}.{tensor_name} changed: {_difference(now, values)}")
    return problems


def assert_persistent(net: ContinualNetwork, earlier: dict, *, when: str = "") -> None:
    """Every slice of ``earlier`` (a :func:`frozen_state`) is ``torch.equal`` to what it was.

    Raises:
        ForgettingError: naming each ``module.tensor`` that moved and the largest difference.

    Example::

        before = frozen_state(net)
        net.train()
        net.logits(x, 0)                       # a training-mode pass must not move BatchNorm statistics
        assert_persistent(net, before, when="after a training-mode pass")
    """
    _raise(_persistence_problems(net, earlier), when)


def _resistance_problems(net: ContinualNetwork) -> list[str]:
    problems = []
    for name, (module, spec) in net._eidetic.layers.items():
        rows = _output_owners(net, name, spec.unit_count(module))
        cols = _input_owners(net, name, spec.input_size(module))
        for k in rows[rows >= 0].unique().tolist():
            later = (cols != RAW) & ((cols == FREE) | (cols > k))
            for tensor_name, mask in spec.consumer_entries(module, rows == k, later):
                tensor = getattr(module, tensor_name).detach()
                entries = tensor[mask.expand_as(tensor)]
                if entries.any():
                    problems.append(f"{name}.{tensor_name}: rows of task {k} read a free or later unit through "
                                    f"{int((entries != 0).sum())} non-zero entries, largest "
                                    f"|value| {float(entries.abs().max()):.3g} (they must be exactly 0)")
    cols = _feature_owners(net)
    finished = net._eidetic.frozen_tasks
    if net.heads.shared:  # task k reads the shared head through the mask of units owned by tasks <= k
        for k in range(finished):
            mask = getattr(net.heads, f"mask_{k}").bool().cpu()
            wrong = mask != ((cols >= 0) & (cols <= k))
            if wrong.any():
                problems.append(f"heads.mask_{k}: task {k} reads the shared head through a wrong feature mask "
                                f"({int(wrong.sum())} of {len(wrong)} features)")
        return problems
    for k in range(finished):
        inputs = getattr(net.heads, f"inputs_{k}", None)  # a head from before a widening reads its old features
        read = cols if inputs is None else cols[inputs.cpu()]
        bad = ((read != RAW) & ((read == FREE) | (read > k))).to(net.heads[k].weight.device)
        entries = net.heads[k].weight.detach()[:, bad]
        if entries.any():
            problems.append(f"heads.{k}.weight: task {k}'s head reads a free or later unit through "
                            f"{int((entries != 0).sum())} non-zero entries, largest |value| "
                            f"{float(entries.abs().max()):.3g} (they must be exactly 0)")
    return problems


def assert_resistance(net: ContinualNetwork, *, when: str = "") -> None:
    """Cut entries are exactly 0: in the rows of a unit owned by task k, every entry that reads a
    free unit or a unit of a later task; the same for head k's columns (or, for a shared head,
    task k's feature mask covers exactly the units of tasks up to k).

    Raises:
        ForgettingError: naming each ``module.tensor``, the task whose rows read what they must
            not, and the largest such entry.

    Example::

        net.train_task(0, loader, num_classes=3, optimizer=make_optimizer, epochs=1)
        assert_resistance(net)
    """
    _raise(_resistance_problems(net), when)


def all_logits(net: ContinualNetwork, x: torch.Tensor) -> list[torch.Tensor]:
    """Every task's logits on ``x``, in evaluation mode and without gradients (a masked task's
    through its own pass: ``net.logits`` applies its mask). The network's mode is kept.

    Example::

        before = all_logits(net, x)
        net.train_task(1, loader, num_classes=3, optimizer=make_optimizer, epochs=1)
        assert all(torch.equal(a, b) for a, b in zip(before, all_logits(net, x)))
    """
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            return [net.logits(x, k) for k in range(net.num_tasks)]
    finally:
        net.train(was)


def check_after_task(net: ContinualNetwork, fixed: torch.Tensor, task: int, logits: list[torch.Tensor],
                     frozen: list[dict]) -> None:
    """After ``task`` ends: every earlier task's logits on ``fixed`` are ``torch.equal`` to what
    they were (``logits``), every earlier frozen state (``frozen``) is unchanged, and cut entries
    are zero. Then appends this task's logits and frozen state to the two lists.

    Raises:
        ForgettingError: naming the tasks and tensors that moved.

    Example::

        logits, frozen = [], []
        for t, loader in enumerate(loaders):
            net.train_task(t, loader, num_classes=3, optimizer=make_optimizer, epochs=1)
            check_after_task(net, fixed, t, logits, frozen)
    """
    problems = []
    for state in frozen:
        problems += _persistence_problems(net, state)
    problems += _resistance_problems(net)
    now = all_logits(net, fixed)
    for j in range(task):
        if not torch.equal(now[j], logits[j]):
            problems.append(f"task {j}'s logits changed: {_difference(now[j], logits[j])}")
    _raise(problems, f"after task {task}")
    logits.append(now[task])
    frozen.append(frozen_state(net))


# ---------------------------------------------------------------------------- by unit


class UnitSlice(NamedTuple):
    """One tensor's owned slice, addressed by unit (see :func:`unit_state`)."""

    rows: list[tuple]  # a key per row (the unit dim moved first), in key order
    columns: list[tuple] | None  # a key per input column read, in key order, or None
    values: torch.Tensor  # the slice, unit dim first, rows and columns in key order
    owners: torch.Tensor  # the task owning each row
    entry_owners: torch.Tensor | None = None  # laid out as values: the task whose value each entry holds
    # (tensors with released entries, see eidetic.guarantee.masks), else None: the row's owner

    def holders(self) -> torch.Tensor:
        """The task whose value each entry holds, laid out as ``values``."""
        if self.entry_owners is not None:
            return self.entry_owners
        return self.owners.to(self.values.device).view(-1, *([1] * (self.values.dim() - 1))).expand_as(self.values)


def _unit_ids(net: ContinualNetwork, group) -> list[tuple[str, int]]:
    """A name for each unit of ``group`` that widening does not change: its block of the anchor
    layer (a layer and direction of a recurrent module) and its place in that block."""
    module, spec = net._eidetic.layers[group.key]
    anchor = next(s for s in group.outs if s.module == group.key)
    blocks = spec.unit_blocks(module)
    ids = [("", -1)] * group.size
    for unit, position in zip(anchor.units.tolist(), anchor.index.tolist()):
        label, first, _ = next(b for b in blocks if b[1] <= position < b[2])
        ids[unit] = (label, position - first)
    return ids


def _position_keys(net: ContinualNetwork, module: str, size: int, side: str) -> list[tuple]:
    """A name for each output or input position of ``module`` that does not depend on where it
    sits: ``(group, unit id, k)`` for the k-th position of a unit, ``("raw", k)`` for the k-th
    position holding no unit."""
    keys: list[tuple | None] = [None] * size
    for group in net.graph:
        slots = [s for s in getattr(group, side) if s.module == module]
        if not slots:
            continue
        ids = _unit_ids(net, group)
        for slot in slots:
            count: dict[int, int] = {}
            for unit, position in sorted(zip(slot.units.tolist(), slot.index.tolist())):
                keys[position] = (group.key, ids[unit], count.get(unit, 0))
                count[unit] = count.get(unit, 0) + 1
    raw = iter(range(size))
    return [key if key is not None else ("raw", next(raw)) for key in keys]


def _column_keys(net: ContinualNetwork, name: str, module: nn.Module, spec, tensor_name: str,
                 dim: int) -> tuple[list | None, int]:
    """Keys of the input positions read along the columns of ``tensor_name``, and the dim of
    those columns once the unit dim is moved first (``None`` if the tensor reads no units)."""
    keys = _position_keys(net, name, spec.input_size(module), "ins")
    if hasattr(spec, "gates"):  # a recurrent layer: each weight reads a range of input positions
        for block, _, _, first, width in spec._blocks():
            if block == tensor_name:
                return keys[first:first + width], 1
        return None, 0
    if tensor_name == spec.in_tensor and spec.groups == 1:
        return keys, spec.in_dim if spec.in_dim > dim else spec.in_dim + 1
    return None, 0


def _sorted_slice(rows: list[tuple], values: torch.Tensor, owners: torch.Tensor,
                  columns: list | None, column_dim: int, entry_owners: torch.Tensor | None = None) -> UnitSlice:
    order = sorted(range(len(rows)), key=lambda i: (rows[i], i))
    col_order = None if columns is None else sorted(range(len(columns)), key=lambda i: columns[i])

    def arrange(t: torch.Tensor) -> torch.Tensor:
        t = t.index_select(0, torch.tensor(order, dtype=torch.long, device=t.device))
        if col_order is not None:
            t = t.index_select(column_dim, torch.tensor(col_order, dtype=torch.long, device=t.device))
        return t.clone()

    if col_order is not None:
        columns = [columns[i] for i in col_order]
    entries = None if entry_owners is None else arrange(entry_owners)
    return UnitSlice([rows[i] for i in order], columns, arrange(values), owners[order], entries)


def _body_units(net: ContinualNetwork, state: dict) -> None:
    for name, (module, spec) in net._eidetic.layers.items():
        count = spec.unit_count(module)
        keys = _position_keys(net, name, count, "outs")
        owner = _output_owners(net, name, count)
        owned = (owner != FREE).nonzero().flatten()
        for tensor_name, dim, index, which in spec.producer_slices(module, owned):
            tensor = getattr(module, tensor_name).detach()
            seen: dict[tuple, int] = {}
            rows, owners = [], []
            for w in which.tolist():  # a unit may own several rows (the gates of a recurrent layer)
                key = keys[int(owned[w])]
                rows.append((*key, seen.get(key, 0)))
                seen[key] = seen.get(key, 0) + 1
                owners.append(int(owner[owned[w]]))
            values = tensor.index_select(dim, index.to(tensor.device)).movedim(dim, 0)
            entry_owner = net._eidetic.masks.entry_owner.get(f"{name}.{tensor_name}")
            if entry_owner is not None:
                entry_owner = entry_owner.to(tensor.device).index_select(dim, index.to(tensor.device)).movedim(dim, 0)
            columns, column_dim = _column_keys(net, name, module, spec, tensor_name, dim)
            state[(name, tensor_name)] = _sorted_slice(rows, values, torch.tensor(owners, dtype=torch.long),
                                                       columns, column_dim, entry_owner)


def _head_units(net: ContinualNetwork, state: dict) -> None:
    finished = net._eidetic.frozen_tasks
    if not finished:
        return
    if not net.heads.shared:  # a finished task's head is frozen whole and keeps its width
        for k in range(finished):
            for tensor_name, tensor in net.heads[k].named_parameters():
                rows = [("head", k, i) for i in range(tensor.shape[0])]
                state[(f"heads.{k}", tensor_name)] = UnitSlice(rows, None, tensor.detach().clone(),
                                                               torch.full((len(rows),), k, dtype=torch.long))
        return
    head = net.heads[0]
    owners = _feature_owners(net)
    owned = (owners >= 0).nonzero().flatten()
    keys = _position_keys(net, FEATURES, net.graph.feature_dim, "ins")
    columns = head.weight.detach().index_select(1, owned.to(head.weight.device)).t()
    state[("heads.0", "weight")] = _sorted_slice([keys[i] for i in owned.tolist()], columns, owners[owned], None, 0)
    rows = [("class", i) for i in range(head.out_features)]
    state[("heads.0", "bias")] = UnitSlice(rows, None, head.bias.detach().clone(),
                                           torch.zeros(len(rows), dtype=torch.long))


def unit_state(net: ContinualNetwork) -> dict[tuple[str, str], UnitSlice]:
    """Every owned slice of ``net``, addressed by unit rather than by position:
    ``{(module, tensor): UnitSlice(rows, columns, values, owners)}``.

    Rows are keyed by unit (its group, its place in its layer's block at set-up, and which of its
    rows), columns by the unit they read. Widening moves positions but not keys, so comparing two
    of these (:func:`assert_same_units`) checks persistence across ``net.widen(...)``. Finished
    tasks' heads and the frozen columns of a shared head are included.

    Example::

        before = unit_state(net)
        net.widen({"fc1": 4})
        assert_same_units(net, before)
    """
    state: dict[tuple[str, str], UnitSlice] = {}
    _body_units(net, state)
    _head_units(net, state)
    return state


def _unit_problems(net: ContinualNetwork, earlier: dict[tuple[str, str], UnitSlice]) -> list[str]:
    now = unit_state(net)
    problems = []
    for key, before in earlier.items():
        label = f"{key[0]}.{key[1]}"
        if key not in now:
            problems.append(f"frozen slice {label} of {_tasks(before.owners)} is gone")
            continue
        after = now[key]
        where = {r: i for i, r in enumerate(after.rows)}
        missing = [r for r in before.rows if r not in where]
        if missing:
            problems.append(f"frozen slice {label}: {len(missing)} rows of {_tasks(before.owners)} are no longer "
                            f"owned (first: {missing[0]})")
            continue
        pick = torch.tensor([where[r] for r in before.rows], dtype=torch.long, device=after.values.device)
        current, holders = after.values.index_select(0, pick), after.holders().index_select(0, pick)
        if before.columns is not None:
            module, spec = net._eidetic.layers[key[0]]
            _, column_dim = _column_keys(net, key[0], module, spec, key[1], spec.out_dim_of(key[1]))
            place = {c: i for i, c in enumerate(after.columns)}
            old = set(before.columns)
            added = [i for i, c in enumerate(after.columns) if c not in old]
            if added:
                extra = current.index_select(column_dim, torch.tensor(added, dtype=torch.long, device=current.device))
                if extra.any():
                    problems.append(f"frozen slice {label}: rows of {_tasks(before.owners)} read units added since "
                                    f"through {int((extra != 0).sum())} non-zero entries, largest |value| "
                                    f"{float(extra.abs().max()):.3g}")
            keep = torch.tensor([place[c] for c in before.columns], dtype=torch.long, device=current.device)
            current, holders = current.index_select(column_dim, keep), holders.index_select(column_dim, keep)
        retrained = holders.to(current.device) > before.holders().to(current.device)  # released to a later task
        compared = torch.where(retrained, before.values, current)
        if not torch.equal(compared, before.values):
            moved = (compared != before.values).reshape(len(before.rows), -1).any(dim=1).cpu()
            problems.append(f"frozen slice {label} of {_tasks(before.owners[moved])} changed: "
                            f"{_difference(compared, before.values)}")
    return problems


def assert_same_units(net: ContinualNetwork, earlier: dict[tuple[str, str], UnitSlice], *, when: str = "") -> None:
    """Every slice of ``earlier`` (a :func:`unit_state`) is ``torch.equal`` to what it was, unit by
    unit; the columns by which those rows read units added since (a widening) are exactly 0.
    Entries released to a later task and retrained by it (their per-entry owner is now a later
    task, see :mod:`eidetic.guarantee.masks`) may differ: no finished task reads them.

    Raises:
        ForgettingError: naming each ``module.tensor``, the task owning the rows that moved,
            and the largest difference.

    Example::

        before = unit_state(net)
        net.widen({"conv1": 8})
        net.train_task(2, loader, num_classes=3, optimizer=make_optimizer, epochs=1)
        assert_same_units(net, before, when="after task 2")
    """
    _raise(_unit_problems(net, earlier), when)


# ---------------------------------------------------------------------------- a whole run


def has_dropout(net: nn.Module) -> bool:
    """Whether ``net`` holds a dropout module with a non-zero rate (its training-mode outputs
    are then random, and not compared with evaluation mode).

    Example::

        has_dropout(nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)))   # True
    """
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in net.modules())


@contextmanager
def _statistics_kept(net: nn.Module) -> Iterator[None]:
    """Put every BatchNorm buffer back afterwards: a training-mode pass made for a check updates
    the free channels' statistics, which must not change the run being checked."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{n: b.clone() for n, b in m.named_buffers(recurse=False) if b is not None} for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, buffers in zip(norms, saved):
                for n, value in buffers.items():
                    getattr(module, n).copy_(value)


class ForgettingCheck:
    """Everything that must hold of a network's finished tasks, checked as a run goes on.

    :meth:`record` remembers every finished task's logits on ``inputs`` (evaluation mode) and
    the network's owned slices by unit; :meth:`check` then asserts that nothing of it moved:

    * every recorded task's logits are ``torch.equal`` to what they were;
    * every owned slice (weight rows, biases, BatchNorm affine parameters and running
      statistics, recurrent gate rows, finished heads) is ``torch.equal``, unit by unit, so
      across widenings too; rows read units added since only through zeros;
    * cut entries are exactly 0 (rows of task k read no free or later unit, nor does head k);
    * unless ``train_mode=False`` (by default: unless the network has dropout), a training-mode
      forward pass gives every recorded task the same logits and moves no frozen BatchNorm
      statistic (the BatchNorm buffers are put back afterwards, so the check changes nothing).

    Args:
        net: the network under test.
        inputs: a fixed batch of inputs the logits are compared on.
        train_mode: compare training-mode outputs too (``None``: unless :func:`has_dropout`).

    Example::

        check = ForgettingCheck(net, fixed_inputs)
        for t, loader in enumerate(loaders):
            net.train_task(t, loader, num_classes=3, optimizer=make_optimizer, epochs=1)
            check.after(f"after task {t}")      # raises ForgettingError if anything moved
        net.widen({"fc1": 4})
        check.after("after widening fc1")
    """

    def __init__(self, net: ContinualNetwork, inputs: torch.Tensor, *, train_mode: bool | None = None) -> None:
        self.net, self.inputs = net, inputs
        self.train_mode = not has_dropout(net) if train_mode is None else train_mode
        self.logits: list[torch.Tensor] = []
        self.state: dict[tuple[str, str], UnitSlice] | None = None

    def record(self) -> None:
        """Remember the logits of the tasks finished since the last record, and every owned slice."""
        if self.net.graph is None:
            return
        finished = self.net._eidetic.frozen_tasks
        if finished > len(self.logits):
            self.logits += all_logits(self.net, self.inputs)[len(self.logits):finished]
        self.state = unit_state(self.net)

    def problems(self) -> list[str]:
        """What moved since the last :meth:`record`, one line each (empty if nothing did)."""
        net = self.net
        if net.graph is None:
            return []
        found = [] if self.state is None else _unit_problems(net, self.state)
        found += _resistance_problems(net)
        now = all_logits(net, self.inputs)
        found += [f"task {k}'s logits changed: {_difference(now[k], before)}"
                  for k, before in enumerate(self.logits) if not torch.equal(now[k], before)]
        return found + self._train_mode_problems(0, now, found)

    def _train_mode_problems(self, first: int, evaluation: list[torch.Tensor], seen: Sequence[str] = ()) -> list[str]:
        """The recorded tasks from ``first`` on: their training-mode logits against their
        evaluation-mode ones (``evaluation``), and the frozen slices after that pass (but for
        what ``seen`` already says)."""
        tasks = range(first, len(self.logits))
        if not self.train_mode or not tasks:
            return []
        net, found = self.net, []
        with _statistics_kept(net):
            was = net.training
            net.train()
            try:
                with torch.no_grad():
                    train = {k: net.logits(self.inputs, k) for k in tasks}
            finally:
                net.train(was)
            if self.state is not None:
                found += [f"in a training-mode pass: {p}" for p in _unit_problems(net, self.state) if p not in seen]
        return found + [f"task {k}'s logits in training mode differ from evaluation mode: "
                        f"{_difference(train[k], evaluation[k])}"
                        for k in tasks if not torch.equal(train[k], evaluation[k])]

    def check(self, when: str = "") -> None:
        """Raise :class:`ForgettingError` if anything recorded moved (see the class)."""
        _raise(self.problems(), when)

    def after(self, when: str = "") -> None:
        """:meth:`check`, then :meth:`record`, then check the newly recorded tasks' training-mode
        outputs: what to call after each task and each widening."""
        self.check(when)
        first = len(self.logits)
        self.record()
        _raise(self._train_mode_problems(first, self.logits), when)
