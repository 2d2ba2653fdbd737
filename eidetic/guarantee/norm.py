"""BatchNorm channels owned by a task: frozen statistics in training mode too.

In training mode BatchNorm normalises with batch statistics and updates its running
statistics. A frozen channel must do neither: it must compute exactly what it computes in
evaluation mode. :class:`FrozenNorms` adds a forward hook to every BatchNorm layer that, in
training mode, puts the frozen running statistics back and overwrites the frozen channels of the
output with the evaluation-mode kernel's result on those channels (it computes each channel on
its own, so both modes agree bit for bit, and the affine transform is applied once). The
overwrite is seen by autograd, so gradients are those of this forward. The cost is proportional
to the frozen channels.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .guard import Guard

_ATTR = "_eidetic_frozen_stats"


def _frozen_batchnorm_hook(module: nn.Module, args, output):
    """Forward hook: in training mode, frozen channels get their evaluation-mode output."""
    state = module.__dict__.get(_ATTR)
    if state is None or not module.training:
        return None
    mean, var, weight, bias = state
    mean.restore()
    var.restore()
    # The frozen channels alone, through the evaluation-mode kernel: per channel, exactly what
    # evaluation mode computes. The copy into the output is recorded by autograd, so the backward
    # pass is that of what the forward computes: evaluation mode for the frozen channels (their
    # batch-mode gradient, which divides by the batch's standard deviation, never reaches the
    # input), batch statistics for the free ones.
    index = mean.index
    frozen = F.batch_norm(args[0].index_select(1, index), mean.values, var.values, weight, bias,
                          False, 0.0, module.eps)
    # Out of place (a compiled BatchNorm may keep its output for backward), in the output's memory
    # format: a channels-last output must stay channels-last, or the layers after it reduce in
    # another order in training mode than in evaluation mode.
    return output.clone().index_copy_(1, index, frozen)


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
            else:
                affine = [guard.frozen_slice(name, n) if module.affine else None for n in ("weight", "bias")]
                module.__dict__[_ATTR] = (mean, guard.frozen_slice(name, "running_var"),
                                          *(None if a is None else a.values for a in affine))

    def remove(self) -> None:
        """Remove the hooks and their state."""
        for handle in self._handles:
            handle.remove()
        for module in self._norms.values():
            module.__dict__.pop(_ATTR, None)
        self._handles = []
