"""The `refnet` command: run the local stack, run one service, operate the network."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from uuid import UUID, uuid4

if TYPE_CHECKING:
    from shared.dlq import DeadLetter, Listing, Position, Replay
    from shared.kafka_acls import AdminTarget as KafkaAdminTarget
    from shared.outbox import SetAside
    from shared.settings import BaseServiceSettings

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
    commands.add_parser(
        "kafka-init-script",
        help="print deploy/kafka/init.sh: the topics, service users and ACLs for Apache Kafka",
    )
    _add_agency_commands(commands)
    _add_user_commands(commands)
    _add_directory_commands(commands)
    _add_webhook_commands(commands)
    _add_dlq_commands(commands)
    _add_outbox_commands(commands)
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
    elif args.command == "kafka-init-script":
        from services.kafka_init import render_init_script

        print(render_init_script(), end="")
    elif args.command == "users":
        _users(args)
    elif args.command == "pii":
        _reseal()
    elif args.command == "directory":
        _directory(args)
    elif args.command == "webhooks":
        _webhooks(args)
    elif args.command == "dlq":
        _dlq(args)
    elif args.command == "outbox":
        _outbox(args)
    elif args.command == "agency":
        _agency(args)


def _add_agency_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    agency = commands.add_parser(
        "agency", help="partner agencies: onboarding, API keys, inbox users, Kafka access"
    ).add_subparsers(dest="agency_command", required=True)
    listen = agency.add_parser("listen", help="print (and optionally accept) an agency's offers")
    listen.add_argument("agency_id")
    listen.add_argument("--accept", action="store_true", help="accept every offer received")
    listen.add_argument("--max-offers", type=int, default=None, help="exit after this many")
    key = agency.add_parser("key", help="issue an API key for the agency HTTP API")
    key.add_argument("agency_id")
    _add_agency_add_command(agency)
    keys = agency.add_parser("keys", help="list an agency's API keys by fingerprint")
    keys.add_argument("agency_id")
    rotate = agency.add_parser(
        "rotate-key", help="issue a new API key and revoke the agency's older ones"
    )
    rotate.add_argument("agency_id")
    rotate.add_argument(
        "--keep-old",
        action="store_true",
        help="leave the older keys working (a grace period): revoke them later with revoke-key",
    )
    revoke = agency.add_parser("revoke-key", help="revoke one of an agency's API keys, or all")
    revoke.add_argument("agency_id")
    revoke.add_argument("fingerprint", nargs="?", help="as `refnet agency keys` shows it")
    revoke.add_argument("--all", action="store_true", help="revoke every active key")
    kafka = agency.add_parser(
        "kafka-access",
        help="print the commands giving an agency a new Kafka password and its ACLs",
    )
    kafka.add_argument("agency_id")
    kafka.add_argument(
        "--revoke", action="store_true", help="print the commands removing them instead"
    )
    users = agency.add_parser("user", help="agency staff accounts for the web inbox")
    user = users.add_subparsers(dest="agency_user_command", required=True)
    user_add = user.add_parser("add", help="add an agency user, or reset one's password")
    user_add.add_argument("agency_id")
    user_add.add_argument("email")
    user_add.add_argument("--name", required=True, help="the person's full name")
    user_add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    user_disable = user.add_parser("disable", help="stop an agency user logging in")
    user_disable.add_argument("email")


def _add_agency_add_command(agency: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    add = agency.add_parser(
        "add",
        help="add an agency to the directory (or update it) and issue its credentials",
        description="Add one agency to the directory, or replace its entry, keeping every "
        "other agency; create its offers topic; issue an API key if it has none (or with "
        "--new-key), and then also print its Kafka credentials. Describe the agency with an "
        "HSDS package (as `refnet directory import` reads) or with the options below.",
    )
    add.add_argument(
        "package", nargs="?", type=Path, help="an HSDS package (CSV directory or .json)"
    )
    add.add_argument(
        "--organization", metavar="ID", help="the organization to take from the package"
    )
    fields = add.add_argument_group("or describe the agency (one service per category)")
    fields.add_argument("--id", dest="agency_id", help="e.g. ag-040; names its Kafka topic")
    fields.add_argument("--name")
    fields.add_argument("--description")
    fields.add_argument("--email")
    fields.add_argument("--website")
    fields.add_argument(
        "--category", action="append", default=[], help="a need category it serves (repeat)"
    )
    fields.add_argument(
        "--postal-code", action="append", default=[], help="a ZIP code it serves (repeat)"
    )
    fields.add_argument("--county", action="append", default=[], help="a county it serves")
    fields.add_argument(
        "--language", action="append", default=[], help="ISO 639 code (repeat; default en)"
    )
    fields.add_argument("--minimum-age", type=int)
    fields.add_argument("--maximum-age", type=int)
    fields.add_argument(
        "--mat-friendly",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="accepts people on medication-assisted treatment",
    )
    fields.add_argument(
        "--insurance", action="append", default=[], help="medicaid, medicare, private or none"
    )
    fields.add_argument("--latitude", type=float, help="of its office")
    fields.add_argument("--longitude", type=float, help="of its office")
    fields.add_argument("--radius-km", type=float, help="serves this far around its office")
    creds = add.add_argument_group("credentials")
    creds.add_argument(
        "--new-key",
        action="store_true",
        help="issue an API key even if the agency has one (its other keys keep working)",
    )
    creds.add_argument("--no-kafka", action="store_true", help="print no Kafka credentials")


_AGENCY_FIELD_OPTIONS = (
    "agency_id", "name", "description", "email", "website", "category", "postal_code", "county",
    "language", "minimum_age", "maximum_age", "mat_friendly", "insurance", "latitude",
    "longitude", "radius_km",
)  # fmt: skip


def _agency(args: argparse.Namespace) -> None:
    command = args.agency_command
    if command == "listen":
        asyncio.run(_listen(args.agency_id, args.accept, args.max_offers))
    elif command == "key":
        print(asyncio.run(_issue_key(args.agency_id)))
    elif command == "add":
        _agency_add(args)
    elif command in ("keys", "rotate-key", "revoke-key"):
        _agency_keys(args)
    elif command == "kafka-access":
        _validate_agency_id("kafka-access", args.agency_id)
        if args.revoke:
            print(_kafka_revoke_text(args.agency_id), end="")
        else:
            print(_kafka_access_text(args.agency_id), end="")
    elif command == "user":
        _agency_user(args)


def _validate_agency_id(command: str, agency_id: str) -> None:
    from shared.topics import agency_offers

    try:
        agency_offers(agency_id)
    except ValueError as exc:
        sys.exit(f"refnet agency {command}: {exc}")


def _agency_add(args: argparse.Namespace) -> None:
    from services.matching.directory import admin
    from services.matching.directory.package import PackageInvalid
    from services.notifications.agency_keys import fingerprint
    from shared.topics import AGENCIES

    given = [name for name in _AGENCY_FIELD_OPTIONS if getattr(args, name) not in (None, [])]
    if args.package is not None and given:
        sys.exit("refnet agency add: describe the agency with a package or with options, not both")
    if args.package is None and args.organization:
        sys.exit("refnet agency add: --organization picks from a package; give its path too")
    if args.package is None and not given:
        sys.exit("refnet agency add: give an HSDS package, or --id, --name, --category and an area")
    try:
        if args.package is not None:
            agency = admin.organization_from_package(args.package, args.organization)
        else:
            agency = admin.package_from_fields(
                admin.AgencyFields(
                    agency_id=args.agency_id or "",
                    name=args.name or "",
                    categories=args.category,
                    postal_codes=args.postal_code,
                    counties=args.county,
                    languages=args.language or ["en"],
                    email=args.email,
                    website=args.website,
                    description=args.description,
                    minimum_age=args.minimum_age,
                    maximum_age=args.maximum_age,
                    mat_friendly=args.mat_friendly,
                    insurance=args.insurance,
                    latitude=args.latitude,
                    longitude=args.longitude,
                    radius_km=args.radius_km,
                )
            )
        result = asyncio.run(admin.add_agency(_directory_settings(), agency))
    except PackageInvalid as exc:
        print("refnet agency add: the agency was not added:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        sys.exit(2)
    agency_id = result.agency_id
    verb = "updated in" if result.added.replaced else "added to"
    if not result.published:
        change = "its profile is unchanged, nothing published"
    elif result.still_queued:
        change = f"its profile is queued for {AGENCIES.name}: matching's relay will publish it"
    else:
        change = f"its profile is published to {AGENCIES.name}"
    revision = result.added.result.revision
    print(f"agency {agency_id} {verb} the directory (revision {revision}; {change})")
    print(f"offers topic {result.topic} {'created' if result.topic_created else 'exists'}")
    key, active = asyncio.run(_onboarding_key(agency_id, args.new_key))
    if key is None:
        print(
            f"API key: {agency_id} already has {active} active key(s), so none was issued "
            f"(--new-key issues another; `refnet agency rotate-key {agency_id}` replaces them)"
        )
    else:
        print(
            f"\nAPI key for the agency HTTP API (shown once, stored hashed; "
            f"fingerprint {fingerprint(key)}):\n  {key}"
        )
    if args.no_kafka:
        return
    if active == 0:
        print()
        print(_kafka_access_text(agency_id), end="")
    else:
        print(
            f"Kafka credentials: not issued again; `refnet agency kafka-access {agency_id}` "
            "sets a new password"
        )


def _directory_settings() -> BaseServiceSettings:
    from services.matching.directory import admin

    return admin.Connection(
        database_url=_setting("DATABASE_URL"),
        kafka_bootstrap_servers=_setting("KAFKA_BOOTSTRAP_SERVERS"),
        kafka_partitions=int(_setting("KAFKA_PARTITIONS", "3")),
    )


async def _onboarding_key(agency_id: str, force: bool) -> tuple[str | None, int]:
    """A new API key when the agency has no active one (or ``force``), and how many active
    keys it had."""
    from services.notifications import agency_keys
    from shared.db import create_pool

    pool = await create_pool(_setting("DATABASE_URL"), "notifications", max_size=1)
    try:
        active = await agency_keys.active_count(pool, agency_id)
        key = await agency_keys.issue(pool, agency_id) if force or active == 0 else None
        return key, active
    finally:
        await pool.close()


def _agency_keys(args: argparse.Namespace) -> None:
    from services.notifications.agency_keys import KeyProblem

    command = args.agency_command
    _validate_agency_id(command, args.agency_id)
    if command == "revoke-key" and bool(args.fingerprint) == bool(args.all):
        sys.exit("refnet agency revoke-key: give a key fingerprint or --all (not both)")
    try:
        asyncio.run(_keys_command(args))
    except KeyProblem as exc:
        sys.exit(f"refnet agency {command}: {exc}")


async def _keys_command(args: argparse.Namespace) -> None:
    from services.notifications import agency_keys
    from shared.db import create_pool

    agency_id = args.agency_id
    pool = await create_pool(_setting("DATABASE_URL"), "notifications", max_size=1)
    try:
        if args.agency_command == "keys":
            found = await agency_keys.list_keys(pool, agency_id)
            if not found:
                print(f"agency {agency_id} has no API keys")
                return
            print(f"{'fingerprint':<12} {'created':<26} revoked")
            for listed in found:
                created = listed.created_at.isoformat(timespec="seconds")
                gone = listed.revoked_at
                revoked_at = gone.isoformat(timespec="seconds") if gone else "-"
                print(f"{listed.fingerprint:<12} {created:<26} {revoked_at}")
        elif args.agency_command == "rotate-key":
            key, revoked = await agency_keys.rotate(pool, agency_id, keep_old=args.keep_old)
            print(key)  # alone on stdout, so KEY=$(refnet agency rotate-key ...) works
            if args.keep_old:
                note = "its older keys keep working until revoked"
            else:
                note = f"revoked {len(revoked)} older key(s): {', '.join(revoked) or 'none'}"
            new = agency_keys.fingerprint(key)
            print(f"new key {new} for {agency_id}; {note}", file=sys.stderr)
        elif args.all:
            revoked = await agency_keys.revoke_all(pool, agency_id)
            print(f"revoked {len(revoked)} key(s) of {agency_id}: {', '.join(revoked) or 'none'}")
        else:
            done = await agency_keys.revoke(pool, agency_id, args.fingerprint)
            print(f"revoked key {done} of {agency_id}")
    finally:
        await pool.close()


def _kafka_target() -> KafkaAdminTarget:
    from shared.kafka_acls import DEFAULT_ADMIN_BOOTSTRAP, DEFAULT_ADMIN_CONFIG, AdminTarget

    return AdminTarget(
        bootstrap_server=_setting("KAFKA_ADMIN_BOOTSTRAP_SERVER", DEFAULT_ADMIN_BOOTSTRAP),
        command_config=_setting("KAFKA_ADMIN_CONFIG", DEFAULT_ADMIN_CONFIG),
    )


def _kafka_access_text(agency_id: str) -> str:
    """A new Kafka password for the agency (shown once) and the commands that set it and
    the agency's ACLs on the production broker."""
    from shared import kafka_acls
    from shared.topics import OFFER_RESPONSES, agency_offers

    password = kafka_acls.new_password()
    target = _kafka_target()
    bootstrap = _setting("KAFKA_AGENCY_BOOTSTRAP_SERVERS", "") or (
        "(the broker's listener for agencies; set KAFKA_AGENCY_BOOTSTRAP_SERVERS)"
    )
    script = kafka_acls.render_grant_script(agency_id, password, target)
    service = kafka_acls.COMPOSE_SERVICE
    return f"""Kafka credentials for {agency_id} (shown once; send them to the agency securely):
  user            {kafka_acls.username(agency_id)}
  password        {password}
  mechanism       {kafka_acls.SCRAM_MECHANISM} (security.protocol SASL_SSL)
  bootstrap       {bootstrap}
  reads           {agency_offers(agency_id).name}
  consumer group  {kafka_acls.consumer_group(agency_id)} (the only group it may use)
  writes          {OFFER_RESPONSES.name}
Only Apache Kafka enforces these: the local broker (Tansu) ignores SASL and ACLs.

To create the user and its ACLs on the production broker, run this where docker-compose.yml
is. It needs the admin client config {target.command_config} in the {service} container;
running it again sets this new password.

{kafka_acls.compose_exec(script)}"""


