"""The pictures: accuracy matrix and capacity, from live objects or from results.json data."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch.utils.data import TensorDataset

import eidetic
from eidetic import zoo
from eidetic.evaluation.plots import plot_accuracy_matrix, plot_capacity

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained():
    """A small network after two tasks, with its Results."""
    torch.manual_seed(0)
    tasks = []
    for k in range(2):
        x = torch.randn(64, 6) + k
        y = (x[:, 0] > k).long()
        tasks.append(eidetic.Task(TensorDataset(x, y), TensorDataset(x, y), 2))
    net = zoo.MLP((6,), width=12)
    results = eidetic.run_tasks(net, tasks, batch_size=16, epochs=1, progress=False,
                                optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
                                pruning=eidetic.Pruning(step=0.3, max_steps=2))
    return net, results


def test_accuracy_matrix_from_results_dict_or_list(trained, tmp_path):
    _, results = trained
    from_json = json.loads(json.dumps(results.to_dict()))
    for i, source in enumerate([results, from_json, results.matrix]):
        path = plot_accuracy_matrix(source, tmp_path / f"sub/matrix{i}.png")
        assert path.read_bytes().startswith(PNG)
    assert plot_accuracy_matrix([[0.5]], tmp_path / "one.png", title="one task").is_file()


def test_capacity_from_capacity_or_json(trained, tmp_path):
    net, _ = trained
    capacity = net.capacity()
    assert plot_capacity(capacity, tmp_path / "capacity.png").read_bytes().startswith(PNG)
    from_json = json.loads(json.dumps(capacity.to_dict()))  # task keys become strings
    assert plot_capacity(from_json, tmp_path / "capacity.svg").read_text().lstrip().startswith("<?xml")


def test_empty_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_accuracy_matrix([], tmp_path / "m.png")
    with pytest.raises(ValueError, match="no layers"):
        plot_capacity({"layers": []}, tmp_path / "c.png")


def test_missing_matplotlib_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="plotting needs matplotlib: pip install matplotlib"):
        plot_accuracy_matrix([[1.0]], tmp_path / "m.png")
    with pytest.raises(ImportError, match="needs matplotlib"):
        plot_capacity({"layers": [{"group": "fc", "free": 1, "owned": {}}]}, tmp_path / "c.png")
    assert not list(tmp_path.iterdir())
