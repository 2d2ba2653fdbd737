"""BatchNorm channels owned by a task: frozen statistics in training mode too.

In training mode BatchNorm normalises with batch statistics and updates its running
statistics. A frozen channel must do neither: it must compute exactly what it computes in
evaluation mode. :class:`FrozenNorms` adds a forward hook to every BatchNorm layer that, in
training mode, puts the frozen running statistics back and replaces the frozen channels of the
output by the evaluation-mode result (the same kernel call that evaluation mode makes, so both
modes agree bit for bit, and the affine transform is applied once).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .guard import Guard

_ATTR = "_eidetic_frozen_stats"


def _frozen_batchnorm_hook(module: nn.Module, args, output):
    """Forward hook: in training mode, frozen channels get their evaluation-mode output."""
    state = module.__dict__.get(_ATTR)
    if state is None or not module.training:
        return None
    mean, var, mask = state
    mean.restore()
    var.restore()
    x = args[0]
    frozen = F.batch_norm(x, module.running_mean, module.running_var, module.weight, module.bias,
                          False, 0.0, module.eps)
    return torch.where(mask.view(1, -1, *([1] * (x.dim() - 2))), frozen, output)


class FrozenNorms:
    """Forward hooks on the BatchNorm layers of a body; inactive until :meth:`attach`.

    The hook keeps its state on the BatchNorm module itself, so a deep copy of the network
    carries working hooks.
    """

    def __init__(self, layers: dict[str, tuple[nn.Module, object]]) -> None:
        self._norms = {name: module for name, (module, _) in layers.items()
                       if isinstance(module, nn.modules.batchnorm._BatchNorm)}
        self._handles = [m.register_forward_hook(_frozen_batchnorm_hook) for m in self._norms.values()]

    def attach(self, guard: Guard) -> None:
        """Use the frozen statistics held by ``guard``."""
        for name, module in self._norms.items():
            mean = guard.frozen_slice(name, "running_mean")
            if mean is None:
                module.__dict__.pop(_ATTR, None)
                continue
            mask = torch.zeros(module.num_features, dtype=torch.bool, device=mean.tensor.device)
            mask[mean.index] = True
            module.__dict__[_ATTR] = (mean, guard.frozen_slice(name, "running_var"), mask)

    def remove(self) -> None:
        """Remove the hooks and their state."""
        for handle in self._handles:
            handle.remove()
        for module in self._norms.values():
            module.__dict__.pop(_ATTR, None)
        self._handles = []
