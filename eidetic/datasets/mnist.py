"""MNIST and Fashion-MNIST: the same IDX files (``t10k-*`` and ``train-*``, raw or ``.gz``) in a
folder of their own or in torchvision's layout (``<root>/MNIST/raw``, ``<root>/FashionMNIST/raw``).

MNIST loads as float images (:class:`~eidetic.datasets.images.ImageSet`), Fashion-MNIST stays
uint8 (:class:`~eidetic.datasets.images.ByteImages`, 47 MB for its 60,000 training images).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .folders import HINT, require_folder
from .idx import read_idx
from .images import ByteImages, ImageSet

SPLIT_SEED = 0
"""Seed of the fixed train/test split (the same whatever the run's seed)."""

MNIST_TEST_HOLDOUT = 2000
"""Test images held out of a 10k test set when the training files are absent."""

FASHION_CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")
"""Fashion-MNIST's ten classes, by label."""

_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_TITLES = {"MNIST": "MNIST", "FashionMNIST": "Fashion-MNIST"}


def find_mnist(root: str | Path, dataset: str = "MNIST") -> dict[str, Path]:
    """Locate the IDX files of MNIST (``dataset="MNIST"``) or Fashion-MNIST (``"FashionMNIST"``)
    under ``root``.

    Looks in ``root`` itself, then in the torchvision layout ``root/<dataset>/raw`` (and
    ``root/raw``), for ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (required) and
    ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (optional), each raw or ``.gz``.

    Returns:
        ``{"test_images": path, "test_labels": path}``, plus ``"train_images"`` and
        ``"train_labels"`` when both training files are there.

    Raises:
        FileNotFoundError: the folder or the test files are missing, or only one of the training
            files is there; the message lists where it looked.

    Example::

        files = find_mnist("data")      # finds data/MNIST/raw/t10k-images-idx3-ubyte.gz, ...
    """
    if dataset not in _TITLES:
        raise ValueError(f"dataset must be one of {', '.join(_TITLES)}, got {dataset!r}")
    title, root = _TITLES[dataset], Path(root)
    layout = (f"the IDX files {_NAMES['test_images']}[.gz], {_NAMES['test_labels']}[.gz] (and the train-* pair) in "
              f"it or in {root / dataset / 'raw'} (torchvision's layout)")
    require_folder(root, title, layout)
    folders = [root, root / dataset / "raw", root / "raw"]
    for folder in folders:
        found = {key: _find_file(folder, name) for key, name in _NAMES.items()}
        if found["test_images"] is None and found["test_labels"] is None:
            continue
        missing = [_NAMES[k] for k in ("test_images", "test_labels") if found[k] is None]
        train = [found["train_images"], found["train_labels"]]
        if any(train) and not all(train):
            missing += [_NAMES[k] for k in ("train_images", "train_labels") if found[k] is None]
        if missing:
            raise FileNotFoundError(f"incomplete {title} files in {folder}: missing {', '.join(missing)} (raw or .gz)")
        return {k: v for k, v in found.items() if v is not None}
    where = ", ".join(str(f) for f in folders)
    raise FileNotFoundError(f"no {title} files found: looked for {_NAMES['test_images']}[.gz] and "
                            f"{_NAMES['test_labels']}[.gz] in {where}; {HINT}")


def _find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_mnist(root: str | Path, *, holdout: int = MNIST_TEST_HOLDOUT, split_seed: int = SPLIT_SEED) -> ImageSet:
    """Read MNIST from ``root`` (see :func:`find_mnist`), as float images in [0, 1] of shape
    ``(N, 1, 28, 28)``.

    With the training files, train on them and test on the 10k test images. Without them, hold
    out ``holdout`` of the 10k test images for testing (chosen by ``split_seed``, so the same
    ones every time) and train on the rest.

    Example::

        data = load_mnist("data/mnist")     # only t10k files: 8,000 train, 2,000 test
        data.x_train.shape                  # torch.Size([8000, 1, 28, 28])
    """
    data = _load(root, "MNIST", holdout, split_seed)
    return ImageSet(data.x_train.float() / 255.0, data.y_train, data.x_test.float() / 255.0, data.y_test, data.source)


def load_fashion_mnist(root: str | Path, *, holdout: int = MNIST_TEST_HOLDOUT,
                       split_seed: int = SPLIT_SEED) -> ByteImages:
    """Read Fashion-MNIST from ``root`` (see :func:`find_mnist`) as uint8 images ``(N, 1, 28,
    28)``: the 60k training and 10k test images, or, with only the test files, the same fixed
    hold-out as :func:`load_mnist`.

    Example::

        data = load_fashion_mnist("data/fashion-mnist")
        data.x_train.shape, data.class_names[9]        # (60000, 1, 28, 28), 'ankle boot'
    """
    return _load(root, "FashionMNIST", holdout, split_seed)


def _load(root: str | Path, dataset: str, holdout: int, split_seed: int) -> ByteImages:
    title = _TITLES[dataset]
    files = find_mnist(root, dataset)
    x_test, y_test = _read_pair(files["test_images"], files["test_labels"])
    names = list(FASHION_CLASSES) if dataset == "FashionMNIST" else [str(d) for d in range(10)]
    if "train_images" in files:
        x_train, y_train = _read_pair(files["train_images"], files["train_labels"])
        folder = Path(files["train_images"]).parent
        source = f"{title} from {folder}: {len(x_train)} training, {len(x_test)} test images"
        return ByteImages(x_train, y_train, x_test, y_test, source, names)
    if not 0 < holdout < len(x_test):
        raise ValueError(f"cannot hold out {holdout} of {len(x_test)} {title} test images for testing")
    order = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(split_seed))
    test, train = order[:holdout], order[holdout:]
    source = (f"{title} test set from {Path(files['test_images']).parent}: {len(train)} images for training, "
              f"{len(test)} held out for testing (split seed {split_seed})")
    return ByteImages(x_test[train], y_test[train], x_test[test], y_test[test], source, names)


