"""Turn the rows into ``RESULTS.md`` and a throughput plot."""

from __future__ import annotations

import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from benchmarks.common import ROOT, Row


@dataclass(frozen=True)
class Target:
    label: str
    bound: float
    #: True: the ratio must be at most ``bound`` (memory); else at least.
    at_most: bool = False

    def met(self, ratio: float) -> bool:
        return ratio <= self.bound if self.at_most else ratio >= self.bound

    def text(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.bound:g}x"


TARGETS = {
    "state": Target("State.event", 3),
    "receive": Target("decode + receive + State", 3),
    "memory": Target("memory per retained task", 0.5, at_most=True),
    "dispatch-redis-unbatched": Target("dispatch, Redis, unbatched", 10),
    "dispatch-redis-batched": Target("dispatch, Redis, batched", 3),
    "dispatch-rabbitmq-unbatched": Target("dispatch, RabbitMQ, unbatched", 1.5),
    "dispatch-rabbitmq-batched": Target("dispatch, RabbitMQ, batched", 2),
    "e2e-redis": Target("end to end, Redis, unbatched", 5),
    "e2e-rabbitmq": Target("end to end, RabbitMQ, unbatched", 3),
    "e2e-durable": Target("end to end unbatched, Redis Streams vs Celery pub/sub", 3),
}


def fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} ({fmt(min(values))} - {fmt(max(values))})"


def versions() -> list[str]:
    lines = [f"Python {platform.python_version()} ({platform.python_implementation()})"]
    for package in ("evcore", "celery", "kombu", "redis", "hiredis", "pika", "amqp", "orjson"):
        try:
            lines.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{package} not installed")
    commit = _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "evcore", "transports"])
    lines[1] += f" (commit {commit}{', with uncommitted changes' if dirty else ''})"
    return lines


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{model}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}"


def _run(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
        return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def ratio_table(rows: Sequence[Row], raw_pika: float | None) -> list[str]:
    lines = [
        "| scenario | evcore median | Celery median | evcore/Celery | per-pair min - max "
        "| target | met |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for row in rows:
        ratio = row.ratio
        if ratio is None:
            continue
        target = TARGETS.get(row.target or "")
        pairs = row.pair_ratios
        lines.append(
            f"| {row.scenario} | {fmt(statistics.median(row.evcore))} "
            f"| {fmt(statistics.median(row.celery))} | **{ratio:.2f}x** "
            f"| {min(pairs):.2f}x - {max(pairs):.2f}x "
            f"| {target.text() if target else ''} "
            f"| {('yes' if target.met(ratio) else '**no**') if target else ''} |"
        )
    if raw_pika:
        for row in rows:
            if row.target == "dispatch-rabbitmq-unbatched":
                share = statistics.median(row.evcore) / raw_pika
                lines.append(
                    f"| {row.scenario} vs raw pika basic_publish | "
                    f"{fmt(statistics.median(row.evcore))} | (pika) {fmt(raw_pika)} "
                    f"| **{share:.2f}x** | | >= 0.9x | {'yes' if share >= 0.9 else '**no**'} |"
                )
    return lines


def write(
    rows: Sequence[Row],
    path: Path,
    plot: Path,
    command: str,
    seconds: float,
    redis_version: str,
    rabbit_version: str,
) -> None:
    raw_pika = next(
        (
            statistics.median(row.evcore)
            for row in rows
            if row.scenario.startswith("pika BlockingChannel.basic_publish") and row.evcore
        ),
        None,
    )
    out = [
        "# evcore vs celery.events: benchmark results",
        "",
        f"Command: `{command}` (took {seconds / 60:.1f} min).",
        "",
        f"Machine: {machine()}.",
        "",
        "Versions: "
        + ", ".join(versions())
        + f", Redis server {redis_version}, RabbitMQ {rabbit_version}.",
        "",
        "Each figure is the median of the repetitions with (min - max); evcore and Celery ran "
        "on the same machine in the same run, alternating repetition by repetition on "
        "identical event streams (see `benchmarks/README.md`). The ratio is evcore's median "
        "over Celery's; per-pair ratios compare the runs of one repetition.",
        "",
        "## Ratios",
        "",
        *ratio_table(rows, raw_pika),
        "",
        f"![throughput per scenario]({plot.name})",
        "",
    ]
    section = None
    for row in rows:
        if row.section != section:
            section = row.section
            out += [
                "",
                f"## {section}",
                "",
                "| scenario | unit | evcore | Celery | ratio | notes |",
                "|---|---|---:|---:|---:|---|",
            ]
        ratio = row.ratio
        out.append(
            f"| {row.scenario} | {row.unit} | {spread(row.evcore)} | {spread(row.celery)} "
            f"| {f'{ratio:.2f}x' if ratio is not None else ''} | {'; '.join(row.notes)} |"
        )
    out += ["", "In section 5 the single figure column is the library itself, not evcore.", ""]
    path.write_text("\n".join(out))
    draw(rows, plot)


def draw(rows: Sequence[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [row for row in rows if row.evcore and row.celery and not row.lower_is_better]
    if not shown:
        return
    height = 0.38
    figure, axes = plt.subplots(figsize=(11, 0.55 * len(shown) + 1.5))
    for offset, (name, color, pick) in enumerate(
        (
            ("evcore", "#1f77b4", lambda r: r.evcore),
            ("Celery 5.7", "#d62728", lambda r: r.celery),
        )
    ):
        medians = [statistics.median(pick(row)) for row in shown]
        low = [m - min(pick(row)) for m, row in zip(medians, shown, strict=True)]
        high = [max(pick(row)) - m for m, row in zip(medians, shown, strict=True)]
        positions = [index + (offset - 0.5) * height for index in range(len(shown))]
        axes.barh(positions, medians, height, xerr=[low, high], label=name, color=color, capsize=2)
    axes.set_yticks(range(len(shown)))
    axes.set_yticklabels([_short(row) for row in shown], fontsize=8)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("events per second (log scale; bars: median, whiskers: min-max)")
    axes.set_title("evcore vs celery.events, same machine, same run")
    axes.legend(loc="lower right")
    axes.grid(axis="x", which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _short(row: Row) -> str:
    text = row.scenario.replace(" (buffer_group={'task'}, limit 24)", "")
    text = text.replace("(background=False)", "").replace("unbatched send()", "unbatched")
    if row.section.startswith("2."):
        text = f"end to end, {text}"
    elif row.section.startswith("1."):
        text = f"dispatch, {text}"
    return text if len(text) < 70 else text[:67] + "..."
