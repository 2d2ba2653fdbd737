"""Imagenette from a synthetic JPEG tree in its ImageFolder layout: classes in sorted WordNet-id
order (as torchvision's ImageFolder sorts them), tasks of two classes, lazy decoding, the image
size option, and clear errors for missing or broken trees."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eidetic.datasets import IMAGENET_STATS, find_imagenette, load_benchmark, load_imagenette, synthetic

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("torchvision")

WNIDS = ["n03888605", "n01440764", "n03445777", "n02102040"]  # written out of order


def write_tree(root: Path, wnids=WNIDS, per_class=(3, 2), size=24) -> Path:
    """One solid colour per class: red = 40 * (rank of its wnid in sorted order) + 20."""
    rank = {w: k for k, w in enumerate(sorted(wnids))}
    for split, count in zip(("train", "val"), per_class):
        for wnid in wnids:
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                colour = (40 * rank[wnid] + 20, 30 * i, 200)
                Image.new("RGB", (size + 8 * i, size), colour).save(folder / f"{wnid}_{i}.JPEG", quality=95)
    return root


def red(x: torch.Tensor) -> float:
    mean, std = IMAGENET_STATS
    return float((x[0] * std[0] + mean[0]).mean() * 255)


def test_classes_are_sorted_wordnet_ids_and_tasks_take_two(tmp_path):
    write_tree(tmp_path)
    tree = load_imagenette(tmp_path)
    assert tree.classes == sorted(WNIDS)
    from torchvision.datasets import ImageFolder

    assert ImageFolder(str(tmp_path / "train")).class_to_idx == {w: k for k, w in enumerate(tree.classes)}
    bench = load_benchmark("split-imagenette", tasks=2, data_dir=tmp_path, image_size=32, augment=False)
    assert bench.classes == [[0, 1], [2, 3]] and bench.input_shape == (3, 32, 32)
    for k in range(2):
        assert len(bench.train[k]) == 6 and len(bench.test[k]) == 4
        for i in range(len(bench.test[k])):
            x, y = bench.test[k][i]
            assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and type(y) is int
            assert abs(red(x) - (40 * bench.classes[k][y] + 20)) < 4  # JPEG keeps a solid colour
    with pytest.raises(ValueError, match="has 4 classes, too few for 3 tasks of 2"):
        load_benchmark("split-imagenette", tasks=3, data_dir=tmp_path)


def test_images_are_decoded_lazily_and_augmented_only_for_training(tmp_path, monkeypatch):
    write_tree(tmp_path)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    bench = load_benchmark("split-imagenette", tasks=2, data_dir=tmp_path, image_size=16)
    assert opened == []  # listing the tree decodes nothing
    x, _ = bench.train[0][1]
    assert len(opened) == 1 and x.shape == (3, 16, 16)
    test = bench.test[1]
    assert torch.equal(test[0][0], test[0][0])
    assert "random resized crop to 16x16" in bench.preprocessing["train"]
    assert "centre crop to 16x16" in bench.preprocessing["test"]


def test_a_release_folder_under_the_root_is_found(tmp_path):
    synthetic.write_imagenette(tmp_path / "imagenette2-160", classes=2, train_per_class=1, val_per_class=1, size=20)
    assert find_imagenette(tmp_path) == tmp_path / "imagenette2-160"
    assert len(load_benchmark("split-imagenette", tasks=1, data_dir=tmp_path, image_size=16).train[0]) == 2
    synthetic.write_imagenette(tmp_path / "imagenette2-320", classes=2, train_per_class=1, val_per_class=1, size=20)
    with pytest.raises(FileNotFoundError, match="several Imagenette releases"):
        find_imagenette(tmp_path)


def test_missing_and_broken_trees_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_benchmark("split-imagenette", data_dir=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value) and "train/<wnid>/*.JPEG" in str(info.value)
    assert "--download" in str(info.value)
    with pytest.raises(FileNotFoundError, match="no Imagenette found"):
        load_imagenette(tmp_path)
    write_tree(tmp_path / "a")
    (tmp_path / "a" / "val" / WNIDS[0]).rename(tmp_path / "a" / "val" / "n09999999")
    with pytest.raises(ValueError, match="train/ and val/ should hold the same classes"):
        load_imagenette(tmp_path / "a")
    write_tree(tmp_path / "b")
    for f in (tmp_path / "b" / "train" / WNIDS[1]).iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="holds no image"):
        load_imagenette(tmp_path / "b")
    with pytest.raises(ValueError, match="image_size is for split-imagenette"):
        load_benchmark("split-cifar10", data_dir=tmp_path, image_size=64)


def test_a_truncated_jpeg_is_an_error_naming_the_file(tmp_path):
    write_tree(tmp_path)
    broken = sorted((tmp_path / "val" / WNIDS[1]).iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:40])
    bench = load_benchmark("split-imagenette", tasks=1, data_dir=tmp_path, image_size=16)
    index = next(i for i, p in enumerate(bench.test[0].paths) if p == broken)
    with pytest.raises(ValueError, match="cannot decode the image") as info:
        bench.test[0][index]
    assert str(broken) in str(info.value)
