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
# Supabase's roles: the console runs its pages as `authenticated` with the signed-in user's
# claims, as PostgREST would.
"${PSQL[@]}" -d postgres <<'SQL'
do $$ begin
    if not exists (select 1 from pg_roles where rolname = 'anon') then create role anon nologin; end if;
    if not exists (select 1 from pg_roles where rolname = 'authenticated') then create role authenticated nologin; end if;
    if not exists (select 1 from pg_roles where rolname = 'service_role') then create role service_role nologin; end if;
end $$;
SQL
if [ -z "$("${PSQL[@]}" -d postgres -At -c "select 1 from pg_database where datname = '$DB'")" ]; then
    "${PSQL[@]}" -d postgres -c "create database $DB"
fi
"${PSQL[@]}" -d "$DB" -c "create extension if not exists pg_entitlements"
# Installed a newer build since last time? Move the database to it.
"${PSQL[@]}" -d "$DB" -c "alter extension pg_entitlements update" 2>/dev/null || true
"${PSQL[@]}" -d "$DB" -c "grant entitlements_api to anon, authenticated, service_role" \
    -c "grant entitlements_admin to service_role"
export DATABASE_URL="postgres://postgres@127.0.0.1:$PORT/$DB"
echo "demo catalog: $(entitlements-worker apply-catalog examples/catalog.json)"
# The console's demo admin, and a token for it that is shown this once (a new one each run;
# only its hash is kept).
ADMIN=a0000000-0000-0000-0000-00000000ad01
TOKEN=$("${PSQL[@]}" -d "$DB" -At -c "select entitlements.add_admin('$ADMIN')" \
    -c "select entitlements.create_admin_token('$ADMIN', 'make run', now() + interval '1 day')" | tail -n 1)

cat <<MSG

pg_entitlements is running.
  database:  psql "$DATABASE_URL"
  worker:    http://$LISTEN/healthz  http://$LISTEN/metrics  (maintenance tasks run on a schedule)
  console:   http://$LISTEN/admin   sign in with this one-time admin token (valid for a day):
             $TOKEN
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
