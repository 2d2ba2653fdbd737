"""Bridges to other continual-learning frameworks, each an optional extra.

Nothing here is imported by ``import eidetic``; import the bridge you need, with its framework
installed:

* :mod:`eidetic.integrations.avalanche` (``pip install "eidetic[avalanche]"``): Avalanche
  benchmarks as eidetic tasks, and :class:`~eidetic.integrations.avalanche.EideticStrategy`, an
  Avalanche strategy evaluated by Avalanche's own plugins and loggers.
"""
