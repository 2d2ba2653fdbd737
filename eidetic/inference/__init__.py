"""Inference: task heads, routing without task ids, and the exemplar memory.

* ``heads``: one output layer per task, or one shared head (single-head).
* ``routing``: routers that pick the task of an input from one pass of the body
  (``gaussian`` and ``discriminant`` hold the data-free ones).
* ``memory``: the exemplars kept to fit the learned router.
* ``predict``: the network's routed prediction, router fitting, and what a frozen task leaves
  the routers (verbs over a network).
* ``export``: a plain ``torch.export`` module with only the units the exported tasks read.
"""
