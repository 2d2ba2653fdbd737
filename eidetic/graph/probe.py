"""Measure the unit table by perturbing units and watching which inputs move.

While probing, every layer is *clamped*: instead of computing, it returns a recorded output plus
an offset chosen by the probe. An offset therefore travels only through the operations between
layers (activations, additions, concatenation, pooling, reshapes) and stops at the inputs of the
next layers: the input positions that move are exactly the positions that read the perturbed
unit directly (columns of consumer layers, channels of pass-through layers such as BatchNorm and
depthwise convolutions, features of the body's output).

Codes tell units apart, so one forward pass probes every unit at once. In a *round*, every unit
of the perturbed layers gets its own code of ``m`` bits with exactly ``m // 2`` ones, and copy
``j`` of the example offsets the units whose code has bit ``j`` by a large ``D``. A position
read by one unit moves in exactly the copies of that unit's code. A position read by several
units (a residual sum) moves in the union of their codes, which has more than ``m // 2`` ones,
so the probe knows it cannot decode it there and resolves it in further rounds over fewer
layers: layers that may meet at an input (according to the autograd graph of one forward pass)
go to different rounds, and a position that still shows several codes when a single layer is
perturbed is read by several units of that layer together (a softmax, a normalisation or
attention across units), which is refused. Units of different layers that reach the same
position share one fate; the connected components of these contacts are the units.

Each copy holds three *operating points*: the recorded outputs, offset by ``+D``, and the same
outputs shifted far up (offset by ``-D``) and far down (offset by ``+D``). Every monotone
activation lets an offset through at one of them, and a unit gated by another unit
(``x * sigmoid(s)`` with ``x`` at zero in the example) is seen where the gate is open.

Since no layer is computed, a round costs one pass of the operations between layers over about
``log2(units)`` copies of one example, whatever the number of units; every comparison is made
against an unperturbed pass of the same batch size (kernels may round differently for different
batch sizes or positions in the batch). Every tensor the probe compares against is its own copy,
and outputs it hands out are refilled when ``forward`` changes them in place (``relu_``,
``x += y``, in-place activations).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from ..errors import GraphError, UnsupportedLayerError
from .layers import Layers, LayerSpec
from .table import FEATURES, UnitGraph, assemble

Forward = Callable[[torch.Tensor], torch.Tensor]

#: Upper bound on the elements of the baseline activations kept per pass; larger inputs are
#: probed in chunks of copies (a 3x224x224 ResNet-50 keeps a few hundred MB).
BUDGET = 2**26

#: Samples per copy: the operating points (recorded, high, low) and the sign of the offset at each.
POINTS = 3
_SIGNS = torch.tensor([1.0, -1.0, 1.0])


@dataclass
class _Layer:
    name: str
    module: nn.Module
    spec: LayerSpec
    index: int
    first: int  # global id of the layer's unit 0
    size: int
    role: str | None  # what its input positions are: "out" (pass-through), "in" (reader), None
    output: object = None  # recorded unperturbed output, one sample
    points: torch.Tensor | None = None  # the output at every operating point (tensor outputs)
    scale: float = 1.0
    reads: object = None  # the autograd node of its input in the ancestry pass
    sources: frozenset[int] = field(default_factory=frozenset)  # layers reaching its input


def _map_tensors(value, fn):
    """``value`` with ``fn`` applied to every tensor in it (tuples, lists, packed sequences)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, PackedSequence):
        return value._replace(data=fn(value.data))
    if isinstance(value, (tuple, list)):
        return type(value)(_map_tensors(v, fn) for v in value)
    return value


def _tensors(value) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    _map_tensors(value, lambda t: found.append(t) or t)
    return found


def _data(value) -> torch.Tensor | None:
    if isinstance(value, PackedSequence):
        return value.data
    return value if isinstance(value, torch.Tensor) else None


