#!/usr/bin/env bash
# A pg_dump / pg_restore round trip (custom format) of a database using every table of the
# extension: into a new database of the same cluster, and into a new cluster. Fails on any
# restore error, on any row that differs, on ids that do not continue, and on an engine
# that is not right after restore (a change is seen by the next statement).
#   scripts/test_dump_restore.sh PORT     (a running test cluster, see scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${1:?port of the running test cluster}
PORT2=$((PORT + 1))
DATA2=/tmp/pg_entitlements-restore-test
WORK=$(mktemp -d)
trap 'scripts/cluster.sh stop "$DATA2"; rm -rf "$WORK" "$DATA2"' EXIT
psql_at() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres -d "$2" "${@:3}"; }

psql_at "$PORT" postgres -c "drop database if exists dump_src" -c "drop database if exists dump_dst" \
    -c "create database dump_src" -c "create database dump_dst"
psql_at "$PORT" dump_src -c "create extension pg_entitlements" >/dev/null
psql_at "$PORT" dump_src >/dev/null <<'SQL'
\i pg_test/fixtures/catalog.sql
select entitlements.subscribe('d0000000-0000-0000-0000-000000000001', 'pro', period_end => now() + interval '20 days') as sub \gset
select entitlements.subscribe('d0000000-0000-0000-0000-0000000000c0', 'team', period_end => now() + interval '20 days');
select entitlements.add_member('d0000000-0000-0000-0000-0000000000c0', 'd0000000-0000-0000-0000-000000000002', 'owner');
select entitlements.boost_quota('d0000000-0000-0000-0000-000000000001', 'minutes', 10, reason => 'dump test');
select entitlements.consume('d0000000-0000-0000-0000-000000000001', 'minutes', 5);
select entitlements.consume('d0000000-0000-0000-0000-000000000001', 'minutes', 1, 'key-1');
select entitlements.ensure_usage_partitions(1);
select entitlements.stripe_record_event('{"id": "evt_dump_1", "type": "customer.created", "created": 1700000000, "data": {"object": {"id": "cus_dump"}}}');
select entitlements.run_task('health_snapshot');
-- A hosting plan: its subscriber's server, with secrets that must come back as they were.
select entitlements.apply_catalog(jsonb_set(doc, '{plans}', (doc -> 'plans') || '[{"key": "host", "name": "Host",
    "entitlements": {"resources": {"servers": 2, "cpu": "1", "memory": "1Gi"}}}]')) is not null
  from pg_temp.fixture_catalog;
select entitlements.subscribe('d0000000-0000-0000-0000-000000000005', 'host');
create table public.notes (id int primary key, body text);
select entitlements.enable_audit('public.notes');
insert into public.notes values (1, 'audited');
SQL

# Every extension table's rows, in a stable order, as one text per table.
tables() {
    psql_at "$1" "$2" -At -c "select c.relname from pg_class c
        where c.relnamespace = 'entitlements'::regnamespace and c.relkind in ('r', 'p')
          and c.relname <> 'cache_version'  -- starts anew on every install (schema.sql)
          and c.relname <> 'security_admin_roles'  -- the roles of the cluster it is installed in (monitoring/rules.sql)
        order by 1"
}
fingerprint() {
    for t in $(tables "$1" "$2"); do
        printf '%s %s\n' "$t" "$(psql_at "$1" "$2" -At -c \
            "select count(*) || ' ' || coalesce(md5(string_agg(x::text, '|' order by x::text)), '-')
               from entitlements.$t x")"
    done
}
fingerprint "$PORT" dump_src > "$WORK/src"
pg_dump -h 127.0.0.1 -p "$PORT" -U postgres -Fc -f "$WORK/dump" dump_src

