"""JSON log lines with their context, metrics that wait for the transaction, and the
readiness answer's shape and thresholds (without infrastructure: shared/health.py's checks
against stand-ins)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from shared import metrics, tracing
from shared.health import Probe, partition_lags, readiness
from shared.logs import JsonFormatter, log_context


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("tests"))
    logger = logging.getLogger("tests.observability")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield out
    logger.removeHandler(handler)


def _entries(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_log_line_is_one_json_object_with_its_context(lines: io.StringIO) -> None:
    log = logging.getLogger("tests.observability")
    log.info("before")
    with (
        tracing.span("handling") as span,
        log_context(need_id="n-1", event_id="e-1", topic="refnet.needs.v1"),
    ):
        log.info("about %s\nacross lines", "a need")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    log.info("after")
    before, about, failed, after = _entries(lines)
    assert set(before) == {"time", "level", "service", "logger", "message"}
    assert before["service"] == "tests" and before["logger"] == "tests.observability"
    assert about["message"] == "about a need\nacross lines"
    assert (about["need_id"], about["event_id"], about["topic"]) == (
        "n-1",
        "e-1",
        "refnet.needs.v1",
    )
    assert about["trace_id"] == span.trace_id and about["level"] == "INFO"
    assert "ValueError: boom" in failed["exception"] and failed["level"] == "ERROR"
    assert "need_id" not in after and "trace_id" not in after
    assert len(lines.getvalue().splitlines()) == 4


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_recorded_in_a_failed_attempt_are_dropped() -> None:
    counter = metrics.UNMATCHED.labels("test-deferred")
    before = _count("refnet_needs_unmatched_total", category="test-deferred")
    with pytest.raises(RuntimeError), metrics.deferred():
        metrics.record(counter.inc)
        raise RuntimeError("rolled back")
    assert _count("refnet_needs_unmatched_total", category="test-deferred") == before
    with metrics.deferred():
        metrics.record(counter.inc)
        assert _count("refnet_needs_unmatched_total", category="test-deferred") == before
    assert _count("refnet_needs_unmatched_total", category="test-deferred") == before + 1
    metrics.record(counter.inc)  # outside any block: at once
    assert _count("refnet_needs_unmatched_total", category="test-deferred") == before + 2


def test_every_metric_is_named_refnet_and_explained() -> None:
    body, content_type = metrics.exposition()
    text = body.decode()
    assert content_type.startswith("text/plain")
    for name in (
        "refnet_needs_submitted_total",
        "refnet_offers_made_total",
        "refnet_acceptance_latency_seconds",
        "refnet_offer_declines_total",
        "refnet_offer_expiries_total",
        "refnet_needs_unmatched_total",
        "refnet_outbox_backlog",
        "refnet_consumer_lag",
        "refnet_dlq_messages_total",
        "refnet_reminders_due",
        "refnet_reminders_sent_total",
        "refnet_reminders_failed_total",
    ):
        assert f"# HELP {name} " in text, name


def test_lag_is_end_minus_committed_never_negative() -> None:
    class TP:
        def __init__(self, topic: str, partition: int) -> None:
            self.topic, self.partition = topic, partition

    a, b, c = TP("t", 0), TP("t", 1), TP("u", 0)
    lags = partition_lags([a, b, c], {a: 10, b: 3, c: 7}, {a: 4, b: 5, c: None}, {c: 2})
    assert lags == {("t", 0): 6, ("t", 1): 0, ("u", 0): 5}


class _Assigned:
    def __init__(self, lags: dict[tuple[str, int], int]) -> None:
        self.lags = lags

    def assigned(self) -> list[tuple[str, int]]:
        return sorted(self.lags)

    async def lag(self) -> dict[tuple[str, int], int]:
        return self.lags


async def test_readiness_says_what_is_missing_before_start_up() -> None:
    answer = await readiness(Probe("intake", 100, 50))
    body = answer.model_dump(mode="json")
    assert body["service"] == "intake" and body["ready"] is False
    assert set(body["checks"]) == {
        "postgres",
        "kafka",
        "consumer",
        "outbox_backlog",
        "consumer_lag",
    }
    assert body["checks"]["postgres"] == {"ok": False, "detail": "not connected yet"}
    assert body["checks"]["outbox_backlog"]["value"] == -1
    assert body["checks"]["outbox_backlog"]["threshold"] == 100
    lag = body["checks"]["consumer_lag"]
    assert set(lag) == {"ok", "value", "threshold", "detail", "per_topic"}


async def test_consumer_lag_over_its_threshold_is_not_ready() -> None:
    probe = Probe("notifications", 100, 5)
    probe.consumer = _Assigned({("t", 0): 2, ("t", 1): 2, ("u", 0): 3})
    lag = (await readiness(probe)).checks.consumer_lag
    assert (lag.ok, lag.value, lag.per_topic) == (False, 7, {"t": 4, "u": 3})
    probe.consumer = _Assigned({("t", 0): 2})
    answer = await readiness(probe)
    assert answer.checks.consumer_lag.ok and answer.checks.consumer.ok
    assert not answer.ready  # Postgres and Kafka are still missing
