#!/usr/bin/env bash
# The upgrade from the released 0.1.0 (tests/upgrade/pg_entitlements--0.1.0.sql) with
# sql/pg_entitlements--0.1.0--0.2.0.sql. A 0.1.0 database with data in it, upgraded, must
# end like a fresh install of the current version: functions (bodies, flags, settings,
# ACLs), columns, constraints, indexes, triggers, policies, table and sequence ACLs, the
# initial privileges pg_dump compares with, comments, config-dump registrations, extension
# membership, and `pg_dump --schema-only` as a whole. Its data must stay as it was (0.2.0's
# new table empty, its new column NULL) and work with 0.2.0, its new tasks too; a row 0.2.0
# does not accept must stop the upgrade (SQLSTATE 22023).
# Fails on any difference.
#   scripts/test_upgrade.sh PORT     (a running test cluster, see scripts/test.sh)
# Installs the two SQL files into the PostgreSQL share directory, next to the current
# install script (`make install`).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${1:?port of the running test cluster}
OLD=upgrade_old     # 0.1.0 with data, then ALTER EXTENSION ... UPDATE
NEW=upgrade_new     # CREATE EXTENSION of the current version
BAD=upgrade_bad     # 0.1.0 with a row 0.2.0 refuses
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
psql_in() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d "$1" "${@:2}"; }
fail() { echo "upgrade: $*" >&2; exit 1; }

EXTDIR="$(${PG_CONFIG:-pg_config} --sharedir)/extension"
install -m 0644 tests/upgrade/pg_entitlements--0.1.0.sql sql/pg_entitlements--0.1.0--0.2.0.sql "$EXTDIR/"
VERSION=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$EXTDIR/pg_entitlements.control")
[ "$VERSION" = 0.2.0 ] || fail "the installed control file says default_version $VERSION, this script tests 0.1.0 -> 0.2.0"

psql_in postgres -c "set client_min_messages = warning" \
    -c "drop database if exists $OLD" -c "drop database if exists $NEW" -c "drop database if exists $BAD" \
    -c "create database $OLD" -c "create database $NEW" -c "create database $BAD"

# 1. 0.1.0 with data: subscriptions, an organization and its member, a boost, usage in the
#    default partition and in a monthly one, a Stripe event, a task run, an audited app table.
psql_in "$OLD" -c "create extension pg_entitlements version '0.1.0'" -f pg_test/fixtures/catalog.sql >/dev/null
psql_in "$OLD" >/dev/null <<'SQL'
select entitlements.subscribe('d0000000-0000-0000-0000-000000000001', 'pro', period_end => now() + interval '20 days');
select entitlements.subscribe('d0000000-0000-0000-0000-0000000000c0', 'team', period_end => now() + interval '20 days');
select entitlements.add_member('d0000000-0000-0000-0000-0000000000c0', 'd0000000-0000-0000-0000-000000000002', 'owner');
select entitlements.boost_quota('d0000000-0000-0000-0000-000000000001', 'minutes', 10, reason => 'upgrade test');
select entitlements.consume('d0000000-0000-0000-0000-000000000001', 'minutes', 5);
select entitlements.consume('d0000000-0000-0000-0000-000000000001', 'minutes', 1, 'key-1');
select entitlements.ensure_usage_partitions(1);
select entitlements.consume('d0000000-0000-0000-0000-000000000001', 'minutes', 2);
select entitlements.stripe_record_event('{"id": "evt_upgrade_1", "type": "customer.created", "created": 1700000000, "data": {"object": {"id": "cus_upgrade"}}}');
select entitlements.run_task('health_snapshot');
create table public.upgrade_notes (tenant int, id int, body text, primary key (tenant, id));
select entitlements.enable_audit('public.upgrade_notes');
insert into public.upgrade_notes values (1, 1, 'audited by 0.1.0');
SQL

