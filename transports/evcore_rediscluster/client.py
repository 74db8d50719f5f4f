"""Importing redis-py's cluster client lazily, naming this transport's extra when it is missing."""

from __future__ import annotations

from types import ModuleType

from evcore.errors import MissingDependency

__all__ = ["load_cluster_client"]

INSTALL_HINT = "pip install 'evcore[redis-cluster]'"


def load_cluster_client() -> ModuleType:
    """Import ``redis.cluster``, or raise MissingDependency with the line that installs it."""
    try:
        import redis.cluster  # noqa: PLC0415 - optional dependency, imported on first use
    except ImportError as exc:
        raise MissingDependency(
            f"the Redis Cluster transport needs redis-py, which is not installed: {INSTALL_HINT}"
        ) from exc
    return redis.cluster
