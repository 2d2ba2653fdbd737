"""Tiny data sets written in the exact published formats: CIFAR's python pickles, Imagenette's
JPEG tree, MNIST's IDX files. For trying a command end to end without the real data (``eidetic
reproduce NAME --data-dir`` a folder written here), and for tests.

Each class is a fixed random colour pattern plus noise, so that a network can learn something;
nothing here resembles the real images.

Example::

    from eidetic.datasets import load_benchmark, synthetic

    root = synthetic.write_cifar("tiny", "cifar100", train_per_class=4, test_per_class=2)
    bench = load_benchmark("cifar100-superclasses", data_dir=root)     # 20 tasks of 5 classes
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .cifar import RELEASES
from .idx import write_idx
from .imagenette import SPLITS

IMAGENETTE_WNIDS = ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
                    "n03425413", "n03445777", "n03888605")
"""Imagenette's ten WordNet ids, in sorted order."""
CIFAR100_COARSE_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores", "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes", "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates",
    "people", "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2")
"""CIFAR-100's twenty superclasses, by coarse label."""


def class_images(labels: np.ndarray, shape: tuple[int, int, int], seed: int, noise: float = 40.0) -> np.ndarray:
    """uint8 images ``(N, C, H, W)``, one per label: the label's fixed pattern (drawn from
    ``seed``) plus Gaussian noise of standard deviation ``noise``.

    Example::

        images = class_images(np.array([0, 1, 1]), (3, 32, 32), seed=0)
    """
    rng = np.random.default_rng(seed)
    classes = int(labels.max()) + 1 if len(labels) else 0
    patterns = rng.uniform(40, 215, size=(classes, shape[0], 1, 1)) + rng.normal(0, 30, size=(classes, *shape))
    images = patterns[labels] + rng.normal(0, noise, size=(len(labels), *shape))
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def _labels(classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(classes), per_class))


def _dump(path: Path, content: dict) -> None:
    """Pickle as the release was written (protocol 2, Python 2's numpy module path)."""
    data = pickle.dumps(content, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(data)


def write_cifar(root: str | Path, name: str = "cifar10", *, train_per_class: int = 10, test_per_class: int = 4,
                seed: int = 0) -> Path:
    """Write a tiny CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``) release under
    ``root`` in torchvision's layout (``root/cifar-10-batches-py/...``) and return ``root``.

    CIFAR-10's training images are spread over its five batch files. CIFAR-100's fine labels map
    to the twenty coarse labels through a fixed shuffle, five classes each, as in the real data.

    Example::

        root = write_cifar("tiny", "cifar10", train_per_class=5)
    """
    release, root = RELEASES[name], Path(root)
    folder = root / release.folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fine_to_coarse = None
    if release.coarse:
        fine_to_coarse = rng.permutation(release.classes) % release.coarse_classes
    splits = {"train": _labels(release.classes, train_per_class, rng), "test": _labels(release.classes,
                                                                                       test_per_class, rng)}
    for split, labels in splits.items():
        images = class_images(labels, (3, 32, 32), seed).reshape(len(labels), -1)
        files = release.train if split == "train" else release.test
        for part, chunk in zip(files, np.array_split(np.arange(len(labels)), len(files))):
            content = {"batch_label": f"synthetic {split} batch {part}", "data": images[chunk],
                       "filenames": [f"synthetic_{i}.png" for i in chunk.tolist()]}
            content[release.labels] = labels[chunk].tolist()
            if release.coarse:
                content[release.coarse] = fine_to_coarse[labels[chunk]].tolist()
            _dump(folder / part, content)
    meta = {release.names: [f"class_{c}" for c in range(release.classes)]}
    if release.coarse_names:
        meta[release.coarse_names] = list(CIFAR100_COARSE_NAMES)
    else:
        meta.update(num_cases_per_batch=len(splits["train"]) // len(release.train), num_vis=32 * 32 * 3)
    _dump(folder / release.meta, meta)
    return root


def write_imagenette(root: str | Path, *, classes: int = 10, train_per_class: int = 4, val_per_class: int = 2,
                     size: int = 40, seed: int = 0) -> Path:
    """Write a tiny Imagenette tree (``root/train/<wnid>/*.JPEG``, ``root/val/<wnid>/*.JPEG``,
    JPEG files of ``size x size``) and return ``root``.

    Example::

        root = write_imagenette("tiny-imagenette", classes=4)
    """
    from PIL import Image

    if not 1 <= classes <= len(IMAGENETTE_WNIDS):
        raise ValueError(f"classes must be in 1..{len(IMAGENETTE_WNIDS)}, got {classes}")
    root = Path(root)
    counts = {"train": train_per_class, "val": val_per_class}
    for split in SPLITS:
        labels = np.repeat(np.arange(classes), counts[split])
        images = class_images(labels, (3, size, size), seed)
        for i, (label, image) in enumerate(zip(labels.tolist(), images)):
            wnid = IMAGENETTE_WNIDS[label]
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{wnid}_{i}.JPEG", quality=90)
    return root


def write_mnist(root: str | Path, *, train_per_class: int = 10, test_per_class: int = 4, seed: int = 0) -> Path:
    """Write tiny MNIST-format IDX files (``train-*`` and ``t10k-*``, gzip-compressed, 28x28
    images, ten classes) into ``root`` and return it: the layout of MNIST and Fashion-MNIST.

    Example::

        root = write_mnist("tiny-fashion")
        bench = load_benchmark("split-fashion-mnist", data_dir=root)
    """
    root, rng = Path(root), np.random.default_rng(seed)
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = _labels(10, per_class, rng)
        images = class_images(labels, (1, 28, 28), seed)[:, 0]
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", torch.from_numpy(images))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", torch.from_numpy(labels.astype(np.uint8)))
    return root
