"""The codec's bounds on received bodies, and a fuzz of ``decode_body`` itself."""

from __future__ import annotations

import pytest
from _fuzz_strategies import bodies, content_types, encodings
from hypothesis import given, settings
from hypothesis import strategies as st

from evcore import codec
from evcore.errors import MessageRejected

ACCEPT = frozenset({codec.JSON})
REASONS = {"too-large", "content-type", "encoding", "malformed", "too-deep"}


@pytest.mark.parametrize("depth", [1, codec.MAX_BODY_NESTING])
def test_nesting_up_to_the_bound_is_accepted(depth: int) -> None:
    assert codec.decode_body(b"[" * depth + b"]" * depth, None, None, ACCEPT) is not None


@pytest.mark.parametrize("depth", [codec.MAX_BODY_NESTING + 1, 500, 1000])
def test_nesting_beyond_the_bound_is_refused(depth: int) -> None:
    body = b'{"a":' + b"[{}," * depth + b"1" + b"]" * depth + b"}"
    with pytest.raises(MessageRejected) as refused:
        codec.decode_body(body, None, None, ACCEPT)
    assert refused.value.reason == "too-deep"


def test_many_brackets_without_depth_are_accepted() -> None:
    wide = b"[" + b",".join([b'{"a":[1],"b":{}}'] * 500) + b"]"
    assert len(codec.decode_body(wide, None, None, ACCEPT)) == 500


@settings(max_examples=300, deadline=None)
@given(bodies, st.one_of(st.none(), content_types), encodings, st.integers(1, 10_000))
def test_decode_body_returns_or_refuses_with_a_known_reason(
    body: bytes, content_type: str | None, encoding: str | None, max_bytes: int
) -> None:
    try:
        codec.decode_body(body, content_type, encoding, ACCEPT, max_bytes)
    except MessageRejected as exc:
        assert exc.reason in REASONS
