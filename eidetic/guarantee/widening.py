"""Widening a network: more free units in chosen unit groups, every finished task bitwise.

This module drives the parts, on a whole network: :mod:`.resizing` grows the layers and maps the
old units to their new positions, :mod:`.eras` keeps the old shapes that frozen units were
computed at, :mod:`.narrowing` gives back units a task could not use, and the heads, masks and
routers follow the new feature positions. Each widening is checked on the finished tasks'
outputs before it is kept (any change, in any bit, undoes it), and inside a task it joins the
task's transaction: a :class:`Widening` record puts everything back.

* :func:`widen`: widen, between tasks or inside the open one;
* :func:`undo`: undo the open task's last widening;
* :func:`keep_new_units`: keep some of the units the open task's last widening added.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from ..errors import GraphError, TaskError
from ..graph import FEATURES, discover
from ..state import Network, example, features, require_graph
from . import phases
from .eras import Era, paused
from .layout import LayoutSensitiveCalls, moved_calls
from .lifecycle import make_guard, row_owner
from .narrowing import narrow_maps, new_units, shrunk
from .resizing import Resized, SavedModule, check_request, position_map, resize_body, touched
from .slices import out_mask

_SENSITIVE = (
    "widening {added} would reshape the input of {calls} in the forward pass, whose CPU kernel rounds an element "
    "differently depending on where it sits in the tensor, so a finished task's outputs could change in their last "
    "bits on some batches; nothing was changed. Use a ReLU-family, tanh or hardswish activation after the layers you "
    "widen, or do not widen that group.")
_MOVED = (
    "widening {added} would change the outputs of task(s) {moved} in their last bits, so nothing was changed. The "
    "usual cause is an element-wise function whose CPU kernel rounds an element differently depending on where it "
    "sits in the tensor (sigmoid, SiLU, ELU: their vectorised and scalar paths differ), applied to a widened layer's "
    "output. Use a ReLU-family, tanh or GELU activation there, or do not widen that group.")


class Widening:
    """What a widening changes, to put back if it (or the task around it) fails."""

    def __init__(self, net: Network) -> None:
        state = net._eidetic
        self.net = net
        self.graph, self.layers, self.ownership = state.graph, state.layers, state.ownership
        self.eras = state.eras.copy()
        self.masks = state.masks.checkpoint()
        self.routers = state.routers.state()
        heads = [net.heads, *net.heads]
        self.modules = [SavedModule.of(m) for m, _ in state.layers.values()] + [SavedModule.of(h) for h in heads]
        self.unit_maps: dict[str, torch.Tensor] = {}  # filled in by the widening: see Resized
        self.layouts: dict[str, list] = {}

    def restore(self) -> None:
        state = self.net._eidetic
        for saved in self.modules:
            saved.restore()
        state.graph, state.layers, state.ownership = self.graph, self.layers, self.ownership
        state.eras.records = self.eras
        state.masks.rollback(self.masks)
        state.routers.load(self.routers)
        make_guard(self.net)


def widen(net: Network, units: dict[str, int], *, recycle: bool = False) -> dict[str, int]:
    """Widen the groups of ``units`` (``{group key: units to add}``); returns every group's size.

    Between tasks, or inside the open task, where the widening joins the task's transaction (a
    failing task undoes it). With ``recycle=False`` only the new units are initialised, and
    nothing the open task computes changes (the new units reach the old rows through zero
    columns); with ``recycle=True`` every free unit is re-initialised."""
    state = net._eidetic
    added = check_request(require_graph(net), units)
    if added:
        record = Widening(net)
        try:
            _checked_resize(net, added, record, recycle)
        except BaseException:
            record.restore()
            raise
        current = {id(p) for p in net.parameters()}
        for saved in record.modules:
            for param in saved.parameters.values():
                if param is not None and id(param) not in current:
                    state.replaced[id(param)] = weakref.ref(param)
        if state.undo is not None:
            state.undo.append(record)
    return {g.key: g.size for g in state.graph}


def _checked_resize(net: Network, added: dict[str, int], record: Widening, recycle: bool) -> None:
    """Resize, then refuse (raising) if any finished task's outputs moved or could move."""
    state = net._eidetic
    with LayoutSensitiveCalls() as calls_before:
        before = _finished_outputs(net)
    resized = _resize(net, added)
    record.unit_maps, record.layouts = resized.unit_maps, resized.layouts
    if recycle:
        phases.recycle(state.layers, state.graph, state.ownership)
    make_guard(net)
    with LayoutSensitiveCalls() as calls_after:
        after = _finished_outputs(net)
    sensitive = moved_calls(calls_before.seen, calls_after.seen)
    if sensitive:
        raise GraphError(_SENSITIVE.format(added=added, calls="; ".join(sensitive)))
    moved = [k for k, (a, b) in enumerate(zip(before, after)) if not torch.equal(a, b)]
    if moved:
        raise GraphError(_MOVED.format(added=added, moved=moved))


