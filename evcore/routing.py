"""Routing rules: AMQP binding-key matching and Celery's per-driver exchange rules."""

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


#: Celery's exchange rules, in one place. Anything not listed gets the default rule.
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


def events_disabled_because(transport: Transport) -> str | None:
    """Why events cannot flow over ``transport``, or ``None`` when they can.

    Either the driver type's rule disables them, or the transport cannot broadcast, so a
    monitor would never see events that another consumer takes first.
    """
    reason = rule_for(transport.driver_type).disabled_because
    if reason is None and not transport.capabilities.broadcast:
        reason = (
            f"transport {transport.driver_type!r} cannot broadcast a message to every "
            "subscriber, so monitors could not receive events"
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
