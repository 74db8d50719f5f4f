"""Hypothesis strategies for hostile input: events with missing or wrongly typed fields,
values of every JSON shape and size, and message bodies, content types and headers."""

from __future__ import annotations

import json
import pickle
from typing import Any

from hypothesis import strategies as st

#: Event types the State handles, plus ones it must ignore or refuse.
EVENT_TYPES = (
    "task-sent",
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-retried",
    "task-revoked",
    "task-rejected",
    "task-progress",
    "worker-online",
    "worker-heartbeat",
    "worker-offline",
    "custom-thing",
    "task",
    "worker-",
    "-",
    "",
)

#: Fields events carry (and a few that name the State's own attributes).
FIELDS = (
    "clock",
    "timestamp",
    "uuid",
    "hostname",
    "utcoffset",
    "local_received",
    "freq",
    "pid",
    "name",
    "parent_id",
    "root_id",
    "result",
    "args",
    "kwargs",
    "retries",
    "eta",
    "expires",
    "children",
    "state",
    "worker",
    "client",
    "runtime",
    "exception",
    "traceback",
    "active",
    "processed",
    "loadavg",
    "cluster_state",
    "_born",
    "born_seq",
    "_children",
    "_extra",
    "__class__",
)

HUGE_TEXT = "x" * 200_000

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(),
    st.sampled_from([1e308, -1e308, 1e20, -1.0, 0.0, 1.7e9]),
    st.text(max_size=16),
    st.just(HUGE_TEXT),
)
#: Any JSON-shaped value: scalars, and lists and dicts of them, a few levels deep.
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
uuids = st.one_of(st.sampled_from(["u1", "u2", "u3", "parent"]), values)
hostnames = st.one_of(st.sampled_from(["w1@h", "w2@h"]), values)


@st.composite
def events(draw: st.DrawFn, local_received: bool = True) -> dict[str, Any]:
    """A mostly plausible event with some fields missing, wrongly typed or outsized."""
    event: dict[str, Any] = {"type": draw(st.one_of(st.sampled_from(EVENT_TYPES), values))}
    plausible = {
        "uuid": draw(uuids),
        "hostname": draw(hostnames),
        "timestamp": draw(st.one_of(st.just(1.7e9), values)),
        "clock": draw(st.one_of(st.integers(0, 100), values)),
        "parent_id": draw(st.one_of(st.none(), uuids)),
    }
    if local_received:
        plausible["local_received"] = draw(st.one_of(st.just(1.7e9), values))
    for key, value in plausible.items():
        if draw(st.integers(0, 9)):  # each field present nine times in ten
            event[key] = value
    extra = draw(st.dictionaries(st.sampled_from(FIELDS), values, max_size=4))
    event.update(extra)
    return event


def to_json(value: Any) -> bytes:
    """``value`` as JSON text (NaN and Infinity included, as Python writes them)."""
    return json.dumps(value, allow_nan=True).encode()


def nested(depth: int) -> bytes:
    """A JSON event whose ``result`` nests ``depth`` lists deep."""
    return b'{"type":"task-started","uuid":"deep","result":' + b"[" * depth + b"]" * depth + b"}"


#: Bodies: JSON of any shape, event lists, raw bytes, pickles, deep nesting, big numbers.
bodies = st.one_of(
    st.builds(to_json, events(local_received=False)),
    st.builds(to_json, st.lists(st.one_of(events(local_received=False), values), max_size=5)),
    st.builds(to_json, values),
    st.binary(max_size=64),
    st.builds(pickle.dumps, values),
    st.builds(nested, st.integers(1, 3000)),
    st.sampled_from(
        [
            b"",
            b"{",
            b"null",
            b"[]",
            b'{"type": NaN}',
            b'{"type":"worker-online","hostname":"w","timestamp":Infinity}',
            b'{"type":"task-started","uuid":"u","timestamp":1' + b"0" * 400 + b"}",
            b'{"type":"task-started","clock":-' + b"9" * 400 + b"}",
            b"\xff\xfe{}",
            b'"type"',
        ]
    ),
)
content_types = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/x-python-serialize",
            "application/x-yaml",
            "application/x-msgpack",
            "text/plain",
            "",
        ]
    ),
    st.none(),
    st.text(max_size=12),
)
encodings = st.one_of(
    st.sampled_from(["utf-8", "binary", "gzip", "base64", ""]), st.none(), st.text(max_size=8)
)
headers = st.one_of(
    st.dictionaries(
        st.sampled_from(["hostname", "evcore-boot", "evcore-seq", "x"]), values, max_size=4
    ),
    st.fixed_dictionaries(
        {
            "hostname": hostnames,
            "evcore-boot": st.sampled_from(["b1", "b2"]),
            "evcore-seq": st.one_of(st.integers(-5, 50), values),
        }
    ),
)
