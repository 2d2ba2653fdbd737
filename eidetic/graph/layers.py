"""Which tensors of a layer hold which units: the per-type registry.

A *layer* is a module with parameters of its own. For each layer type a :class:`LayerSpec`
says where the layer's output units live (``out_tensors``: one slice per output unit along a
dimension) and where it reads its input units (``in_tensor``: columns along ``in_dim``).
Types with no spec are refused at set-up, with a message naming the module.

Register a custom layer once, before the first ``train_task``::

    class Scaled(nn.Module):                      # y = (x @ W) * s, W is (in, out)
        def __init__(self, n_in, n_out):
            super().__init__()
            self.w = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)
            self.s = nn.Parameter(torch.ones(n_out))
        def forward(self, x):
            return (x @ self.w) * self.s
        def reset_parameters(self):                # used to recycle free units
            nn.init.normal_(self.w, std=self.w.shape[0] ** -0.5)
            nn.init.ones_(self.s)

    eidetic.register_layer(
        Scaled,
        eidetic.LayerSpec(out_tensors=(("w", 1), ("s", 0)), in_tensor="w", in_dim=0,
                          out_unit_dim=-1, in_unit_dim=-1, score_tensors=("w",)),
    )
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UnsupportedLayerError

__all__ = [
    "LayerSpec",
    "Layers",
    "broadcast_rows_cols",
    "check_refused",
    "check_supported",
    "grown",
    "input_positions",
    "register_layer",
    "replace_grown",
    "spec_of",
    "substituted",
]


@dataclass(frozen=True)
class LayerSpec:
    """Where the units of one layer live in its tensors.

    Args:
        out_tensors: ``(tensor name, dim)`` pairs; slice ``i`` along ``dim`` belongs to output
            unit ``i``. Buffers (BatchNorm running statistics) are listed here too.
        in_tensor: the tensor whose entries read input units, or ``None`` if the layer reads no
            units of its own (it is a *pass-through*, or reads only the raw input).
        in_dim: the dimension of ``in_tensor`` that indexes input units.
        groups: grouped layers (grouped convolutions): output unit ``r`` reads only the
            inputs of group ``r // (out / groups)``.
        out_unit_dim: the dimension of the layer's *output activation* that indexes units
            (1 for channels, -1 for features of a Linear layer).
        in_unit_dim: the same for the layer's input activation.
        passthrough: output unit ``i`` is computed from input unit ``i`` alone (BatchNorm,
            depthwise convolution): the layer joins the units of its input instead of making
            new ones.
        score_tensors: tensors whose magnitude ranks units for L1/L2 pruning.
        size_attributes: ``(attribute, "out" | "in")`` pairs: the module attributes that hold
            its number of units or input positions (``out_features``, ``in_channels``...),
            updated when the network is widened; ``None`` (the default for a registered layer)
            means the layer cannot be widened, ``()`` that it has no such attribute.
        additive: the layer's output is its bias plus a sum over input positions of what each
            contributes through ``in_tensor`` (``nn.Linear``, ungrouped convolutions), so that a
            widened layer can be computed in blocks of units and inputs (see
            :mod:`eidetic.guarantee.eras`); other layers replay their earlier shapes in full.
    """

    out_tensors: tuple[tuple[str, int], ...]
    in_tensor: str | None = None
    in_dim: int = 1
    groups: int = 1
    out_unit_dim: int = 1
    in_unit_dim: int = 1
    passthrough: bool = False
    score_tensors: tuple[str, ...] = ("weight",)
    size_attributes: tuple[tuple[str, str], ...] | None = None
    additive: bool = False

    def out_dim_of(self, name: str) -> int:
        """The unit dimension of tensor ``name`` among ``out_tensors``."""
        for tensor_name, dim in self.out_tensors:
            if tensor_name == name:
                return dim
        raise KeyError(name)

    def tensor_names(self) -> set[str]:
        names = {name for name, _ in self.out_tensors}
        if self.in_tensor is not None:
            names.add(self.in_tensor)
        return names

    # The methods below are what the rest of eidetic uses. A layer whose units do not map one to
    # one onto slices of its tensors (a recurrent layer: gate rows, several tensors) overrides
    # them; see ``eidetic/graph/recurrent.py``.

    def unit_count(self, module: nn.Module) -> int:
        """Number of units the layer produces (its *unit positions* are ``0..count-1``)."""
        name, dim = self.out_tensors[0]
        return getattr(module, name).shape[dim]

    def producer_slices(self, module: nn.Module, positions: torch.Tensor) -> list[ProducerSlice]:
        """The tensor slices owned by the units at ``positions``: ``(tensor name, dim, index,
        owner)``, where ``owner[i]`` is the entry of ``positions`` that ``index[i]`` belongs to."""
        owner = torch.arange(len(positions), device=positions.device)
        return [(name, dim, positions, owner) for name, dim in self.out_tensors]

    def input_size(self, module: nn.Module) -> int:
        """Number of input positions the layer reads (0 if it reads no units)."""
        if self.in_tensor is None:
            return 0
        return getattr(module, self.in_tensor).shape[self.in_dim] * self.groups

    def consumer_entries(self, module: nn.Module, rows: torch.Tensor | None,
                         columns: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """Element masks of the entries by which the units selected by ``rows`` (a mask over
        unit positions, ``None`` for all) read the input positions selected by ``columns``:
        ``(tensor name, mask broadcastable to the tensor)``."""
        if self.in_tensor is None:
            return []
        mask2d = columns[input_positions(module, self)]
        if rows is not None:
            mask2d = mask2d & rows[:, None]
        weight = getattr(module, self.in_tensor)
        return [(self.in_tensor, broadcast_rows_cols(mask2d, weight, self).to(weight.device))]

    def read_positions(self, module: nn.Module, rows: torch.Tensor) -> torch.Tensor:
        """Input positions that the units selected by ``rows`` read through a non-zero weight."""
        read = torch.zeros(self.input_size(module), dtype=torch.bool)
        if self.in_tensor is None:
            return read
        weight = getattr(module, self.in_tensor)
        nonzero = (weight != 0).movedim((self.out_dim_of(self.in_tensor), self.in_dim), (0, 1))
        nonzero = (nonzero.reshape(*nonzero.shape[:2], -1).any(dim=2) & rows.to(weight.device)[:, None]).cpu()
        read[input_positions(module, self).expand_as(nonzero)[nonzero]] = True
        return read

    # Probing (see ``eidetic/graph/probe.py``): how the units appear in the layer's activations.

    def perturb(self, output, offsets: torch.Tensor):
        """``output`` with ``offsets[n, u]`` added to unit ``u`` of sample ``n`` of the batch."""
        tensor = _first_tensor(output)
        dim = self.out_unit_dim % tensor.dim()
        shape = [1] * tensor.dim()
        shape[0], shape[dim] = offsets.shape
        changed = tensor + offsets.to(tensor.dtype).view(shape)
        return changed if isinstance(output, torch.Tensor) else (changed, *output[1:])

    def input_changes(self, now, base, copies: int) -> torch.Tensor:
        """``(copies, positions)``: which input positions differ from the baseline in each copy."""
        diff = now != base
        dim = self.in_unit_dim % diff.dim()
        others = [d for d in range(1, diff.dim()) if d != dim]
        if others:
            diff = diff.any(dim=tuple(others))
        return diff.reshape(copies, -1, diff.shape[-1]).any(dim=1)

    def unit_blocks(self, module: nn.Module) -> list[tuple[str, int, int]]:
        """``(label, first, stop)`` unit-position ranges reported as separate layers by
        :meth:`ContinualNetwork.capacity` (a stacked recurrent module has one per layer and
        direction); the label is appended to the module name, empty for a single block."""
        return [("", 0, self.unit_count(module))]

    def internal_slots(self, module: nn.Module) -> list[tuple[int, int]]:
        """``(unit position, input position)`` pairs by which the layer reads its own units
        (a recurrence); the probe cannot see them, so the layer declares them."""
        return []

    # Widening (see ``eidetic/guarantee/resizing.py``).

    def widened_positions(self, module: nn.Module, added: int) -> torch.Tensor:
        """Where the existing units sit once ``added`` units are appended: new units take the
        positions not listed. By default they go after the existing ones."""
        return torch.arange(self.unit_count(module))

    def resize(self, module: nn.Module, out_map: torch.Tensor, units: int, in_map: torch.Tensor | None,
               inputs: int) -> None:
        """Replace the layer's tensors by ones with ``units`` units and ``inputs`` input
        positions: existing unit ``i`` moves to position ``out_map[i]``, existing input position
        ``j`` to ``in_map[j]`` (``None``: it stays at ``j``); new entries are zero."""
        if self.size_attributes is None:
            raise UnsupportedLayerError(
                f"{type(module).__name__} cannot be widened: its LayerSpec does not say which attributes hold "
                "its sizes. Register it with LayerSpec(size_attributes=(('out_features', 'out'), ...)) "
                "(size_attributes=() if it has none)."
            )
        if in_map is None:
            in_map = torch.arange(self.input_size(module))
        for name in self.tensor_names():
            replace_grown(module, name, self.grown_layout(name, out_map, units, in_map, inputs))
        for attribute, role in self.size_attributes:
            setattr(module, attribute, units if role == "out" else inputs)

    def grown_layout(self, name: str, out_map: torch.Tensor, units: int, in_map: torch.Tensor,
                     inputs: int) -> list[tuple[int, torch.Tensor, int]]:
        """``(dim, new index of each old entry, new size)`` of tensor ``name`` in :meth:`resize`."""
        maps = [(dim, out_map, units) for n, dim in self.out_tensors if n == name]
        if name == self.in_tensor:
            maps.append((self.in_dim, in_map, inputs // self.groups))
        return maps

    def size_names(self) -> tuple[str, ...]:
        """The module attributes :meth:`resize` changes."""
        return tuple(name for name, _ in self.size_attributes or ())

    # Eras (see ``eidetic/guarantee/eras.py``): the layer at an earlier shape.

    def sliced(self, name: str, tensor: torch.Tensor, rows: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Tensor ``name`` (or a tensor broadcastable to it) cut to an earlier shape: ``rows`` are
        today's positions of that shape's units, ``inputs`` of its input positions."""
        for tensor_name, dim in self.out_tensors:
            if tensor_name == name and tensor.shape[dim] != 1:
                tensor = tensor.index_select(dim, rows.to(tensor.device))
        if name == self.in_tensor and tensor.shape[self.in_dim] != 1:
            tensor = tensor.index_select(self.in_dim, inputs.to(tensor.device))
        return tensor

    def era_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """An era's cached copy of a tensor as the layer's kernels must see it (as it is, here)."""
        return tensor

    def era_input(self, args, inputs: torch.Tensor, units: int) -> torch.Tensor:
        """The layer's input at an earlier shape: the positions ``inputs`` of today's input."""
        x = args[0]
        return x.index_select(self.in_unit_dim % x.dim(), inputs.to(x.device))

    def overwrite(self, output, old, now: torch.Tensor, then: torch.Tensor):
        """``output`` with the units at positions ``now`` taken from ``old`` at ``then``."""
        dim = self.out_unit_dim % output.dim()
        return output.index_copy(dim, now.to(output.device), old.index_select(dim, then.to(output.device)))

    # Scoring (see ``eidetic/training/scoring.py``).

    def scored(self, tensor_name: str) -> bool:
        """Whether ``tensor_name`` counts in the magnitude (L1/L2) of a unit."""
        return tensor_name in self.score_tensors

    def input_activity(self, module: nn.Module, args, output) -> torch.Tensor:
        """Mean absolute activity of each input position in one forward call (CLNP)."""
        moved = args[0].detach().abs().movedim(self.in_unit_dim, -1)
        return moved.reshape(-1, moved.shape[-1]).double().mean(dim=0)