def _kafka_revoke_text(agency_id: str) -> str:
    from shared import kafka_acls

    script = kafka_acls.render_revoke_script(agency_id, _kafka_target())
    return (
        f"To remove {agency_id}'s Kafka ACLs and user, run this where docker-compose.yml is.\n"
        "Without its ACLs the agency can do nothing, on open connections too; without its\n"
        "SCRAM credential it cannot log in again.\n\n"
        f"{kafka_acls.compose_exec(script)}"
    )


def _agency_user(args: argparse.Namespace) -> None:
    command = f"refnet agency user {args.agency_user_command}"
    try:
        from services.notifications import accounts
    except ModuleNotFoundError as exc:
        if exc.name != "services.notifications.accounts":
            raise
        sys.exit(f"{command}: this build has no agency accounts (services.notifications.accounts)")
    url = _setting("DATABASE_URL")
    try:
        if args.agency_user_command == "add":
            _validate_agency_id("user add", args.agency_id)
            from services.matching.directory.admin import agency_exists

            if not asyncio.run(agency_exists(url, args.agency_id)):
                sys.exit(
                    f"{command}: agency {args.agency_id} is not in the directory; "
                    "add it with `refnet agency add` first"
                )
            password = _new_password(args.password_stdin, command)
            asyncio.run(accounts.add_user(url, args.agency_id, args.email, args.name, password))
            print(f"agency user {args.email} ({args.agency_id}) is ready")
        else:
            asyncio.run(accounts.disable_user(url, args.email))
            print(f"agency user {args.email} is disabled")
    except accounts.AccountError as exc:
        sys.exit(f"{command}: {exc}")


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


