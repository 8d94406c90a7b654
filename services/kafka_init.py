"""What Apache Kafka must hold before refnet's services start, derived from the code, and the
script that sets it up: ``deploy/kafka/init.sh``, run by docker-compose.yml's kafka-init job
(and usable against any Apache Kafka cluster with an admin login).

- every platform topic (``shared/topics.py``) and its DLQ, with its partition count and its
  configuration (retention below), and Faust's leader-election topic;
- one SCRAM-SHA-512 user per service, its password taken from the environment;
- exactly the ACLs each service needs: what it reads and writes (who sends and receives each
  topic: ``shared/contract.py`` ``ROLES``), the DLQ of every topic it reads (a consumer that
  gives up on a record writes it to ``<topic>.dlq``), its consumer group, and for matching
  the agencies' offers topics (``refnet.agency.`` prefix: it creates and writes them) and
  Faust's own topic.

Agencies' users and ACLs are not here: each agency's are made when it is onboarded
(``refnet agency kafka-access AGENCY_ID``, ``shared/kafka_acls.py``). ``refnet
kafka-init-script`` prints the script; tests/unit/test_compose.py fails while the committed
copy and this module disagree.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from shared.contract import AGENCY_OFFERS_TEMPLATE, CONTRACT_TOPICS, ROLES
from shared.kafka_acls import SCRAM_MECHANISM, Grant, Operation, PatternType, ResourceType
from shared.topics import PLATFORM_TOPICS, TopicSpec

SERVICES = ("intake", "matching", "notifications")
# The super user: the kafka container bootstraps its credential when it formats its storage
# (deploy/kafka/start.sh); the admin client config in that container logs in as it.
ADMIN_USER = "admin"
USER_PREFIX = "refnet-"
# Which service's user sends for each party of the contract (shared/contract.py PARTIES):
# the directory's owner publishes through matching's outbox (`refnet directory import` runs
# in the matching container); agencies have users of their own (shared/kafka_acls.py).
PARTY_SERVICE = {
    "intake": "intake",
    "matching": "matching",
    "notifications": "notifications",
    "directory": "matching",
}
# The operator dashboard and `refnet dlq` (shared/dlq.py) run in intake: they list every
# platform DLQ and replay a record to its original topic. That makes intake able to write
# every platform topic; drop it here (and regenerate) to keep replays to the admin.
DLQ_OPERATOR = "intake"

# --- retention ----------------------------------------------------------------------------
# Kafka is not refnet's record: every state lives in Postgres (each service's tables, its
# outbox of what it published and its inbox of what it consumed), so a topic only has to hold
# a record until every consumer has read it. Records carry no identifier of the person
# (person_ref and coarse facts), but they are still Part 2-protected facts about someone
# seeking recovery support, so they are not kept longer than that: minimum necessary.
DAY_MS = 24 * 60 * 60 * 1000
# Events: a week, enough to ride out a consumer's outage (an offer's longest deadline is
# 72 hours) and short enough that revoked consents and old needs age out of the broker.
EVENT_RETENTION_MS = 7 * DAY_MS
# Dead letters: a month, so an operator has time to look at one and replay it.
DLQ_RETENTION_MS = 30 * DAY_MS
# Retention deletes whole segments only, and the active one never; a segment a day makes
# the bound real (a record lives at most retention + one day). Also the broker default.
SEGMENT_MS = DAY_MS
# The compacted directory keeps every agency's latest profile for good (no person data);
# a tombstone stays this long, so a reader that was away still sees the agency go.
TOMBSTONE_RETENTION_MS = 7 * DAY_MS


@dataclass(frozen=True)
class TopicPlan:
    """A topic as the init script creates it. ``partitions`` None: KAFKA_PARTITIONS."""

    name: str
    config: tuple[tuple[str, str], ...]
    partitions: int | None = None


def topic_config(spec: TopicSpec) -> dict[str, str]:
    if spec.compacted:
        return {
            "cleanup.policy": "compact",
            "delete.retention.ms": str(TOMBSTONE_RETENTION_MS),
            "segment.ms": str(SEGMENT_MS),
        }
    return {
        "cleanup.policy": "delete",
        "retention.ms": str(EVENT_RETENTION_MS),
        "segment.ms": str(SEGMENT_MS),
    }


def dlq_config() -> dict[str, str]:
    return {
        "cleanup.policy": "delete",
        "retention.ms": str(DLQ_RETENTION_MS),
        "segment.ms": str(SEGMENT_MS),
    }


def faust_leader_topic() -> str:
    """Faust's leader-election topic (one partition), named after matching's app id."""
    from services.matching.app import APP_ID

    return f"{APP_ID}-__assignor-__leader"


def topic_plan() -> tuple[TopicPlan, ...]:
    """Every topic the init script creates, in order. Agencies' offers topics are created by
    matching when an agency joins; the broker's defaults (deploy/kafka/start.sh) give them
    the event retention."""
    plans: list[TopicPlan] = []
    for spec in PLATFORM_TOPICS:
        plans.append(TopicPlan(spec.name, tuple(topic_config(spec).items())))
        plans.append(TopicPlan(spec.dlq, tuple(dlq_config().items())))
    plans.append(TopicPlan(faust_leader_topic(), (), partitions=1))
    return tuple(plans)


# --- users and ACLs -----------------------------------------------------------------------


def username(service: str) -> str:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}")
    return USER_PREFIX + service


def principal(service: str) -> str:
    return f"User:{username(service)}"


def password_variable(service: str) -> str:
    """The environment variable (in .env) holding the service's Kafka password."""
    return f"KAFKA_{username(service).removeprefix(USER_PREFIX).upper()}_PASSWORD"


