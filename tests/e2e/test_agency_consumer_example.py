"""docs/examples/agency_consumer.py, the consumer the README gives agencies to copy: run as an
agency would run it against the stack, it prints the offer of a need just submitted. And the
README shows it verbatim, so the copy there is the one this test runs."""

from __future__ import annotations

import ast
import asyncio
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from aiokafka import AIOKafkaProducer

from services.local_stack import LocalStack
from shared.cloudevents import decode, encode
from shared.events import Constraints, Insurance, NeedCategory, ReferralOffered, ReferralStatus
from shared.topics import NEEDS, REFERRAL_EVENTS, agency_offers
from tests.factories import need_submitted
from tests.kafka_reader import decodable, eventually, offers_not_yet_read, read_topic

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "agency_consumer.py"
README = ROOT / "README.md"


def test_the_readme_shows_the_example_verbatim_and_it_needs_only_aiokafka() -> None:
    example = EXAMPLE.read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)
    assert example in blocks, (
        "README.md must show docs/examples/agency_consumer.py exactly, in a ```python block "
        "(paste the file in again after changing it)"
    )
    imported = set()
    for node in ast.walk(ast.parse(example)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) == {"aiokafka"}, "an agency has no refnet"


async def test_the_example_consumer_prints_the_offer_made_to_its_agency(stack: LocalStack) -> None:
    assert stack.infra is not None
    bootstrap = stack.infra.kafka_bootstrap_servers
    need = need_submitted(
        NeedCategory.PEER_SUPPORT,
        constraints=Constraints(insurance=Insurance.MEDICAID),
        languages=("en",),
    )
    await _submit(bootstrap, need)
    offered = await eventually(lambda: _offered(bootstrap, need.need_id), "the need offered")
    agency_id = offered.agency_id
    await eventually(
        lambda: _offer_on_topic(bootstrap, agency_id, need.need_id),
        f"the offer on {agency_offers(agency_id).name}",
    )
    # The example stops after REFNET_MAX_OFFERS offers; its group (the agency's, shared with
    # `refnet agency listen`) resumes where it last committed, so count what it has not read.
    unread = await offers_not_yet_read(bootstrap, agency_id)

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        env={
            **os.environ,
            "REFNET_AGENCY_ID": agency_id,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "REFNET_MAX_OFFERS": str(unread),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"the example did not stop after {unread} offer(s): {out!r}") from None
    stdout = out.decode()

    assert proc.returncode == 0, err.decode()
    ours = [line for line in stdout.splitlines() if str(need.need_id) in line]
    assert ours, f"the need's offer was not printed:\n{stdout}"
    assert ours[0].startswith("org.refnet.referral.offered "), ours[0]
    assert f"'agency_id': '{agency_id}'" in ours[0]


async def _submit(bootstrap: str, need: Any) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        headers, value = encode(need, event_id=uuid4(), source="/tests", time=datetime.now(UTC))
        await producer.send_and_wait(
            NEEDS.name, key=str(need.need_id).encode(), value=value, headers=headers
        )
    finally:
        await producer.stop()


async def _offered(bootstrap: str, need_id: UUID) -> Any:
    for change in decodable(REFERRAL_EVENTS, await read_topic(bootstrap, REFERRAL_EVENTS.name)):
        if change.need_id == need_id and change.status == ReferralStatus.OFFERED:
            return change
    return None


async def _offer_on_topic(bootstrap: str, agency_id: str, need_id: UUID) -> bool:
    spec = agency_offers(agency_id)
    return any(
        isinstance(event, ReferralOffered) and event.need_id == need_id
        for event in (
            decode(spec, r.key, r.value, r.headers).event
            for r in await read_topic(bootstrap, spec.name)
        )
    )
