"""A registered :class:`~eidetic.graph.LayerSpec` checked against what its layer computes.

The spec of a custom layer is the user's word for where its units live; the probe measures how
units travel *between* layers, not inside one. A spec whose ``out_tensors`` name the wrong
dimension (a transposed weight on a square layer has the same shapes either way) would freeze
the wrong slices, and earlier tasks would change. So, at set-up, every custom layer is run on
an input of the shape it gets in the example (dense random values for floating inputs, which a
ReLU before it would otherwise zero where it matters): slice ``u`` of each tensor of
``out_tensors`` is changed (along its declared dimension, for the first, a middle and the last
unit) and only output unit ``u`` may move; the names the spec gives must be tensors of the layer.
Built-in layers (of ``torch.nn``) are trusted.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UnsupportedLayerError
from .layers import Layers, LayerSpec
from .recurrent import RecurrentSpec


def check_specs(forward, layers: Layers, example: torch.Tensor) -> None:
    """Raise :class:`~eidetic.errors.UnsupportedLayerError` where a custom layer's spec names a
    tensor it does not have, or a unit slice that moves other output units than its own."""
    custom = {name: (module, spec) for name, (module, spec) in layers.items() if _custom(module, spec)}
    if not custom:
        return
    for name, (module, spec) in custom.items():
        _check_names(name, module, spec)
    inputs = first_inputs(forward, custom, example)
    generator = torch.Generator().manual_seed(0)
    for name, (module, spec) in custom.items():
        if not inputs.get(name) or not isinstance(inputs[name][0], torch.Tensor):
            continue
        x = inputs[name][0]
        if x.is_floating_point():  # dense: the example's own input may be zero where it matters (after a ReLU)
            x = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        _check_out_slices(name, module, spec, x)


def _custom(module: nn.Module, spec: LayerSpec) -> bool:
    return not type(module).__module__.startswith("torch.") and not isinstance(spec, RecurrentSpec)


def _label(name: str, module: nn.Module) -> str:
    return f"layer '{name}' ({type(module).__name__})"


def _check_names(name: str, module: nn.Module, spec: LayerSpec) -> None:
    tensors = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
    scored = [t for t in spec.score_tensors or () if t != "weight" or "weight" in tensors]  # the default: optional
    named = [(field, tensor) for field, tensor in
             [*(("out_tensors", t) for t, _ in spec.out_tensors), ("in_tensor", spec.in_tensor),
              *(("score_tensors", t) for t in scored)] if tensor is not None]
    for field, tensor in named:
        if tensor not in tensors:
            raise UnsupportedLayerError(f"{_label(name, module)}: its LayerSpec's {field} names '{tensor}', which is "
                                        f"not a parameter or buffer of the layer; it has {sorted(tensors)}")
    for tensor, dim in spec.out_tensors:
        if not -tensors[tensor].dim() <= dim < tensors[tensor].dim():
            raise UnsupportedLayerError(f"{_label(name, module)}: its LayerSpec's out_tensors give '{tensor}' dim "
                                        f"{dim}, but it has {tensors[tensor].dim()} dimension(s)")


def first_inputs(forward, layers: Layers, example: torch.Tensor) -> dict[str, tuple]:
    """The positional arguments each of ``layers`` is first called with in ``forward(example)``
    (its tensors copied: a later in-place operation cannot change them)."""
    inputs: dict[str, tuple] = {}

    def record(name):
        def hook(_module, args):
            if name not in inputs:
                inputs[name] = tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args)
        return hook

    handles = [module.register_forward_pre_hook(record(name)) for name, (module, _) in layers.items()]
    try:
        with torch.no_grad():
            forward(example)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


@torch.no_grad()
def _check_out_slices(name: str, module: nn.Module, spec: LayerSpec, x: torch.Tensor) -> None:
    base = module(x)
    if not isinstance(base, torch.Tensor):
        return
    unit_dim = spec.out_unit_dim % base.dim()
    units = base.shape[unit_dim]
    for tensor_name, dim in spec.out_tensors:
        tensor = getattr(module, tensor_name)
        if not tensor.is_floating_point() or tensor.shape[dim] != units:
            continue
        for u in sorted({0, units // 2, units - 1}):
            saved = tensor.detach().clone()
            part = tensor.data.select(dim, u)
            part.add_(1.0 + float(part.abs().max()) if part.numel() else 1.0)
            try:
                moved = (module(x) != base).movedim(unit_dim, 0).flatten(1).any(dim=1)
            finally:
                tensor.data.copy_(saved)
            others = [int(i) for i in moved.nonzero().flatten() if int(i) != u]
            if others:
                raise UnsupportedLayerError(
                    f"{_label(name, module)}: its LayerSpec says slice {u} of '{tensor_name}' along dim {dim} belongs "
                    f"to output unit {u} (along out_unit_dim={spec.out_unit_dim}), but changing it moves output "
                    f"unit(s) {others[:8]} too: the dims of out_tensors and out_unit_dim must index the output units, "
                    "or earlier tasks' outputs would change")
