"""BatchNorm channels owned by a task: frozen statistics in training mode too.

In training mode BatchNorm normalises with batch statistics and updates its running
statistics. A frozen channel must do neither: it must compute exactly what it computes in
evaluation mode. In training mode, with frozen channels:

* the built-in layers (``nn.BatchNorm1d``, ``2d``, ``3d``) run :class:`FrozenChannels`,
  installed as their ``forward``: one autograd function that runs BatchNorm's training kernel
  once, puts the frozen running statistics back, and overwrites the frozen channels of its
  output, in place, with the evaluation-mode kernel's result on those channels (the kernel
  computes each channel on its own, so both modes agree bit for bit, and the affine transform is
  applied once); its backward is the training kernel's for the free channels and evaluation
  mode's for the frozen ones (the gradient of the input times the frozen scale; none for the
  frozen affine entries, which the forward does not read);
* other BatchNorm classes (``SyncBatchNorm`` and subclasses), and every layer while
  ``torch.compile`` traces, get a forward hook that computes the same thing out of place with
  autograd-recorded operations: the layer's own forward, then the frozen channels written over
  a copy of its output (about twice the cost of the layer: ``benchmarks/epoch.py --breakdown``).

Either way the gradients are those of this forward (``tests/test_norm.py`` checks both against
``gradcheck``), and the extra cost is proportional to the frozen channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .guard import FrozenSlice, Guard

_ATTR = "_eidetic_frozen_stats"
_BUILT_IN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

Frozen = tuple[FrozenSlice, FrozenSlice, torch.Tensor | None, torch.Tensor | None]  # mean, var, weight, bias


def frozen_state(module: nn.Module) -> Frozen | None:
    """The frozen statistics and affine values of a BatchNorm layer in training mode, or ``None``."""
    return module.__dict__.get(_ATTR) if module.training else None


def _frozen_output(module: nn.Module, x: torch.Tensor, frozen: Frozen) -> torch.Tensor:
    """Put the frozen running statistics back (the training kernel just updated them), and return
    the frozen channels of ``x`` through the evaluation-mode kernel."""
    mean, var, weight, bias = frozen
    mean.restore()
    var.restore()
    return F.batch_norm(x.index_select(1, mean.index), mean.values, var.values, weight, bias, False, 0.0, module.eps)


def _frozen_batchnorm_hook(module: nn.Module, args, output):
    """Forward hook: in training mode, frozen channels get their evaluation-mode output."""
    frozen = frozen_state(module)
    if frozen is None:
        return None
    return _overwritten(module, args[0], output, frozen)


def _overwritten(module: nn.Module, x: torch.Tensor, output: torch.Tensor, frozen: Frozen) -> torch.Tensor:
    """``output`` of the layer's own training forward, its frozen statistics put back and its frozen
    channels overwritten, out of place: every operation recorded by autograd, so the backward pass
    is that of what the forward computes (the frozen channels' batch-mode gradient, which divides
    by the batch's standard deviation, never reaches the input)."""
    # Out of place (a compiled BatchNorm may keep its output for backward), in the output's memory
    # format: a channels-last output must stay channels-last, or the layers after it reduce in
    # another order in training mode than in evaluation mode.
    return output.clone().index_copy_(1, frozen[0].index, _frozen_output(module, x, frozen))


class FrozenChannels(torch.autograd.Function):
    """A built-in BatchNorm layer's training forward with frozen channels, in one pass."""

    @staticmethod
    def forward(ctx, x, weight, bias, module, frozen, momentum):
        out, save_mean, save_invstd = torch.native_batch_norm(x, weight, bias, module.running_mean,
                                                              module.running_var, True, momentum, module.eps)
        index = frozen[0].index
        out.index_copy_(1, index, _frozen_output(module, x, frozen))  # fresh from the kernel: no one else holds it
        scale = (frozen[1].values + module.eps).rsqrt()
        if frozen[2] is not None:
            scale = scale * frozen[2]
        ctx.save_for_backward(x, weight, save_mean, save_invstd, index, scale)
        ctx.eps = module.eps
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, save_mean, save_invstd, index, scale = ctx.saved_tensors
        wanted = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                  weight is not None and ctx.needs_input_grad[2]]
        dx, dw, db = torch.ops.aten.native_batch_norm_backward(grad, x, weight, None, None, save_mean, save_invstd,
                                                                True, ctx.eps, wanted)
        if dx is not None:  # frozen channels: evaluation mode's gradient, the frozen scale per channel
            shape = [1, -1] + [1] * (grad.dim() - 2)
            dx.index_copy_(1, index, grad.index_select(1, index).mul_(scale.view(shape)).to(dx.dtype))
        for d in (dw, db):  # the frozen channels read the frozen copies, not the parameters
            if d is not None:
                d.index_fill_(0, index, 0)
        return dx, dw, db, None, None, None


def _average_factor(module: nn.modules.batchnorm._BatchNorm) -> float:
    """The running statistics' update factor of this training step, counting the batch (as
    ``_BatchNorm.forward`` does)."""
    if module.num_batches_tracked is not None:
        module.num_batches_tracked.add_(1)
        if module.momentum is None:
            return 1.0 / float(module.num_batches_tracked)
    return 0.0 if module.momentum is None else module.momentum


class FrozenForward:
    """The forward of a built-in BatchNorm layer (installed as its ``forward``): its class's,
    unless it is training with frozen channels."""

    def __init__(self, module: nn.modules.batchnorm._BatchNorm) -> None:
        self.module = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        module = self.module
        frozen = frozen_state(module)
        if frozen is None:
            return type(module).forward(module, x)
        if torch.compiler.is_compiling():
            return _overwritten(module, x, type(module).forward(module, x), frozen)
        module._check_input_dim(x)
        return FrozenChannels.apply(x, module.weight, module.bias, module, frozen, _average_factor(module))


class FrozenNorms:
    """Frozen-channel training forwards on the BatchNorm layers of a body; inactive until
    :meth:`attach`.

    The state is kept on the BatchNorm module itself, so a deep copy of the network carries
    working forwards and hooks.
    """

    def __init__(self, layers: dict[str, tuple[nn.Module, object]]) -> None:
        self._norms = {name: module for name, (module, _) in layers.items()
                       if isinstance(module, nn.modules.batchnorm._BatchNorm)}
        self._handles = []
        for module in self._norms.values():
            if type(module) in _BUILT_IN:
                module.__dict__["forward"] = FrozenForward(module)
            else:
                self._handles.append(module.register_forward_hook(_frozen_batchnorm_hook))

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
        """Remove the forwards, the hooks and their state."""
        for handle in self._handles:
            handle.remove()
        for module in self._norms.values():
            module.__dict__.pop(_ATTR, None)
            if isinstance(module.__dict__.get("forward"), FrozenForward):
                del module.__dict__["forward"]
        self._handles = []
