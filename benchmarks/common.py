"""Shared by the benchmark scripts: a right-aligned text table, the JSON record of a run
(machine, settings, results), the process's resident memory, interleaved timing, and the plain
PyTorch training loop the baselines use."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def text_table(lines: list) -> str:
    """Rows (sequences) of cells as right-aligned columns; the first row is the header."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines)


def write_json(path: str, args: argparse.Namespace, results) -> None:
    """Write the machine, the script's settings (its arguments but ``--json``) and its results."""
    machine = {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
               "python": platform.python_version(), "torch": torch.__version__, "threads": args.threads}
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    with open(path, "w") as f:
        json.dump({"machine": machine, "settings": settings, "results": results}, f, indent=2, default=str)


STATUS = Path("/proc/self/status")


def memory_kib() -> dict[str, int | None]:
    """Peak (VmHWM) and current (VmRSS) resident memory of this process, in KiB (Linux)."""
    if not STATUS.exists():
        return {"peak": None, "now": None}
    text = STATUS.read_text()
    return {"peak": int(re.search(r"VmHWM:\s+(\d+)", text).group(1)),
            "now": int(re.search(r"VmRSS:\s+(\d+)", text).group(1))}


def reset_peak() -> None:
    """Reset the peak resident memory to the current one (Linux 4.0 and later; else a no-op)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(methods: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median milliseconds per call of each method, one call of each per round (after one
    untimed warm-up call each), so that all see the same machine state."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for fn in methods.values():
        fn()
    for _ in range(rounds):
        for name, fn in methods.items():
            times[name].append(timed(fn))
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def train_plain(body: nn.Module, head: nn.Module, loader, make_optimizer: Callable, epochs: int) -> None:
    """The loop a user writes: ``head(body(x))``, cross-entropy, ``zero_grad``, ``backward``, ``step``,
    for ``epochs`` passes over ``loader``, with ``make_optimizer(parameters)``."""
    optimizer = make_optimizer([*body.parameters(), *head.parameters()])
    body.train()
    head.train()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(head(body(x)), y).backward()
            optimizer.step()
