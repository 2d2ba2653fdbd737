"""``eidetic run`` end to end on tiny configurations: every promised file, an exactly flat
accuracy matrix (BWT exactly 0), and clear errors with no traceback."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eidetic import cli, zoo
from eidetic.datasets import load_benchmark, synthetic, write_idx

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

QUICK = ["--tasks", "2", "--epochs", "1", "--no-progress"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One tiny run of the default benchmark and model, shared by the checks below."""
    out = tmp_path_factory.mktemp("run") / "results"
    code = cli.main(["run", *QUICK, "--out", str(out)])
    return code, out


def test_run_writes_every_promised_file(default_run):
    code, out = default_run
    assert code == 0
    for name in cli.FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in ("accuracy_matrix.png", "capacity.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")


def test_results_json_has_an_exactly_flat_accuracy_matrix(default_run):
    _, out = default_run
    document = json.loads((out / "results.json").read_text())
    results = document["results"]
    assert results["bwt"] == 0.0
    matrix = results["matrix"]
    assert len(matrix) == 2
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if j > i:
                assert value is None
            else:
                assert value == matrix[j][j]  # exactly: no forgetting, not even in the last digit
    assert document["logits_identical"] is True
    assert len(results["units"]) == 2 and all(sum(units.values()) > 0 for units in results["units"])
    assert document["config"]["benchmark"] == "split-digits" and document["config"]["model"] == "mlp"
    assert document["config"]["tasks"] == 2 and document["config"]["epochs"] == 1
    assert document["versions"]["torch"] == torch.__version__
    assert len(document["timings"]["tasks"]) == 2 and document["timings"]["total"] > 0
    assert document["files"] == list(cli.FILES)
    assert document["command"].startswith("eidetic run --tasks 2")


def test_csv_holds_the_same_matrix(default_run):
    _, out = default_run
    matrix = json.loads((out / "results.json").read_text())["results"]["matrix"]
    with (out / "accuracy_matrix.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["after_task", "task_0", "task_1"]
    parsed = [[None if cell == "" else float(cell) for cell in row[1:]] for row in rows[1:]]
    assert parsed == matrix


def test_checkpoint_rebuilds_the_network(default_run):
    _, out = default_run
    net = zoo.load_checkpoint(out / "model.pt").eval()
    assert net.num_tasks == 2
    bench = load_benchmark("split-digits", tasks=2)
    document = json.loads((out / "results.json").read_text())
    with torch.no_grad():
        for k, test in enumerate(bench.test):
            x, y = test.tensors
            accuracy = (net.logits(x, k).argmax(dim=1) == y).double().mean().item()
            assert accuracy == pytest.approx(document["results"]["matrix"][-1][k], abs=1e-12)


def test_run_prints_the_table_and_the_folder(capsys, tmp_path):
    code, out, err = run(capsys, "run", *QUICK, "--out", tmp_path / "r", "--no-plots", "--router", "statistics")
    assert code == 0, err
    assert "after  task 0" in out and "average accuracy" in out and "BWT +0.0000" in out
    assert "routing accuracy" in out and "task 1 (2 of 2)" in out and "units per layer" in out
    assert str(tmp_path / "r") in out
    assert not (tmp_path / "r" / "capacity.png").exists() and (tmp_path / "r" / "model.pt").is_file()


@pytest.mark.parametrize("model", ["convnet", "resnet"])
def test_other_models(capsys, tmp_path, model):
    code, _, err = run(capsys, "run", "--model", model, "--width", "4", "--tasks", "1", "--epochs", "1",
                         "--no-progress", "--no-plots", "--pruning", "none", "--out", tmp_path)
    assert code == 0, err
    assert json.loads((tmp_path / "results.json").read_text())["model"]["model"] == model


def test_sequential_digits_defaults_to_the_lstm(capsys, tmp_path):
    code, _, err = run(capsys, "run", "--benchmark", "sequential-digits", "--width", "8", *QUICK, "--no-plots",
                       "--out", tmp_path)
    assert code == 0, err
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["model"]["model"] == "lstm" and document["benchmark"]["input_shape"] == [8, 8]
    assert document["results"]["bwt"] == 0.0 and document["logits_identical"] is True
    assert [row["group"] for row in document["capacity"]["layers"]] == ["lstm.l0", "lstm.l1"]


def test_permuted_digits(capsys, tmp_path):
    code, _, err = run(capsys, "run", "--benchmark", "permuted-digits", "--tasks", "2", "--epochs", "1",
                       "--no-progress", "--no-plots", "--prune-step", "0.5", "--out", tmp_path)
    assert code == 0, err
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["results"]["bwt"] == 0.0 and document["benchmark"]["tasks"][1]["num_classes"] == 10


def test_split_mnist_from_tiny_idx_files(capsys, tmp_path):
    data = tmp_path / "mnist" / "MNIST" / "raw"
    gen = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 200), ("t10k", 100)):
        write_idx(data / f"{prefix}-images-idx3-ubyte.gz", torch.randint(0, 256, (n, 28, 28), generator=gen,
                                                                          dtype=torch.uint8))
        write_idx(data / f"{prefix}-labels-idx1-ubyte.gz", (torch.arange(n) % 10).to(torch.uint8))
    code, _, err = run(capsys, "run", "--benchmark", "split-mnist", "--data-dir", tmp_path / "mnist",
                         "--width", "16", *QUICK, "--no-plots", "--out", tmp_path / "out")
    assert code == 0, err
    document = json.loads((tmp_path / "out" / "results.json").read_text())
    assert document["results"]["bwt"] == 0.0
    assert [t["train_samples"] for t in document["benchmark"]["tasks"]] == [40, 40]


