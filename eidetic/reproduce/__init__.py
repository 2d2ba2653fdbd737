"""``eidetic reproduce``: the seed papers' experiments, one command each.

:data:`EXPERIMENTS` lists them (Eidetic Learning's Tables 3, 4, 5, 7 and 8, CPG's CIFAR-100 in 20
superclass tasks, CL-LSG's CIFAR-100 superclasses and CIFAR-100 Split), each with its paper
settings and where they come from (:mod:`~eidetic.reproduce.experiments`). :func:`reproduce`
runs one and writes the run's results with the paper's figures next to ours, task by task
(:mod:`~eidetic.reproduce.report`).

Example::

    from eidetic.reproduce import EXPERIMENTS, reproduce

    print(list(EXPERIMENTS))
    done = reproduce("cpg-cifar100-superclasses", "data", "runs/cpg", epochs=1, tasks=2, width=8)
"""

from .experiments import EXPERIMENTS, Experiment, Figures, Setting
from .report import compare, listing, markdown
from .runner import COMPARISON, Reproduction, experiment, reproduce

__all__ = ["COMPARISON", "EXPERIMENTS", "Experiment", "Figures", "Reproduction", "Setting", "compare", "experiment",
           "listing", "markdown", "reproduce"]
