"""The Avalanche bridge: benchmarks as tasks, and EideticStrategy measured by Avalanche's evaluator.

Runs where Avalanche is installed (``pip install -c constraints.txt -e ".[dev,avalanche]"``) and
skips where it is not; the first test, that ``import eidetic`` never imports Avalanche, runs
everywhere.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import eidetic

ROOT = Path(__file__).resolve().parent.parent
HAVE_AVALANCHE = importlib.util.find_spec("avalanche") is not None
needs_avalanche = pytest.mark.skipif(not HAVE_AVALANCHE, reason='Avalanche is not installed: pip install -c '
                                     'constraints.txt -e ".[dev,avalanche]"')
if HAVE_AVALANCHE:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Avalanche's and its dependencies' import-time notices
        from avalanche.benchmarks import benchmark_from_datasets, nc_benchmark
        from avalanche.benchmarks.utils import AvalancheDataset, DataAttribute
        from avalanche.core import SupervisedPlugin
        from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics, timing_metrics
        from avalanche.training.plugins import EvaluationPlugin, EWCPlugin, ReplayPlugin

        from eidetic.integrations.avalanche import EideticStrategy, tasks_from_benchmark

TASKS, CLASSES, DIM = 5, 10, 20
pytestmark = pytest.mark.filterwarnings("ignore:No loggers specified")


def test_import_eidetic_leaves_avalanche_alone():
    """``import eidetic`` never imports Avalanche, and the bridge without it says what to install."""
    code = ("import sys, eidetic\n"
            "assert 'avalanche' not in sys.modules, 'import eidetic imported avalanche'\n"
            "sys.modules['avalanche'] = None\n"
            "try:\n"
            "    import eidetic.integrations.avalanche\n"
            "except ImportError as error:\n"
            "    print(error)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert 'pip install "eidetic[avalanche]"' in out.stdout


# ------------------------------------------------------------------------------------ fixtures

class Net(eidetic.ContinualNetwork):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(DIM, 32)
        self.bn1 = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, 32)

    def forward(self, x):
        return F.relu(self.fc2(F.relu(self.bn1(self.fc1(x)))))


def clusters(per_class: int, seed: int) -> TensorDataset:
    """Ten Gaussian clusters, one per class, in the order of the classes."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(0)) * 3
    y = torch.arange(CLASSES).repeat_interleave(per_class)
    data = TensorDataset(centres[y] + torch.randn(len(y), DIM, generator=generator), y)
    data.targets = y.tolist()
    return data


def split(task_labels: bool, order=range(CLASSES)):
    """Five experiences of two classes: task-incremental (task labels, classes numbered from zero
    in each experience) or class-incremental (one task label, global class ids)."""
    return nc_benchmark(clusters(40, 1), clusters(10, 2), n_experiences=TASKS, task_labels=task_labels,
                        class_ids_from_zero_in_each_exp=task_labels, fixed_class_order=list(order))


def evaluator() -> EvaluationPlugin:
    return EvaluationPlugin(accuracy_metrics(experience=True, stream=True), forgetting_metrics(experience=True),
                            timing_metrics(epoch=True), loggers=[])


def strategy(net=None, **kwargs) -> EideticStrategy:
    net = Net() if net is None else net
    options = {"train_mb_size": 32, "train_epochs": 2, "progress": False, "memory": 50, "evaluator": evaluator()}
    return EideticStrategy(net, optimizer=torch.optim.Adam(net.parameters(), lr=1e-2), **{**options, **kwargs})


def run(strategy: EideticStrategy, benchmark) -> list[dict]:
    """Train every experience and evaluate the test stream after each, as Avalanche scripts do."""
    evaluations = []
    for experience in benchmark.train_stream:
        strategy.train(experience)
        evaluations.append(strategy.eval(benchmark.test_stream))
    return evaluations


