"""What bringing a torchvision network costs: discovery, validation and checkpoint loading.

For each of torchvision's classification models (``weights=None``) as the body of an
:class:`eidetic.Wrapped` network, one run measures:

* ``setup``: discovering and measuring the unit table (``net.setup(example)``);
* ``validate``: measuring it again and comparing (``net.validate_graph()``);
* ``load``: ``load_state_dict`` of the set-up network's state into a fresh instance (which
  discovers its table again);
* torch-pruning's ``DependencyGraph().build_dependency`` plus ``get_all_groups`` on the same
  model and input, the baseline: ``setup`` is reported as a multiple of it;
* one training step (forward, backward, SGD) of the plain model at batch 32, to put ``load`` in
  proportion (an epoch of CIFAR-10 at batch 32 is 1563 steps);
* the peak resident memory added by the first ``setup`` of the model (Linux; memory freed by an
  earlier model may be reused, so run one model per process for a clean figure).

Every time is the best of ``--repeat`` runs after a warm-up, without building the model. Run::

    python benchmarks/setup.py                      # every model at 3x32x32, about 3 minutes
    python benchmarks/setup.py --models resnet50 --size 224 --repeat 1
    python benchmarks/setup.py --json setup.json
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import eidetic

from common import memory_kib, reset_peak, text_table, write_json

MODELS = ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "vgg11_bn", "vgg16_bn", "googlenet",
          "inception_v3", "densenet121", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
          "efficientnet_b0", "mnasnet0_5", "shufflenet_v2_x0_5", "squeezenet1_1", "regnet_x_400mf",
          "regnet_y_400mf"]
MIN_SIZE = {"inception_v3": 75}  # inception_v3 needs at least 75x75 inputs


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    extra = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    return getattr(torchvision.models, name)(weights=None, **extra)


def best(fn, repeat: int, fresh=None) -> float:
    """The shortest of ``repeat`` timed calls after a warm-up; ``fn(fresh())`` if ``fresh`` is given,
    with ``fresh()`` (building a new model) outside the timing."""
    times = []
    for i in range(repeat + 1):
        arg = () if fresh is None else (fresh(),)
        start = time.perf_counter()
        fn(*arg)
        if i:
            times.append(time.perf_counter() - start)
    return min(times)


def torch_pruning_seconds(model: nn.Module, x: torch.Tensor, repeat: int) -> float | None:
    import torch_pruning as tp

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
            list(graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)))

    try:
        return best(run, repeat)
    except Exception as exc:  # torch-pruning 1.6.1 fails on some models (shufflenet's channel split)
        print(f"  torch-pruning failed: {type(exc).__name__}: {exc}")
        return None


def step_seconds(model: nn.Module, size: int, repeat: int) -> float:
    x, y = torch.randn(32, 3, size, size), torch.randint(0, 10, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()

    def run():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x)[:, :10], y).backward()
        opt.step()

    return best(run, repeat)


def measure(name: str, size: int, repeat: int) -> dict:
    x = torch.randn(2, 3, size, size)
    net = eidetic.Wrapped(build(name))
    reset_peak()
    before = memory_kib()
    graph = net.setup(x)
    peak = memory_kib()["peak"]
    tp_s = torch_pruning_seconds(build(name).eval(), x[:1], repeat)
    setup_s = best(lambda fresh: fresh.setup(x), repeat, fresh=lambda: eidetic.Wrapped(build(name)))
    validate_s = best(net.validate_graph, repeat)
    state = net.state_dict()
    load_s = best(lambda fresh: fresh.load_state_dict(state), repeat, fresh=lambda: eidetic.Wrapped(build(name)))
    return {
        "model": name, "input": f"3x{size}x{size}", "units": sum(g.size for g in graph), "groups": len(graph),
        "setup_s": setup_s, "validate_s": validate_s, "load_s": load_s,
        "torch_pruning_s": tp_s, "step_s": step_seconds(build(name), size, repeat),
        "setup_peak_mib": None if peak is None else (peak - before["now"]) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS, help="torchvision model names (default: all)")
    parser.add_argument("--size", type=int, default=32, help="input height and width (default: 32)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per figure, best kept (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        rows.append(measure(name, max(args.size, MIN_SIZE.get(name, 0)), args.repeat))
        r = rows[-1]
        print(f"{name}: setup {r['setup_s']:.3f}s, validate {r['validate_s']:.3f}s, load {r['load_s']:.3f}s, "
              f"torch-pruning {r['torch_pruning_s'] or float('nan'):.3f}s", flush=True)
    lines = [["model", "input", "units", "setup s", "torch-pruning s", "setup / tp", "validate s", "load s",
              "load / step", "setup +MiB"]]
    for r in rows:
        tp_s = r["torch_pruning_s"]
        lines.append([r["model"], r["input"], str(r["units"]), f"{r['setup_s']:.3f}",
                      "failed" if tp_s is None else f"{tp_s:.3f}",
                      "-" if tp_s is None else f"{r['setup_s'] / tp_s:.1f}x", f"{r['validate_s']:.3f}",
                      f"{r['load_s']:.3f}", f"{r['load_s'] / r['step_s']:.1f}",
                      "-" if r["setup_peak_mib"] is None else f"{r['setup_peak_mib']:.0f}"])
    print(f"\nbest of {args.repeat}, {args.threads} thread(s), torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}; setup and load exclude building the model; "
          "load / step: load time in plain training steps at batch 32")
    print(text_table(lines))
    if args.json:
        write_json(args.json, args, rows)


if __name__ == "__main__":
    main()
