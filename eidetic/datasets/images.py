"""Labelled images in memory and on disk, and the Datasets a task reads them through.

* :class:`ImageSet`: float images split into training and test tensors (digits, MNIST).
* :class:`ByteImages`: uint8 images split into training and test tensors (CIFAR, Fashion-MNIST),
  with CIFAR-100's coarse labels where the file has them.
* :class:`TensorImages`: a task's view of :class:`ByteImages`: the indices of its samples, their
  labels and a batch transform; the images stay uint8 and shared by every task, each item is a
  float32 ``(C, H, W)`` tensor and an int label, as torchvision's transforms give.
* :class:`ImageFiles`: image files decoded when an item is read (in the DataLoader's workers),
  never all at once (Imagenette).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset


@dataclass
class ImageSet:
    """Labelled images split into training and test parts (float inputs, int64 labels).

    Attributes:
        x_train, y_train, x_test, y_test: inputs ``(N, C, H, W)`` and labels ``(N,)``.
        source: where the data came from, in words.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str


@dataclass
class ByteImages:
    """Labelled uint8 images ``(N, C, H, W)`` split into training and test parts, as read from
    the files (one byte per value: CIFAR-10's 50,000 training images take 150 MB).

    Attributes:
        x_train, y_train, x_test, y_test: uint8 images and int64 labels.
        source: where the data came from, in words.
        class_names: the name of each label, when the files give them.
        coarse_train, coarse_test: CIFAR-100's coarse (superclass) labels, else ``None``.
        coarse_names: the name of each coarse label.

    Example::

        data = load_cifar("data", "cifar100")
        data.x_train.dtype, data.x_train.shape        # torch.uint8, (50000, 3, 32, 32)
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str
    class_names: list[str] = field(default_factory=list)
    coarse_train: torch.Tensor | None = None
    coarse_test: torch.Tensor | None = None
    coarse_names: list[str] = field(default_factory=list)


BatchTransform = Callable[[torch.Tensor], torch.Tensor]
"""``uint8 (B, C, H, W) -> float32 (B, C, H, W)``: see :class:`~eidetic.datasets.transforms.ImageTransform`."""


class TensorImages(Dataset):
    """The samples ``indices`` of shared uint8 ``images``, with their ``labels`` and a batch
    transform: item ``i`` is ``(transform(images[indices[i]]), int(labels[i]))``.

    A DataLoader reads a whole batch at once (``__getitems__``): one gather and one transform per
    batch, not per image.

    Example::

        data = TensorImages(images, labels, transform=ImageTransform())   # every image, [0, 1]
        x, y = data[0]                                                      # float32 (C, H, W), int
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None,
                 transform: BatchTransform | None = None) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"TensorImages holds uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.indices = torch.arange(len(images)) if indices is None else indices.long()
        self.labels = labels.long()
        if len(self.labels) != len(self.indices):
            raise ValueError(f"{len(self.indices)} samples but {len(self.labels)} labels")
        if transform is None:
            from .transforms import ImageTransform

            transform = ImageTransform()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        chosen = torch.as_tensor(indices, dtype=torch.long)
        x = self.transform(self.images[self.indices[chosen]])
        return list(zip(x.unbind(0), self.labels[chosen].tolist()))


class ImageFiles(Dataset):
    """Image files with their labels, decoded (PIL, RGB) and transformed when an item is read.

    Item ``i`` is ``(transform(image), labels[i])``, with ``transform`` a torchvision transform
    ending in a float32 tensor. A file that cannot be decoded raises a ``ValueError`` naming it.

    Example::

        data = ImageFiles(["a.JPEG", "b.JPEG"], [0, 1], imagenette_transform(224, train=False))
    """

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform: Callable) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} image files but {len(labels)} labels")
        self.paths = list(paths)
        self.labels = [int(y) for y in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path = self.paths[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"cannot decode the image {path}: {exc}") from None
        return self.transform(rgb), self.labels[index]
