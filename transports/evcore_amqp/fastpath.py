"""The opt-in fast path, and the exact pika versions it runs on.

By default the transport uses pika's public API only: ``BlockingChannel.basic_publish``
(one flush per message, and one wait per message with confirms) and ``basic_consume``
callbacks. With ``fast_path=true`` it goes around pika in two places, for speed:

- publishing (:mod:`evcore_amqp.frames`, :mod:`evcore_amqp.publisher`): a batch is encoded
  here from cached templates and queued with ``Connection._output_marshaled_frames``
  (sized by ``Connection._body_max_length``), then flushed once through
  ``BlockingChannel._flush_output``; confirms are counted by a callback given to the
  asynchronous channel (``BlockingChannel._impl``) and waited for once per batch.
- consuming (:mod:`evcore_amqp.delivery`): the connection's ``_on_data_available`` is
  replaced on that connection instance by a reader that decodes deliveries itself and hands
  every other frame to pika's parser; it keeps ``bytes_received``/``frames_received`` up to
  date and wakes ``process_data_events`` through ``_request_channel_dispatch``.

Those are private pika names whose behaviour pika may change in any release, so the fast
path is used only when the installed pika is one of :data:`TESTED_PIKA_VERSIONS`, the
versions the test suite ran both paths against; with any other version the transport logs
a warning once and uses the public path.
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
