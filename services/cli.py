"""The `refnet` command: run the local stack, run one service, operate the network."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Literal
from uuid import uuid4

RUN_DIR = Path(".refnet")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="refnet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="run the whole stack locally on embedded infrastructure")
    up.add_argument("--run-dir", type=Path, default=RUN_DIR)
    for name in ("intake", "matching", "notifications"):
        commands.add_parser(name, help=f"run the {name} service in the foreground")
    commands.add_parser("migrate", help="apply every service's database migrations")
    commands.add_parser("topics", help="create the refnet topics and their DLQs")
    agency = commands.add_parser("agency", help="partner agency tools").add_subparsers(
        dest="agency_command", required=True
    )
    listen = agency.add_parser("listen", help="print (and optionally accept) an agency's offers")
    listen.add_argument("agency_id")
    listen.add_argument("--accept", action="store_true", help="accept every offer received")
    listen.add_argument("--max-offers", type=int, default=None, help="exit after this many")
    key = agency.add_parser("key", help="issue an API key for the agency HTTP API")
    key.add_argument("agency_id")
    _add_user_commands(commands)
    _add_directory_commands(commands)
    _add_webhook_commands(commands)
    pii = commands.add_parser("pii", help="intake's encrypted identifiers").add_subparsers(
        dest="pii_command", required=True
    )
    pii.add_parser("reseal", help="re-encrypt everything under PII_ENCRYPTION_KEY (rotation)")
    args = parser.parse_args(argv)

    if args.command == "up":
        run_up(args.run_dir)
    elif args.command in ("intake", "matching", "notifications"):
        run_service(args.command)
    elif args.command == "migrate":
        _migrate()
    elif args.command == "topics":
        _topics()
    elif args.command == "users":
        _users(args)
    elif args.command == "pii":
        _reseal()
    elif args.command == "directory":
        _directory(args)
    elif args.command == "webhooks":
        _webhooks(args)
    elif args.agency_command == "listen":
        asyncio.run(_listen(args.agency_id, args.accept, args.max_offers))
    elif args.agency_command == "key":
        print(asyncio.run(_issue_key(args.agency_id)))


def _add_user_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    users = commands.add_parser("users", help="intake worker accounts").add_subparsers(
        dest="users_command", required=True
    )
    add = users.add_parser("add", help="add a worker, or reset one's password and role")
    add.add_argument("email")
    add.add_argument("--name", required=True, help="shown in the header and audit trail")
    add.add_argument("--role", choices=("intake_worker", "admin"), default="intake_worker")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    disable = users.add_parser("disable", help="stop a worker logging in or using tokens")
    disable.add_argument("email")
    token = users.add_parser("token", help="issue an API token for the intake JSON API")
    token.add_argument("email")
    token.add_argument("--label", default="api", help="what the token is for")


def _add_directory_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    directory = commands.add_parser(
        "directory", help="the agency directory (Open Referral HSDS)"
    ).add_subparsers(dest="directory_command", required=True)
    load = directory.add_parser(
        "import", help="check an HSDS package (CSV directory or .json) and make it the directory"
    )
    load.add_argument("path", type=Path)
    dump = directory.add_parser("export", help="write the directory as an HSDS package")
    dump.add_argument("path", type=Path, help="a directory (CSV) or a .json file")
    dump.add_argument("--format", choices=("csv", "json"), help="default: from the path")


def _add_webhook_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    hooks = commands.add_parser("webhooks", help="agency webhooks").add_subparsers(
        dest="webhooks_command", required=True
    )
    replay = hooks.add_parser(
        "replay", help="send a finished (delivered or failed) webhook delivery again"
    )
    replay.add_argument("delivery_id", help="the Refnet-Webhook-Id of the delivery")
    enable = hooks.add_parser(
        "enable", help="re-enable an agency's webhook endpoint and forget its failures"
    )
    enable.add_argument("agency_id")


def _webhooks(args: argparse.Namespace) -> None:
    from uuid import UUID

    if args.webhooks_command == "replay":
        try:
            delivery_id = UUID(args.delivery_id)
        except ValueError:
            sys.exit(f"refnet webhooks replay: {args.delivery_id!r} is not a delivery id (a UUID)")
        if not asyncio.run(_webhook_command("replay", str(delivery_id))):
            sys.exit("refnet webhooks replay: no finished webhook delivery with that id")
        print(f"delivery {delivery_id} replayed: it is due now")
    else:
        if not asyncio.run(_webhook_command("enable", args.agency_id)):
            sys.exit(f"refnet webhooks enable: agency {args.agency_id} has no webhook endpoint")
        print(f"the webhook endpoint of {args.agency_id} is enabled")


async def _webhook_command(command: Literal["replay", "enable"], target: str) -> bool:
    from uuid import UUID

    from services.notifications import webhooks
    from shared.clock import SystemClock
    from shared.db import create_pool

    pool = await create_pool(_setting("DATABASE_URL"), "notifications", max_size=1)
    try:
        async with pool.acquire() as conn:
            now = SystemClock().now()
            if command == "replay":
                return await webhooks.replay(conn, UUID(target), now)
            return await webhooks.enable(conn, target, now)
    finally:
        await pool.close()


def _directory(args: argparse.Namespace) -> None:
    from services.matching.directory import admin
    from services.matching.directory.package import PackageInvalid

    settings = admin.Connection(
        database_url=_setting("DATABASE_URL"),
        kafka_bootstrap_servers=_setting("KAFKA_BOOTSTRAP_SERVERS"),
        kafka_partitions=int(_setting("KAFKA_PARTITIONS", "3")),
    )
    if args.directory_command == "import":
        try:
            result = asyncio.run(admin.import_directory(settings, args.path))
        except PackageInvalid as exc:
            print(f"refnet directory import: {args.path} was not imported:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
            sys.exit(2)
        print(
            f"directory revision {result.revision}: {len(result.published)} agency profile(s) "
            f"published, {result.unchanged} unchanged, {len(result.removed)} removed"
        )
    else:
        fmt: Literal["csv", "json"] = args.format or (
            "json" if args.path.suffix == ".json" else "csv"
        )
        count = asyncio.run(admin.export_directory(settings, args.path, fmt))
        print(f"wrote {count} organization(s) to {args.path} ({fmt})")


def _users(args: argparse.Namespace) -> None:
    from services.intake import admin

    url = _setting("DATABASE_URL")
    try:
        if args.users_command == "add":
            password = _new_password(args.password_stdin)
            asyncio.run(admin.add_user(url, args.email, args.name, args.role, password))
            print(f"worker {args.email} ({args.role}) is ready")
        elif args.users_command == "disable":
            asyncio.run(admin.disable_user(url, args.email))
            print(f"worker {args.email} is disabled; their tokens are revoked")
        elif args.users_command == "token":
            token = asyncio.run(admin.issue_token(url, args.email, args.label))
            print(token)
    except admin.AdminError as exc:
        sys.exit(f"refnet users {args.users_command}: {exc}")


def _new_password(from_stdin: bool) -> str:
    import getpass

    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        sys.exit("refnet users add: the passwords differ")
    return first


def _reseal() -> None:
    from services.intake import admin
    from services.intake.settings import IntakeSettings
    from shared.settings import load_settings

    settings = load_settings(IntakeSettings)
    count = asyncio.run(admin.reseal(settings.database_url, settings.pii_keys))
    print(f"re-sealed {count} value(s) under the current key")


def _setting(name: str, default: str | None = None) -> str:
    """From the environment, else from the running local stack, else the default."""
    if name in os.environ:
        return os.environ[name]
    stack_file = RUN_DIR / "stack.json"
    if stack_file.exists():
        value = json.loads(stack_file.read_text()).get(name)
        if value:
            return str(value)
    if default is None:
        sys.exit(f"refnet: set {name} (or run `refnet up` in this directory first)")
    return default


def run_service(name: str) -> None:
    from shared.logs import configure_logging
    from shared.settings import load_settings

    if name == "intake":
        import uvicorn

        from services.intake.app import create_app
        from services.intake.settings import IntakeSettings

        settings = load_settings(IntakeSettings)
        configure_logging(name, settings.log_level)
        uvicorn.run(
            create_app(settings),
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            proxy_headers=True,
            forwarded_allow_ips=settings.forwarded_allow_ips,
        )
    elif name == "notifications":
        import uvicorn

        from services.notifications.app import create_app as create_notifications
        from services.notifications.settings import NotificationsSettings

        n_settings = load_settings(NotificationsSettings)
        configure_logging(name, n_settings.log_level)
        uvicorn.run(
            create_notifications(n_settings),
            host=n_settings.http_host,
            port=n_settings.http_port,
            log_config=None,
        )
    else:
        from faust import Worker

        from services.matching.app import create_app as create_matching
        from services.matching.settings import MatchingSettings

        m_settings = load_settings(MatchingSettings)
        configure_logging(name, m_settings.log_level)
        app = create_matching(m_settings)
        Worker(app, loglevel=m_settings.log_level, quiet=True).execute_from_commandline()


def run_up(run_dir: Path) -> None:
    from services.local_stack import DEMO_WORKER_EMAIL, LocalStack, Ports
    from shared.logs import configure_logging

    configure_logging("up", "WARNING")
    ports, notes = Ports.preferred()
    for note in notes:
        print(f"refnet: {note}", flush=True)
    stack = LocalStack(run_dir, ports, echo_mail=True)
    print("refnet: starting Postgres, the broker, mail and SMS sinks, 3 services...", flush=True)
    stack.start()
    assert stack.infra is not None
    print(
        f"""
