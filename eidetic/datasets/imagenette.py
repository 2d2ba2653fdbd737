"""Imagenette (any release: 160 px, 320 px, full size) in its ImageFolder layout,
``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``.

Only the file names are read here; the images are decoded when a DataLoader worker reads an
item (:class:`~eidetic.datasets.images.ImageFiles`), never all at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .folders import HINT, require_folder

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
"""File name endings read as images (any case)."""

RELEASES = {"160px": "imagenette2-160", "320px": "imagenette2-320", "full": "imagenette2"}
"""Imagenette's releases and the folder torchvision extracts each into."""

SPLITS = ("train", "val")


@dataclass
class ImageTree:
    """The image files of an ImageFolder tree: classes in sorted order, and per split the files
    and their labels (the class's index).

    Example::

        tree = load_imagenette("data/imagenette2-320")
        tree.classes[:2], len(tree.train_paths)        # ['n01440764', 'n02102040'], 9469
    """

    root: Path
    classes: list[str]
    train_paths: list[Path]
    train_labels: list[int]
    test_paths: list[Path]
    test_labels: list[int]
    source: str


def _layout(root: Path) -> str:
    return (f"Imagenette's ImageFolder layout, {root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG, or one "
            f"release under it ({', '.join(f'{f}/' for f in RELEASES.values())})")


def find_imagenette(root: str | Path) -> Path:
    """The folder holding Imagenette's ``train/`` and ``val/``: ``root`` itself, or the one
    release folder torchvision extracted under it (``imagenette2``, ``imagenette2-320`` or
    ``imagenette2-160``).

    Raises:
        FileNotFoundError: no such folder (the message names the path, the layout and how to
            download the data), or several releases under ``root`` (name the one to use).

    Example::

        find_imagenette("data")             # data/imagenette2-320
    """
    root = Path(root)
    require_folder(root, "Imagenette", _layout(root))
    if any((root / s).is_dir() for s in SPLITS):
        return root
    found = [root / f for f in RELEASES.values() if all((root / f / s).is_dir() for s in SPLITS)]
    if len(found) > 1:
        raise FileNotFoundError(f"several Imagenette releases in {root} ({', '.join(f.name for f in found)}): give "
                                "the folder of the one to use")
    if not found:
        raise FileNotFoundError(f"no Imagenette found in {root}: expected {_layout(root)}; {HINT}")
    return found[0]


def load_imagenette(root: str | Path) -> ImageTree:
    """The image files of Imagenette under ``root`` (see :func:`find_imagenette`), classes in
    sorted WordNet-id order; nothing is decoded.

    Raises:
        FileNotFoundError: the layout is not there.
        ValueError: a split lacks a class the other has, a class folder holds no image, or the
            tree has no class at all.

    Example::

        tree = load_imagenette("data")
        tree.train_paths[0], tree.train_labels[0]
    """
    folder = find_imagenette(root)
    splits = {}
    for split in SPLITS:
        if not (folder / split).is_dir():
            raise FileNotFoundError(f"{folder / split} does not exist: expected {_layout(folder)}")
        splits[split] = _classes(folder / split)
    train, val = splits["train"], splits["val"]
    if not train:
        raise ValueError(f"{folder / 'train'} holds no class folder (expected train/<wnid>/*.JPEG)")
    if set(train) != set(val):
        only = sorted(set(train) ^ set(val))
        raise ValueError(f"{folder}: train/ and val/ should hold the same classes; {', '.join(only)} is in one only")
    classes = sorted(train)
    paths = {s: [p for c in classes for p in splits[s][c]] for s in SPLITS}
    labels = {s: [k for k, c in enumerate(classes) for _ in splits[s][c]] for s in SPLITS}
    source = (f"Imagenette from {folder}: {len(classes)} classes, {len(paths['train'])} training and "
              f"{len(paths['val'])} validation images (decoded on the fly)")
    return ImageTree(folder, classes, paths["train"], labels["train"], paths["val"], labels["val"], source)


def _classes(split: Path) -> dict[str, list[Path]]:
    found = {}
    for entry in sorted(os.scandir(split), key=lambda e: e.name):
        if not entry.is_dir():
            continue
        files = sorted(Path(f.path) for f in os.scandir(entry.path)
                       if f.is_file() and f.name.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise ValueError(f"{entry.path} holds no image ({', '.join(IMAGE_SUFFIXES)} files)")
        found[entry.name] = files
    return found


def release_for(image_size: int) -> str:
    """The smallest Imagenette release whose images are at least ``image_size`` on their short side.

    Example::

        release_for(224)        # '320px'
    """
    return "160px" if image_size <= 160 else "320px" if image_size <= 320 else "full"


def download_imagenette(root: str | Path, size: str = "320px") -> Path:
    """Download one Imagenette release (``"160px"``, ``"320px"`` or ``"full"``) into ``root``
    with torchvision and return its folder.

    Needs torchvision and a network connection; a release already there is not fetched again.

    Example::

        tree = load_imagenette(download_imagenette("data", "160px"))
    """
    if size not in RELEASES:
        raise ValueError(f"Imagenette releases are {', '.join(RELEASES)}, got {size!r}")
    root = Path(root)
    if root.name in RELEASES.values():  # the release's folder was named: download next to it
        root = root.parent
    try:
        from torchvision.datasets import Imagenette
    except ImportError:
        raise ImportError("downloading Imagenette needs torchvision 0.17 or later: pip install torchvision "
                          "(or pip install 'eidetic[examples]')") from None
    folder = root / RELEASES[size]
    if not folder.is_dir():
        Imagenette(str(root), split="train", size=size, download=True)
    return folder
