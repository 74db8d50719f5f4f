"""Section 7: ``evcore relay``, Redis pub/sub (Celery's own EventDispatcher) -> Redis Streams.

- Throughput: evcore's background Dispatcher publishes the workload over Redis pub/sub
  (Celery's wire format, unbatched, then batched as a worker with an event loop does) as
  fast as it can, faster than Celery's own EventDispatcher, so the relay is the bottleneck;
  a relay process appends it to Redis Streams. The rate is events appended over the time
  from the first send to the last append confirmed. Alternated with evcore's pub/sub end to
  end (the same sender -> Receiver + State, section 2's harness): what the relay costs
  against a pub/sub monitor.
- Kill -9: Celery's own EventDispatcher (batched) publishes; two relays on one source, one
  killed with SIGKILL while the workload is sent and started again; then one relay alone
  killed and restarted. A reader applies the stream: events applied once, lost, applied
  twice.

The relay runs in a child process (``python -m benchmarks.relay child CONFIG``) that prints
JSON lines: ``{"ready": ...}`` once subscribed, then, told how many events to expect,
``{"forwarded": N, "last": T}`` (``T`` on the monotonic clock, shared by the processes).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

from benchmarks.common import PYTHON, ROOT, Child, Row, Settings, log
from benchmarks.dispatch import e2e_run, exchange_name
from benchmarks.durable import PARTITIONS, drop_keys, stream_url

SECTION = "7. Relay (Celery pub/sub -> Redis Streams)"


class RelayChild:
    """A relay in a child process (see the module documentation)."""

    def __init__(self, source: str, destination: str, exchange: str) -> None:
        config = {"source": source, "destination": destination, "exchange": exchange}
        self.process = subprocess.Popen(
            [PYTHON, "-m", "benchmarks.relay", "child", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            text=True,
        )
        ready = self._line()
        if not ready.get("ready"):
            raise RuntimeError(f"the relay child did not subscribe: {ready}")

    def _line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the relay child exited with {self.process.wait()}")
        message: dict[str, Any] = json.loads(line)
        return message

    def result(self, expected: int) -> dict[str, Any]:
        """Wait for ``expected`` events appended (or 3 s without progress)."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"expected": expected}) + "\n")
        self.process.stdin.flush()
        return self._line()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def child(config: dict[str, Any]) -> None:
    from evcore.relay import Relay

    relay = Relay(config["source"], config["destination"], exchange=config["exchange"])
    signal.signal(signal.SIGTERM, lambda signum, frame: relay.stop())
    progress = {"last": time.monotonic(), "forwarded": 0}

    def watch() -> None:
        while True:
            forwarded = relay.stats.forwarded
            if forwarded != progress["forwarded"]:
                progress.update(forwarded=forwarded, last=time.monotonic())
            time.sleep(0.002)

    threading.Thread(target=watch, daemon=True).start()
    runner = threading.Thread(target=relay.run, daemon=True)
    runner.start()
    print(json.dumps({"ready": relay.subscribed.is_set()}), flush=True)
    line = sys.stdin.readline()
    if line:
        expected = json.loads(line)["expected"]
        while progress["forwarded"] < expected and time.monotonic() - progress["last"] < 3.0:
            time.sleep(0.01)
        stats = relay.stats.as_dict()
        print(json.dumps({**stats, "forwarded": progress["forwarded"], "last": progress["last"]}))
        sys.stdout.flush()
    relay.stop()
    runner.join(timeout=10)
    relay.close()


def _sender(
    settings: Settings, source: str, exchange: str, seed: int, batched: bool, system: str
) -> Child:
    sender = Child(
        "e2e-dispatch",
        {
            "url": source,
            "exchange": exchange,
            "system": system,
            "background": True,
            "events": settings.e2e_events,
            "seconds": settings.e2e_seconds,
            "seed": seed,
            "batched": batched,
        },
    )
    sender.expect(60)
    return sender


def relay_run(settings: Settings, seed: int, batched: bool) -> dict[str, Any]:
    """One sender process -> Redis pub/sub -> relay process -> Redis Streams."""
    exchange, prefix = exchange_name(), f"evbench-{uuid.uuid4().hex[:10]}:"
    relay = RelayChild(settings.redis_url, stream_url(settings.redis_url, prefix), exchange)
    try:
        sender = _sender(settings, settings.redis_url, exchange, seed, batched, "evcore")
        try:
            sender.send({"cmd": "go"})
            sent = sender.expect(settings.e2e_seconds + 60)
        finally:
            sender.close()
        got = relay.result(sent["sent"] + 1)  # and the sender's warm-up event
    finally:
        relay.close()
        drop_keys(settings.redis_url, prefix)
    forwarded = got["forwarded"] - 1
    return {
        "sent": sent["sent"],
        "forwarded": forwarded,
        "rate": forwarded / max(got["last"] - sent["start"], 1e-9),
        "send_rate": sent["sent"] / max(sent["end"] - sent["start"], 1e-9),
    }


