"""CIFAR-10 and CIFAR-100 from the python-pickle release, laid out as torchvision lays it out.

``<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
``<root>/cifar-100-python/{train, test, meta}``; ``root`` may also be that folder itself. Each
file is a pickled dict: ``data``, a uint8 array of ``N x 3072`` values (1024 red, 1024 green,
1024 blue, row by row), and ``labels`` (CIFAR-10) or ``fine_labels`` and ``coarse_labels``
(CIFAR-100); the meta file names the classes.

The files are read with an unpickler that only builds plain values and numpy arrays (a pickle
can run any code it names: a foreign file is refused, not executed), and their structure is
checked (keys, shapes, types, label ranges, one coarse label per fine label), so that a truncated
or foreign file is an error naming the file. Checksums are not needed and not checked.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .folders import HINT, require_folder
from .images import ByteImages


@dataclass(frozen=True)
class CifarRelease:
    """The files of one CIFAR release and the keys inside them."""

    title: str
    folder: str
    archive: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    labels: str
    classes: int
    names: str
    coarse: str | None = None
    coarse_classes: int = 0
    coarse_names: str | None = None

    @property
    def files(self) -> tuple[str, ...]:
        """Every file the release must hold."""
        return (*self.train, *self.test, self.meta)


RELEASES = {
    "cifar10": CifarRelease("CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                            tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
                            "labels", 10, "label_names"),
    "cifar100": CifarRelease("CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",),
                             "meta", "fine_labels", 100, "fine_label_names", "coarse_labels", 20,
                             "coarse_label_names"),
}
"""The two releases by name: ``"cifar10"`` and ``"cifar100"``."""

_SIDE, _CHANNELS = 32, 3
_VALUES = _SIDE * _SIDE * _CHANNELS
_SAFE = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
         ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
_READ_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                OverflowError, UnicodeDecodeError, ImportError, MemoryError)


class _PlainUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and numpy arrays, and refuses anything else."""

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR file never does")


def _release(name: str) -> CifarRelease:
    if name not in RELEASES:
        raise ValueError(f"unknown CIFAR release {name!r}; choose one of {', '.join(RELEASES)}")
    return RELEASES[name]


def _layout(release: CifarRelease, root: Path) -> str:
    return (f"the python-pickle release as torchvision lays it out, {root / release.folder}/"
            f"{{{', '.join(release.files)}}}")


def find_cifar(root: str | Path, name: str = "cifar10") -> Path:
    """The folder of the CIFAR release ``name`` (``"cifar10"`` or ``"cifar100"``) under ``root``:
    ``root/cifar-10-batches-py`` (``root/cifar-100-python``), or ``root`` itself when it holds
    the release's files.

    Raises:
        FileNotFoundError: the folder or some of its files are missing; the message names the
            path, the expected layout and how to download the data.

    Example::

        folder = find_cifar("data", "cifar100")        # data/cifar-100-python
    """
    release, root = _release(name), Path(root)
    require_folder(root, release.title, _layout(release, root))
    for folder in (root, root / release.folder):
        present = [f for f in release.files if (folder / f).is_file()]
        if present and len(present) < len(release.files):
            missing = [f for f in release.files if f not in present]
            raise FileNotFoundError(f"incomplete {release.title} in {folder}: missing {', '.join(missing)} "
                                    f"(expected {_layout(release, root)})")
        if present:
            return folder
    archive = root / release.archive
    extract = f"; extract {archive} there first (tar xzf)" if archive.is_file() else f"; {HINT}"
    raise FileNotFoundError(f"no {release.title} found in {root}: expected {_layout(release, root)}{extract}")


def read_cifar_file(path: str | Path, name: str = "cifar10") -> dict:
    """One file of a CIFAR release, read and checked: a batch (``data`` and labels) or the meta
    file (class names), as a dict with ``str`` keys.

    Raises:
        ValueError: the file is truncated, is not a pickle, builds something other than plain
            values and arrays, or lacks the keys, shapes or label ranges of a CIFAR file.

    Example::

        batch = read_cifar_file("data/cifar-10-batches-py/data_batch_1")
        batch["data"].shape, len(batch["labels"])        # (10000, 3072), 10000
    """
    release, path = _release(name), Path(path)
    try:
        with path.open("rb") as f:
            content = _PlainUnpickler(f, encoding="latin1").load()
    except _READ_ERRORS as exc:
        raise ValueError(f"{path} cannot be read as a {release.title} file (truncated, or not the python-pickle "
                         f"release): {type(exc).__name__}: {exc}") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path} is not a {release.title} file: it holds a {type(content).__name__}, not a dict")
    content = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in content.items()}
    if path.name == release.meta:
        _check_names(content, release.names, release.classes, path)
        if release.coarse_names:
            _check_names(content, release.coarse_names, release.coarse_classes, path)
    else:
        _check_batch(content, release, path)
    return content


