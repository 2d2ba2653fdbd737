"""The ready-made models: each learns a task and its checkpoint rebuilds it exactly."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

import eidetic
from eidetic import zoo
from eidetic.errors import CheckpointError

SHAPES = {"mlp": (1, 8, 8), "convnet": (1, 8, 8), "resnet": (1, 8, 8), "lstm": (8, 8)}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_model_trains_and_round_trips_through_a_checkpoint(name, tmp_path):
    torch.manual_seed(0)
    net = zoo.build_model(name, SHAPES[name], width=4)
    x = torch.randn(24, *SHAPES[name])
    data = TensorDataset(x, torch.arange(24) % 3)
    net.train_task(0, data, batch_size=8, num_classes=3, epochs=1, progress=False,
                   optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    loaded = zoo.load_checkpoint(zoo.save_checkpoint(net, tmp_path / "model.pt"))
    assert type(loaded) is type(net) and loaded.config == net.config
    net.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded.logits(x, 0), net.logits(x, 0))


@pytest.mark.parametrize("method, width, kwargs", [
    ("cpg", 4, {}),
    ("lsg", 2, {"growth": eidetic.SparseGrowth(candidates=2, max_width=3.0, mask_lr=0.1)}),  # reloads at seed width
])
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_model_learns_with_each_mixin_and_round_trips(name, method, width, kwargs, tmp_path):
    """Growth where the model can grow (LSG does not grow the two-layer LSTM); the checkpoint
    rebuilds the class, its width at set-up and every grown unit."""
    torch.manual_seed(0)
    net = zoo.build_model(name, SHAPES[name], width=width, method=method)
    classes = {"cpg": zoo.CPG_MODELS, "lsg": zoo.LSG_MODELS}[method]
    assert isinstance(net, classes[name]) and net.config["method"] == method
    x = torch.randn(24, *SHAPES[name])
    data = TensorDataset(x, torch.arange(24) % 3)
    for t in range(2):
        net.train_task(t, data, batch_size=8, num_classes=3, epochs=1, progress=False, goal=1.0,
                       optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), **kwargs)
    loaded = zoo.load_checkpoint(zoo.save_checkpoint(net, tmp_path / "model.pt"))
    assert type(loaded) is type(net) and loaded.config == net.config and loaded.config["width"] == width
    assert {g.key: g.size for g in loaded.graph} == {g.key: g.size for g in net.graph}
    net.eval(), loaded.eval()
    with torch.no_grad():
        assert all(torch.equal(loaded.logits(x, k), net.logits(x, k)) for k in range(2))


def test_a_checkpoint_without_a_method_loads_as_plain_eidetic(tmp_path):
    net = zoo.build_model("mlp", SHAPES["mlp"], width=4)
    path = zoo.save_checkpoint(net, tmp_path / "model.pt")
    saved = torch.load(path, weights_only=True)
    del saved["config"]["method"]  # as saved before methods existed
    torch.save(saved, path)
    loaded = zoo.load_checkpoint(path)
    assert type(loaded) is zoo.MLP and loaded.config["method"] == "eidetic"


def test_the_lstm_reads_an_image_as_its_rows():
    torch.manual_seed(0)
    images = zoo.build_model("lstm", (2, 4, 3), width=5)
    rows = zoo.build_model("lstm", (4, 6), width=5)
    rows.load_state_dict(images.state_dict())
    x = torch.randn(3, 2, 4, 3)
    assert torch.equal(images(x), rows(x.permute(0, 2, 1, 3).flatten(2)))


def test_bad_models_and_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'vit'"):
        zoo.build_model("vit", (1, 8, 8))
    with pytest.raises(ValueError, match="the lstm model reads sequences"):
        zoo.build_model("lstm", (64,))
    with pytest.raises(ValueError, match="convnet model needs image inputs"):
        zoo.build_model("convnet", (8, 8))
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"not an eidetic\.zoo checkpoint"):
        zoo.load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("not a torch file")
    with pytest.raises(CheckpointError, match=r"not an eidetic\.zoo checkpoint: torch\.load cannot read it"):
        zoo.load_checkpoint(tmp_path / "text.pt")
    for width in (True, 0, 2.5):
        with pytest.raises(ValueError, match=r"build_model\(width=.*positive int"):
            zoo.build_model("mlp", (1, 8, 8), width=width)
