"""Task-ID-free inference as a new user gets it: every router's routing and routed accuracy next
to the oracle on Split digits, Split MNIST (an MLP on 1x28x28, and a conv net on the same digits
padded to 3x32x32 with three channels) and Split Fashion-MNIST, and what ``predict`` costs at
10 tasks against one plain forward pass, in one run.

Quality: each benchmark is learnt with ``train_task``'s defaults (its pruning, its exemplar
memory, its default router), AdamW and the epochs, batch size and learning rate that
``eidetic run`` uses for that data (3 epochs; batches of 32 at lr 1e-2 for digits, of 128 at
lr 1e-3 for MNIST and Fashion-MNIST), seed 0. Then, on the test images of every task, each router
gives:

* **routing**: the share of inputs sent to their own task, and **routed**: right task and
  right class, next to the **oracle** accuracy (task id given);
* what it keeps per task (bytes of statistics, or exemplars).

Cost: a 784-256-256 MLP and the zoo's conv net on 3x32x32 inputs, each after 10 tasks of 10
classes (Permuted MNIST; the conv net's digits padded to 3x32x32; a short training, since the
cost depends on the shapes, not on the weights), time ``net.predict(x)`` with the default
router at batch 256 against one forward pass of the same architecture in plain PyTorch with one
head (a fresh ``eidetic.zoo`` model, no hook), interleaved in the same run, one thread; and, in
the same rounds, the body with every head but no router, and the router's projection of the
inputs alone.

Run::

    python benchmarks/routing.py --mnist ../shared/data/mnist --fashion ../shared/data/fashion-mnist
    python benchmarks/routing.py --only cost            # the two predict/plain ratios alone
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import eidetic
from eidetic import datasets, zoo

from common import interleaved, text_table, write_json

ROUTERS = ("gaussian", "learned", "discriminant", "statistics", "energy")
FASHION = ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def padded(images: torch.Tensor) -> torch.Tensor:
    """28x28 grey digits as CIFAR-shaped 3x32x32 images (zero border, the grey in every channel)."""
    return F.pad(images, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous()


def benchmark(name: str, args: argparse.Namespace) -> tuple[datasets.Benchmark, str, dict]:
    """A split benchmark, the zoo model it is learnt with, and its training settings."""
    if name == "split-digits":
        return datasets.split_tasks(datasets.load_digits(), 5, name=name), "mlp", {"width": 128, "batch": 32,
                                                                                     "lr": 1e-2}
    data = datasets.load_mnist(args.fashion if name == "split-fashion-mnist" else args.mnist)
    model = "mlp"
    if name == "split-mnist-3x32x32":
        data.x_train, data.x_test, model = padded(data.x_train), padded(data.x_test), "convnet"
    return datasets.split_tasks(data, 5, name=name), model, {"width": None, "batch": 128, "lr": 1e-3}


def learn(bench: datasets.Benchmark, model: str, settings: dict, seed: int) -> tuple[eidetic.ContinualNetwork, float]:
    """The benchmark's tasks, learnt with ``train_task``'s defaults; returns the net and seconds."""
    torch.manual_seed(seed)
    net = zoo.build_model(model, bench.input_shape, settings["width"])
    start = time.perf_counter()
    for k, data in enumerate(bench.train):
        net.train_task(k, data, num_classes=bench.num_classes[k], epochs=3, batch_size=settings["batch"],
                       optimizer=lambda p: torch.optim.AdamW(p, lr=settings["lr"]), progress=False)
    return net.eval(), time.perf_counter() - start


def router_bytes(net: eidetic.ContinualNetwork, router: str) -> int:
    """Bytes per task of what the router keeps."""
    routers = net._eidetic.routers
    if router == "learned":
        kept = sum(routers.memory.bytes_per_task()) + routers.learned.weight.numel() * 4
    elif router == "gaussian":
        g = routers.gaussian
        kept = sum(t.numel() * 8 for task in g.classes + [h for h in g.halves if h] for t in task.values())
    elif router == "discriminant":
        d = routers.discriminant
        kept = d.scatter.numel() * 8 + sum(m.numel() * 8 for m in d.means)
    elif router == "statistics":
        kept = sum(s.means.numel() * 4 + s.variance.numel() * 4 + s.mask.numel() for s in routers.stats.tasks)
    else:
        kept = 0
    return kept // net.num_tasks


@torch.no_grad()
def own_task_share(net: eidetic.ContinualNetwork, bench: datasets.Benchmark) -> dict[int, float]:
    """Per original class, the share of its test inputs the default router sends to its task."""
    share = {}
    for k, test in enumerate(bench.test):
        x, y = test.tensors
        task = torch.cat([net.predict(part).task for part in x.split(1000)])
        for label, original in enumerate(bench.classes[k]):
            share[original] = float((task[y == label] == k).float().mean())
    return share


def joint_routing(bench: datasets.Benchmark, model: str, settings: dict, seed: int) -> float:
    """The routing accuracy of a reference that no router without the tasks' data can expect to
    beat: the same architecture in plain PyTorch with one head over every class of every task,
    trained on all the tasks' data at once (3 epochs, as the tasks), its predicted class's task."""
    torch.manual_seed(seed)
    classes = sum(bench.num_classes)
    offsets = torch.tensor([0, *bench.num_classes]).cumsum(0)
    x = torch.cat([t.tensors[0] for t in bench.train])
    y = torch.cat([t.tensors[1] + offsets[k] for k, t in enumerate(bench.train)])
    body = zoo.build_model(model, bench.input_shape, settings["width"])
    joint = nn.Sequential(body, nn.Flatten(), nn.LazyLinear(classes))
    joint(x[:2])
    optimizer = torch.optim.AdamW(joint.parameters(), lr=settings["lr"])
    for _ in range(3):
        for batch in torch.randperm(len(x)).split(settings["batch"]):
            optimizer.zero_grad()
            F.cross_entropy(joint(x[batch]), y[batch]).backward()
            optimizer.step()
    joint.eval()
    task_of_class = torch.cat([torch.full((n,), k) for k, n in enumerate(bench.num_classes)])
    shares = []
    with torch.no_grad():
        for k, test in enumerate(bench.test):
            predicted = torch.cat([joint(part).argmax(dim=1) for part in test.tensors[0].split(1000)])
            shares.append(float((task_of_class[predicted] == k).float().mean()))
    return sum(shares) / len(shares)  # the mean over tasks, as evaluate() reports routing


def quality(name: str, args: argparse.Namespace) -> list[dict]:
    bench, model, settings = benchmark(name, args)
    net, seconds = learn(bench, model, settings, args.seed)
    tests = [TensorDataset(*t.tensors) for t in bench.test]
    rows = []
    for router in ROUTERS:
        start = time.perf_counter()
        evaluation = eidetic.evaluate(net, tests, batch_size=1000, router=router)
        rows.append({"benchmark": name, "model": f"{model} {'x'.join(map(str, bench.input_shape))}",
                     "router": router + (" (default)" if router == "gaussian" else ""), "oracle": evaluation.oracle,
                     "routing": evaluation.routing, "routed": evaluation.routed,
                     "bytes_per_task": router_bytes(net, router), "train_s": seconds,
                     "evaluate_s": time.perf_counter() - start})
    units = [sum(int((owner == k).sum()) for owner in net._eidetic.ownership.owner.values()) for k in range(len(tests))]
    print(f"{name}: units frozen per task {units} of {sum(len(o) for o in net._eidetic.ownership.owner.values())}; "
          f"learnt in {seconds:.0f} s")
    rows.append({"benchmark": name, "model": rows[0]["model"], "router": "joint classifier (not continual)",
                 "oracle": rows[0]["oracle"], "routing": joint_routing(bench, model, settings, args.seed),
                 "routed": float("nan"), "bytes_per_task": 0})
    if name == "split-fashion-mnist":
        share = own_task_share(net, bench)
        print("Split Fashion-MNIST, share of each class routed to its own task (default router): "
              + ", ".join(f"{FASHION[c]} {share[c]:.2f}" for c in sorted(share)))
        rows[0]["own_task_share"] = share
    return rows


class Plain(nn.Module):
    """The body in plain PyTorch with one head: the baseline of the timings."""

    def __init__(self, model: str, shape: tuple[int, ...], features: int, classes: int) -> None:
        super().__init__()
        self.body = zoo.build_model(model, shape)
        self.head = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def cost(model: str, classes: int, args: argparse.Namespace) -> dict:
    """``predict``'s time over one plain forward pass, after ``args.tasks`` tasks of ``classes``
    classes (Permuted MNIST, labels modulo ``classes``), and that of the body and every head
    without a router."""
    data = datasets.load_mnist(args.mnist) if args.mnist else datasets.ImageSet(  # random images do for timing
        torch.rand(2000, 1, 28, 28), torch.arange(2000) % 10, torch.rand(256, 1, 28, 28), torch.arange(256) % 10, "")
    bench = datasets.permuted_tasks(data, args.tasks, seed=args.seed)
    torch.manual_seed(args.seed)
    shape = (3, 32, 32) if model == "convnet" else (1, 28, 28)
    net = zoo.build_model(model, shape)
    for k, train in enumerate(bench.train):
        x, y = (t[: args.cost_samples] for t in train.tensors)
        net.train_task(k, TensorDataset(padded(x) if model == "convnet" else x, y % classes), num_classes=classes,
                       epochs=1, batch_size=128, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), progress=False)
    net.eval()
    x = bench.test[0].tensors[0][: args.batch]
    x = padded(x) if model == "convnet" else x
    plain = Plain(model, shape, net.graph.feature_dim, classes).eval()

    def heads() -> list[torch.Tensor]:
        shared = net(x).flatten(1)
        return [net.heads.output(shared, k) for k in range(net.num_tasks)]

    projection = net._eidetic.routers.gaussian.projection
    with torch.no_grad():
        times = interleaved({"plain": lambda: plain(x), "heads": heads, "projection": lambda: projection(x),
                             "predict": lambda: net.predict(x)}, args.rounds)
    return {"model": f"{model} {'x'.join(map(str, shape))}", "tasks": net.num_tasks, "classes": classes * net.num_tasks,
            "batch": len(x), "plain_ms": times["plain"], "heads_ms": times["heads"], "predict_ms": times["predict"],
            "ratio": times["predict"] / times["plain"], "heads_ratio": times["heads"] / times["plain"],
            "projection_ratio": times["projection"] / times["plain"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", default=None, help="folder with the MNIST files")
    parser.add_argument("--fashion", default=None, help="folder with the Fashion-MNIST files")
    parser.add_argument("--only", choices=("quality", "cost"), default=None)
    parser.add_argument("--benchmarks", nargs="+", default=None,
                        help="of split-digits, split-mnist, split-mnist-3x32x32, split-fashion-mnist (default: those "
                             "whose data is given)")
    parser.add_argument("--tasks", type=int, default=10, help="tasks of the cost measurement (default: 10)")
    parser.add_argument("--classes", type=int, nargs="+", default=[2, 10],
                        help="classes per task of the cost measurement (default: 2 and 10)")
    parser.add_argument("--cost-samples", type=int, default=500, help="training inputs per task there")
    parser.add_argument("--batch", type=int, default=256, help="batch size of the timed predict (default: 256)")
    parser.add_argument("--rounds", type=int, default=200, help="timed rounds (default: 200)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.benchmarks or ["split-digits"] + (["split-mnist", "split-mnist-3x32x32"] if args.mnist else []) + (
        ["split-fashion-mnist"] if args.fashion else [])
    results = {"quality": [], "cost": []}
    if args.only != "cost":
        for name in names:
            results["quality"] += quality(name, args)
        table = [["benchmark", "model", "router", "oracle", "routing", "routed", "bytes/task"]]
        table += [[r["benchmark"], r["model"], r["router"], f"{r['oracle']:.4f}", f"{r['routing']:.4f}",
                   f"{r['routed']:.4f}" if r["routed"] == r["routed"] else "-", f"{r['bytes_per_task']:,}"]
                  for r in results["quality"]]
        print(text_table(table))
    if args.only != "quality":
        results["cost"] = [cost(model, classes, args) for model in ("mlp", "convnet") for classes in args.classes]
        table = [["model", "tasks", "classes", "plain ms", "predict ms", "predict/plain", "no router/plain",
                  "projection/plain"]]
        table += [[r["model"], str(r["tasks"]), str(r["classes"]), f"{r['plain_ms']:.3f}", f"{r['predict_ms']:.3f}",
                   f"{r['ratio']:.2f}x", f"{r['heads_ratio']:.2f}x", f"{r['projection_ratio']:.2f}x"]
                  for r in results["cost"]]
        print(text_table(table))
        print(f"predict (default router) at batch {args.batch} over one plain forward pass with one head (median of "
              f"{args.rounds} interleaved rounds, {args.threads} thread(s))")
    if args.json:
        write_json(args.json, args, results)


if __name__ == "__main__":
    main()