CPG = ["--method", "cpg", "--goal", "1.0", "--max-growth", "2", "--width", "16", *QUICK, "--no-plots"]
"""Goal 1.0 on the training data, which task 1 misses at width 16 after one epoch: it grows."""


@pytest.fixture(scope="module")
def cpg_run(tmp_path_factory):
    """One tiny ``eidetic run --method cpg`` (main's steps, keeping the network in memory)."""
    out = tmp_path_factory.mktemp("cpg") / "results"
    argv = ["run", *CPG, "--out", str(out)]
    args = cli.build_parser().parse_args(argv)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run = cli.train(cli.resolve(args, args.error))
        cli.write_outputs(run, argv)
    return run, out, printed.getvalue()


def test_cpg_records_the_method_the_attempts_and_the_growth(cpg_run):
    _, out, printed = cpg_run
    assert "method cpg (goal 1)" in printed
    document = json.loads((out / "results.json").read_text())
    assert document["config"]["method"] == "cpg" and document["config"]["goal"] == 1.0
    assert document["config"]["max_growth"] == 2.0 and document["config"]["grow_step"] == 0.25
    assert document["model"]["method"] == "cpg"
    assert document["results"]["bwt"] == 0.0 and document["logits_identical"] is True
    first, second = document["results"]["reports"]
    assert first["grown"] == {} and len(first["attempts"]) == 1  # the first task does not grow
    assert first["picked"] == {}  # nor has old weights to pick
    assert second["goal"] == 1.0 and len(second["attempts"]) > 1 and second["kept_attempt"] > 0
    assert second["grown"] and all(n > 0 for n in second["grown"].values())
    assert set(second["picked"]) == {"fcs.0", "fcs.1"}
    grown = sum(second["grown"].values())
    assert f"{len(second['attempts'])} attempt(s), kept {second['kept_attempt'] + 1}, grew {grown} units" in printed
    assert "goal missed, 1 attempt(s), kept 1, grew 0 units" in printed or "goal met, 1 attempt(s)" in printed
    units = {row["group"]: row["total"] for row in document["capacity"]["layers"]}
    assert units == {group: 16 + n for group, n in second["grown"].items()}  # the network kept its growth


