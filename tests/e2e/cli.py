"""The `refnet` command as an operator runs it against the e2e stack."""

from __future__ import annotations

import os
import subprocess
import sys

from services.local_stack import LocalStack


def refnet_cli(stack: LocalStack, *args: str, stdin: str | None = None) -> str:
    assert stack.infra is not None
    env = {
        **os.environ,
        "DATABASE_URL": stack.infra.database_url,
        "KAFKA_BOOTSTRAP_SERVERS": stack.infra.kafka_bootstrap_servers,
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout
