"""The guarantee: every finished task's outputs stay bitwise identical.

Parts (over layers, a unit table and owners):

* ``ownership``: one owner per unit (FREE or the task that froze it) and the pruning marks.
* ``slices``: which entries of which tensors a set of units produces or reads.
* ``guard``: frozen copies written back after every optimizer step; pruned entries held at 0.
* ``norm``: frozen BatchNorm channels normalise with their frozen statistics, in either mode.
* ``masks``: per-task masks over parameters, applied only in that task's pass; released entries.
* ``eras``: widened layers' old shapes, replayed so that frozen units keep their bits.
* ``snapshot``: cheap copies of what training can change, for rollback.
* ``phases``: freezing (with the cut) and recycling the units of layers.
* ``resizing``, ``narrowing``: growing layers and mapping units to their new positions; giving
  back new units.
* ``layout``: the element-wise functions whose rounding depends on a tensor's layout.

Verbs (over a network, see :class:`eidetic.state.Network`):

* ``lifecycle``: the network's guard, freezing its open task, recycling, task masks.
* ``widening``: widening a network, undoing it, keeping some of its new units.
* ``transaction``: a failing ``train_task`` or ``prune_until`` leaves the network as it was.
"""