def _add_dlq_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dlq = commands.add_parser(
        "dlq", help="dead letters: records a consumer gave up on (<topic>.dlq)"
    ).add_subparsers(dest="dlq_command", required=True)
    listing = dlq.add_parser(
        "list", help="list the dead letters of every topic, newest first (never their content)"
    )
    listing.add_argument("--topic", help="only this topic's DLQ, e.g. refnet.needs.v1")
    replay = dlq.add_parser(
        "replay",
        help="send one dead letter's original record to its topic again (once per record)",
        description="Re-produce the dead letter's original key, value and headers to the "
        "topic and partition it came from, and record who replayed it (intake's "
        "dlq_replays). A record is replayed once; a second replay is refused.",
    )
    replay.add_argument("topic", help="the DLQ (or its topic), as `refnet dlq list` prints it")
    replay.add_argument("partition", type=int)
    replay.add_argument("offset", type=int)


def _dlq(args: argparse.Namespace) -> None:
    from shared import dlq

    topic = args.topic
    if topic is not None and dlq.dlq_name(topic) not in dlq.dlq_topics():
        sys.exit(f"refnet dlq {args.dlq_command}: {topic} is not a refnet topic with a DLQ")
    if args.dlq_command == "list":
        listing = asyncio.run(_dlq_list(topic))
        for letter in listing.letters:
            print(_dlq_entry(letter))
        print(f"{len(listing.letters)} dead letter(s)")
        if not listing.complete:
            print("refnet dlq list: only part of the DLQs was read (time bound or too many "
                  "records); the newest are shown", file=sys.stderr)  # fmt: skip
        return
    try:
        done = asyncio.run(_dlq_replay(dlq.Position(topic, args.partition, args.offset)))
    except dlq.ReplayRefused as exc:
        sys.exit(f"refnet dlq replay: {exc}")
    print(f"replayed {done.original} (dead letter {done.dead_letter}) to {done.to}")