def consumer_groups(service: str) -> tuple[str, ...]:
    """The consumer groups the service's consumers join."""
    if service == "intake":
        from services.intake.handlers import STATUS_CONSUMER

        return (STATUS_CONSUMER,)
    if service == "notifications":
        from services.notifications.handlers import CONSUMER

        return (CONSUMER,)
    from services.matching.app import APP_ID

    return (APP_ID,)  # Faust: one group, the app id, for every agent


def reads(service: str) -> tuple[TopicSpec, ...]:
    return tuple(spec for spec in PLATFORM_TOPICS if service in ROLES[spec.name].receivers)


def writes(service: str) -> tuple[TopicSpec, ...]:
    return tuple(
        spec
        for spec in CONTRACT_TOPICS
        if any(PARTY_SERVICE.get(send.party) == service for send in ROLES[spec.name].senders)
    )


def agency_topic_prefix() -> str:
    """``refnet.agency.``: what every agency's offers topic name starts with (and no other
    topic: the directory is refnet.agencies.v1)."""
    prefix = AGENCY_OFFERS_TEMPLATE.name.split("{", 1)[0]
    assert prefix.endswith(".") and not any(
        spec.name.startswith(prefix) for spec in PLATFORM_TOPICS
    ), prefix
    return prefix


def service_grants(service: str) -> tuple[Grant, ...]:
    """Every ACL the service's user gets, all ALLOW; nothing else is allowed to it."""
    return tuple(dict.fromkeys((*_own_grants(service), *dlq_operator_grants(service))))


def dlq_operator_grants(service: str) -> tuple[Grant, ...]:
    """What the DLQ tools need, for the service they run in (DLQ_OPERATOR): read every
    platform DLQ, write every platform topic (a replay goes back to the original topic)."""
    if service != DLQ_OPERATOR:
        return ()
    who, topic = principal(service), ResourceType.TOPIC
    read, write, describe = Operation.READ, Operation.WRITE, Operation.DESCRIBE
    grants: list[Grant] = []
    for spec in PLATFORM_TOPICS:
        grants += [Grant(who, read, topic, spec.dlq), Grant(who, describe, topic, spec.dlq)]
        grants += [Grant(who, write, topic, spec.name), Grant(who, describe, topic, spec.name)]
    return tuple(grants)


def _own_grants(service: str) -> tuple[Grant, ...]:
    who = principal(service)
    topic, group = ResourceType.TOPIC, ResourceType.GROUP
    read, write, describe = Operation.READ, Operation.WRITE, Operation.DESCRIBE
    grants: list[Grant] = []
    for spec in reads(service):
        grants += [Grant(who, read, topic, spec.name), Grant(who, describe, topic, spec.name)]
        grants += [Grant(who, write, topic, spec.dlq), Grant(who, describe, topic, spec.dlq)]
    for spec in writes(service):
        if spec is AGENCY_OFFERS_TEMPLATE:
            prefix, prefixed = agency_topic_prefix(), PatternType.PREFIXED
            grants += [
                Grant(who, op, topic, prefix, prefixed)
                for op in (Operation.CREATE, write, describe)
            ]
        else:
            grants += [Grant(who, write, topic, spec.name), Grant(who, describe, topic, spec.name)]
    grants += [Grant(who, read, group, name) for name in consumer_groups(service)]
    if service == "matching":
        # Faust checks for its leader topic at start and creates it when it does not see it.
        leader = faust_leader_topic()
        grants += [Grant(who, op, topic, leader) for op in (read, describe, Operation.CREATE)]
    return tuple(dict.fromkeys(grants))


# --- the script ---------------------------------------------------------------------------