# What 0.2.0 adds to the data: a table that starts empty and a column that starts NULL
# (checked after the upgrade); the rows are compared without them.
NEW_TABLES=(entitlements.auth_emails entitlements.settings entitlements.leases entitlements.outbox entitlements.server_records entitlements.server_secrets entitlements.server_domains entitlements.server_counts entitlements.webhook_endpoints entitlements.email_templates entitlements.deliveries entitlements.delivery_attempts entitlements.coupons entitlements.discounts entitlements.feature_unit_costs entitlements.security_signals entitlements.security_rules entitlements.security_incidents entitlements.security_alerts entitlements.incident_notes entitlements.admin_tokens)
NEW_COLUMNS=(entitlements.stripe_events.dead_at entitlements.customers.display_name entitlements.customers.locale
             entitlements.usage_counters.split entitlements.subscriptions.price_cents
             entitlements.subscriptions.currency entitlements.subscriptions.billing_interval entitlements.plans.tenant_id
             entitlements.features.unit_cost_cents entitlements.usage_ledger.usage_cost_cents entitlements.usage_ledger.metadata
             entitlements.customers.erased_at)
# Tables new in 0.2.0 that the upgrade fills from 0.1.0's rows, compared apart (below).
FILLED_TABLES=(entitlements.access_notices entitlements.subscription_history entitlements.security_admin_roles)
# Columns the upgrade fills in or rewrites on purpose, compared apart (below).
# The thresholds it sets are a catalog change: audited (one more audit row, compared apart) and
# a new cache version, so that running backends load them.
MIGRATED_COLUMNS=(entitlements.features.thresholds entitlements.usage_counters.stripes
                  entitlements.cache_version.version entitlements.cache_version.bumped_by)
