"""What the benchmarks share: settings from BENCH_* variables, percentiles, CPU counters, the
machine's description, and the bare aiokafka baseline (produce, then a consume-then-produce
loop) that bench.matching and bench.pipeline both measure refnet against.

Benchmarks measure and report; they never assert.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.cloudevents import Headers

ROOT = Path(__file__).parents[1]
BASELINE_BATCH = 200  # records per getmany(), as shared.kafka.consume takes them


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def pct(values: list[float], q: float) -> float:
    """The q-quantile by the nearest-rank method (no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of every CPU since boot (Linux /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def machine() -> dict[str, Any]:
    """What a benchmark ran on: CPU model, cores, RAM, Python, OS, date, git describe."""
    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    os_name = platform.platform()
    try:
        release = dict(
            line.split("=", 1)
            for line in Path("/etc/os-release").read_text().splitlines()
            if "=" in line
        )
        os_name = f"{release.get('PRETTY_NAME', '').strip(chr(34))} ({platform.release()})"
    except OSError:
        pass
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "ram_gib": ram_gib,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": os_name,
        "arch": platform.machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_describe": git_describe(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def git_describe(root: Path = ROOT) -> str:
    """`git describe --always --tags` of the checkout, "-dirty" when a tracked file other
    than the reports in docs/bench differs (a run over the last run's uncommitted reports is
    still of the committed code), or why it is not known. BENCH_GIT_DESCRIBE, when set, is
    used instead (a run from an exported tree)."""
    if "BENCH_GIT_DESCRIBE" in os.environ:
        return os.environ["BENCH_GIT_DESCRIBE"]
    try:
        described = _git(root, "describe", "--always", "--tags")
        changed = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", REPORTS)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({type(exc).__name__})"
    if described.returncode != 0 or not described.stdout.strip():
        return f"unknown ({described.stderr.strip()[:80] or 'no output'})"
    return described.stdout.strip() + ("-dirty" if changed.stdout.strip() else "")


# What a benchmark run rewrites: not a change to the code it measured.
REPORTS = ":(exclude)docs/bench"


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - git with arguments of our own
        ["git", *args],  # noqa: S607 - git from PATH, as a developer runs it
        cwd=root,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def progress(line: str) -> None:
    sys.stderr.write(f"bench: {line}\n")
    sys.stderr.flush()


# --- the bare broker baseline ------------------------------------------------------------


async def produce_all(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes, Headers]]
) -> float:
    """Produce every record (acks=all, linger_ms=5, as refnet's producers) and wait for every
    ack; returns the seconds from the first send to the last ack (start-up excluded)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        t0 = time.perf_counter()
        sends = [
            await producer.send(topic, key=key, value=value, headers=headers)
            for key, value, headers in records
        ]
        await asyncio.gather(*sends)
        return time.perf_counter() - t0
    finally:
        await producer.stop()


@dataclass
class Baseline:
    needs: int
    seconds: float
    batches: int

    @property
    def rate(self) -> float:
        return self.needs / self.seconds


async def bare_loop(
    bootstrap: str,
    in_topic: str,
    out_topic: str,
    records: list[tuple[bytes, bytes, Headers]],
    run: int,
    batch: int = BASELINE_BATCH,
) -> Baseline:
    """The bare loop: consume a batch (consumer group, no auto-commit), produce one record per
    consumed record (acks=all), wait for every ack, then commit the batch's offsets. Each run
    reads the same pre-loaded input topic as a new consumer group. Timed from the first record
    consumed to the last produce acknowledged."""
    consumer = AIOKafkaConsumer(
        in_topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-baseline-{os.getpid()}-{in_topic}-{run}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    done = batches = 0
    first: float | None = None
    last_ack = 0.0
    try:
        while done < len(records):
            fetched = await consumer.getmany(timeout_ms=1000, max_records=batch)
            if not fetched:
                continue
            if first is None:
                first = time.perf_counter()
            sends = [
                await producer.send(
                    out_topic, key=r.key, value=r.value, headers=list(r.headers or ())
                )
                for rs in fetched.values()
                for r in rs
            ]
            await asyncio.gather(*sends)
            last_ack = time.perf_counter()
            await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in fetched.items()})
            done += len(sends)
            batches += 1
    finally:
        await consumer.stop()
        await producer.stop()
    assert first is not None
    return Baseline(done, last_ack - first, batches)
