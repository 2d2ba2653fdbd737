"""Offline data loaders: IDX files (gzip or raw), MNIST folders in both layouts, digits, and
the split and permuted task builders. Nothing is downloaded: the tests write tiny IDX files,
and read the real MNIST test set under /work/shared/data/mnist when it is there."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from eidetic import datasets
from eidetic.datasets import (
    find_mnist,
    load_benchmark,
    load_digits,
    load_mnist,
    permuted_tasks,
    read_idx,
    split_tasks,
    write_idx,
)

SHARED_MNIST = Path("/work/shared/data/mnist")
NAMES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte")


def write_mnist(folder: Path, *, test: int = 60, train: int = 0, gz: bool = True, seed: int = 0) -> None:
    """Tiny MNIST-like IDX files: 28x28 uint8 images, labels cycling through 0..9."""
    gen = torch.Generator().manual_seed(seed)
    suffix = ".gz" if gz else ""
    parts = [("t10k", test)] + ([("train", train)] if train else [])
    for prefix, n in parts:
        images = torch.randint(0, 256, (n, 28, 28), generator=gen, dtype=torch.uint8)
        labels = (torch.arange(n) % 10).to(torch.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)


# ------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["data.idx", "data.idx.gz"])
def test_idx_round_trip(tmp_path, dtype, name):
    tensor = (torch.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).to(dtype)
    if dtype == torch.uint8:
        tensor = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / name, tensor)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = read_idx(path)
    assert back.dtype == dtype and torch.equal(back, tensor)


def test_idx_reads_the_big_endian_header(tmp_path):
    # the MNIST label header by hand: magic 0x00000801, 3 items
    path = tmp_path / "labels"
    path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1]))
    assert read_idx(path).tolist() == [7, 2, 1]
    gz = tmp_path / "labels.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert read_idx(gz).tolist() == [7, 2, 1]


@pytest.mark.parametrize(("content", "message"), [
    (b"", "not an IDX file"),
    (b"PK\x03\x04 not idx", "not an IDX file"),
    (bytes([0, 0, 8, 3, 0, 0]), "truncated"),
    (bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]), "needs 5"),
    (b"\x1f\x8b not really gzip", "cannot read"),
])
def test_idx_bad_files_give_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such IDX file"):
        read_idx(tmp_path / "absent.gz")


# ----------------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_find_mnist_in_a_flat_folder(tmp_path, gz):
    write_mnist(tmp_path, gz=gz)
    files = find_mnist(tmp_path)
    assert set(files) == {"test_images", "test_labels"}
    assert files["test_images"].parent == tmp_path
    assert files["test_images"].name.endswith(".gz") == gz


@pytest.mark.parametrize("gz", [True, False])
def test_find_mnist_in_the_torchvision_layout(tmp_path, gz):
    write_mnist(tmp_path / "MNIST" / "raw", train=30, gz=gz)
    files = find_mnist(tmp_path)
    assert set(files) == {"test_images", "test_labels", "train_images", "train_labels"}
    assert all(p.parent == tmp_path / "MNIST" / "raw" for p in files.values())


def test_find_mnist_missing_files_give_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_mnist(tmp_path / "nowhere")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(FileNotFoundError, match="is a file, not a data folder"):
        find_mnist(tmp_path / "a-file")
    with pytest.raises(FileNotFoundError, match=r"no MNIST files found.*t10k-images-idx3-ubyte\[\.gz\]") as info:
        find_mnist(tmp_path)
    assert str(tmp_path / "MNIST" / "raw") in str(info.value)
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="missing t10k-labels-idx1-ubyte"):
        find_mnist(tmp_path)


def test_find_mnist_half_of_the_training_files_is_an_error(tmp_path):
    write_mnist(tmp_path, train=20)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="missing train-labels-idx1-ubyte"):
        find_mnist(tmp_path)


def test_labels_outside_the_ten_classes_are_refused_naming_the_file(tmp_path):
    write_mnist(tmp_path)
    labels = (torch.arange(60) % 10).to(torch.uint8)
    labels[7] = 12
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz holds labels \[12\] outside 0..9"):
        load_mnist(tmp_path, holdout=20)


def test_load_mnist_test_set_only_holds_out_a_fixed_split(tmp_path):
    write_mnist(tmp_path, test=60)
    data = load_mnist(tmp_path, holdout=20)
    assert data.x_train.shape == (40, 1, 28, 28) and data.x_test.shape == (20, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and data.x_train.min() >= 0 and data.x_train.max() <= 1
    assert data.y_train.dtype == torch.long
    everything = read_idx(tmp_path / "t10k-images-idx3-ubyte.gz").float() / 255
    rows = {tuple(x.flatten().tolist()) for x in everything}
    train = {tuple(x.flatten().tolist()) for x in data.x_train}
    test = {tuple(x.flatten().tolist()) for x in data.x_test}
    assert train | test == rows and not train & test
    again = load_mnist(tmp_path, holdout=20)
    assert torch.equal(again.x_test, data.x_test) and torch.equal(again.y_train, data.y_train)
    assert "held out" in data.source
    with pytest.raises(ValueError, match="cannot hold out 2000 of 60"):
        load_mnist(tmp_path)


def test_load_mnist_uses_the_training_files_when_present(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", test=30, train=50, gz=False)
    data = load_mnist(tmp_path)
    assert len(data.x_train) == 50 and len(data.x_test) == 30
    assert torch.equal(data.y_test, torch.arange(30) % 10)


def test_load_mnist_mismatched_counts(tmp_path):
    write_mnist(tmp_path, test=30)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", torch.zeros(29, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"30 images but .* 29 labels"):
        load_mnist(tmp_path, holdout=5)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="the offline MNIST test set is not on this machine")
def test_the_real_mnist_test_set():
    data = load_mnist(SHARED_MNIST)
    assert data.x_train.shape == (8000, 1, 28, 28) and data.x_test.shape == (2000, 1, 28, 28)
    assert set(data.y_train.tolist()) == set(range(10)) == set(data.y_test.tolist())
    assert data.x_train.max() == 1.0 and data.x_train.min() == 0.0
    assert torch.equal(load_mnist(SHARED_MNIST).y_test, data.y_test)  # fixed held-out split


def test_download_mnist_goes_through_torchvision_without_a_network(tmp_path, monkeypatch):
    torchvision_utils = pytest.importorskip("torchvision.datasets.utils")
    import torchvision.datasets.mnist as tv_mnist

    def no_network(*args, **kwargs):
        raise AssertionError("the test tried to download")

    monkeypatch.setattr(torchvision_utils, "download_and_extract_archive", no_network)
    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", no_network)
    write_mnist(tmp_path / "MNIST" / "raw", test=30, train=40, gz=False)  # what torchvision leaves behind
    assert datasets.download_mnist(tmp_path) == tmp_path
    data = load_mnist(tmp_path)
    assert len(data.x_train) == 40 and len(data.x_test) == 30


def test_download_mnist_needs_torchvision(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torchvision.datasets", None)
    with pytest.raises(ImportError, match="needs torchvision"):
        datasets.download_mnist(tmp_path)


# ---------------------------------------------------------------------------------- digits


def test_load_digits_fixed_split():
    pytest.importorskip("sklearn")
    data = load_digits()
    assert data.x_train.shape == (1347, 1, 8, 8) and data.x_test.shape == (450, 1, 8, 8)
    assert data.x_train.min() >= 0 and data.x_train.max() <= 1
    assert torch.equal(load_digits().y_test, data.y_test)


# ----------------------------------------------------------------------------------- tasks


def tiny_images(n: int = 100) -> datasets.ImageSet:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 4, 4, generator=gen)
    y = torch.arange(n) % 10
    return datasets.ImageSet(x, y, x[:50] + 1, y[:50], "tiny")


def test_split_tasks_relabel_consecutive_classes():
    bench = split_tasks(tiny_images(), tasks=3)
    assert len(bench) == 3 and bench.classes == [[0, 1], [2, 3], [4, 5]] and bench.num_classes == [2, 2, 2]
    for k, (train, test) in enumerate(zip(bench.train, bench.test)):
        x, y = train.tensors
        assert set(y.tolist()) == {0, 1} and len(x) == 20
        source = tiny_images()
        originals = source.y_train[torch.isin(source.y_train, torch.tensor(bench.classes[k]))]
        assert torch.equal(y, originals - 2 * k)
        assert set(test.tensors[1].tolist()) == {0, 1}
    with pytest.raises(ValueError, match="5 tasks of 2 classes; asked for 6"):
        split_tasks(tiny_images(), tasks=6)


def test_permuted_tasks_task_zero_is_the_identity():
    data = tiny_images()
    bench = permuted_tasks(data, tasks=3, seed=1)
    assert bench.num_classes == [10, 10, 10] and bench.input_shape == (1, 4, 4)
    assert torch.equal(bench.train[0].tensors[0], data.x_train)
    for k in (1, 2):
        order = bench.permutations[k]
        assert sorted(order.tolist()) == list(range(16)) and not torch.equal(order, torch.arange(16))
        assert torch.equal(bench.train[k].tensors[0].flatten(1), data.x_train.flatten(1)[:, order])
        assert torch.equal(bench.test[k].tensors[0].flatten(1), data.x_test.flatten(1)[:, order])
        assert torch.equal(bench.train[k].tensors[1], data.y_train)
    same = permuted_tasks(data, tasks=3, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(same.permutations, bench.permutations))
    other = permuted_tasks(data, tasks=3, seed=2)
    assert not torch.equal(other.permutations[1], bench.permutations[1])


def test_as_tasks_builds_loaders_and_avoids_a_batch_of_one():
    bench = split_tasks(tiny_images(), tasks=1)  # 20 training samples
    (task,) = bench.as_tasks(batch_size=19, seed=0)
    assert task.num_classes == 2
    assert [len(x) for x, _ in task.train] == [19]  # the last batch of one is dropped
    (task,) = bench.as_tasks(batch_size=8, seed=0)
    assert [len(x) for x, _ in task.train] == [8, 8, 4]
    first = [y.tolist() for _, y in bench.as_tasks(batch_size=8, seed=3)[0].train]
    assert first == [y.tolist() for _, y in bench.as_tasks(batch_size=8, seed=3)[0].train]
    assert bench.describe()["tasks"] == [{"classes": [0, 1], "num_classes": 2, "train_samples": 20,
                                          "test_samples": 10}]


def test_row_sequences_read_each_image_row_by_row():
    data = tiny_images()
    data.x_train = torch.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)  # two images of 3 channels, 4x5
    rows = datasets.row_sequences(data)
    assert rows.x_train.shape == (2, 4, 15)
    assert torch.equal(rows.x_train[1, 2], torch.cat([data.x_train[1, c, 2] for c in range(3)]))
    assert rows.y_train is data.y_train and rows.source.endswith("row by row")


def test_load_benchmark_by_name(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'split-cifar'"):
        load_benchmark("split-cifar")
    with pytest.raises(FileNotFoundError, match="needs MNIST"):
        load_benchmark("split-mnist")
    with pytest.raises(FileNotFoundError, match="no MNIST files found"):
        load_benchmark("permuted-mnist", data_dir=tmp_path)
    write_mnist(tmp_path, test=40, train=60)
    bench = load_benchmark("permuted-mnist", tasks=2, data_dir=tmp_path)
    assert len(bench) == 2 and bench.input_shape == (1, 28, 28) and len(bench.train[1]) == 60
    assert datasets.default_tasks("split-mnist") == 5 and datasets.default_tasks("permuted-digits") == 10
    sequential = load_benchmark("sequential-mnist", tasks=2, data_dir=tmp_path)
    assert sequential.input_shape == (28, 28) and sequential.classes == [[0, 1], [2, 3]]
    assert datasets.default_tasks("sequential-digits") == 5


# --------------------------------------------------------------------------- Fashion-MNIST

SHARED_FASHION = Path("/work/shared/data/fashion-mnist")


def write_labelled_fashion(folder: Path, train: int = 40, test: int = 20) -> None:
    """Fashion-MNIST-like IDX files, each image's pixel (0, 0) its label times 20, the rest random."""
    gen = torch.Generator().manual_seed(0)
    for prefix, n in (("train", train), ("t10k", test)):
        labels = (torch.arange(n) * 3 % 10).to(torch.uint8)
        images = torch.randint(0, 256, (n, 28, 28), generator=gen, dtype=torch.uint8)
        images[:, 0, 0] = labels * 20
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


