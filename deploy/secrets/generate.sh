#!/usr/bin/env bash
# Creates the compose stack's secrets as files in this directory (git-ignored), once:
# random passwords, the HMAC key of the pseudonymous citizen key, and the database URLs of
# each role. Existing files are kept. Usage: deploy/secrets/generate.sh
set -euo pipefail
cd "$(dirname "$0")"
umask 077
secret() { [ -s "$1" ] || head -c 48 /dev/urandom | base64 | tr -d '/+=\n' | head -c "${2:-32}" > "$1"; }
for name in kafka_admin_password kafka_app_password kafka_registry_password postgres_password \
            postgres_sink_password postgres_worker_password postgres_monitor_password \
            postgres_console_password grafana_admin_password; do
  secret "$name"
done
secret ehb_citizen_key_secret 64
secret console_session_secret 64
url() { [ -s "$1" ] || printf 'postgresql://%s:%s@postgres:5432/ehb' "$2" "$(cat "$3")" > "$1"; }
url database_url_owner postgres postgres_password
url database_url_sink ehb_sink postgres_sink_password
url database_url_worker ehb_worker postgres_worker_password
url database_url_console ehb_console_app postgres_console_password
# The containers run as other users than yours: the files must be readable by them. Keep this
# directory itself private (chmod 700) on a shared host.
chmod 644 ./*_password ./ehb_citizen_key_secret ./console_session_secret ./database_url_*
echo "secrets in $(pwd)"
