"""What an agency may do on Apache Kafka: exactly its own offers topic and consumer group,
and writing answers; and the commands that grant it, run through a real bash."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from shared import kafka_acls
from shared.kafka_acls import AdminTarget, Grant, Operation, PatternType, ResourceType
from shared.topics import OFFER_RESPONSES, PLATFORM_TOPICS, agency_offers

AGENCY = "ag-042"
# Everything a shell or kafka-configs.sh might trip on, short of what it refuses.
AWKWARD_PASSWORD = "it's-$(touch${IFS}pwned)-`id`;$HOME|&<>*?!~#%"


def test_an_agency_gets_exactly_these_grants() -> None:
    who = "User:agency-ag-042"
    offers = agency_offers(AGENCY).name

    assert set(kafka_acls.agency_grants(AGENCY)) == {
        Grant(who, Operation.READ, ResourceType.TOPIC, offers),
        Grant(who, Operation.DESCRIBE, ResourceType.TOPIC, offers),
        Grant(who, Operation.READ, ResourceType.GROUP, "agency-ag-042"),
        Grant(who, Operation.WRITE, ResourceType.TOPIC, OFFER_RESPONSES.name),
        Grant(who, Operation.DESCRIBE, ResourceType.TOPIC, OFFER_RESPONSES.name),
    }
    assert len(kafka_acls.agency_grants(AGENCY)) == 5


def test_grants_name_single_resources_never_patterns() -> None:
    grants = kafka_acls.agency_grants(AGENCY)
    others = {spec.name for spec in PLATFORM_TOPICS} - {OFFER_RESPONSES.name}
    other_agency = agency_offers("ag-043").name

    assert {g.pattern_type for g in grants} == {PatternType.LITERAL}
    assert all("*" not in g.resource_name for g in grants)
    assert all(g.principal == kafka_acls.principal(AGENCY) for g in grants)
    topics = {g.resource_name for g in grants if g.resource_type == ResourceType.TOPIC}
    assert topics == {agency_offers(AGENCY).name, OFFER_RESPONSES.name}
    assert not topics & (others | {other_agency})
    writes = {g.resource_name for g in grants if g.operation == Operation.WRITE}
    assert writes == {OFFER_RESPONSES.name}  # never its own offers topic, nor any other
    groups = [g for g in grants if g.resource_type == ResourceType.GROUP]
    assert [(g.resource_name, g.operation) for g in groups] == [("agency-ag-042", Operation.READ)]


def test_an_invalid_agency_id_gets_no_grants() -> None:
    for bad in ("Ag-1", "ag_1", "*", "ag-1.offers", ""):
        with pytest.raises(ValueError):
            kafka_acls.agency_grants(bad)


def _commands(script: str) -> list[list[str]]:
    return [
        shlex.split(line)
        for line in script.splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith("set ")
    ]


def test_the_script_has_one_kafka_acls_line_per_grant() -> None:
    target = AdminTarget("broker:9093", "/etc/kafka/admin.properties", "/opt/kafka/bin")
    commands = _commands(kafka_acls.render_grant_script(AGENCY, "p" * 20, target))

    configs, *acls = commands
    assert configs[0] == "/opt/kafka/bin/kafka-configs.sh"
    assert configs[1:] == [
        "--bootstrap-server", "broker:9093",
        "--command-config", "/etc/kafka/admin.properties",
        "--alter", "--add-config", f"SCRAM-SHA-512=[password={'p' * 20}]",
        "--entity-type", "users", "--entity-name", "agency-ag-042",
    ]  # fmt: skip
    assert len(acls) == len(kafka_acls.agency_grants(AGENCY))
    for argv, grant in zip(acls, kafka_acls.agency_grants(AGENCY), strict=True):
        assert argv == [
            "/opt/kafka/bin/kafka-acls.sh",
            "--bootstrap-server", "broker:9093",
            "--command-config", "/etc/kafka/admin.properties",
            "--add",
            "--allow-principal", "User:agency-ag-042",
            "--operation", grant.operation.value,
            f"--{grant.resource_type.value}", grant.resource_name,
            "--resource-pattern-type", "literal",
        ]  # fmt: skip
    operations = [(argv[argv.index("--operation") + 1], argv[-4], argv[-3]) for argv in acls]
    assert operations == [
        ("Read", "--topic", "refnet.agency.ag-042.offers"),
        ("Describe", "--topic", "refnet.agency.ag-042.offers"),
        ("Read", "--group", "agency-ag-042"),
        ("Write", "--topic", "refnet.offer-responses.v1"),
        ("Describe", "--topic", "refnet.offer-responses.v1"),
    ]


def test_the_password_is_quoted_for_the_shell() -> None:
    script = kafka_acls.render_grant_script(AGENCY, AWKWARD_PASSWORD)
    configs = _commands(script)[0]

    assert f"SCRAM-SHA-512=[password={AWKWARD_PASSWORD}]" in configs
    line = next(line for line in script.splitlines() if "kafka-configs.sh" in line)
    assert shlex.quote(f"SCRAM-SHA-512=[password={AWKWARD_PASSWORD}]") in line


def _fake_tools(directory: Path) -> Path:
    """kafka-configs.sh and kafka-acls.sh that record their arguments, one JSON per call."""
    log = directory / "calls.jsonl"
    for tool in ("kafka-configs.sh", "kafka-acls.sh"):
        script = directory / tool
        script.write_text(
            "#!/usr/bin/env python3\n"
            "import json, os, sys\n"
            f"with open({str(log)!r}, 'a') as f:\n"
            "    f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + '\\n')\n"
        )
        script.chmod(0o755)
    return log


def test_bash_runs_the_script_with_exactly_the_rendered_arguments(tmp_path: Path) -> None:
    log = _fake_tools(tmp_path)
    target = AdminTarget("localhost:9092", "/etc/kafka/admin.properties", str(tmp_path))
    script = kafka_acls.render_grant_script(AGENCY, AWKWARD_PASSWORD, target)

    # The same here document an operator pastes, minus docker: bash reads the script on stdin.
    block = kafka_acls.compose_exec(script)
    heredoc = block.split("\n", 1)[1].rsplit(kafka_acls.HEREDOC_END, 1)[0]
    subprocess.run(["bash"], input=heredoc, text=True, check=True, cwd=tmp_path)

    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls[0][0] == "kafka-configs.sh"
    assert f"SCRAM-SHA-512=[password={AWKWARD_PASSWORD}]" in calls[0]
    assert [c[0] for c in calls[1:]] == ["kafka-acls.sh"] * 5
    assert calls[1:] == [["kafka-acls.sh", *argv[1:]] for argv in _commands(script)[1:]]
    assert not (tmp_path / "pwned").exists()


def test_the_paste_block_targets_the_kafka_service_with_a_quoted_heredoc() -> None:
    block = kafka_acls.compose_exec(kafka_acls.render_grant_script(AGENCY, "q" * 20))

    first, *_, last = block.rstrip("\n").splitlines()
    assert first == f"docker compose exec -T kafka bash <<'{kafka_acls.HEREDOC_END}'"
    assert last == kafka_acls.HEREDOC_END


@pytest.mark.parametrize(
    "password",
    ["short", "a" * 20 + ",x", "a" * 20 + "]", "a" * 20 + "=", "a" * 20 + " b", "a" * 20 + '"'],
)
def test_a_password_kafka_configs_would_misread_is_refused(password: str) -> None:
    with pytest.raises(ValueError):
        kafka_acls.render_grant_script(AGENCY, password)


def test_generated_passwords_are_long_fresh_and_need_no_care() -> None:
    passwords = {kafka_acls.new_password() for _ in range(20)}

    assert len(passwords) == 20
    for password in passwords:
        kafka_acls.check_password(password)
        assert len(password) >= 40
        assert shlex.quote(password) == password


def test_the_revoke_script_removes_every_grant_and_the_credential() -> None:
    commands = _commands(kafka_acls.render_revoke_script(AGENCY))

    *acls, configs = commands
    assert len(acls) == len(kafka_acls.agency_grants(AGENCY))
    for argv, grant in zip(acls, kafka_acls.agency_grants(AGENCY), strict=True):
        assert argv[0] == "/opt/kafka/bin/kafka-acls.sh"
        assert argv[5:] == grant.remove_args()
        assert "--remove" in argv and "--force" in argv and "--add" not in argv
    assert configs[-6:] == [
        "--delete-config", "SCRAM-SHA-512", "--entity-type", "users",
        "--entity-name", "agency-ag-042",
    ]  # fmt: skip


def test_the_acl_table_in_the_docs_is_the_grants() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "agencies.md").read_text()
    table = docs.split("| Resource | Name | Operations | Why |", 1)[1].split("\n\n", 1)[0]
    documented = set()
    for row in table.strip().splitlines()[1:]:
        resource, name, operations, _ = (cell.strip() for cell in row.strip("|").split("|"))
        for operation in operations.split(", "):
            named = name.strip("`").replace("<agency_id>", AGENCY)
            documented.add((resource, named, operation))

    assert documented == {
        (g.resource_type.value, g.resource_name, g.operation.value)
        for g in kafka_acls.agency_grants(AGENCY)
    }
