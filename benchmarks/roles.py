"""Subprocesses of the suite: ``python -m benchmarks.roles <role> '<json config>'``.

* ``redis-count``: a bare PSUBSCRIBE reader (hiredis) that keeps what arrives and, on
  each ``{"cmd": "count"}`` line, answers how many messages and events came since the last.
* ``e2e-receive``: a Receiver feeding a State (evcore's or Celery's), counting events and
  timing the last one; ``{"expected": N}`` on stdin tells it when it is done.
* ``e2e-dispatch``: a Dispatcher (evcore's or Celery's) that prepares its events, waits for
  ``{"cmd": "go"}`` and sends them as fast as it can.
* ``memory``: ingests a stream into a fresh State and reports retained memory per task.
* ``nats-count``: a NATS core subscription (evcore's adapter) answering ``{"cmd": "count"}``
  lines like ``redis-count``.

Each answers with JSON lines on stdout (see :func:`benchmarks.common.emit`).
"""

from __future__ import annotations

import base64
import gc
import json
import socket
import sys
import threading
import time
import tracemalloc
from typing import Any
from urllib.parse import urlparse

from benchmarks.common import emit
from benchmarks.workload import make_events, make_stream, sendable, tasks_for_events

BENCH_GROUP = "bench"


def celery_app(url: str, exchange: str) -> Any:
    from celery import Celery

    app = Celery("evbench", broker=url, set_as_current=False)
    app.conf.event_exchange = exchange
    app.conf.broker_connection_retry_on_startup = True
    return app


# -- redis-count ---------------------------------------------------------------------------


def events_in(routing_key: str, body: bytes) -> int:
    """Events one message carries: the length of a ``.multi`` batch, else one."""
    if routing_key.startswith(BENCH_GROUP + "."):
        return 0
    if routing_key.endswith(".multi"):
        return len(json.loads(body))
    return 1


def redis_count(config: dict[str, Any]) -> None:
    import hiredis

    url = urlparse(config["url"])
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 6379))
    pattern = config["pattern"].encode()
    sock.sendall(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(pattern), pattern))
    reader = hiredis.Reader()
    payloads: list[bytes] = []
    lock = threading.Lock()
    subscribed = threading.Event()

    def read() -> None:
        while True:
            data = sock.recv(1 << 20)
            if not data:
                return
            reader.feed(data)
            batch = []
            while (reply := reader.gets()) is not False:
                if reply[0] == b"pmessage":
                    batch.append(reply[3])
                elif reply[0] == b"psubscribe":
                    subscribed.set()
            if batch:
                with lock:
                    payloads.extend(batch)

    threading.Thread(target=read, daemon=True).start()
    subscribed.wait(10)
    emit({"ready": True})
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("cmd") != "count":
            continue
        time.sleep(command.get("settle", 0.3))
        with lock:
            taken, payloads[:] = list(payloads), []
        messages = events = 0
        for payload in taken:
            envelope = json.loads(payload)
            key = envelope["properties"]["delivery_info"]["routing_key"]
            count = events_in(key, base64.b64decode(envelope["body"]))
            if count:
                messages += 1
                events += count
        emit({"messages": messages, "events": events})


# -- end to end ----------------------------------------------------------------------------


class Tally:
    """Counts the events a handler saw (bench pings aside) and when the last one came."""

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.expected: int | None = None
        self.warm = threading.Event()
        self.done = threading.Event()

    def wrap(self, handle: Any) -> Any:
        def handler(event: dict[str, Any]) -> None:
            if event["type"].startswith(BENCH_GROUP):
                self.warm.set()
                return
            handle(event)
            self.count += 1
            self.last = time.monotonic()
            if self.count == 1:
                self.first = self.last
            if self.expected is not None and self.count >= self.expected:
                self.done.set()

        return handler

    def listen(self) -> None:
        """Read ``{"expected": N}`` from the parent."""

        def read() -> None:
            for line in sys.stdin:
                message = json.loads(line)
                if "expected" in message:
                    self.expected = message["expected"]
                    if self.count >= self.expected:
                        self.done.set()

        threading.Thread(target=read, daemon=True).start()


def e2e_receive(config: dict[str, Any]) -> None:
    url, exchange, system = config["url"], config["exchange"], config["system"]
    idle, limit = config["idle"], config["seconds"]
    tally = Tally()
    tally.listen()
    started = time.monotonic()
    announced = False

    def finished() -> bool:
        nonlocal announced
        if tally.warm.is_set() and not announced:
            announced = True
            emit({"ready": True})
        if tally.done.is_set() or time.monotonic() - started > limit:
            return True
        quiet = time.monotonic() - (tally.last or started)
        return tally.expected is not None and quiet > idle

    lost: int | None = None
    if system == "evcore":
        from evcore import Receiver
        from evcore.state import State

        state = State()
        receiver = Receiver(url, handlers={"*": tally.wrap(state.event)}, exchange=exchange)
        while not finished():
            receiver.capture(timeout=0.2)
        lost = sum(receiver.stats.lost_events.values())
        receiver.close()
    else:
        app = celery_app(url, exchange)
        state = app.events.State()
        with app.connection() as connection:
            receiver = app.events.Receiver(connection, handlers={"*": tally.wrap(state.event)})
            consumer = receiver.consume(limit=None, timeout=None, wakeup=False)

            # Stop from a watcher thread: Celery's receiver polls should_stop each round.
            def watch() -> None:
                while not finished():
                    time.sleep(0.05)
                receiver.should_stop = True

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            for _ in consumer:
                pass
            watcher.join()
    emit({"count": tally.count, "first": tally.first, "last": tally.last, "lost_seen": lost})


