"""Element-wise functions whose CPU kernels round an element by where it sits in the tensor.

PyTorch's CPU kernels for some element-wise functions compute the bulk of a tensor with a
vectorised approximation and the tail with a scalar one, and the two round differently. Such a
function gives an element other bits when the tensor around it changes shape, which widening
does to the output of a widened layer. :class:`LayoutSensitiveCalls` records the shapes such
functions see during a forward pass, so that a widening that changes one can be refused for
every batch, not only for the probe batch it was checked on.

The list was measured on the CPU (``tests/test_widening.py`` checks it): sigmoid, SiLU, ELU and
its relatives (SELU, CELU), softplus, Mish and GELU (exact and tanh approximation) round by
position; ReLU and its relatives, tanh, hardswish, hardsigmoid and logsigmoid do not.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

LAYOUT_SENSITIVE = {
    torch.sigmoid: "sigmoid", torch.Tensor.sigmoid: "sigmoid", torch.Tensor.sigmoid_: "sigmoid",
    torch.special.expit: "sigmoid", F.silu: "SiLU", F.elu: "ELU", F.elu_: "ELU", F.selu: "SELU",
    torch.selu: "SELU", torch.selu_: "SELU", F.celu: "CELU", torch.celu: "CELU", torch.celu_: "CELU",
    F.softplus: "softplus", F.mish: "Mish", F.gelu: "GELU",
}
"""The functions (as ``__torch_function__`` sees them) that round an element by its position."""


class LayoutSensitiveCalls(TorchFunctionMode):
    """Within the ``with`` block, count the calls of :data:`LAYOUT_SENSITIVE` functions by name
    and input shape.

    Example::

        with LayoutSensitiveCalls() as calls:
            net(x)
        calls.seen          # Counter({("sigmoid", (2, 64)): 1})
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[tuple[str, tuple[int, ...]]] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = LAYOUT_SENSITIVE.get(func)
        if name is not None and args and isinstance(args[0], torch.Tensor):
            self.seen[name, tuple(args[0].shape)] += 1
        return func(*args, **(kwargs or {}))


def moved_calls(before: Counter, after: Counter) -> list[str]:
    """The layout-sensitive functions whose inputs changed shape between two recordings, as
    ``"sigmoid on (2, 4) (was (2, 3))"``-like descriptions."""
    gone, new = before - after, after - before
    described = []
    for name in sorted({n for n, _ in gone} | {n for n, _ in new}):
        was = [s for n, s in gone if n == name]
        now = [s for n, s in new if n == name]
        now_text, was_text = ", ".join(map(str, now)) or "nothing", ", ".join(map(str, was)) or "nothing"
        described.append(f"{name} on {now_text} (was {was_text})")
    return described
