"""Check a unit table against the probe's measurement and explain every difference."""

from __future__ import annotations

from collections import defaultdict

from .table import UnitGraph

Node = tuple[str, str, int]


def _units_by_output(graph: UnitGraph) -> dict[tuple[str, int], frozenset[Node]]:
    units = graph.canonical()
    return {(module, pos): unit for unit in units for role, module, pos in unit if role == "out"}


def _ranges(positions: list[int]) -> str:
    positions = sorted(positions)
    parts, start = [], None
    for i, p in enumerate(positions):
        if start is None:
            start = p
        if i + 1 == len(positions) or positions[i + 1] != p + 1:
            parts.append(str(start) if start == p else f"{start}-{p}")
            start = None
    return ",".join(parts)


def _describe(nodes: frozenset[Node] | set[Node]) -> str:
    by_slot: dict[tuple[str, str], list[int]] = defaultdict(list)
    for role, module, pos in nodes:
        by_slot[(role, module)].append(pos)
    kind = {"out": "outputs", "in": "inputs"}
    return "; ".join(f"{module} {kind[role]} [{_ranges(p)}]" for (role, module), p in sorted(by_slot.items()))


def compare(table: UnitGraph, measured: UnitGraph) -> list[str]:
    """Differences between ``table`` and the ``measured`` table, one sentence per unit.

    Returns an empty list when both describe exactly the same couplings.
    """
    if table.same_couplings(measured):
        return []
    expected, seen = _units_by_output(table), _units_by_output(measured)
    problems, reported = [], set()
    for node in sorted(set(expected) | set(seen)):
        a, b = expected.get(node, frozenset()), seen.get(node, frozenset())
        if a == b or (a, b) in reported:
            continue
        reported.add((a, b))
        parts = [f"unit at {node[0]} output {node[1]}:"]
        if a - b:
            parts.append(f"the table lists {_describe(a - b)} but the probe did not see them")
        if b - a:
            parts.append(("and" if a - b else "") + f" the probe saw {_describe(b - a)} missing from the table")
        problems.append(" ".join(p.strip() for p in parts if p.strip()))
    return problems