refnet is up.
  intake (workers)      {stack.intake_url}
  agency HTTP API       {stack.agency_api_url}/agency/v1/offers
  Kafka broker          {stack.infra.kafka_bootstrap_servers}  ({stack.infra.kafka_source})
  Postgres              {stack.infra.database_url}  ({stack.infra.postgres_source})
  SMTP sink             127.0.0.1:{stack.ports.smtp}  (messages in {run_dir}/mail/)
  SMS provider (fake)   http://127.0.0.1:{stack.ports.sms}  (texts in {run_dir}/sms/)
  logs                  {run_dir}/logs/

  demo intake worker    {DEMO_WORKER_EMAIL}
  password              {stack.secrets["DEMO_WORKER_PASSWORD"]}

  accept offers as an agency:  refnet agency listen ag-001 --accept
  API key for an agency:       refnet agency key ag-001
Press Ctrl-C to stop everything.""",
        flush=True,
    )
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        while not stopping:
            dead = stack.dead_services()
            if dead:
                print(f"refnet: {', '.join(dead)} stopped unexpectedly; see {run_dir}/logs/")
                break
            time.sleep(0.5)
    finally:
        print("refnet: stopping...", flush=True)
        stack.stop()
        print("refnet: stopped.", flush=True)


def _migrate() -> None:
    from services.local_stack import MIGRATIONS
    from shared.db import migrate

    url = _setting("DATABASE_URL")
    for name, path in MIGRATIONS.items():
        applied = migrate(url, name, path)
        print(f"{name}: {len(applied)} migration(s) applied")


def _topics() -> None:
    from shared.kafka import compacted_names, ensure_topics, topics_with_dlqs
    from shared.topics import PLATFORM_TOPICS

    created = asyncio.run(
        ensure_topics(
            _setting("KAFKA_BOOTSTRAP_SERVERS"),
            topics_with_dlqs(PLATFORM_TOPICS),
            int(_setting("KAFKA_PARTITIONS", "3")),
            int(_setting("KAFKA_REPLICATION_FACTOR", "1")),
            compacted=compacted_names(PLATFORM_TOPICS),
        )
    )
    print(f"created {len(created)} topic(s): {', '.join(created) or 'none needed'}")


async def _issue_key(agency_id: str) -> str:
    from services.notifications.handlers import issue_api_key
    from shared.db import create_pool

    pool = await create_pool(_setting("DATABASE_URL"), "notifications", max_size=1)
    try:
        return await issue_api_key(pool, agency_id)
    finally:
        await pool.close()


async def _listen(agency_id: str, accept: bool, max_offers: int | None) -> None:
    """A reference agency consumer: plain aiokafka, strict CloudEvents decoding."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from shared.clock import SystemClock
    from shared.cloudevents import PoisonMessage, decode, encode
    from shared.events import OfferAccepted, ReferralOffered
    from shared.topics import OFFER_RESPONSES, agency_offers

    bootstrap = _setting("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    spec = agency_offers(agency_id)
    consumer = AIOKafkaConsumer(
        spec.name,
        bootstrap_servers=bootstrap,
        group_id=f"agency-{agency_id}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    print(f"listening on {spec.name} at {bootstrap} (Ctrl-C to stop)", flush=True)
    seen = 0
    try:
        async for record in consumer:
            try:
                event = decode(spec, record.key, record.value, record.headers).event
            except PoisonMessage as exc:
                print(f"skipping unreadable record at offset {record.offset}: {exc}", flush=True)
                await consumer.commit()
                continue
            print(f"{event.ce_type}: {event.model_dump_json()}", flush=True)
            if isinstance(event, ReferralOffered):
                seen += 1
                if accept:
                    now = SystemClock().now()
                    answer = OfferAccepted(
                        offer_id=event.offer_id,
                        need_id=event.need_id,
                        agency_id=agency_id,
                        accepted_at=now,
                    )
                    headers, value = encode(
                        answer, event_id=uuid4(), source=f"/agencies/{agency_id}", time=now
                    )
                    await producer.send_and_wait(
                        OFFER_RESPONSES.name,
                        key=str(event.need_id).encode(),
                        value=value,
                        headers=headers,
                    )
                    print(f"accepted offer {event.offer_id}", flush=True)
            await consumer.commit()
            if max_offers is not None and seen >= max_offers:
                break
    finally:
        await consumer.stop()
        await producer.stop()


if __name__ == "__main__":
    main()