AUDIT_BEFORE=""   # audit rows up to this id are compared; set before the upgrade
# Every table's rows of the extension's schema (partitions too) and of the app table, in a
# stable order, as one line per table.
fingerprint() {
    local t c cols
    for t in $(psql_in "$1" -At -c "select format('%I.%I', n.nspname, c.relname) from pg_class c
                 join pg_namespace n on n.oid = c.relnamespace
                where (n.nspname = 'entitlements' or c.oid = 'public.upgrade_notes'::regclass)
                  and c.relkind in ('r', 'p') order by 1"); do
        if [[ " ${NEW_TABLES[*]} ${FILLED_TABLES[*]} " == *" $t "* ]]; then continue; fi
        cols=""
        for c in "${NEW_COLUMNS[@]}" "${MIGRATED_COLUMNS[@]}"; do
            if [ "${c%.*}" = "$t" ]; then cols+="${cols:+, }'${c##*.}'"; fi
        done
        # The ledger's new columns are its partitions' too.
        if [[ "$t" == entitlements.usage_ledger_* ]]; then cols+="${cols:+, }'usage_cost_cents', 'metadata'"; fi
        printf '%s %s\n' "$t" "$(psql_in "$1" -At -c \
            "select count(*) || ' ' || coalesce(md5(string_agg(r, '|' order by r)), '-')
               from (select (to_jsonb(x) - array[$cols]::text[])::text as r from $t x
                      where '$t' <> 'entitlements.audit_log' or (to_jsonb(x) ->> 'id')::bigint <= ${AUDIT_BEFORE:-0}) s")"
    done
}
AUDIT_BEFORE=$(psql_in "$OLD" -At -c "select coalesce(max(id), 0) from entitlements.audit_log")
VERSION_BEFORE=$(psql_in "$OLD" -At -c "select version from entitlements.cache_version")
fingerprint "$OLD" > "$WORK/rows.before"
grep -q '^entitlements.usage_ledger_20[0-9_]* [1-9]' "$WORK/rows.before" \
    || fail "the fixture wrote no usage into a monthly ledger partition"

ROLES_BEFORE=$(psql_in postgres -At -c "select count(*) from pg_roles where rolname in ('entitlements_api', 'entitlements_admin')")
psql_in "$OLD" -c "alter extension pg_entitlements update to '0.2.0'"
[ "$(psql_in "$OLD" -At -c "select extversion from pg_extension where extname = 'pg_entitlements'")" = 0.2.0 ] \
    || fail "the extension is not at 0.2.0 after ALTER EXTENSION UPDATE"

# 2. Roles are the cluster's, so they are checked now, before the fresh install below.
psql_in "$OLD" -At > "$WORK/roles.log" 2>&1 <<'SQL' || { cat "$WORK/roles.log" >&2; fail "roles"; }
\set ON_ERROR_STOP 1
do $$
declare
    r text;
    m text;
begin
    foreach r in array array['entitlements_api', 'entitlements_admin'] loop
        if not exists (select 1 from pg_roles where rolname = r and not rolcanlogin) then
            raise exception 'role % is missing (or can log in)', r;
        end if;
    end loop;
    foreach m in array array['anon:entitlements_api', 'authenticated:entitlements_api',
                             'service_role:entitlements_api', 'service_role:entitlements_admin'] loop
        if exists (select 1 from pg_roles where rolname = split_part(m, ':', 1))
           and not exists (select 1 from pg_auth_members a
                            where a.member = split_part(m, ':', 1)::regrole
                              and a.roleid = split_part(m, ':', 2)::regrole) then
            raise exception '% is not granted %', split_part(m, ':', 1), split_part(m, ':', 2);
        end if;
    end loop;
end
$$;
SQL
if [ "$ROLES_BEFORE" = 0 ]; then
    echo "upgrade: the upgrade created entitlements_api and entitlements_admin and granted them"
else
    echo "upgrade: entitlements_api and entitlements_admin (existing already) are granted as at install"
fi

# 3. The fresh install, with what the upgraded database has beside the extension's own
#    objects: this month's and next month's ledger partitions and the audited app table.
psql_in "$NEW" >/dev/null <<'SQL'
create extension pg_entitlements;
select entitlements.ensure_usage_partitions(1);
create table public.upgrade_notes (tenant int, id int, body text, primary key (tenant, id));
select entitlements.enable_audit('public.upgrade_notes');
SQL

# 4. Compare. Each query runs in both databases; any difference fails.
declare -A Q
Q[relations]="select format('%I.%I', n.nspname, c.relname), c.relkind, c.relowner::regrole, c.relpersistence,
       c.relrowsecurity, c.relforcerowsecurity, c.reloptions, c.relispartition, pg_get_expr(c.relpartbound, c.oid),
       pg_get_partkeydef(c.oid), c.relacl
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
 where n.nspname = 'entitlements' or c.oid = 'public.upgrade_notes'::regclass"
Q[schema]="select nspname, nspowner::regrole, nspacl from pg_namespace where nspname = 'entitlements'"
Q[columns]="select a.attrelid::regclass, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       a.attidentity, a.attgenerated, pg_get_expr(d.adbin, d.adrelid), a.attcollation, a.attacl
  from pg_attribute a join pg_class c on c.oid = a.attrelid
  left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
 where c.relnamespace = 'entitlements'::regnamespace and a.attnum > 0 and not a.attisdropped"
Q[constraints]="select conrelid::regclass, contypid::regtype, conname, contype, pg_get_constraintdef(oid),
       convalidated, condeferrable, condeferred, conislocal, coninhcount
  from pg_constraint where connamespace = 'entitlements'::regnamespace or conrelid = 'public.upgrade_notes'::regclass"
Q[indexes]="select schemaname, tablename, indexname, indexdef from pg_indexes
 where schemaname = 'entitlements' or (schemaname, tablename) = ('public', 'upgrade_notes')"
Q[triggers]="select t.tgrelid::regclass, t.tgname, t.tgfoid::regprocedure, t.tgtype, t.tgenabled,
       encode(t.tgargs, 'escape'), t.tgparentid <> 0, pg_get_triggerdef(t.oid)
  from pg_trigger t where not t.tgisinternal"
Q[policies]="select schemaname, tablename, policyname, permissive, roles, cmd, qual, with_check
  from pg_policies where schemaname = 'entitlements'"
Q[functions]="select p.oid::regprocedure, p.prokind, p.proowner::regrole, p.prosecdef, p.proconfig, p.provolatile,
       p.proparallel, p.proisstrict, p.proleakproof, p.procost, p.prorows,
       case when p.prokind <> 'a' then md5(pg_get_functiondef(p.oid)) end, p.proacl
  from pg_proc p where p.pronamespace = 'entitlements'::regnamespace"
Q[types]="select t.oid::regtype, t.typtype, t.typowner::regrole, t.typacl from pg_type t
 where t.typnamespace = 'entitlements'::regnamespace"
Q[init_privs]="select pg_describe_object(classoid, objoid, objsubid), privtype, initprivs from pg_init_privs
 where objoid >= 16384"
Q[comments]="select pg_describe_object(classoid, objoid, objsubid), md5(description) from pg_description
 where objoid >= 16384"
# Registrations as a set: pg_dump looks each one up, their order in the array means nothing
# (the upgrade appends the two sequences at the end, a fresh install next to their tables).
Q[config_dump]="select c.relname, x.cond
  from pg_extension e, unnest(e.extconfig, e.extcondition) as x(rel, cond) join pg_class c on c.oid = x.rel
 where e.extname = 'pg_entitlements'"
Q[extension]="select extname, extowner::regrole, extnamespace::regnamespace, extrelocatable, extversion
  from pg_extension where extname = 'pg_entitlements'"
Q[membership]="select pg_describe_object(d.classid, d.objid, d.objsubid) from pg_depend d
 where d.deptype = 'e' and d.refclassid = 'pg_extension'::regclass
   and d.refobjid = (select oid from pg_extension where extname = 'pg_entitlements')"
# Every other dependency between the database's own objects (a CHECK on its function, a
# trigger on its table...), names with OIDs in them (toast tables, RI triggers) made alike.
Q[dependencies]="select regexp_replace(pg_describe_object(d.classid, d.objid, d.objsubid) || ' -> '
                                      || pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid),
                                      '(pg_toast_|RI_ConstraintTrigger_[ac]_)[0-9]+', '\\1N', 'g'), d.deptype
  from pg_depend d where d.objid >= 16384 and d.refobjid >= 16384 and d.deptype <> 'e'"
