"""Methods built on the base class as mixins: ``class Net(Mixin, eidetic.ContinualNetwork)``.

A mixin changes how a task is learned through the base's extension points, not by copying its
training loop: widening (:meth:`ContinualNetwork.widen` between tasks, ``_widen`` inside a task,
which keeps the task's transaction) and task masks (``eidetic.guarantee.masks``), on top of the
phases of ``train_task``.
"""
