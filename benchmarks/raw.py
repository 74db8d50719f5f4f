"""Section 5: the client libraries' own limits on this machine, for context.

The same messages the dispatch section sends (Redis envelopes, raw JSON bodies on
RabbitMQ), through redis-py and pika directly, with a subscriber bound.
"""

from __future__ import annotations

import json
import time
from typing import Any

from benchmarks.common import Row, Settings, Timer, log, pika_parameters
from benchmarks.dispatch import RedisCounter, exchange_name
from benchmarks.inproc import json_rows, redis_payloads
from benchmarks.workload import make_events, tasks_for_events

SECTION = "5. Raw limits on this machine"


def raw_section(settings: Settings) -> list[Row]:
    events = make_events(tasks_for_events(settings.raw_messages))[: settings.raw_messages]
    rows = [*redis_rows(settings, events), *pika_rows(settings, events), *json_rows(settings)]
    return rows


def tally(row: Row, sent: int, arrived: int) -> None:
    """Keep one note on the row: messages arrived of those sent, over all repetitions."""
    before = row.notes.pop() if row.notes else "0/0"
    got, total = (int(part) for part in before.split()[0].split("/"))
    row.notes.append(f"{got + arrived}/{total + sent} arrived")


def redis_rows(settings: Settings, events: list[dict[str, Any]]) -> list[Row]:
    import redis

    exchange = exchange_name()
    client = redis.Redis.from_url(settings.redis_url)
    db = client.connection_pool.connection_kwargs.get("db", 0)
    messages = [(f"/{db}.{exchange}/{key}", payload) for key, payload in redis_payloads(events)]
    counter = RedisCounter(settings.redis_url, exchange)
    pipelined = Row(SECTION, "redis-py pipelined PUBLISH (512 per round trip)", "messages/s")
    single = Row(SECTION, "redis-py PUBLISH, one round trip each", "messages/s")
    log(f"raw redis-py: {len(messages)} messages, {settings.reps} repetitions")
    try:
        client.ping()
        for _ in range(settings.reps):
            timer = Timer(settings.dispatch_seconds, every=1)
            start = time.perf_counter()
            sent = 0
            for index in range(0, len(messages), 512):
                pipe = client.pipeline(transaction=False)
                for channel, payload in messages[index : index + 512]:
                    pipe.publish(channel, payload)
                pipe.execute()
                sent += len(messages[index : index + 512])
                if timer.expired():
                    break
            pipelined.evcore.append(sent / (time.perf_counter() - start))
            tally(pipelined, sent, counter.take(sent)[0])

            timer = Timer(settings.dispatch_seconds)
            start = time.perf_counter()
            sent = 0
            for channel, payload in messages:
                client.publish(channel, payload)
                sent += 1
                if timer.expired():
                    break
            single.evcore.append(sent / (time.perf_counter() - start))
            tally(single, sent, counter.take(sent)[0])
    finally:
        counter.close()
        client.close()
    return [pipelined, single]


def pika_rows(settings: Settings, events: list[dict[str, Any]]) -> list[Row]:
    import pika

    exchange = exchange_name()
    bodies = [(event["type"].replace("-", "."), json.dumps(event).encode()) for event in events]
    properties = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=1,
        priority=0,
        headers={"hostname": "w1@evbench"},
    )
    connection = pika.BlockingConnection(pika_parameters(settings.amqp_url))
    channel = connection.channel()
    channel.exchange_declare(exchange, "topic", durable=True, auto_delete=False)
    queue = f"{exchange}.raw"
    channel.queue_declare(queue, exclusive=True, auto_delete=False)
    channel.queue_bind(queue, exchange, routing_key="#")
    publish = Row(SECTION, "pika BlockingChannel.basic_publish", "messages/s")
    consume = Row(SECTION, "pika basic_consume (auto_ack) of those messages", "messages/s")
    log(f"raw pika: {len(bodies)} messages, {settings.reps} repetitions")
    try:
        for _ in range(settings.reps):
            timer = Timer(settings.dispatch_seconds)
            start = time.perf_counter()
            sent = 0
            for key, body in bodies:
                channel.basic_publish(exchange, key, body, properties)
                sent += 1
                if timer.expired():
                    break
            publish.evcore.append(sent / (time.perf_counter() - start))

            received = [0]

            def on_message(*_args: Any, received: list[int] = received) -> None:
                received[0] += 1

            # Wait until the broker has routed them all before timing the consumer.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                depth = channel.queue_declare(queue, passive=True).method.message_count
                if depth >= sent:
                    break
                time.sleep(0.05)
            tag = channel.basic_consume(queue, on_message, auto_ack=True)
            start = time.perf_counter()
            deadline = time.monotonic() + 60
            while received[0] < depth and time.monotonic() < deadline:
                connection.process_data_events(time_limit=0.05)
            consume.evcore.append(received[0] / (time.perf_counter() - start))
            channel.basic_cancel(tag)
            tally(publish, sent, received[0])
    finally:
        try:
            channel.exchange_delete(exchange)
        finally:
            connection.close()
    return [publish, consume]