def _resize(net: Network, added: dict[str, int]) -> Resized:
    """Resize the layers, record the eras of their frozen units, and move the state along."""
    state = net._eidetic
    graph, layers = state.graph, state.layers
    names = [n for n in touched(graph, added) if layers[n][1].input_size(layers[n][0])]  # layers reading units
    frozen = state.ownership.masks("frozen")
    eras = {n: out_mask(graph, n, frozen, layers[n][1].unit_count(layers[n][0])) for n in names}
    with paused():
        resized = resize_body(layers, graph, state.ownership, added,
                              lambda: discover(net, net.forward, example(net), exclude=[net.heads]))
    for name in names:
        _record_era(net, name, resized, eras[name])
    state.graph, state.layers, state.ownership = resized.graph, resized.layers, resized.ownership
    for name, layout in resized.layouts.items():
        state.masks.widen(name, layout, lambda n: row_owner(net, n))
    net.heads.widen(resized.features, resized.graph.feature_dim, state.frozen_tasks)
    state.routers.widen(resized.features, resized.graph.feature_dim)
    phases.reinitialize(state.layers, state.graph, resized.new_units)
    return resized


def _record_era(net: Network, name: str, resized: Resized, frozen: torch.Tensor) -> None:
    """Layer ``name``'s earlier eras follow its new layout, and a new era keeps the shape its
    ``frozen`` units were computed at (replayed layers: also the shape masked tasks that ended at
    it were computed at). A layer computed in blocks records an era only for units frozen since
    its last one: without them, the widening's units join the present block."""
    state = net._eidetic
    records = state.eras.records.get(name, [])
    _, spec = state.layers[name]
    blocks = spec.additive and (not records or records[0].blocks)
    covered = state.eras.covered(name)
    since = frozen.clone()
    if covered is not None:
        since[covered] = False
    for era in records:
        era.follow(resized.out_maps[name], resized.in_maps[name])
    tasks = (state.eras.first_task(name), state.frozen_tasks)
    if not (since.any() or (not blocks and any(state.masks.has(k) for k in range(*tasks)))):
        return
    out_map, in_map = resized.out_maps[name], resized.in_maps[name]
    sizes = {a: resized.saved[name].attributes[a] for a in spec.size_names()}
    if blocks:
        era = Era(sizes, out_map, in_map, frozen.nonzero().flatten(), tasks, open=out_map[~frozen])
    else:
        era = Era(sizes, out_map, in_map, since.nonzero().flatten(), tasks)
    state.eras.add(name, era)


def _finished_outputs(net: Network) -> list[torch.Tensor]:
    """Every finished task's logits on the synthetic example, in evaluation mode."""
    if not net._eidetic.frozen_tasks:
        return []
    training = net.training
    net.eval()
    try:
        with torch.no_grad():
            x = example(net)
            return [net.heads.output(features(net, x, k), k) for k in range(net._eidetic.frozen_tasks)]
    finally:
        net.train(training)


def undo(net: Network) -> None:
    """Undo the last widening of the open task: a mixin's growth step over its budget, or a
    return to an earlier, better attempt."""
    state = net._eidetic
    if not state.undo:
        raise TaskError("no widening of the open task to undo")
    state.undo.pop().restore()
    state.restored(net.parameters())


def keep_new_units(net: Network, kept: dict[str, torch.Tensor]) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """Keep, of the units that the open task's last widening added, those that ``kept`` selects
    (``{group: mask over the group's units}``), and give the others back: the network ends as
    wide as if it had been widened by the kept units only, holding the wide network's values on
    them (see :mod:`.narrowing`). The dropped units must not reach the open task's outputs (a
    mixin's gate at exactly 0). Returns a function narrowing a tensor laid out as body tensor
    ``"module.tensor"`` was, for a mixin's per-entry state."""
    state = net._eidetic
    if not state.undo:
        raise TaskError("no widening of the open task to narrow")
    to_wide, wide_graph = state.undo[-1].unit_maps, state.graph
    names = touched(wide_graph, kept)  # the others kept their tensors through the widening
    wide = {name: (spec.unit_count(m), spec.input_size(m), {t: getattr(m, t).detach().clone()
                                                             for t in spec.tensor_names()})
            for name, (m, spec) in state.layers.items() if name in names}
    head = net.heads.head(net.num_tasks - 1)
    wide_head = head.weight.detach().clone()
    counts = {key: int((mask & new_units(wide_graph[key].size, to_wide[key])).sum()) for key, mask in kept.items()}
    undo(net)
    to_narrow = {}
    if any(counts.values()):
        widen(net, counts)
        to_narrow = state.undo[-1].unit_maps
    maps = narrow_maps(state.graph, wide_graph, to_wide, to_narrow, kept)
    layouts = _narrow_layers(net, wide, maps, wide_graph)
    with torch.no_grad():
        positions = position_map(state.graph, wide_graph, FEATURES, maps, state.graph.feature_dim,
                                 wide_graph.feature_dim, "ins")
        head.weight.copy_(wide_head[:, positions.to(wide_head.device)])
    make_guard(net)
    return lambda name, tensor: shrunk(tensor, layouts[name]) if name in layouts else tensor


@torch.no_grad()
def _narrow_layers(net: Network, wide: dict, maps: dict[str, torch.Tensor], wide_graph) -> dict[str, list]:
    """Fill the narrow layers from the ``wide`` ones' tensors along ``maps``; returns each
    tensor's layout."""
    state = net._eidetic
    layouts = {}
    for name, (units, inputs, tensors) in wide.items():
        module, spec = state.layers[name]
        out_map = position_map(state.graph, wide_graph, name, maps, spec.unit_count(module), units, "outs")
        in_map = position_map(state.graph, wide_graph, name, maps, spec.input_size(module), inputs, "ins")
        for tensor_name, value in tensors.items():
            layout = layouts[f"{name}.{tensor_name}"] = spec.grown_layout(tensor_name, out_map, units, in_map, inputs)
            getattr(module, tensor_name).copy_(shrunk(value, layout))
    return layouts
