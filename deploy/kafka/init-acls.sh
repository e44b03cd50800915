#!/usr/bin/env bash
# One-shot (compose service kafka-init): least-privilege ACLs once the cluster is up.
#   the pipeline's user: its topics (prefix EHB_TOPIC_PREFIX), the Faust app's internal topics
#   and the consumer groups (prefix "ehb-"), idempotent writes;
#   the registry's user: its _schemas topic and group.
set -euo pipefail
admin_user="${KAFKA_ADMIN_USER:-admin}"
app_user="${KAFKA_APP_USER:-ehb}"
registry_user="${KAFKA_REGISTRY_USER:-schema-registry}"
prefix="${EHB_TOPIC_PREFIX:-ehb.}"
bootstrap="${KAFKA_BOOTSTRAP:-kafka-1:9092}"
client=/tmp/admin.properties
umask 077
cat > "$client" <<PROPS
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="${admin_user}" password="$(cat /run/secrets/kafka_admin_password)";
PROPS
acl() { /opt/kafka/bin/kafka-acls.sh --bootstrap-server "$bootstrap" --command-config "$client" --add --force "$@"; }

acl --allow-principal "User:${app_user}" --operation All --resource-pattern-type prefixed --topic "$prefix"
acl --allow-principal "User:${app_user}" --operation All --resource-pattern-type prefixed --topic "ehb-"
acl --allow-principal "User:${app_user}" --operation All --resource-pattern-type prefixed --group "ehb-"
acl --allow-principal "User:${app_user}" --operation IdempotentWrite --operation Describe --cluster
acl --allow-principal "User:${registry_user}" --operation All --topic _schemas
acl --allow-principal "User:${registry_user}" --operation All --resource-pattern-type prefixed --group schema-registry
acl --allow-principal "User:${registry_user}" --operation Describe --operation DescribeConfigs --cluster
echo "ACLs in place"
