"""What a benchmark does to each image before a network sees it: the standard augmentation of
its training split, the dataset's mean/std normalisation, a pixel permutation.

* :class:`ImageTransform` works on uint8 batches in memory (CIFAR, Fashion-MNIST): random crop
  with zero padding and horizontal flip (CIFAR's training augmentation), scaling to [0, 1],
  normalisation, and the fixed pixel order of a permuted task. One call per batch.
* :func:`imagenette_transform` is torchvision's pipeline for decoded images: random resized crop
  and flip for training, resize and centre crop for testing, then normalisation.

The random draws use torch's global generator, which PyTorch seeds per DataLoader worker.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Stats = tuple[tuple[float, ...], tuple[float, ...]]

CIFAR10_STATS: Stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
"""Per-channel mean and standard deviation of CIFAR-10's training images (values in [0, 1])."""
CIFAR100_STATS: Stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
"""Per-channel mean and standard deviation of CIFAR-100's training images."""
IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
"""ImageNet's per-channel mean and standard deviation, the usual normalisation of Imagenette."""
CIFAR_PADDING = 4
"""Zero padding of CIFAR's random 32x32 crop."""


class ImageTransform:
    """uint8 images ``(B, C, H, W)`` to float32: pixel permutation, random crop, flip, [0, 1], normalisation.

    Args:
        stats: ``(mean, std)`` per channel, applied after scaling to [0, 1] (``None``: no
            normalisation).
        crop_padding: pad each side with this many zeros and crop back to the original size at
            a random offset per image (0: no crop).
        flip: flip each image left-right with probability 1/2.
        permutation: a fixed order of the ``C * H * W`` values of each image (a permuted
            task), applied first.

    Example::

        train = ImageTransform(CIFAR10_STATS, crop_padding=4, flip=True)
        test = ImageTransform(CIFAR10_STATS)
        x = train(images[:8])                 # float32 (8, 3, 32, 32), normalised
    """

    def __init__(self, stats: Stats | None = None, *, crop_padding: int = 0, flip: bool = False,
                 permutation: torch.Tensor | None = None) -> None:
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be at least 0, got {crop_padding}")
        self.stats = stats
        self.crop_padding = crop_padding
        self.flip = flip
        self.permutation = permutation
        if stats is not None:
            mean, std = (torch.tensor(s, dtype=torch.float32).view(1, -1, 1, 1) for s in stats)
            if (std <= 0).any():
                raise ValueError(f"standard deviations must be positive, got {stats[1]}")
            self._mean, self._std = mean, std

    @property
    def augments(self) -> bool:
        """Whether the transform is random (crop or flip)."""
        return self.crop_padding > 0 or self.flip

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.permutation is not None:
            x = x.flatten(1)[:, self.permutation].reshape(x.shape)
        if self.crop_padding:
            x = random_crop(x, self.crop_padding)
        if self.flip:
            x = random_flip(x)
        x = x.float().div_(255)
        if self.stats is not None:
            if x.shape[1] != self._mean.shape[1]:
                raise ValueError(f"normalisation statistics for {self._mean.shape[1]} channels, images have "
                                 f"{x.shape[1]}")
            x = x.sub_(self._mean).div_(self._std)
        return x

    def __repr__(self) -> str:
        parts = [f"stats={self.stats}"] if self.stats else []
        parts += [f"crop_padding={self.crop_padding}"] if self.crop_padding else []
        parts += ["flip=True"] if self.flip else []
        parts += ["permutation=..."] if self.permutation is not None else []
        return f"ImageTransform({', '.join(parts)})"


def random_crop(x: torch.Tensor, padding: int) -> torch.Tensor:
    """Each image of ``x`` ``(B, C, H, W)`` padded with ``padding`` zeros per side and cropped
    back to ``H x W`` at an offset drawn per image.

    Example::

        random_crop(images, 4)           # CIFAR's crop: 32x32 out of 40x40
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy, dx = torch.randint(0, 2 * padding + 1, (2, b, 1))
    rows = (dy + torch.arange(h))[:, None, :, None]
    cols = (dx + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Each image of ``x`` ``(B, C, H, W)`` flipped left-right with probability 1/2.

    Example::

        random_flip(images)
    """
    flip = torch.rand(len(x)) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def imagenette_transform(size: int, *, train: bool, augment: bool = True, stats: Stats = IMAGENET_STATS):
    """torchvision's pipeline for a decoded image: for training (with ``augment``) a random
    resized crop to ``size`` and a random flip, else a resize to ``size / 0.875`` and a centre
    crop to ``size``; then a float32 tensor in [0, 1], normalised by ``stats``.

    Example::

        transform = imagenette_transform(224, train=True)
        x = transform(pil_image)                     # float32 (3, 224, 224)
    """
    from torchvision import transforms

    if size < 8:
        raise ValueError(f"image size must be at least 8 pixels, got {size}")
    if train and augment:
        ops = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
    else:
        ops = [transforms.Resize(round(size / 0.875)), transforms.CenterCrop(size)]
    return transforms.Compose([*ops, transforms.ToTensor(), transforms.Normalize(*stats)])