def e2e_dispatch(config: dict[str, Any]) -> None:
    url, exchange, system = config["url"], config["exchange"], config["system"]
    events = sendable(make_events(tasks_for_events(config["events"]), seed=config["seed"]))
    events = events[: config["events"]]
    batched = {"task"} if config.get("batched") else None
    limit = config["seconds"]
    if system == "evcore":
        from evcore import Dispatcher

        dispatcher = Dispatcher(
            url,
            hostname="w1@evbench",
            exchange=exchange,
            buffer_group=batched,
            background=config.get("background", False),
        )
        dispatcher.send("bench-warmup")
        dispatcher.flush()
        send, flush = dispatcher.send, dispatcher.flush
        close = dispatcher.close
    else:
        app = celery_app(url, exchange)
        connection = app.connection_for_write()
        dispatcher = app.events.Dispatcher(connection, hostname="w1@evbench", buffer_group=batched)
        dispatcher.send("bench-warmup")
        send, flush = dispatcher.send, dispatcher.flush

        def close() -> None:
            dispatcher.close()
            connection.release()

    emit({"prepared": True})
    sys.stdin.readline()
    start = time.monotonic()
    deadline = start + limit
    sent = 0
    for type_, fields in events:
        send(type_, **fields)
        sent += 1
        if not sent % 256 and time.monotonic() >= deadline:
            break
    flush()
    end = time.monotonic()
    close()
    emit({"sent": sent, "start": start, "end": end})


# -- memory --------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    import resource

    return pages * resource.getpagesize()


def memory(config: dict[str, Any]) -> None:
    """Feed ``tasks`` tasks' events, decoded one by one as a receiver would, into a fresh
    State that retains them all; report bytes per task by tracemalloc or by RSS."""
    system, tasks, how = config["system"], config["tasks"], config["how"]
    messages = make_stream(tasks)
    if system == "evcore":
        from evcore.codec import loads
        from evcore.state import State

        factory: Any = lambda: State(max_tasks_in_memory=tasks * 2)  # noqa: E731
    else:
        from celery.events.state import State as CeleryState
        from kombu.utils.json import loads

        factory = lambda: CeleryState(max_tasks_in_memory=tasks * 2)  # noqa: E731
    gc.collect()
    if how == "tracemalloc":
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    else:
        base = rss_bytes()
    state = factory()
    handle = state.event
    for message in messages:
        event = loads(message)
        event["local_received"] = event["timestamp"] + 0.002
        handle(event)
    del event
    gc.collect()
    if how == "tracemalloc":
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
    else:
        used = rss_bytes() - base
    emit({"per_task": used / len(state.tasks), "tasks": len(state.tasks)})


def stream_member(config: dict[str, Any]) -> None:
    """A Receiver + State on a durable URL (a group member, or alone from the earliest
    event): joins, says so, waits for ``{"go": t}``, then applies events until ``idle``
    seconds pass without one (after the first)."""
    from evcore import Receiver
    from evcore.gc_tuning import tune_gc
    from evcore.state import State
    from evcore.transport import EARLIEST, StreamOptions

    tune_gc()  # as evcore monitor does
    state = State(max_tasks_in_memory=None)
    tally = Tally()
    options = StreamOptions(
        group=config["group"], member=config["member"], start=EARLIEST, lease=config["lease"]
    )
    receiver = Receiver(config["url"], handlers={"*": tally.wrap(state.event)}, stream=options)
    emit({"ready": True})
    go = json.loads(sys.stdin.readline())["go"]
    cpu = time.process_time()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        receiver.capture(timeout=0.2)
        if tally.count and time.monotonic() - tally.last > config["idle"]:
            break
    cpu = time.process_time() - cpu
    lost = sum(receiver.stats.lost_events.values())
    receiver.close()
    emit(
        {
            "count": tally.count,
            "first": tally.first,
            "last": tally.last if tally.count else go,
            "go": go,
            "cpu": cpu,
            "lost": lost,
            "tasks": len(state.tasks),
        }
    )


def nats_count(config: dict[str, Any]) -> None:
    from evcore.transport import TOPIC, Exchange, QueueOptions
    from evcore_nats import NatsTransport

    transport = NatsTransport.from_url(config["url"])
    subscription = transport.subscribe(
        Exchange(config["exchange"], TOPIC), "#", QueueOptions("count")
    )
    counts = [0, 0]
    lock = threading.Lock()

    def read() -> None:
        while not subscription.closed:
            for message in subscription.receive(0.2):
                count = events_in(message.routing_key, message.body)
                if count:
                    with lock:
                        counts[0] += 1
                        counts[1] += count

    threading.Thread(target=read, daemon=True).start()
    emit({"ready": True})
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("cmd") != "count":
            continue
        # Wait until nothing has arrived for ``settle`` seconds: the subscriber may be
        # behind a fast publisher when the run ends.
        settle = command.get("settle", 0.3)
        deadline = time.monotonic() + 60
        seen = -1
        while time.monotonic() < deadline:
            time.sleep(settle)
            with lock:
                if counts[0] == seen:
                    break
                seen = counts[0]
        with lock:
            (messages, events), counts[:] = counts, [0, 0]
        emit({"messages": messages, "events": events})
    transport.close()


ROLES = {
    "stream-member": stream_member,
    "redis-count": redis_count,
    "nats-count": nats_count,
    "e2e-receive": e2e_receive,
    "e2e-dispatch": e2e_dispatch,
    "memory": memory,
}

if __name__ == "__main__":
    ROLES[sys.argv[1]](json.loads(sys.argv[2]))
