"""Independent checks of the guarantee: what must hold after every task.

These helpers read the unit table, the owners and each layer's ``LayerSpec`` (where a unit's
slices live), but compute frozen positions and cut entries on their own rather than through
eidetic's guard.
"""

from __future__ import annotations

import torch

import eidetic
from eidetic.graph import FEATURES

FREE = eidetic.FREE
RAW = -2  # an input position that reads no unit (the network's input)


def _owners(net, module: str, size: int, side: str, fill: int) -> torch.Tensor:
    """Owner of each output (``side="outs"``) or input (``"ins"``) position of ``module``."""
    owners = torch.full((size,), fill, dtype=torch.long)
    for group in net.graph:
        owner = net._eidetic.ownership.owner[group.key].long()
        for slot in getattr(group, side):
            if slot.module == module:
                owners[slot.index] = owner[slot.units]
    return owners


def _owner_of_outputs(net, module: str, size: int) -> torch.Tensor:
    return _owners(net, module, size, "outs", FREE)


def _owner_of_inputs(net, module: str, size: int) -> torch.Tensor:
    return _owners(net, module, size, "ins", RAW)


def frozen_state(net) -> dict[tuple[str, str], tuple[int, torch.Tensor, torch.Tensor]]:
    """``{(module, tensor): (dim, owned positions, their values)}`` of every owned slice."""
    state = {}
    for name, (module, spec) in net._eidetic.layers.items():
        owned = (_owner_of_outputs(net, name, spec.unit_count(module)) != FREE).nonzero().flatten()
        for tensor_name, dim, index, _ in spec.producer_slices(module, owned):
            tensor = getattr(module, tensor_name)
            state[(name, tensor_name)] = (dim, index, tensor.detach().index_select(dim, index).clone())
    tasks = net._eidetic.frozen_tasks
    if net.heads.shared and tasks:
        head = net.heads[0]
        owned = (_owner_of_inputs(net, FEATURES, net.graph.feature_dim) >= 0).nonzero().flatten()
        state[("heads.0", "weight")] = (1, owned, head.weight.detach().index_select(1, owned).clone())
        state[("heads.0", "bias")] = (0, torch.arange(head.out_features), head.bias.detach().clone())
    elif not net.heads.shared:
        for k in range(tasks):
            for tensor_name, tensor in net.heads[k].named_parameters():
                index = torch.arange(tensor.shape[0])
                state[(f"heads.{k}", tensor_name)] = (0, index, tensor.detach().clone())
    return state


def assert_persistent(net, earlier: dict) -> None:
    """Every slice owned in ``earlier`` (a :func:`frozen_state`) is bitwise unchanged."""
    modules = dict(net.named_modules())
    for (module, tensor_name), (dim, index, values) in earlier.items():
        tensor = getattr(modules[module], tensor_name)
        now = tensor.detach().index_select(dim, index)
        assert torch.equal(now, values), f"frozen slice {module}.{tensor_name} changed"


def assert_resistance(net) -> None:
    """In rows of a unit owned by task k, every entry reading a free unit or a unit of a task
    after k is exactly zero; the same for head k's columns."""
    for name, (module, spec) in net._eidetic.layers.items():
        rows = _owner_of_outputs(net, name, spec.unit_count(module))
        cols = _owner_of_inputs(net, name, spec.input_size(module))
        for k in rows[rows >= 0].unique().tolist():
            later = (cols != RAW) & ((cols == FREE) | (cols > k))
            for tensor_name, mask in spec.consumer_entries(module, rows == k, later):
                entries = getattr(module, tensor_name).detach()[mask.expand_as(getattr(module, tensor_name))]
                assert torch.all(entries == 0), f"{name}.{tensor_name}: a row of task {k} reads a free or later unit"
    cols = _owner_of_inputs(net, FEATURES, net.graph.feature_dim)
    if net.heads.shared:  # task k reads the shared head through the mask of units owned by tasks <= k
        for k in range(net._eidetic.frozen_tasks):
            mask = getattr(net.heads, f"mask_{k}")
            assert torch.equal(mask.bool(), (cols >= 0) & (cols <= k)), f"task {k}'s feature mask is wrong"
        return
    for k in range(net._eidetic.frozen_tasks):
        inputs = getattr(net.heads, f"inputs_{k}", None)  # a head from before a widening reads its old features
        read = cols if inputs is None else cols[inputs.cpu()]
        bad = (read != RAW) & ((read == FREE) | (read > k))
        assert torch.all(net.heads[k].weight.detach()[:, bad] == 0), f"head {k} reads a free or later unit"


def all_logits(net, x: torch.Tensor) -> list[torch.Tensor]:
    """Every task's logits on ``x`` in evaluation mode."""
    was = net.training
    net.eval()
    with torch.no_grad():
        out = [net.logits(x, k) for k in range(net.num_tasks)]
    net.train(was)
    return out


def check_after_task(net, fixed: torch.Tensor, task: int, logits: list[torch.Tensor], frozen: list[dict]) -> None:
    """After ``task`` ends: every earlier task's logits on ``fixed`` are ``torch.equal`` to what
    they were (``logits``), every earlier frozen state (``frozen``) is unchanged, and cut entries
    are zero. Appends this task's logits and frozen state to the two lists."""
    now = all_logits(net, fixed)
    for j in range(task):
        assert torch.equal(now[j], logits[j]), f"task {j} changed after task {task}"
    logits.append(now[task])
    for state in frozen:
        assert_persistent(net, state)
    frozen.append(frozen_state(net))
    assert_resistance(net)


