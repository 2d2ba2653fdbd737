"""Offline data for the command line and the benchmarks: MNIST from IDX files, scikit-learn's
digits, and the split and permuted task sequences built on them.

Nothing here downloads anything unless asked (:func:`download_mnist`), and the library itself
never imports this module: it is for ``eidetic run`` and ``benchmarks/``.

* :func:`read_idx` reads one IDX file (gzip-compressed or raw).
* :func:`load_mnist` reads MNIST from a folder of IDX files or a torchvision root
  (``<root>/MNIST/raw``). With the training files present it trains on the 60k training images
  and tests on the 10k test images; with only the 10k test images (``t10k-*``) it holds out a
  fixed 2,000 of them for testing and trains on the other 8,000.
* :func:`load_digits` reads scikit-learn's bundled 8x8 digits (1,797 images) with a fixed 25%
  test split.
* :func:`split_tasks` and :func:`permuted_tasks` turn a labelled image set into a task sequence;
  :func:`row_sequences` makes every image a sequence of its rows (the ``sequential-*``
  benchmarks: split tasks for recurrent models); :func:`load_benchmark` does all of it by name.

Example::

    from eidetic.datasets import load_benchmark

    bench = load_benchmark("split-mnist", data_dir="data/mnist", tasks=5)
    tasks = bench.as_tasks(batch_size=128, seed=0)      # a list of eidetic.Task
    results = eidetic.run_tasks(net, tasks, optimizer=..., epochs=3)
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .evaluation.runs import Task

BENCHMARKS = ("split-digits", "permuted-digits", "sequential-digits", "split-mnist", "permuted-mnist",
              "sequential-mnist")
"""Benchmark names accepted by :func:`load_benchmark`."""

SPLIT_SEED = 0
"""Seed of the fixed train/test split (the same whatever the run's seed)."""

MNIST_TEST_HOLDOUT = 2000
"""Test images held out of the 10k MNIST test set when the training files are absent."""

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MNIST_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


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
class Benchmark:
    """A task sequence: per task, a training and a test dataset and the number of classes.

    Attributes:
        name: the benchmark's name (one of :data:`BENCHMARKS` for built-in ones).
        train, test: one ``TensorDataset`` of ``(inputs, labels)`` per task.
        num_classes: the number of classes of each task.
        classes: per task, the original labels its classes stand for (class ``i`` of task
            ``k`` is original label ``classes[k][i]``).
        input_shape: the shape of one input, e.g. ``(1, 28, 28)``.
        source: where the data came from, in words.

    Example::

        bench = load_benchmark("split-digits")
        print(bench.describe())
        tasks = bench.as_tasks(batch_size=32, seed=0)
    """

    name: str
    train: list[TensorDataset]
    test: list[TensorDataset]
    num_classes: list[int]
    classes: list[list[int]]
    input_shape: tuple[int, ...]
    source: str = ""
    permutations: list[torch.Tensor] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.train)

    def as_tasks(self, batch_size: int, *, seed: int = 0, test_batch_size: int = 1000) -> list[Task]:
        """The tasks as :class:`eidetic.Task` objects of DataLoaders.

        Training loaders shuffle with a generator seeded by ``seed`` (reproducible runs) and
        drop a last batch of one sample, which BatchNorm cannot train on.

        Example::

            tasks = bench.as_tasks(batch_size=64, seed=1)
            eidetic.run_tasks(net, tasks, optimizer=make_optimizer, epochs=3)
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        generator = torch.Generator().manual_seed(seed)
        tasks = []
        for train, test, classes in zip(self.train, self.test, self.num_classes):
            loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator,
                                drop_last=len(train) % batch_size == 1)
            tasks.append(Task(loader, DataLoader(test, batch_size=test_batch_size), classes))
        return tasks

    def describe(self) -> dict:
        """A JSON-serialisable description: name, source, input shape, and per task its classes
        and its numbers of training and test samples."""
        return {
            "name": self.name,
            "source": self.source,
            "input_shape": list(self.input_shape),
            "tasks": [{"classes": c, "num_classes": n, "train_samples": len(tr), "test_samples": len(te)}
                      for c, n, tr, te in zip(self.classes, self.num_classes, self.train, self.test)],
        }


# ---------------------------------------------------------------------------------------- IDX


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (the format of the MNIST files), gzip-compressed or raw.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a valid IDX file (the message names it).

    Example::

        images = read_idx("data/mnist/t10k-images-idx3-ubyte.gz")   # uint8, (10000, 28, 28)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such IDX file: {path}")
    try:
        with path.open("rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gzipped else path.open("rb")) as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    return _parse_idx(data, path)


def _parse_idx(data: bytes, path: Path) -> torch.Tensor:
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES or data[3] == 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    ndim, dtype = data[3], np.dtype(_IDX_TYPES[data[2]])
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated: its header needs {header} bytes, it has {len(data)}")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{path} holds {len(data) - header} bytes of data, but its header {shape} needs {expected}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def write_idx(path: str | Path, tensor: torch.Tensor, *, compress: bool | None = None) -> Path:
    """Write ``tensor`` as an IDX file (gzip-compressed when ``compress``, by default when the
    name ends in ``.gz``). The inverse of :func:`read_idx`; handy for tests and for exporting.

    Example::

        write_idx("tiny/t10k-labels-idx1-ubyte.gz", torch.tensor([3, 1, 4], dtype=torch.uint8))
    """
    path = Path(path)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}
    array = tensor.detach().cpu().numpy()
    if array.dtype not in codes:
        raise ValueError(f"IDX has no type for {tensor.dtype}; use uint8, int8, int16, int32, float32 or float64")
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") if compress else path.open("wb") as f:
        f.write(payload)
    return path


# -------------------------------------------------------------------------------------- MNIST


def find_mnist(root: str | Path) -> dict[str, Path]:
    """Locate the MNIST IDX files under ``root``.

    Looks in ``root`` itself, then in the torchvision layout ``root/MNIST/raw`` (and
    ``root/raw``), for ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (required) and
    ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (optional), each raw or ``.gz``.

    Returns:
        ``{"test_images": path, "test_labels": path}``, plus ``"train_images"`` and
        ``"train_labels"`` when both training files are there.

    Raises:
        FileNotFoundError: the test files are missing, or only one of the training files is
            there; the message lists where it looked.

    Example::

        files = find_mnist("/data")      # finds /data/MNIST/raw/t10k-images-idx3-ubyte.gz, ...
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MNIST data folder {root} does not exist")
    folders = [root, root / "MNIST" / "raw", root / "raw"]
    for folder in folders:
        found = {key: _find_file(folder, name) for key, name in _MNIST_NAMES.items()}
        if found["test_images"] is None and found["test_labels"] is None:
            continue
        missing = [_MNIST_NAMES[k] for k in ("test_images", "test_labels") if found[k] is None]
        train = [found["train_images"], found["train_labels"]]
        if any(train) and not all(train):
            missing += [_MNIST_NAMES[k] for k in ("train_images", "train_labels") if found[k] is None]
        if missing:
            raise FileNotFoundError(f"incomplete MNIST files in {folder}: missing {', '.join(missing)} (raw or .gz)")
        return {k: v for k, v in found.items() if v is not None}
    where = ", ".join(str(f) for f in folders)
    raise FileNotFoundError(f"no MNIST files found: looked for t10k-images-idx3-ubyte[.gz] and "
                            f"t10k-labels-idx1-ubyte[.gz] in {where}")


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

        data = load_mnist("data/mnist")   # only t10k files: 8,000 train, 2,000 test
        data.x_train.shape                             # torch.Size([8000, 1, 28, 28])
    """
    files = find_mnist(root)
    x_test, y_test = _read_pair(files["test_images"], files["test_labels"])
    if "train_images" in files:
        x_train, y_train = _read_pair(files["train_images"], files["train_labels"])
        source = f"MNIST from {Path(files['train_images']).parent}: {len(x_train)} training, {len(x_test)} test images"
        return ImageSet(x_train, y_train, x_test, y_test, source)
    if not 0 < holdout < len(x_test):
        raise ValueError(f"cannot hold out {holdout} of {len(x_test)} MNIST test images for testing")
    order = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(split_seed))
    test, train = order[:holdout], order[holdout:]
    source = (f"MNIST test set from {Path(files['test_images']).parent}: {len(train)} images for training, "
              f"{len(test)} held out for testing (split seed {split_seed})")
    return ImageSet(x_test[train], y_test[train], x_test[test], y_test[test], source)


def _read_pair(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dim() != 3 or labels.dim() != 1:
        raise ValueError(f"{images_path} should hold images (N, H, W) and {labels_path} labels (N,), got shapes "
                         f"{tuple(images.shape)} and {tuple(labels.shape)}")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels")
    return (images.float() / 255.0).unsqueeze(1), labels.long()


def download_mnist(root: str | Path) -> Path:
    """Download MNIST into ``root`` with torchvision (``root/MNIST/raw``) and return ``root``.

    Needs torchvision and a network connection; files already there are not fetched again.

    Example::

        data = load_mnist(download_mnist("data"))
    """
    try:
        from torchvision.datasets import MNIST
    except ImportError:
        raise ImportError("downloading MNIST needs torchvision: pip install torchvision "
                          "(or pip install 'eidetic[examples]')") from None
    for train in (True, False):
        MNIST(str(root), train=train, download=True)
    return Path(root)


# ------------------------------------------------------------------------------------- digits


def load_digits(*, test_size: float = 0.25, split_seed: int = SPLIT_SEED) -> ImageSet:
    """scikit-learn's bundled 8x8 digits (no download) as float images in [0, 1] of shape
    ``(N, 1, 8, 8)``, with a fixed stratified test split.

    Example::

        data = load_digits()
        data.x_train.shape, data.x_test.shape     # (1347, 1, 8, 8), (450, 1, 8, 8)
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ImportError("the digits benchmarks need scikit-learn: pip install scikit-learn "
                          "(or pip install 'eidetic[examples]')") from None
    digits = sklearn_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    train, test = train_test_split(np.arange(len(y)), test_size=test_size, stratify=digits.target,
                                   random_state=split_seed)
    train, test = torch.as_tensor(train), torch.as_tensor(test)
    source = f"scikit-learn digits: {len(train)} training, {len(test)} test images (split seed {split_seed})"
    return ImageSet(x[train], y[train], x[test], y[test], source)