check_restored() { # port db label
    fingerprint "$1" "$2" > "$WORK/dst"
    if ! diff -u "$WORK/src" "$WORK/dst"; then
        echo "dump/restore ($3): extension tables differ after restore" >&2; exit 1
    fi
    grep -q '^usage_counters [1-9]' "$WORK/dst" && grep -q '^audit_log [1-9]' "$WORK/dst" \
        || { echo "dump/restore ($3): the fixture wrote no usage or audit rows" >&2; exit 1; }
    psql_at "$1" "$2" -At -e > "$WORK/check.log" 2>&1 <<'SQL' || { cat "$WORK/check.log" >&2; exit 1; }
\set ON_ERROR_STOP 1
create function pg_temp.ok(cond boolean, what text) returns void language plpgsql as $$
begin
    if cond is not true then raise exception 'dump/restore: %', what; end if;
end $$;
-- ids continue: a new task run and new audit rows get ids above every restored one.
select max(id) as audit_max from entitlements.audit_log \gset
select max(id) as runs_max from entitlements.task_runs \gset
select pg_temp.ok((entitlements.run_task('health_snapshot')).id > :runs_max, 'task run ids continue');
-- the engine is right: a change after restore is seen by the next statement.
select pg_temp.ok(entitlements.has_feature('d0000000-0000-0000-0000-000000000001', 'agents'), 'restored access');
select entitlements.cancel(s.id, false) from entitlements.subscriptions s
 where s.customer_id = 'd0000000-0000-0000-0000-000000000001';
select pg_temp.ok(not entitlements.has_feature('d0000000-0000-0000-0000-000000000001', 'agents'),
                  'a cancel after restore is seen by the next statement');
select pg_temp.ok(max(id) > :audit_max, 'audit ids continue') from entitlements.audit_log;
-- servers: the restored one still counts and keeps its secrets; a new one gets its own.
select pg_temp.ok(count(*) = 1, 'the restored server runs') from entitlements.servers
 where customer_id = 'd0000000-0000-0000-0000-000000000005' and desired = 'running';
select entitlements.create_server('d0000000-0000-0000-0000-000000000005', 'after-restore');
select pg_temp.ok(count(*) = 2 and count(distinct signing_key) = 2, 'a server added after restore gets its own secrets')
  from entitlements.server_secrets;
-- metering continues on the restored counters: 6 were used (Free's 60 + the boost of 10 now).
select pg_temp.ok((entitlements.check('d0000000-0000-0000-0000-000000000001', 'minutes')).used = 6,
                  'restored usage counts');
-- seats and the organization came back: its owner is still its member.
select pg_temp.ok(entitlements.has_feature('d0000000-0000-0000-0000-000000000002', 'agents'), 'organization member');
-- the app table's audit trigger came back too.
insert into public.notes values (2, 'after restore');
select pg_temp.ok(count(*) = 1, 'app table audited after restore') from entitlements.audit_log
 where table_name = 'public.notes' and row_key = '2';
SQL
    echo "dump/restore ($3): every row restored, ids continue, the engine is right"
}

# 1. Into a new database of the same cluster.
pg_restore -h 127.0.0.1 -p "$PORT" -U postgres -d dump_dst --exit-on-error "$WORK/dump" 2> "$WORK/err" \
    || { cat "$WORK/err" >&2; exit 1; }
[ ! -s "$WORK/err" ] || { echo "pg_restore reported:" >&2; cat "$WORK/err" >&2; exit 1; }
check_restored "$PORT" dump_dst "same cluster"

# 2. Into a new cluster (roles are not in a database dump: the API roles exist first, as on Supabase).
scripts/cluster.sh stop "$DATA2"; rm -rf "$DATA2"
PG_FSYNC=off scripts/cluster.sh start "$DATA2" "$PORT2" >/dev/null
psql_at "$PORT2" postgres -c "create role anon nologin" -c "create role authenticated nologin" \
    -c "create role service_role nologin" -c "create role supabase_auth_admin nologin" -c "create database dump_dst"
pg_restore -h 127.0.0.1 -p "$PORT2" -U postgres -d dump_dst --exit-on-error "$WORK/dump" 2> "$WORK/err" \
    || { cat "$WORK/err" >&2; exit 1; }
[ ! -s "$WORK/err" ] || { echo "pg_restore reported:" >&2; cat "$WORK/err" >&2; exit 1; }
check_restored "$PORT2" dump_dst "new cluster"
psql_at "$PORT" postgres -c "drop database dump_src" -c "drop database dump_dst"