def _check_names(content: dict, key: str, count: int, path: Path) -> None:
    names = content.get(key)
    if not isinstance(names, list) or len(names) != count or not all(isinstance(n, (str, bytes)) for n in names):
        raise ValueError(f"{path} is not a CIFAR meta file: its {key!r} should list {count} class names")
    content[key] = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def _check_batch(content: dict, release: CifarRelease, path: Path) -> None:
    data = content.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _VALUES:
        found = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                 else type(data).__name__ if data is not None else "nothing")
        raise ValueError(f"{path} is not a {release.title} batch: its 'data' should be a uint8 array of N x "
                         f"{_VALUES} values, found {found}")
    keys = [(release.labels, release.classes)] + ([(release.coarse, release.coarse_classes)] if release.coarse else [])
    for key, count in keys:
        labels = content.get(key)
        if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
            raise ValueError(f"{path} is not a {release.title} batch: its {key!r} should list {len(data)} labels, "
                             f"one per image")
        values = np.asarray(labels)
        if values.size and (not np.issubdtype(values.dtype, np.integer) or values.min() < 0 or values.max() >= count):
            raise ValueError(f"{path}: {key!r} should hold integers in [0, {count}), found "
                             f"{values.dtype} values from {values.min()} to {values.max()}")


def load_cifar(root: str | Path, name: str = "cifar10") -> ByteImages:
    """Read CIFAR-10 (``name="cifar10"``) or CIFAR-100 (``"cifar100"``) from ``root`` (see
    :func:`find_cifar`) as uint8 images ``(N, 3, 32, 32)``: 50,000 training and 10,000 test
    images in the real release, with the class names and, for CIFAR-100, the coarse labels.

    Raises:
        FileNotFoundError: the release is not there (the message says where it looked).
        ValueError: a file is truncated or foreign (the message names it), or a fine label of
            CIFAR-100 has two coarse labels.

    Example::

        data = load_cifar("data", "cifar100")
        data.coarse_train[:5], data.coarse_names[0]     # superclasses, 'aquatic_mammals'
    """
    release = _release(name)
    folder = find_cifar(root, name)
    meta = read_cifar_file(folder / release.meta, name)
    train = [read_cifar_file(folder / f, name) for f in release.train]
    test = [read_cifar_file(folder / f, name) for f in release.test]
    x_train, y_train, coarse_train = _stack(train, release)
    x_test, y_test, coarse_test = _stack(test, release)
    if release.coarse:
        _check_hierarchy(torch.cat([y_train, y_test]), torch.cat([coarse_train, coarse_test]), folder)
    source = f"{release.title} from {folder}: {len(x_train)} training, {len(x_test)} test images"
    return ByteImages(x_train, y_train, x_test, y_test, source, meta[release.names], coarse_train, coarse_test,
                      meta[release.coarse_names] if release.coarse_names else [])


def _stack(batches: list[dict], release: CifarRelease) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    images = torch.from_numpy(np.concatenate([b["data"] for b in batches])).view(-1, _CHANNELS, _SIDE, _SIDE)
    labels = torch.as_tensor(np.concatenate([np.asarray(b[release.labels], dtype=np.int64) for b in batches]))
    coarse = None
    if release.coarse:
        coarse = torch.as_tensor(np.concatenate([np.asarray(b[release.coarse], dtype=np.int64) for b in batches]))
    return images, labels, coarse


def _check_hierarchy(fine: torch.Tensor, coarse: torch.Tensor, folder: Path) -> None:
    pairs = torch.unique(torch.stack([fine, coarse], 1), dim=0)
    labels, counts = torch.unique(pairs[:, 0], return_counts=True)
    if (counts > 1).any():
        bad = int(labels[counts > 1][0])
        parents = pairs[pairs[:, 0] == bad, 1].tolist()
        raise ValueError(f"{folder}: fine label {bad} has several coarse labels {parents} in the train and test "
                         "files; in CIFAR-100 each class belongs to one superclass")


def download_cifar(root: str | Path, name: str = "cifar10") -> Path:
    """Download CIFAR-10 or CIFAR-100 into ``root`` with torchvision and return ``root``.

    Needs torchvision and a network connection; a release already there is not fetched again.

    Example::

        data = load_cifar(download_cifar("data", "cifar100"), "cifar100")
    """
    release, root = _release(name), Path(root)
    if root.name == release.folder:  # the release's folder was named: download next to it
        root = root.parent
    try:
        import torchvision.datasets as tv_datasets
    except ImportError:
        raise ImportError(f"downloading {release.title} needs torchvision: pip install torchvision "
                          "(or pip install 'eidetic[examples]')") from None
    cls = tv_datasets.CIFAR10 if name == "cifar10" else tv_datasets.CIFAR100
    for train in (True, False):
        cls(str(root), train=train, download=True)
    return root
