"""The README and the docs stay true: their Python snippets run, in order, file by file.

A page whose snippets need an optional extra says so with ``<!-- requires: module -->``; its
snippets run where that module is installed and skip where it is not.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
REQUIRES = re.compile(r"<!-- requires: ([\w.]+) -->")


@pytest.mark.parametrize("page", [p for p in PAGES if BLOCK.search(p.read_text())], ids=lambda p: p.name)
def test_snippets_run(page, tmp_path, monkeypatch, isolated_registries):
    text = page.read_text()
    for module in REQUIRES.findall(text):
        pytest.importorskip(module, reason=f"{page.name} needs {module} (an optional extra)")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for i, code in enumerate(BLOCK.findall(text)):
        exec(compile(code, f"{page.name}[{i}]", "exec"), namespace)
