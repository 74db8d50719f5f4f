"""Broker knowledge stays in the adapters: what the core's modules and the adapters import."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(package: Path) -> dict[str, set[str]]:
    """Each module file of ``package`` (relative path) and the modules it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[str(path.relative_to(ROOT))] = names
    return found


def test_the_kombu_bridge_does_not_use_the_cores_exchange_rules() -> None:
    for module, names in imported_modules(ROOT / "transports" / "evcore_kombu").items():
        assert "evcore.routing" not in names, module


#: Core modules built on an adapter on purpose: the pytest plugin gives each test a bus of
#: the in-memory transport (no wire format, no broker client).
BUILT_ON_AN_ADAPTER = {"evcore/pytest_plugin.py": {"evcore_memory"}}


def test_the_core_holds_no_adapter_wire_format() -> None:
    assert not (ROOT / "evcore" / "envelope.py").exists()
    for module, names in imported_modules(ROOT / "evcore").items():
        allowed = BUILT_ON_AN_ADAPTER.get(module, set())
        helpers = {name for name in names if name.startswith("evcore_")} - allowed
        assert not helpers, f"{module} imports adapter packages {sorted(helpers)}"


def test_the_receiver_takes_the_wire_format_from_the_event_module() -> None:
    names = imported_modules(ROOT / "evcore")["evcore/receiver.py"]
    assert "evcore.dispatcher" not in names
    assert "evcore.event" in names
