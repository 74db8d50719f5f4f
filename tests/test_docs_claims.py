"""What the documents say about the repository is true: the files they name exist, the tox
table matches ``tox.ini``, and the AMQP page lists every module using pika's private API."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from test_tox_envs import tox_runs

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
#: Where repository paths start; a backticked word beginning so names a file or folder.
TOP_LEVEL = ("tests/", "integration/", "evcore/", "transports/", "docs/", "benchmarks/", ".ci/")
ROOT_FILES = {"tox.ini", "pyproject.toml", "README.md"}
CODE = re.compile(r"`([^`\s]+)`")


def expand(path: str) -> list[str]:
    """``a/test_{x,y}.py`` -> ``a/test_x.py``, ``a/test_y.py``."""
    parts = re.split(r"(\{[^}]*\})", path)
    choices = [part[1:-1].split(",") if part.startswith("{") else [part] for part in parts]
    return ["".join(combination) for combination in itertools.product(*choices)]


def named_paths(document: Path) -> list[str]:
    names = []
    for quoted in CODE.findall(document.read_text("utf-8")):
        word = quoted.rstrip(".,:;")
        if (word.startswith(TOP_LEVEL) or word in ROOT_FILES) and not set(word) & set("*<>$"):
            names.extend(expand(word))
    return names


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_file_a_document_names_exists(document: Path) -> None:
    missing = [name for name in named_paths(document) if not (ROOT / name).exists()]
    assert not missing, f"{document.relative_to(ROOT)} names files that do not exist: {missing}"


def test_the_checker_sees_the_paths() -> None:
    names = named_paths(ROOT / "docs" / "testing.md")
    assert "tests/test_docs.py" in names and "integration/test_amqp_conformance.py" in names


def test_the_tox_table_matches_tox_ini() -> None:
    text = (ROOT / "docs" / "testing.md").read_text("utf-8")
    rows = {
        match.group(1): match.group(2)
        for match in re.finditer(r"^\| `py3XX-(\w+)` \|[^|]*\|(.*)\|$", text, re.MULTILINE)
    }
    factors = {run.env.split("-", 1)[1]: run for run in tox_runs() if run.env.startswith("py3")}
    assert set(rows) == set(factors), "docs/testing.md's table and tox.ini's env_list differ"
    for factor, run in factors.items():
        if run.expression:
            assert f'-m "{run.expression}"' in rows[factor] or f"-m {run.expression}" in rows[
                factor
            ], f"py3XX-{factor}: tox.ini selects -m {run.expression!r}, the table says otherwise"
        for path in run.paths:
            assert path.rstrip("/") in rows[factor], f"py3XX-{factor}: {path} not in the table"


#: Attribute accesses on pika objects that are not public API (``channel._impl``...).
PRIVATE_PIKA = re.compile(r"\b(?:channel|connection|impl)\._[a-z]\w*")


def test_the_amqp_page_lists_every_module_using_pika_internals() -> None:
    page = (ROOT / "docs" / "transports" / "amqp.md").read_text("utf-8")
    section = page.split("## The fast path of consuming", 1)[1].split("\n## ", 1)[0]
    users = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "transports" / "evcore_amqp").glob("*.py")
        if PRIVATE_PIKA.search(path.read_text("utf-8"))
    )
    assert users, "no private pika access found: update the page and this test"
    unlisted = [module for module in users if f"`{module}`" not in section]
    assert not unlisted, f"docs/transports/amqp.md does not list {unlisted}"


#: A shell command installing evcore or one of its extras from a package index.
FROM_AN_INDEX = re.compile(r"^\s*pip install (?!-e )['\"]?evcore\b", re.MULTILINE)
SHELL_BLOCK = re.compile(r"^```(?:bash|text|sh|console)\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_documents_install_from_a_checkout_as_the_readme_does(document: Path) -> None:
    blocks = SHELL_BLOCK.findall(document.read_text("utf-8"))
    from_index = [line for block in blocks for line in FROM_AN_INDEX.findall(block)]
    assert not from_index, f"{document.relative_to(ROOT)} installs from an index: {from_index}"