def test_split_fashion_mnist_groups_pairs_of_classes_and_stays_uint8(tmp_path):
    write_labelled_fashion(tmp_path / "FashionMNIST" / "raw")  # torchvision's layout
    bench = load_benchmark("split-fashion-mnist", data_dir=tmp_path)
    assert bench.classes == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]] and bench.input_shape == (1, 28, 28)
    assert bench.train[0].images.dtype == torch.uint8 and "Fashion-MNIST" in bench.source
    for k, test in enumerate(bench.test):
        for i in range(len(test)):
            x, y = test[i]
            assert x.dtype == torch.float32 and x.shape == (1, 28, 28) and x.min() >= 0 and x.max() <= 1
            assert type(y) is int and round(float(x[0, 0, 0]) * 255) == 20 * bench.classes[k][y]
    assert sum(len(t) for t in bench.train) == 40


def test_permuted_fashion_mnist_permutes_every_task_but_the_first(tmp_path):
    write_labelled_fashion(tmp_path)
    bench = load_benchmark("permuted-fashion-mnist", tasks=3, data_dir=tmp_path, seed=1)
    data = datasets.load_fashion_mnist(tmp_path)
    assert len(bench) == 3 and bench.num_classes == [10] * 3
    for k in range(3):
        x, y = bench.train[k][5]
        original = data.x_train[5].float() / 255
        assert torch.equal(x.flatten(), original.flatten()[bench.permutations[k]]) and y == int(data.y_train[5])
    assert torch.equal(bench.permutations[0], torch.arange(784))
    assert len({t.images.data_ptr() for t in bench.train}) == 1  # one uint8 copy, permuted batch by batch


def test_fashion_mnist_errors_name_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="needs Fashion-MNIST"):
        load_benchmark("split-fashion-mnist")
    with pytest.raises(FileNotFoundError, match=r"no Fashion-MNIST files found.*FashionMNIST/raw.*--download"):
        load_benchmark("split-fashion-mnist", data_dir=tmp_path)


@pytest.mark.skipif(not SHARED_FASHION.is_dir(), reason="the offline Fashion-MNIST is not on this machine")
def test_the_real_fashion_mnist():
    bench = load_benchmark("split-fashion-mnist", data_dir=SHARED_FASHION)
    assert sum(len(t) for t in bench.train) == 60000 and sum(len(t) for t in bench.test) == 10000
    assert bench.train[0].images.dtype == torch.uint8 and bench.train[0].images.shape == (60000, 1, 28, 28)
