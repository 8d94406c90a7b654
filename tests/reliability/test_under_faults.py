"""N needs through the whole stack while its services are killed, its Postgres restarted and
its broker paused: none lost, none done twice (tests/reliability/README.md).

RELIABILITY_NEEDS and RELIABILITY_ROUNDS size the run: 40 needs and one round of faults in
`make test`, more with `make reliability`."""

from __future__ import annotations

import pytest

from services.local_stack import LocalStack
from tests.reliability.harness import TABLE, Config, Harness

pytestmark = pytest.mark.e2e


async def test_no_need_is_lost_or_done_twice_under_faults(
    reliability_stack: LocalStack, reliability_config: Config, request: pytest.FixtureRequest
) -> None:
    harness = Harness(reliability_stack, reliability_config)
    try:
        report = await harness.run()
    finally:
        json_path, _ = harness.write(reliability_config.report_dir)
        request.config.stash[TABLE] = f"{harness.report.table()}\n(report: {json_path})"
    assert not report.failures, report.table()
