"""Hostile messages through the Receiver into a State: nothing raises out of the loop,
nothing is unpickled, and every message is either delivered or counted with a reason.

Messages are raw :class:`IncomingMessage` objects handed over by a feeding transport, so
the fuzzer controls every field a broker could deliver (body, content type and encoding,
headers).
"""

from __future__ import annotations

import _pickle
import json
import pickle
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from _fuzz_strategies import bodies, content_types, encodings, headers, nested
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evcore import Receiver, State, codec
from evcore.transport import (
    TOPIC,
    Capabilities,
    Exchange,
    IncomingMessage,
    QueueOptions,
)

#: Reasons a whole message is refused (as opposed to one element of a batch).
MESSAGE_REASONS = ("too-large", "content-type", "encoding", "malformed", "too-deep")

UNPICKLE_CALLS: list[str] = []


class _Feed:
    """A subscription that hands back whatever the test put in it."""

    def __init__(self) -> None:
        self.inbox: deque[IncomingMessage] = deque()

    def receive(self, timeout: float | None = None) -> Sequence[IncomingMessage]:
        messages = list(self.inbox)
        self.inbox.clear()
        return messages

    def close(self) -> None:
        self.inbox.clear()


class FeedTransport:
    """A transport whose one subscription receives exactly what ``feed`` is given."""

    driver_type = "memory"
    capabilities = Capabilities(
        broadcast=True,
        exact_routing=True,
        exchange_types=frozenset({TOPIC}),
        queue_options=frozenset(),
        persistent=False,
    )

    def __init__(self) -> None:
        self.subscription = _Feed()

    def feed(self, *messages: IncomingMessage) -> None:
        self.subscription.inbox.extend(messages)

    def publish(self, exchange: Exchange, messages: Sequence[Any]) -> None:
        raise AssertionError("the receive path never publishes")

    def subscribe(self, exchange: Exchange, binding_key: str, queue: QueueOptions) -> _Feed:
        return self.subscription

    def close(self) -> None:
        pass


