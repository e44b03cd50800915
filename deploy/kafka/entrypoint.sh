#!/usr/bin/env bash
# KRaft broker+controller with SASL/SCRAM-SHA-512 listeners, for the compose stack.
#
# The official image formats its storage without SCRAM credentials, and a KRaft cluster with
# SASL-only listeners needs its inter-broker user before the first start. This entrypoint
# writes server.properties from a few variables, formats the storage once with the users
# (`kafka-storage.sh format --add-scram`), then starts the broker. Passwords come from Docker
# secrets (files), never from variables or the image.
#
# Variables: KAFKA_NODE_ID, CLUSTER_ID, KAFKA_CONTROLLER_QUORUM_VOTERS,
#            KAFKA_ADVERTISED_HOST, KAFKA_EXTERNAL_PORT, KAFKA_ADMIN_USER, KAFKA_APP_USER,
#            KAFKA_REGISTRY_USER
# Secrets:   /run/secrets/kafka_admin_password, kafka_app_password, kafka_registry_password
set -euo pipefail

: "${KAFKA_NODE_ID:?}" "${CLUSTER_ID:?}" "${KAFKA_CONTROLLER_QUORUM_VOTERS:?}"
: "${KAFKA_ADVERTISED_HOST:?}" "${KAFKA_EXTERNAL_PORT:?}"
admin_user="${KAFKA_ADMIN_USER:-admin}"
app_user="${KAFKA_APP_USER:-ehb}"
registry_user="${KAFKA_REGISTRY_USER:-schema-registry}"
admin_password="$(cat /run/secrets/kafka_admin_password)"
app_password="$(cat /run/secrets/kafka_app_password)"
registry_password="$(cat /run/secrets/kafka_registry_password)"

config_dir=/opt/kafka/config/ehb
mkdir -p "$config_dir"
properties="$config_dir/server.properties"
umask 077
cat > "$properties" <<PROPS
process.roles=broker,controller
node.id=${KAFKA_NODE_ID}
controller.quorum.voters=${KAFKA_CONTROLLER_QUORUM_VOTERS}
controller.listener.names=CONTROLLER
listeners=INTERNAL://:9092,CONTROLLER://:9093,EXTERNAL://:9094
advertised.listeners=INTERNAL://${KAFKA_ADVERTISED_HOST}:9092,EXTERNAL://localhost:${KAFKA_EXTERNAL_PORT}
listener.security.protocol.map=INTERNAL:SASL_PLAINTEXT,EXTERNAL:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT
inter.broker.listener.name=INTERNAL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
# Controllers cannot use SCRAM (its credentials live in the metadata log they serve): PLAIN,
# with the admin user, on a listener that is not published outside the compose network.
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="${admin_user}" password="${admin_password}" user_${admin_user}="${admin_password}";
listener.name.internal.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="${admin_user}" password="${admin_password}";
listener.name.external.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:${admin_user}
allow.everyone.if.no.acl.found=false
log.dirs=/var/lib/kafka/data
num.partitions=8
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
auto.create.topics.enable=false
unclean.leader.election.enable=false
group.initial.rebalance.delay.ms=3000
PROPS

# Client settings of the admin user, for the healthcheck and kafka-init (kafka-*.sh tools).
cat > "$config_dir/admin.properties" <<PROPS
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="${admin_user}" password="${admin_password}";
PROPS

/opt/kafka/bin/kafka-storage.sh format --ignore-formatted \
  --cluster-id "$CLUSTER_ID" --config "$properties" \
  --add-scram "SCRAM-SHA-512=[name=${admin_user},password=${admin_password}]" \
  --add-scram "SCRAM-SHA-512=[name=${app_user},password=${app_password}]" \
  --add-scram "SCRAM-SHA-512=[name=${registry_user},password=${registry_password}]"

exec /opt/kafka/bin/kafka-server-start.sh "$properties"
