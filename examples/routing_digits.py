"""Task-ID-free inference on Split digits: oracle, routing and routed accuracy per task.

Five two-class tasks from scikit-learn's bundled digits (0v1, 2v3, ..., 8v9; no download) are
learnt one after another. Then every test image is classified *without* its task id: a router
picks the task from one pass of the body, and that task's head picks the class. For each
router the script prints, per task, the oracle accuracy (task id given), the routing accuracy
(the right task picked) and the routed accuracy (right task and right class).

Run::

    python examples/routing_digits.py              # about ten seconds on one CPU core
    python examples/routing_digits.py --memory 20  # fewer exemplars for the learned router
"""

from __future__ import annotations

import argparse

import torch
from split_digits import MLP, TASKS, split_tasks

import eidetic

ROUTERS = ("gaussian", "learned", "discriminant", "statistics", "energy", "max_softmax")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per task (default: 5)")
    parser.add_argument("--memory", type=int, default=200, help="exemplars kept per task (default: 200)")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="pruning tolerance; higher prunes more and leaves routers fewer features (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    tasks = [eidetic.Task(train, test, num_classes=2) for train, test in split_tasks(args.seed)]
    net = MLP()
    results = eidetic.run_tasks(
        net, tasks, batch_size=32, epochs=args.epochs, memory=args.memory, progress=False,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2),
        pruning=eidetic.Pruning(method="l2", step=0.2, tolerance=args.tolerance),
    )
    print(results, end="\n\n")
    tests = [task.test for task in tasks]
    for router in ROUTERS:
        evaluation = eidetic.evaluate(net, tests, batch_size=256, router=router)
        print(f"router: {router}")
        print("  task    oracle  routing  routed")
        for t, (a, b) in zip(evaluation.tasks, TASKS):
            print(f"  {a}v{b}   {t.oracle:8.4f} {t.routing:8.4f} {t.routed:7.4f}")
        print(f"  mean  {evaluation.oracle:8.4f} {evaluation.routing:8.4f} {evaluation.routed:7.4f}\n")
    print(net.capacity())


if __name__ == "__main__":
    main()
