"""The SQS transport: events published to SNS topics, read from SQS queues.

An exchange is an SNS topic (FIFO by default: each publisher's order is kept); each
subscription is an SQS queue of its own subscribed to the topic with raw message delivery
and, where the binding allows, a filter policy on the routing key. ``publish()`` uses
PublishBatch (ten messages or 256 KiB per call); a subscription reads with ReceiveMessage
batches and deletes with DeleteMessageBatch.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from evcore.errors import ChannelError, ConnectionLost, UnsupportedOperation
from evcore.transport import (
    DIRECT,
    FANOUT,
    TOPIC,
    Capabilities,
    Exchange,
    OutgoingMessage,
    QueueOptions,
)
from evcore_adapter_helpers.subscriptions import OpenSubscriptions
from evcore_sqs.client import clients_for, is_missing_queue, load_boto3, translate
from evcore_sqs.payload import MAX_BODY_SIZE, MAX_MESSAGE, encode, size_of
from evcore_sqs.settings import SqsSettings, parse_settings, topic_name
from evcore_sqs.subscription import ALIVE_TAG, SUBSCRIPTION_TAG, SqsSubscription

__all__ = ["SqsTransport"]

_CAPABILITIES = Capabilities(
    broadcast=True,
    exact_routing=True,
    exchange_types=frozenset({TOPIC, FANOUT, DIRECT}),
    queue_options=frozenset(),
    persistent=False,
    max_body_size=MAX_BODY_SIZE,
)

#: Entries one PublishBatch call takes, at most.
_BATCH = 10


class SqsTransport:
    """Events over Amazon SNS and SQS (boto3)."""

    driver_type = "sqs"
    capabilities = _CAPABILITIES

    def __init__(self, settings: SqsSettings) -> None:
        self.settings = settings
        self._clients: tuple[Any, Any] | None = None
        self._topics: dict[str, str] = {}
        #: FIFO message group: one per publisher, so that its order is kept.
        self._group = uuid.uuid4().hex
        self._subscriptions: OpenSubscriptions[SqsSubscription] = OpenSubscriptions()
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_url(cls, url: str = "sqs://", **options: Any) -> SqsTransport:
        """Open ``sqs://[key:secret@]?region=...``; nothing is sent until the first
        publish or subscribe."""
        load_boto3()
        return cls(parse_settings(url, **options))

    def _connected(self) -> tuple[Any, Any]:
        if self._clients is None:
            self._clients = clients_for(self.settings)
        return self._clients

    def _topic_arn(self, exchange: str) -> str:
        arn = self._topics.get(exchange)
        if arn is None:
            sns, _ = self._connected()
            attributes = {"FifoTopic": "true"} if self.settings.fifo else {}
            name = topic_name(self.settings, exchange)
            try:
                arn = sns.create_topic(Name=name, Attributes=attributes)["TopicArn"]
            except Exception as exc:
                raise translate(exc, f"creating topic {name!r}", self.settings) from exc
            self._topics[exchange] = arn
        return arn

    def publish(self, exchange: Exchange, messages: Sequence[OutgoingMessage]) -> None:
        """Publish in PublishBatch calls, in order. A call holding a message over 256 KiB
        (attributes included) is refused whole with ChannelError before anything is sent."""
        if self._closed:
            raise ConnectionLost("the SQS transport is closed")
        _require_known_type(exchange)
        if not messages:
            return
        encoded = [encode(message) for message in messages]
        sizes = [size_of(body, attributes) for body, attributes in encoded]
        for message, size in zip(messages, sizes, strict=True):
            if size > MAX_MESSAGE:
                raise ChannelError(
                    f"a message of {len(message.body)} bytes (routing key "
                    f"{message.routing_key!r}) is {size} bytes for SNS, which carries at most "
                    f"{MAX_MESSAGE}: none of the {len(messages)} message(s) of this call was sent"
                )
        with self._lock:
            topic = self._topic_arn(exchange.name)
            sns, _ = self._connected()
            for batch in _batches(encoded, sizes):
                entries = [self._entry(index, *item) for index, item in enumerate(batch)]
                try:
                    reply = sns.publish_batch(TopicArn=topic, PublishBatchRequestEntries=entries)
                except Exception as exc:
                    if is_missing_queue(exc):
                        self._topics.pop(exchange.name, None)  # made again on the next try
                    raise translate(exc, "publishing", self.settings) from exc
                self._check(reply)

    def _entry(self, index: int, body: str, attributes: dict[str, Any]) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "Id": str(index),
            "Message": body,
            "MessageAttributes": attributes,
        }
        if self.settings.fifo:
            entry["MessageGroupId"] = self._group
            entry["MessageDeduplicationId"] = uuid.uuid4().hex
        return entry

    def _check(self, reply: dict[str, Any]) -> None:
        failed = reply.get("Failed") or []
        if not failed:
            return
        first = failed[0]
        text = f"SNS did not publish {len(failed)} message(s): {first.get('Code')}: " + str(
            first.get("Message", "")
        )
        if any(entry.get("SenderFault") for entry in failed):
            raise ChannelError(text)
        raise ConnectionLost(text)

    def subscribe(
        self, exchange: Exchange, binding_key: str, queue: QueueOptions
    ) -> SqsSubscription:
        """Create a queue of the subscription's own and subscribe it to the exchange's
        topic; returns once SNS has the subscription. Of ``queue`` only the name is used."""
        if self._closed:
            raise ConnectionLost("the SQS transport is closed")
        _require_known_type(exchange)
        topic = self._topic_arn(exchange.name)
        subscription = SqsSubscription(
            self.settings,
            self._connected(),
            topic,
            exchange.name,
            exchange.type,
            binding_key,
            queue.name,
            self._subscriptions.forget,
        )
        if not self._subscriptions.add(subscription):
            subscription.close()
            raise ConnectionLost("the SQS transport was closed while subscribing")
        return subscription

    def sweep(self, older_than: float = 3600.0) -> list[str]:
        """Delete the queues (and their SNS subscriptions) of receivers that died without
        closing: queues under ``queue_prefix`` whose alive tag is older than
        ``older_than`` seconds. Returns the names of the queues deleted."""
        _, sqs = self._connected()
        cutoff = time.time() - older_than
        deleted: list[str] = []
        try:
            for url in _queue_urls(sqs, self.settings.queue_prefix):
                tags = sqs.list_queue_tags(QueueUrl=url).get("Tags") or {}
                try:
                    alive = float(tags.get(ALIVE_TAG, "0"))
                except ValueError:
                    alive = 0.0
                if alive >= cutoff:
                    continue
                if tags.get(SUBSCRIPTION_TAG):
                    sns, _ = self._connected()
                    sns.unsubscribe(SubscriptionArn=tags[SUBSCRIPTION_TAG])
                sqs.delete_queue(QueueUrl=url)
                deleted.append(url.rsplit("/", 1)[-1])
        except Exception as exc:
            raise translate(exc, "sweeping queues", self.settings) from exc
        return deleted

    def close(self) -> None:
        """Close every subscription (deleting its queue) and the clients' connections; safe
        to call twice."""
        self._closed = True
        for subscription in self._subscriptions.close():
            subscription.close()
        with self._lock:
            clients, self._clients = self._clients, None
        for client in clients or ():
            client.close()

    def __repr__(self) -> str:
        return f"<SqsTransport {self.settings.address}>"


def _batches(
    encoded: list[tuple[str, dict[str, Any]]], sizes: list[int]
) -> list[list[tuple[str, dict[str, Any]]]]:
    """Runs of at most ten messages and 256 KiB in all, in order."""
    batches: list[list[tuple[str, dict[str, Any]]]] = []
    batch: list[tuple[str, dict[str, Any]]] = []
    total = 0
    for item, size in zip(encoded, sizes, strict=True):
        if batch and (len(batch) == _BATCH or total + size > MAX_MESSAGE):
            batches.append(batch)
            batch, total = [], 0
        batch.append(item)
        total += size
    batches.append(batch)
    return batches


def _queue_urls(sqs: Any, prefix: str) -> list[str]:
    urls: list[str] = []
    token: str | None = None
    while True:
        request: dict[str, Any] = {"QueueNamePrefix": prefix, "MaxResults": 1000}
        if token:
            request["NextToken"] = token
        reply = sqs.list_queues(**request)
        urls += reply.get("QueueUrls") or []
        token = reply.get("NextToken")
        if not token:
            return urls


def _require_known_type(exchange: Exchange) -> None:
    if exchange.type not in _CAPABILITIES.exchange_types:
        raise UnsupportedOperation(
            f"the SQS transport routes topic, fanout and direct exchanges; exchange "
            f"{exchange.name!r} has type {exchange.type!r}"
        )
