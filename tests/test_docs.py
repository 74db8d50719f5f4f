"""The documentation's examples run: README.md and docs/*.md code blocks, and docstrings."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import evcore

ROOT = Path(__file__).resolve().parents[1]
#: Markdown files whose ```python blocks must run without a broker.
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for document in DOCUMENTS:
        for number, match in enumerate(BLOCK.finditer(document.read_text("utf-8")), 1):
            blocks.append((f"{document.relative_to(ROOT)}#{number}", match.group(1)))
    return blocks


@pytest.mark.parametrize(("where", "code"), python_blocks(), ids=lambda v: v if "#" in v else "")
def test_markdown_example_runs(where: str, code: str) -> None:
    exec(compile(code, where, "exec"), {"__name__": "__docs__"})


def evcore_modules() -> list[str]:
    return sorted(
        info.name for info in pkgutil.walk_packages(evcore.__path__, prefix="evcore.")
    )


@pytest.mark.parametrize("name", evcore_modules())
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
