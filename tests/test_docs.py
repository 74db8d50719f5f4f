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


def python_blocks(document: Path) -> list[str]:
    return [match.group(1) for match in BLOCK.finditer(document.read_text("utf-8"))]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_markdown_examples_run(document: Path) -> None:
    """Each document's blocks run in order in one namespace, like a reader following it.

    A block written as an interactive session (``>>>`` prompts) is checked as a doctest.
    """
    namespace: dict[str, object] = {"__name__": "__docs__"}
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for number, code in enumerate(python_blocks(document), 1):
        where = f"{document.relative_to(ROOT)} block {number}"
        if code.lstrip().startswith(">>>"):
            test = parser.get_doctest(code, namespace, where, str(document), 0)
            result = runner.run(test, clear_globs=False)
            namespace.update(test.globs)  # DocTest works on a copy
            assert result.failed == 0, f"{where}: {result.failed} example(s) failed"
        else:
            exec(compile(code, where, "exec"), namespace)


def evcore_modules() -> list[str]:
    return sorted(
        info.name for info in pkgutil.walk_packages(evcore.__path__, prefix="evcore.")
    )


@pytest.mark.parametrize("name", evcore_modules())
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