# -------------------------------------------------------------------------------------- tasks


def split_tasks(data: ImageSet, tasks: int = 5, *, classes_per_task: int = 2, name: str = "split") -> Benchmark:
    """Split a 10-class image set into tasks of consecutive classes, relabelled from 0.

    Task ``k`` holds the original classes ``k * classes_per_task, ...``; with 2 classes per task
    that is 0/1, 2/3, 4/5, 6/7, 8/9.

    Example::

        bench = split_tasks(load_digits(), tasks=3)    # 0 vs 1, 2 vs 3, 4 vs 5
    """
    labels = sorted(set(data.y_train.tolist()))
    most = len(labels) // classes_per_task
    if not 1 <= tasks <= most:
        raise ValueError(f"{name} has {most} tasks of {classes_per_task} classes; asked for {tasks}")
    bench = Benchmark(name, [], [], [], [], tuple(data.x_train.shape[1:]), data.source)
    for k in range(tasks):
        classes = labels[k * classes_per_task:(k + 1) * classes_per_task]
        bench.train.append(_select(data.x_train, data.y_train, classes))
        bench.test.append(_select(data.x_test, data.y_test, classes))
        bench.num_classes.append(len(classes))
        bench.classes.append(classes)
    return bench


def _select(x: torch.Tensor, y: torch.Tensor, classes: list[int]) -> TensorDataset:
    keep = torch.isin(y, torch.tensor(classes))
    relabel = torch.full((int(y.max()) + 1,), -1, dtype=torch.long)
    relabel[torch.tensor(classes)] = torch.arange(len(classes))
    return TensorDataset(x[keep], relabel[y[keep]])


