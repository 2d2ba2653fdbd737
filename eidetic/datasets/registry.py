"""The benchmarks by name: which data each reads, how it groups it into tasks, how many tasks it
allows, and :func:`load_benchmark`, which builds one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import cifar, imagenette, mnist
from .digits import load_digits
from .images import ImageSet
from .tasks import Benchmark, grouped_tasks, permuted_tasks, row_sequences, split_tasks
from .transforms import (
    CIFAR10_STATS,
    CIFAR100_STATS,
    CIFAR_PADDING,
    IMAGENET_STATS,
    ImageTransform,
    imagenette_transform,
)

DEFAULT_IMAGE_SIZE = 224
"""Imagenette's default input size (random resized crops for training, centre crops for testing)."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """What a benchmark name stands for.

    Attributes:
        name: the name :func:`load_benchmark` and ``eidetic run --benchmark`` take.
        data: the data set it reads: ``"digits"``, ``"mnist"``, ``"fashion-mnist"``,
            ``"cifar10"``, ``"cifar100"`` or ``"imagenette"``.
        kind: ``"split"`` (consecutive classes), ``"permuted"`` (one pixel order per task),
            ``"sequential"`` (split, each image read row by row) or ``"superclasses"``
            (CIFAR-100's coarse labels).
        default_tasks: the number of tasks when none is asked for.
        allowed: the numbers of tasks it allows (``None``: any positive number).
        description: one line for the documentation and ``--help``.
    """

    name: str
    data: str
    kind: str
    default_tasks: int
    allowed: tuple[int, ...] | None
    description: str

    def check_tasks(self, tasks: int) -> None:
        """Raise a ``ValueError`` naming the allowed numbers if ``tasks`` is not one of them."""
        if self.allowed is None:
            if tasks < 1:
                raise ValueError(f"{self.name} needs at least 1 task, got {tasks}")
        elif self.allowed == _upto(self.allowed[-1]):
            if tasks not in self.allowed:
                raise ValueError(f"{self.name} has {self.allowed[-1]} tasks (fewer keep the first ones), got {tasks}")
        elif tasks not in self.allowed:
            choices = ", ".join(map(str, self.allowed[:-1])) + f" or {self.allowed[-1]}"
            raise ValueError(f"{self.name} takes {choices} tasks (its classes divided among them), got {tasks}")


def _upto(n: int) -> tuple[int, ...]:
    return tuple(range(1, n + 1))


_SPECS = [
    BenchmarkSpec("split-digits", "digits", "split", 5, _upto(5), "scikit-learn's 8x8 digits, 5 tasks of 2 classes"),
    BenchmarkSpec("permuted-digits", "digits", "permuted", 10, None, "digits, one pixel permutation per task"),
    BenchmarkSpec("sequential-digits", "digits", "sequential", 5, _upto(5), "split digits read row by row"),
    BenchmarkSpec("split-mnist", "mnist", "split", 5, _upto(5), "MNIST, 5 tasks of 2 classes"),
    BenchmarkSpec("permuted-mnist", "mnist", "permuted", 10, None, "MNIST, one pixel permutation per task"),
    BenchmarkSpec("sequential-mnist", "mnist", "sequential", 5, _upto(5), "split MNIST read row by row"),
    BenchmarkSpec("split-fashion-mnist", "fashion-mnist", "split", 5, _upto(5), "Fashion-MNIST, 5 tasks of 2 classes"),
    BenchmarkSpec("permuted-fashion-mnist", "fashion-mnist", "permuted", 10, None,
                  "Fashion-MNIST, one pixel permutation per task"),
    BenchmarkSpec("split-cifar10", "cifar10", "split", 5, _upto(5), "CIFAR-10, 5 tasks of 2 classes in label order"),
    BenchmarkSpec("split-cifar100", "cifar100", "split", 10, (5, 10, 20),
                  "CIFAR-100, 10 tasks of 10 classes in label order (or 5 of 20, 20 of 5)"),
    BenchmarkSpec("cifar100-superclasses", "cifar100", "superclasses", 20, _upto(20),
                  "CIFAR-100, 20 tasks: task k holds the 5 classes of superclass k"),
    BenchmarkSpec("split-imagenette", "imagenette", "split", 5, _upto(5),
                  "Imagenette, 5 tasks of 2 classes in WordNet-id order"),
]
SPECS: dict[str, BenchmarkSpec] = {s.name: s for s in _SPECS}
"""Every built-in benchmark by name."""
BENCHMARKS = tuple(SPECS)
"""Benchmark names accepted by :func:`load_benchmark`."""
_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
           "imagenette": "Imagenette"}
_FOLDERS = {
    "mnist": "the folder that holds its IDX files (or a torchvision root with MNIST/raw)",
    "fashion-mnist": "the folder that holds its IDX files (or a torchvision root with FashionMNIST/raw)",
    "cifar10": "the folder that holds cifar-10-batches-py/ (or that folder itself)",
    "cifar100": "the folder that holds cifar-100-python/ (or that folder itself)",
    "imagenette": "the folder that holds train/ and val/ (or one release folder, e.g. imagenette2-320/)",
}


def spec(name: str) -> BenchmarkSpec:
    """The :class:`BenchmarkSpec` of ``name``, or a ``ValueError`` listing the names.

    Example::

        spec("split-cifar100").allowed      # (5, 10, 20)
    """
    if name not in SPECS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    return SPECS[name]


def default_tasks(name: str) -> int:
    """The default number of tasks of a benchmark (5 for split and sequential ones, 10 for
    permuted ones and Split CIFAR-100, 20 for the CIFAR-100 superclasses).

    Example::

        default_tasks("permuted-mnist")   # 10
    """
    return spec(name).default_tasks


def load_benchmark(name: str, *, tasks: int | None = None, seed: int = 0, data_dir: str | Path | None = None,
                   download: bool = False, augment: bool = True, image_size: int | None = None) -> Benchmark:
    """Build a benchmark by name (see :data:`BENCHMARKS`).

    Args:
        name: ``"split-digits"``, ``"permuted-digits"``, ``"sequential-digits"`` or the same
            with ``mnist``; ``"split-fashion-mnist"``, ``"permuted-fashion-mnist"``;
            ``"split-cifar10"``, ``"split-cifar100"``, ``"cifar100-superclasses"``;
            ``"split-imagenette"``. Sequential benchmarks are split ones read row by row.
        tasks: number of tasks (default: :func:`default_tasks`). Split CIFAR-100 takes 5, 10 or
            20 (the classes are divided among them); the other split benchmarks keep their first
            ``tasks`` tasks.
        seed: seed of the permutations (the train/test split does not depend on it).
        data_dir: the data's folder (see the errors for what each expects); required for all but
            the digits.
        download: download the data into ``data_dir`` with torchvision first.
        augment: the standard augmentation of the training split (CIFAR: random 32x32 crops of
            the image padded by 4, horizontal flips; Imagenette: random resized crops, flips);
            every split of CIFAR and Imagenette is normalised by the dataset's mean and std.
        image_size: Imagenette's input size (default 224).

    Raises:
        ValueError: an unknown name, a bad number of tasks, a truncated or foreign file.
        FileNotFoundError: the data is missing (the message names the path and the layout).
        ImportError: scikit-learn (digits) or torchvision (Imagenette, downloads) is not installed.

    Example::

        bench = load_benchmark("permuted-mnist", tasks=10, data_dir="data/mnist")
        bench = load_benchmark("cifar100-superclasses", data_dir="data")   # 20 tasks of 5 classes
    """
    info = spec(name)
    tasks = info.default_tasks if tasks is None else tasks
    info.check_tasks(tasks)
    if image_size is not None and info.data != "imagenette":
        raise ValueError(f"image_size is for split-imagenette; {name} has images of a fixed size")
    if info.data == "digits":
        return _from_images(info, load_digits(), tasks, seed)
    if data_dir is None:
        raise FileNotFoundError(f"{name} needs {_TITLES[info.data]}: give {_FOLDERS[info.data]}")
    data_dir = Path(data_dir)
    if info.data == "mnist":
        return _from_images(info, mnist.load_mnist(mnist.download_mnist(data_dir) if download else data_dir),
                            tasks, seed)
    if info.data == "fashion-mnist":
        root = mnist.download_mnist(data_dir, "FashionMNIST") if download else data_dir
        return _fashion(info, mnist.load_fashion_mnist(root), tasks, seed)
    if info.data in ("cifar10", "cifar100"):
        root = cifar.download_cifar(data_dir, info.data) if download else data_dir
        return _cifar(info, cifar.load_cifar(root, info.data), tasks, augment)
    size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    root = imagenette.download_imagenette(data_dir, imagenette.release_for(size)) if download else data_dir
    return _imagenette(info, imagenette.load_imagenette(root), tasks, augment, size)


def _from_images(info: BenchmarkSpec, data: ImageSet, tasks: int, seed: int) -> Benchmark:
    if info.kind == "permuted":
        return permuted_tasks(data, tasks, seed=seed, name=info.name)
    return split_tasks(row_sequences(data) if info.kind == "sequential" else data, tasks, name=info.name)


def _fashion(info: BenchmarkSpec, data, tasks: int, seed: int) -> Benchmark:
    preprocessing = {"train": "scaled to [0, 1]", "test": "scaled to [0, 1]"}
    if info.kind == "permuted":
        preprocessing = {s: f"pixels permuted (task 0: the identity), {p}" for s, p in preprocessing.items()}
        return permuted_tasks(data, tasks, seed=seed, name=info.name, preprocessing=preprocessing)
    transform = ImageTransform()
    return split_tasks(data, tasks, name=info.name, train_transform=transform, test_transform=transform,
                       preprocessing=preprocessing)


def _cifar(info: BenchmarkSpec, data, tasks: int, augment: bool) -> Benchmark:
    stats = CIFAR10_STATS if info.data == "cifar10" else CIFAR100_STATS
    test = ImageTransform(stats)
    train = ImageTransform(stats, crop_padding=CIFAR_PADDING, flip=True) if augment else test
    normalise = f"scaled to [0, 1], normalised by mean {stats[0]} and std {stats[1]}"
    preprocessing = {"train": (f"random 32x32 crop of the image padded by {CIFAR_PADDING}, random horizontal flip, "
                               if augment else "no augmentation, ") + normalise, "test": normalise}
    options = {"name": info.name, "input_shape": (3, 32, 32), "train_transform": train, "test_transform": test,
               "preprocessing": preprocessing}
    if info.kind == "superclasses":
        groups = [sorted(set(data.y_train[data.coarse_train == k].tolist())) for k in range(len(data.coarse_names))]
        return grouped_tasks(data, groups[:tasks], **options)
    per_task = len(data.class_names) // tasks if info.data == "cifar100" else 2
    return split_tasks(data, tasks, classes_per_task=per_task, **options)


def _imagenette(info: BenchmarkSpec, tree, tasks: int, augment: bool, size: int) -> Benchmark:
    train = imagenette_transform(size, train=True, augment=augment)
    test = imagenette_transform(size, train=False)
    normalise = f"normalised by ImageNet's mean {IMAGENET_STATS[0]} and std {IMAGENET_STATS[1]}"
    preprocessing = {
        "train": (f"random resized crop to {size}x{size}, random horizontal flip, " if augment
                  else f"resize to {round(size / 0.875)}, centre crop to {size}x{size}, ") + normalise,
        "test": f"resize to {round(size / 0.875)}, centre crop to {size}x{size}, {normalise}"}
    if len(tree.classes) < 2 * tasks:
        raise ValueError(f"{info.name}: {tree.root} has {len(tree.classes)} classes, too few for {tasks} tasks of 2")
    return split_tasks(tree, tasks, name=info.name, input_shape=(3, size, size), train_transform=train,
                       test_transform=test, preprocessing=preprocessing)
