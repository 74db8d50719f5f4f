"""``/api/events/stream``: live events as server-sent events, bounded per client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from _serve_support import event

from evcore.serve.stream import EventStream, group_of


def frames_of(chunk: bytes) -> list[tuple[str, Any]]:
    """``(event name, decoded data)`` of each frame in ``chunk``."""
    found = []
    for frame in chunk.split(b"\n\n"):
        if not frame.startswith(b"event: "):
            continue
        lines = frame.split(b"\n")
        assert len(lines) == 2, frame  # one event line, one data line: nothing injected
        found.append((lines[0][7:].decode(), json.loads(lines[1][6:])))
    return found


def test_a_client_that_does_not_read_loses_its_oldest_events_only() -> None:
    async def main() -> None:
        stream = EventStream(buffer=10)
        subscriber = stream.subscribe(frozenset({"task"}))
        assert subscriber is not None
        for number in range(1000):
            stream.publish(event("task-received", uuid=f"t{number}", name="p.x"))
            stream.publish(event("worker-heartbeat"))  # not asked for
        assert len(subscriber.events) == 10  # bounded, whatever the client does
        frames = stream.frames(subscriber)
        assert await anext(frames) == b"retry: 2000\n\n"
        dropped = frames_of(await anext(frames))
        assert dropped == [("dropped", {"count": 990})]
        batch = frames_of(await anext(frames))
        assert [data["uuid"] for _, data in batch] == [f"t{n}" for n in range(990, 1000)]
        assert {name for name, _ in batch} == {"task"}
        assert stream.dropped_total == 990
        stream.close()
        rest = [chunk async for chunk in frames]
        assert rest == []
        assert not stream.subscribers

    asyncio.run(main())


def test_hostile_types_cannot_forge_frames() -> None:
    async def main() -> None:
        stream = EventStream()
        subscriber = stream.subscribe(frozenset({"task", "worker", "other"}))
        assert subscriber is not None
        nasty = "task-x\n\nevent: worker\ndata: {}\n"
        stream.publish({"type": nasty, "uuid": "<script>\n"})
        stream.publish({"type": 42})
        frames = stream.frames(subscriber, keep_alive=0.05)
        await anext(frames)
        batch = frames_of(await anext(frames))
        assert batch == [("task", {"type": nasty, "uuid": "<script>\n"}), ("other", {"type": 42})]
        assert await anext(frames) == b": keep-alive\n\n"
        await frames.aclose()
        assert not stream.subscribers

    asyncio.run(main())


def test_clients_are_bounded() -> None:
    stream = EventStream(max_clients=2)
    assert stream.subscribe(frozenset({"task"})) is not None
    assert stream.subscribe(frozenset({"task"})) is not None
    assert stream.subscribe(frozenset({"task"})) is None
    assert stream.refused == 1
    assert group_of({"type": "worker-online"}) == "worker"
    assert group_of({}) == "other"