_HEADER = """\
#!/usr/bin/env bash
# GENERATED by `refnet kafka-init-script` (services/kafka_init.py) from shared/topics.py,
# shared/contract.py and the services' consumer groups. Do not edit: change the code, then
#   .venv/bin/refnet kafka-init-script > deploy/kafka/init.sh
# (tests/unit/test_compose.py fails while this file and the code disagree).
#
# Sets up Apache Kafka for refnet, logged in as a super user ({admin}): a SCRAM user per
# service, every refnet topic with its partitions and configuration, and exactly the ACLs each
# service needs. docker-compose.yml's kafka-init job runs it once the broker is healthy.
# Running it again changes nothing, except that it sets the service passwords from the
# environment again (how to rotate them) and puts topic configurations back to these.
# Partition counts are never changed: a topic with another count than KAFKA_PARTITIONS stops
# the script. Agencies' users and ACLs are made per agency: `refnet agency kafka-access`.
#
# Environment: the passwords, KAFKA_ADMIN_PASSWORD and one per service user:
#   {password_variables};
# KAFKA_PARTITIONS (default 3), KAFKA_REPLICATION_FACTOR (default 1),
# KAFKA_INIT_BOOTSTRAP_SERVER (default kafka:9092), KAFKA_INIT_SECURITY_PROTOCOL
# (default SASL_PLAINTEXT; SASL_SSL with KAFKA_INIT_CA_FILE, a PEM file, for a private CA),
# KAFKA_ADMIN_USER (default {admin}), KAFKA_TOOLS_DIR (default /opt/kafka/bin).
set -euo pipefail

bootstrap="${{KAFKA_INIT_BOOTSTRAP_SERVER:-kafka:9092}}"
protocol="${{KAFKA_INIT_SECURITY_PROTOCOL:-SASL_PLAINTEXT}}"
admin="${{KAFKA_ADMIN_USER:-{admin}}}"
bin="${{KAFKA_TOOLS_DIR:-/opt/kafka/bin}}"
partitions="${{KAFKA_PARTITIONS:-3}}"
replication="${{KAFKA_REPLICATION_FACTOR:-1}}"

fail() {{
  echo "kafka-init: $*" >&2
  exit 1
}}

# What kafka-configs.sh and a JAAS line can carry (shared/kafka_acls.py check_password), and
# never the placeholder of deploy/.env.example.
check_password() {{
  local name=$1 value=${{!1:-}}
  [ -n "$value" ] || fail "set $name (in .env)"
  [ "${{#value}}" -ge 16 ] || fail "$name needs at least 16 characters"
  case "$value" in
    *change-me*) fail "$name is still the placeholder: generate one (docs/runbook.md)" ;;
    *[][,=\\"\\\\[:space:][:cntrl:]]*)
      fail "$name may not contain commas, brackets, '=', quotes, backslashes or whitespace" ;;
  esac
}}

"""

_FUNCTIONS = """\
admin_config="$(mktemp)"
trap 'rm -f "$admin_config"' EXIT
login="org.apache.kafka.common.security.scram.ScramLoginModule required"
cat >"$admin_config" <<EOF
security.protocol=$protocol
sasl.mechanism={mechanism}
sasl.jaas.config=$login username="$admin" password="$KAFKA_ADMIN_PASSWORD";
EOF
if [ -n "${{KAFKA_INIT_CA_FILE:-}}" ]; then
  {{
    echo "ssl.truststore.type=PEM"
    echo "ssl.truststore.location=$KAFKA_INIT_CA_FILE"
  }} >>"$admin_config"
fi

kafka() {{
  local tool=$1
  shift
  "$bin/$tool" --bootstrap-server "$bootstrap" --command-config "$admin_config" "$@"
}}

# user NAME PASSWORD_VARIABLE: create the SCRAM user, or set its password again.
user() {{
  kafka kafka-configs.sh --alter --entity-type users --entity-name "$1" \\
    --add-config "{mechanism}=[password=${{!2}}]" >/dev/null
  echo "kafka-init: user $1"
}}

existing="$(kafka kafka-topics.sh --list)"

# topic NAME PARTITIONS [KEY=VALUE,...]: create it, or put its configuration back.
topic() {{
  local name=$1 count=$2 config=${{3:-}} pair
  local args=(--topic "$name")
  if grep -qxF -- "$name" <<<"$existing"; then
    if [ -n "$config" ]; then
      kafka kafka-configs.sh --alter --entity-type topics --entity-name "$name" \\
        --add-config "$config" >/dev/null
    fi
    echo "kafka-init: topic $name exists${{config:+; config $config}}"
  else
    args+=(--create --partitions "$count" --replication-factor "$replication")
    if [ -n "$config" ]; then
      IFS=, read -ra pairs <<<"$config"
      for pair in "${{pairs[@]}}"; do args+=(--config "$pair"); done
    fi
    kafka kafka-topics.sh "${{args[@]}}" >/dev/null
    echo "kafka-init: topic $name created ($count partitions${{config:+; $config}})"
  fi
  expected["$name"]=$count
}}
declare -A expected

# acl PRINCIPAL RESOURCE_TYPE PATTERN_TYPE OPERATION[,OPERATION...] NAME...: allow each
# operation on each named resource (adding an ACL that exists is a no-op).
acl() {{
  local who=$1 type=$2 pattern=$3 ops=$4 op name
  shift 4
  local args=(--add --allow-principal "$who" --resource-pattern-type "$pattern")
  IFS=, read -ra list <<<"$ops"
  for op in "${{list[@]}}"; do args+=(--operation "$op"); done
  for name in "$@"; do args+=("--$type" "$name"); done
  kafka kafka-acls.sh "${{args[@]}}" >/dev/null
  echo "kafka-init: $who may $ops $type $* ($pattern)"
}}

# Every topic's partition count, from one describe: PartitionCount on its summary line.
check_partitions() {{
  local name count
  while read -r name count; do
    if [ -n "${{expected[$name]:-}}" ] && [ "$count" != "${{expected[$name]}}" ]; then
      fail "$name has $count partitions, not ${{expected[$name]}}: set KAFKA_PARTITIONS to the" \\
        "count the topics were created with (partitions are never changed here; see" \\
        "docs/runbook.md before adding any: needs, offer responses and referral events" \\
        "must stay co-partitioned)"
    fi
  done < <(kafka kafka-topics.sh --describe | awk '
    /PartitionCount:/ {{
      for (i = 1; i <= NF; i++) {{
        if ($i == "Topic:") name = $(i + 1)
        if ($i == "PartitionCount:") count = $(i + 1)
      }}
      print name, count
    }}')
}}

"""


