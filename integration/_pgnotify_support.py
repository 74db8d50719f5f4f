"""PostgreSQL helpers of the integration tests: URLs with a name of the test's own, and
terminating exactly the backends that carry that name."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit


def notify_url(postgres_url: str, application_name: str | None = None) -> str:
    """The transport URL for a libpq URL, optionally naming its connections."""
    parts = urlsplit(postgres_url)
    query = parts.query
    if application_name:
        query = f"{query}&application_name={application_name}" if query else (
            f"application_name={application_name}"
        )
    return urlunsplit(("postgresql+notify", parts.netloc, parts.path, query, ""))


def app_name() -> str:
    """An application_name no other test or session uses."""
    return f"evtest-{uuid.uuid4().hex[:12]}"


def backends_named(postgres_url: str, name: str, listening: bool = False) -> int:
    """How many server connections carry ``name`` as their application_name (with
    ``listening``: only those whose LISTEN has completed)."""
    import psycopg

    query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    if listening:
        query += " AND state = 'idle' AND query LIKE 'LISTEN %%'"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        row = admin.execute(query, (name,)).fetchone()
    return int(row[0]) if row else 0


def terminate(postgres_url: str, name: str) -> int:
    """pg_terminate_backend every connection named ``name`` (only the test's own); how many."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return sum(1 for (done,) in rows if done)
