"""Discovering which slices of which tensors belong to which unit.

:func:`discover` is called once per architecture: it checks every module against the layer
registry (refusing LayerNorm, attention and unknown parametric modules with a clear error) and
measures the table with the perturbation probe (:mod:`.probe`). :func:`validate` re-measures a
given table, for tests and for tables a user has edited. :func:`propose` asks torch-pruning for
its table, to compare with ours (it is wrong for some split, concatenation, flatten and
recurrent cases, which is why the table is measured).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..errors import UnsupportedLayerError
from .layers import Layers, LayerSpec, check_refused, check_supported, input_positions, register_layer, spec_of
from .probe import measure
from .recurrent import RecurrentSpec, check_recurrent, recurrent_spec
from .spec_check import check_specs, first_inputs
from .table import FEATURES, Slot, UnitGraph, UnitGroup
from .tracer import propose
from .validate import compare

__all__ = [
    "FEATURES",
    "LayerSpec",
    "Layers",
    "RecurrentSpec",
    "Slot",
    "UnitGraph",
    "UnitGroup",
    "collect_layers",
    "compare",
    "discover",
    "input_positions",
    "measure",
    "propose",
    "register_layer",
    "spec_of",
    "validate",
]

log = logging.getLogger("eidetic")

for _recurrent in (nn.LSTM, nn.GRU, nn.RNN):
    register_layer(_recurrent, recurrent_spec)

Forward = Callable[[torch.Tensor], torch.Tensor]


def collect_layers(net: nn.Module, exclude: Iterable[nn.Module] = ()) -> Layers:
    """Every layer under ``net`` (outside ``exclude``) with its spec, in module order.

    Raises :class:`~eidetic.errors.UnsupportedLayerError` for a refused or unknown module.
    """
    direct = [name for name, _ in net.named_parameters(recurse=False)]
    if direct:
        raise UnsupportedLayerError(
            f"{type(net).__name__} holds parameters {direct} directly; eidetic can only give units of "
            "layers an owner. Put them in a layer (e.g. nn.Linear) or a registered custom layer."
        )
    skipped = {id(m) for root in exclude for m in root.modules()}
    modules = [(name, m) for name, m in net.named_modules() if id(m) not in skipped and m is not net]
    check_refused(modules)
    layers = {}
    for name, module in modules:
        spec = check_supported(name, module)
        if spec is not None:
            layers[name] = (module, spec)
    return layers


def _in_eval(net: nn.Module):
    modes = {m: m.training for m in net.modules()}
    net.eval()
    return modes


def discover(net: nn.Module, forward: Forward, example: torch.Tensor, *,
             exclude: Iterable[nn.Module] = ()) -> UnitGraph:
    """Compile the unit table of ``forward`` (the body of ``net``).

    Args:
        net: the module holding the layers.
        forward: the body's forward function (returns features).
        example: one or two example inputs, batched.
        exclude: sub-modules that are not part of the body (the task heads).
    """
    layers = collect_layers(net, exclude)
    modes = _in_eval(net)
    try:
        if any(isinstance(m, nn.modules.lazy.LazyModuleMixin) for m, _ in layers.values()):
            with torch.no_grad():
                forward(example)  # materialises lazy modules before anything inspects shapes
            layers = collect_layers(net, exclude)
        check_specs(forward, layers, example)
        measured = measure(forward, layers, example)
        unused = [n for n in layers if n not in measured.layers]
        if unused:
            log.warning("layers %s are never called by forward(); they take no part in continual "
                        "learning", unused)
    finally:
        for module, mode in modes.items():
            module.training = mode
    return measured


def validate(net: nn.Module, forward: Forward, example: torch.Tensor, table: UnitGraph, *,
             exclude: Iterable[nn.Module] = ()) -> list[str]:
    """Re-measure the couplings of ``net`` and list every way ``table`` differs from them.

    Recurrent layers, whose inner couplings the probe cannot see, are also checked unit by unit
    (:func:`~eidetic.graph.recurrent.check_recurrent`). Returns an empty list when ``table`` is
    right.
    """
    layers = collect_layers(net, exclude)
    modes = _in_eval(net)
    try:
        measured = measure(forward, layers, example)
        problems = compare(table, measured)
        recurrent = {n: ms for n, ms in layers.items() if isinstance(ms[1], RecurrentSpec)}
        inputs = first_inputs(forward, recurrent, example)
        for name, (module, spec) in recurrent.items():
            if name in inputs:
                problems += check_recurrent(name, module, spec, inputs[name])
    finally:
        for module, mode in modes.items():
            module.training = mode
    return problems
