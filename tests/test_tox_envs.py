"""Every test runs in at least one tox environment, and integration tests are chosen by marker.

The check reads ``tox.ini`` the way tox does (``env_list`` with its brace expansions, factor
conditions on ``commands`` lines, ``[testenv:NAME]`` sections) and asks pytest itself which tests
exist and which markers each carries. A new environment (another broker, another Python) needs
no change here: a ``pytest`` command with ``-m EXPR`` and paths is understood as is.
"""

from __future__ import annotations

import configparser
import itertools
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: pytest options that narrow the selection in ways this check does not model.
UNMODELLED = {"-k", "-o", "--override-ini", "--deselect", "--ignore", "--ignore-glob", "--lf"}
MARK_EXPRESSION = re.compile(r"^(\s|\(|\)|\bnot\b|\band\b|\bor\b|[A-Za-z_]\w*)*$")

COLLECT = """
import json, sys, pytest

class Record:
    def pytest_collection_finish(self, session):
        self.items = [
            {"id": item.nodeid, "markers": sorted({mark.name for mark in item.iter_markers()})}
            for item in session.items
        ]

record = Record()
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider"], plugins=[record])
print("\\n@@" + json.dumps({"code": int(code), "items": record.items}))
"""


@dataclass(frozen=True)
class Run:
    """One ``pytest`` command of one tox environment."""

    env: str
    paths: tuple[str, ...]
    expression: str | None

    def selects(self, node_id: str, markers: set[str]) -> bool:
        path = node_id.split("::", maxsplit=1)[0]
        if self.paths and not any(
            path == where or path.startswith(where.rstrip("/") + "/") for where in self.paths
        ):
            return False
        if self.expression is None:
            return True
        names = {name: name in markers for name in re.findall(r"[A-Za-z_]\w*", self.expression)}
        for keyword in ("and", "or", "not"):
            names.pop(keyword, None)
        return bool(eval(self.expression, {"__builtins__": {}}, names))


def expand(entry: str) -> list[str]:
    """``py3{10,11}-{a,b}`` -> ``py310-a``, ``py310-b``, ``py311-a``, ``py311-b``."""
    parts = re.split(r"(\{[^}]*\})", entry)
    choices = [part[1:-1].split(",") if part.startswith("{") else [part] for part in parts]
    return ["".join(combination) for combination in itertools.product(*choices)]


def condition_holds(condition: str, factors: set[str]) -> bool:
    """tox factor conditions: ``a,b`` is either, ``a-b`` is both, ``!a`` is not a."""
    return any(
        all(
            (term[1:] not in factors) if term.startswith("!") else (term in factors)
            for term in alternative.split("-")
        )
        for alternative in condition.split(",")
    )


def tox_runs() -> list[Run]:
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "tox.ini", encoding="utf-8")
    envs = [
        name
        for line in config["tox"]["env_list"].split()
        for name in expand(line.strip())
        if name
    ]
    runs = []
    for env in envs:
        section = f"testenv:{env}"
        if config.has_option(section, "commands"):
            lines = config[section]["commands"].splitlines()
        else:
            lines = config["testenv"].get("commands", "").splitlines()
        for line in lines:
            condition, colon, command = line.strip().partition(": ")
            if colon and re.fullmatch(r"[\w.,!-]+", condition):
                if not condition_holds(condition, set(env.split("-"))):
                    continue
            else:
                command = line.strip()
            words = shlex.split(command.replace("{posargs}", ""))
            if words[:1] == ["pytest"]:
                runs.append(pytest_run(env, words[1:]))
    return runs


def pytest_run(env: str, arguments: list[str]) -> Run:
    paths: list[str] = []
    expression = None
    words = iter(arguments)
    for word in words:
        option = word.split("=")[0]
        assert option not in UNMODELLED, f"{env}: teach tests/test_tox_envs.py about {word}"
        if word == "-m":
            expression = next(words)
        elif word.startswith("-m") and len(word) > 2:
            expression = word[2:]
        elif not word.startswith("-"):
            paths.append(word)
    if expression is not None:
        assert MARK_EXPRESSION.match(expression), f"{env}: unexpected -m {expression!r}"
    return Run(env, tuple(paths), expression)


@cache
def collected() -> dict[str, object]:
    """What plain ``pytest`` collects (every test), with each test's markers."""
    result = subprocess.run(
        [sys.executable, "-c", COLLECT],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert "\n@@" in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]
    report = json.loads(result.stdout.rpartition("\n@@")[2])
    assert report["code"] == 0, result.stdout[-3000:] + result.stderr[-2000:]
    return report  # type: ignore[no-any-return]


def test_the_check_reads_the_matrix() -> None:
    runs = {run.env: run for run in tox_runs()}
    assert runs["py311-memory"].paths and runs["py311-memory"].expression is None
    assert runs["py311-redis"].selects("integration/test_redis_live.py::t", {"redis"})
    assert not runs["py311-redis"].selects("integration/test_kombu_redis.py::t", {"redis", "kombu"})
    assert not runs["py311-redis"].selects("tests/test_state.py::t", {"redis"})
    assert runs["py311-kombu"].selects("integration/test_kombu_amqp.py::t", {"amqp", "kombu"})
    assert condition_holds("redis,amqp", {"py311", "amqp"})
    assert not condition_holds("py311-!amqp", {"py311", "amqp"})


def test_every_test_runs_in_some_tox_environment() -> None:
    runs = tox_runs()
    report = collected()
    items = report["items"]
    assert isinstance(items, list) and len(items) > 100
    orphans = [
        item["id"]
        for item in items
        if not any(run.selects(item["id"], set(item["markers"])) for run in runs)
    ]
    assert not orphans, f"{len(orphans)} test(s) run in no tox environment: {orphans[:20]}"


def test_every_integration_test_carries_a_marker_of_the_project() -> None:
    ours = project_markers()
    unmarked = [
        item["id"]
        for item in collected()["items"]  # type: ignore[attr-defined]
        if item["id"].startswith("integration/test_") and not set(item["markers"]) & ours
    ]
    assert not unmarked, f"integration tests without a marker of {sorted(ours)}: {unmarked[:20]}"


def project_markers() -> set[str]:
    """The markers pyproject.toml registers for this project (its ``markers`` list)."""
    text = (ROOT / "pyproject.toml").read_text("utf-8")
    block = re.search(r"^markers = \[(.*?)^\]", text, re.DOTALL | re.MULTILINE)
    assert block, "pyproject.toml registers no pytest markers"
    return set(re.findall(r'^\s*"([A-Za-z_]\w*):', block.group(1), re.MULTILINE))


@pytest.mark.parametrize("name", sorted(project_markers()))
def test_a_registered_marker_is_selected_by_some_environment(name: str) -> None:
    selected = {run.expression for run in tox_runs() if run.expression}
    assert any(re.search(rf"\b{name}\b", expression) for expression in selected), (
        f"the {name!r} marker is registered but no tox environment selects it with -m"
    )
