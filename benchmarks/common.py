"""Shared by the benchmark scripts: a right-aligned text table, and the JSON record of a run
(machine, settings, results)."""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch


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