def test_cpg_checkpoint_reloads_bitwise(cpg_run):
    run, out, _ = cpg_run
    loaded = zoo.load_checkpoint(out / "model.pt").eval()
    assert type(loaded) is zoo.CPGMLP and loaded.config == run.net.config and loaded.num_tasks == 2
    net = run.net.eval()
    bench = load_benchmark("split-digits", tasks=2)
    with torch.no_grad():
        for k, test in enumerate(bench.test):
            x = test.tensors[0]
            assert torch.equal(loaded.logits(x, k), net.logits(x, k))
            expected, got = net.predict(x), loaded.predict(x)
            assert torch.equal(got.task, expected.task) and torch.equal(got.label, expected.label)


def test_cpg_from_main(capsys, tmp_path):
    code, out, err = run(capsys, "run", *CPG, "--tasks", "1", "--pick-lr", "1e-3", "--out", tmp_path)
    assert code == 0, err
    assert "task 0 (1 of 1) [0,1]" in out and "attempt(s)" in out and "BWT +0.0000" in out
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["config"]["pick_lr"] == 1e-3 and document["config"]["tasks"] == 1


def test_cpg_names_its_default_folder():
    args = cli.build_parser().parse_args(["run", "--method", "cpg"])
    config = cli.resolve(args, args.error)
    assert Path(config.out).name.startswith("split-digits-mlp-cpg-")
    assert (config.goal, config.grow_step, config.max_growth, config.pick_lr) == (0.95, 0.25, 1.5, 1e-4)
    args = cli.build_parser().parse_args(["run"])
    config = cli.resolve(args, args.error)
    assert config.method == "eidetic" and config.goal is None and config.pick_lr is None


def test_cpg_picking_keeps_the_accuracy_matrix_flat(capsys, tmp_path):
    """With a picking lr that drops old weights, every task's accuracy in the matrix is that of its
    own (masked) logits, and never changes."""
    code, _, err = run(capsys, "run", *CPG, "--tasks", "3", "--pick-lr", "1e-2", "--out", tmp_path)
    assert code == 0, err
    document = json.loads((tmp_path / "results.json").read_text())
    assert any(p and min(p.values()) < 1 for p in (r["picked"] for r in document["results"]["reports"]))
    assert document["logits_identical"] is True
    net = zoo.load_checkpoint(tmp_path / "model.pt").eval()
    with torch.no_grad():
        for k, test in enumerate(load_benchmark("split-digits", tasks=3).test):
            x, y = test.tensors
            accuracy = (net.logits(x, k).argmax(dim=1) == y).double().mean().item()
            assert [row[k] for row in document["results"]["matrix"][k:]] == [accuracy] * (3 - k)


def test_lsg_grows_from_a_seed_and_prints_the_parameters_per_task(capsys, tmp_path):
    """``eidetic run --method lsg``: the MLP is built at 1/4 of --width 16; the second task grows
    while it misses the goal (1.0 on the training data: always), within the budget (--max-growth)
    and the width cap (--max-width), is compacted as CPG's tasks are, and every task line gives
    the parameters."""
    code, out, err = run(capsys, "run", "--method", "lsg", "--goal", "1.0", "--width", "16", "--seed-fraction", "0.25",
                         "--max-width", "3", "--max-growth", "4", "--mask-lr", "0.01", *QUICK, "--no-plots",
                         "--out", tmp_path)
    assert code == 0, err
    assert "method lsg (goal 1)" in out and "pruning l2" in out
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["model"]["method"] == "lsg" and document["model"]["width"] == 4
    assert document["config"]["max_width"] == 3.0 and document["config"]["mask_lr"] == 0.01
    assert document["config"]["max_growth"] == 4.0
    reports = document["results"]["reports"]
    assert reports[0]["grown"] == {} and reports[1]["grown"]  # the first task does not grow, as in CPG
    for k, report in enumerate(reports):
        assert f"task {k} ({k + 1} of 2)" in out and f"{report['parameters']:,} parameters" in out
    units = {row["group"]: row["total"] for row in document["capacity"]["layers"]}
    assert units == {g: 4 + sum(r["grown"].get(g, 0) for r in reports) for g in units}
    assert all(n <= 12 for n in units.values())  # 3 times the seed at most
    assert document["results"]["bwt"] == 0.0 and document["logits_identical"] is True
    loaded = zoo.load_checkpoint(tmp_path / "model.pt")
    assert type(loaded) is zoo.LSGMLP and {g.key: g.size for g in loaded.graph} == units