def throughput_rows(settings: Settings) -> list[Row]:
    rows = []
    reps = max(1, min(settings.reps, 3))
    for batched in (False, True):
        label = "batched" if batched else "unbatched"
        log(f"relay throughput, sender {label}: {reps} repetitions, relay vs pub/sub e2e")
        relay_runs: list[dict[str, Any]] = []
        pubsub_runs: list[dict[str, Any]] = []
        for rep in range(reps):
            order = ["relay", "pubsub"] if rep % 2 == 0 else ["pubsub", "relay"]
            for system in order:
                if system == "relay":
                    relay_runs.append(relay_run(settings, rep, batched))
                else:
                    pubsub_runs.append(
                        e2e_run(settings, settings.redis_url, "evcore", batched, rep)
                    )
        sent = sum(run["sent"] for run in relay_runs)
        forwarded = sum(run["forwarded"] for run in relay_runs)
        pubsub = statistics.median(run["rate"] for run in pubsub_runs)
        relay_median = statistics.median(run["rate"] for run in relay_runs)
        rows.append(
            Row(
                SECTION,
                f"relay throughput, sender {label} -> Redis pub/sub -> relay -> Redis Streams "
                f"({PARTITIONS} partitions)",
                "events/s",
                [run["rate"] for run in relay_runs],
                notes=[
                    f"{forwarded}/{sent} events appended, {sent - forwarded} lost on the "
                    "pub/sub leg; sender rates "
                    + ", ".join(f"{run['send_rate']:,.0f}/s" for run in relay_runs),
                    f"same run, evcore pub/sub end to end (Receiver + State) from the same "
                    f"sender: median {pubsub:,.0f} events/s (relay/pub-sub "
                    f"{relay_median / pubsub:.2f}x)",
                ],
            )
        )
    return rows


def _read_stream(url: str, exchange: str) -> dict[str, int]:
    """Apply the whole stream once: events applied, distinct, copies dropped."""
    from evcore import Receiver
    from evcore.state import State
    from evcore.transport import EARLIEST, StreamOptions

    state = State(max_tasks_in_memory=None)
    identities: set[tuple[Any, ...]] = set()

    def apply(event: dict[str, Any]) -> None:
        identities.add((event.get("type"), event.get("uuid"), event.get("timestamp")))
        state.event(event)

    receiver = Receiver(
        url, handlers={"*": apply}, exchange=exchange, stream=StreamOptions(start=EARLIEST)
    )
    try:
        while receiver.capture(timeout=1.0):
            pass
    finally:
        receiver.close()
    return {
        "applied": state.event_count,
        "distinct": len(identities),
        "duplicates_dropped": receiver.stats.duplicates,
    }


def kill_run(settings: Settings, pair: bool) -> dict[str, Any]:
    """Relays on one source, the first killed -9 just after the sending starts and started
    again at once; the stream read back at the end."""
    exchange, prefix = exchange_name(), f"evbench-{uuid.uuid4().hex[:10]}:"
    dest = stream_url(settings.redis_url, prefix)
    relays = [RelayChild(settings.redis_url, dest, exchange) for _ in range(2 if pair else 1)]
    try:
        sender = _sender(settings, settings.redis_url, exchange, 5, True, "celery")
        try:
            sender.send({"cmd": "go"})
            time.sleep(0.3)
            relays[0].kill()
            killed_at = time.monotonic()
            relays[0] = RelayChild(settings.redis_url, dest, exchange)
            down = time.monotonic() - killed_at
            sent = sender.expect(settings.e2e_seconds + 60)
        finally:
            sender.close()
        for relay in relays:
            relay.result(sent["sent"] + 1)
        for relay in relays:
            relay.close()
        read = _read_stream(dest, exchange)
    finally:
        for relay in relays:
            relay.close()
        drop_keys(settings.redis_url, prefix)
    expected = sent["sent"] + 1
    return {
        "sent": expected,
        "down": down,
        "send_seconds": sent["end"] - sent["start"],
        **read,
        "lost": expected - read["distinct"],
        "applied_twice": read["applied"] - read["distinct"],
    }


def kill_rows(settings: Settings) -> list[Row]:
    log("relay: kill -9 and restart, two relays then one")
    rows = []
    for pair in (True, False):
        run = kill_run(settings, pair)
        what = (
            "two relays on one source, one killed -9 and restarted"
            if pair
            else "one relay alone killed -9 and restarted"
        )
        rows.append(
            Row(
                SECTION,
                f"kill -9: {what} during a {run['sent']:,}-event batched Celery run",
                "events applied once",
                [float(run["distinct"])],
                notes=[
                    f"sent {run['sent']:,}, applied once {run['distinct']:,}, lost "
                    f"{run['lost']:,}, applied twice {run['applied_twice']}; "
                    f"{run['duplicates_dropped']:,} copies dropped by key",
                    f"the killed relay was down {run['down']:.2f} s of a "
                    f"{run['send_seconds']:.2f} s send; lost counts the pub/sub leg only "
                    "(published while no relay was subscribed, or accepted by the killed relay "
                    "and not appended yet)",
                ],
            )
        )
    return rows


def relay_section(settings: Settings) -> list[Row]:
    return [*throughput_rows(settings), *kill_rows(settings)]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child":
        child(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: python -m benchmarks relay section: python -m benchmarks --only relay")
