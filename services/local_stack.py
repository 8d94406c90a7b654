"""The whole stack on one machine, no Docker: what `refnet up` runs and the e2e tests use.

Infrastructure comes from shared.infra (explicit settings > testcontainers > embedded); the
three services run as child processes of this one, with their logs under the run directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, fields
from pathlib import Path

from cryptography.fernet import Fernet

from services.matching.directory import admin as directory
from services.sms_sink import SmsSink
from services.smtp_sink import SmtpSink
from shared.db import migrate
from shared.embedded import free_port, port_is_open, spawn, stop_process
from shared.infra import Infrastructure, provision
from shared.kafka import compacted_names, ensure_topics, topics_with_dlqs
from shared.topics import PLATFORM_TOPICS

SERVICES = ("intake", "matching", "notifications")
MIGRATIONS = {name: Path(__file__).parent / name / "migrations" for name in SERVICES}
DEMO_WORKER_EMAIL = "demo.worker@refnet.local"
DEMO_AGENCY_USER_EMAIL = "demo.agency@refnet.local"
DEMO_AGENCY_ID = "ag-001"
# The local SMS provider's account (a Twilio-style sid; the token is a generated secret).
SMS_ACCOUNT = "AC" + "0" * 32


@dataclass
class Ports:
    postgres: int = 5432
    kafka: int = 9092
    smtp: int = 1025
    intake: int = 8000
    notifications: int = 8001
    sms: int = 8025
    matching: int = 8002  # its /healthz, /readyz and /metrics

    @classmethod
    def free(cls) -> Ports:
        return cls(*(free_port() for _ in fields(cls)))

    @classmethod
    def preferred(cls) -> tuple[Ports, list[str]]:
        """The documented ports, except where something else already listens; then a free
        one, with a note saying so."""
        ports, notes = cls(), []
        for name, port in vars(ports).items():
            if port_is_open(port):
                replacement = free_port()
                setattr(ports, name, replacement)
                notes.append(f"port {port} ({name}) is taken; using {replacement}")
        return ports, notes


@dataclass
class LocalStack:
    run_dir: Path
    ports: Ports = field(default_factory=Ports)
    extra_env: dict[str, str] = field(default_factory=dict)
    echo_mail: bool = False
    infra: Infrastructure | None = None
    mail: SmtpSink | None = None
    sms: SmsSink | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def intake_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.intake}"

    @property
    def agency_api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.notifications}"

    @property
    def matching_url(self) -> str:
        """The matching worker's HTTP endpoint: /healthz, /readyz, /metrics."""
        return f"http://127.0.0.1:{self.ports.matching}"

    @property
    def service_urls(self) -> dict[str, str]:
        return {
            "intake": self.intake_url,
            "matching": self.matching_url,
            "notifications": self.agency_api_url,
        }

    @property
    def clock_offset_file(self) -> Path:
        return self.run_dir / "clock-offset"

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        try:
            self.infra = provision(
                self.run_dir, postgres_port=self.ports.postgres, kafka_port=self.ports.kafka
            )
            self.mail = SmtpSink(self.run_dir / "mail", self.ports.smtp, echo=self.echo_mail)
            self.mail.start()
            self.sms = SmsSink(
                self.run_dir / "sms",
                self.ports.sms,
                account_sid=SMS_ACCOUNT,
                auth_token=self.secrets["SMS_AUTH_TOKEN"],
                echo=self.echo_mail,
            )
            self.sms.start()
            prepare(self.infra.database_url, self.infra.kafka_bootstrap_servers, self._partitions)
            self._write_stack_file()
            for name in SERVICES:
                self._spawn(name)
            for name, url in self.service_urls.items():
                self._wait_ready(url, name)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str) -> None:
        self.processes[name] = spawn(
            [sys.executable, "-m", "services.cli", name],
            self.run_dir / "logs" / f"{name}.log",
            env=self.service_env(name),
        )

    def restart(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop one service (SIGKILL to crash it) and start it again."""
        stop_process(self.processes[name], sig)
        self._spawn(name)

    def stop_service(self, name: str) -> None:
        """Stop one service until start_service; the rest of the stack runs on."""
        stop_process(self.processes.pop(name))

    def start_service(self, name: str) -> None:
        self._spawn(name)
        self._wait_ready(self.service_urls[name], name)

    def stop(self) -> None:
        for proc in self.processes.values():
            stop_process(proc)
        self.processes.clear()
        if self.mail:
            self.mail.stop()
            self.mail = None
        if self.sms:
            self.sms.stop()
            self.sms = None
        if self.infra:
            self.infra.stop()
            self.infra = None

    def dead_services(self) -> list[str]:
        return [name for name, proc in self.processes.items() if proc.poll() is not None]

    @property
    def _partitions(self) -> int:
        return int(self.extra_env.get("KAFKA_PARTITIONS", "3"))

    @property
    def secrets(self) -> dict[str, str]:
        path = self.run_dir / "secrets.json"
        wanted = {
            "SECRET_KEY": lambda: secrets.token_urlsafe(48),
            "PII_ENCRYPTION_KEY": lambda: Fernet.generate_key().decode(),
            "PII_INDEX_KEY": lambda: Fernet.generate_key().decode(),
            "DEMO_WORKER_PASSWORD": lambda: secrets.token_urlsafe(12),
            "LINK_SECRET": lambda: secrets.token_urlsafe(48),
            "INTERNAL_API_TOKEN": lambda: secrets.token_urlsafe(48),
            "SMS_AUTH_TOKEN": lambda: secrets.token_urlsafe(24),
            "INBOX_SECRET_KEY": lambda: secrets.token_urlsafe(48),
            "DEMO_AGENCY_USER_PASSWORD": lambda: secrets.token_urlsafe(12),
        }
        values: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        # A run directory from an older version gains the secrets added since.
        missing = {name: make() for name, make in wanted.items() if name not in values}
        if missing:
            values.update(missing)
            path.touch(mode=0o600)
            path.write_text(json.dumps(values, indent=2))
        return values

    def service_env(self, name: str) -> dict[str, str]:
        assert self.infra is not None
        http_port = {
            "intake": self.ports.intake,
            "notifications": self.ports.notifications,
            "matching": self.ports.matching,
        }
        env = {
            # The embedded broker holds a fetch for its whole wait (see the setting); an
            # operator's own value wins.
            "KAFKA_FETCH_MAX_WAIT_MS": "50",
            **os.environ,
            "REFNET_ENV": "local",
            "DATABASE_URL": self.infra.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.infra.kafka_bootstrap_servers,
            "CLOCK_OFFSET_FILE": str(self.clock_offset_file),
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(self.ports.smtp),
            "DEMO_WORKER_EMAIL": DEMO_WORKER_EMAIL,
            "DEMO_AGENCY_ID": DEMO_AGENCY_ID,
            "DEMO_AGENCY_USER_EMAIL": DEMO_AGENCY_USER_EMAIL,
            "FAUST_DATADIR": str(self.run_dir / "matching-data"),
            "PUBLIC_URL": self.agency_api_url,
            "INTAKE_INTERNAL_URL": self.intake_url,
            # Where intake's operator dashboard asks the other services' /readyz.
            "MATCHING_URL": self.matching_url,
            "NOTIFICATIONS_URL": self.agency_api_url,
            "SMS_API_URL": f"http://127.0.0.1:{self.ports.sms}",
            "SMS_ACCOUNT_SID": SMS_ACCOUNT,
            "SMS_FROM": "+15035550100",
            **self.secrets,
            **self.extra_env,
        }
        if name in http_port:
            env["HTTP_PORT"] = str(http_port[name])
        if name == "matching":
            env["MATCHING_HTTP_PORT"] = str(http_port[name])
        return env

    def _write_stack_file(self) -> None:
        assert self.infra is not None
        (self.run_dir / "stack.json").write_text(
            json.dumps(
                {
                    "DATABASE_URL": self.infra.database_url,
                    "KAFKA_BOOTSTRAP_SERVERS": self.infra.kafka_bootstrap_servers,
                },
                indent=2,
            )
        )

    def _wait_ready(self, base_url: str, name: str, timeout_s: float = 120) -> None:
        """Until the service's /readyz says ready: its database, broker and consumer group
        are there (its /healthz answers as soon as it listens)."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            proc = self.processes[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited at start-up; see {self.run_dir}/logs/{name}.log")
            try:
                with urllib.request.urlopen(f"{base_url}/readyz", timeout=5) as response:  # noqa: S310 - our own loopback URL
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as not_ready:  # 503 with what is missing
                last = not_ready.read().decode(errors="replace")
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise RuntimeError(f"{name} was not ready in {timeout_s}s: {last}")


def prepare(database_url: str, bootstrap_servers: str, partitions: int) -> None:
    """Migrate every service's schema, create every refnet topic with its DLQ, and load the
    demo directory if none has been imported."""
    for name, migrations in MIGRATIONS.items():
        migrate(database_url, name, migrations)
    asyncio.run(
        ensure_topics(
            bootstrap_servers,
            topics_with_dlqs(PLATFORM_TOPICS),
            partitions,
            compacted=compacted_names(PLATFORM_TOPICS),
        )
    )
    connection = directory.Connection(
        database_url=database_url,
        kafka_bootstrap_servers=bootstrap_servers,
        kafka_partitions=partitions,
    )
    asyncio.run(directory.seed_if_empty(connection))
