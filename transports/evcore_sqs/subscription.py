"""One SQS queue subscribed to an exchange's SNS topic: the SQS side of a Receiver.

The queue is named after the subscription's queue name, created and subscribed with raw
message delivery when the subscription opens, unsubscribed and deleted when it closes. A
subscription that lost its connection leaves both in place when closed: the Receiver
subscribes again with the same queue name, finds the queue with what arrived meanwhile,
and nothing is lost to a network failure. A queue nobody comes back for is the sweep's.

Messages are read ten at a time with long polls of ``wait_time_seconds`` and deleted in
one batch as soon as they are read: events are handed out at most once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from evcore.errors import ConnectionLost, MessageRejected
from evcore.routing import routes
from evcore.transport import IncomingMessage
from evcore_sqs.client import error_code, translate
from evcore_sqs.payload import decode, filter_policy
from evcore_sqs.settings import SqsSettings, queue_name

__all__ = ["ALIVE_TAG", "SUBSCRIPTION_TAG", "SqsSubscription"]

logger = logging.getLogger("evcore.sqs")

#: Queue tags: when the subscription last said it was alive (Unix seconds), and the SNS
#: subscription to remove with the queue. The sweep reads both.
ALIVE_TAG = "evcore-alive"
SUBSCRIPTION_TAG = "evcore-subscription"

#: What SQS answers when a queue's name was deleted less than 60 s ago.
_DELETED_RECENTLY = {"AWS.SimpleQueueService.QueueDeletedRecently", "QueueDeletedRecently"}

#: Messages one ReceiveMessage or DeleteMessageBatch call handles, at most.
_BATCH = 10


class SqsSubscription:
    """Messages of one SNS topic whose routing key the binding matches, through a queue."""

    def __init__(
        self,
        settings: SqsSettings,
        clients: tuple[Any, Any],
        topic_arn: str,
        exchange: str,
        exchange_type: str,
        binding_key: str,
        queue: str,
        on_close: Callable[[SqsSubscription], None],
    ) -> None:
        self.exchange = exchange
        self.name = queue_name(settings, queue)
        #: Messages dropped because they could not be decoded.
        self.rejected = 0
        self._settings = settings
        self._sns, self._sqs = clients
        self._type = exchange_type
        self._binding = binding_key
        self._queue = queue
        self._on_close = on_close
        self._closed = threading.Event()
        self._io = threading.Lock()
        self._dead = False
        self._queue_url: str | None = None
        self._subscription_arn: str | None = None
        self._alive_at = 0.0
        try:
            self._create(topic_arn)
        except Exception as exc:
            self._remove()
            raise translate(exc, f"subscribing queue {self.name!r}", settings) from exc

    def _create(self, topic_arn: str) -> None:
        settings = self._settings
        attributes = {
            "MessageRetentionPeriod": str(settings.message_retention),
            "VisibilityTimeout": str(settings.visibility_timeout),
        }
        if settings.fifo:
            attributes["FifoQueue"] = "true"
        try:
            created = self._sqs.create_queue(QueueName=self.name, Attributes=attributes)
        except Exception as exc:
            if error_code(exc) not in _DELETED_RECENTLY:
                raise
            self.name = queue_name(settings, self._queue, uuid.uuid4().hex[:12])
            created = self._sqs.create_queue(QueueName=self.name, Attributes=attributes)
        self._queue_url = created["QueueUrl"]
        self._sqs.tag_queue(QueueUrl=self._queue_url, Tags={ALIVE_TAG: str(int(time.time()))})
        self._alive_at = time.monotonic()
        queue_arn = self._sqs.get_queue_attributes(
            QueueUrl=self._queue_url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "sns.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
                }
            ],
        }
        self._sqs.set_queue_attributes(
            QueueUrl=self._queue_url, Attributes={"Policy": json.dumps(policy)}
        )
        subscription_attributes = {"RawMessageDelivery": "true"}
        policy_filter = filter_policy(self._type, self._binding)
        if policy_filter is not None:
            subscription_attributes["FilterPolicy"] = json.dumps(policy_filter)
        self._subscription_arn = self._sns.subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=queue_arn,
            Attributes=subscription_attributes,
            ReturnSubscriptionArn=True,
        )["SubscriptionArn"]
        self._sqs.tag_queue(
            QueueUrl=self._queue_url, Tags={SUBSCRIPTION_TAG: self._subscription_arn}
        )

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed.is_set()

    def receive(self, timeout: float | None = None) -> list[IncomingMessage]:
        """Wait up to ``timeout`` seconds for messages and return them (up to ten at a
        time); ``[]`` on timeout or close."""
        if self._closed.is_set():
            return []
        with self._io:
            if self._dead:
                raise ConnectionLost("this SQS subscription lost its queue; subscribe again")
            try:
                return self._receive(timeout)
            except ConnectionLost:
                self._dead = not self._closed.is_set()
                if self._closed.is_set():
                    return []
                raise
            except Exception as exc:
                if self._closed.is_set():
                    return []
                error = translate(exc, f"receiving from queue {self.name!r}", self._settings)
                self._dead = isinstance(error, ConnectionLost)
                raise error from exc

    def _receive(self, timeout: float | None) -> list[IncomingMessage]:
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while not self._closed.is_set():
            remaining = math.inf if deadline is None else deadline - time.monotonic()
            wait = int(min(self._settings.wait_time_seconds, max(remaining, 0.0)))
            self._say_alive()
            reply = self._sqs.receive_message(
                QueueUrl=self._queue_url,
                MaxNumberOfMessages=_BATCH,
                WaitTimeSeconds=wait,
                MessageAttributeNames=["All"],
            )
            messages = reply.get("Messages") or []
            if messages:
                self._delete(messages)
                received = [m for m in map(self._decode, messages) if m is not None]
                if received:
                    return received
            if remaining <= 0 or self._closed.is_set():
                break
            if wait == 0:
                time.sleep(min(remaining, 0.05))
        return []

    def _delete(self, messages: list[dict[str, Any]]) -> None:
        entries = [
            {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
            for index, message in enumerate(messages)
        ]
        reply = self._sqs.delete_message_batch(QueueUrl=self._queue_url, Entries=entries)
        if reply.get("Failed"):
            logger.warning(
                "SQS did not delete %d message(s) of queue %r; they may be received again",
                len(reply["Failed"]),
                self.name,
            )

    def _decode(self, message: dict[str, Any]) -> IncomingMessage | None:
        body = message.get("Body", "")
        try:
            decoded = decode(body, message.get("MessageAttributes") or {}, self.exchange)
        except MessageRejected as exc:
            self.rejected += 1
            logger.warning("dropped a message of SQS queue %r: %s", self.name, exc)
            return IncomingMessage(
                str(body).encode("utf-8", "replace"), "", self.exchange, rejected=exc.reason
            )
        if not routes(self._type, self._binding, decoded.routing_key):
            return None
        return decoded

    def _say_alive(self) -> None:
        """Tag the queue with the time now and then, so a sweep can tell it is in use."""
        if time.monotonic() - self._alive_at < self._settings.alive_interval:
            return
        self._alive_at = time.monotonic()
        self._sqs.tag_queue(QueueUrl=self._queue_url, Tags={ALIVE_TAG: str(int(time.time()))})

    def close(self) -> None:
        """Unsubscribe and delete the queue, unless the connection was lost (then both stay
        for the next subscription to the same queue name). A blocked :meth:`receive`
        returns ``[]`` after its current long poll (``wait_time_seconds`` at most)."""
        if self._closed.is_set():
            return
        self._closed.set()
        # A poll in progress ends first: the queue is not deleted under a waiting request.
        reading = self._io.acquire(timeout=self._settings.wait_time_seconds + 5)
        try:
            if self._dead:
                logger.info("left SQS queue %r for the next subscription to it", self.name)
            else:
                self._remove()
        finally:
            if reading:
                self._io.release()
        self._on_close(self)

    def _remove(self) -> None:
        if self._subscription_arn is not None:
            with contextlib.suppress(Exception):
                self._sns.unsubscribe(SubscriptionArn=self._subscription_arn)
        if self._queue_url is not None:
            try:
                self._sqs.delete_queue(QueueUrl=self._queue_url)
            except Exception as exc:
                logger.warning(
                    "could not delete SQS queue %r (a sweep will): %s", self.name, exc
                )

    def __repr__(self) -> str:
        state = "closed" if self.closed else "dead" if self._dead else "open"
        return f"<SqsSubscription {self.name!r} {state}>"
