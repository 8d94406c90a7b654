"""The pipeline benchmark's report writer and request bodies, on made-up figures: the files
are valid JSON, markdown and SVG, the intakes it sends are ones intake accepts, and a report
names the code it measured. Nothing here measures or asserts on a timing."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import git_describe
from bench.pipeline import IntakeBodies, _cdf, add_ratios
from bench.report import write_report
from services.intake.models import IntakeRequest, check_dates

LAT = {"p50": 12.5, "p95": 30.0, "p99": 45.0, "max": 60.0, "mean": 15.0}
CPU = {
    "seconds": 10.0,
    "cores_used": {"intake": 0.5, "postgres": 0.4},
    "benchmark_cores": 0.9,
    "machine_cores": 0.95,
    "outside_benchmark_cores": 0.05,
}


def _closed(rate: float) -> dict[str, Any]:
    return {
        "connections": 16,
        "seconds": 15.0,
        "requests_ok": int(rate * 15),
        "statuses": {"201": int(rate * 15)},
        "per_s": rate,
        "latency_ms": LAT,
        "generator_cores": 0.1,
        "cpu": CPU,
    }


def _open(rate: float, *, e2e: bool) -> dict[str, Any]:
    level: dict[str, Any] = {
        "offered_per_s": rate,
        "seconds": 25.0,
        "sent": int(rate * 25),
        "send_rate_per_s": rate,
        "generator_lag_ms": LAT,
        "statuses": {"201": int(rate * 25)},
        "cancelled_unanswered": 0,
        "http_latency_ms": LAT,
        "generator_cores": 0.05,
        "waited_after_sending_s": 0.5,
        "cpu": CPU,
        "achieved_per_s": rate,
    }
    if e2e:
        level.update(
            accepted=int(rate * 25),
            offers=int(rate * 25) - (10 if rate > 100 else 0),
            missing_offers=10 if rate > 100 else 0,
            achieved_per_s=rate * (0.6 if rate > 100 else 1.0),
            kept_up=rate <= 100,
            latency_ms=LAT,
            latency_to_record_timestamp_ms=LAT,
            cdf=_cdf([float(v) for v in range(1, 1000)]),
            backlog_at_start=0,
        )
    return level


def fake_result() -> dict[str, Any]:
    loads = (50.0, 200.0)
    result: dict[str, Any] = {
        "title": "refnet pipeline benchmark",
        "command": "make bench",
        "machine": {
            "cpu_model": "Test CPU",
            "cores": 2,
            "ram_gib": 4.0,
            "python": "CPython 3.11",
            "os": "Test OS",
            "arch": "x86_64",
            "date": "2026-11-21T00:00:00+00:00",
            "git_describe": "v0-test",
            "load_average": [0.1, 0.1, 0.1],
            "load_average_end": [1.0, 0.5, 0.2],
        },
        "settings": {"connections": 16, "client": "raw", "seconds_per_load": 25.0},
        "stack": {
            "start_seconds": 9.0,
            "postgres": "embedded",
            "broker": "embedded",
            "services": "intake, matching, notifications",
        },
        "broker": {
            "messages": 5000,
            "value_bytes": 740,
            "header_bytes": 262,
            "partitions": 3,
            "produce_per_s": 20000.0,
            "loop_runs_per_s": [9000.0, 8000.0, 8500.0],
            "loop_per_s": 8500.0,
            "cpu": CPU,
            "hop_latency_ms": {f"{r:g}": {"sent": 10, "received": 10, **LAT} for r in loads},
        },
        "webdb": {
            "closed": _closed(1200.0),
            "open": {f"{r:g}": _open(r, e2e=False) for r in loads},
        },
        "intake": {
            **_closed(300.0),
            "needs_made": 6000,
            "needs_offered": 6000,
            "offers_waited_after_s": 3.0,
            "end_to_end_per_s": 150.0,
        },
        "intake_alone": _closed(500.0),
        "end_to_end": [_open(r, e2e=True) for r in loads],
        "elapsed_seconds": 321.0,
    }
    add_ratios(result)
    return result


HEADINGS = (
    "## Machine",
    "## Summary",
    "## Bare broker",
    "## Bare web+database",
    "## Intake JSON API",
    "## End to end",
    "## CPU by process",
    "## Caveats",
)


def test_the_report_is_valid_json_markdown_and_svg(tmp_path: Path) -> None:
    result = fake_result()
    json_path, md_path, svg_path = write_report(result, tmp_path / "out")

    assert json.loads(json_path.read_text()) == result
    markdown = md_path.read_text()
    for heading in HEADINGS:
        assert heading in markdown
    assert "Test CPU" in markdown and "v0-test" in markdown and "321 s" in markdown
    assert "![latency CDF](latency.svg)" in markdown
    # The goal is judged on intake alone (500 / 1200), beside the ratio with the pipeline.
    assert result["intake_alone"]["ratio_to_webdb"] == 0.417
    assert result["intake_alone"]["goal_met"] is False
    assert result["intake"]["ratio_to_webdb"] == 0.25
    assert "0.42x of web+db" in markdown and "0.25x of web+db" in markdown
    assert result["summary"]["highest_load_kept_up_per_s"] == 50.0
    root = ET.fromstring(svg_path.read_text())  # noqa: S314 - our own output
    assert root.tag.endswith("svg")
    assert len(root.findall("{http://www.w3.org/2000/svg}polyline")) == 2


def test_a_failed_run_still_gives_a_report(tmp_path: Path) -> None:
    result = {"title": "t", "machine": {}, "settings": {}, "error": "RuntimeError: boom"}
    _, md_path, svg_path = write_report(result, tmp_path)
    assert "RuntimeError: boom" in md_path.read_text()
    ET.fromstring(svg_path.read_text())  # noqa: S314 - our own output


def test_the_benchmark_sends_intakes_that_intake_accepts() -> None:
    bodies = IntakeBodies(1, "t")
    sent = [IntakeRequest.model_validate_json(bodies()) for _ in range(30)]
    # Each body is dated as it is made: every one is valid on the day it was signed.
    assert all(check_dates(body, body.consent.signed_on) == {} for body in sent)
    assert {body.consent.signed_on for body in sent} <= {datetime.now(UTC).date(), bodies.today}
    assert len({body.submission_id for body in sent}) == 30
    assert len({(b.person.legal_given_name, b.person.legal_family_name) for b in sent}) == 30
    assert {body.needs[0].category.value for body in sent} == set(bodies.pairs)


def test_a_report_calls_the_code_dirty_but_not_the_last_reports(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        identity = ("-c", "user.name=t", "-c", "user.email=t@example.org")
        subprocess.run(["git", *identity, *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "docs" / "bench").mkdir(parents=True)
    (tmp_path / "docs" / "bench" / "report.md").write_text("old figures\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "code and a report")
    commit = git_describe(tmp_path)
    assert "dirty" not in commit and "unknown" not in commit

    (tmp_path / "docs" / "bench" / "report.md").write_text("new figures\n")
    assert git_describe(tmp_path) == commit
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_describe(tmp_path) == f"{commit}-dirty"