def test_lsg_grows_the_first_task_from_a_seed_when_asked(capsys, tmp_path):
    """``--grow-first-task``: the papers' setting, a seed of 1/4 growing from the first task on."""
    code, _, err = run(capsys, "run", "--method", "lsg", "--goal", "1.0", "--width", "16", "--seed-fraction", "0.25",
                       "--max-width", "2", "--max-growth", "4", "--grow-first-task", "--tasks", "1", "--epochs", "1",
                       "--no-progress", "--no-plots", "--out", tmp_path)
    assert code == 0, err
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["config"]["grow_first_task"] is True and document["results"]["reports"][0]["grown"]


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--goal", "0.9"], "argument --goal: only with --method cpg or lsg"),
    (["run", "--method", "cpg", "--grow-first-task"], "argument --grow-first-task: only with --method lsg"),
    (["run", "--method", "cpg", "--mask-lr", "0.1"], "argument --mask-lr: only with --method lsg"),
    (["run", "--seed-fraction", "0.5"], "argument --seed-fraction: only with --method lsg"),
    (["run", "--method", "lsg", "--pick-lr", "1e-3"], "argument --pick-lr: only with --method cpg"),
    (["run", "--method", "lsg", "--seed-fraction", "0"], "must be in (0, 1]"),
    (["run", "--method", "lsg", "--max-width", "0.5"], "must be in [1, 1000]"),
    (["run", "--max-growth", "2"], "argument --max-growth: only with --method cpg"),
    (["run", "--method", "eidetic", "--grow-step", "0.5"], "argument --grow-step: only with --method cpg"),
    (["run", "--pick-lr", "1e-3"], "argument --pick-lr: only with --method cpg"),
    (["run", "--method", "cpg", "--grow-step", "0"], "must be in (0, 1]"),
    (["run", "--method", "cpg", "--pick-lr", "-1"], "must be in (0, 10]"),
    (["run", "--method", "cpg", "--goal", "1.5"], "must be in [0, 1]"),
    (["run", "--method", "cpg", "--max-growth", "0.5"], "must be in [1, 100]"),
    (["run", "--method", "pnn"], "invalid choice: 'pnn'"),
    (["run", "--tasks", "0"], "argument --tasks: must be at least 1, got 0"),
    (["run", "--tasks", "6"], "split-digits has 5 tasks"),
    (["run", "--tasks", "two"], "expected an integer, got 'two'"),
    (["run", "--benchmark", "split-cifar"], "invalid choice: 'split-cifar'"),
    (["run", "--model", "vit"], "invalid choice: 'vit'"),
    (["run", "--benchmark", "sequential-digits", "--model", "resnet"], "sequences of rows, not images"),
    (["run", "--benchmark", "sequential-digits", "--tasks", "6"], "sequential-digits has 5 tasks"),
    (["run", "--prune-step", "1.5"], "must be in (0, 1]"),
    (["run", "--tolerance", "1"], "must be in [0, 1)"),
    (["run", "--batch-size", "1"], "must be at least 2"),
    (["run", "--device", "toaster"], "not a torch device"),
    (["run", "--benchmark", "split-cifar100", "--tasks", "7"], "split-cifar100 takes 5, 10 or 20 tasks"),
    (["run", "--benchmark", "cifar100-superclasses", "--tasks", "21"], "cifar100-superclasses has 20 tasks"),
    (["run", "--image-size", "64"], "argument --image-size: only with --benchmark split-imagenette"),
    (["run", "--momentum", "0.5"], "argument --momentum: only with --optimizer sgd"),
    (["run", "--optimizer", "sgd", "--momentum", "0", "--nesterov"], "Nesterov momentum needs --momentum"),
    (["run", "--channels-last"], "argument --channels-last: mlp reads no images"),
    (["run", "--method", "cpg", "--precision", "fp16"], "use bf16"),
    (["run", "--precision", "fp8"], "invalid choice: 'fp8'"),
    (["run", "--workers", "-1"], "must be at least 0"),
    (["run", "--unknown"], "unrecognized arguments"),
    ([], "required: command"),
])
def test_bad_options_exit_2_without_traceback(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_unavailable_device(capsys):
    code, _, err = run(capsys, "run", "--device", "cuda")
    assert code == 2 and "CUDA is not available" in err


def test_missing_dataset_exits_1_with_a_clear_message(capsys, tmp_path):
    code, _, err = run(capsys, "run", "--benchmark", "split-mnist", "--data-dir", tmp_path, "--out", tmp_path / "o")
    assert code == 1
    assert err.startswith("eidetic: error: no MNIST files found") and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_out_is_a_file(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    code, _, err = run(capsys, "run", "--out", tmp_path / "file")
    assert code == 2 and "exists and is not a folder" in err


def test_missing_matplotlib_is_reported_before_training(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run(capsys, "run", *QUICK, "--out", tmp_path / "o")
    assert code == 1 and "needs matplotlib" in err and "--no-plots" in err
    assert "task 0 (1 of 2)" not in out


def test_help_and_version(capsys):
    code, out, _ = run(capsys, "run", "--help")
    assert code == 0 and "--benchmark" in out and "--data-dir" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("eidetic ")


def test_python_dash_m():
    done = subprocess.run([sys.executable, "-m", "eidetic", "--version"], capture_output=True, text=True,
                          cwd=Path(__file__).parent, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("eidetic ")


# ------------------------------------------------------------------ image benchmarks, GPU options


@pytest.fixture(scope="module")
def tiny_cifar10(tmp_path_factory) -> Path:
    return synthetic.write_cifar(tmp_path_factory.mktemp("cifar"), "cifar10", train_per_class=8, test_per_class=4)


def test_split_cifar10_with_resnet18_cifar_end_to_end(capsys, tmp_path, tiny_cifar10):
    """The issue's command, on a tiny synthetic CIFAR-10."""
    code, out, err = run(capsys, "run", "--benchmark", "split-cifar10", "--data-dir", tiny_cifar10, "--model",
                         "resnet18-cifar", "--width", "8", "--epochs", "1", "--no-plots", "--out", tmp_path / "O",
                         "--no-progress")
    assert code == 0, err
    document = json.loads((tmp_path / "O" / "results.json").read_text())
    assert document["config"]["benchmark"] == "split-cifar10" and document["model"]["model"] == "resnet18-cifar"
    assert document["benchmark"]["input_shape"] == [3, 32, 32] and len(document["results"]["matrix"]) == 5
    assert document["results"]["bwt"] == 0.0 and document["logits_identical"] is True
    assert "random 32x32 crop" in document["benchmark"]["preprocessing"]["train"]
    assert "train: random 32x32 crop" in out


def test_gpu_path_options_are_recorded_and_keep_the_guarantee(capsys, tmp_path, tiny_cifar10):
    """bf16 autocast, channels-last, a worker process and SGD with a schedule, on the CPU (width 8:
    narrower, an AVX2 CPU corrupts its heap in oneDNN, see test_memory_format.ONEDNN_6035)."""
    code, out, err = run(capsys, "run", "--benchmark", "split-cifar10", "--data-dir", tiny_cifar10, "--model",
                         "resnet18-cifar", "--width", "8", *QUICK, "--no-plots", "--precision", "bf16",
                         "--channels-last", "--workers", "1", "--optimizer", "sgd", "--nesterov", "--lr", "0.05",
                         "--lr-milestones", "1", "--weight-decay", "1e-4", "--early-stopping", "2", "--no-augment",
                         "--out", tmp_path)
    assert code == 0, err
    config = json.loads((tmp_path / "results.json").read_text())["config"]
    assert (config["precision"], config["channels_last"], config["workers"], config["pin_memory"]) == (
        "bf16", True, 1, False)
    assert (config["optimizer"], config["momentum"], config["nesterov"], config["weight_decay"]) == (
        "sgd", 0.9, True, 1e-4)
    assert config["lr_milestones"] == [1] and config["early_stopping"] == 2 and config["augment"] is False
    assert "bf16 autocast, channels-last, 1 worker(s)" in out and "no augmentation" in out
    assert "bitwise identical to when it was learnt: yes" in out
    args = cli.build_parser().parse_args(["run"])
    assert (cli.resolve(args, args.error).optimizer, cli.resolve(args, args.error).weight_decay) == ("adamw", 0.01)


def test_fashion_mnist_and_imagenette_runs(capsys, tmp_path):
    fashion = synthetic.write_mnist(tmp_path / "fashion", train_per_class=6, test_per_class=3)
    code, _, err = run(capsys, "run", "--benchmark", "permuted-fashion-mnist", "--data-dir", fashion, "--width", "16",
                       *QUICK, "--no-plots", "--out", tmp_path / "f")
    assert code == 0, err
    assert json.loads((tmp_path / "f" / "results.json").read_text())["benchmark"]["tasks"][1]["train_samples"] == 60
    nette = synthetic.write_imagenette(tmp_path / "nette", classes=2, train_per_class=4, val_per_class=2, size=40)
    code, _, err = run(capsys, "run", "--benchmark", "split-imagenette", "--data-dir", nette, "--tasks", "1",
                       "--image-size", "32", "--width", "4", "--epochs", "1", "--no-progress", "--no-plots",
                       "--out", tmp_path / "i")
    assert code == 0, err
    document = json.loads((tmp_path / "i" / "results.json").read_text())
    assert document["model"]["model"] == "resnet18" and document["benchmark"]["input_shape"] == [3, 32, 32]


def test_a_missing_cifar_folder_says_where_and_how(capsys, tmp_path):
    code, _, err = run(capsys, "run", "--benchmark", "cifar100-superclasses", "--data-dir", tmp_path / "none",
                       "--out", tmp_path / "o")
    assert code == 1 and str(tmp_path / "none") in err and "cifar-100-python" in err and "--download" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("capability", ["AVX2", "AVX512"])
def test_channels_last_is_refused_where_onednn_would_corrupt_memory(monkeypatch, capability):
    """On AVX2 CPUs oneDNN's weight gradient of a narrow 1x1 stride-2 convolution in channels-last
    corrupts the heap (oneDNN#6035): the run is refused, naming the layer; elsewhere, and at width
    8, the network goes channels-last."""
    from eidetic.cli.run import channels_last

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    narrow = zoo.build_model("resnet18-cifar", (3, 8, 8), width=4)
    if capability == "AVX2":
        with pytest.raises(ValueError, match=r"layer2\.0\.downsample\.0 .*stride 2 reading 4 channels.*--width 8"):
            channels_last(narrow, "cpu")
        assert narrow.conv1.weight.is_contiguous()  # refused before anything moved
    else:
        assert channels_last(narrow, "cpu").conv1.weight.is_contiguous(memory_format=torch.channels_last)
    wide = channels_last(zoo.build_model("resnet18-cifar", (3, 8, 8), width=8), "cpu")
    assert wide.conv1.weight.is_contiguous(memory_format=torch.channels_last)