def _refuse_unpickling(name: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        UNPICKLE_CALLS.append(name)
        raise AssertionError(f"{name} was called on the receive path")

    return refuse


@pytest.fixture(autouse=True, scope="module")
def no_unpickling() -> Iterator[None]:
    """Every way to unpickle raises (and is recorded) for the whole module."""
    with pytest.MonkeyPatch.context() as patch:
        for module in (pickle, _pickle):
            for name in ("loads", "load", "Unpickler"):
                patch.setattr(module, name, _refuse_unpickling(f"{module.__name__}.{name}"))
        yield
    assert UNPICKLE_CALLS == []


def receiver_for(transport: FeedTransport, state: State, **options: Any) -> Receiver:
    return Receiver(transport, handlers={"*": state.event}, raise_handler_errors=True, **options)


def take_one(receiver: Receiver) -> None:
    """Capture until the message just fed is read (a busy machine can let a short capture's
    time run out before it even looks), then until its events are handled."""
    before = receiver.stats.messages
    for _ in range(1000):
        receiver.capture(timeout=0.002)
        if receiver.stats.messages > before and not receiver.pending_events:
            return
    raise AssertionError("the message fed was never read")


def message_level_refusals(receiver: Receiver) -> int:
    stats = receiver.stats
    return sum(stats.rejected[reason] for reason in MESSAGE_REASONS) + stats.duplicates


messages = st.builds(
    IncomingMessage,
    body=bodies,
    routing_key=st.sampled_from(["task.started", "worker.heartbeat", "task.multi", ""]),
    content_type=st.one_of(st.just("application/json"), content_types),
    content_encoding=st.one_of(st.just("utf-8"), encodings),
    headers=headers,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(messages, min_size=1, max_size=6),
    st.booleans(),
    st.sampled_from([64, 4096, codec.DEFAULT_MAX_MESSAGE_BYTES]),
)
def test_every_message_is_delivered_or_counted(
    batch: list[IncomingMessage], localize: bool, max_bytes: int
) -> None:
    transport, state = FeedTransport(), State(max_tasks_in_memory=10)
    receiver = receiver_for(transport, state, localize=localize, max_message_bytes=max_bytes)
    for message in batch:
        refused = message_level_refusals(receiver)
        events, not_events = receiver.stats.events, receiver.stats.rejected["not-an-event"]
        transport.feed(message)
        take_one(receiver)
        if message_level_refusals(receiver) == refused:
            # Accepted whole: each element became an event or was counted as not one.
            body = json.loads(message.body)
            items = len(body) if isinstance(body, list) else 1
            delivered = receiver.stats.events - events
            refused_items = receiver.stats.rejected["not-an-event"] - not_events
            assert delivered + refused_items == items
        else:
            assert message_level_refusals(receiver) == refused + 1
            assert receiver.stats.events == events
    assert receiver.stats.messages == len(batch)
    assert state.event_count == receiver.stats.events  # the handler saw every event
    assert receiver.stats.handler_errors == 0  # State.event never raised
    assert UNPICKLE_CALLS == []
    State.from_json(state.to_json())


def one(transport: FeedTransport, receiver: Receiver, body: bytes, **fields: Any) -> None:
    transport.feed(IncomingMessage(body, "task.started", **fields))
    take_one(receiver)


@pytest.mark.parametrize("accept", [("application/json",), ("json", "pickle")])
def test_pickle_payloads_are_never_unpickled(accept: tuple[str, ...]) -> None:
    transport, state = FeedTransport(), State()
    receiver = receiver_for(transport, state, accept=accept)
    payload = pickle.dumps({"type": "task-started", "uuid": "u"})
    one(transport, receiver, payload, content_type="application/x-python-serialize")
    one(transport, receiver, payload, content_type="application/json")
    one(transport, receiver, payload, content_type=None)
    assert receiver.stats.events == 0
    assert sum(receiver.stats.rejected.values()) == 3
    assert UNPICKLE_CALLS == []


def test_oversized_bodies_are_refused_against_the_configured_bound() -> None:
    transport, state = FeedTransport(), State()
    receiver = receiver_for(transport, state, max_message_bytes=1000)
    small = json.dumps({"type": "custom-x", "pad": "x" * 900}).encode()
    large = json.dumps({"type": "custom-x", "pad": "x" * 1000}).encode()
    one(transport, receiver, small)
    one(transport, receiver, large)
    assert receiver.stats.events == 1
    assert receiver.stats.rejected == {"too-large": 1}


def test_deep_nesting_is_refused_and_snapshots_keep_working() -> None:
    transport, state = FeedTransport(), State()
    receiver = receiver_for(transport, state)
    limit = codec.MAX_BODY_NESTING
    for depth in (10, limit - 1, limit, 990, 5000):  # the event's own dict is one more level
        one(transport, receiver, nested(depth))
    assert receiver.stats.events == 2
    assert receiver.stats.rejected["too-deep"] == 2
    assert receiver.stats.rejected["malformed"] == 1  # beyond the JSON parsers' own limit
    State.from_json(state.to_json())


def test_huge_numbers_in_time_fields_do_not_stop_the_loop() -> None:
    transport, state = FeedTransport(), State()
    receiver = receiver_for(transport, state, localize=True)
    big = "1" + "0" * 400
    body = '{"type":"task-started","uuid":"u","hostname":"w","timestamp":%s,"utcoffset":%s}'
    one(transport, receiver, (body % (big, "1")).encode())
    one(transport, receiver, (body % ("1.0", big)).encode())
    one(transport, receiver, (body % ("Infinity", "NaN")).encode())
    assert receiver.stats.events == 3
    assert receiver.stats.handler_errors == 0
    assert state.rejected == {"bad-timestamp": 1}


def test_batches_mixing_events_and_junk_keep_the_events() -> None:
    transport, state = FeedTransport(), State()
    receiver = receiver_for(transport, state)
    body = json.dumps(
        [
            {"type": "worker-online", "hostname": "w", "timestamp": 1.0},
            1,
            None,
            "x",
            [],
            {"type": 5},
            {"no": "type"},
            {"type": "task-started", "uuid": "u", "hostname": "w", "timestamp": 1.0},
        ]
    ).encode()
    one(transport, receiver, body)
    assert receiver.stats.events == 2
    assert receiver.stats.rejected == {"not-an-event": 6}
    assert len(state.workers) == 1 and len(state.tasks) == 1
