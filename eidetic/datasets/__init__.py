"""Offline data for the command line and the benchmarks: the seed papers' benchmarks read from
their published formats, and the split and permuted task sequences built on them.

Nothing here downloads anything unless asked (``download=True``), and the library itself never
imports this package: it is for ``eidetic run``, ``eidetic reproduce`` and ``benchmarks/``.

* :mod:`~eidetic.datasets.idx` reads and writes IDX files; :mod:`~eidetic.datasets.mnist`
  reads MNIST and Fashion-MNIST from them; :mod:`~eidetic.datasets.digits` scikit-learn's
  bundled digits.
* :mod:`~eidetic.datasets.cifar` reads CIFAR-10 and CIFAR-100 (the python-pickle release,
  torchvision's layout) and checks their structure; :mod:`~eidetic.datasets.imagenette` lists
  Imagenette's ImageFolder tree.
* :mod:`~eidetic.datasets.images` holds the images (float or uint8 tensors, or files decoded on
  the fly) and :mod:`~eidetic.datasets.transforms` what is done to them (augmentation,
  normalisation, permutation).
* :mod:`~eidetic.datasets.tasks` groups them into tasks (:class:`Benchmark`), and
  :mod:`~eidetic.datasets.registry` names the benchmarks (:func:`load_benchmark`).
* :mod:`~eidetic.datasets.synthetic` writes tiny data sets in the same formats.

Example::

    from eidetic.datasets import load_benchmark

    bench = load_benchmark("split-mnist", data_dir="data/mnist", tasks=5)
    tasks = bench.as_tasks(batch_size=128, seed=0)      # a list of eidetic.Task
    results = eidetic.run_tasks(net, tasks, optimizer=..., epochs=3)
"""

from . import synthetic
from .cifar import download_cifar, find_cifar, load_cifar, read_cifar_file
from .digits import load_digits
from .idx import read_idx, write_idx
from .imagenette import ImageTree, download_imagenette, find_imagenette, load_imagenette
from .images import ByteImages, ImageFiles, ImageSet, TensorImages
from .mnist import (
    MNIST_TEST_HOLDOUT,
    SPLIT_SEED,
    download_mnist,
    find_mnist,
    load_fashion_mnist,
    load_mnist,
)
from .registry import BENCHMARKS, SPECS, BenchmarkSpec, default_tasks, load_benchmark, spec
from .tasks import Benchmark, grouped_tasks, permuted_tasks, row_sequences, split_tasks
from .transforms import CIFAR10_STATS, CIFAR100_STATS, IMAGENET_STATS, ImageTransform, imagenette_transform

__all__ = [
    "BENCHMARKS",
    "CIFAR10_STATS",
    "CIFAR100_STATS",
    "IMAGENET_STATS",
    "MNIST_TEST_HOLDOUT",
    "SPECS",
    "SPLIT_SEED",
    "Benchmark",
    "BenchmarkSpec",
    "ByteImages",
    "ImageFiles",
    "ImageSet",
    "ImageTransform",
    "ImageTree",
    "TensorImages",
    "default_tasks",
    "download_cifar",
    "download_imagenette",
    "download_mnist",
    "find_cifar",
    "find_imagenette",
    "find_mnist",
    "grouped_tasks",
    "imagenette_transform",
    "load_benchmark",
    "load_cifar",
    "load_digits",
    "load_fashion_mnist",
    "load_imagenette",
    "load_mnist",
    "permuted_tasks",
    "read_cifar_file",
    "read_idx",
    "row_sequences",
    "spec",
    "split_tasks",
    "synthetic",
    "write_idx",
]
