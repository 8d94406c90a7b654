from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.local_stack import LocalStack, Ports


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The whole stack as processes, as `refnet up` runs it, on free ports."""
    run_dir: Path = tmp_path_factory.mktemp("stack")
    local = LocalStack(
        run_dir,
        Ports.free(),
        extra_env={
            "SCHEDULER_POLL_INTERVAL_S": "0.2",
            "OUTBOX_POLL_INTERVAL_S": "0.5",
            "KAFKA_SESSION_TIMEOUT_S": "6",
        },
    )
    local.start()
    try:
        yield local
    finally:
        local.stop()
        for log in sorted((run_dir / "logs").glob("*.log")):
            text = log.read_text(errors="replace")
            if "Traceback" in text:
                print(f"--- {log.name} (has tracebacks) ---\n{text[-6000:]}")  # noqa: T201