differ=0
for aspect in relations schema columns constraints indexes triggers policies functions types init_privs comments \
              config_dump extension membership dependencies; do
    psql_in "$OLD" -At -c "${Q[$aspect]}" | LC_ALL=C sort > "$WORK/$aspect.upgraded"
    psql_in "$NEW" -At -c "${Q[$aspect]}" | LC_ALL=C sort > "$WORK/$aspect.fresh"
    [ -s "$WORK/$aspect.fresh" ] || fail "$aspect: the query found nothing in the fresh install"
    if diff -u --label "$aspect (upgraded)" --label "$aspect (fresh)" "$WORK/$aspect.upgraded" "$WORK/$aspect.fresh"; then
        echo "upgrade: $aspect identical ($(wc -l < "$WORK/$aspect.fresh") rows)"
    else
        differ=1
    fi
done
# The whole schema as pg_dump writes it (the extension's members as CREATE EXTENSION plus
# the privileges that differ from pg_init_privs; partitions, the app table and its trigger).
# (\restrict keys of newer pg_dump releases are random.)
pg_dump -h 127.0.0.1 -p "$PORT" -U postgres --schema-only "$OLD" | grep -v '^\\\(un\)\?restrict ' > "$WORK/dump.upgraded"
pg_dump -h 127.0.0.1 -p "$PORT" -U postgres --schema-only "$NEW" | grep -v '^\\\(un\)\?restrict ' > "$WORK/dump.fresh"
if diff -u --label "pg_dump --schema-only (upgraded)" --label "pg_dump --schema-only (fresh)" \
        "$WORK/dump.upgraded" "$WORK/dump.fresh"; then
    echo "upgrade: pg_dump --schema-only identical ($(wc -l < "$WORK/dump.fresh") lines)"
else
    differ=1
