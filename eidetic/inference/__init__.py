"""Inference: task heads, routing without task ids, and the exemplar memory.

* ``heads``: one output layer per task, or one shared head (single-head).
* ``routing``: routers that pick the task of an input from one pass of the body.
* ``memory``: the exemplars kept to fit the learned router.
* ``predict``: the network's routed prediction, router fitting, and what a frozen task leaves
  the routers.
"""