def _dlq_settings() -> BaseServiceSettings:
    from shared.settings import BaseServiceSettings

    return BaseServiceSettings(
        database_url=_setting("DATABASE_URL"),
        kafka_bootstrap_servers=_setting("KAFKA_BOOTSTRAP_SERVERS"),
    )


async def _dlq_list(topic: str | None) -> Listing:
    from shared import dlq
    from shared.db import create_pool

    settings = _dlq_settings()
    listing = await dlq.read_dead_letters(settings, None if topic is None else [topic])
    pool = await create_pool(settings.database_url, "intake", max_size=1)
    try:
        async with pool.acquire() as conn:
            return dlq.with_replays(listing, await dlq.replays(conn))
    finally:
        await pool.close()


def _dlq_entry(letter: DeadLetter) -> str:
    at = letter.at
    when = letter.dead_lettered_at.isoformat(timespec="seconds") if letter.dead_lettered_at else "-"
    lines = [f"{at.topic} {at.partition} {at.offset}  dead-lettered {when}"]
    origin = str(letter.original) if letter.original else "unknown (no dlq_* headers)"
    lines.append(f"  from     {origin}, consumer {letter.consumer or '-'}")
    lines.append(
        f"  event    {letter.ce_type or '-'}, key {letter.key or '-'}, {letter.size} bytes"
    )
    lines.append(f"  reason   {letter.reason}")
    if letter.replay is not None:
        done = letter.replay
        lines.append(
            f"  replayed by {done.replayed_by} at "
            f"{done.replayed_at.isoformat(timespec='seconds')} to {done.to}"
        )
    if letter.replay_of is not None:
        lines.append(f"  a replay by {letter.replay_of.replayed_by} that failed again")
    return "\n".join(lines)