ProducerSlice = tuple[str, int, torch.Tensor, torch.Tensor]


def grown(tensor: torch.Tensor, maps: list[tuple[int, torch.Tensor, int]]) -> torch.Tensor:
    """A zero tensor with ``size`` entries along each ``dim`` of ``maps``, holding ``tensor``'s
    entry ``i`` of that dim at ``index[i]``."""
    out = tensor.detach()
    for dim, index, size in maps:
        shape = list(out.shape)
        shape[dim] = size
        out = out.new_zeros(shape).index_copy_(dim, index.to(out.device), out)
    return out


@contextlib.contextmanager
def substituted(module: nn.Module, tensors: dict[str, torch.Tensor], sizes: dict[str, int] | None = None):
    """Inside the block, ``module``'s own parameters or buffers named in ``tensors`` are those
    tensors (any tensor, a computed one included) and its attributes in ``sizes`` those values."""
    sizes = sizes or {}
    saved = {name: (module._parameters if name in module._parameters else module._buffers, getattr(module, name))
             for name in tensors}
    saved_sizes = {name: getattr(module, name) for name in sizes}
    try:
        for name, tensor in tensors.items():
            saved[name][0][name] = tensor
        for name, value in sizes.items():
            setattr(module, name, value)
        if hasattr(module, "_init_flat_weights"):  # a recurrent module reads its own list of weights
            module._init_flat_weights()
        yield
    finally:
        for name, (store, tensor) in saved.items():
            store[name] = tensor
        for name, value in saved_sizes.items():
            setattr(module, name, value)
        if hasattr(module, "_init_flat_weights"):
            module._init_flat_weights()


