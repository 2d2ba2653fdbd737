"""CIFAR-10 and CIFAR-100 from synthetic files in the exact python-pickle format: the reader
agrees with torchvision's, the grouping of classes into tasks (superclasses included) is checked
with images that encode their own labels, the images stay uint8 and shared, the training split
is augmented and the test split is not, and bad folders and files give clear errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from eidetic import datasets
from eidetic.datasets import CIFAR10_STATS, CIFAR100_STATS, load_benchmark, load_cifar, synthetic
from eidetic.datasets.transforms import random_crop, random_flip

FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def _dump(path: Path, content: dict) -> None:
    path.write_bytes(pickle.dumps(content, protocol=2))


def write_labelled_cifar(root: Path, name: str, per_class: int = 2, test_per_class: int = 1) -> dict:
    """CIFAR files written by hand, keys as the Python 2 release's (bytes): every image's red
    channel is its (fine) label, its green channel its coarse label (CIFAR-10: the label), its
    blue channel its index in the split modulo 256. CIFAR-100's fine label f has coarse label
    (7 * f) % 20, five classes per superclass."""
    folder = root / FOLDERS[name]
    folder.mkdir(parents=True)
    classes = 10 if name == "cifar10" else 100
    coarse_of = np.arange(classes) if name == "cifar10" else (7 * np.arange(classes)) % 20
    out = {}
    for split, n in (("train", per_class), ("test", test_per_class)):
        labels = np.tile(np.arange(classes), n)[::-1].copy()  # not sorted by label
        images = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
        images[:, 0] = labels[:, None, None]
        images[:, 1] = coarse_of[labels][:, None, None]
        images[:, 2] = (np.arange(len(labels)) % 256)[:, None, None]
        out[split] = (labels, images)
        if name == "cifar10":
            files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
            for file, chunk in zip(files, np.array_split(np.arange(len(labels)), len(files))):
                _dump(folder / file, {b"batch_label": b"x", b"labels": labels[chunk].tolist(),
                                      b"data": images[chunk].reshape(len(chunk), -1), b"filenames": []})
        else:
            _dump(folder / split, {b"fine_labels": labels.tolist(), b"coarse_labels": coarse_of[labels].tolist(),
                                   b"data": images.reshape(len(labels), -1), b"batch_label": b"x"})
    if name == "cifar10":
        _dump(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    else:
        _dump(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                                b"coarse_label_names": [f"s{i}".encode() for i in range(20)]})
    return out


def pixels(x: torch.Tensor, stats) -> torch.Tensor:
    """A normalised float image back to its uint8 values."""
    mean, std = (torch.tensor(s).view(-1, 1, 1) for s in stats)
    return torch.round((x * std + mean) * 255).long()


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_load_cifar_reads_the_hand_written_release(tmp_path, name):
    written = write_labelled_cifar(tmp_path, name)
    data = load_cifar(tmp_path, name)
    labels, images = written["train"]
    assert data.x_train.dtype == torch.uint8 and data.x_train.shape == (len(labels), 3, 32, 32)
    assert torch.equal(data.y_train, torch.as_tensor(labels)) and torch.equal(data.x_train, torch.as_tensor(images))
    assert torch.equal(data.y_test, torch.as_tensor(written["test"][0]))
    assert len(data.class_names) == (10 if name == "cifar10" else 100) and data.class_names[1].endswith("1")
    if name == "cifar100":
        assert torch.equal(data.coarse_train, (7 * data.y_train) % 20) and len(data.coarse_names) == 20
    same = load_cifar(tmp_path / FOLDERS[name], name)  # the release's folder itself
    assert torch.equal(same.x_test, data.x_test)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_torchvision_reads_the_synthetic_release_as_we_do(tmp_path, name, monkeypatch):
    tv = pytest.importorskip("torchvision.datasets")
    synthetic.write_cifar(tmp_path, name, train_per_class=2, test_per_class=1)
    cls = tv.CIFAR10 if name == "cifar10" else tv.CIFAR100
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args: True)  # synthetic files have other checksums
    ours = load_cifar(tmp_path, name)
    for train, x, y in ((True, ours.x_train, ours.y_train), (False, ours.x_test, ours.y_test)):
        theirs = cls(str(tmp_path), train=train, download=False)
        assert np.array_equal(theirs.data, x.permute(0, 2, 3, 1).numpy()) and theirs.targets == y.tolist()
    assert theirs.classes == ours.class_names


def test_superclass_tasks_hold_the_five_classes_of_each_coarse_label(tmp_path):
    write_labelled_cifar(tmp_path, "cifar100")
    bench = load_benchmark("cifar100-superclasses", data_dir=tmp_path, augment=False)
    assert len(bench) == 20 and bench.num_classes == [5] * 20 and bench.input_shape == (3, 32, 32)
    for k in range(20):
        assert bench.classes[k] == sorted(f for f in range(100) if (7 * f) % 20 == k)
        for split in (bench.train[k], bench.test[k]):
            for i in range(len(split)):
                x, y = split[i]
                assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and type(y) is int
                values = pixels(x, CIFAR100_STATS)
                fine, coarse = int(values[0, 0, 0]), int(values[1, 0, 0])
                assert coarse == k and bench.classes[k][y] == fine
        assert len(bench.train[k]) == 5 * 2 and len(bench.test[k]) == 5
    assert bench.describe()["tasks"][3]["classes"] == bench.classes[3]


@pytest.mark.parametrize(("tasks", "per_task"), [(5, 20), (10, 10), (20, 5)])
def test_split_cifar100_takes_classes_in_label_order(tmp_path, tasks, per_task):
    write_labelled_cifar(tmp_path, "cifar100", per_class=1)
    bench = load_benchmark("split-cifar100", tasks=tasks, data_dir=tmp_path, augment=False)
    assert len(bench) == tasks and bench.classes == [list(range(k * per_task, (k + 1) * per_task))
                                                     for k in range(tasks)]
    x, y = bench.train[1][0]
    assert int(pixels(x, CIFAR100_STATS)[0, 0, 0]) == bench.classes[1][y]
    assert datasets.default_tasks("split-cifar100") == 10


def test_split_cifar10_and_its_augmentation(tmp_path):
    write_labelled_cifar(tmp_path, "cifar10", per_class=8)
    bench = load_benchmark("split-cifar10", data_dir=tmp_path)
    assert bench.classes == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    shared = {t.images.data_ptr() for t in bench.train}
    assert len(shared) == 1 and bench.train[0].images.dtype == torch.uint8  # one uint8 copy for every task
    test = bench.test[2]
    assert all(torch.equal(test[i][0], test[i][0]) for i in range(len(test)))  # no augmentation
    torch.manual_seed(0)
    train = bench.train[2]
    first = torch.stack([train[i][0] for i in range(len(train))])
    again = torch.stack([train[i][0] for i in range(len(train))])
    assert not torch.equal(first, again)  # random crops and flips
    x, y = train[0]
    assert x.shape == (3, 32, 32) and bench.classes[2][y] == int(pixels(x, CIFAR10_STATS)[0].max())
    assert "random 32x32 crop" in bench.preprocessing["train"] and "crop" not in bench.preprocessing["test"]
    plain = load_benchmark("split-cifar10", data_dir=tmp_path, augment=False).train[2]
    assert torch.equal(plain[0][0], plain[0][0]) and "no augmentation" in load_benchmark(
        "split-cifar10", data_dir=tmp_path, augment=False).preprocessing["train"]


def test_random_crop_is_a_window_of_the_padded_image_and_flip_mirrors():
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).reshape(2, 3, 6, 6)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    out = random_crop(x, 2)
    for b in range(2):
        assert any(torch.equal(out[b], padded[b, :, i:i + 6, j:j + 6]) for i in range(5) for j in range(5))
    flipped = random_flip(x)
    assert all(torch.equal(flipped[b], x[b]) or torch.equal(flipped[b], x[b].flip(-1)) for b in range(2))


def test_loaders_with_workers_and_channels_last(tmp_path):
    write_labelled_cifar(tmp_path, "cifar10", per_class=4)
    bench = load_benchmark("split-cifar10", tasks=2, data_dir=tmp_path)
    plain = bench.as_tasks(4, seed=0)
    fast = bench.as_tasks(4, seed=0, workers=2, channels_last=True)
    x, y = next(iter(fast[1].test))
    assert x.is_contiguous(memory_format=torch.channels_last) and y.dtype == torch.long
    expected = torch.cat([x for x, _ in plain[1].test])
    assert torch.equal(torch.cat([x for x, _ in fast[1].test]), expected)
    assert sum(len(y) for _, y in fast[0].train) == len(bench.train[0])


# ------------------------------------------------------------------------------------- errors


def test_a_missing_folder_names_the_path_the_layout_and_download(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_benchmark("split-cifar10", data_dir=tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "cifar-10-batches-py" in message and "--download" in message
    with pytest.raises(FileNotFoundError, match=r"no CIFAR-100 found .*cifar-100-python/\{train, test, meta\}"):
        load_cifar(tmp_path, "cifar100")
    with pytest.raises(FileNotFoundError, match="needs CIFAR-100"):
        load_benchmark("cifar100-superclasses")


def test_an_incomplete_release_names_the_missing_files(tmp_path):
    write_labelled_cifar(tmp_path, "cifar10")
    (tmp_path / FOLDERS["cifar10"] / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="missing data_batch_3"):
        load_cifar(tmp_path, "cifar10")


def _release_with(tmp_path: Path, name: str, file: str, content: bytes) -> Path:
    synthetic.write_cifar(tmp_path, name, train_per_class=1, test_per_class=1)
    path = tmp_path / FOLDERS[name] / file
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(("make", "message"), [
    (lambda good: good[: len(good) // 2], "cannot be read as a CIFAR-10 file"),          # truncated
    (lambda good: b"", "cannot be read"),                                                  # empty
    (lambda good: b"PK\x03\x04 a zip archive", "cannot be read"),                          # foreign
    (lambda good: pickle.dumps([1, 2, 3]), "holds a list, not a dict"),
    (lambda good: pickle.dumps({"labels": [0]}), "'data' should be a uint8 array"),
    (lambda good: pickle.dumps({"data": np.zeros((1, 3072), np.float32), "labels": [0]}), "float32 array"),
    (lambda good: pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}), "should list 2 labels"),
    (lambda good: pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [10]}), r"in \[0, 10\)"),
])
def test_a_bad_batch_file_is_a_clear_error_naming_it(tmp_path, make, message):
    good = (Path(synthetic.write_cifar(tmp_path / "good", train_per_class=1)) / FOLDERS["cifar10"] /
            "data_batch_2").read_bytes()
    path = _release_with(tmp_path, "cifar10", "data_batch_2", make(good))
    with pytest.raises(ValueError, match=message) as info:
        load_cifar(tmp_path, "cifar10")
    assert str(path) in str(info.value)


def test_a_pickle_that_would_run_code_is_refused_not_run(tmp_path):
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "ran",))

    path = _release_with(tmp_path, "cifar10", "test_batch", pickle.dumps({"data": Payload()}))
    with pytest.raises(ValueError, match=r"asks for pathlib.*which a CIFAR file never does") as info:
        load_cifar(tmp_path, "cifar10")
    assert str(path) in str(info.value) and not (tmp_path / "ran").exists()


def test_a_bad_meta_file_and_an_inconsistent_hierarchy(tmp_path):
    path = _release_with(tmp_path, "cifar100", "meta", pickle.dumps({"fine_label_names": ["a"]}))
    with pytest.raises(ValueError, match="should list 100 class names") as info:
        load_cifar(tmp_path, "cifar100")
    assert str(path) in str(info.value)
    root = tmp_path / "hierarchy"
    write_labelled_cifar(root, "cifar100")
    test = root / FOLDERS["cifar100"] / "test"
    content = pickle.loads(test.read_bytes(), encoding="latin1")
    content[b"coarse_labels"] = [(c + 1) % 20 for c in content[b"coarse_labels"]]
    test.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(ValueError, match=r"fine label .* has several coarse labels"):
        load_cifar(root, "cifar100")


@pytest.mark.parametrize(("name", "tasks", "message"), [
    ("split-cifar100", 7, "takes 5, 10 or 20 tasks"), ("split-cifar10", 6, r"has 5 tasks \(fewer .*\), got 6"),
    ("cifar100-superclasses", 21, "has 20 tasks")])
def test_a_wrong_number_of_tasks_is_refused(tmp_path, name, tasks, message):
    with pytest.raises(ValueError, match=message):
        load_benchmark(name, tasks=tasks, data_dir=tmp_path)


def test_download_goes_through_torchvision_without_a_network(tmp_path, monkeypatch):
    tv = pytest.importorskip("torchvision.datasets")
    calls = []
    monkeypatch.setattr(tv.CIFAR100, "__init__", lambda self, root, train, download: calls.append((root, train,
                                                                                                   download)))
    assert datasets.download_cifar(tmp_path / "cifar-100-python", "cifar100") == tmp_path
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
