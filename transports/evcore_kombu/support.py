"""What a kombu transport can do for events, read from the transport class itself.

Events need broadcast: every monitor's queue must receive every event, whichever process
published it. Brokers with real exchanges (RabbitMQ through py-amqp) route on the server.
kombu's *virtual* transports emulate exchanges in the client, and that emulation only
broadcasts in two cases:

* a ``fanout`` exchange whose channels set ``supports_fanout`` (Redis pub/sub, GC Pub/Sub,
  MongoDB, the filesystem transport); other virtual transports drop fanout messages;
* a ``topic`` or ``direct`` exchange whose binding table lives in the broker (the channel
  overrides ``get_table``: Redis, MongoDB, filesystem). Elsewhere the table lives in the
  memory of the process that declared the binding, so a publisher in another process finds
  no queue to deliver to. kombu's ``memory`` transport is the exception that proves the
  rule: it is one process by design.

Anything kombu does not list in ``Transport.implements.exchange_type`` is refused as well:
kombu does not check it on publish (SQS implements only ``direct``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from evcore.transport import DIRECT, FANOUT, TOPIC, Capabilities
from evcore_kombu.errors import import_kombu

__all__ = ["KombuSupport", "inspect_transport"]

#: The exchange types evcore uses.
EVENT_EXCHANGE_TYPES = (TOPIC, FANOUT, DIRECT)

#: Every :class:`~evcore.transport.QueueOptions` field a server-side queue honours.
_ALL_QUEUE_OPTIONS = frozenset(
    {"exclusive", "auto_delete", "durable", "message_ttl", "expires", "max_length"}
)


@dataclass(frozen=True, slots=True)
class KombuSupport:
    """The verdict on one kombu transport: capabilities, and why a type cannot broadcast."""

    driver_type: str
    #: The kombu module implementing the transport, for error messages.
    module: str
    #: True for kombu's client-side emulated exchanges (Redis, memory, SQL, SQS, ...).
    virtual: bool
    #: Exchange type -> why events cannot broadcast over it; absent when they can.
    refusals: dict[str, str]
    capabilities: Capabilities

    def refusal(self, exchange_type: str) -> str | None:
        """Why events cannot broadcast over ``exchange_type`` here, or ``None``."""
        if exchange_type not in EVENT_EXCHANGE_TYPES:
            return f"evcore does not use {exchange_type!r} exchanges"
        reason = self.refusals.get(exchange_type)
        if reason is None:
            return None
        return (
            f"kombu's {self.driver_type!r} transport ({self.module}) cannot broadcast events "
            f"on a {exchange_type!r} exchange: {reason}"
        )


def inspect_transport(cls: Any) -> KombuSupport:
    """Judge a kombu transport class (``type(connection.transport)``) without any I/O."""
    driver_type = str(cls.driver_type)
    implemented = frozenset(cls.implements.exchange_type)
    is_virtual = issubclass(cls, import_kombu().transport.virtual.Transport)
    refusals: dict[str, str] = {}
    for exchange_type in EVENT_EXCHANGE_TYPES:
        reason = _refusal(cls, exchange_type, implemented, is_virtual, driver_type)
        if reason is not None:
            refusals[exchange_type] = reason
    broadcasting = frozenset(t for t in EVENT_EXCHANGE_TYPES if t not in refusals)
    capabilities = Capabilities(
        # Which of the exchange types events use is the core's choice, by driver type
        # among the declared ones.
        broadcast=bool(broadcasting),
        # The virtual exchanges match topics with kombu's own regular expressions (or
        # Redis glob patterns), not AMQP's rules: the core filters what comes back.
        exact_routing=not is_virtual,
        exchange_types=broadcasting,
        queue_options=frozenset() if is_virtual else _ALL_QUEUE_OPTIONS,
        persistent=not is_virtual,
    )
    return KombuSupport(driver_type, cls.__module__, is_virtual, refusals, capabilities)


def _refusal(
    cls: Any, exchange_type: str, implemented: frozenset[str], is_virtual: bool, driver: str
) -> str | None:
    if exchange_type not in implemented:
        kinds = ", ".join(sorted(implemented)) or "no"
        return f"it implements only {kinds} exchanges"
    if not is_virtual:
        return None
    channel_cls = cls.Channel
    if exchange_type == FANOUT:
        # A property (SQS decides from its transport options) counts as "no": kombu's
        # SQS does not list fanout in ``implements`` anyway.
        if inspect.getattr_static(channel_cls, "supports_fanout", False) is True:
            return None
        return "its channels do not support fanout, so kombu drops fanout messages unseen"
    base_get_table = import_kombu().transport.virtual.Channel.get_table
    shared_table = channel_cls.get_table is not base_get_table
    if shared_table or driver == "memory":
        return None
    return (
        f"kombu keeps {exchange_type} bindings in the memory of the process that made them, "
        "so a publisher in another process never finds a monitor's queue"
    )