def per_experience(metrics: dict, prefix: str) -> dict[int, float]:
    return {int(k.rsplit("Exp", 1)[1]): v for k, v in metrics.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------- tasks_from_benchmark

@needs_avalanche
@pytest.mark.parametrize("task_labels", [True, False], ids=["task-incremental", "class-incremental"])
def test_tasks_from_benchmark_trains_with_run_tasks(task_labels):
    torch.manual_seed(0)
    benchmark = split(task_labels)
    tasks = tasks_from_benchmark(benchmark, batch_size=32, test_batch_size=50)
    assert [t.num_classes for t in tasks] == [2] * TASKS
    global_ids = [[2 * k, 2 * k + 1] for k in range(TASKS)]
    assert [t.classes for t in tasks] == ([[0, 1]] * TASKS if task_labels else global_ids)
    assert [t.task_labels for t in tasks] == ([[k] for k in range(TASKS)] if task_labels else [[0]] * TASKS)
    results = eidetic.run_tasks(Net(), tasks, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), epochs=2,
                                progress=False, memory=50)
    assert results.bwt == 0.0
    assert min(results.matrix[-1]) > 0.9  # separable clusters: a wrong class mapping would sit near 0.5


@needs_avalanche
def test_tasks_from_benchmark_maps_labels_and_keeps_samples():
    """Each test batch is the experience's samples in order, targets the index of their class."""
    benchmark = split(task_labels=False)
    tasks = tasks_from_benchmark(benchmark, batch_size=8, test_batch_size=7)
    for task, experience in zip(tasks, benchmark.test_stream):
        x, y = (torch.cat(parts) for parts in zip(*task.test))
        samples = [experience.dataset[i] for i in range(len(experience.dataset))]
        assert torch.equal(x, torch.stack([s[0] for s in samples]))
        assert torch.equal(torch.tensor(task.classes)[y], torch.tensor([int(s[1]) for s in samples]))


@needs_avalanche
def test_train_task_takes_a_task_without_task_labels():
    """A benchmark of plain AvalancheDatasets (no task labels, no class timeline) is trainable."""
    def dataset(seed):
        data = clusters(20, seed)
        keep = data.tensors[1] < 3
        x, y = data.tensors[0][keep], data.tensors[1][keep]
        return AvalancheDataset([TensorDataset(x, y)], data_attributes=[DataAttribute(y.tolist(), "targets")])

    benchmark = benchmark_from_datasets(train=[dataset(1)], test=[dataset(2)])
    [task] = tasks_from_benchmark(benchmark, batch_size=16)
    assert task.classes == [0, 1, 2] and task.task_labels == []
    net = Net()
    report = net.train_task(0, task.train, num_classes=task.num_classes, optimizer=lambda p: torch.optim.Adam(p),
                            epochs=1, progress=False)
    assert report.task == 0 and net.num_tasks == 1


@needs_avalanche
def test_tasks_from_benchmark_refuses_a_test_class_the_task_lacks():
    train, test = split(False), split(False, order=reversed(range(CLASSES)))

    class Mixed:
        train_stream, test_stream = train.train_stream, test.test_stream

    with pytest.raises(eidetic.TaskError, match=r"test_stream experience 0 holds class\(es\) \[8, 9\].*"
                                                r"train_stream experience 0"):
        tasks_from_benchmark(Mixed(), batch_size=8)

    class Short:
        train_stream, test_stream = train.train_stream, list(test.test_stream)[:2]

    with pytest.raises(eidetic.TaskError, match="train_stream has 5 experiences but its test_stream 2"):
        tasks_from_benchmark(Short(), batch_size=8)


# ------------------------------------------------------------------------------ EideticStrategy

@needs_avalanche
def test_forgetting_is_exactly_zero_in_avalanches_evaluator():
    torch.manual_seed(0)
    s = strategy()
    evaluations = run(s, split(task_labels=True))
    forgetting = per_experience(evaluations[-1], "ExperienceForgetting")
    assert sorted(forgetting) == [0, 1, 2, 3] and set(forgetting.values()) == {0.0}
    history = s.evaluator.get_all_metrics()
    for k in range(TASKS):  # every accuracy measured on experience k after it was learnt is the same float
        _, values = history[f"Top1_Acc_Exp/eval_phase/test_stream/Task{k:03d}/Exp{k:03d}"]
        assert len(set(values[k:])) == 1 and values[k] > 0.8
    assert any(key.startswith("Time_Epoch") for key in history)


