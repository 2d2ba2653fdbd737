"""Task sequences built from labelled images: classes grouped into tasks, or one fixed pixel
permutation per task, and the :class:`Benchmark` that holds them.

Float images (:class:`~eidetic.datasets.images.ImageSet`) give ``TensorDataset`` tasks; uint8
images (:class:`~eidetic.datasets.images.ByteImages`) give
:class:`~eidetic.datasets.images.TensorImages` views that share the uint8 storage; image files
(:class:`~eidetic.datasets.imagenette.ImageTree`) give
:class:`~eidetic.datasets.images.ImageFiles`, decoded on the fly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from ..evaluation.runs import Task
from .imagenette import ImageTree
from .images import ByteImages, ImageFiles, ImageSet, TensorImages
from .transforms import ImageTransform

TEST_BATCH_VALUES = 50_000_000
"""A test batch holds at most this many input values (about 200 MB of float32), and at most 1000 inputs."""


@dataclass
class Benchmark:
    """A task sequence: per task, a training and a test dataset and the number of classes.

    Attributes:
        name: the benchmark's name (one of :data:`~eidetic.datasets.BENCHMARKS` for built-in ones).
        train, test: one Dataset of ``(input, label)`` items per task: a ``TensorDataset`` for
            digits and MNIST, else items of a float32 ``(C, H, W)`` tensor and an int label
            (uint8 storage or image files underneath).
        num_classes: the number of classes of each task.
        classes: per task, the original labels its classes stand for (class ``i`` of task
            ``k`` is original label ``classes[k][i]``).
        input_shape: the shape of one input, e.g. ``(1, 28, 28)``.
        source: where the data came from, in words.
        permutations: per task, the pixel order of a permuted benchmark.
        preprocessing: per split, what is done to an image before the network sees it.

    Example::

        bench = load_benchmark("split-digits")
        print(bench.describe())
        tasks = bench.as_tasks(batch_size=32, seed=0)
    """

    name: str
    train: list[Dataset]
    test: list[Dataset]
    num_classes: list[int]
    classes: list[list[int]]
    input_shape: tuple[int, ...]
    source: str = ""
    permutations: list[torch.Tensor] = field(default_factory=list, repr=False)
    preprocessing: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.train)

    def first(self, tasks: int) -> Benchmark:
        """The benchmark cut to its first ``tasks`` tasks (a quick look at a long sequence).

        Example::

            quick = load_benchmark("cifar100-superclasses", data_dir="data").first(2)
        """
        if not 1 <= tasks <= len(self):
            raise ValueError(f"{self.name} has {len(self)} tasks; cannot keep the first {tasks}")
        return replace(self, train=self.train[:tasks], test=self.test[:tasks], num_classes=self.num_classes[:tasks],
                       classes=self.classes[:tasks], permutations=self.permutations[:tasks])

    def as_tasks(self, batch_size: int, *, seed: int = 0, test_batch_size: int | None = None, workers: int = 0,
                 pin_memory: bool = False, channels_last: bool = False) -> list[Task]:
        """The tasks as :class:`eidetic.Task` objects of DataLoaders.

        Training loaders shuffle with a generator seeded by ``seed`` (reproducible runs; it also
        seeds the workers' augmentation) and drop a last batch of one sample, which BatchNorm
        cannot train on.

        Args:
            batch_size: the training batch size.
            seed: seeds the shuffling and the workers.
            test_batch_size: the test batch size (default: 1000, fewer for large images, at
                least ``batch_size``).
            workers: DataLoader worker processes (0: load in the main process). Images on disk
                are decoded and augmented in them.
            pin_memory: batches in page-locked memory, for fast non-blocking copies to a GPU.
            channels_last: image batches in the channels-last memory format.

        Example::

            tasks = bench.as_tasks(batch_size=64, seed=1)
            eidetic.run_tasks(net, tasks, optimizer=make_optimizer, epochs=3)
            gpu = bench.as_tasks(128, workers=4, pin_memory=True, channels_last=True)
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if workers < 0:
            raise ValueError(f"workers must be at least 0, got {workers}")
        if test_batch_size is None:
            test_batch_size = max(batch_size, min(1000, TEST_BATCH_VALUES // max(1, math.prod(self.input_shape))))
        generator = torch.Generator().manual_seed(seed)
        options = {"num_workers": workers, "pin_memory": pin_memory,
                   "collate_fn": _channels_last_collate if channels_last else None}
        tasks = []
        for train, test, classes in zip(self.train, self.test, self.num_classes):
            loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator,
                                drop_last=len(train) % batch_size == 1, **options)
            tasks.append(Task(loader, DataLoader(test, batch_size=test_batch_size, **options), classes))
        return tasks

    def describe(self) -> dict:
        """A JSON-serialisable description: name, source, input shape, preprocessing, and per
        task its classes and its numbers of training and test samples."""
        return {
            "name": self.name,
            "source": self.source,
            "input_shape": list(self.input_shape),
            "preprocessing": dict(self.preprocessing),
            "tasks": [{"classes": c, "num_classes": n, "train_samples": len(tr), "test_samples": len(te)}
                      for c, n, tr, te in zip(self.classes, self.num_classes, self.train, self.test)],
        }


def _channels_last_collate(batch):
    x, y = default_collate(batch)
    return (x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x), y


Data = ImageSet | ByteImages | ImageTree


def _labels(data: Data) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, ImageTree):
        return torch.tensor(data.train_labels, dtype=torch.long), torch.tensor(data.test_labels, dtype=torch.long)
    return data.y_train, data.y_test


def _members(labels: torch.Tensor, classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the samples whose label is in ``classes``, and their labels as positions in it."""
    wanted = torch.tensor(list(classes), dtype=torch.long)
    keep = torch.isin(labels, wanted).nonzero().flatten()
    relabel = torch.full((int(max(labels.max(), wanted.max())) + 1,), -1, dtype=torch.long)
    relabel[wanted] = torch.arange(len(wanted))
    return keep, relabel[labels[keep]]


Maker = Callable[[torch.Tensor, torch.Tensor, bool], Dataset]


def _maker(data: Data, train_transform: Callable | None, test_transform: Callable | None) -> Maker:
    """``(indices, labels, train) -> Dataset`` of those samples of ``data``'s split."""
    if isinstance(data, ImageSet):
        return lambda idx, y, train: TensorDataset((data.x_train if train else data.x_test)[idx], y)
    if isinstance(data, ByteImages):
        return lambda idx, y, train: TensorImages(data.x_train if train else data.x_test, y, idx,
                                                  train_transform if train else test_transform)
    if train_transform is None or test_transform is None:
        raise ValueError("image files need a train_transform and a test_transform (see imagenette_transform)")
    return lambda idx, y, train: ImageFiles([(data.train_paths if train else data.test_paths)[i] for i in idx.tolist()],
                                            y.tolist(), train_transform if train else test_transform)


def grouped_tasks(data: Data, groups: Sequence[Sequence[int]], *, name: str, input_shape: tuple[int, ...],
                  train_transform: Callable | None = None, test_transform: Callable | None = None,
                  preprocessing: dict[str, str] | None = None) -> Benchmark:
    """One task per group of original labels: task ``k`` holds the samples whose label is in
    ``groups[k]``, relabelled ``0 .. len(groups[k]) - 1`` in that order.

    Example::

        bench = grouped_tasks(load_cifar("data", "cifar10"), [[0, 1], [2, 3]], name="two", input_shape=(3, 32, 32))
    """
    make = _maker(data, train_transform, test_transform)
    train_labels, test_labels = _labels(data)
    bench = Benchmark(name, [], [], [], [], tuple(input_shape), data.source, preprocessing=dict(preprocessing or {}))
    for k, classes in enumerate(groups):
        classes = [int(c) for c in classes]
        train_idx, train_y = _members(train_labels, classes)
        test_idx, test_y = _members(test_labels, classes)
        if not len(train_idx) or not len(test_idx):
            split = "training" if not len(train_idx) else "test"
            raise ValueError(f"{name}: task {k} (labels {classes}) has no {split} sample in {data.source}")
        bench.train.append(make(train_idx, train_y, True))
        bench.test.append(make(test_idx, test_y, False))
        bench.num_classes.append(len(classes))
        bench.classes.append(classes)
    return bench


def split_tasks(data: Data, tasks: int = 5, *, classes_per_task: int = 2, name: str = "split",
                input_shape: tuple[int, ...] | None = None, train_transform: Callable | None = None,
                test_transform: Callable | None = None, preprocessing: dict[str, str] | None = None) -> Benchmark:
    """Split an image set into tasks of consecutive classes, relabelled from 0.

    Task ``k`` holds the original classes ``k * classes_per_task, ...``; with 2 classes per task
    that is 0/1, 2/3, 4/5, 6/7, 8/9. Fewer tasks than the classes allow keep the first ones.

    Example::

        bench = split_tasks(load_digits(), tasks=3)    # 0 vs 1, 2 vs 3, 4 vs 5
    """
    train_labels, _ = _labels(data)
    labels = sorted(set(train_labels.tolist()))
    most = len(labels) // classes_per_task
    if not 1 <= tasks <= most:
        raise ValueError(f"{name} has {most} tasks of {classes_per_task} classes; asked for {tasks}")
    groups = [labels[k * classes_per_task:(k + 1) * classes_per_task] for k in range(tasks)]
    shape = input_shape if input_shape is not None else tuple(data.x_train.shape[1:])
    return grouped_tasks(data, groups, name=name, input_shape=shape, train_transform=train_transform,
                         test_transform=test_transform, preprocessing=preprocessing)


def permuted_tasks(data: ImageSet | ByteImages, tasks: int = 10, *, seed: int = 0, name: str = "permuted",
                   stats=None, preprocessing: dict[str, str] | None = None) -> Benchmark:
    """One task per fixed random permutation of the pixels, all classes in every task.

    Task 0 uses the identity (the original images); task ``k > 0`` a permutation drawn from
    ``seed``. Pixels are permuted within the flattened image and put back in its shape. Float
    images are permuted once per task; uint8 images stay shared and are permuted batch by
    batch (then ``stats`` normalises them, after scaling to [0, 1]).

    Example::

        bench = permuted_tasks(load_digits(), tasks=4, seed=0)
        bench.permutations[1]          # the pixel order of task 1
    """
    if tasks < 1:
        raise ValueError(f"{name} needs at least 1 task, got {tasks}")
    shape = tuple(data.x_train.shape[1:])
    pixels = math.prod(shape)
    generator = torch.Generator().manual_seed(seed)
    classes = sorted(set(data.y_train.tolist()))
    bench = Benchmark(name, [], [], [], [], shape, data.source, preprocessing=dict(preprocessing or {}))
    for k in range(tasks):
        order = torch.arange(pixels) if k == 0 else torch.randperm(pixels, generator=generator)
        bench.permutations.append(order)
        for x, y, out in ((data.x_train, data.y_train, bench.train), (data.x_test, data.y_test, bench.test)):
            if isinstance(data, ByteImages):
                out.append(TensorImages(x, y, transform=ImageTransform(stats, permutation=None if k == 0 else order)))
            else:
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