async def _dlq_replay(at: Position) -> Replay:
    import getpass

    from shared import dlq
    from shared.clock import SystemClock
    from shared.db import create_pool

    try:
        who = getpass.getuser()
    except (OSError, KeyError):
        who = "unknown"
    settings = _dlq_settings()
    pool = await create_pool(settings.database_url, "intake", max_size=1)
    try:
        return await dlq.replay(pool, settings, at, f"cli:{who}", SystemClock().now())
    finally:
        await pool.close()


SERVICES = ("intake", "matching", "notifications")


def _add_outbox_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    outbox = commands.add_parser(
        "outbox", help="events a service's relay set aside because the broker would not take them"
    ).add_subparsers(dest="outbox_command", required=True)
    listing = outbox.add_parser("list", help="list the set-aside events, oldest first")
    listing.add_argument("--service", choices=SERVICES, help="only this service's outbox")
    resend = outbox.add_parser(
        "resend",
        help="give one set-aside event back to its service's relay",
        description="The relay publishes it at its next round (and sets it aside again if "
        "the broker still cannot take it: fix the cause first, docs/runbook.md). Refused "
        "for an agency profile, and when a newer event with the same key was written since.",
    )
    resend.add_argument("service", choices=SERVICES)
    resend.add_argument("event_id", help="as `refnet outbox list` prints it")


