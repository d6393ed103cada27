#!/usr/bin/env bash
# `make run`: a local cluster with the extension and the demo catalog, and the worker in
# the foreground. Re-running reuses the cluster and its data.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PGPORT:-54329}
DATA=${PGDATA:-$PWD/.pgdata}
DB=${PGDATABASE:-entitlements}
LISTEN=${ENTITLEMENTS_LISTEN_ADDR:-127.0.0.1:8080}
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)

scripts/cluster.sh start "$DATA" "$PORT"
if [ -z "$("${PSQL[@]}" -d postgres -At -c "select 1 from pg_database where datname = '$DB'")" ]; then
    "${PSQL[@]}" -d postgres -c "create database $DB"
fi
"${PSQL[@]}" -d "$DB" -c "create extension if not exists pg_entitlements"
# Installed a newer build since last time? Move the database to it.
"${PSQL[@]}" -d "$DB" -c "alter extension pg_entitlements update" 2>/dev/null || true
export DATABASE_URL="postgres://postgres@127.0.0.1:$PORT/$DB"
echo "demo catalog: $(entitlements-worker apply-catalog examples/catalog.json)"

cat <<MSG

pg_entitlements is running.
  database:  psql "$DATABASE_URL"
  worker:    http://$LISTEN/healthz  http://$LISTEN/metrics  (maintenance tasks run on a schedule)
  stop:      Ctrl-C stops the worker; \`scripts/cluster.sh stop $DATA\` stops PostgreSQL.

Try:
  select entitlements.subscribe('11111111-1111-1111-1111-111111111111', 'pro');
  select entitlements.has_feature('11111111-1111-1111-1111-111111111111', 'advanced_agents');
  select * from entitlements.consume('11111111-1111-1111-1111-111111111111', 'api_requests');
  select jsonb_pretty(entitlements.entitlements('11111111-1111-1111-1111-111111111111'));
  select task, outcome, rows_touched, finished_at from entitlements.task_runs order by id desc limit 5;
(the README has the full 5-minute tour)

MSG
export ENTITLEMENTS_LISTEN_ADDR=$LISTEN
exec entitlements-worker serve