def replace_grown(module: nn.Module, name: str, maps: list[tuple[int, torch.Tensor, int]]) -> None:
    """Put a grown copy of ``module.name`` in its place (a new Parameter for a parameter)."""
    old = getattr(module, name)
    new = grown(old, maps)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        module._buffers[name] = new


def _first_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise TypeError(f"expected a tensor output, got {type(value).__name__}")


SpecFn = Callable[[nn.Module], LayerSpec]
Layers = dict[str, tuple[nn.Module, LayerSpec]]  # {module name: (module, spec)}, in module order
_REGISTRY: dict[type, SpecFn] = {}


def register_layer(layer_type: type[nn.Module], spec: SpecFn | LayerSpec) -> None:
    """Teach eidetic how units map onto the tensors of ``layer_type`` (and its subclasses).

    Args:
        layer_type: the module class.
        spec: a :class:`LayerSpec`, or a function of the module instance returning one (use
            a function when the layout depends on the instance, e.g. its ``groups``).

    Example::

        eidetic.register_layer(MyLinear, eidetic.LayerSpec(
            out_tensors=(("weight", 0), ("bias", 0)), in_tensor="weight",
            out_unit_dim=-1, in_unit_dim=-1))
    """
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise TypeError(f"register_layer expects an nn.Module subclass, got {layer_type!r}")
    _REGISTRY[layer_type] = spec if callable(spec) else (lambda _module, _spec=spec: _spec)


