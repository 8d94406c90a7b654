"""What a partner agency may do on a production Apache Kafka cluster, as data, and the shell
commands that set it up.

Each agency authenticates with SASL/SCRAM-SHA-512 as the user ``agency-<agency_id>`` and
gets exactly these grants, every one on a literal resource name (no prefix, no wildcard):

- Read and Describe on its own topic ``refnet.agency.<agency_id>.offers``;
- Read on its own consumer group ``agency-<agency_id>``;
- Write and Describe on ``refnet.offer-responses.v1``, to answer its offers.

aiokafka has no ACL or SCRAM admin API, so this module renders the commands for the Kafka
CLI tools (``kafka-configs.sh`` and ``kafka-acls.sh`` in the official apache/kafka image) as
a bash script to run inside the broker container. The embedded broker used locally and in
tests (Tansu) enforces neither SASL nor ACLs; see docs/agencies.md.
"""

from __future__ import annotations

import re
import secrets
import shlex
from dataclasses import dataclass
from enum import StrEnum

from shared.topics import OFFER_RESPONSES, agency_offers

SCRAM_MECHANISM = "SCRAM-SHA-512"
USER_PREFIX = "agency-"
# Where the official apache/kafka image keeps the CLI tools (they are not on PATH).
DEFAULT_TOOLS_DIR = "/opt/kafka/bin"
# The admin client's properties (SASL login of a super user) inside the broker container.
DEFAULT_ADMIN_CONFIG = "/etc/kafka/admin.properties"
# The listener the tools reach from inside the broker container.
DEFAULT_ADMIN_BOOTSTRAP = "localhost:9092"
# The broker's service name in docker-compose.yml.
COMPOSE_SERVICE = "kafka"
HEREDOC_END = "REFNET_KAFKA_ACCESS"

# kafka-configs.sh parses "SCRAM-SHA-512=[password=...]" itself: a comma, bracket or equals
# sign in the password would split it; a double quote or backslash would break the client's
# JAAS line; whitespace and control characters are trouble in any terminal. Generated
# passwords contain none of them. Shell quoting is handled separately (shlex).
_UNSAFE_PASSWORD = re.compile(r'[,\[\]="\\\s\x00-\x1f\x7f]')
MIN_PASSWORD_LENGTH = 16


class ResourceType(StrEnum):
    """A kafka-acls.sh resource option, without its dashes."""

    TOPIC = "topic"
    GROUP = "group"


class Operation(StrEnum):
    """kafka-acls.sh --operation values refnet grants."""

    READ = "Read"
    WRITE = "Write"
    DESCRIBE = "Describe"
    # Only matching's service user: it creates agencies' offers topics (services/kafka_init.py).
    CREATE = "Create"


class PatternType(StrEnum):
    LITERAL = "literal"
    # Only for matching's service user, on refnet.agency.: agencies never get a prefix.
    PREFIXED = "prefixed"


@dataclass(frozen=True)
class Grant:
    """One ALLOW ACL: ``principal`` may ``operation`` on the named resource."""

    principal: str
    operation: Operation
    resource_type: ResourceType
    resource_name: str
    pattern_type: PatternType = PatternType.LITERAL

    def add_args(self) -> list[str]:
        """kafka-acls.sh arguments that add this grant (after the connection options)."""
        return [
            "--add",
            "--allow-principal",
            self.principal,
            "--operation",
            self.operation.value,
            f"--{self.resource_type.value}",
            self.resource_name,
            "--resource-pattern-type",
            self.pattern_type.value,
        ]

    def remove_args(self) -> list[str]:
        """kafka-acls.sh arguments that remove this grant, without asking."""
        return ["--remove", "--force", *self.add_args()[1:]]


@dataclass(frozen=True)
class AdminTarget:
    """How the Kafka CLI tools reach the cluster, as seen from inside the broker container."""

    bootstrap_server: str = DEFAULT_ADMIN_BOOTSTRAP
    command_config: str = DEFAULT_ADMIN_CONFIG
    tools_dir: str = DEFAULT_TOOLS_DIR

    def tool(self, name: str) -> str:
        return f"{self.tools_dir.rstrip('/')}/{name}"

    def connection_args(self) -> list[str]:
        return [
            "--bootstrap-server",
            self.bootstrap_server,
            "--command-config",
            self.command_config,
        ]


def username(agency_id: str) -> str:
    """The agency's SASL user name (and the name in its principal)."""
    agency_offers(agency_id)  # refuses an id that is not a valid agency id
    return USER_PREFIX + agency_id


