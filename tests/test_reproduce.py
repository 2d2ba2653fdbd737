"""``eidetic reproduce``: every seed experiment is listed and starts on synthetic data in its
format (tiny overrides), its results record the experiment, the overrides and the paper's
figures next to ours, and bad names or overrides get clear errors."""

from __future__ import annotations

import json

import pytest

from eidetic import cli
from eidetic.datasets import synthetic
from eidetic.reproduce import COMPARISON, EXPERIMENTS, reproduce

pytest.importorskip("torchvision")

ISSUE = {"eidetic-pmnist": ("Table 3", "permuted-mnist"), "eidetic-cifar100": ("Table 4", "split-cifar100"),
         "eidetic-imagenette-resnet18": ("Table 5", "split-imagenette"),
         "eidetic-imagenette-resnet50": ("Table 5", "split-imagenette"),
         "eidetic-routing-mnist5": ("Table 7", "split-mnist"),
         "eidetic-routing-cifar10-5": ("Table 7", "split-cifar10"),
         "eidetic-routing-cifar100-5": ("Table 8", "split-cifar100"),
         "cpg-cifar100-superclasses": ("CIFAR-100, 20 tasks", "cifar100-superclasses"),
         "lsg-cifar100-superclasses": ("superclass", "cifar100-superclasses"),
         "lsg-cifar100-split-lenet5": ("CIFAR-100 Split", "split-cifar100")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One folder per data set, each written in its published format."""
    root = tmp_path_factory.mktemp("data")
    synthetic.write_mnist(root / "mnist", train_per_class=2, test_per_class=1)
    synthetic.write_cifar(root / "cifar10", "cifar10", train_per_class=2, test_per_class=1)
    synthetic.write_cifar(root / "cifar100", "cifar100", train_per_class=2, test_per_class=1)
    synthetic.write_imagenette(root / "imagenette", classes=10, train_per_class=2, val_per_class=1, size=32)
    return {"mnist": root / "mnist", "cifar10": root / "cifar10", "cifar100": root / "cifar100",
            "imagenette": root / "imagenette"}


def test_the_list_holds_every_experiment_of_the_issue(capsys):
    assert cli.main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name, (table, benchmark) in ISSUE.items():
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert table in line and benchmark in line and EXPERIMENTS[name].model in line
    assert set(EXPERIMENTS) == set(ISSUE)


def _folder(name: str, data) -> str:
    benchmark = EXPERIMENTS[name].benchmark
    return str(data["mnist" if "mnist" in benchmark else "imagenette" if "imagenette" in benchmark else
                    "cifar10" if "cifar10" in benchmark and "cifar100" not in benchmark else "cifar100"])


@pytest.mark.parametrize("name", sorted(ISSUE))
def test_each_experiment_starts_on_synthetic_data(name, data, tmp_path):
    done = reproduce(name, _folder(name, data), tmp_path, epochs=1, tasks=1, width=2,
                     run_options=["--no-plots", "--no-progress", "--threads", "1"])
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["experiment"]["name"] == name and document["overrides"] == {"epochs": 1, "tasks": 1, "width": 2}
    assert document["config"]["benchmark"] == EXPERIMENTS[name].benchmark
    assert document["config"]["tasks"] == EXPERIMENTS[name].tasks and document["config"]["first"] == 1
    assert document["config"]["epochs"] == 1 and len(document["results"]["matrix"]) == 1
    if EXPERIMENTS[name].method == "lsg":  # the papers' seed of 1/8 grows from the first task, with room to
        assert document["config"]["seed_fraction"] == 0.125 and document["config"]["grow_first_task"] is True
        assert document["config"]["max_growth"] >= 64
    assert document["comparison"]["tasks"][0]["oracle"] is not None and done.comparison == document["comparison"]
    table = (tmp_path / COMPARISON).read_text()
    assert "Overridden for a quick look: --epochs 1, --tasks 1, --width 2" in table and "| 0 |" in table
    words = document["run_command"].split()  # the override replaces the paper's setting, once
    assert words.count("--epochs") == 1 and words[words.index("--epochs") + 1] == "1"
    assert words.count("--width") == 1 and words[words.index("--width") + 1] == "2"
    assert words[words.index("--first") + 1] == "1"  # the recorded command trains the tasks that were trained
    again = cli.build_parser().parse_args(words[1:])  # after "eidetic"
    assert (again.first, again.epochs, again.width) == (1, 1, 2)


def test_the_paper_settings_reach_the_run(data, tmp_path):
    """CPG's optimizer, schedule and growth; the paper's figures beside ours; the sources."""
    reproduce("cpg-cifar100-superclasses", data["cifar100"], tmp_path, epochs=1, tasks=2, width=2,
              run_options=["--no-plots", "--no-progress"])
    document = json.loads((tmp_path / "results.json").read_text())
    config = document["config"]
    assert (config["optimizer"], config["lr"], config["momentum"], config["nesterov"]) == ("sgd", 1e-2, 0.9, True)
    assert (config["weight_decay"], config["batch_size"], config["lr_milestones"]) == (4e-5, 32, [50, 80])
    assert (config["method"], config["max_growth"], config["recovery_epochs"]) == ("cpg", 1.5, 20)
    comparison = document["comparison"]
    assert [row["paper"] for row in comparison["tasks"]] == [65.2, 76.6]
    assert comparison["summary"]["average"]["paper"] == 80.9
    assert all(row["parameters"] > 0 for row in comparison["tasks"])
    sources = {s["option"]: s["source"] for s in document["experiment"]["settings"]}
    assert sources["--lr"] == "CPG code" and sources["--goal"].startswith("chosen")
    table = (tmp_path / COMPARISON).read_text()
    assert "| 0 | " in table and "80.9" in table and "not verified" in table


def test_bad_names_and_overrides(capsys, tmp_path):
    assert cli.main(["reproduce"]) == 2 and "give an experiment name" in capsys.readouterr().err
    assert cli.main(["reproduce", "table-99"]) == 2 and "unknown experiment 'table-99'" in capsys.readouterr().err
    assert cli.main(["reproduce", "eidetic-pmnist", "--tasks", "11"]) == 2
    assert "eidetic-pmnist has 10 tasks, got 11" in capsys.readouterr().err
    assert cli.main(["reproduce", "eidetic-pmnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "no MNIST files found" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="has 20 tasks; keep 1 to 20"):
        reproduce("cpg-cifar100-superclasses", tmp_path, tmp_path, tasks=21)
