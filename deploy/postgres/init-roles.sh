#!/usr/bin/env bash
# First start of the compose PostgreSQL (/docker-entrypoint-initdb.d): the login users of the
# least-privilege roles. The roles' rights on the tables come from the migrations
# (sinks/migrations/090_roles.sql), applied by `ehb migrate` as the owner (ehb-init).
#   ehb_sink    (ehb_writer): the PostgreSQL sink
#   ehb_worker  (ehb_reader): the stream workers' facility-registry refresh
#   ehb_monitor (pg_monitor): postgres-exporter
#   ehb_console_app (ehb_console, made by migration 091_console): the web console
set -euo pipefail
sink_password="$(cat /run/secrets/postgres_sink_password)"
worker_password="$(cat /run/secrets/postgres_worker_password)"
monitor_password="$(cat /run/secrets/postgres_monitor_password)"
console_password="$(cat /run/secrets/postgres_console_password)"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v sink_password="$sink_password" -v worker_password="$worker_password" \
     -v monitor_password="$monitor_password" -v console_password="$console_password" <<'SQL'
CREATE ROLE ehb_writer NOLOGIN;
CREATE ROLE ehb_reader NOLOGIN;
CREATE ROLE ehb_sink LOGIN PASSWORD :'sink_password' IN ROLE ehb_writer;
CREATE ROLE ehb_worker LOGIN PASSWORD :'worker_password' IN ROLE ehb_reader;
CREATE ROLE ehb_monitor LOGIN PASSWORD :'monitor_password' IN ROLE pg_monitor;
CREATE ROLE ehb_console NOLOGIN;
CREATE ROLE ehb_console_app LOGIN PASSWORD :'console_password' IN ROLE ehb_console;
SQL
