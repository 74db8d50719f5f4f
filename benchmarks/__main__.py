"""Run the whole suite: ``python -m benchmarks [--quick] [--only SECTION ...]``.

Writes ``benchmarks/RESULTS.md`` and ``benchmarks/results.png`` (or the paths given) and
prints the rows as they are measured. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from benchmarks import dispatch, durable, inproc, nats, raw, relay, report, transports
from benchmarks.common import ROOT, Row, Settings, log, pika_parameters, settings_for

SECTIONS: dict[str, Callable[[Settings], Iterable[Row]]] = {
    "dispatch": dispatch.dispatch_section,
    "e2e": dispatch.e2e_section,
    "state": inproc.state_section,
    "memory": inproc.memory_section,
    "raw": raw.raw_section,
    "durable": durable.durable_section,
    "relay": relay.relay_section,
    "nats": nats.nats_section,
    "transports": transports.transports_section,
}


def broker_versions(settings: Settings) -> tuple[str, str]:
    redis_version = rabbit_version = "unknown"
    try:
        import redis

        redis_version = redis.Redis.from_url(settings.redis_url).info("server")["redis_version"]
    except Exception as exc:  # the report says what it could not find out
        redis_version = f"unknown ({exc})"
    try:
        import pika

        connection = pika.BlockingConnection(pika_parameters(settings.amqp_url))
        properties = connection._impl.server_properties
        rabbit_version = properties.get("version", b"?")
        if isinstance(rabbit_version, bytes):
            rabbit_version = rabbit_version.decode()
        connection.close()
    except Exception as exc:
        rabbit_version = f"unknown ({exc})"
    return str(redis_version), str(rabbit_version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: tiny counts, one repetition (well under a minute)",
    )
    parser.add_argument("--reps", type=int, help="repetitions per scenario (default 5, quick 1)")
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="run only these")
    parser.add_argument(
        "--redis-url", default=os.environ.get("EVCORE_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("EVCORE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("EVCORE_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results file (default benchmarks/RESULTS.md; quick: none)",
    )
    parser.add_argument(
        "--replay-events",
        type=int,
        help="events retained for the durable replay and group runs (default 200000)",
    )
    options = parser.parse_args(argv)
    settings = settings_for(options.quick, options.reps, options.redis_url, options.amqp_url)
    if options.replay_events:
        settings.replay_events = options.replay_events
    settings.postgres_url = options.postgres_url
    out = options.out or (None if options.quick else ROOT / "benchmarks" / "RESULTS.md")
    started = time.monotonic()
    rows: list[Row] = []
    for name, section in SECTIONS.items():
        if options.only and name not in options.only:
            continue
        for row in section(settings):
            rows.append(row)
            if row.celery:
                figures = (
                    f"evcore {report.spread(row.evcore)} / celery "
                    f"{report.spread(row.celery)} {row.unit}  ratio {row.ratio:.2f}x"
                )
            else:
                figures = f"{report.spread(row.evcore)} {row.unit}"
            log(f"  {row.scenario}: {figures}  {'; '.join(row.notes)}")
    elapsed = time.monotonic() - started
    log(f"suite took {elapsed:.0f} s")
    print("\n".join(report.ratio_table(rows, None)))
    if out is not None:
        command = "python -m benchmarks " + " ".join(
            shlex.quote(arg) for arg in (argv if argv is not None else sys.argv[1:])
        )
        redis_version, rabbit_version = broker_versions(settings)
        report.write(
            rows,
            out,
            # RESULTS.md -> results.png; any other name gets a plot of its own name.
            out.with_name("results.png") if out.name == "RESULTS.md" else out.with_suffix(".png"),
            command.strip(),
            elapsed,
            redis_version,
            rabbit_version,
        )
        log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