def _outbox(args: argparse.Namespace) -> None:
    from shared.outbox import ResendRefused

    if args.outbox_command == "list":
        services = [args.service] if args.service else list(SERVICES)
        found = asyncio.run(_outbox_list(services))
        for service, entry in found:
            print(
                f"{service} {entry.event_id}  set aside {entry.rejected_at:%Y-%m-%d %H:%M:%S%z}\n"
                f"  event    {entry.topic}, key {entry.key}, {entry.size:,} bytes\n"
                f"  reason   {entry.rejection}"
            )
        print(f"{len(found)} set-aside event(s)")
        return
    try:
        event_id = UUID(args.event_id)
    except ValueError:
        sys.exit(f"refnet outbox resend: {args.event_id!r} is not an event id")
    try:
        entry = asyncio.run(_outbox_resend(args.service, event_id))
    except ResendRefused as exc:
        sys.exit(f"refnet outbox resend: {exc}")
    print(f"{args.service}'s relay publishes {entry.event_id} to {entry.topic} at its next round")


async def _outbox_list(services: list[str]) -> list[tuple[str, SetAside]]:
    from shared import outbox
    from shared.db import create_pool

    found = []
    for service in services:
        pool = await create_pool(_setting("DATABASE_URL"), service, max_size=1)
        try:
            async with pool.acquire() as conn:
                found += [(service, entry) for entry in await outbox.set_aside(conn)]
        finally:
            await pool.close()
    return found


