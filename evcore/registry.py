"""Find transports by URL scheme through the ``evcore.transports`` entry-point group.

Built-in adapters are registered exactly as a third party's would be; the core names none
of them. Entry points are loaded only when their scheme is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, cast
from urllib.parse import urlsplit

from evcore.errors import DuplicateTransport, InvalidURL, MissingDependency, TransportNotFound
from evcore.transport import Transport, TransportFactory

ENTRY_POINT_GROUP = "evcore.transports"


@dataclass(frozen=True, slots=True)
class TransportInfo:
    """An installed transport: its scheme, the object it names and who provides it."""

    scheme: str
    target: str
    distribution: str
    version: str


def _distribution_of(entry_point: EntryPoint) -> tuple[str, str]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return ("unknown", "")
    return (dist.metadata["Name"] or "unknown", dist.version or "")


def _entry_points_by_scheme() -> dict[str, list[EntryPoint]]:
    found: dict[str, list[EntryPoint]] = {}
    seen: set[tuple[str, str, str]] = set()
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        dist_name, _ = _distribution_of(entry_point)
        key = (entry_point.name, entry_point.value, dist_name.lower())
        if key in seen:  # the same distribution seen twice on sys.path
            continue
        seen.add(key)
        found.setdefault(entry_point.name.lower(), []).append(entry_point)
    return found


def available_transports() -> list[TransportInfo]:
    """Every installed transport, sorted by scheme, with the distribution providing it."""
    infos = []
    for scheme, candidates in _entry_points_by_scheme().items():
        for entry_point in candidates:
            dist_name, version = _distribution_of(entry_point)
            infos.append(TransportInfo(scheme, entry_point.value, dist_name, version))
    return sorted(infos, key=lambda info: (info.scheme, info.distribution))


def scheme_of(url: str) -> str:
    """The scheme of a transport URL, lower-cased; raise InvalidURL when there is none."""
    if not isinstance(url, str) or "://" not in url:
        raise InvalidURL(f"not a transport URL: {url!r} (expected SCHEME://..., e.g. memory://)")
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as exc:
        raise InvalidURL(f"cannot parse transport URL {url!r}: {exc}") from None
    if not scheme:
        raise InvalidURL(f"transport URL {url!r} has no scheme")
    return scheme


def load_factory(scheme: str) -> TransportFactory:
    """Load the factory registered for ``scheme``.

    A scheme ``a+b`` not registered itself falls back to ``a`` (``kombu+redis`` is served by
    the ``kombu`` entry point).
    """
    registered = _entry_points_by_scheme()
    key = scheme if scheme in registered else scheme.split("+", 1)[0]
    candidates = registered.get(key)
    if not candidates:
        installed = ", ".join(sorted(registered)) or "none"
        raise TransportNotFound(
            f"no transport is installed for the scheme {scheme!r}; installed schemes: {installed}"
        )
    if len(candidates) > 1:
        providers = " and ".join(
            f"{_distribution_of(ep)[0]} ({ep.value})" for ep in candidates
        )
        raise DuplicateTransport(
            f"the scheme {key!r} is registered by more than one distribution: {providers}; "
            "uninstall one of them"
        )
    entry_point = candidates[0]
    try:
        factory = entry_point.load()
    except ImportError as exc:
        if isinstance(exc, MissingDependency):
            raise
        dist_name, _ = _distribution_of(entry_point)
        raise MissingDependency(
            f"the transport for {scheme!r} ({entry_point.value}, from {dist_name}) "
            f"could not be imported: {exc}"
        ) from exc
    return cast(TransportFactory, factory)


def connect(url: str = "memory://", **options: Any) -> Transport:
    """Open a transport for ``url``, chosen by its scheme among the installed ones.

    >>> transport = connect("memory://docs-example")
    >>> transport.driver_type
    'memory'
    >>> transport.close()
    """
    return load_factory(scheme_of(url)).from_url(url, **options)
