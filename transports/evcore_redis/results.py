"""Read Celery's Redis result backend: the ``celery-task-meta-<task id>`` keys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from evcore.errors import ConnectionLost
from evcore_redis.client import load_redis

#: Celery's key prefix for task results in a Redis (or Valkey) result backend.
KEY_PREFIX = "celery-task-meta-"
#: Seconds one read may take before it counts as failed.
TIMEOUT = 5.0


class RedisResults:
    """Fetches stored task results by id from a Redis result backend URL
    (``redis://host:port/db``, ``rediss://...``)."""

    def __init__(self, url: str) -> None:
        redis = load_redis()
        self._errors: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)
        self._client: Any = redis.Redis.from_url(
            url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
        )

    def fetch(self, task_ids: Sequence[str]) -> Mapping[str, bytes]:
        """The stored result documents of those ids that have one (raw JSON bytes);
        raises :class:`~evcore.errors.ConnectionLost` when the backend cannot be read."""
        if not task_ids:
            return {}
        try:
            values = self._client.mget([KEY_PREFIX + task_id for task_id in task_ids])
        except self._errors as exc:
            raise ConnectionLost(f"cannot read the result backend: {exc}") from exc
        return {
            task_id: value
            for task_id, value in zip(task_ids, values, strict=True)
            if isinstance(value, bytes)
        }

    def close(self) -> None:
        self._client.close()