async def _outbox_resend(service: str, event_id: UUID) -> SetAside:
    from shared import outbox
    from shared.db import create_pool
    from shared.topics import AGENCIES

    # A stale profile would replace a newer one or bring a removed agency back; an import
    # makes the profile of every agency whose last one was set aside anew.
    instead = {AGENCIES.name: "import the directory again, which publishes the agency anew"}
    pool = await create_pool(_setting("DATABASE_URL"), service, max_size=1)
    try:
        async with pool.acquire() as conn:
            return await outbox.resend(conn, event_id, refused_topics=instead)
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
        done = "queued (matching's relay will publish them)" if result.still_queued else "published"
        print(
            f"directory revision {result.revision}: {len(result.published)} agency profile(s) "
            f"{done}, {result.unchanged} unchanged, {len(result.removed)} removed"
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


def _new_password(from_stdin: bool, command: str = "refnet users add") -> str:
    import getpass

    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        sys.exit(f"{command}: the passwords differ")
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


# Allocations minus deallocations before a young collection (CPython's default is 700). A
# request or a batch allocates and frees thousands of objects, so the default collected every
# few requests with nothing to find; at this value collections come when objects really pile up.
GC_YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Tune the cycle collector once the service is built, just before it serves.

    Everything made at start-up (modules, pydantic schemas, the app) lives as long as the
    process, yet every full collection walked it: some 110,000 objects, 30 ms each time
    under load. Freezing leaves it out of every collection. Measured on intake alone: the
    collector's share of its CPU fell from about 7% to nearly nothing, its memory unchanged.
    """
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def run_service(name: str) -> None:
    from shared.logs import configure_logging
    from shared.settings import load_settings

    if name == "intake":
        import uvicorn

        from services.intake.app import create_app
        from services.intake.settings import IntakeSettings

        settings = load_settings(IntakeSettings)
        configure_logging(name, settings.log_level)
        app = create_app(settings)
        settle_heap()
        uvicorn.run(
            app,
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
        n_app = create_notifications(n_settings)
        settle_heap()
        uvicorn.run(
            n_app,
            host=n_settings.http_host,
            port=n_settings.http_port,
            log_config=None,
        )
    else:
        import mode.loop

        # uvloop, as uvicorn uses for the other two: round trips to Postgres and the broker
        # are most of what matching does at low load. Set before the app makes its loop.
        mode.loop.use("uvloop")
        from faust import Worker

        from services.matching.app import create_app as create_matching
        from services.matching.settings import MatchingSettings

        m_settings = load_settings(MatchingSettings)
        configure_logging(name, m_settings.log_level)
        app = create_matching(m_settings)
        # override_logging=False: keep refnet's JSON log lines (Faust would install its own),
        # and no terminal spinner, whose escape codes would land in the log.
        worker = Worker(app, loglevel=m_settings.log_level, quiet=True, override_logging=False)
        worker.spinner = None
        settle_heap()
        worker.execute_from_commandline()


def run_up(run_dir: Path) -> None:
    from services.local_stack import (
        DEMO_AGENCY_ID,
        DEMO_AGENCY_USER_EMAIL,
        DEMO_WORKER_EMAIL,
        LocalStack,
        Ports,
    )
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
  logs                  {run_dir}/logs/  (JSON lines)
  health and metrics    /readyz and /metrics on each service; matching's on {stack.matching_url}

  demo intake worker    {DEMO_WORKER_EMAIL}
  password              {stack.secrets["DEMO_WORKER_PASSWORD"]}

  agency web inbox      {stack.agency_api_url}/inbox
  demo agency user      {DEMO_AGENCY_USER_EMAIL} ({DEMO_AGENCY_ID})
  password              {stack.secrets["DEMO_AGENCY_USER_PASSWORD"]}

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
    from shared.kafka import compacted_names, ensure_topics, kafka_security, topics_with_dlqs
    from shared.settings import KafkaClientSettings, load_settings
    from shared.topics import PLATFORM_TOPICS

    # KAFKA_SECURITY_PROTOCOL and KAFKA_SASL_* from the environment: on Apache Kafka with
    # ACLs only a user allowed to create topics (the admin) can run this.
    security = kafka_security(load_settings(KafkaClientSettings))
    created = asyncio.run(
        ensure_topics(
            _setting("KAFKA_BOOTSTRAP_SERVERS"),
            topics_with_dlqs(PLATFORM_TOPICS),
            int(_setting("KAFKA_PARTITIONS", "3")),
            int(_setting("KAFKA_REPLICATION_FACTOR", "1")),
            compacted=compacted_names(PLATFORM_TOPICS),
            security=security,
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
