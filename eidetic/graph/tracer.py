"""Adapter to torch-pruning's ``DependencyGraph`` (pinned to 1.6.1).

torch-pruning traces the network through autograd and proposes groups of coupled channels.
This module turns its groups into a :class:`UnitGraph` and drops the tracer at once (it keeps
the traced activations alive). Nothing outside this module imports torch-pruning: its handler
identities and ``root_idxs`` are not a stable API.
"""

from __future__ import annotations

import warnings
from collections import defaultdict

import torch
from torch import nn

from .layers import Layers, spec_of
from .table import FEATURES, UnitGraph


class _Features(nn.Module):
    """The body followed by a Linear read-out, so the tracer sees who reads the features."""

    def __init__(self, net: nn.Module, forward, feature_dim: int) -> None:
        super().__init__()
        self.net = net  # registered so that the tracer hooks the body's layers
        self._forward = forward
        self.readout = nn.Linear(feature_dim, 1)

    def forward(self, x):
        return self.readout(self._forward(x).flatten(1))


def _spec_pruner():
    from torch_pruning.pruner.function import BasePruningFunc

    class SpecPruner(BasePruningFunc):
        """Lets the tracer see a registered custom layer; eidetic never prunes physically."""

        def prune_out_channels(self, layer, idxs):
            return layer

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer):
            name, dim = spec_of(layer).out_tensors[0]
            return getattr(layer, name).shape[dim]

        def get_in_channels(self, layer):
            spec = spec_of(layer)
            if spec.in_tensor is None:
                return None
            return getattr(layer, spec.in_tensor).shape[spec.in_dim] * spec.groups

    return SpecPruner()


def propose(net: nn.Module, forward, layers: Layers, example: torch.Tensor, feature_dim: int) -> UnitGraph:
    """torch-pruning's proposal for the unit table of ``forward``, the body of ``net``.

    Raises whatever torch-pruning raises; the caller decides what to do without a proposal.
    """
    import torch_pruning as tp

    wrapper = _Features(net, forward, feature_dim)
    wrapper.readout.to(device=example.device)
    names = {module: name for name, (module, _) in layers.items()}
    names[wrapper.readout] = FEATURES
    x = example.detach().clone()
    if x.is_floating_point():
        x.requires_grad_(True)  # otherwise frozen leading layers drop out of the trace
    unknown = {type(m) for m, _ in layers.values() if tp.ops.module2type(m) == tp.ops.OPTYPE.ELEMENTWISE}
    pruners = {t: _spec_pruner() for t in unknown}
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(
            wrapper, example_inputs=x, verbose=False, customized_pruners=pruners or None
        )
        roots = tuple({type(m) for m in names if not isinstance(m, nn.modules.batchnorm._BatchNorm)})
        groups = list(graph.get_all_groups(root_module_types=roots))
    units: dict[tuple[int, int], set[tuple[str, str, int]]] = defaultdict(set)
    for g_id, group in enumerate(groups):
        for item in group:
            module = item.dep.target.module
            name = names.get(module)
            if name is None:
                continue
            if graph.is_out_channel_pruning_fn(item.dep.handler):
                role = "out"
            elif name != FEATURES and layers[name][1].passthrough:
                continue  # a depthwise layer's inputs are its own units
            else:
                role = "in"
            if name == FEATURES and role == "out":
                continue
            for idx, root in zip(item.idxs, item.root_idxs):
                units[(g_id, int(root))].add((role, name, int(idx)))
    del graph, groups
    return UnitGraph.from_units(list(units.values()), {n: s for n, (_, s) in layers.items()}, feature_dim)
