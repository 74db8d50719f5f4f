"""Optional HTTP protection: basic auth or a bearer token, compared in constant time.

Either secret travels in clear text over plain HTTP: expose the service only behind TLS
(a reverse proxy), see ``docs/serve.md``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

#: Paths answered without credentials (probes reveal nothing about the cluster).
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


@dataclass(frozen=True)
class Credentials:
    """What a request must present: ``user:password`` (basic) and/or a bearer token."""

    basic: str | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if self.basic is not None and ":" not in self.basic:
            raise ValueError("basic auth needs USER:PASSWORD")
        if self.token is not None and not self.token:
            raise ValueError("the bearer token cannot be empty")

    def accepts(self, authorization: bytes | None) -> bool:
        """Whether an ``Authorization`` header value carries a valid secret."""
        if not authorization:
            return False
        scheme, _, value = authorization.partition(b" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == b"bearer" and self.token is not None:
            return hmac.compare_digest(value, self.token.encode("utf-8"))
        if scheme == b"basic" and self.basic is not None:
            try:
                decoded = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(decoded, self.basic.encode("utf-8"))
        return False


class RequireCredentials:
    """ASGI middleware answering 401 to HTTP requests without valid credentials."""

    def __init__(self, app: ASGIApp, credentials: Credentials) -> None:
        self.app = app
        self.credentials = credentials
        challenges = []
        if credentials.basic is not None:
            challenges.append(b'Basic realm="evcore"')
        if credentials.token is not None:
            challenges.append(b'Bearer realm="evcore"')
        self._challenge = b", ".join(challenges)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
                break
        if self.credentials.accepts(authorization):
            await self.app(scope, receive, send)
            return
        body = b'{"error": "authentication required"}'
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", self._challenge),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
