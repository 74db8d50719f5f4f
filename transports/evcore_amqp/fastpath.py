"""The opt-in fast path of consuming, and the exact pika versions it runs on.

Subscriptions consume with pika. By default they use its public API only
(``basic_consume`` callbacks, ``process_data_events``). With ``fast_path=true`` a reader
(:mod:`evcore_amqp.delivery`) decodes deliveries ahead of pika's frame handling, which is
faster for a busy receiver: it replaces ``Connection._on_data_available`` on the
subscription's own connection instance (reached as ``BlockingConnection._impl``, checked
empty through ``_frame_buffer``), hands every other frame to pika's parser, keeps
``bytes_received``/``frames_received`` up to date for pika's heartbeat checker and wakes
``process_data_events`` through ``BlockingConnection._request_channel_dispatch``.

Those are private pika names whose behaviour pika may change in any release, so the fast
path is used only when the installed pika is one of :data:`TESTED_PIKA_VERSIONS`, the
versions the test suite ran both paths against; with any other version the transport logs
a warning once and uses the public path. (Publishing involves no pika at all: see
:mod:`evcore_amqp.wire`.)
"""

from __future__ import annotations

import logging

from evcore_amqp.connection import load_pika

__all__ = ["TESTED_PIKA_VERSIONS", "fast_path_enabled"]

#: pika releases the fast path was tested against (the full test suite, both paths).
TESTED_PIKA_VERSIONS = frozenset({"1.4.4"})

logger = logging.getLogger(__name__)
_warned: set[str] = set()


def fast_path_enabled(requested: bool) -> bool:
    """Whether to take the fast path: ``requested`` and the installed pika is tested."""
    if not requested:
        return False
    version = str(load_pika().__version__)
    if version in TESTED_PIKA_VERSIONS:
        return True
    if version not in _warned:
        _warned.add(version)
        logger.warning(
            "AMQP fast_path was asked for, but pika %s is not one of the versions it was "
            "tested against (%s): using pika's public API",
            version,
            ", ".join(sorted(TESTED_PIKA_VERSIONS)),
        )
    return False
