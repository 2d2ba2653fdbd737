"""Methods built on the base class as mixins: ``class Net(Mixin, eidetic.ContinualNetwork)``.

A mixin changes how a task is learned through the base's extension points, not by copying its
training loop: ``_begin_task`` (set the task's masks), ``_learn`` (train and prune, with
``plan.build()`` for a fresh session after a widening), widening (:meth:`ContinualNetwork.widen`
between tasks, ``_widen`` and ``_undo_widening`` inside a task, which keep the task's
transaction) and task masks (``eidetic.guarantee.masks``).

* :mod:`.cpg`: :class:`CPGMixin`, compacting, picking and growing (Hung et al., 2019).
* :mod:`.picking`: learnable binary masks over the frozen weights a task reads.
* :mod:`.growing`: growth steps within a parameter budget.
"""
