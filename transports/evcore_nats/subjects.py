"""Subjects: where an exchange and a routing key live in NATS's subject space.

A message to exchange ``E`` with routing key ``w1.w2`` goes to ``[prefix.]E.w1.w2``: one
token for the exchange, one per routing-key word, so NATS's wildcards do the topic matching.
Every name is hostile until escaped: a token keeps letters, digits, ``-`` and ``_`` and
percent-encodes every other byte of its UTF-8 form (dots, spaces, ``*``, ``>``, ``%``, control
characters), and an empty word becomes the token ``%`` (a lone ``%`` never comes out of
percent-encoding). So no name can add a token, become a wildcard or break the protocol line.

Topic bindings map onto NATS wildcards as far as their meanings agree. AMQP's ``*`` and NATS's
``*`` are both exactly one word. AMQP's ``#`` is *zero* or more words, anywhere; NATS's ``>``
is *one* or more tokens, last only. So:

- a binding without ``#`` is one subject, matched exactly by NATS;
- a binding ending in ``#`` (``worker.#``) is two subjects, ``E.worker`` (the zero-word case
  ``>`` misses) and ``E.worker.>``: exact again;
- a ``#`` before the end (``#.heartbeat``, ``a.#.b``) cannot be said in NATS: everything from
  it on becomes ``>``, a superset that the core filters by the binding key (the transports
  declare ``exact_routing=False`` for this case).
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from evcore.transport import DIRECT, FANOUT

__all__ = [
    "MAX_SUBJECT_BYTES",
    "escape_token",
    "publish_subject",
    "routing_key_of",
    "subscribe_subjects",
    "unescape_token",
]

#: Longest subject published. The server closes a connection whose protocol line exceeds
#: its ``max_control_line`` (4 KiB by default), so anything near that is refused first.
MAX_SUBJECT_BYTES = 1024

_PLAIN = re.compile(r"[A-Za-z0-9_-]+")
_SAFE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_EMPTY = "%"


def escape_token(word: str) -> str:
    """One subject token for ``word``: itself when plain, else percent-encoded."""
    if _PLAIN.fullmatch(word):
        return word
    if not word:
        return _EMPTY
    return "".join(
        chr(byte) if byte in _SAFE_BYTES else f"%{byte:02X}"
        for byte in word.encode("utf-8", "surrogatepass")
    )


def unescape_token(token: str) -> str:
    """The word a token stands for (invalid UTF-8 from a foreign publisher is replaced)."""
    if token == _EMPTY:
        return ""
    if "%" not in token:
        return token
    return unquote_to_bytes(token).decode("utf-8", "replace")


def _base(prefix: str, exchange: str) -> str:
    return f"{prefix}.{escape_token(exchange)}" if prefix else escape_token(exchange)


def publish_subject(prefix: str, exchange: str, routing_key: str) -> str:
    """The subject a message to ``exchange`` with ``routing_key`` is published on."""
    words = ".".join(escape_token(word) for word in routing_key.split("."))
    return f"{_base(prefix, exchange)}.{words}"


def routing_key_of(subject: str, prefix: str, exchange: str) -> str:
    """The routing key a subject of ``exchange`` carries (``""`` for a foreign subject)."""
    base = _base(prefix, exchange)
    if not subject.startswith(base) or subject[len(base) : len(base) + 1] != ".":
        return ""
    return ".".join(unescape_token(token) for token in subject[len(base) + 1 :].split("."))


def subscribe_subjects(
    prefix: str, exchange: str, exchange_type: str, binding_key: str
) -> tuple[list[str], bool]:
    """The subjects to subscribe to for a binding, and whether NATS matches it exactly
    (False: what arrives is a superset, to be filtered by the binding key)."""
    base = _base(prefix, exchange)
    if exchange_type == FANOUT:
        return [f"{base}.>"], True
    words = binding_key.split(".")
    if exchange_type == DIRECT:
        return [f"{base}.{'.'.join(escape_token(word) for word in words)}"], True
    tokens = [base]
    for index, word in enumerate(words):
        if word == "#":
            head = ".".join(tokens)
            rest_is_hashes = all(later == "#" for later in words[index + 1 :])
            subjects = [f"{head}.>"]
            if rest_is_hashes and len(tokens) > 1:
                subjects.append(head)
            return subjects, rest_is_hashes
        tokens.append("*" if word == "*" else escape_token(word))
    return [".".join(tokens)], True
