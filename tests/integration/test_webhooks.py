"""Agency webhooks against real Postgres and a real HTTP receiver on 127.0.0.1: deliveries
verify as docs/webhooks.md tells agencies to check them, failures say what went wrong (410
Gone so that the endpoint is disabled at once), repeated failures disable an endpoint, and
an operator can replay a finished delivery."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from services import cli
from services.notifications import webhooks
from services.notifications.api import router
from services.notifications.handlers import issue_api_key
from services.notifications.webhooks import (
    EventType,
    WebhookFailed,
    WebhookSender,
    body_for,
    sign,
    verify,
)
from shared import db
from shared.clock import ManualClock
from shared.embedded import free_port
from shared.infra import Infrastructure
from shared.throttle import AddressThrottle
from tests.integration.conftest import Received, Receiver

pytestmark = pytest.mark.integration

DOCS = Path(__file__).parents[2] / "docs" / "webhooks.md"
T0 = datetime(2026, 11, 22, 9, tzinfo=UTC)
THRESHOLD = 3


@pytest_asyncio.fixture(loop_scope="session")
async def sender() -> AsyncIterator[WebhookSender]:
    sender = WebhookSender(timeout_s=0.5)
    yield sender
    await sender.close()


def docs_verifier() -> Any:
    """The verification function agencies copy from docs/webhooks.md, exactly as written."""
    block = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert block, "docs/webhooks.md has a Python verification example"
    namespace: dict[str, Any] = {}
    exec(block.group(1), namespace)  # noqa: S102 - our own documentation
    return namespace["verify_refnet_webhook"]


def hand_rolled_check(secret: str, received: Received) -> bool:
    timestamp = received.headers["Refnet-Webhook-Timestamp"]
    expected = hmac.new(
        secret.encode(), f"{timestamp}.".encode() + received.body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(received.headers["Refnet-Signature"], f"v1={expected}")


# --- signing and sending ------------------------------------------------------------------


async def test_a_delivery_verifies_as_the_docs_show(
    notifications_pool: asyncpg.Pool, receiver: Receiver, sender: WebhookSender
) -> None:
    now = datetime.now(UTC)
    async with notifications_pool.acquire() as conn:
        await webhooks.register(conn, "ag-001", receiver.url, now)
        hook = await webhooks.endpoint(conn, "ag-001")
    assert hook is not None and hook["secret"].startswith("whsec_")
    delivery_id = uuid4()
    data = {"offer_id": uuid4(), "need_id": uuid4(), "respond_by": now + timedelta(hours=2)}
    body = body_for(delivery_id, EventType.OFFER_CREATED, data, now)

    status = await sender.send(hook["url"], hook["secret"], str(delivery_id), body, now)

    assert status == 204
    [received] = receiver.requests
    assert received.path == "/hook"
    assert received.body == body
    assert received.headers["Content-Type"] == "application/json"
    assert received.headers["Refnet-Webhook-Id"] == str(delivery_id)
    assert received.headers["Refnet-Webhook-Timestamp"] == str(int(now.timestamp()))
    assert verify(
        hook["secret"],
        received.headers["Refnet-Webhook-Timestamp"],
        received.headers["Refnet-Signature"],
        received.body,
        datetime.now(UTC),
    )
    assert hand_rolled_check(hook["secret"], received)
    assert docs_verifier()(hook["secret"], received.headers, received.body)
    assert not docs_verifier()("whsec_other", received.headers, received.body)
    assert not docs_verifier()(hook["secret"], received.headers, received.body + b" ")


def test_the_body_is_the_same_bytes_every_time() -> None:
    delivery_id = uuid4()
    data = {"b": 1, "a": {"z": "é", "y": [T0]}, "offer_id": uuid4()}
    first = body_for(delivery_id, EventType.OUTCOME_REQUESTED, data, T0)
    again = body_for(str(delivery_id), "outcome.requested", dict(reversed(data.items())), T0)

    assert first == again
    assert b" " not in first.replace("é".encode(), b"")
    assert first.startswith(b'{"created_at":"2026-11-22T09:00:00+00:00","data":{"a":')
    assert f'"id":"{delivery_id}","type":"outcome.requested"}}'.encode() in first


def test_verify_rejects_tampering_staleness_and_the_wrong_secret() -> None:
    secret, body = "whsec_test", body_for(uuid4(), EventType.OFFER_WITHDRAWN, {}, T0)
    ts = int(T0.timestamp())
    signature = sign(secret, ts, body)

    assert verify(secret, str(ts), signature, body, T0)
    assert verify(secret, str(ts), signature, body, T0 + timedelta(seconds=300))
    assert not verify(secret, str(ts), signature, body + b"\n", T0), "tampered body"
    assert not verify(secret, str(ts), signature, body.replace(b"withdrawn", b"created"), T0)
    assert not verify(secret, str(ts + 1), signature, body, T0), "timestamp changed"
    assert not verify(secret, str(ts), signature, body, T0 + timedelta(seconds=301)), "stale"
    assert not verify(secret, str(ts), signature, body, T0 - timedelta(seconds=301)), "future"
    assert verify(secret, str(ts), signature, body, T0, tolerance_s=0)
    assert not verify("whsec_other", str(ts), signature, body, T0)
    assert not verify(secret, "soon", signature, body, T0)
    assert not verify(secret, str(ts), "", body, T0)
    assert not verify(secret, str(ts), signature.replace("v1=", "v0="), body, T0)


def test_verify_accepts_any_of_several_signatures_for_a_secret_rotation() -> None:
    body = b'{"id":"x"}'
    ts = int(T0.timestamp())
    both = f"{sign('whsec_old', ts, body)} {sign('whsec_new', ts, body)} v2=ignored"

    assert verify("whsec_old", str(ts), both, body, T0)
    assert verify("whsec_new", str(ts), both, body, T0)
    assert not verify("whsec_third", str(ts), both, body, T0)


@pytest.mark.parametrize(("status", "gone"), [(500, False), (503, False), (410, True)])
async def test_a_refusal_fails_the_send_and_410_says_gone(
    receiver: Receiver, sender: WebhookSender, status: int, gone: bool
) -> None:
    receiver.status = status

    with pytest.raises(WebhookFailed) as failed:
        await sender.send(receiver.url, "whsec_x", str(uuid4()), b"{}", datetime.now(UTC))

    assert failed.value.gone is gone
    assert failed.value.reason.startswith(f"HTTP {status}")
    assert len(receiver.requests) == 1, "send never retries by itself"


async def test_a_redirect_is_a_failure_not_followed(
    receiver: Receiver, sender: WebhookSender
) -> None:
    receiver.status = 307

    with pytest.raises(WebhookFailed, match="HTTP 307") as failed:
        await sender.send(receiver.url, "whsec_x", str(uuid4()), b"{}", datetime.now(UTC))

    assert not failed.value.gone


async def test_a_slow_endpoint_times_out(receiver: Receiver, sender: WebhookSender) -> None:
    receiver.delay_s = 2.0
    started = time.monotonic()

    with pytest.raises(WebhookFailed, match=r"timed out after 0\.5s") as failed:
        await sender.send(receiver.url, "whsec_x", str(uuid4()), b"{}", datetime.now(UTC))

    assert time.monotonic() - started < 1.5
    assert not failed.value.gone


async def test_nothing_listening_is_connection_refused(sender: WebhookSender) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"

    with pytest.raises(WebhookFailed, match="connection refused") as failed:
        await sender.send(url, "whsec_x", str(uuid4()), b"{}", datetime.now(UTC))

    assert not failed.value.gone


# --- endpoints ----------------------------------------------------------------------------


async def test_repeated_failures_disable_the_endpoint_and_enable_resets_it(
    notifications_pool: asyncpg.Pool,
) -> None:
    async with notifications_pool.acquire() as conn:
        first_secret = await webhooks.register(conn, "ag-001", "https://a.example/h", T0)
        for n in range(1, THRESHOLD):
            assert not await webhooks.record_failure(conn, "ag-001", THRESHOLD, "HTTP 500", T0)
            hook = await webhooks.endpoint(conn, "ag-001")
            assert hook is not None and hook["enabled"] and hook["consecutive_failures"] == n
        await webhooks.record_success(conn, "ag-001", T0)
        assert (await webhooks.endpoint(conn, "ag-001"))["consecutive_failures"] == 0

        for _ in range(THRESHOLD - 1):
            await webhooks.record_failure(conn, "ag-001", THRESHOLD, "HTTP 500", T0)
        later = T0 + timedelta(hours=1)
        assert await webhooks.record_failure(conn, "ag-001", THRESHOLD, "HTTP 503", later)
        assert not await webhooks.record_failure(conn, "ag-001", THRESHOLD, "HTTP 502", later)
        hook = await webhooks.endpoint(conn, "ag-001")
        assert hook is not None and not hook["enabled"]
        assert hook["disabled_reason"] == "HTTP 503", "the failure that disabled it"
        assert hook["disabled_at"] == later
        assert hook["consecutive_failures"] == THRESHOLD + 1

        assert await webhooks.enable(conn, "ag-001", later)
        hook = await webhooks.endpoint(conn, "ag-001")
        assert hook is not None and hook["enabled"] and hook["consecutive_failures"] == 0
        assert hook["disabled_at"] is None and hook["disabled_reason"] is None
        assert hook["secret"] == first_secret, "enable keeps the secret"
        assert not await webhooks.enable(conn, "ag-unknown", later)
        assert not await webhooks.record_failure(conn, "ag-unknown", 1, "HTTP 500", later)


async def test_410_disables_at_once_and_registering_again_re_enables_with_a_new_secret(
    notifications_pool: asyncpg.Pool,
) -> None:
    async with notifications_pool.acquire() as conn:
        first_secret = await webhooks.register(conn, "ag-002", "https://a.example/h", T0)
        assert await webhooks.disable(conn, "ag-002", "HTTP 410 Gone", T0)
        assert not (await webhooks.endpoint(conn, "ag-002"))["enabled"]

        second_secret = await webhooks.register(conn, "ag-002", "https://b.example/h", T0)

        hook = await webhooks.endpoint(conn, "ag-002")
        assert hook is not None and hook["enabled"] and hook["consecutive_failures"] == 0
        assert hook["url"] == "https://b.example/h" and hook["disabled_reason"] is None
        assert hook["secret"] == second_secret != first_secret
        assert len(second_secret) > 40

        assert await webhooks.remove(conn, "ag-002")
        assert await webhooks.endpoint(conn, "ag-002") is None


@pytest.mark.parametrize(
    "url",
    [
        "https://agency.example.org/hook",
        "https://agency.example.org:8443/refnet?x=1",
        "http://127.0.0.1:9000/hook",
        "http://localhost/hook",
    ],
)
def test_acceptable_urls(url: str) -> None:
    assert webhooks.validate_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://agency.example.org/hook",
        "http://10.0.0.5/hook",
        "ftp://agency.example.org/hook",
        "https:///no-host",
        "agency.example.org/hook",
        "https://user:pw@agency.example.org/hook",
        "https://agency.example.org/hook#frag",
        "https://agency.example.org:99999/hook",
        "https://agency.example.org/a hook",
        "",
    ],
)
async def test_unacceptable_urls_are_refused_naming_the_field(
    notifications_pool: asyncpg.Pool, url: str
) -> None:
    with pytest.raises(ValueError, match=r"^url: "):
        webhooks.validate_url(url)
    async with notifications_pool.acquire() as conn:
        with pytest.raises(ValueError, match=r"^url: "):
            await webhooks.register(conn, "ag-001", url, T0)
        assert await webhooks.endpoint(conn, "ag-001") is None


# --- replay -------------------------------------------------------------------------------


async def given_a_webhook_job(
    conn: asyncpg.Connection, status: str, *, kind: str = webhooks.JOB_KIND
) -> UUID:
    delivery_id = uuid4()
    await conn.execute(
        "INSERT INTO scheduled_jobs (job_id, kind, need_id, due_at, payload, status, attempts, "
        "last_error, done_at) VALUES ($1, $2, $3, $4, $5, $6, 4, $7, $8)",
        delivery_id,
        kind,
        uuid4(),
        T0,
        {"agency_id": "ag-001", "type": "offer.created"},
        status,
        "HTTP 500" if status == "failed" else None,
        T0 if status == "done" else None,
    )
    await conn.execute(
        "INSERT INTO deliveries (idempotency_key, channel, recipient, subject, status, attempts, "
        "sent_at, job_id, kind, error, updated_at) "
        "VALUES ($1, 'webhook', 'ag-001', 'offer.created', $2, 4, $3, $4, $5, $6, $3)",
        str(delivery_id),
        "sent" if status == "done" else status,
        T0,
        delivery_id,
        kind,
        "HTTP 500" if status == "failed" else None,
    )
    return delivery_id


@pytest.mark.parametrize("status", ["done", "failed"])
async def test_replay_puts_a_finished_delivery_back_to_pending(
    notifications_pool: asyncpg.Pool, status: str
) -> None:
    now = T0 + timedelta(days=1)
    async with notifications_pool.acquire() as conn:
        delivery_id = await given_a_webhook_job(conn, status)

        assert await webhooks.replay(conn, delivery_id, now)

        job = await conn.fetchrow("SELECT * FROM scheduled_jobs WHERE job_id = $1", delivery_id)
        assert job is not None
        assert (job["status"], job["due_at"], job["attempts"]) == ("pending", now, 0)
        assert job["lease_until"] is None and job["last_error"] is None
        logged = await conn.fetchrow(
            "SELECT status, updated_at FROM deliveries WHERE idempotency_key = $1",
            str(delivery_id),
        )
        assert logged is not None and tuple(logged) == ("replayed", now)
        assert not await webhooks.replay(conn, delivery_id, now), "now pending: not again"


async def test_replay_refuses_pending_unknown_and_other_jobs(
    notifications_pool: asyncpg.Pool,
) -> None:
    async with notifications_pool.acquire() as conn:
        pending = await given_a_webhook_job(conn, "pending")
        email = await given_a_webhook_job(conn, "done", kind="accepted_email")
        cancelled = await given_a_webhook_job(conn, "cancelled")

        for delivery_id in (pending, email, cancelled, uuid4()):
            assert not await webhooks.replay(conn, delivery_id, T0)
        assert await conn.fetchval("SELECT count(*) FROM deliveries WHERE status = 'replayed'") == 0


async def test_the_cli_replays_and_enables(
    infra: Infrastructure, notifications_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with notifications_pool.acquire() as conn:
        schema = await conn.fetchval("SELECT current_schema()")
        delivery_id = await given_a_webhook_job(conn, "failed")
        await webhooks.register(conn, "ag-009", "https://a.example/h", T0)
        await webhooks.disable(conn, "ag-009", "HTTP 410 Gone", T0)
    real_create_pool = db.create_pool

    async def create_pool_in_test_schema(url: str, _: str, **kw: Any) -> asyncpg.Pool:
        return await real_create_pool(url, schema, **kw)

    monkeypatch.setattr(db, "create_pool", create_pool_in_test_schema)
    monkeypatch.setenv("DATABASE_URL", infra.database_url)

    def run(*argv: str) -> int:
        try:
            cli.main(list(argv))
        except SystemExit as exc:
            return 1 if exc.code else 0
        return 0

    assert await asyncio.to_thread(run, "webhooks", "replay", str(delivery_id)) == 0
    assert await asyncio.to_thread(run, "webhooks", "replay", str(delivery_id)) == 1
    assert await asyncio.to_thread(run, "webhooks", "replay", "not-a-uuid") == 1
    assert await asyncio.to_thread(run, "webhooks", "enable", "ag-009") == 0
    assert await asyncio.to_thread(run, "webhooks", "enable", "ag-unknown") == 1
    async with notifications_pool.acquire() as conn:
        assert (await webhooks.endpoint(conn, "ag-009"))["enabled"]
        assert (
            await conn.fetchval("SELECT status FROM scheduled_jobs WHERE job_id = $1", delivery_id)
            == "pending"
        )


# --- the agency HTTP API ------------------------------------------------------------------


@dataclass
class ApiDeps:  # what the agency API reads from the app's Deps
    pool: asyncpg.Pool
    clock: ManualClock
    # the API-key throttle's (tests/integration/test_brute_force.py tests it)
    settings: object = field(
        default_factory=lambda: SimpleNamespace(
            api_key_throttle=AddressThrottle("api_key_failures", 900, 20)
        )
    )


@pytest_asyncio.fixture(loop_scope="session")
async def agency_api(notifications_pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(router)
    app.state.deps = ApiDeps(notifications_pool, ManualClock(T0))
    key = await issue_api_key(notifications_pool, "ag-001")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://refnet.test",
        headers={"Authorization": f"Bearer {key}"},
    ) as client:
        yield client


async def test_an_agency_manages_its_webhook_over_the_api(
    agency_api: httpx.AsyncClient, notifications_pool: asyncpg.Pool
) -> None:
    assert (await agency_api.get("/agency/v1/webhook")).status_code == 404

    refused = await agency_api.put("/agency/v1/webhook", json={"url": "http://agency.example/h"})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "url"]

    put = await agency_api.put("/agency/v1/webhook", json={"url": "https://agency.example/h"})
    assert put.status_code == 200
    registered = put.json()
    assert registered["url"] == "https://agency.example/h" and registered["enabled"] is True
    assert registered["secret"].startswith("whsec_")

    got = await agency_api.get("/agency/v1/webhook")
    assert got.status_code == 200
    assert got.json() == {
        "url": "https://agency.example/h",
        "enabled": True,
        "consecutive_failures": 0,
        "disabled_at": None,
        "disabled_reason": None,
    }
    assert "secret" not in got.text and registered["secret"] not in got.text

    assert (await agency_api.delete("/agency/v1/webhook")).status_code == 204
    assert (await agency_api.get("/agency/v1/webhook")).status_code == 404

    unauthenticated = await agency_api.get("/agency/v1/webhook", headers={"Authorization": ""})
    assert unauthenticated.status_code == 401


async def test_an_agency_lists_only_its_own_recent_deliveries(
    agency_api: httpx.AsyncClient, notifications_pool: asyncpg.Pool
) -> None:
    async with notifications_pool.acquire() as conn:
        done = await given_a_webhook_job(conn, "done")
        failed = await given_a_webhook_job(conn, "failed")
        await conn.execute(
            "UPDATE deliveries SET updated_at = $2 WHERE idempotency_key = $1",
            str(failed),
            T0 + timedelta(minutes=5),
        )
        retrying = await given_a_webhook_job(conn, "pending")
        await conn.execute(
            "UPDATE deliveries SET status = 'failed', error = 'timed out after 10s', "
            "updated_at = $2 WHERE idempotency_key = $1",
            str(retrying),
            T0 + timedelta(minutes=10),
        )
        await conn.execute(
            "INSERT INTO deliveries (idempotency_key, channel, recipient, subject, status, "
            "attempts, sent_at, updated_at) VALUES "
            "('other', 'webhook', 'ag-002', 'offer.created', 'sent', 1, $1, $1), "
            "('mail', 'email', 'ag-001', 'Accepted', 'sent', 1, $1, $1)",
            T0 + timedelta(hours=1),
        )

    listed = await agency_api.get("/agency/v1/webhook/deliveries")
    assert listed.status_code == 200
    deliveries = listed.json()
    assert [d["delivery_id"] for d in deliveries] == [str(retrying), str(failed), str(done)]
    newest = deliveries[0]
    assert newest["status"] == "failed" and newest["error"] == "timed out after 10s"
    assert newest["event"] == "offer.created" and newest["attempts"] == 4
    assert newest["next_attempt_at"] is not None
    assert deliveries[2]["next_attempt_at"] is None and deliveries[2]["status"] == "sent"

    limited = await agency_api.get("/agency/v1/webhook/deliveries", params={"limit": 1})
    assert [d["delivery_id"] for d in limited.json()] == [str(retrying)]
    assert (
        await agency_api.get("/agency/v1/webhook/deliveries", params={"limit": 0})
    ).status_code == 422
