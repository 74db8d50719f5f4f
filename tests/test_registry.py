from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import evcore
from evcore.registry import available_transports, connect, load_factory, scheme_of


def install_fake_distribution(
    site: Path, name: str, entry_points: dict[str, str], module_source: str | None = None
) -> None:
    """Lay out a minimal installed distribution (dist-info with entry points) in ``site``."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "\n".join(f"{scheme} = {target}" for scheme, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[evcore.transports]\n{lines}\n")
    if module_source is not None:
        module = entry_points[next(iter(entry_points))].split(":")[0]
        (site / f"{module}.py").write_text(textwrap.dedent(module_source))


def test_connect_memory_by_scheme() -> None:
    transport = connect("memory://registry-test")
    assert transport.driver_type == "memory"
    transport.close()


def test_every_builtin_adapter_is_registered_by_entry_point() -> None:
    infos = {info.scheme: info for info in available_transports()}
    for scheme in ("memory", "redis", "rediss", "redis+socket", "amqp", "amqps", "pyamqp", "kombu"):
        assert infos[scheme].distribution == "evcore"
    assert infos["memory"].target == "evcore_memory:MemoryTransport"


def test_unknown_scheme_names_it_and_lists_installed() -> None:
    with pytest.raises(evcore.TransportNotFound) as info:
        connect("nosuchbroker://127.0.0.1:4222")
    message = str(info.value)
    assert "'nosuchbroker'" in message
    assert "memory" in message
    assert "redis" in message


@pytest.mark.parametrize("url", ["", "memory", "127.0.0.1:6379", "://x"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(evcore.InvalidURL):
        scheme_of(url)


def test_scheme_is_case_insensitive() -> None:
    assert scheme_of("MEMORY://x") == "memory"


def test_two_distributions_claiming_one_scheme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_fake_distribution(tmp_path, "evcore-impostor", {"memory": "impostor:Transport"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(evcore.DuplicateTransport) as info:
        connect("memory://")
    message = str(info.value)
    assert "evcore-impostor" in message
    assert "evcore (evcore_memory:MemoryTransport)" in message


def test_adapter_that_cannot_be_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_distribution(
        tmp_path, "evcore-broken", {"broken": "evcore_no_such_module:Transport"}
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(evcore.MissingDependency) as info:
        connect("broken://x")
    assert "evcore-broken" in str(info.value)
    assert "evcore_no_such_module" in str(info.value)


def test_third_party_transport_is_found_lazily_and_plus_schemes_fall_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_fake_distribution(
        tmp_path,
        "evcore-bridge-test",
        {"bridgetest": "bridgetest_mod:Bridge"},
        """
        IMPORTED = True

        class Bridge:
            driver_type = "bridgetest"

            def __init__(self, url, options):
                self.url, self.options = url, options

            @classmethod
            def from_url(cls, url, **options):
                return cls(url, options)
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import sys

    assert "bridgetest_mod" not in sys.modules
    assert any(info.scheme == "bridgetest" for info in available_transports())
    assert "bridgetest_mod" not in sys.modules  # listing does not import
    transport = connect("bridgetest+inner://host/0", flavour="x")
    assert transport.url == "bridgetest+inner://host/0"  # type: ignore[attr-defined]
    assert transport.options == {"flavour": "x"}  # type: ignore[attr-defined]
    assert load_factory("bridgetest") is load_factory("bridgetest+other")
    monkeypatch.delitem(sys.modules, "bridgetest_mod")


class Loopback:
    """A transport factory for the in-process registration tests."""

    driver_type = "loopback"

    def __init__(self, url: str) -> None:
        self.url = url

    @classmethod
    def from_url(cls, url: str, **options: object) -> Loopback:
        return cls(url)

    def close(self) -> None:
        pass


def test_register_a_transport_in_process() -> None:
    evcore.register_transport("loopback", Loopback)
    try:
        transport = connect("loopback+inner://x")  # a+b falls back to a, as entry points do
        assert isinstance(transport, Loopback) and transport.url == "loopback+inner://x"
        [info] = [info for info in available_transports() if info.scheme == "loopback"]
        assert info.distribution == "(registered in-process)"
        assert info.target == f"{__name__}:Loopback"
        with pytest.raises(evcore.DuplicateTransport, match="clobber=True"):
            evcore.register_transport("LOOPBACK", Loopback)
    finally:
        evcore.unregister_transport("loopback")
    with pytest.raises(evcore.TransportNotFound, match="'loopback'"):
        connect("loopback://x")
    with pytest.raises(evcore.TransportNotFound):
        evcore.unregister_transport("loopback")


def test_a_module_attr_registration_is_imported_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    (tmp_path / "lazy_loopback_mod.py").write_text(
        "from test_registry import Loopback\n\nclass Lazy(Loopback):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    evcore.register_transport("lazyloop", "lazy_loopback_mod:Lazy")
    evcore.register_transport("brokenloop", "evcore_no_such_module:Transport")
    try:
        assert "lazy_loopback_mod" not in sys.modules
        assert any(info.target == "lazy_loopback_mod:Lazy" for info in available_transports())
        assert type(connect("lazyloop://x")).__name__ == "Lazy"
        with pytest.raises(evcore.MissingDependency, match="evcore_no_such_module"):
            connect("brokenloop://x")
    finally:
        evcore.unregister_transport("lazyloop")
        evcore.unregister_transport("brokenloop")
        monkeypatch.delitem(sys.modules, "lazy_loopback_mod", raising=False)


def test_replacing_an_installed_scheme_needs_clobber() -> None:
    installed_by = r"evcore \(evcore_memory:MemoryTransport\)"
    with pytest.raises(evcore.DuplicateTransport, match=installed_by):
        evcore.register_transport("memory", Loopback)
    assert connect("memory://registry-clobber").driver_type == "memory"
    evcore.register_transport("memory", Loopback, clobber=True)
    try:
        assert isinstance(connect("memory://x"), Loopback)
        [info] = [info for info in available_transports() if info.scheme == "memory"]
        assert info.distribution == "(registered in-process)"
    finally:
        evcore.unregister_transport("memory")
    assert connect("memory://registry-clobber").driver_type == "memory"


@pytest.mark.parametrize(
    ("scheme", "factory", "error"),
    [
        ("no spaces", Loopback, evcore.InvalidURL),
        ("", Loopback, evcore.InvalidURL),
        ("9lives", Loopback, evcore.InvalidURL),
        ("fine", object(), TypeError),
        ("fine", "no_colon_here", TypeError),
    ],
)
def test_bad_registrations_are_refused(scheme: str, factory: object, error: type) -> None:
    with pytest.raises(error):
        evcore.register_transport(scheme, factory)  # type: ignore[arg-type]
    assert not any(info.scheme == "fine" for info in available_transports())


def test_no_test_transport_is_installed() -> None:
    """The unit tests register theirs in-process; the install line adds none."""
    installed = {
        info.scheme
        for info in available_transports()
        if info.distribution != "(registered in-process)"
    }
    assert not installed & {"fakesql", "fakeredis"}
