"""A fixed projection of the inputs for the input router: their lowest spatial frequencies.

Inputs of at most :data:`SMALL` values are used as they are. Larger ones (a 28x28 digit, a
3x32x32 or 3x224x224 image, a long vector or sequence) are projected, without any data, onto
the lowest frequencies of an orthonormal DCT-II along their last two axes (the spatial ones;
the only one of a vector), plane by plane (every index of the leading axes, such as channels,
is a plane): the coefficients ``(u, v)`` with ``u + v < m`` (``u < m`` for a vector), with the
largest ``m`` for which at most ``size`` coefficients are kept in all. ``size`` grows with the
input, an eighth of its values, within ``SMALL`` and ``LARGEST``:

=================  =====  ===============================================
input              size   kept
=================  =====  ===============================================
1x28x28 (784)      100    91: the triangle ``u + v < 13``
3x32x32 (3,072)    384    360: ``u + v < 15`` in each channel
3x224x224          384    360: the same
(2000,)            250    250: the first 250 frequencies
=================  =====  ===============================================

(Inputs with more planes than ``size`` are projected as one flat vector.) The DCT is separable:
one small matrix product per axis, far cheaper than a dense projection. The projection is the
same for every task (the inputs never change, so what a task records in it stays valid),
deterministic (a cosine formula, no random seed), and keeps what a Gaussian on images needs
most: the coarse shape, in the frequencies where images keep their variance.

Example::

    projection = InputProjection.for_shape((3, 32, 32))
    projection.size                        # 360
    z = projection(images)                 # (N, 360)
"""

from __future__ import annotations

import math

import torch

from .discriminant import tracing

SMALL = 100  # inputs of at most this many values are used as they are
LARGEST = 384  # the most coefficients kept, whatever the input's size


def target_size(values: int) -> int:
    """How many coefficients to keep of an input of ``values`` values."""
    return values if values <= SMALL else min(max(SMALL, values // 8), LARGEST)


def dct_matrix(length: int, frequencies: int) -> torch.Tensor:
    """The first ``frequencies`` rows of the orthonormal DCT-II of ``length`` points (float64)."""
    n = torch.arange(length, dtype=torch.float64)
    k = torch.arange(frequencies, dtype=torch.float64)[:, None]
    matrix = torch.cos(math.pi * (n + 0.5) * k / length) * math.sqrt(2.0 / length)
    matrix[0] /= math.sqrt(2.0)
    return matrix


def _padded(frequencies: int) -> int:
    """Columns of an axis's product: its frequencies rounded up to a multiple of 8 when there are
    more than 4 (a matrix product of 16 columns runs faster than one of 13 on common CPUs)."""
    return frequencies if frequencies <= 4 else -(-frequencies // 8) * 8


class InputProjection:
    """The fixed projection of inputs of one per-sample shape (see the module's docstring).

    Args:
        shape: the per-sample shape.
        bound: keep the coefficients whose frequencies sum to less than it; ``None``: the
            identity (the flattened inputs).
    """

    def __init__(self, shape: tuple[int, ...], bound: int | None = None) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.bound = bound
        self._matrices: dict[tuple, list[torch.Tensor]] = {}
        self.keep: torch.Tensor | None = None
        if bound is None:
            return
        self.spatial = _spatial(self.shape)
        self.planes = math.prod(self.shape) // math.prod(self.spatial)
        self.frequencies = [min(n, bound) for n in self.spatial]
        # the kept coefficients, as flat positions in the products' layout (planes, then the
        # last axis's frequencies, then the one before, each padded)
        grids = torch.meshgrid(*[torch.arange(_padded(k)) for k in reversed(self.frequencies)], indexing="ij")
        valid = sum(g.flatten() for g in grids) < bound
        for g, k in zip(grids, reversed(self.frequencies)):
            valid &= g.flatten() < k
        per_plane = valid.nonzero().flatten()
        self.keep = (torch.arange(self.planes)[:, None] * len(valid) + per_plane).flatten()

    @classmethod
    def for_shape(cls, shape: tuple[int, ...]) -> InputProjection:
        """The projection of inputs of per-sample ``shape`` (the identity for small ones)."""
        shape = tuple(int(n) for n in shape)
        values = math.prod(shape)
        size = target_size(values)
        if size >= values:
            return cls(shape)
        spatial = _spatial(shape)
        planes = values // math.prod(spatial)
        bound = 1
        while planes * _count(spatial, bound + 1) <= size:
            bound += 1
        return cls(shape, bound)

    @property
    def size(self) -> int:
        """Values per projected input."""
        return math.prod(self.shape) if self.keep is None else len(self.keep)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(N, size)`` projections of a batch of inputs, in their dtype."""
        if self.keep is None:
            return inputs.flatten(1)
        matrices = self._on(inputs.device, inputs.dtype)
        y = inputs.reshape(-1, self.spatial[-1]) @ matrices[-1]  # the last axis: no copy needed
        if len(self.spatial) == 2:
            y = y.view(-1, self.spatial[0], y.shape[-1]).transpose(1, 2)  # the axis before, last
            y = y.reshape(-1, self.spatial[0]) @ matrices[0]
        return torch.index_select(y.view(inputs.shape[0], -1), 1, self._keep_on(inputs.device))

    def _on(self, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
        """Per spatial axis its product's matrix, the transposed DCT rows with zero columns up to
        :func:`_padded`, in ``dtype`` on ``device``."""
        key = (device, dtype)
        if key in self._matrices:
            return self._matrices[key]
        matrices = []
        for n, k in zip(self.spatial, self.frequencies):
            rows = dct_matrix(n, k).T
            matrices.append(torch.cat([rows, rows.new_zeros(n, _padded(k) - k)], dim=1).to(device=device, dtype=dtype))
        if not tracing():  # a cache filled while tracing would hold the tracer's fake tensors
            self._matrices[key] = matrices
        return matrices

    def _keep_on(self, device: torch.device) -> torch.Tensor:
        if self.keep.device == device:
            return self.keep
        keep = self.keep.to(device)
        if not tracing():
            self.keep = keep
        return keep

    def state(self) -> dict:
        return {"shape": list(self.shape), "bound": self.bound}

    @classmethod
    def from_state(cls, state: dict) -> InputProjection:
        return cls(tuple(state["shape"]), state["bound"])


def _spatial(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The axes the DCT runs along: the last two (the last one of a vector); all the values as
    one axis when there would be more planes than coefficients to keep."""
    values = math.prod(shape)
    spatial = shape[-2:] if len(shape) >= 2 else shape
    return (values,) if values // math.prod(spatial) > target_size(values) else tuple(spatial)


def _count(spatial: tuple[int, ...], bound: int) -> int:
    """Coefficients of one plane whose frequencies sum to less than ``bound``."""
    if len(spatial) == 1:
        return min(spatial[0], bound)
    return sum(min(spatial[1], bound - u) for u in range(min(spatial[0], bound)))
