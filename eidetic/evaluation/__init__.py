"""Measuring a continual learner: the accuracy matrix, capacity and plots.

* ``runs``: :func:`evaluate` and :func:`run_tasks`, the accuracy matrix and its summaries.
* ``capacity``: free, owned and reused units per layer and task.
* ``plots``: accuracy matrices and capacity pictures (matplotlib, optional).
"""