def _position_keys(net, module: str, size: int, side: str) -> list[tuple]:
    """A name for each output or input position of ``module`` that does not depend on where it
    sits: ``(group, unit, k)`` for the k-th position of a unit, ``("raw", k)`` for the k-th
    position that holds no unit."""
    keys: list[tuple | None] = [None] * size
    for group in net.graph:
        ids = _unit_ids(net, group)
        for slot in getattr(group, side):
            if slot.module != module:
                continue
            seen: dict[int, int] = {}
            for unit, position in sorted(zip(slot.units.tolist(), slot.index.tolist())):
                keys[position] = (group.key, ids[unit], seen.get(unit, 0))
                seen[unit] = seen.get(unit, 0) + 1
    raw = iter(range(size))
    return [key if key is not None else ("raw", next(raw)) for key in keys]


def _unit_ids(net, group) -> list[tuple[str, int]]:
    """A name for each unit of ``group`` that widening does not change: its block of the anchor
    layer (a layer and direction of a recurrent module) and its place in that block."""
    module, spec = net._eidetic.layers[group.key]
    anchor = next(s for s in group.outs if s.module == group.key)
    ids = [("", -1)] * group.size
    for unit, position in zip(anchor.units.tolist(), anchor.index.tolist()):
        label, first = next((b[0], b[1]) for b in spec.unit_blocks(module) if b[1] <= position < b[2])
        ids[unit] = (label, position - first)
    return ids


def unit_state(net) -> dict[tuple[str, str], tuple[list, list | None, torch.Tensor]]:
    """Every owned slice, addressed by unit rather than by position: ``{(module, tensor): (row
    keys, column keys or None, values)}``, rows and columns in key order. Comparing two of them
    (:func:`assert_same_units`) checks persistence across a widening, which moves positions."""
    state = {}
    for name, (module, spec) in net._eidetic.layers.items():
        rows = _position_keys(net, name, spec.unit_count(module), "outs")
        owner = _owner_of_outputs(net, name, spec.unit_count(module))
        owned = (owner != FREE).nonzero().flatten()
        for tensor_name, dim, index, which in spec.producer_slices(module, owned):
            tensor = getattr(module, tensor_name).detach()
            seen: dict[tuple, int] = {}
            row_keys = []
            for w in which.tolist():  # a unit may own several rows (the gates of a recurrent layer)
                key = rows[int(owned[w])]
                row_keys.append((*key, seen.get(key, 0)))
                seen[key] = seen.get(key, 0) + 1
            order = sorted(range(len(row_keys)), key=lambda i: (row_keys[i], i))
            values = tensor.index_select(dim, index[order]).movedim(dim, 0)
            columns, in_dim = _columns(net, name, module, spec, tensor_name, dim)
            if columns is not None:
                col_order = sorted(range(len(columns)), key=lambda i: columns[i])
                values = values.index_select(in_dim, torch.tensor(col_order, dtype=torch.long))
                columns = [columns[i] for i in col_order]
            state[(name, tensor_name)] = ([row_keys[i] for i in order], columns, values.clone())
    return state


def _columns(net, name, module, spec, tensor_name, dim) -> tuple[list | None, int]:
    """Keys of the input positions read along the columns of ``tensor_name``, and the dim of
    those columns once the unit dim is moved first (``None`` if the tensor reads no units)."""
    keys = _position_keys(net, name, spec.input_size(module), "ins")
    if hasattr(spec, "gates"):  # a recurrent layer: each weight reads a range of input positions
        for block_name, _, _, first, width in spec._blocks():
            if block_name == tensor_name:
                return keys[first: first + width], 1
        return None, 0
    if tensor_name == spec.in_tensor and spec.groups == 1:
        return keys, spec.in_dim if spec.in_dim > dim else spec.in_dim + 1
    return None, 0


def assert_same_units(net, earlier: dict) -> None:
    """Every slice in ``earlier`` (a :func:`unit_state`) is bitwise unchanged, unit by unit;
    columns reading units added since must be zero in those rows."""
    now = unit_state(net)
    for key, (rows, columns, values) in earlier.items():
        new_rows, new_columns, new_values = now[key]
        pick = [new_rows.index(r) for r in rows]
        current = new_values.index_select(0, torch.tensor(pick, dtype=torch.long))
        if columns is not None:
            module, spec = net._eidetic.layers[key[0]]
            _, in_dim = _columns(net, key[0], module, spec, key[1], spec.out_dim_of(key[1]))
            keep = [new_columns.index(c) for c in columns]
            old = set(columns)
            extra = [i for i, c in enumerate(new_columns) if c not in old]
            if extra:
                added = current.index_select(in_dim, torch.tensor(extra, dtype=torch.long))
                assert torch.all(added == 0), f"frozen rows of {key[0]}.{key[1]} read new units"
            current = current.index_select(in_dim, torch.tensor(keep, dtype=torch.long))
        assert torch.equal(current, values), f"frozen slice {key[0]}.{key[1]} changed"
