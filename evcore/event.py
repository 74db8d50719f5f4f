"""The event wire format: event dicts, groups, routing keys and evcore's message headers."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

#: Message headers carrying the sender's boot id and the sequence number of the first event
#: in the message. Celery ignores them; evcore's Receiver uses them to count lost events.
#: On a durable transport each partition has a sequence of its own: the boot header is then
#: ``<boot id>/<partition>`` (``/-1`` for the copies appended to every partition).
BOOT_HEADER = "evcore-boot"
SEQ_HEADER = "evcore-seq"


def Event(type: str, _fields: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """Build an event dict of ``type`` with ``fields``, stamping ``timestamp`` if absent.

    >>> ev = Event("task-started", uuid="abc", timestamp=1.5)
    >>> ev
    {'uuid': 'abc', 'timestamp': 1.5, 'type': 'task-started'}
    """
    event = {**_fields, **fields} if _fields else fields
    if "timestamp" not in event:
        event["timestamp"] = time.time()
    event["type"] = type
    return event


def group_from(type: str) -> str:
    """The group of an event type: the text before the first dash.

    >>> group_from("task-sent"), group_from("custom-my-event"), group_from("heartbeat")
    ('task', 'custom', 'heartbeat')
    """
    return type.split("-", 1)[0]


def routing_key_for(type: str) -> str:
    """The routing key an event of ``type`` is published with: dashes become dots."""
    return type.replace("-", ".")


def multi_routing_key(group: str) -> str:
    """The routing key of a batch of events of ``group``, e.g. ``task.multi``."""
    return f"{group}.multi"
