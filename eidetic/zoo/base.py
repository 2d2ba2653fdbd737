"""What every zoo model shares: it remembers how it was built (``config``), for checkpoints."""

from __future__ import annotations

from ..mixins.cpg import CPGMixin
from ..mixins.lsg import LSGMixin
from ..network import ContinualNetwork


class ZooModel(ContinualNetwork):
    """A ContinualNetwork that remembers how it was built (``config``), for checkpoints; its
    ``"method"`` is ``"cpg"`` for the classes with :class:`~eidetic.CPGMixin`, ``"lsg"`` for those
    with :class:`~eidetic.LSGMixin`, else ``"eidetic"``."""

    name = ""
    default_width = 0

    def __init__(self, input_shape: tuple[int, ...], width: int | None) -> None:
        super().__init__()
        width = self.default_width if width is None else width
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        method = "cpg" if isinstance(self, CPGMixin) else "lsg" if isinstance(self, LSGMixin) else "eidetic"
        self.config = {"model": self.name, "method": method,
                       "input_shape": [int(d) for d in input_shape], "width": width}


def image_shape(shape: tuple[int, ...], minimum: int, model: str) -> tuple[int, int, int]:
    """``(channels, height, width)`` of an image input shape, or a ``ValueError`` naming ``model``
    if ``shape`` is not an image of at least ``minimum`` pixels a side."""
    if len(shape) != 3 or min(shape[1:]) < minimum:
        raise ValueError(f"the {model} model needs image inputs (channels, height, width) of at least "
                         f"{minimum}x{minimum}, got {tuple(shape)}")
    return shape[0], shape[1], shape[2]