@needs_avalanche
@pytest.mark.parametrize("task_labels", [True, False], ids=["task-labels", "predict"])
def test_avalanche_accuracy_is_eidetics_own(task_labels):
    """With task labels Avalanche's accuracy per experience is eidetic's oracle accuracy; without,
    it is the routed accuracy of predict (right task and right class)."""
    torch.manual_seed(0)
    benchmark = split(task_labels)
    s = strategy(task_labels=task_labels)
    final = run(s, benchmark)[-1]
    tests = [t.test for t in tasks_from_benchmark(benchmark, batch_size=50)]
    expected = eidetic.evaluate(s.model, tests, router="auto" if not task_labels else None)
    measured = per_experience(final, "Top1_Acc_Exp")
    for k, row in enumerate(expected.tasks):
        assert measured[k] == pytest.approx(row.oracle if task_labels else row.routed, abs=1e-12)
    assert len(s.reports) == TASKS and s.model.num_tasks == TASKS


@needs_avalanche
def test_plugins_see_the_training_loop():
    class Recorder(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.events, self.outputs = [], []

        def before_training_exp(self, strategy, **kwargs):
            self.events.append("exp")

        def before_training_epoch(self, strategy, **kwargs):
            self.events.append("epoch")

        def after_training_epoch(self, strategy, **kwargs):
            self.events.append("/epoch")

        def before_training_iteration(self, strategy, **kwargs):
            self.events.append("it")

        def after_training_iteration(self, strategy, **kwargs):
            self.events.append("/it")
            self.outputs.append((strategy.mb_output.argmax(1), strategy.mb_y, strategy.mb_task_id,
                                 len(strategy.mb_x), float(strategy.loss)))

        def after_training_exp(self, strategy, **kwargs):
            self.events.append("/exp")

    class Counter(eidetic.Callback):
        steps = epochs = 0

        def on_step_end(self, task, loss):
            self.steps += 1

        def on_epoch_end(self, task, stats):
            self.epochs += 1

    torch.manual_seed(0)
    recorder, counter = Recorder(), Counter()
    s = strategy(plugins=[recorder], task_labels=False, callbacks=[counter])
    benchmark = split(task_labels=False)
    s.train(benchmark.train_stream[0])
    s.train(benchmark.train_stream[1])
    events = recorder.events
    assert events[0] == "exp" and events[-1] == "/exp" and events.count("exp") == 2
    assert events.count("/epoch") == events.count("epoch") == counter.epochs >= 2 * 2
    assert events.count("/it") == events.count("it") == counter.steps
    assert s.clock.train_exp_counter == 2 and s.clock.train_iterations == counter.steps
    compact = "".join({"exp": "[", "/exp": "]", "epoch": "(", "/epoch": ")", "it": "<", "/it": ">"}[e] for e in events)
    assert compact.replace("<>", "").replace("()", "").replace("[]", "") == ""  # properly nested
    predicted, labels, task_ids, batch, loss = recorder.outputs[-1]  # experience 1: classes 2 and 3
    assert set(labels.tolist()) <= {2, 3} and set(predicted.tolist()) <= {2, 3} and batch == len(labels)
    assert set(task_ids.tolist()) == {0} and loss > 0


@needs_avalanche
def test_eval_after_each_experience_with_eval_every_zero():
    torch.manual_seed(0)
    benchmark = split(task_labels=True)
    s = strategy(eval_every=0)
    s.train(benchmark.train_stream[0], eval_streams=[benchmark.test_stream])
    accuracy = per_experience(s.evaluator.get_last_metrics(), "Top1_Acc_Exp")
    assert sorted(accuracy) == list(range(TASKS)) and accuracy[0] > 0.9


# ----------------------------------------------------------------------------------- bad input

@needs_avalanche
def test_class_incremental_experience_refused_when_task_labels_are_needed():
    torch.manual_seed(0)
    benchmark = split(task_labels=False)
    s = strategy()
    s.train(benchmark.train_stream[0])
    with pytest.raises(eidetic.TaskError, match=r"train_stream experience 1 has task label 0, as train_stream "
                                                r"experience 0 had.*task_labels=False"):
        s.train(benchmark.train_stream[1])
    assert s.model.num_tasks == 1


@needs_avalanche
def test_experience_without_task_labels_refused_when_they_are_needed():
    data = clusters(5, 1)
    dataset = AvalancheDataset([data], data_attributes=[DataAttribute(data.targets, "targets")])
    benchmark = benchmark_from_datasets(train=[dataset], test=[dataset])
    with pytest.raises(eidetic.TaskError, match="train_stream experience 0 has no task labels"):
        strategy().train(benchmark.train_stream[0])
    s = strategy(task_labels=False)
    s.train(benchmark.train_stream[0])
    with pytest.raises(eidetic.TaskError, match="test_stream experience 0 has no task labels"):
        strategy().eval(benchmark.test_stream)
    assert per_experience(s.eval(benchmark.test_stream), "Top1_Acc_Exp")[0] > 0.5


@needs_avalanche
def test_experience_whose_classes_do_not_match_the_head():
    torch.manual_seed(0)
    s = strategy()
    s.train(split(task_labels=True).train_stream[0])  # task label 0, classes 0 and 1
    with pytest.raises(eidetic.TaskError, match=r"test_stream experience 1 \(task label 0\) holds class\(es\) "
                                                r"\[2, 3\], but the head of task label 0, learnt on train_stream "
                                                r"experience 0, has classes \[0, 1\]"):
        s.eval(split(task_labels=False).test_stream)


@needs_avalanche
def test_training_plugins_are_refused():
    with pytest.raises(eidetic.TaskError, match="plugin EWCPlugin implements before_backward"):
        strategy(plugins=[EWCPlugin(ewc_lambda=1.0)])
    s = strategy(plugins=[ReplayPlugin(mem_size=20)])
    stream = split(task_labels=True).train_stream
    with warnings.catch_warnings(record=True):  # ReplayPlugin's own deprecation notice (forced on by Avalanche)
        s.train(stream[0])  # nothing to replay yet
    with pytest.raises(eidetic.TaskError, match="a plugin replaced the training data of train_stream experience 1"):
        s.train(stream[1])
    assert s.model.num_tasks == 1


@needs_avalanche
def test_bad_arguments():
    with pytest.raises(eidetic.TaskError, match=r"needs an eidetic\.ContinualNetwork, got Linear"):
        EideticStrategy(nn.Linear(2, 2), optimizer=lambda p: torch.optim.Adam(p))
    with pytest.raises(eidetic.TaskError, match="eval_every=1"):
        strategy(eval_every=1)
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['epochs'\]"):
        strategy(epochs=3)
    net = Net()
    net.train_task(0, clusters(5, 1), num_classes=CLASSES, batch_size=10, optimizer=lambda p: torch.optim.Adam(p),
                   epochs=1, pruning=None, progress=False)
    with pytest.raises(eidetic.TaskError, match="already has 1 task"):
        strategy(net)


# ------------------------------------------------------------------------------------- example

@needs_avalanche
def test_fashion_mnist_example_runs_on_idx_files(tmp_path, capsys):
    """The docs' script, on synthetic files in the exact IDX format of Fashion-MNIST."""
    from eidetic.datasets import write_idx

    generator = torch.Generator().manual_seed(0)
    for prefix, per_class in (("train", 12), ("t10k", 4)):
        labels = torch.arange(CLASSES).repeat_interleave(per_class)
        images = torch.randint(0, 60, (len(labels), 28, 28), generator=generator, dtype=torch.uint8)
        for c in range(CLASSES):  # class c: a bright stripe in rows 2c..2c+2
            images[labels == c, 2 * c:2 * c + 3] = 250
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels.to(torch.uint8))
    spec = importlib.util.spec_from_file_location("example", ROOT / "examples" / "avalanche_fashion_mnist.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(["--data-dir", str(tmp_path), "--epochs", "2", "--batch-size", "16"])
    assert set(results) == {"task-incremental", "class-incremental"}
    for setting in results.values():
        for name, row in setting.items():
            assert sorted(row["accuracy"]) == list(range(TASKS)) and sorted(row["forgetting"]) == [0, 1, 2, 3]
            if name.startswith("EideticStrategy,"):
                assert set(row["forgetting"].values()) == {0.0}
    assert "| task-incremental | PackNet |" in capsys.readouterr().out
