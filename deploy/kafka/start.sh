#!/usr/bin/env bash
# Starts refnet's single Apache Kafka node (KRaft: broker and controller in one process) in
# the official apache/kafka image, in place of the image's own start script:
#
# 1. writes the broker configuration: SASL/SCRAM-SHA-512 on the client listener, the KRaft
#    StandardAuthorizer with allow.everyone.if.no.acl.found=false, and one super user, admin;
# 2. writes the admin client configuration the Kafka tools use in this container
#    (/etc/kafka/admin.properties: `refnet agency kafka-access`, docs/runbook.md);
# 3. on the first start only, formats the storage with the admin's SCRAM credential
#    (kafka-storage.sh format --add-scram): in KRaft, SCRAM users live in the cluster
#    metadata, so the first one must be written before the broker can authenticate anyone;
# 4. runs the broker.
#
# Environment: KAFKA_CLUSTER_ID, KAFKA_ADMIN_PASSWORD (both required). The paths below are
# the image's; the tests point them elsewhere. The services' users, the topics and the ACLs
# are made by deploy/kafka/init.sh (the kafka-init job).
set -euo pipefail

fail() {
  echo "kafka start: $*" >&2
  exit 1
}

: "${KAFKA_CLUSTER_ID:?set KAFKA_CLUSTER_ID}"
password="${KAFKA_ADMIN_PASSWORD:-}"
[ -n "$password" ] || fail "set KAFKA_ADMIN_PASSWORD (in .env)"
[ "${#password}" -ge 16 ] || fail "KAFKA_ADMIN_PASSWORD needs at least 16 characters"
case "$password" in
  *change-me*) fail "KAFKA_ADMIN_PASSWORD is still the placeholder: generate one (docs/runbook.md)" ;;
  *[][,=\"\\[:space:][:cntrl:]]*)
    fail "KAFKA_ADMIN_PASSWORD may not contain commas, brackets, '=', quotes, backslashes or whitespace" ;;
esac

bin="${KAFKA_TOOLS_DIR:-/opt/kafka/bin}"
data="${KAFKA_DATA_DIR:-/var/lib/kafka/data}"
config="${KAFKA_CONFIG_DIR:-/opt/kafka/config}/refnet-server.properties"
# Where `refnet agency kafka-access` expects it (KAFKA_ADMIN_CONFIG, shared/kafka_acls.py).
admin_config="${KAFKA_ADMIN_CONFIG:-/etc/kafka/admin.properties}"
scram="org.apache.kafka.common.security.scram.ScramLoginModule required"
plain="org.apache.kafka.common.security.plain.PlainLoginModule required"

umask 077
cat >"$config" <<EOF
# Written by deploy/kafka/start.sh at every start; edit that script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@localhost:9093
log.dirs=$data

# CLIENT: the services (and the tools in this container) on the compose network, SASL/SCRAM.
# CONTROLLER: KRaft's own traffic, on loopback only, SASL/PLAIN as admin (KRaft controllers
# cannot use SCRAM: its credentials live in the metadata the controller serves).
listeners=CLIENT://:9092,CONTROLLER://localhost:9093
advertised.listeners=CLIENT://kafka:9092
listener.security.protocol.map=CLIENT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT
inter.broker.listener.name=CLIENT
controller.listener.names=CONTROLLER
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
sasl.mechanism.controller.protocol=PLAIN
listener.name.client.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.client.scram-sha-512.sasl.jaas.config=$scram username="admin" password="$password";
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=$plain username="admin" password="$password" user_admin="$password";

# Nothing is allowed without an ACL; admin (the tools, the broker itself) may do anything.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin

# Topics are made on purpose: deploy/kafka/init.sh, and matching for agencies' offers topics.
auto.create.topics.enable=false
# Retention for topics made without their own (agencies' offers topics): a week, in daily
# segments so the week is a real bound (services/kafka_init.py explains the choice).
log.retention.ms=604800000
log.roll.ms=86400000

# One node, so every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
EOF

cat >"$admin_config" <<EOF
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=$scram username="admin" password="$password";
EOF

# --ignore-formatted: on later starts the storage, and the admin's credential in it, stay as
# they are (docs/runbook.md says how to change that password).
"$bin/kafka-storage.sh" format --config "$config" --cluster-id "$KAFKA_CLUSTER_ID" \
  --add-scram "SCRAM-SHA-512=[name=admin,password=$password]" --ignore-formatted

exec "$bin/kafka-server-start.sh" "$config"