def permuted_tasks(data: ImageSet, tasks: int = 10, *, seed: int = 0, name: str = "permuted") -> Benchmark:
    """One task per fixed random permutation of the pixels, all classes in every task.

    Task 0 uses the identity (the original images); task ``k > 0`` a permutation drawn from
    ``seed``. Pixels are permuted within the flattened image and put back in its shape.

    Example::

        bench = permuted_tasks(load_digits(), tasks=4, seed=0)
        bench.permutations[1]          # the pixel order of task 1
    """
    if tasks < 1:
        raise ValueError(f"{name} needs at least 1 task, got {tasks}")
    shape = tuple(data.x_train.shape[1:])
    pixels = int(np.prod(shape))
    generator = torch.Generator().manual_seed(seed)
    classes = sorted(set(data.y_train.tolist()))
    bench = Benchmark(name, [], [], [], [], shape, data.source)
    for k in range(tasks):
        order = torch.arange(pixels) if k == 0 else torch.randperm(pixels, generator=generator)
        bench.permutations.append(order)
        for x, y, out in ((data.x_train, data.y_train, bench.train), (data.x_test, data.y_test, bench.test)):
            out.append(TensorDataset(x.flatten(1)[:, order].reshape(-1, *shape), y))
        bench.num_classes.append(len(classes))
        bench.classes.append(classes)
    return bench