def _linear(m: nn.Linear) -> LayerSpec:
    outs = (("weight", 0),) + ((("bias", 0),) if m.bias is not None else ())
    return LayerSpec(outs, in_tensor="weight", in_dim=1, out_unit_dim=-1, in_unit_dim=-1,
                     size_attributes=(("out_features", "out"), ("in_features", "in")), additive=True)


def _conv(m: nn.modules.conv._ConvNd) -> LayerSpec:
    outs = (("weight", 0),) + ((("bias", 0),) if m.bias is not None else ())
    depthwise = m.groups == m.in_channels == m.out_channels
    if depthwise:
        return LayerSpec(outs, passthrough=True,
                         size_attributes=(("out_channels", "out"), ("in_channels", "out"), ("groups", "out")))
    sizes = (("out_channels", "out"), ("in_channels", "in")) if m.groups == 1 else None
    return LayerSpec(outs, in_tensor="weight", in_dim=1, groups=m.groups, size_attributes=sizes, additive=m.groups == 1)


def _batchnorm(m: nn.modules.batchnorm._BatchNorm) -> LayerSpec:
    affine = (("weight", 0), ("bias", 0)) if m.affine else ()
    stats = (("running_mean", 0), ("running_var", 0))
    return LayerSpec(affine + stats, passthrough=True, score_tensors=(), size_attributes=(("num_features", "out"),))


def _embedding(m: nn.Embedding) -> LayerSpec:
    return LayerSpec((("weight", 1),), out_unit_dim=-1, size_attributes=(("embedding_dim", "out"),))


for _t, _fn in [
    (nn.Linear, _linear),
    (nn.Conv1d, _conv),
    (nn.Conv2d, _conv),
    (nn.Conv3d, _conv),
    (nn.BatchNorm1d, _batchnorm),
    (nn.BatchNorm2d, _batchnorm),
    (nn.BatchNorm3d, _batchnorm),
    (nn.SyncBatchNorm, _batchnorm),
    (nn.Embedding, _embedding),
]:
    register_layer(_t, _fn)


_NORM_ACROSS_UNITS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.CrossMapLRN2d, nn.RMSNorm)
_ATTENTION = (
    nn.MultiheadAttention,
    nn.Transformer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)

_ATTENTION_REASON = "attention mixes units, so no unit can be frozen on its own. Use convolutional or Linear layers."
_REFUSED: list[tuple[tuple[type, ...], str]] = [
    (
        _NORM_ACROSS_UNITS,
        "it normalises across units, so a unit trained for a later task would change the "
        "output of a frozen unit. Use BatchNorm (per-unit statistics, frozen per unit) or no "
        "normalisation.",
    ),
    (_ATTENTION, _ATTENTION_REASON),
    (
        (nn.RNNCellBase,),
        "recurrent cells stepped by hand in forward are not supported (the same cell is applied at "
        "every step). Use nn.LSTM, nn.GRU or nn.RNN over the whole sequence.",
    ),
    (
        (nn.modules.conv._ConvTransposeNd,),
        "transposed convolutions are not supported. Use upsampling followed by a convolution.",
    ),
    (
        (nn.EmbeddingBag, nn.Bilinear, nn.modules.instancenorm._InstanceNorm, nn.PReLU),
        "this layer type is not supported. Register its unit layout with "
        "eidetic.register_layer if its units are independent.",
    ),
]


