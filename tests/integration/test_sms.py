"""The SMS channel over real HTTP on loopback, against the local fake provider."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from services.notifications.settings import NotificationsSettings
from services.notifications.sms import (
    ChannelError,
    SmsChannel,
    SmsRejected,
    SmsUnavailable,
    to_e164,
)
from services.sms_sink import SmsSink
from shared.embedded import free_port

ACCOUNT_SID = "AC" + "0" * 32
AUTH_TOKEN = "test-auth-token-0123456789abcdef"
FROM = "+15005550006"


@pytest.fixture
def sms_sink(tmp_path: Path) -> Iterator[SmsSink]:
    sink = SmsSink(tmp_path / "sms", free_port(), account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    sink.start()
    yield sink
    sink.stop()


def channel_for(
    sink: SmsSink, *, auth_token: str = AUTH_TOKEN, timeout_s: float = 5.0
) -> SmsChannel:
    return SmsChannel(
        api_url=sink.url,
        account_sid=ACCOUNT_SID,
        auth_token=auth_token,
        from_number=FROM,
        timeout_s=timeout_s,
    )


@pytest_asyncio.fixture(loop_scope="session")
async def channel(sms_sink: SmsSink) -> AsyncIterator[SmsChannel]:
    async with channel_for(sms_sink) as sms:
        yield sms


async def test_message_arrives_in_e164(sms_sink: SmsSink, channel: SmsChannel) -> None:
    sid = await channel.send("503-555-0142", "Your check-in link: https://x.test/c/1", "job-1")

    assert sid.startswith("SM") and len(sid) == 34
    [message] = sms_sink.messages
    assert message == {
        "to": "+15035550142",
        "from": FROM,
        "body": "Your check-in link: https://x.test/c/1",
        "sid": sid,
        "idempotency_key": "job-1",
    }
    lines = (sms_sink.data_dir / "sms.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [message]


async def test_same_idempotency_key_sends_once(sms_sink: SmsSink, channel: SmsChannel) -> None:
    first = await channel.send("503-555-0142", "hello", "job-2")
    second = await channel.send("503-555-0142", "hello", "job-2")

    assert first == second
    assert len(sms_sink.messages) == 1
    assert sms_sink.repeats == 1

    await channel.send("503-555-0142", "hello", "job-3")
    assert len(sms_sink.messages) == 2
    assert sms_sink.repeats == 1


async def test_bad_credentials_are_rejected(sms_sink: SmsSink) -> None:
    async with channel_for(sms_sink, auth_token="wrong-token") as sms:
        with pytest.raises(SmsRejected) as raised:
            await sms.send("503-555-0142", "hello", "job-4")

    assert raised.value.permanent
    assert raised.value.status == 401
    assert raised.value.code == 20003
    assert AUTH_TOKEN not in str(raised.value) and "wrong-token" not in str(raised.value)
    assert sms_sink.messages == []


async def test_invalid_number_is_rejected_before_sending(
    sms_sink: SmsSink, channel: SmsChannel
) -> None:
    with pytest.raises(SmsRejected) as raised:
        await channel.send("555-0142", "hello", "job-5")

    assert raised.value.permanent
    assert "not a US 10-digit or E.164 phone number" in str(raised.value)
    assert "555-0142" not in str(raised.value)  # no phone numbers in error texts
    assert sms_sink.messages == []


async def test_provider_rejection_carries_its_code(sms_sink: SmsSink, channel: SmsChannel) -> None:
    with pytest.raises(SmsRejected) as raised:
        await channel.send("503-555-0142", "", "job-6")

    assert raised.value.status == 400
    assert raised.value.code == 21602
    assert "Message body is required" in str(raised.value)
    assert sms_sink.messages == []


async def test_sink_rejects_a_to_that_is_not_e164(sms_sink: SmsSink) -> None:
    async with httpx.AsyncClient(auth=(ACCOUNT_SID, AUTH_TOKEN)) as client:
        response = await client.post(
            f"{sms_sink.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
            data={"To": "503-555-0142", "From": FROM, "Body": "hello"},
        )

    assert response.status_code == 400
    problem = response.json()
    assert problem["code"] == 21211
    assert problem["status"] == 400
    assert problem["message"] == "The 'To' number 503-555-0142 is not a valid phone number."
    assert problem["more_info"].endswith("/21211")
    assert sms_sink.messages == []


async def test_sink_answers_404_for_another_account(sms_sink: SmsSink) -> None:
    other = "AC" + "1" * 32
    async with httpx.AsyncClient(auth=(ACCOUNT_SID, AUTH_TOKEN)) as client:
        response = await client.post(
            f"{sms_sink.url}/2010-04-01/Accounts/{other}/Messages.json",
            data={"To": "+15035550142", "From": FROM, "Body": "hello"},
        )

    assert response.status_code == 404
    assert response.json()["code"] == 20404


async def test_unavailable_then_sent_on_retry(sms_sink: SmsSink, channel: SmsChannel) -> None:
    sms_sink.fail_next(1, 503)

    with pytest.raises(SmsUnavailable) as raised:
        await channel.send("503-555-0142", "hello", "job-7")
    assert not raised.value.permanent
    assert raised.value.status == 503
    assert sms_sink.messages == []

    sid = await channel.send("503-555-0142", "hello", "job-7")
    assert [m["sid"] for m in sms_sink.messages] == [sid]


async def test_rate_limited_is_transient(sms_sink: SmsSink, channel: SmsChannel) -> None:
    sms_sink.fail_next(1, 429)

    with pytest.raises(SmsUnavailable) as raised:
        await channel.send("503-555-0142", "hello", "job-8")
    assert raised.value.status == 429


async def test_connection_refused_is_transient() -> None:
    sms = SmsChannel(f"http://127.0.0.1:{free_port()}", ACCOUNT_SID, AUTH_TOKEN, FROM, 2.0)
    async with sms:
        with pytest.raises(SmsUnavailable) as raised:
            await sms.send("503-555-0142", "hello", "job-9")
    assert isinstance(raised.value, ChannelError)
    assert not raised.value.permanent


async def test_timeout_is_transient() -> None:
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        async with SmsChannel(
            f"http://127.0.0.1:{port}", ACCOUNT_SID, AUTH_TOKEN, FROM, 0.3
        ) as sms:
            with pytest.raises(SmsUnavailable, match="timed out"):
                await sms.send("503-555-0142", "hello", "job-10")


def test_echo_prints_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sink = SmsSink(tmp_path, 0, account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, echo=True)
    sink.start()
    try:
        response = httpx.post(
            f"{sink.url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
            auth=(ACCOUNT_SID, AUTH_TOKEN),
            data={"To": "+15035550142", "From": FROM, "Body": "line one\nline two " + "x" * 80},
        )
    finally:
        sink.stop()
    assert response.status_code == 201
    assert response.json()["status"] == "queued"
    out = capsys.readouterr().out
    assert out == f"[sms-sink] sms #1 to +15035550142: {('line one line two ' + 'x' * 80)[:60]}\n"


def test_from_settings() -> None:
    base = {
        "database_url": "postgresql://unused",
        "kafka_bootstrap_servers": "unused",
        "smtp_host": "127.0.0.1",
        "link_secret": "s" * 32,
        "internal_api_token": "t" * 32,
        "inbox_secret_key": "k" * 32,
    }
    assert SmsChannel.from_settings(NotificationsSettings(**base)) is None

    sms = SmsChannel.from_settings(
        NotificationsSettings(
            **base,
            sms_api_url="http://127.0.0.1:9/",
            sms_account_sid=ACCOUNT_SID,
            sms_auth_token=AUTH_TOKEN,
            sms_from="+1 500-555-0006",
            sms_timeout_s=3.0,
        )
    )
    assert sms is not None
    assert sms.messages_url == f"http://127.0.0.1:9/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    assert sms.from_number == FROM
    assert sms.timeout_s == 3.0


def test_to_e164() -> None:
    assert to_e164("503-555-0142") == "+15035550142"
    assert to_e164("(503) 555-0142") == "+15035550142"
    assert to_e164("5035550142") == "+15035550142"
    assert to_e164("1-503-555-0142") == "+15035550142"
    assert to_e164("+15035550142") == "+15035550142"
    assert to_e164("+44 20 7946 0958") == "+442079460958"
    for bad in ["", "555-0142", "503-555-01423", "+0123456789", "+1234567", "503-ABC-0142"]:
        with pytest.raises(ValueError):
            to_e164(bad)