def _grouped(grants: Iterable[Grant]) -> list[tuple[str, str, str, str, list[str]]]:
    """Grants as acl lines: per principal, resource type and pattern type, the resources
    that get the same operations, so each kafka-acls.sh run adds several."""
    by_resource: dict[tuple[str, str, str, str], list[str]] = {}
    for grant in grants:
        key = (
            grant.principal,
            grant.resource_type.value,
            grant.pattern_type.value,
            grant.resource_name,
        )
        by_resource.setdefault(key, []).append(grant.operation.value)
    order = [op.value for op in Operation]
    lines: dict[tuple[str, str, str, str], list[str]] = {}
    for (who, rtype, pattern, name), ops in by_resource.items():
        joined = ",".join(sorted(set(ops), key=order.index))
        lines.setdefault((who, rtype, pattern, joined), []).append(name)
    return [
        (who, rtype, pattern, ops, names) for (who, rtype, pattern, ops), names in lines.items()
    ]


def _q(*words: str) -> str:
    return " ".join(shlex.quote(word) for word in words)


def render_init_script() -> str:
    variables = [password_variable(service) for service in SERVICES]
    out = [
        _HEADER.format(admin=ADMIN_USER, password_variables=", ".join(variables)),
        "check_password KAFKA_ADMIN_PASSWORD\n",
        *(f"check_password {name}\n" for name in variables),
        "\n",
        _FUNCTIONS.format(admin=ADMIN_USER, mechanism=SCRAM_MECHANISM),
        "# --- the services' users ---\n",
        *(f"user {_q(username(s), password_variable(s))}\n" for s in SERVICES),
        "\n# --- topics: name, partitions, configuration ---\n",
    ]
    for plan in topic_plan():
        count = str(plan.partitions) if plan.partitions is not None else '"$partitions"'
        config = ",".join(f"{key}={value}" for key, value in plan.config)
        out.append(f"topic {shlex.quote(plan.name)} {count}{' ' + _q(config) if config else ''}\n")
    out.append("check_partitions\n")
    for service in SERVICES:
        out.append(f"\n# --- {principal(service)}: the {service} service ---\n")
        own = _own_grants(service)
        for who, rtype, pattern, ops, names in _grouped(own):
            out.append(f"acl {_q(who, rtype, pattern, ops, *names)}\n")
        extra = [grant for grant in dlq_operator_grants(service) if grant not in own]
        if extra:
            out.append(
                "# The operator dashboard and `refnet dlq` run here: they read every DLQ and\n"
                "# replay to the original topic (services/kafka_init.py DLQ_OPERATOR).\n"
            )
            for who, rtype, pattern, ops, names in _grouped(extra):
                out.append(f"acl {_q(who, rtype, pattern, ops, *names)}\n")
    out.append('\necho "kafka-init: done"\n')
    return "".join(out)