fi
[ "$differ" = 0 ] || fail "the upgraded database differs from a fresh install (- upgraded, + fresh)"

# 5. The data: every row as it was (cache_version too: not a fresh install), and 0.2.0 works on it.
fingerprint "$OLD" > "$WORK/rows.after"
diff -u --label "rows before the upgrade" --label "rows after" "$WORK/rows.before" "$WORK/rows.after" \
    || fail "the upgrade changed rows"
for t in "${NEW_TABLES[@]}"; do
    [ "$(psql_in "$OLD" -At -c "select count(*) from $t")" = 0 ] || fail "$t is not empty after the upgrade"
done
for c in "${NEW_COLUMNS[@]}"; do
    [ "$(psql_in "$OLD" -At -c "select count(*) from ${c%.*} where ${c##*.} is not null")" = 0 ] \
        || fail "$c is not NULL after the upgrade"
done
# Metered features get the default thresholds (80%, 100%); each stripe knows how many there
# are (and no window has a split yet: its next count splits it by the thresholds).
[ "$(psql_in "$OLD" -At -c "select count(*) from entitlements.features
        where thresholds is distinct from case when kind = 'metered' then '{80,100}'::numeric[] end")" = 0 ] \
    || fail "features.thresholds not filled in by the upgrade"
[ "$(psql_in "$OLD" -At -c "select count(*) from entitlements.usage_counters c
        where c.stripes <> (select count(*) from entitlements.usage_counters o
              where (o.customer_id, o.feature_key, o.period, o.window_start)
                  = (c.customer_id, c.feature_key, c.period, c.window_start))")" = 0 ] \
    || fail "usage_counters stripes not counted by the upgrade"
# Every subscription has its access notice, as a fresh install would have made it.
[ "$(psql_in "$OLD" -At -c "select count(*) from entitlements.subscriptions s
        full join entitlements.access_notices n on n.subscription_id = s.id
        where n.subscription_id is null or s.id is null or n.state <> 'granting'")" = 0 ] \
    || fail "access_notices not filled in by the upgrade"
# The security scan's baseline of admin roles is the cluster's, as at a fresh install.
[ "$(psql_in "$OLD" -At -c "select count(*) from entitlements.security_admin_roles k
        full join entitlements._admin_roles() r using (role_name)
        where k.role_name is null or r.role_name is null or k.superuser <> r.superuser")" = 0 ] \
    || fail "security_admin_roles not filled in by the upgrade"
# Every subscription's history starts with its current state, from its creation.
[ "$(psql_in "$OLD" -At -c "select count(*) from entitlements.subscriptions s
        full join entitlements.subscription_history h on h.subscription_id = s.id
        where h.id is null or s.id is null or h.valid_to is not null or h.valid_from <> s.created_at
           or (h.plan_key, h.status, h.quantity) is distinct from (s.plan_key, s.status, s.quantity)")" = 0 ] \
    || fail "subscription_history not filled in by the upgrade"
[ "$(psql_in "$OLD" -At -c "select version > $VERSION_BEFORE from entitlements.cache_version")" = t ] \
    || fail "the upgrade changed the catalog without a new cache version"
[ "$(psql_in "$OLD" -At -c "select string_agg(table_name || ' ' || action, ',') from entitlements.audit_log
                            where id > $AUDIT_BEFORE")" = "entitlements.features update" ] \
    || fail "the upgrade should leave exactly one audit row, for the thresholds"
psql_in "$OLD" -At -e > "$WORK/check.log" 2>&1 <<'SQL' || { cat "$WORK/check.log" >&2; fail "0.2.0 on the upgraded data"; }
\set ON_ERROR_STOP 1
create function pg_temp.ok(cond boolean, what text) returns void language plpgsql as $$
begin
    if cond is not true then raise exception 'upgrade: %', what; end if;
end $$;
-- the app table's trigger is 0.2.0's invoker trigger, with the key columns as before
select pg_temp.ok(count(*) = 1, 'the app table''s audit trigger runs entitlements._audit_app_row(''tenant'', ''id'')')
  from pg_trigger t
 where t.tgrelid = 'public.upgrade_notes'::regclass and t.tgname = 'entitlements_audit'
   and t.tgfoid = 'entitlements._audit_app_row()'::regprocedure and encode(t.tgargs, 'escape') = 'tenant\000id\000';
select pg_temp.ok(not exists (select 1 from pg_trigger t where t.tgfoid = 'entitlements._audit_row()'::regprocedure
                               and not entitlements._is_extension_table(t.tgrelid)),
                  'no app table runs the definer _audit_row');
-- nothing calls the dropped functions
select pg_temp.ok(not exists (select 1 from pg_proc p where p.pronamespace = 'entitlements'::regnamespace
                               and p.prosrc ~ '_customer_(tenant|kind)'), 'a function still calls _customer_tenant/_customer_kind');
-- checks on the data written by 0.1.0
select pg_temp.ok(entitlements.has_feature('d0000000-0000-0000-0000-000000000001', 'agents'), 'pro has agents');
select pg_temp.ok(not entitlements.has_feature('d0000000-0000-0000-0000-000000000009', 'agents'), 'free has no agents');
select pg_temp.ok(entitlements.has_feature('d0000000-0000-0000-0000-000000000002', 'agents'), 'the organization''s owner has agents');
select pg_temp.ok(e ->> 'plan' = 'pro' and (e #>> '{features,agents,enabled}')::boolean, 'entitlements(): pro, agents')
  from entitlements.entitlements('d0000000-0000-0000-0000-000000000001') e;
select pg_temp.ok((entitlements.check('d0000000-0000-0000-0000-000000000001', 'minutes')).used = 8, 'usage counted by 0.1.0');
select pg_temp.ok(count(*) = 0, 'counters equal the ledger') from entitlements.usage_drift();
-- metering continues: a new consumption, and a replay of 0.1.0's idempotency key counts nothing
select entitlements.consume('d0000000-0000-0000-0000-000000000001', 'minutes', 3);
select entitlements.consume('d0000000-0000-0000-0000-000000000001', 'minutes', 1, 'key-1');
select pg_temp.ok((entitlements.check('d0000000-0000-0000-0000-000000000001', 'minutes')).used = 11, 'consume after the upgrade');
select pg_temp.ok(count(*) = 0, 'counters equal the ledger after consume') from entitlements.usage_drift();
-- members: add one (seats trigger), change its role (the trigger fires on UPDATE now)
select entitlements.add_member('d0000000-0000-0000-0000-0000000000c0', 'd0000000-0000-0000-0000-000000000003');
select pg_temp.ok(entitlements.has_feature('d0000000-0000-0000-0000-000000000003', 'agents'), 'a member added after the upgrade');
update entitlements.members set role = 'admin' where user_id = 'd0000000-0000-0000-0000-000000000003';
select pg_temp.ok(count(*) = 2, 'two members') from entitlements.members where organization_id = 'd0000000-0000-0000-0000-0000000000c0';
-- an organization is never a member (checked by the trigger in 0.2.0)
do $$
begin
    insert into entitlements.members (organization_id, user_id, role)
    values ('d0000000-0000-0000-0000-0000000000c0', 'd0000000-0000-0000-0000-0000000000c0', 'member');
    raise exception 'upgrade: an organization became a member';
exception when sqlstate '22023' then null;
end $$;
-- the new checks hold for new rows
do $$
begin
    update entitlements.plans set metadata = '{"x": 1e16}' where key = 'free';
    raise exception 'upgrade: plans.metadata took a number above 1e15';
exception when sqlstate '22023' then null;
end $$;
-- the audited app table: its writes are logged through _audit_append
insert into public.upgrade_notes values (1, 2, 'after the upgrade');
select pg_temp.ok(count(*) = 1, 'app table audited after the upgrade') from entitlements.audit_log
 where table_name = 'public.upgrade_notes' and row_key = '1,2' and action = 'insert';
-- the ledger partitions have their own keys now
select pg_temp.ok(count(*) = (select count(*) from pg_inherits where inhparent = 'entitlements.usage_ledger'::regclass),
                  'every ledger partition has its primary key')
  from pg_constraint where contype = 'p' and conrelid in (select inhrelid from pg_inherits where inhparent = 'entitlements.usage_ledger'::regclass);
-- the settings (empty: defaults) are written and audited like the extension's other tables
select pg_temp.ok((entitlements._settings()).stripe_max_attempts = 20, 'settings start at their defaults');
insert into entitlements.settings (stripe_max_attempts) values (1);
select pg_temp.ok(count(*) = 1, 'settings audited') from entitlements.audit_log
 where table_name = 'entitlements.settings' and row_key = 'true' and action = 'insert';
-- 0.1.0's Stripe event: pending, a dead letter after stripe_max_attempts failures, retried
select pg_temp.ok(count(*) = 1, '0.1.0''s event is pending') from entitlements.stripe_pending_events() where id = 'evt_upgrade_1';
select pg_temp.ok(entitlements.stripe_event_failed('evt_upgrade_1', 'upgrade test') is null, 'the event is a dead letter');
select pg_temp.ok(count(*) = 0, 'a dead letter is not pending') from entitlements.stripe_pending_events() where id = 'evt_upgrade_1';
select pg_temp.ok(entitlements.stripe_retry_event('evt_upgrade_1'), 'stripe_retry_event');
select pg_temp.ok(count(*) = 1, 'a retried event is pending') from entitlements.stripe_pending_events() where id = 'evt_upgrade_1';
-- the two new maintenance tasks run (their errors would be recorded, not raised)
select pg_temp.ok(r.outcome = 'ok', 'run_task(''usage_partitions''): ' || coalesce(r.error, r.outcome))
  from entitlements.run_task('usage_partitions') r;
select pg_temp.ok(count(*) = 4, 'usage_partitions made the ledger''s partitions 3 months ahead')
  from pg_inherits where inhparent = 'entitlements.usage_ledger'::regclass
   and inhrelid <> 'entitlements.usage_ledger_default'::regclass;
update entitlements.settings set audit_log_keep = interval '30 days';
select pg_temp.ok(r.outcome = 'ok', 'run_task(''retention''): ' || coalesce(r.error, r.outcome))
  from entitlements.run_task('retention') r;
SQL
echo "upgrade: rows unchanged; checks, entitlements(), consume, add_member, app-table audit, settings, Stripe dead letters and the usage_partitions and retention tasks work on 0.1.0's data"

# 6. A row 0.2.0 refuses stops the upgrade with the check function's error; nothing changes.
psql_in "$BAD" -c "create extension pg_entitlements version '0.1.0'" -f pg_test/fixtures/catalog.sql >/dev/null
psql_in "$BAD" -c "update entitlements.plans set metadata = '{\"limits\": {\"x\": 1e16}}' where key = 'free'" >/dev/null
if psql_in "$BAD" -v VERBOSITY=verbose -c "alter extension pg_entitlements update to '0.2.0'" > "$WORK/bad.log" 2>&1; then
    fail "the upgrade took a plan whose metadata has a number above 1e15"
fi
grep -q 'ERROR:  22023: plans.metadata: \$.limits.x: number' "$WORK/bad.log" \
    || { cat "$WORK/bad.log" >&2; fail "the refused upgrade did not fail with the check's 22023"; }
[ "$(psql_in "$BAD" -At -c "select extversion from pg_extension where extname = 'pg_entitlements'")" = 0.1.0 ] \
    || fail "a refused upgrade left the extension changed"
echo "upgrade: a row 0.2.0 refuses stops the upgrade: $(grep -o 'ERROR: .*' "$WORK/bad.log" | head -1)"

psql_in postgres -c "drop database $OLD" -c "drop database $NEW" -c "drop database $BAD"
echo "upgrade: 0.1.0 -> 0.2.0 ends as a fresh 0.2.0 install"
