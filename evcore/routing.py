"""Routing rules: AMQP binding-key matching and the choice of the events' exchange type."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from evcore.transport import DIRECT, FANOUT, TOPIC, Transport


@dataclass(frozen=True, slots=True)
class ExchangeRule:
    """How events behave on one driver type."""

    exchange_type: str = TOPIC
    #: Why events cannot flow here, or ``None`` when they can.
    disabled_because: str | None = None


#: Celery's exchange rules, in one place: events go to a fanout exchange on Redis and GC
#: Pub/Sub, and are disabled on SQL brokers. Anything not listed gets the default rule. A
#: rule only states a preference: the exchange type used is always one the transport
#: declares (see :func:`exchange_type_for`).
EXCHANGE_RULES: dict[str, ExchangeRule] = {
    "redis": ExchangeRule(exchange_type=FANOUT),
    "gcpubsub": ExchangeRule(exchange_type=FANOUT),
    "sql": ExchangeRule(
        disabled_because=(
            "events are disabled on transports of driver type 'sql': a database broker "
            "cannot broadcast, so no monitor could ever receive them"
        )
    ),
}
DEFAULT_RULE = ExchangeRule()


def rule_for(driver_type: str) -> ExchangeRule:
    """The exchange rule of a driver type."""
    return EXCHANGE_RULES.get(driver_type, DEFAULT_RULE)


#: The exchange types that can carry every event to every monitor, in the order the core
#: prefers them when the driver type's rule names a type the transport does not declare.
#: (A direct exchange delivers only exact routing keys, so a ``#`` binding gets nothing.)
EVENT_EXCHANGE_TYPES = (TOPIC, FANOUT)


def exchange_type_for(transport: Transport) -> str | None:
    """The exchange type events use on ``transport``, or ``None`` if it has none they can use.

    The driver type's rule where the transport declares that type (Celery's choice, so
    evcore and Celery meet on the same exchange), else the first of
    :data:`EVENT_EXCHANGE_TYPES` it declares in ``capabilities.exchange_types``.
    """
    declared = transport.capabilities.exchange_types
    preferred = rule_for(transport.driver_type).exchange_type
    if preferred in declared:
        return preferred
    return next((kind for kind in EVENT_EXCHANGE_TYPES if kind in declared), None)


def events_disabled_because(transport: Transport) -> str | None:
    """Why events cannot flow over ``transport``, or ``None`` when they can.

    Either the driver type's rule disables them, or the transport cannot broadcast (a
    monitor would never see events that another consumer takes first), or it declares no
    exchange type that can carry events.
    """
    reason = rule_for(transport.driver_type).disabled_because
    if reason is None and not transport.capabilities.broadcast:
        reason = (
            f"transport {transport.driver_type!r} cannot broadcast a message to every "
            "subscriber, so monitors could not receive events"
        )
    if reason is None and exchange_type_for(transport) is None:
        declared = sorted(transport.capabilities.exchange_types)
        reason = (
            f"transport {transport.driver_type!r} declares the exchange types {declared}, "
            f"none of which can carry events ({' or '.join(EVENT_EXCHANGE_TYPES)} needed)"
        )
    return reason


def routes(exchange_type: str, binding_key: str, routing_key: str) -> bool:
    """Whether an exchange of ``exchange_type`` delivers ``routing_key`` to a queue bound
    with ``binding_key``, with AMQP semantics: fanout delivers everything, direct the same
    key, topic what :func:`binding_matches`. Adapters that route by themselves use it.

    >>> routes("fanout", "x", "y"), routes("direct", "a.b", "a.b"), routes("topic", "a.*", "a")
    (True, True, False)
    """
    if exchange_type == FANOUT:
        return True
    if exchange_type == DIRECT:
        return binding_key == routing_key
    return binding_matches(binding_key, routing_key)


@functools.lru_cache(maxsize=4096)
def binding_matches(binding_key: str, routing_key: str) -> bool:
    """Whether a topic binding key matches a routing key, with AMQP semantics.

    ``*`` matches exactly one word and ``#`` zero or more words.

    >>> binding_matches("worker.#", "worker"), binding_matches("worker.*", "worker")
    (True, False)
    >>> binding_matches("*.multi", "task.multi"), binding_matches("#", "")
    (True, True)
    """
    return _match(tuple(binding_key.split(".")), tuple(routing_key.split(".")))


def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    # ``reachable`` holds the word positions a prefix of the pattern can end at.
    reachable = {0}
    for part in pattern:
        if part == "#":
            reachable = set(range(min(reachable), len(words) + 1))
        else:
            reachable = {
                pos + 1
                for pos in reachable
                if pos < len(words) and (part == "*" or part == words[pos])
            }
        if not reachable:
            return False
    return len(words) in reachable