def _read_pair(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dim() != 3 or labels.dim() != 1:
        raise ValueError(f"{images_path} should hold images (N, H, W) and {labels_path} labels (N,), got shapes "
                         f"{tuple(images.shape)} and {tuple(labels.shape)}")
    if images.dtype != torch.uint8:
        raise ValueError(f"{images_path} holds {images.dtype} values, not the unsigned bytes of MNIST images")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
    if len(labels) and not bool(((labels >= 0) & (labels <= 9)).all()):
        bad = sorted({int(v) for v in labels[(labels < 0) | (labels > 9)][:5]})
        raise ValueError(f"{labels_path} holds labels {bad} outside 0..9: not MNIST's or Fashion-MNIST's ten classes "
                         "(a corrupt or foreign file)")
    return images.unsqueeze(1), labels.long()


def download_mnist(root: str | Path, dataset: str = "MNIST") -> Path:
    """Download MNIST (or ``dataset="FashionMNIST"``) into ``root`` with torchvision
    (``root/<dataset>/raw``) and return ``root``.

    Needs torchvision and a network connection; files already there are not fetched again.

    Example::

        data = load_mnist(download_mnist("data"))
        fashion = load_fashion_mnist(download_mnist("data", "FashionMNIST"))
    """
    if dataset not in _TITLES:
        raise ValueError(f"dataset must be one of {', '.join(_TITLES)}, got {dataset!r}")
    try:
        import torchvision.datasets as tv_datasets
    except ImportError:
        raise ImportError(f"downloading {_TITLES[dataset]} needs torchvision: pip install torchvision "
                          "(or pip install 'eidetic[examples]')") from None
    for train in (True, False):
        getattr(tv_datasets, dataset)(str(root), train=train, download=True)
    return Path(root)