def row_sequences(data: ImageSet) -> ImageSet:
    """Every image ``(C, H, W)`` as a sequence of its ``H`` rows of ``C * W`` pixels, for models
    that read an image row by row (``(N, C, H, W)`` becomes ``(N, H, C * W)``).

    Example::

        rows = row_sequences(load_digits())
        rows.x_train.shape                 # (1347, 8, 8): 8 steps of 8 pixels
    """
    def rows(x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 1, 3).flatten(2)

    return ImageSet(rows(data.x_train), data.y_train, rows(data.x_test), data.y_test,
                    data.source + ", read row by row")


def default_tasks(name: str) -> int:
    """The default number of tasks of a benchmark (5 for split and sequential ones, 10 for
    permuted ones).

    Example::

        default_tasks("permuted-mnist")   # 10
    """
    _check_name(name)
    return 10 if name.startswith("permuted") else 5


def load_benchmark(name: str, *, tasks: int | None = None, seed: int = 0, data_dir: str | Path | None = None,
                   download: bool = False) -> Benchmark:
    """Build a benchmark by name (see :data:`BENCHMARKS`).

    Args:
        name: ``"split-digits"``, ``"permuted-digits"``, ``"sequential-digits"`` or the same
            with ``mnist``; sequential benchmarks are split ones read row by row
            (:func:`row_sequences`).
        tasks: number of tasks (default: :func:`default_tasks`).
        seed: seed of the permutations (the train/test split does not depend on it).
        data_dir: MNIST folder (IDX files, or a torchvision root); required for MNIST.
        download: download MNIST into ``data_dir`` with torchvision first.

    Raises:
        ValueError: an unknown name or a bad number of tasks.
        FileNotFoundError: the MNIST files are missing.
        ImportError: scikit-learn (digits) or torchvision (download) is not installed.

    Example::

        bench = load_benchmark("permuted-mnist", tasks=10, data_dir="data/mnist")
    """
    _check_name(name)
    tasks = default_tasks(name) if tasks is None else tasks
    if name.endswith("digits"):
        data = load_digits()
    else:
        if data_dir is None:
            raise FileNotFoundError(f"{name} needs MNIST: give the folder that holds its IDX files "
                                    "(or a torchvision root with MNIST/raw)")
        data = load_mnist(download_mnist(data_dir) if download else data_dir)
    if name.startswith("permuted"):
        return permuted_tasks(data, tasks, seed=seed, name=name)
    return split_tasks(row_sequences(data) if name.startswith("sequential") else data, tasks, name=name)


def _check_name(name: str) -> None:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
