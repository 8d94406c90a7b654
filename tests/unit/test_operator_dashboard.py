"""The operator dashboard's pure parts: chart geometry, time buckets, the ?days= window, and
reading a service's /readyz answer (whatever it answers)."""

from __future__ import annotations

import httpx
import pytest

from services.intake import dashboard
from services.intake.charts import columns, horizontal_bars


def test_horizontal_bars_are_as_long_as_their_values_and_say_them() -> None:
    chart = horizontal_bars("f", "Funnel", [("Submitted", 4), ("Offered", 2), ("Accepted", 0)],
                            unit="needs")  # fmt: skip

    widths = [bar.width for bar in chart.bars]
    assert widths[0] == 2 * widths[1] and widths[2] == 0
    assert [bar.value for bar in chart.bars] == [4, 2, 0]
    assert all(bar.x + bar.width <= chart.width for bar in chart.bars)
    assert chart.description == "Funnel: Submitted, 4 needs; Offered, 2 needs; Accepted, 0 needs."


def test_columns_stand_on_one_baseline() -> None:
    chart = columns("t", "Time to accept", [("< 15 min", 3), ("15-60 min", 1)], unit="needs")

    tall, short = chart.bars
    assert tall.y + tall.height == pytest.approx(short.y + short.height)
    assert tall.height == pytest.approx(3 * short.height)
    assert tall.y >= 0 and tall.value_y > 0, "the value label stays inside the drawing"


def test_a_chart_of_nothing_says_so() -> None:
    chart = columns("t", "Time to accept", [("< 15 min", 0)], unit="needs")

    assert chart.bars[0].height == 0
    assert chart.description == "Time to accept: no needs yet."


def test_times_fall_in_their_buckets_and_percentiles_are_nearest_rank() -> None:
    buckets = dict(dashboard.bucket_times([60, 899, 900, 3 * 3600, 30 * 86400]))

    assert buckets["< 15 min"] == 2
    assert buckets["15-60 min"] == 1
    assert buckets["1-4 h"] == 1
    assert buckets["7+ days"] == 1
    assert dashboard.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert dashboard.percentile([1.0, 2.0, 3.0, 4.0], 0.9) == 4.0
    assert dashboard.percentile([], 0.5) is None


@pytest.mark.parametrize(
    ("raw", "days"), [(None, 30), ("7", 7), ("0", 1), ("9999", 365), ("soon", 30), ("", 30)]
)
def test_the_window_is_a_sane_number_of_days(raw: str | None, days: int) -> None:
    assert dashboard.window_days(raw) == days


READY = {
    "service": "matching",
    "ready": False,
    "checks": {
        "consumer_lag": {
            "ok": False,
            "value": 120,
            "threshold": 100,
            "detail": "behind",
            "per_topic": {"refnet.needs.v1": 120},
        },  # fmt: skip
        "postgres": {"ok": True, "detail": "answered"},
        "kafka": {"ok": True, "detail": "metadata fetched"},
        "future_check": {"ok": True, "detail": "unknown to this build"},
    },
}


async def readiness(handler: httpx.MockTransport) -> dashboard.ServiceHealth:
    async with httpx.AsyncClient(transport=handler, base_url="http://matching") as client:
        return await dashboard._readiness("matching", client)


async def test_a_not_ready_answer_shows_its_checks_in_the_contracts_order() -> None:
    health = await readiness(httpx.MockTransport(lambda _: httpx.Response(503, json=READY)))

    assert health.state == "not-ready"
    assert [key for key, _, _ in health.checks] == [
        "postgres",
        "kafka",
        "consumer_lag",
        "future_check",
    ]
    assert health.consumer_lag is not None
    assert health.consumer_lag.per_topic == {"refnet.needs.v1": 120}
    assert health.outbox_backlog is None


@pytest.mark.parametrize(
    ("response", "why"),
    [
        (httpx.Response(404, text="Not Found"), "/readyz answered 404"),
        (httpx.Response(200, text="<html>"), "unexpected"),
        (httpx.Response(500, json=READY), "/readyz answered 500"),
    ],
)
async def test_a_service_without_a_readiness_answer_is_unreachable(
    response: httpx.Response, why: str
) -> None:
    health = await readiness(httpx.MockTransport(lambda _: response))

    assert health.state == "unreachable"
    assert why in health.detail


async def test_a_service_that_refuses_the_connection_is_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    health = await readiness(httpx.MockTransport(refuse))

    assert health.state == "unreachable" and "refused" in health.detail