@contextlib.contextmanager
def _replaced(layers: list[_Layer], make: Callable[[_Layer, Callable], Callable]) -> Iterator[None]:
    """Replace each layer's ``forward`` by ``make(layer, original)`` for the duration."""
    saved = []
    for layer in layers:
        own = layer.module.__dict__.get("forward")
        saved.append((layer.module, own))
        object.__setattr__(layer.module, "forward", make(layer, layer.module.forward))
    try:
        yield
    finally:
        for module, own in saved:
            if own is None:
                object.__delattr__(module, "forward")
            else:
                object.__setattr__(module, "forward", own)


@functools.lru_cache(maxsize=8)
def _balanced(m: int) -> torch.Tensor:
    """Every ``m``-bit integer with exactly ``m // 2`` bits set, in increasing order."""
    values = torch.arange(2**m, dtype=torch.long)
    ones = torch.zeros_like(values)
    for bit in range(m):
        ones += (values >> bit) & 1
    return values[ones == m // 2]


def _codes(count: int) -> tuple[int, torch.Tensor]:
    """``(m, codes)``: ``count`` distinct ``m``-bit integers with exactly ``m // 2`` bits set,
    sorted, for the smallest such ``m``."""
    m = 2
    while math.comb(m, m // 2) < count:
        m += 1
    return m, _balanced(m)[:count]


class _Probe:
    """One measurement: the recorded pass, the ancestry of every input, and the rounds."""

    def __init__(self, forward: Forward, layers: Layers, example: torch.Tensor) -> None:
        self.forward = forward
        self.example = example[:1]
        self.all = [_Layer(n, m, s, i, 0, 0, None) for i, (n, (m, s)) in enumerate(layers.items())]
        self.edges: list[tuple[torch.Tensor, torch.Tensor]] = []  # (global unit ids, node ids)
        self.feature_sources: frozenset[int] = frozenset()

    # -- the unperturbed pass -------------------------------------------------------------------

    def record(self) -> None:
        """One real forward pass: every layer's output, and which layers the forward uses."""
        calls: dict[str, int] = {}

        def hook(layer: _Layer):
            def fn(module, args, output):
                calls[layer.name] = calls.get(layer.name, 0) + 1
                layer.output = _map_tensors(output, lambda t: t.detach().clone())
            return fn

        handles = [layer.module.register_forward_hook(hook(layer)) for layer in self.all]
        try:
            with torch.no_grad():
                features = self.forward(self.example.clone())
        finally:
            for h in handles:
                h.remove()
        if not isinstance(features, torch.Tensor):
            raise GraphError(f"forward() must return one tensor of features; it returned {type(features).__name__}")
        reused = [n for n, c in calls.items() if c > 1]
        if reused:
            raise UnsupportedLayerError(
                f"module '{reused[0]}' is called {calls[reused[0]]} times in one forward pass; eidetic needs "
                "each layer applied once (weight sharing would let a later task change an earlier task's "
                "units). Use separate layers."
            )
        self.feature_dim = features.flatten(1).shape[1]
        self.layers = [layer for layer in self.all if layer.name in calls]
        self.by_name = {layer.name: layer for layer in self.layers}
        first = 0
        for i, layer in enumerate(self.layers):
            if isinstance(layer.output, torch.Tensor) and (layer.output.dim() == 0 or layer.output.shape[0] != 1):
                raise GraphError(f"module '{layer.name}' returned a tensor of shape {tuple(layer.output.shape)} for "
                                 "one input sample; eidetic needs the batch in the first dimension of every "
                                 "layer's output (recurrent layers excepted)")
            layer.index, layer.first = i, first
            layer.size = layer.spec.unit_count(layer.module)
            first += layer.size
            layer.role = "out" if layer.spec.passthrough else ("in" if layer.spec.input_size(layer.module) else None)
            peak = max((float(t.abs().amax()) for t in _tensors(layer.output) if t.is_floating_point() and t.numel()),
                       default=0.0)
            layer.scale = 100.0 * (1.0 + peak) * (1.0 + i / (len(self.layers) + 1))  # distinct: no two cancel
            layer.points = _operating_points(layer.output, 1.0 + peak)
        self.units = first

    # -- which layers can meet at an input: the autograd graph of one pass ------------------------

    def ancestry(self) -> None:
        """For every input, the layers whose outputs reach it through operations between layers.

        Only a hint for scheduling the rounds (a wrong hint costs rounds, never correctness).
        """
        nodes: dict[torch.autograd.graph.Node, int] = {}
        features: list[torch.Tensor] = []

        def make(layer: _Layer, original):
            def fn(*args, **kwargs):
                data = _data(args[0]) if args else None
                layer.reads = data.grad_fn if data is not None else None

                def leaf(t: torch.Tensor) -> torch.Tensor:
                    if not t.is_floating_point():
                        return t.clone()
                    out = t.clone().requires_grad_().clone()
                    nodes[out.grad_fn] = layer.index
                    return out
                return _map_tensors(layer.output, leaf)
            return fn

        try:
            with _replaced(self.layers, make), torch.enable_grad():
                features.append(self.forward(self.example.clone()))
        except Exception:  # the hint is optional: an untraceable forward only costs more rounds
            return
        def reach(node) -> frozenset[int]:
            found, stack, seen = set(), [node], {node}
            while stack:
                current = stack.pop()
                if current is None:
                    continue
                if current in nodes:
                    found.add(nodes[current])
                    continue
                for parent, _ in current.next_functions:
                    if parent not in seen:
                        seen.add(parent)
                        stack.append(parent)
            return frozenset(found)

        for layer in self.layers:
            layer.sources = reach(layer.reads)
            layer.reads = None
        self.feature_sources = reach(features[0].grad_fn)

    # -- rounds -------------------------------------------------------------------------------------

    def readers(self) -> list[tuple[str, _Layer | None]]:
        """``(name, layer)`` of every observed input: readers, pass-throughs and the features."""
        return [(layer.name, layer) for layer in self.layers if layer.role] + [(FEATURES, None)]

    def baseline(self) -> None:
        """The unperturbed pass at the batch size of the perturbed ones: what they compare with."""
        per_copy = POINTS * sum(t.numel() for layer in self.layers for t in _tensors(layer.output))
        self.m, _ = _codes(self.units)
        self.batch = max(1, min(self.m, BUDGET // max(1, 2 * per_copy)))  # copies per pass
        self.clamp: dict[str, object] = {}
        self.inputs: dict[str, object] = {}
        self.lent: dict[str, int] = {}
        self.mutated: set[str] = set()

        def make(layer: _Layer, original):
            def fn(*args, **kwargs):
                self.inputs[layer.name] = _map_tensors(args[0], lambda t: t.detach().clone()) if args else None
                if layer.points is None:  # a tuple output (a recurrent layer) is computed, on unperturbed inputs
                    self.clamp[layer.name] = _map_tensors(original(*args, **kwargs), _copy)
                else:
                    self._fill(layer)
                return self._lend(layer)
            return fn

        with _replaced(self.layers, make), torch.no_grad():
            self.features = self.forward(self._batch_example()).flatten(1).clone()
        self._take_back()

    def _fill(self, layer: _Layer) -> None:
        self.clamp[layer.name] = layer.points.repeat(self.batch, *([1] * (layer.points.dim() - 1)))

    def _lend(self, layer: _Layer):
        """The unperturbed output of ``layer`` for one pass: the kept tensor itself, unless the
        network has been seen to change it in place (then a copy)."""
        clamp = self.clamp[layer.name]
        if layer.points is None or layer.name in self.mutated:
            return _map_tensors(clamp, _copy)
        self.lent[layer.name] = clamp._version
        return clamp

    def _take_back(self) -> None:
        """Refill every lent output that the pass changed in place, and copy it from now on."""
        for name, version in self.lent.items():
            if self.clamp[name]._version != version:
                self.mutated.add(name)
                self._fill(self.by_name[name])
        self.lent = {}

    def _batch_example(self) -> torch.Tensor:
        return self.example.repeat(self.batch * POINTS, *([1] * (self.example.dim() - 1)))

    def round(self, perturbed: list[_Layer], observe: dict[str, torch.Tensor] | None):
        """Perturb ``perturbed`` with their codes and decode ``observe`` (``{input: positions}``,
        ``None`` for every position of every input). Returns ``{input: collided positions}``."""
        m, codes = _codes(sum(layer.size for layer in perturbed))
        ids = torch.cat([torch.arange(layer.first, layer.first + layer.size) for layer in perturbed])
        offsets, start = {}, 0
        for layer in perturbed:
            bits = ((codes[start:start + layer.size, None] >> torch.arange(m)) & 1).t().float()
            offsets[layer.name] = bits * layer.scale
            start += layer.size
        watched = {name for name, _ in self.readers()} if observe is None else set(observe)
        moved: dict[str, list[torch.Tensor]] = {name: [] for name in watched}
        for first in range(0, m, self.batch):
            self._pass(offsets, first, watched, moved)
        collided = {}
        for name, _ in self.readers():
            if name not in watched:
                continue
            changes = torch.cat(moved[name])[:m]
            positions = torch.arange(changes.shape[1]) if observe is None else observe[name]
            bits = changes[:, positions]
            signature = (bits.long() << torch.arange(m)[:, None]).sum(dim=0)
            weight = bits.sum(dim=0)
            slot = torch.searchsorted(codes, signature).clamp(max=len(codes) - 1)
            single = (weight == m // 2) & (codes[slot] == signature)
            if single.any():
                self.edges.append((ids[slot[single]], self._nodes(name, positions[single])))
            bad = (weight > 0) & ~single
            if bad.any():
                collided[name] = positions[bad]
        return collided

    def _pass(self, offsets: dict[str, torch.Tensor], first: int, watched: set[str],
              moved: dict[str, list[torch.Tensor]]) -> None:
        batch = self.batch

        def make(layer: _Layer, original):
            def fn(*args, **kwargs):
                if layer.name in watched:
                    moved[layer.name].append(layer.spec.input_changes(args[0], self.inputs[layer.name], batch).cpu())
                clamp, rows = self.clamp[layer.name], offsets.get(layer.name)
                if rows is None:
                    return self._lend(layer)
                chunk = torch.zeros(batch, layer.size)
                part = rows[first: first + batch]
                chunk[: len(part)] = part
                signed = (chunk[:, None, :] * _SIGNS[:, None]).reshape(batch * POINTS, layer.size)
                return layer.spec.perturb(clamp, signed.to(_device_of(clamp)))
            return fn

        with _replaced(self.layers, make), torch.no_grad():
            features = self.forward(self._batch_example()).flatten(1)
        self._take_back()
        if FEATURES in watched:
            moved[FEATURES].append((features != self.features).view(batch, -1, features.shape[1]).any(dim=1).cpu())

    # -- resolving positions read by several units ----------------------------------------------------

    def resolve(self, perturbed: list[_Layer], collided: dict[str, torch.Tensor]) -> None:
        """Split ``perturbed`` until every position in ``collided`` shows one code per round."""
        if len(perturbed) == 1:
            self._refuse_mixing(perturbed[0], collided)
        for part in self._split(perturbed, collided):
            again = self.round(part, collided)
            if again:
                self.resolve(part, again)

    def _split(self, perturbed: list[_Layer], collided: dict[str, torch.Tensor]) -> list[list[_Layer]]:
        """Layers that may reach one collided input go to different parts (greedy colouring);
        with no such hint, two halves."""
        members = {layer.index for layer in perturbed}
        cliques = [(self.feature_sources if name == FEATURES else self.by_name[name].sources) & members
                   for name in collided]
        colour: dict[int, int] = {}
        for clique in sorted(cliques, key=len, reverse=True):
            for index in sorted(clique):
                if index not in colour:
                    taken = {colour[j] for other in cliques if index in other for j in other if j in colour}
                    colour[index] = min(set(range(len(taken) + 1)) - taken)
        parts: dict[int, list[_Layer]] = {}
        for layer in perturbed:
            parts.setdefault(colour.get(layer.index, 0), []).append(layer)
        if len(parts) > 1:
            return list(parts.values())
        half = len(perturbed) // 2
        return [perturbed[:half], perturbed[half:]]

    def _refuse_mixing(self, layer: _Layer, collided: dict[str, torch.Tensor]) -> None:
        readers = sorted(collided)
        raise UnsupportedLayerError(
            f"units of module '{layer.name}' are mixed together before they reach {readers} (for example by a "
            "softmax, a normalisation or attention across units), so they cannot be frozen one by one. Mix "
            "units only inside supported layers."
        )

    # -- nodes and assembly ---------------------------------------------------------------------------

    def blocks(self) -> None:
        """Node ids: every layer's output positions (its units), then every input's positions."""
        start = self.units
        self.in_first: dict[str, int] = {}
        self.in_size: dict[str, int] = {}
        for name, layer in self.readers():
            if layer is not None and layer.role == "out":
                continue
            size = self.feature_dim if layer is None else layer.spec.input_size(layer.module)
            self.in_first[name], self.in_size[name] = start, size
            start += size
        self.nodes = start

    def _nodes(self, name: str, positions: torch.Tensor) -> torch.Tensor:
        layer = self.by_name.get(name)
        if layer is not None and layer.role == "out":
            return positions + layer.first
        if int(positions.max()) >= self.in_size[name]:
            raise GraphError(f"module '{name}' reads input position {int(positions.max())}, but its LayerSpec "
                             f"declares {self.in_size[name]} input positions")
        return positions + self.in_first[name]

    def internal(self) -> None:
        for layer in self.layers:
            pairs = layer.spec.internal_slots(layer.module)
            if pairs:
                unit, position = torch.tensor(pairs, dtype=torch.long).t()
                self.edges.append((unit + layer.first, self._nodes(layer.name, position)))

    def table(self) -> UnitGraph:
        return assemble(
            [(layer.name, layer.spec, layer.first, layer.size) for layer in self.layers],
            {name: (first, self.in_size[name]) for name, first in self.in_first.items()},
            self.edges, self.nodes, self.feature_dim,
        )


def _copy(t: torch.Tensor) -> torch.Tensor:
    """A fresh tensor equal to ``t``, made the way a perturbed output is (``t + 0``)."""
    return t + 0 if t.is_floating_point() else t.clone()


def _operating_points(output, shift: float) -> torch.Tensor | None:
    """The :data:`POINTS` samples a tensor output is probed at: as recorded, and moved by more than
    its own magnitude up and down. ``None`` for outputs that are not one tensor."""
    if not isinstance(output, torch.Tensor):
        return None
    if not output.is_floating_point():
        return output.repeat(POINTS, *([1] * (output.dim() - 1)))
    up = output.abs() + shift
    return _copy(torch.cat([output, up, -up]))  # zeros as a perturbed pass makes them (x + 0)


def _device_of(value) -> torch.device:
    return _tensors(value)[0].device


def measure(forward: Forward, layers: Layers, example: torch.Tensor) -> UnitGraph:
    """Measure the unit table of ``forward`` by perturbation (see the module docstring).

    Args:
        forward: the body's forward function, returning features.
        layers: ``{name: (module, spec)}`` for every layer of the body, in module order.
        example: a batch of example inputs (the first sample is used).
    """
    probe = _Probe(forward, layers, example)
    probe.record()
    probe.ancestry()
    probe.blocks()
    probe.baseline()
    collided = probe.round(probe.layers, None)
    if collided:
        probe.resolve(probe.layers, collided)
    probe.internal()
    return probe.table()
