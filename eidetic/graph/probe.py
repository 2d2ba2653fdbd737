"""Measure the unit table by perturbing units and watching which inputs move.

For every layer ``P`` and every output unit ``c`` of ``P``, the probe adds a large offset to
unit ``c`` of ``P``'s output (once with each sign) while every *other* producing layer has its
output held at the unperturbed value. The input positions that change are then exactly the
positions that read unit ``c`` directly: columns of consumer layers, channels of pass-through
layers (BatchNorm, depthwise convolutions) and features of the body's output. Units of
different layers that reach the same position are combined by the network (a residual sum,
a gate) and must share one fate; a union-find over these contacts gives the units.

Each unit is probed in its own copy of the example input, so one forward pass covers a whole
chunk of units, and every comparison is made against an unperturbed pass of the same batch
size (kernels may round differently for different batch sizes).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch

from ..errors import GraphError, UnsupportedLayerError
from .layers import Layers
from .table import FEATURES, UnitGraph

Node = tuple[str, str, int]  # (role, module, position)


class _UnionFind:
    def __init__(self) -> None:
        self.ids: dict[Node, int] = {}
        self.parent: list[int] = []

    def add(self, node: Node) -> int:
        if node not in self.ids:
            self.ids[node] = len(self.parent)
            self.parent.append(len(self.parent))
        return self.ids[node]

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: Node, b: Node) -> None:
        ra, rb = self.find(self.add(a)), self.find(self.add(b))
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def components(self) -> dict[int, list[Node]]:
        comps: dict[int, list[Node]] = defaultdict(list)
        for node, i in self.ids.items():
            comps[self.find(i)].append(node)
        return comps


def _feature_changes(now: torch.Tensor, base: torch.Tensor, copies: int) -> torch.Tensor:
    """``(copies, features)``: which features of the body's output moved in each copy."""
    return (now != base).reshape(copies, -1, now.shape[-1]).any(dim=1)


class _Recorder:
    """Forward hooks that record, clamp or perturb layer activations for one pass."""

    def __init__(self, layers: Layers) -> None:
        self.layers = layers
        self.inputs: dict[str, object] = {}
        self.outputs: dict[str, object] = {}
        self.calls: dict[str, int] = defaultdict(int)
        self.clamp: dict[str, object] | None = None
        self.perturb: tuple[str, list[int], int] | None = None  # (layer, units, samples per copy)

    def hook(self, name: str):
        spec = self.layers[name][1]

        def fn(module, args, output):
            self.calls[name] += 1
            if args:
                self.inputs[name] = args[0]
            if self.perturb is not None and self.perturb[0] == name:
                output = spec.perturb(output, self.perturb[1], self.perturb[2])
            elif self.clamp is not None and not spec.passthrough and name in self.clamp:
                output = self.clamp[name]
            self.outputs[name] = output
            return output

        return fn


def measure(forward: Callable[[torch.Tensor], torch.Tensor], layers: Layers, example: torch.Tensor,
            *, chunk: int = 64) -> UnitGraph:
    """Measure the unit table of ``forward`` by perturbation (see the module docstring).

    Args:
        forward: the body's forward function, returning features.
        layers: ``{name: (module, spec)}`` for every layer of the body, in module order.
        example: a batch of example inputs (one or two samples are enough).
        chunk: how many units to probe per forward pass.
    """
    rec = _Recorder(layers)
    handles = [module.register_forward_hook(rec.hook(name)) for name, (module, _) in layers.items()]
    try:
        with torch.no_grad():
            features = forward(example)
            if not isinstance(features, torch.Tensor):
                raise GraphError("forward() must return one tensor of features; "
                                 f"it returned {type(features).__name__}")
            reused = [n for n, c in rec.calls.items() if c > 1]
            if reused:
                raise UnsupportedLayerError(
                    f"module '{reused[0]}' is called {rec.calls[reused[0]]} times in one forward "
                    "pass; eidetic needs each layer applied once (weight sharing would let a "
                    "later task change an earlier task's units). Use separate layers."
                )
            used = {n: layers[n] for n in layers if n in rec.calls}
            feature_dim = features.flatten(1).shape[1]
            uf = _UnionFind()
            baselines: dict[int, tuple[dict, dict, torch.Tensor]] = {}
            samples = example.shape[0]

            def baseline(copies: int):
                if copies not in baselines:
                    rec.clamp, rec.perturb = None, None
                    rec.inputs, rec.outputs = {}, {}
                    feats = forward(example.repeat(copies, *([1] * (example.dim() - 1))))
                    baselines.clear()
                    baselines[copies] = (rec.inputs, rec.outputs, feats.flatten(1))
                return baselines[copies]

            for name, (module, spec) in used.items():
                size = spec.unit_count(module)
                for start in range(0, size, chunk):
                    units = list(range(start, min(start + chunk, size)))
                    _probe(forward, rec, used, name, units, samples, example, baseline, uf)
                for pos in range(size):
                    uf.add(("out", name, pos))
                for unit, position in spec.internal_slots(module):
                    uf.union(("out", name, unit), ("in", name, position))
    finally:
        for h in handles:
            h.remove()
    return _assemble(uf, used, feature_dim)


def _probe(forward, rec: _Recorder, layers: Layers, name: str, units: list[int], samples: int,
           example: torch.Tensor, baseline, uf: _UnionFind) -> None:
    copies = 2 * len(units)
    base_in, base_out, base_feats = baseline(copies)
    rec.clamp = base_out
    rec.perturb = (name, units, samples)
    rec.inputs, rec.outputs = {}, {}
    feats = forward(example.repeat(copies, *([1] * (example.dim() - 1)))).flatten(1)
    rec.clamp, rec.perturb = None, None
    reached: list[tuple[str, str, torch.Tensor]] = []
    for other, (_, other_spec) in layers.items():
        if other == name or other not in rec.inputs or other not in base_in:
            continue
        moved = other_spec.input_changes(rec.inputs[other], base_in[other], copies)
        role = "out" if other_spec.passthrough else "in"
        reached.append((role, other, moved))
    reached.append(("in", FEATURES, _feature_changes(feats, base_feats, copies)))
    for role, other, moved in reached:
        hits = moved.view(len(units), 2, -1).any(dim=1)
        for i, pos in hits.nonzero().tolist():
            uf.union(("out", name, units[i]), (role, other, pos))


def _assemble(uf: _UnionFind, layers: Layers, feature_dim: int) -> UnitGraph:
    units = []
    for nodes in uf.components().values():
        seen: dict[str, int] = {}
        for role, module, pos in nodes:
            if role != "out":
                continue
            if module in seen:
                readers = sorted({n[1] for n in nodes if n[0] == "in"})
                raise UnsupportedLayerError(
                    f"units {min(seen[module], pos)} and {max(seen[module], pos)} of module "
                    f"'{module}' are mixed together before they reach {readers} (for example by a "
                    "softmax, a normalisation or attention across units), so they cannot be "
                    "frozen one by one. Mix units only inside supported layers."
                )
            seen[module] = pos
        units.append(set(nodes))
    return UnitGraph.from_units(units, {n: s for n, (_, s) in layers.items()}, feature_dim)
