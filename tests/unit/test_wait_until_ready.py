"""Start-up waits for a broker that is down, and stops at once, naming the settings to fix,
for one that is up and refuses the login or a permission."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
)

from shared.kafka import KafkaAccessRefused, wait_until_ready


class Broker:
    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.attempts = 0

    async def start(self) -> None:
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)


async def test_a_broker_that_is_down_is_waited_for() -> None:
    broker = Broker(KafkaConnectionError("refused"), KafkaConnectionError("refused"))
    await wait_until_ready("Kafka producer", broker.start)
    assert broker.attempts == 3


@pytest.mark.parametrize(
    "refusal", [SaslAuthenticationFailed("bad password"), GroupAuthorizationFailedError()]
)
async def test_a_refused_login_or_permission_stops_start_up_with_what_to_fix(
    refusal: Exception,
) -> None:
    broker = Broker(refusal)
    with pytest.raises(KafkaAccessRefused, match="KAFKA_SASL_USERNAME") as stopped:
        await wait_until_ready("Kafka consumer", broker.start)
    assert broker.attempts == 1
    assert "Kafka consumer" in str(stopped.value)
