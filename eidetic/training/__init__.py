"""Training one task: the epoch loop, the pruning loop and the importance scores.

* ``task``: ``train_task`` and ``prune_until`` over a network (the verbs the facade binds).
* ``session``: :class:`TaskSession`, the training loop of one task (losses, metrics, callbacks).
* ``pruning``: iterative and graceful structured pruning of the task's own units.
* ``scoring``: importance methods (L1, L2, Taylor, activation, random) and their registry.
* ``data``: loaders and batches from the user's data.
* ``distributed``: all-reduce and broadcast under ``torch.distributed``.
* ``report``: what ``train_task`` returns (epochs, pruning steps, units, timings).
"""