def principal(agency_id: str) -> str:
    return f"User:{username(agency_id)}"


def consumer_group(agency_id: str) -> str:
    """The only consumer group the agency may use."""
    return USER_PREFIX + agency_id


def agency_grants(agency_id: str) -> tuple[Grant, ...]:
    """Every ACL an agency gets; nothing else is allowed to it."""
    who = principal(agency_id)
    offers = agency_offers(agency_id).name
    return (
        Grant(who, Operation.READ, ResourceType.TOPIC, offers),
        Grant(who, Operation.DESCRIBE, ResourceType.TOPIC, offers),
        Grant(who, Operation.READ, ResourceType.GROUP, consumer_group(agency_id)),
        Grant(who, Operation.WRITE, ResourceType.TOPIC, OFFER_RESPONSES.name),
        Grant(who, Operation.DESCRIBE, ResourceType.TOPIC, OFFER_RESPONSES.name),
    )


def new_password() -> str:
    """A fresh SCRAM password: 256 random bits, URL-safe base64 (no character needs care)."""
    return secrets.token_urlsafe(32)


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a Kafka password needs at least {MIN_PASSWORD_LENGTH} characters")
    if _UNSAFE_PASSWORD.search(password):
        raise ValueError(
            "a Kafka password may not contain commas, brackets, '=', double quotes, "
            "backslashes, whitespace or control characters"
        )


def _line(*words: str) -> str:
    return " ".join(shlex.quote(word) for word in words)


def render_grant_script(agency_id: str, password: str, target: AdminTarget | None = None) -> str:
    """A bash script that creates (or resets) the agency's SCRAM credential and adds its
    grants. Safe to run again: re-adding an ACL is a no-op, and the credential is replaced,
    so running it with a new password changes the agency's password."""
    check_password(password)
    target = target or AdminTarget()
    lines = [
        f"# refnet: Kafka access for agency {agency_id} ({principal(agency_id)})",
        "set -euo pipefail",
        _line(
            target.tool("kafka-configs.sh"),
            *target.connection_args(),
            "--alter",
            "--add-config",
            f"{SCRAM_MECHANISM}=[password={password}]",
            "--entity-type",
            "users",
            "--entity-name",
            username(agency_id),
        ),
    ]
    lines += [
        _line(target.tool("kafka-acls.sh"), *target.connection_args(), *grant.add_args())
        for grant in agency_grants(agency_id)
    ]
    return "\n".join(lines) + "\n"


def render_revoke_script(agency_id: str, target: AdminTarget | None = None) -> str:
    """A bash script that removes the agency's grants and deletes its SCRAM credential."""
    target = target or AdminTarget()
    lines = [
        f"# refnet: remove Kafka access of agency {agency_id} ({principal(agency_id)})",
        "set -euo pipefail",
    ]
    lines += [
        _line(target.tool("kafka-acls.sh"), *target.connection_args(), *grant.remove_args())
        for grant in agency_grants(agency_id)
    ]
    lines.append(
        _line(
            target.tool("kafka-configs.sh"),
            *target.connection_args(),
            "--alter",
            "--delete-config",
            SCRAM_MECHANISM,
            "--entity-type",
            "users",
            "--entity-name",
            username(agency_id),
        )
    )
    return "\n".join(lines) + "\n"


def compose_exec(script: str, service: str = COMPOSE_SERVICE) -> str:
    """``script`` wrapped to paste into a shell in the deployment directory: a quoted here
    document, so nothing in it is expanded before bash in the container reads it."""
    if any(line == HEREDOC_END for line in script.splitlines()):
        raise ValueError(f"the script may not contain a line {HEREDOC_END!r}")
    return (
        f"docker compose exec -T {shlex.quote(service)} bash <<'{HEREDOC_END}'\n"
        f"{script}{HEREDOC_END}\n"
    )


def client_properties(agency_id: str, password: str, bootstrap_servers: str) -> str:
    """What the agency puts in its Kafka client's configuration (Java client property
    names; see docs/agencies.md for aiokafka)."""
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{username(agency_id)}" password="{password}";'
    )
    return "\n".join(
        [
            f"bootstrap.servers={bootstrap_servers}",
            "security.protocol=SASL_SSL",
            f"sasl.mechanism={SCRAM_MECHANISM}",
            f"sasl.jaas.config={jaas}",
            f"group.id={consumer_group(agency_id)}",
        ]
    )
