"""A stack of the reliability run's own: the test kills its services, restarts its Postgres
and pauses its broker, so it never shares the e2e session's stack."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.local_stack import LocalStack, Ports
from tests.reliability.harness import STACK_ENV, TABLE, Config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reliability_config() -> Config:
    return Config.from_env(ROOT)


@pytest.fixture(scope="module")
def reliability_stack(
    tmp_path_factory: pytest.TempPathFactory, reliability_config: Config
) -> Iterator[LocalStack]:
    run_dir: Path = tmp_path_factory.mktemp("reliability")
    local = LocalStack(run_dir, Ports.free(), extra_env=dict(STACK_ENV))
    local.start()
    try:
        assert local.infra is not None
        if local.infra.postgres is None or local.infra.kafka is None:
            pytest.skip(
                "the reliability run injects faults into the embedded Postgres and broker; "
                f"this run uses {local.infra.postgres_source} / {local.infra.kafka_source} ones"
            )
        yield local
    finally:
        local.stop()
        # The services' logs beside the report: every fault leaves its traces there.
        logs = reliability_config.report_dir / "logs"
        shutil.rmtree(logs, ignore_errors=True)
        shutil.copytree(run_dir / "logs", logs, dirs_exist_ok=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The table in the log whether or not output is captured (and whether the test passed)."""
    table = terminalreporter.config.stash.get(TABLE, None)
    if table:
        terminalreporter.write_sep("=", "refnet reliability")
        terminalreporter.write_line(table)
