"""Recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) as layers of the unit table.

torch-pruning's recurrent support is broken (reference/torch-pruning.md §2), so the couplings
of a recurrent layer are declared here and checked by :func:`check_recurrent`.

Every hidden unit of every layer ``k`` and direction ``d`` of the module is a unit; its position
is ``(k * D + d) * H + j`` for hidden index ``j`` (``D`` directions, ``H`` hidden units). Unit
``(k, d, j)`` owns, in the tensors of layer ``k`` and direction ``d`` (suffix ``_reverse`` for
``d = 1``), rows ``g * H + j`` of ``weight_ih``, ``weight_hh``, ``bias_ih`` and ``bias_hh`` for
each of the ``G`` gates (4 for LSTM, 3 for GRU, 1 for RNN).

The layer reads *input positions*: ``0 .. I-1`` are the module's input features, read by the
columns of ``weight_ih_l0`` (both directions); ``I + u`` is the module's own unit ``u = (k, d,
j)``, read by column ``j`` of ``weight_hh_lk`` of direction ``d`` (the recurrence) and by column
``d * H + j`` of ``weight_ih_l{k+1}`` of both directions (the next layer). Outside the module,
the units of the last layer appear in the output sequence at feature ``d * H + j``, and every
unit appears in the final hidden state (and, for an LSTM, the final cell state) at
``[k * D + d, :, j]``: the probe perturbs all of these and finds who reads them.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .layers import LayerSpec, ProducerSlice, replace_grown

_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


@dataclass(frozen=True)
class RecurrentSpec(LayerSpec):
    """The unit layout of an ``nn.LSTM``, ``nn.GRU`` or ``nn.RNN`` (see the module docstring)."""

    gates: int = 1
    hidden: int = 1
    layers: int = 1
    directions: int = 1
    inputs: int = 1
    batch_first: bool = False
    bias: bool = True

    # -- layout ---------------------------------------------------------------------------

    def _suffix(self, d: int) -> str:
        return "_reverse" if d else ""

    def _split(self, positions: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
        """``(layer, direction, entries of positions in it)`` for the positions given."""
        block = positions // self.hidden
        return [(int(b) // self.directions, int(b) % self.directions, (block == b).nonzero().flatten())
                for b in block.unique()]

    def unit_count(self, module: nn.Module) -> int:
        return self.layers * self.directions * self.hidden

    def producer_slices(self, module: nn.Module, positions: torch.Tensor) -> list[ProducerSlice]:
        slices = []
        for k, d, entries in self._split(positions):
            j = positions[entries] % self.hidden
            rows = (torch.arange(self.gates, device=j.device)[:, None] * self.hidden + j[None, :]).flatten()
            owner = entries.repeat(self.gates)
            names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.bias else [])
            slices += [(f"{n}_l{k}{self._suffix(d)}", 0, rows, owner) for n in names]
        return slices

    def unit_blocks(self, module: nn.Module) -> list[tuple[str, int, int]]:
        if self.layers * self.directions == 1:
            return super().unit_blocks(module)
        return [(f".l{b // self.directions}{self._suffix(b % self.directions)}", b * self.hidden, (b + 1) * self.hidden)
                for b in range(self.layers * self.directions)]

    def input_size(self, module: nn.Module) -> int:
        return self.inputs + self.unit_count(module)

    def _blocks(self):
        """``(tensor name, layer, direction, first input position, width)`` of every weight."""
        per_layer = self.directions * self.hidden
        for k in range(self.layers):
            for d in range(self.directions):
                s = self._suffix(d)
                if k == 0:
                    yield f"weight_ih_l0{s}", k, d, 0, self.inputs
                else:
                    yield f"weight_ih_l{k}{s}", k, d, self.inputs + (k - 1) * per_layer, per_layer
                yield f"weight_hh_l{k}{s}", k, d, self.inputs + (k * self.directions + d) * self.hidden, self.hidden

    def _rows(self, rows: torch.Tensor | None, k: int, d: int) -> torch.Tensor | None:
        if rows is None:
            return None
        start = (k * self.directions + d) * self.hidden
        return rows[start: start + self.hidden].repeat(self.gates)

    def consumer_entries(self, module: nn.Module, rows: torch.Tensor | None,
                         columns: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        entries = []
        for name, k, d, first, width in self._blocks():
            cols = columns[first: first + width]
            if not cols.any():
                continue
            mask = cols[None, :].expand(self.gates * self.hidden, width)
            selected = self._rows(rows, k, d)
            if selected is not None:
                mask = mask & selected[:, None]
            if mask.any():
                entries.append((name, mask.to(getattr(module, name).device)))
        return entries

    def read_positions(self, module: nn.Module, rows: torch.Tensor) -> torch.Tensor:
        read = torch.zeros(self.input_size(module), dtype=torch.bool)
        for name, k, d, first, width in self._blocks():
            nonzero = (getattr(module, name) != 0).cpu() & self._rows(rows, k, d)[:, None]
            read[first: first + width] |= nonzero.any(dim=0)
        return read

    def internal_slots(self, module: nn.Module) -> list[tuple[int, int]]:
        return [(u, self.inputs + u) for u in range(self.unit_count(module))]

    def scored(self, tensor_name: str) -> bool:
        return tensor_name.startswith("weight_")

    # -- widening (see ``eidetic/guarantee/resizing.py`` and ``eras.py``) -------------------

    def widened_positions(self, module: nn.Module, added: int) -> torch.Tensor:
        """Every layer and direction gets ``added / (layers * directions)`` hidden units, after
        its existing ones: unit ``(b, j)`` moves from ``b * H + j`` to ``b * H' + j``."""
        blocks = self.layers * self.directions
        if added % blocks:
            raise ValueError(f"its {self.layers} layer(s) x {self.directions} direction(s) share one hidden size: "
                             f"widen it by a multiple of {blocks}, not {added}")
        position = torch.arange(self.unit_count(module))
        return position + (position // self.hidden) * (added // blocks)

    def size_names(self) -> tuple[str, ...]:
        return ("hidden_size", "input_size")

    def grown_layout(self, name: str, out_map: torch.Tensor, units: int, in_map: torch.Tensor,
                     inputs: int) -> list[tuple[int, torch.Tensor, int]]:
        new = self._resized(units, inputs)
        k, d = self._layer_of(name)
        rows = self._gate_rows(out_map, k, d, new.hidden)
        layout = [(0, rows, self.gates * new.hidden)]
        if name.startswith("weight_"):
            first, width = self._columns(name, k, d)
            new_first, new_width = new._columns(name, k, d)
            layout.append((1, in_map[first: first + width] - new_first, new_width))
        return layout

    def resize(self, module: nn.Module, out_map: torch.Tensor, units: int, in_map: torch.Tensor | None,
               inputs: int) -> None:
        if in_map is None:  # external inputs stay; the module's own units move with them
            in_map = torch.cat([torch.arange(self.inputs), inputs - units + out_map])
        for name, _ in module.named_parameters(recurse=False):
            replace_grown(module, name, self.grown_layout(name, out_map, units, in_map, inputs))
        new = self._resized(units, inputs)
        module.hidden_size, module.input_size = new.hidden, new.inputs
        module._init_flat_weights()  # the module's own list of its weights follows

    def sliced(self, name: str, tensor: torch.Tensor, rows: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """The rows and columns of an earlier shape (``rows``: now-positions of its units in order,
        ``inputs``: of its input positions) of tensor ``name`` (which has today's layout)."""
        blocks = self.layers * self.directions
        hidden = len(rows) // blocks
        k, d = self._layer_of(name)
        start = (k * self.directions + d) * hidden
        units = rows[start: start + hidden] - (k * self.directions + d) * self.hidden
        gate_rows = (torch.arange(self.gates)[:, None] * self.hidden + units[None, :]).flatten()
        if tensor.shape[0] != 1:
            tensor = tensor.index_select(0, gate_rows.to(tensor.device))
        if name.startswith("weight_") and tensor.shape[1] != 1:
            old = self._resized(len(rows), len(inputs))
            first, width = old._columns(name, k, d)
            new_first, _ = self._columns(name, k, d)
            tensor = tensor.index_select(1, (inputs[first: first + width] - new_first).to(tensor.device))
        return tensor

    def era_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """The CPU recurrent kernels take another code path (and round differently) when no weight
        requires a gradient, so an era's copies require one, as the module's own weights do; the
        gradients they collect are dropped."""
        tensor = tensor.requires_grad_(True)
        tensor.register_post_accumulate_grad_hook(_drop_grad)
        return tensor

    def _resized(self, units: int, inputs: int) -> RecurrentSpec:
        hidden = units // (self.layers * self.directions)
        return dataclasses.replace(self, hidden=hidden, inputs=inputs - units)

    def _layer_of(self, name: str) -> tuple[int, int]:
        stem = name.removesuffix("_reverse")
        return int(stem.rsplit("_l", 1)[1]), int(name.endswith("_reverse"))

    def _gate_rows(self, out_map: torch.Tensor, k: int, d: int, hidden: int) -> torch.Tensor:
        """New rows of the gate rows of layer ``k``, direction ``d`` (old row order)."""
        block = k * self.directions + d
        units = out_map[block * self.hidden: (block + 1) * self.hidden] - block * hidden
        return (torch.arange(self.gates)[:, None] * hidden + units[None, :]).flatten()

    def _columns(self, name: str, k: int, d: int) -> tuple[int, int]:
        """``(first input position, width)`` read by weight ``name``."""
        for tensor_name, _, _, first, width in self._blocks():
            if tensor_name == name:
                return first, width
        raise KeyError(name)

    def overwrite(self, output, old, now: torch.Tensor, then: torch.Tensor):
        """``output`` with the units at positions ``now`` taken from ``old`` (the module at an
        earlier shape) at positions ``then``: in the output sequence and the final states."""
        sequence, state = output
        old_sequence, old_state = old
        blocks = self.layers * self.directions
        old_hidden = old_state[0].shape[-1] if isinstance(old_state, tuple) else old_state.shape[-1]
        last_now, last_then = (blocks - self.directions) * self.hidden, (blocks - self.directions) * old_hidden
        top = now >= last_now
        data, old_data = self._rows_view(sequence), self._rows_view(old_sequence)
        data = data.index_copy(-1, (now[top] - last_now).to(data.device),
                               old_data.index_select(-1, (then[top] - last_then).to(data.device)))
        if isinstance(sequence, PackedSequence):
            sequence = sequence._replace(data=data)
        else:
            sequence = data.reshape(*sequence.shape[:-1], data.shape[-1])

        def states(mine, theirs):
            flat = mine.permute(1, 0, 2).reshape(mine.shape[1], -1)
            source = theirs.permute(1, 0, 2).reshape(theirs.shape[1], -1)
            flat = flat.index_copy(1, now.to(flat.device), source.index_select(1, then.to(flat.device)))
            return flat.reshape(mine.shape[1], mine.shape[0], mine.shape[2]).permute(1, 0, 2)

        if isinstance(state, tuple):
            state = tuple(states(a, b) for a, b in zip(state, old_state))
        else:
            state = states(state, old_state)
        return sequence, state

    def era_input(self, args, inputs: torch.Tensor, units: int):
        """The module's input at an earlier shape (of ``units`` units): its external inputs."""
        x = args[0]
        if len(args) > 1 and args[1] is not None:
            from ..errors import UnsupportedLayerError

            raise UnsupportedLayerError("a widened recurrent layer computes its frozen units at their old width and "
                                        "cannot take an initial state: call it without one")
        external = inputs[: len(inputs) - units]
        if isinstance(x, PackedSequence):
            return x._replace(data=x.data.index_select(-1, external.to(x.data.device)))
        return x.index_select(-1, external.to(x.device))

    # -- activations ------------------------------------------------------------------------

    def _samples_of_rows(self, value, batch: int) -> torch.Tensor:
        """For each row of the output or input data, the sample of the batch it belongs to."""
        if isinstance(value, PackedSequence):
            order = value.sorted_indices if value.sorted_indices is not None else torch.arange(batch)
            order = order.to(value.data.device)
            return torch.cat([order[:n] for n in value.batch_sizes.tolist()])
        samples = torch.arange(batch, device=value.device)
        steps = value.shape[1] if self.batch_first else value.shape[0]
        return samples.repeat_interleave(steps) if self.batch_first else samples.repeat(steps)

    def _rows_view(self, value) -> torch.Tensor:
        """The data of a sequence as ``(rows, features)``, rows matching :meth:`_samples_of_rows`."""
        data = value.data if isinstance(value, PackedSequence) else value
        return data.reshape(-1, data.shape[-1])

    def perturb(self, output, offsets: torch.Tensor):
        sequence, state = output
        states = list(state) if isinstance(state, tuple) else [state]
        batch = states[0].shape[1]
        blocks = self.layers * self.directions
        per_sample = offsets  # (batch, units)
        delta = per_sample.view(batch, blocks, self.hidden).transpose(0, 1)
        states = [s + delta.to(s.dtype) for s in states]
        visible = per_sample[:, (blocks - self.directions) * self.hidden:]  # the last layer's units
        rows = self._samples_of_rows(sequence, batch)
        data = self._rows_view(sequence)
        shifted = visible.to(data.device, data.dtype)[rows]
        if isinstance(sequence, PackedSequence):
            sequence = sequence._replace(data=data + shifted)
        else:  # add in the sequence's own layout (kernels downstream may round by layout)
            sequence = sequence + shifted.reshape(sequence.shape)
        return sequence, (tuple(states) if isinstance(state, tuple) else states[0])

    def input_changes(self, now, base, copies: int) -> torch.Tensor:
        batch = (len(now.sorted_indices) if isinstance(now, PackedSequence) and now.sorted_indices is not None
                 else int(now.batch_sizes[0]) if isinstance(now, PackedSequence)
                 else now.shape[0] if self.batch_first else now.shape[1])
        diff = (self._rows_view(now) != self._rows_view(base)).int()
        per_sample = torch.zeros(batch, diff.shape[1], dtype=torch.int32, device=diff.device)
        per_sample.index_add_(0, self._samples_of_rows(now, batch), diff)
        return (per_sample > 0).reshape(copies, -1, diff.shape[1]).any(dim=1)

    def input_activity(self, module: nn.Module, args, output) -> torch.Tensor:
        """Mean absolute activity per input position: the input features, then every unit's
        final hidden state."""
        external = self._rows_view(args[0]).detach().abs().double().mean(dim=0)
        state = output[1][0] if isinstance(output[1], tuple) else output[1]
        internal = state.detach().abs().double().mean(dim=1).reshape(-1)
        return torch.cat([external, internal])


def _drop_grad(tensor: torch.Tensor) -> None:
    tensor.grad = None


def recurrent_spec(module: nn.RNNBase) -> RecurrentSpec:
    """The :class:`RecurrentSpec` of a recurrent module (``proj_size`` is refused)."""
    from ..errors import UnsupportedLayerError

    if getattr(module, "proj_size", 0):
        raise UnsupportedLayerError(
            f"{type(module).__name__} with proj_size={module.proj_size} is not supported: the projection "
            "mixes hidden units. Use proj_size=0, with a Linear layer after the LSTM if needed."
        )
    gates = next(g for t, g in _GATES.items() if isinstance(module, t))
    names = tuple((name, 0) for name, _ in module.named_parameters(recurse=False))
    return RecurrentSpec(
        out_tensors=names, gates=gates, hidden=module.hidden_size, layers=module.num_layers,
        directions=2 if module.bidirectional else 1, inputs=module.input_size, batch_first=module.batch_first,
        bias=module.bias, score_tensors=(),
    )


@torch.no_grad()
def check_recurrent(name: str, module: nn.Module, spec: RecurrentSpec, inputs: tuple) -> list[str]:
    """Check the declared layout of a recurrent module by perturbing each unit's rows.

    For every unit: cut its declared readers (the entries reading it), add noise to its declared
    rows, and run the module on ``inputs``. Only the unit's own appearances (its feature of the
    output sequence, its entries of the final states) may move, and they must move. A wrong row
    or a missing reader shows up as another unit moving, a silent row as the unit not moving.
    """
    was_training = module.training
    module.eval()
    problems = []
    for unit in range(spec.unit_count(module)):
        isolated = copy.deepcopy(module)
        columns = torch.zeros(spec.input_size(module), dtype=torch.bool)
        columns[spec.inputs + unit] = True
        for tensor_name, mask in spec.consumer_entries(isolated, None, columns):
            getattr(isolated, tensor_name).masked_fill_(mask, 0)
        base = isolated(*inputs)
        for tensor_name, dim, index, _ in spec.producer_slices(isolated, torch.tensor([unit])):
            tensor = getattr(isolated, tensor_name)
            tensor.index_add_(dim, index.to(tensor.device), torch.randn_like(tensor.index_select(dim, index)))
        moved = _moved_units(spec, base, isolated(*inputs))
        if moved != {unit}:
            others = sorted(moved - {unit})
            problems.append(f"unit {unit} of recurrent layer '{name}': perturbing its rows "
                            + (f"moved units {others}" if others else "did not move it"))
    module.train(was_training)
    return problems


def _moved_units(spec: RecurrentSpec, before, after) -> set[int]:
    """Units whose appearances in the output sequence or the final states differ."""
    moved = set()
    for b, a in zip(_states(before[1]), _states(after[1])):
        blocks, _, hidden = (b != a).nonzero(as_tuple=True)
        moved |= set((blocks * spec.hidden + hidden).tolist())
    data_b, data_a = spec._rows_view(before[0]), spec._rows_view(after[0])
    last = (spec.layers - 1) * spec.directions * spec.hidden
    moved |= {last + int(p) for p in (data_b != data_a).any(dim=0).nonzero().flatten()}
    return moved


def _states(state) -> list[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]
