"""BatchNorm channels owned by a task: frozen statistics in training mode too.

In training mode BatchNorm normalises with batch statistics and updates its running
statistics. A frozen channel must do neither: it must compute exactly what it computes in
evaluation mode. In training mode, with frozen channels:

* the built-in layers (``nn.BatchNorm1d``, ``2d``, ``3d``) run :class:`OnePass`, installed as
  their ``forward``: one autograd function that runs BatchNorm's training kernel on the free
  channels alone (so the frozen running statistics are never touched) and the evaluation-mode
  kernel on the frozen channels alone, then puts the two back in the layer's channel order. The
  evaluation kernel computes each channel on its own, so the frozen channels get the bits of
  evaluation mode, with the affine transform applied once; the free channels get the batch
  statistics of the layer's own training forward (the same bits for contiguous tensors on CPU,
  where the kernel reduces each channel on its own too; up to rounding in channels-last). Its
  backward is the training kernel's for the free channels and evaluation mode's for the frozen
  ones (the gradient of the input times the frozen scale; none for the frozen affine entries,
  which the forward does not read). With many channels frozen the layer can cost less than an
  ordinary training step, since the frozen channels skip the batch statistics;
* other BatchNorm classes (``SyncBatchNorm`` and subclasses), and every layer while
  ``torch.compile`` traces, get a forward hook that computes the same thing out of place with
  autograd-recorded operations: the layer's own forward, then the frozen channels written over
  a copy of its output (about twice the cost of the layer: ``benchmarks/epoch.py --breakdown``).

Either way the gradients are those of this forward (``tests/test_norm.py`` checks both against
``gradcheck``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .guard import FrozenSlice, Guard

_ATTR = "_eidetic_frozen_stats"
_BUILT_IN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

@dataclass(frozen=True)
class FrozenChannels:
    """The frozen channels of one BatchNorm layer: their running statistics and affine values,
    where the other channels are, and their evaluation-mode gradient factor."""

    mean: FrozenSlice
    var: FrozenSlice
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    free: torch.Tensor  # the other channels, ascending
    order: torch.Tensor  # where each channel is in ``torch.cat([free channels, frozen channels])``
    scale: torch.Tensor  # d output / d input of each frozen channel: weight / sqrt(var + eps)

    @classmethod
    def of(cls, mean: FrozenSlice, var: FrozenSlice, weight: torch.Tensor | None, bias: torch.Tensor | None,
           eps: float) -> FrozenChannels:
        frozen = torch.zeros(mean.tensor.numel(), dtype=torch.bool, device=mean.index.device)
        frozen[mean.index] = True
        free = (~frozen).nonzero().flatten()
        scale = (var.values + eps).rsqrt() * (1 if weight is None else weight)
        return cls(mean, var, weight, bias, free, torch.cat([free, mean.index]).argsort(), scale)

    @property
    def index(self) -> torch.Tensor:
        return self.mean.index


def frozen_state(module: nn.Module) -> FrozenChannels | None:
    """The frozen channels of a BatchNorm layer in training mode, or ``None``."""
    return module.__dict__.get(_ATTR) if module.training else None


def _frozen_output(module: nn.Module, x: torch.Tensor, frozen: FrozenChannels) -> torch.Tensor:
    """The frozen channels of ``x`` through the evaluation-mode kernel."""
    return F.batch_norm(x.index_select(1, frozen.index), frozen.mean.values, frozen.var.values, frozen.weight,
                        frozen.bias, False, 0.0, module.eps)


def _frozen_batchnorm_hook(module: nn.Module, args, output):
    """Forward hook: in training mode, frozen channels get their evaluation-mode output."""
    frozen = frozen_state(module)
    if frozen is None:
        return None
    return _overwritten(module, args[0], output, frozen)


def _overwritten(module: nn.Module, x: torch.Tensor, output: torch.Tensor, frozen: FrozenChannels) -> torch.Tensor:
    """``output`` of the layer's own training forward, its frozen statistics put back (that forward
    just updated them) and its frozen channels overwritten, out of place: every operation recorded
    by autograd, so the backward pass is that of what the forward computes (the frozen channels'
    batch-mode gradient, which divides by the batch's standard deviation, never reaches the input)."""
    frozen.mean.restore()
    frozen.var.restore()
    # Out of place (a compiled BatchNorm may keep its output for backward), in the output's memory
    # format: a channels-last output must stay channels-last, or the layers after it reduce in
    # another order in training mode than in evaluation mode.
    return output.clone().index_copy_(1, frozen.index, _frozen_output(module, x, frozen))


def _merged(free: torch.Tensor, frozen: torch.Tensor, channels: FrozenChannels, like: torch.Tensor) -> torch.Tensor:
    """The free and the frozen channels put back in the layer's order, in ``like``'s memory format
    (two contiguous copies: ``index_copy_`` along the channels is several times slower on CPU)."""
    merged = torch.cat([free, frozen.to(free.dtype)], 1) if free.shape[1] else frozen
    out = merged.index_select(1, channels.order)
    return out if out.stride() == like.stride() else torch.empty_like(like, dtype=out.dtype).copy_(out)


class OnePass(torch.autograd.Function):
    """A built-in BatchNorm layer's training forward with frozen channels: the training kernel on
    the free channels, the evaluation kernel on the frozen ones."""

    @staticmethod
    def forward(ctx, x, weight, bias, module, channels, momentum):
        free = channels.free
        x_free = x.index_select(1, free)
        w_free, b_free = (None if p is None else p.index_select(0, free) for p in (weight, bias))
        save_mean = save_invstd = None
        if free.numel():
            stats = [s.index_select(0, free) for s in (module.running_mean, module.running_var)]
            y_free, save_mean, save_invstd = torch.native_batch_norm(x_free, w_free, b_free, *stats, True,
                                                                     momentum, module.eps)
            for buffer, updated in zip((module.running_mean, module.running_var), stats):
                buffer.index_copy_(0, free, updated)
        else:
            y_free = x_free
        out = _merged(y_free, _frozen_output(module, x, channels), channels, x)
        ctx.save_for_backward(x_free, w_free, save_mean, save_invstd)
        ctx.channels, ctx.eps = channels, module.eps
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x_free, w_free, save_mean, save_invstd = ctx.saved_tensors
        channels = ctx.channels
        affine = w_free is not None and save_mean is not None
        wanted = [ctx.needs_input_grad[0], affine and ctx.needs_input_grad[1], affine and ctx.needs_input_grad[2]]
        g_free = grad.index_select(1, channels.free)
        dx = dw = db = None
        if save_mean is not None:
            dx, dw, db = torch.ops.aten.native_batch_norm_backward(g_free, x_free, w_free, None, None, save_mean,
                                                                    save_invstd, True, ctx.eps, wanted)
        if ctx.needs_input_grad[0]:  # frozen channels: evaluation mode's gradient, the frozen scale per channel
            shape = [1, -1] + [1] * (grad.dim() - 2)
            g_frozen = grad.index_select(1, channels.index).mul_(channels.scale.view(shape))
            dx = _merged(g_free if dx is None else dx, g_frozen, channels, grad)
        # the frozen channels read the frozen copies of the affine entries, not the parameters
        dw, db = (_affine_grad(d, needed, channels) for d, needed in zip((dw, db), ctx.needs_input_grad[1:3]))
        return dx, dw, db, None, None, None


def _affine_grad(free: torch.Tensor | None, needed: bool, channels: FrozenChannels) -> torch.Tensor | None:
    """The gradient of an affine parameter: the training kernel's on the free channels, 0 on the
    frozen ones."""
    if not needed:
        return None
    grad = channels.scale.new_zeros(channels.free.numel() + channels.index.numel())
    return grad if free is None else grad.index_copy_(0, channels.free, free.to(grad.dtype))


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
        return OnePass.apply(x, module.weight, module.bias, module, frozen, _average_factor(module))


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
                module.__dict__[_ATTR] = FrozenChannels.of(mean, guard.frozen_slice(name, "running_var"),
                                                           *(None if a is None else a.values for a in affine),
                                                           module.eps)

    def remove(self) -> None:
        """Remove the forwards, the hooks and their state."""
        for handle in self._handles:
            handle.remove()
        for module in self._norms.values():
            module.__dict__.pop(_ATTR, None)
            if isinstance(module.__dict__.get("forward"), FrozenForward):
                del module.__dict__["forward"]
        self._handles = []
