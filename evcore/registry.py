"""Find transports by URL scheme: installed through the ``evcore.transports`` entry-point
group, or registered in this process with :func:`register_transport`.

Built-in adapters are registered exactly as a third party's would be; the core names none
of them. Entry points are loaded only when their scheme is asked for.
"""

from __future__ import annotations

import importlib
import re
import threading
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, cast
from urllib.parse import urlsplit

from evcore.errors import DuplicateTransport, InvalidURL, MissingDependency, TransportNotFound
from evcore.transport import Transport, TransportFactory

ENTRY_POINT_GROUP = "evcore.transports"

#: What :func:`available_transports` names as the provider of an in-process registration.
IN_PROCESS = "(registered in-process)"

#: A URL scheme as RFC 3986 allows it, lower-cased.
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


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


@dataclass(slots=True)
class _Registration:
    """A factory registered in-process: an object, or a ``module:attr`` loaded on first use."""

    target: str
    factory: TransportFactory | None


_registered: dict[str, _Registration] = {}
_registered_lock = threading.Lock()


def register_transport(
    scheme: str, factory: TransportFactory | str, *, clobber: bool = False
) -> None:
    """Serve ``scheme`` with ``factory`` in this process, without installing a distribution.

    ``factory`` is the object whose ``from_url`` builds the transport (usually the class), or
    its ``"module:attr"`` name, imported when the scheme is first used. A scheme already
    registered in-process or by an installed distribution is refused with
    :class:`~evcore.errors.DuplicateTransport` unless ``clobber`` is true; the in-process
    registration then takes precedence.

    >>> class Loopback:
    ...     driver_type = "loopback"
    ...     @classmethod
    ...     def from_url(cls, url, **options):
    ...         return cls()
    >>> register_transport("docs-loopback", Loopback)
    >>> connect("docs-loopback://x").driver_type
    'loopback'
    >>> unregister_transport("docs-loopback")
    """
    key = scheme.lower() if isinstance(scheme, str) else scheme
    if not isinstance(key, str) or not _SCHEME.fullmatch(key):
        raise InvalidURL(f"not a URL scheme: {scheme!r} (letters, digits, '+', '-', '.')")
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        if not module or not attr:
            raise TypeError(f"expected a factory or 'module:attr', got {factory!r}")
        registration = _Registration(factory, None)
    elif callable(getattr(factory, "from_url", None)):
        name = getattr(factory, "__qualname__", type(factory).__qualname__)
        registration = _Registration(f"{factory.__module__}:{name}", factory)
    else:
        raise TypeError(f"a transport factory needs a from_url method; got {factory!r}")
    with _registered_lock:
        if not clobber:
            taken = _provider_of(key)
            if taken is not None:
                raise DuplicateTransport(
                    f"the scheme {key!r} is already served by {taken}; "
                    "pass clobber=True to replace it in this process"
                )
        _registered[key] = registration


def unregister_transport(scheme: str) -> None:
    """Forget what :func:`register_transport` registered for ``scheme`` (installed
    distributions serve it again, if any)."""
    with _registered_lock:
        if _registered.pop(scheme.lower(), None) is None:
            raise TransportNotFound(f"the scheme {scheme!r} was not registered in-process")


def _provider_of(scheme: str) -> str | None:
    """Who serves ``scheme`` exactly (no ``a+b`` fallback), in words; ``None`` if nobody."""
    if scheme in _registered:
        return f"{_registered[scheme].target} {IN_PROCESS}"
    installed = _entry_points_by_scheme().get(scheme)
    if installed:
        dist_name, _ = _distribution_of(installed[0])
        return f"{dist_name} ({installed[0].value})"
    return None


def available_transports() -> list[TransportInfo]:
    """Every transport by scheme, sorted, with the distribution providing it; a scheme
    registered in-process shows that registration instead of the installed ones."""
    with _registered_lock:
        registered = dict(_registered)
    infos = [TransportInfo(s, r.target, IN_PROCESS, "") for s, r in registered.items()]
    for scheme, candidates in _entry_points_by_scheme().items():
        if scheme in registered:
            continue
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
    """Load the factory registered for ``scheme``, in-process or by a distribution.

    A scheme ``a+b`` not registered itself falls back to ``a`` (``kombu+redis`` is served by
    the ``kombu`` entry point).
    """
    registered = _entry_points_by_scheme()
    with _registered_lock:
        in_process = dict(_registered)
    known = registered.keys() | in_process.keys()
    key = scheme if scheme in known else scheme.split("+", 1)[0]
    if key in in_process:
        return _load_registration(key, in_process[key])
    candidates = registered.get(key)
    if not candidates:
        installed = ", ".join(sorted(known)) or "none"
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


def _load_registration(scheme: str, registration: _Registration) -> TransportFactory:
    if registration.factory is not None:
        return registration.factory
    module, _, attr = registration.target.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        if isinstance(exc, MissingDependency):
            raise
        raise MissingDependency(
            f"the transport for {scheme!r} ({registration.target}, {IN_PROCESS}) "
            f"could not be imported: {exc}"
        ) from exc
    except AttributeError as exc:
        raise TransportNotFound(
            f"the transport for {scheme!r} ({registration.target}, {IN_PROCESS}) "
            f"does not exist: {exc}"
        ) from exc
    registration.factory = cast(TransportFactory, factory)
    return registration.factory


def connect(url: str = "memory://", **options: Any) -> Transport:
    """Open a transport for ``url``, chosen by its scheme among the installed ones.

    >>> transport = connect("memory://docs-example")
    >>> transport.driver_type
    'memory'
    >>> transport.close()
    """
    return load_factory(scheme_of(url)).from_url(url, **options)