def spec_of(module: nn.Module) -> LayerSpec | None:
    """The :class:`LayerSpec` of ``module``, or ``None`` if it holds no parameters of its own."""
    for cls in type(module).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls](module)
    return None


def _owns_tensors(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def refusal(module: nn.Module) -> str | None:
    """Why ``module``'s type cannot be used at all (normalisation across units, attention, ...),
    or ``None``. An explicit registration overrides a refusal."""
    if type(module) in _REGISTRY:
        return None
    for types, reason in _REFUSED:
        if isinstance(module, types):
            return reason
    if "attention" in type(module).__name__.lower():  # torchvision's window and relative attention, ...
        return _ATTENTION_REASON
    return None


def check_refused(modules: list[tuple[str, nn.Module]]) -> None:
    """Raise for the first refused module, naming the other kinds of refused modules too (a
    transformer holds both LayerNorm and attention: both are the reason)."""
    found: dict[str, tuple[str, nn.Module]] = {}
    for name, module in modules:
        reason = refusal(module)
        if reason is not None:
            found.setdefault(reason, (name, module))
    if not found:
        return
    (reason, (name, module)), *others = found.items()
    also = "".join(f" The network also has module '{n}' ({type(m).__name__}): {r}" for r, (n, m) in others)
    raise UnsupportedLayerError(f"module '{name}' ({type(module).__name__}) cannot be used in a ContinualNetwork: "
                                f"{reason}{also}")


def check_supported(name: str, module: nn.Module) -> LayerSpec | None:
    """Return the spec of a layer, ``None`` for a container, or raise for a module eidetic cannot
    place (unknown parameters, untracked BatchNorm statistics). Refused types are caught before,
    for the whole network at once, by :func:`check_refused`."""
    label = f"module '{name}' ({type(module).__name__})"
    spec = spec_of(module)
    if spec is None:
        if _owns_tensors(module):
            raise UnsupportedLayerError(
                f"{label} holds parameters but eidetic does not know which of their slices "
                "belong to which unit. Register the type with eidetic.register_layer(...), or "
                "build it from supported layers (Linear, Conv, BatchNorm)."
            )
        return None
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.track_running_stats:
        raise UnsupportedLayerError(
            f"{label} has track_running_stats=False: a frozen channel must normalise with "
            "frozen statistics. Create it with track_running_stats=True."
        )
    owned = {n for n, _ in module.named_parameters(recurse=False)}
    missing = owned - spec.tensor_names()
    if missing:
        raise UnsupportedLayerError(
            f"{label} has parameters {sorted(missing)} that its LayerSpec does not place; "
            "list them in out_tensors or in_tensor."
        )
    return spec


def input_positions(module: nn.Module, spec: LayerSpec) -> torch.Tensor:
    """Input-unit position read by each ``(output row, column)`` of ``spec.in_tensor``.

    Returns a long tensor that broadcasts to ``(rows, columns)``: ``(1, columns)`` holding
    ``0..in-1`` for an ungrouped layer, where every row reads every column; ``(rows, columns)``
    for a grouped convolution, whose row ``r`` reads positions
    ``(r // rows_per_group) * columns + j``.
    """
    weight = getattr(module, spec.in_tensor)
    cols = weight.shape[spec.in_dim]
    if spec.groups == 1:
        return torch.arange(cols)[None, :]
    rows = weight.shape[spec.out_dim_of(spec.in_tensor)]
    group = torch.arange(rows) // (rows // spec.groups)
    return group[:, None] * cols + torch.arange(cols)[None, :]


def broadcast_rows_cols(mask2d: torch.Tensor, weight: torch.Tensor, spec: LayerSpec) -> torch.Tensor:
    """View a ``(rows, columns)`` mask so that it broadcasts against ``spec.in_tensor``."""
    row_dim = spec.out_dim_of(spec.in_tensor)
    shape = [1] * weight.dim()
    shape[row_dim], shape[spec.in_dim] = mask2d.shape
    mask = mask2d if row_dim < spec.in_dim else mask2d.t()
    return mask.contiguous().view(shape)
