\echo Use "ALTER EXTENSION pg_entitlements UPDATE TO '0.2.0'" to load this file. \quit

-- pg_entitlements 0.1.0 -> 0.2.0 (security hardening and bounded growth, issue 8).
--
-- Ends with what `CREATE EXTENSION pg_entitlements VERSION '0.2.0'` installs: the same
-- functions, triggers, constraints, indexes, policies, roles, privileges and dump
-- registrations (scripts/test_upgrade.sh compares an upgraded database with a fresh one).
-- The data stays; entitlements.cache_version keeps its row (only a fresh install starts
-- it at the install instant). The new entitlements.settings starts empty (defaults), as
-- in a fresh install; the Stripe events already stored are not dead letters.
--
-- The new CHECK constraints are validated against the rows already there. A row that
-- 0.2.0 would not accept stops the upgrade and nothing changes:
--   * a jsonb value nested deeper than 32 levels, with a number outside -1e15..1e15 or
--     larger than 256 kB (plans.metadata, plan_entitlements.spec, customers.metadata,
--     subscriptions.metadata, grants.value), or an infinite instant (subscriptions'
--     period, trial, cancel and end instants, grants.starts_at/expires_at): SQLSTATE 22023
--     from entitlements._valid_json / entitlements._finite, naming the column and the path;
--   * plans.trial_days over 730, plans.grace_days over 365, subscriptions.quantity over
--     1000000: SQLSTATE 23514 naming the constraint.
-- Fix (or delete) the row and run ALTER EXTENSION pg_entitlements UPDATE again.

-- Roles (sql/security/roles.sql) ----------------------------------------------------------
-- Two roles carry the model (created here when missing; roles are cluster-wide, so a
-- second database reuses them):
--   * entitlements_api: the roles PostgREST/Supabase switch to (anon, authenticated,
--     service_role by default). Only they, superusers and the extension owner are trusted
--     to say who the user is (request.jwt.claims, entitlements.user_id).
--   * entitlements_admin: a database role that has its privileges administers everything.
-- Who gets them is decided with the privileges, at the end.
do $$
begin
    if not exists (select 1 from pg_catalog.pg_roles where rolname = 'entitlements_api') then
        begin
            create role entitlements_api nologin;
        exception when unique_violation or duplicate_object then
            null;  -- created at the same moment by an install into another database
        end;
    end if;
    if not exists (select 1 from pg_catalog.pg_roles where rolname = 'entitlements_admin') then
        begin
            create role entitlements_admin nologin;
        exception when unique_violation or duplicate_object then
            null;  -- created at the same moment by an install into another database
        end;
    end if;
end
$$;

-- Time (sql/schema.sql, issue #12) -------------------------------------------------------
-- The test clock: every instant the engine takes as "now" comes from these two.
create function entitlements.now()
returns timestamptz language c stable parallel safe
as 'MODULE_PATHNAME', 'clock_now_wrapper';
comment on function entitlements.now() is
    'now(), or the test clock (entitlements.clock) when it is set.';

create function entitlements._statement_now()
returns timestamptz language c stable parallel safe
as 'MODULE_PATHNAME', 'clock_statement_now_wrapper';

-- Refusal signals (extension/src/monitoring/signals.rs), before the SQL that calls them.
create function entitlements._note_refusal(kind text, subject text, detail text)
returns void language c volatile parallel unsafe
as 'MODULE_PATHNAME', 'note_refusal_wrapper';
create function entitlements._note_permission_refused(action text)
returns void language c volatile parallel unsafe
as 'MODULE_PATHNAME', 'note_permission_refused_wrapper';
create function entitlements._principal()
returns text language c stable parallel safe strict
as 'MODULE_PATHNAME', 'principal_sql_wrapper';

-- Column defaults follow the clock.
alter table entitlements.features alter column created_at set default entitlements.now();
alter table entitlements.features alter column updated_at set default entitlements.now();
alter table entitlements.plans alter column created_at set default entitlements.now();
alter table entitlements.plans alter column updated_at set default entitlements.now();
alter table entitlements.customers alter column created_at set default entitlements.now();
alter table entitlements.customers alter column updated_at set default entitlements.now();
alter table entitlements.subscriptions alter column status_changed_at set default entitlements.now();
alter table entitlements.subscriptions alter column created_at set default entitlements.now();
alter table entitlements.subscriptions alter column updated_at set default entitlements.now();
alter table entitlements.members alter column created_at set default entitlements.now();
alter table entitlements.grants alter column starts_at set default entitlements.now();
alter table entitlements.grants alter column created_at set default entitlements.now();
alter table entitlements.admins alter column created_at set default entitlements.now();
alter table entitlements.stripe_events alter column received_at set default entitlements.now();
alter table entitlements.stripe_events alter column next_attempt_at set default entitlements.now();
alter table entitlements.stripe_subscriptions alter column updated_at set default entitlements.now();
alter table entitlements.usage_idempotency alter column created_at set default entitlements.now();

-- Usage cost (issue #12), before any write to these tables (their triggers are deferred) ----
alter table entitlements.features
    add column unit_cost_cents numeric check (unit_cost_cents >= 0 and unit_cost_cents <= 1e12);
-- Added to the parent, so to every partition too.
alter table entitlements.usage_ledger add column usage_cost_cents numeric, add column metadata jsonb;

-- Checked input (sql/schema.sql) -----------------------------------------------------
-- Every jsonb and instant the rules read is checked where it is written, by these
-- functions in CHECK constraints (added below, once the functions exist).

-- A JSON value the readers take: nested at most 32 deep, every number within
-- +-1e15 (exact as f64; extension/src/catalog/mod.rs MAX_NUMBER), at most 256 kB.
create or replace function entitlements._valid_json(value jsonb, what text)
returns boolean language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
    v_problem text;
begin
    if value is null then
        return true;
    end if;
    if pg_column_size(value) > 262144 then
        raise exception '%: the value is larger than 256 kB', what using errcode = '22023';
    end if;
    with recursive walk(path, v, depth) as (
        select '$'::text, value, 1
        union all
        select w.path || e.step, e.v, w.depth + 1
          from walk w
          cross join lateral (
              select '.' || k as step, x as v
                from jsonb_each(case when jsonb_typeof(w.v) = 'object' then w.v end) as o(k, x)
              union all
              select '[' || (i - 1) || ']', x
                from jsonb_array_elements(case when jsonb_typeof(w.v) = 'array' then w.v end)
                     with ordinality as a(x, i)) e
         where w.depth <= 32)
    select case when w.depth > 32 then w.path || ': nested deeper than 32 levels'
                else w.path || ': number ' || left(w.v::text, 40) || ' is outside -1e15..1e15' end
      into v_problem
      from walk w
     where w.depth > 32
        or (jsonb_typeof(w.v) = 'number' and abs(w.v::text::numeric) > 1e15)
     limit 1;
    if v_problem is not null then
        raise exception '%: %', what, v_problem using errcode = '22023';
    end if;
    return true;
end
$$;

-- An instant is finite: "no end" is NULL, never 'infinity'.
create or replace function entitlements._finite(value timestamptz, what text)
returns boolean language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
    if not isfinite(value) then
        raise exception '% must be a finite instant, got %', what, value
            using errcode = '22023', hint = 'Use NULL for "no end".';
    end if;
    return true;
end
$$;

-- Security (sql/security/roles.sql) --------------------------------------------------------
-- Admins by role (entitlements_admin) instead of service_role; _customer_tenant and
-- _customer_kind (definers that told anyone a customer's tenant and kind) are replaced by
-- questions about the caller only. They are dropped further down, once nothing calls them.

-- Rules written once, in Rust (issue 9): role-level privilege (superuser/BYPASSRLS, the
-- extension owner, or entitlements_admin) and "may act for a customer" were SQL here and
-- Rust in the checks; now SQL calls the Rust (security/access.rs). The parameter of
-- _role_is_privileged is renamed, so it is dropped first (nothing depends on it).
drop function entitlements._role_is_privileged(oid);
CREATE  FUNCTION "_role_is_privileged"(
	"role" oid /* pg_sys :: Oid */
) RETURNS bool /* bool */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'role_is_privileged_sql_wrapper';
CREATE  FUNCTION "_role_is_rls_exempt"(
	"role" oid /* pg_sys :: Oid */
) RETURNS bool /* bool */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'role_is_rls_exempt_sql_wrapper';
CREATE OR REPLACE FUNCTION "_is_privileged_role"() RETURNS bool /* bool */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'current_role_is_privileged_wrapper';
-- The RLS policies keep calling it by the same signature.
CREATE OR REPLACE FUNCTION "can_see_customer"(
	"customer" uuid /* Uuid */
) RETURNS bool /* bool */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'can_see_customer_wrapper';

-- Is the calling user a listed admin of `customer`'s tenant (or a global one)? Answers
-- about the caller only; the tenant itself stays hidden.
create or replace function entitlements._is_listed_admin_of(customer uuid)
returns boolean language sql stable parallel safe security definer
set search_path = pg_catalog, pg_temp
as $$ select entitlements._is_listed_admin((select c.tenant_id from entitlements.customers c where c.id = customer)) $$;

-- Admin of the tenant a customer belongs to (or global admin).
create or replace function entitlements.is_admin_of(customer uuid)
returns boolean language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$ select entitlements._is_privileged_role() or entitlements._is_listed_admin_of(customer) $$;

-- Raise 42501 unless the caller is an admin (of `tenant`, when given).
create or replace function entitlements._require_admin(action text, tenant uuid default null)
returns void language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$ begin perform entitlements._require(entitlements.is_admin(tenant), action); end $$;

-- Raise 42501 unless the real caller is an admin: for SECURITY DEFINER functions, where
-- current_user is the owner and _require_admin would always pass. The role asked about is
-- the one outside definer functions (SET ROLE's), its user id as identity.rs trusts it.
create or replace function entitlements._require_caller_admin(action text)
returns void language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require(
        entitlements._role_is_privileged(entitlements._outer_role()) or entitlements._is_listed_admin(null), action);
end
$$;

-- Raise 42501 unless the caller administers `customer` (globally or through its tenant).
create or replace function entitlements._require_admin_of(action text, customer uuid)
returns void language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require(entitlements.is_admin_of(customer), action,
                                  'an entitlements admin of this customer');
end
$$;

-- Audit (sql/audit/audit.sql) ---------------------------------------------------------------

-- pg_restore loads the extension's tables with `row_security = off` after CREATE EXTENSION
-- has attached these triggers; they must not fire then (they would audit the restore,
-- collide with the restored audit ids, and reset the restored timestamps). Only roles RLS
-- does not bind (superusers, BYPASSRLS, the tables' owner) can write our tables with
-- row_security off, and they could disable the triggers anyway.
create or replace function entitlements._bulk_loading()
returns boolean language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    -- The role outside any SECURITY DEFINER function: inside the definer triggers
    -- current_user is always the owner and would pass.
    select current_setting('row_security') = 'off'
       and entitlements._role_is_rls_exempt(entitlements._outer_role())
$$;

-- Is `relid` one of the extension's own tables (created by its scripts)? Their columns
-- have only built-in types.
create or replace function entitlements._is_extension_table(relid oid)
returns boolean language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select exists (select 1 from pg_depend d
                    where d.classid = 'pg_class'::regclass and d.objid = relid and d.objsubid = 0
                      and d.refclassid = 'pg_extension'::regclass and d.deptype = 'e'
                      and d.refobjid = (select e.oid from pg_extension e where e.extname = 'pg_entitlements'))
$$;

-- A SECURITY DEFINER trigger function runs only on the extension's own tables: the
-- values of any other table may have types whose casts and output functions someone
-- else wrote, and they would run as the definer. EXECUTE on trigger functions is also
-- revoked (privileges.sql), so nobody else can attach them.
create or replace function entitlements._require_own_table(relid oid, trigger_function text)
returns void language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    if not entitlements._is_extension_table(relid) then
        raise exception 'permission denied: % runs only on tables of the entitlements extension', trigger_function
            using errcode = '42501';
    end if;
end
$$;

-- Row trigger of the extension's own tables. TG_ARGV holds the primary key columns, so
-- the row key is readable.
create or replace function entitlements._audit_row()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_old jsonb;
    v_new jsonb;
    v_key text;
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._audit_row');
    if entitlements._bulk_loading() then
        return null;
    end if;
    if tg_op in ('UPDATE', 'DELETE') then v_old := to_jsonb(old); end if;
    if tg_op in ('INSERT', 'UPDATE') then v_new := to_jsonb(new); end if;
    if tg_op = 'UPDATE' and v_old = v_new then
        return null;
    end if;
    -- The row key: the values of the trigger's arguments (the key columns), comma-joined.
    v_key := (select string_agg(coalesce(v_new, v_old) ->> k.col, ',' order by k.n) from unnest(tg_argv) with ordinality k(col, n));
    insert into entitlements.audit_log (actor, actor_role, action, table_name, row_key, old_values, new_values, reason)
    values (entitlements.current_user_id(), entitlements._actor_role(), lower(tg_op),
            format('%I.%I', tg_table_schema, tg_table_name), v_key, v_old, v_new,
            nullif(current_setting('entitlements.reason', true), ''));
    return null;
end
$$;

-- Row trigger of app tables (enable_audit). It runs as whoever writes the row, so the
-- row's values (of any type the table's owner chose) are turned into jsonb with that
-- role's rights; only plain jsonb and text reach the definer that appends the row.
create or replace function entitlements._audit_app_row()
returns trigger language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_old jsonb;
    v_new jsonb;
    v_key text;
begin
    if tg_op in ('UPDATE', 'DELETE') then v_old := to_jsonb(old); end if;
    if tg_op in ('INSERT', 'UPDATE') then v_new := to_jsonb(new); end if;
    if tg_op = 'UPDATE' and v_old = v_new then
        return null;
    end if;
    -- The row key: the values of the trigger's arguments (the key columns), comma-joined.
    v_key := (select string_agg(coalesce(v_new, v_old) ->> k.col, ',' order by k.n) from unnest(tg_argv) with ordinality k(col, n));
    perform entitlements._audit_append(tg_relid, lower(tg_op), v_key, v_old, v_new);
    return null;
end
$$;

-- Appends one audit row for an app table. Callable only from a trigger, for a table
-- that enable_audit attached _audit_app_row to and that is not one of the extension's;
-- actor, role, time and transaction are its own, never the caller's word. (A role that
-- writes its own trigger could still add rows naming such a table; they carry its role.)
create or replace function entitlements._audit_append(target oid, action text, row_key text, old_values jsonb, new_values jsonb)
returns void language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_name text;
begin
    if pg_trigger_depth() < 1 or action is null or action not in ('insert', 'update', 'delete') then
        raise exception 'permission denied: entitlements._audit_append is called by the audit trigger only'
            using errcode = '42501';
    end if;
    select format('%I.%I', n.nspname, c.relname) into v_name
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where c.oid = target
       and not entitlements._is_extension_table(c.oid)
       and exists (select 1 from pg_trigger t
                    where t.tgrelid = c.oid and t.tgname = 'entitlements_audit'
                      and t.tgfoid = 'entitlements._audit_app_row()'::regprocedure);
    if v_name is null then
        raise exception 'permission denied: table % is not audited through entitlements.enable_audit', target
            using errcode = '42501';
    end if;
    insert into entitlements.audit_log (actor, actor_role, action, table_name, row_key, old_values, new_values, reason)
    values (entitlements.current_user_id(), entitlements._actor_role(), action, v_name, row_key,
            old_values, new_values, nullif(current_setting('entitlements.reason', true), ''));
end
$$;

-- The audit log stays append-only, but for the retention task (sql/maintenance/retention.sql), which
-- deletes rows older than the configured retention as the owner. (The triggers that run it
-- are 0.1.0's and stay.)
create or replace function entitlements._audit_log_is_append_only()
returns trigger language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    -- The retention task (maintenance/retention.sql, SECURITY DEFINER, so running as the owner) deletes
    -- rows older than the configured retention; nothing else may.
    if tg_op = 'DELETE' and current_setting('entitlements.audit_retention', true) = 'on'
       and exists (select 1 from pg_roles r where r.rolname = current_user
                      and r.oid = (select n.nspowner from pg_namespace n where n.nspname = 'entitlements')) then
        return old;
    end if;
    if tg_op = 'UPDATE' and entitlements._erasing() then
        if (new.id, new.at, new.txid, new.actor, new.actor_role, new.action, new.table_name)
           is not distinct from (old.id, old.at, old.txid, old.actor, old.actor_role, old.action, old.table_name) then
            return new;
        end if;
    end if;
    raise exception 'entitlements.audit_log is append-only: % is not allowed', lower(tg_op)
        using errcode = '42501';
end
$$;

-- Attach the audit trigger to a table (idempotent). The caller must own the table (or
-- have TRIGGER on it). App tables get the invoker trigger, the extension's own the definer.
create or replace function entitlements.enable_audit(target regclass)
returns void language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_keys text;
begin
    if target is null then
        raise exception 'target must not be NULL' using errcode = '22004';
    end if;
    if target = 'entitlements.audit_log'::regclass then
        raise exception 'the audit log is not audited into itself' using errcode = '22023';
    end if;
    select string_agg(quote_literal(a.attname), ', ' order by k.ord)
      into v_keys
      from pg_index i
      cross join lateral unnest(i.indkey) with ordinality as k(attnum, ord)
      join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
     where i.indrelid = target and i.indisprimary;
    if exists (select 1 from pg_trigger t where t.tgrelid = target and t.tgname = 'entitlements_audit') then
        execute format('drop trigger entitlements_audit on %s', target);
    end if;
    execute format('create trigger entitlements_audit after insert or update or delete on %s '
                   'for each row execute function %s(%s)', target,
                   case when entitlements._is_extension_table(target)
                        then 'entitlements._audit_row' else 'entitlements._audit_app_row' end,
                   coalesce(v_keys, ''));
end
$$;

-- App tables audited by 0.1.0's enable_audit run the definer _audit_row, which 0.2.0
-- refuses outside the extension's own tables: re-point each such trigger to the invoker
-- _audit_app_row with the same arguments (the key columns), events, WHEN clause, enabled
-- state and comment, as enable_audit in 0.2.0 would attach it. (Under the script's
-- search_path pg_get_triggerdef deparses names so that they resolve the same here.)
do $$
declare
    t record;
begin
    for t in
        select tg.tgname, tg.tgrelid::regclass as rel, tg.tgenabled, pg_get_triggerdef(tg.oid) as def,
               obj_description(tg.oid, 'pg_trigger') as comment
          from pg_trigger tg
         where tg.tgfoid = 'entitlements._audit_row()'::regprocedure
           and tg.tgparentid = 0 and not tg.tgisinternal
           and not entitlements._is_extension_table(tg.tgrelid)
         order by tg.oid
    loop
        execute format('drop trigger %I on %s', t.tgname, t.rel);
        execute regexp_replace(t.def, ' EXECUTE FUNCTION (entitlements\.)?_audit_row\(',
                               ' EXECUTE FUNCTION entitlements._audit_app_row(');
        case t.tgenabled
            when 'D' then execute format('alter table %s disable trigger %I', t.rel, t.tgname);
            when 'R' then execute format('alter table %s enable replica trigger %I', t.rel, t.tgname);
            when 'A' then execute format('alter table %s enable always trigger %I', t.rel, t.tgname);
            else null;
        end case;
        if t.comment is not null then
            execute format('comment on trigger %I on %s is %L', t.tgname, t.rel, t.comment);
        end if;
    end loop;
end
$$;

-- Cache (sql/checks/cache.sql) ---------------------------------------------------------------

-- Deferred to commit: the version row is locked only while committing, so writers in
-- different transactions do not queue behind each other for their whole duration, and
-- the bump becomes visible atomically with the change.
create or replace function entitlements._cache_bump()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._cache_bump');
    update entitlements.cache_version
       set version = version + 1, bumped_by = txid_current()
     where bumped_by is distinct from txid_current();
    if found then
        -- Whatever changed may change a server's desired state: wake the provisioner.
        perform pg_notify('entitlements_provision', '');
    end if;
    return null;
end
$$;

-- Catalog (sql/catalog/catalog.sql) -----------------------------------------------------------

-- A store's catalog (issue #12) takes a tenant: the one-argument form goes.
drop function entitlements.apply_catalog(jsonb);
create function entitlements.apply_catalog(catalog jsonb, tenant uuid default null)
returns jsonb language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_doc jsonb;
    v_keys text[];
    v_default text;
    v_features jsonb;
    v_item jsonb;
    v_outcome text;
    v_foreign text;
    p_created text[] := '{}'::text[];
    p_updated text[] := '{}'::text[];
    p_deactivated text[] := '{}'::text[];
begin
    if tenant is null then
        perform entitlements._require_admin('apply_catalog');
    else
        perform entitlements._require_admin('apply_catalog for a store', tenant);
    end if;
    if catalog is null then
        raise exception 'catalog must not be NULL' using errcode = '22004';
    end if;
    perform entitlements._valid_json(catalog, 'catalog');
    -- One catalog change at a time; readers (checks) are not blocked.
    lock table entitlements.plans in share row exclusive mode;
    -- Stripe prices are checked once the whole document is written (below).
    set constraints entitlements.plans_stripe_prices deferred;
    v_doc := entitlements._normalize_catalog(
        catalog, (select coalesce(jsonb_object_agg(f.key, f.kind), '{}') from entitlements.features f));
    perform set_config('entitlements.reason', 'apply_catalog', true);

    select coalesce(array_agg(p ->> 'key'), '{}') into v_keys from jsonb_array_elements(v_doc -> 'plans') p;
    select p ->> 'key' into v_default from jsonb_array_elements(v_doc -> 'plans') p where (p ->> 'is_default')::boolean;
    -- A document is the whole catalog of its owner (everyone's, or one store's): it neither
    -- writes nor retires another owner's plans.
    select string_agg(p.key, ', ' order by p.key) into v_foreign
      from entitlements.plans p where p.key = any (v_keys) and p.tenant_id is distinct from tenant;
    if v_foreign is not null then
        raise exception 'permission denied: plan(s) % belong to %', v_foreign,
            case when tenant is null then 'a store' else 'another owner' end
            using errcode = '42501', hint = 'A store''s plans are applied with apply_catalog(catalog, tenant).';
    end if;

    if tenant is null then
        v_features := entitlements._catalog_apply_features(v_doc -> 'features', v_keys);
    else
        -- A store sells the features there are; only a global admin changes them.
        if exists (select 1 from jsonb_array_elements(v_doc -> 'features') x
                    where not exists (select 1 from entitlements.features f
                                       where f.key = x ->> 'key' and f.kind = x ->> 'kind'
                                         and f.unit is not distinct from x ->> 'unit'
                                         and f.unit_cost_cents is not distinct from (x ->> 'unit_cost_cents')::numeric
                                         and f.thresholds is not distinct from
                                             case when jsonb_typeof(x -> 'thresholds') = 'array'
                                                  then array(select t::numeric from jsonb_array_elements_text(x -> 'thresholds') t) end)) then
            raise exception 'permission denied: a store''s catalog uses the features as they are'
                using errcode = '42501', hint = 'Features are created and changed by a global admin''s apply_catalog.';
        end if;
        if v_default is not null then
            raise exception 'invalid catalog: a store''s plan cannot be the default plan ("%")', v_default
                using errcode = '22023';
        end if;
        v_features := jsonb_build_object('created', '[]'::jsonb, 'updated', '[]'::jsonb);
    end if;

    -- The default moves before plans are written, so the single-default index holds.
    with moved as (
        update entitlements.plans p set is_default = false, updated_at = entitlements.now()
         where tenant is null and p.is_default and p.key is distinct from v_default and p.key = any (v_keys)
        returning p.key)
    select coalesce(array_agg(key), '{}') into p_updated from moved;

    -- The owner's plans missing from the document: inactive, never deleted; subscribers keep them.
    with gone as (
        update entitlements.plans p set active = false, is_default = false, updated_at = entitlements.now()
         where p.active and p.key <> all (v_keys) and p.tenant_id is not distinct from tenant
        returning p.key)
    select coalesce(array_agg(key order by key), '{}') into p_deactivated from gone;

    for v_item in select * from jsonb_array_elements(v_doc -> 'plans') loop
        v_outcome := entitlements._catalog_apply_plan(v_item || jsonb_build_object('tenant_id', tenant));
        if v_outcome = 'created' then
            p_created := p_created || (v_item ->> 'key');
        elsif v_outcome = 'updated' and not ((v_item ->> 'key') = any (p_updated)) then
            p_updated := p_updated || (v_item ->> 'key');
        end if;
    end loop;

    perform entitlements._catalog_check_stripe_prices();
    set constraints entitlements.plans_stripe_prices immediate;
    perform set_config('entitlements.reason', '', true);
    return jsonb_build_object(
        'changed', jsonb_array_length(v_features -> 'created') + jsonb_array_length(v_features -> 'updated')
                   + cardinality(p_created) + cardinality(p_updated) + cardinality(p_deactivated) > 0,
        'features', v_features,
        'plans', jsonb_build_object('created', to_jsonb(p_created), 'updated', to_jsonb(p_updated),
                                    'deactivated', to_jsonb(p_deactivated)));
end
$$;
comment on function entitlements.apply_catalog(jsonb, uuid) is
    'Idempotent upsert of features and plans from one document; returns what changed. Plans missing from the document become inactive. With a tenant: that store''s plans (its admins), on the existing features.';

-- Subscriptions and members (sql/subscriptions/) -----------------------------------

create or replace function entitlements._touch_subscription()
returns trigger language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if entitlements._bulk_loading() then
        return new; -- pg_restore: keep the restored instants
    end if;
    new.updated_at := entitlements.now();
    if tg_op = 'INSERT' or new.status is distinct from old.status then
        -- The past_due grace period counts from here.
        new.status_changed_at := entitlements.now();
    end if;
    return new;
end
$$;

create or replace function entitlements.subscribe(
    customer uuid,
    plan text,
    status text default 'active',
    period_end timestamptz default null,
    trial_end timestamptz default null,
    quantity integer default 1)
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_plan entitlements.plans;
    v_trial_end timestamptz := trial_end;
    v_id uuid;
begin
    perform entitlements._require_not_null(customer, 'customer');
    perform entitlements._require_not_null(plan, 'plan');
    perform entitlements._require_not_null(status, 'status');
    select * into v_plan from entitlements.plans p where p.key = subscribe.plan;
    -- A store's admins may also subscribe a new customer to the store's plans (below, once
    -- the customer is the store's); anything else is for an admin of the customer.
    if v_plan.tenant_id is null then
        perform entitlements._require_admin_of('subscribe', customer);
    end if;
    if v_plan.key is null then
        perform entitlements._raise_unknown_plan(plan);
    end if;
    if not v_plan.active then
        raise exception 'plan "%" is no longer offered', plan
            using errcode = '22023', hint = 'Existing subscribers keep it; new subscriptions need an active plan.';
    end if;
    if not coalesce(status = any (entitlements.subscription_statuses()), false) then
        raise exception 'unknown subscription status "%"', status
            using errcode = '22023',
                  hint = 'one of: ' || array_to_string(entitlements.subscription_statuses(), ', ');
    end if;
    if quantity is null or quantity < 1 or quantity > 1000000 then
        raise exception 'quantity must be from 1 to 1000000, got %', coalesce(quantity::text, 'NULL') using errcode = '22023';
    end if;
    perform entitlements._finite(period_end, 'period_end');
    perform entitlements._finite(trial_end, 'trial_end');
    if period_end <= entitlements.now() then
        raise exception 'period_end (%) must be in the future', period_end using errcode = '22023';
    end if;
    if trial_end <= entitlements.now() then
        raise exception 'trial_end (%) must be in the future', trial_end using errcode = '22023';
    end if;
    if status = 'trialing' and v_trial_end is null and v_plan.trial_days > 0 then
        v_trial_end := entitlements.now() + make_interval(days => v_plan.trial_days);
    end if;

    -- A new customer of a store's plan is that store's customer (its admins may create it).
    -- (ON CONFLICT would hold the new row to the read policy, which a row not yet written
    -- cannot pass; a customer the caller cannot see is left to the checks below.)
    if not exists (select 1 from entitlements.customers c where c.id = customer) then
        begin
            insert into entitlements.customers (id, tenant_id) values (customer, v_plan.tenant_id);
        exception when unique_violation then
            null;
        end;
    end if;
    if v_plan.tenant_id is not null then
        -- (Checked above for the other plans; a store's plan for another store's customer is
        -- refused by _check_subscription_plan.)
        perform entitlements._require_admin_of('subscribe', customer);
    end if;
    insert into entitlements.subscriptions (customer_id, plan_key, status, quantity, current_period_start,
                                            current_period_end, trial_end, canceled_at, ended_at)
    values (customer, plan, status, quantity, entitlements.now(), period_end, v_trial_end,
            case when status = 'canceled' then entitlements.now() end,
            case when status in ('canceled', 'incomplete_expired') then entitlements.now() end)
    returning id into v_id;
    return v_id;
end
$$;
comment on function entitlements.subscribe(uuid, text, text, timestamptz, timestamptz, integer) is
    'Create a manual (non-Stripe) subscription; creates the customer if missing. Admins only.';

create or replace function entitlements._subscription_for_update(subscription uuid)
returns entitlements.subscriptions language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_sub entitlements.subscriptions;
begin
    perform entitlements._require_not_null(subscription, 'subscription');
    select * into v_sub from entitlements.subscriptions s where s.id = subscription for update;
    if not found then
        -- Row security lets a customer read its subscription but not lock it for a change:
        -- that is a refusal, not a missing row.
        if exists (select 1 from entitlements.subscriptions s where s.id = subscription) then
            raise exception 'permission denied: changing a subscription requires an entitlements admin of this customer'
                using errcode = '42501';
        end if;
        raise exception 'subscription % does not exist', subscription using errcode = 'P0002';
    end if;
    perform entitlements._require_admin_of('changing a subscription', v_sub.customer_id);
    return v_sub;
end
$$;

create or replace function entitlements.link_stripe_customer(customer uuid, stripe_customer_id text)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_not_null(customer, 'customer');
    if stripe_customer_id is null or stripe_customer_id !~ '^cus_[A-Za-z0-9]+$' then
        raise exception 'not a Stripe customer id: %', coalesce(stripe_customer_id, 'NULL') using errcode = '22023';
    end if;
    perform entitlements._require_admin_of('link_stripe_customer', customer);
    -- UPDATE first: an INSERT ... ON CONFLICT is held to the INSERT policy even when it
    -- updates, and a tenant admin may not insert a customer without a tenant.
    update entitlements.customers c set stripe_customer_id = link_stripe_customer.stripe_customer_id, updated_at = entitlements.now()
     where c.id = customer and c.stripe_customer_id is distinct from link_stripe_customer.stripe_customer_id;
    if not found and not exists (select 1 from entitlements.customers c where c.id = customer) then
        insert into entitlements.customers (id, stripe_customer_id) values (customer, stripe_customer_id);
    end if;
end
$$;

-- Membership rules, enforced by trigger so a direct INSERT/UPDATE/DELETE by an
-- organization admin is held to them too:
--   * a member is a user, never an organization;
--   * only an owner of the organization (or an entitlements admin) makes, demotes or
--     removes an owner;
--   * seats: the organization's `seats` limit. Whoever takes a seat (an insert, or an
--     update that moves a member to another organization) rewrites the organization's
--     customer row: under READ COMMITTED the second of two concurrent writers waits for
--     the first to commit and counts with a fresh snapshot; under REPEATABLE READ and
--     SERIALIZABLE it gets 40001 and retries, so nobody counts on a stale snapshot.
-- Is the real caller (this runs inside the definer trigger below, so not current_user) an
-- owner of `org`, or an entitlements admin of it?
create function entitlements._caller_owns_organization(org uuid)
returns boolean language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select entitlements._role_is_privileged(entitlements._outer_role())
        or entitlements._is_listed_admin_of(org)
        or coalesce(entitlements._my_org_role(org) = 'owner', false)
$$;

create or replace function entitlements._enforce_seats()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_limit double precision;
    v_used bigint;
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._enforce_seats');
    if entitlements._bulk_loading() then
        return coalesce(new, old); -- pg_restore: the restored members were within their seats
    end if;
    -- A membership's user never changes (that would hand someone else's seat, or an
    -- owner's, to the writer): remove the member and add the other instead.
    if tg_op = 'UPDATE' and new.user_id <> old.user_id then
        raise exception 'a membership''s user cannot change; remove the member and add the other'
            using errcode = '22023';
    end if;
    -- Taking an owner out of an organization (delete, demote, move away) and making one
    -- (insert, promote, move in) are each for an owner of that organization.
    if tg_op <> 'INSERT' and old.role = 'owner'
       and (tg_op = 'DELETE' or new.role <> 'owner' or new.organization_id <> old.organization_id)
       and not entitlements._caller_owns_organization(old.organization_id) then
        raise exception 'permission denied: only an owner of the organization demotes or removes an owner'
            using errcode = '42501';
    end if;
    if tg_op <> 'DELETE' and new.role = 'owner'
       and (tg_op = 'INSERT' or old.role <> 'owner' or new.organization_id <> old.organization_id)
       and not entitlements._caller_owns_organization(new.organization_id) then
        raise exception 'permission denied: only an owner of the organization makes an owner'
            using errcode = '42501';
    end if;
    if tg_op = 'DELETE' then
        return old;
    end if;
    if exists (select 1 from entitlements.customers c where c.id = new.user_id and c.kind = 'organization') then
        raise exception 'customer % is an organization and cannot be a member', new.user_id using errcode = '22023';
    end if;
    -- Takes no seat: a role change, or a member of this organization already.
    if tg_op = 'UPDATE' and new.organization_id = old.organization_id then
        return new;
    end if;
    if not exists (select 1 from entitlements.features f where f.key = 'seats') then
        return new; -- a catalog without seats does not limit members
    end if;
    -- The row first, then the advisory lock (which correct_entitlements takes too): add_member
    -- may have locked the row already when it made the customer an organization, and taking
    -- them the other way round would deadlock with it.
    update entitlements.customers c set updated_at = c.updated_at where c.id = new.organization_id;
    perform pg_advisory_xact_lock('entitlements.members'::regclass::oid::integer, hashtext(new.organization_id::text));
    if exists (select 1 from entitlements.members m
                where m.organization_id = new.organization_id and m.user_id = new.user_id) then
        return new;
    end if;
    -- A new statement, so (under READ COMMITTED) a new snapshot: members committed while
    -- we waited are counted.
    select count(*) into v_used from entitlements.members m where m.organization_id = new.organization_id;
    v_limit := entitlements._feature_limit(new.organization_id, 'seats');
    if v_limit is not null and v_used + 1 > v_limit then
        raise exception 'no free seat: organization % uses % of % seats', new.organization_id, v_used, v_limit
            using errcode = 'PT403',
                  detail = 'feature: seats',
                  hint = 'Upgrade the plan or buy more seats, or remove a member first.';
    end if;
    return new;
end
$$;

-- The membership rules now hold for UPDATE and DELETE too.
drop trigger members_enforce_seats on entitlements.members;
create trigger members_enforce_seats before insert or update or delete on entitlements.members
    for each row execute function entitlements._enforce_seats();

-- Adds a member, or changes an existing member's role (which takes no seat).
create or replace function entitlements.add_member(organization uuid, user_id uuid, role text default 'member')
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_not_null(organization, 'organization');
    perform entitlements._require_not_null(user_id, 'user_id');
    if role is null or role not in ('owner', 'admin', 'member') then
        raise exception 'unknown member role "%"', role using errcode = '22023', hint = 'one of: owner, admin, member';
    end if;
    if organization = user_id then
        raise exception 'an organization cannot be its own member' using errcode = '22023';
    end if;
    if not entitlements.can_manage_organization(organization) then
        raise exception 'permission denied: only organization owners/admins and entitlements admins manage members'
            using errcode = '42501';
    end if;
    -- Creating an organization (or turning a customer into one) is for admins (RLS); that a
    -- user id is not an organization is checked by the trigger above.
    if not exists (select 1 from entitlements.customers c where c.id = organization and c.kind = 'organization') then
        insert into entitlements.customers as c (id, kind) values (organization, 'organization')
        on conflict (id) do update set kind = 'organization', updated_at = entitlements.now();
    end if;
    insert into entitlements.members as m (organization_id, user_id, role) values (organization, user_id, role)
    on conflict on constraint members_pkey do update set role = excluded.role where m.role <> excluded.role;
end
$$;

-- Stripe (sql/stripe/) ------------------------------------------------------------

-- checkout.session.completed (and customer.created/updated): link the Stripe customer to the
-- entitlements customer named by metadata.entitlements_customer_id or client_reference_id.
create or replace function entitlements._stripe_apply_link(object jsonb)
returns text language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_stripe_customer text := case when object ->> 'object' = 'customer' then object ->> 'id'
                                   else entitlements._stripe_id(object -> 'customer') end;
    v_ref text := coalesce(object #>> '{metadata,entitlements_customer_id}', object ->> 'client_reference_id');
    v_customer uuid := entitlements._stripe_uuid(v_ref);
begin
    if v_stripe_customer is null or v_customer is null then
        return 'ignored'; -- a guest checkout, or a Stripe customer this app does not know
    end if;
    if exists (select 1 from entitlements.customers c
                where c.id = v_customer and c.stripe_customer_id = v_stripe_customer) then
        return 'unchanged';
    end if;
    -- An event never moves a link: whoever opens a Checkout (a Payment Link takes
    -- client_reference_id from its URL) could otherwise tie someone else's customer to their
    -- Stripe customer, or take over another's. Relinking is link_stripe_customer's, an admin's.
    if exists (select 1 from entitlements.customers c
                where (c.id = v_customer and c.stripe_customer_id is not null)
                   or (c.stripe_customer_id = v_stripe_customer and c.id <> v_customer)) then
        raise warning 'Stripe customer % not linked to %: one of them is linked already', v_stripe_customer, v_customer;
        return 'conflict';
    end if;
    perform entitlements._stripe_link(v_customer, v_stripe_customer);
    return 'linked';
end
$$;

-- Dead letters: an event that failed settings.stripe_max_attempts times gets dead_at and
-- is not retried until an admin calls stripe_retry_event. The events already stored are
-- not dead (NULL); the pending index leaves dead ones out. The column comes last, as in
-- CREATE TABLE, and its CHECK gets the name CREATE TABLE gives it.
alter table entitlements.stripe_events
    add column dead_at timestamptz check (entitlements._finite(dead_at, 'dead_at'));
drop index entitlements.stripe_events_pending;
create index stripe_events_pending on entitlements.stripe_events (next_attempt_at, created)
    where applied_at is null and dead_at is null;

-- Events due to be applied, oldest first, with the Stripe subscription each is about.
create or replace function entitlements.stripe_pending_events(max_events integer default 100)
returns table (id text, type text, received_at timestamptz, stripe_subscription_id text)
language sql stable
set search_path = pg_catalog, pg_temp
begin atomic
    select e.id, e.type, e.received_at, entitlements._stripe_event_subscription(e.payload)
      from entitlements.stripe_events e
     where e.applied_at is null and e.dead_at is null and e.next_attempt_at <= entitlements.now()
     order by e.created, e.received_at, e.id
     limit max_events;
end;

-- Record a failed attempt; the next one waits 2^attempts seconds, at most an hour. After
-- settings.stripe_max_attempts failures the event is a dead letter (dead_at set, NULL
-- returned): it is not retried until an admin calls stripe_retry_event.
create or replace function entitlements.stripe_event_failed(event_id text, error text)
returns timestamptz language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_next timestamptz;
    v_max integer := (entitlements._settings()).stripe_max_attempts;
begin
    perform entitlements._stripe_require_admin('stripe_event_failed');
    update entitlements.stripe_events e
       set attempts = e.attempts + 1, last_error = left(error, 2000),
           next_attempt_at = entitlements.now() + least(interval '1 hour', interval '1 second' * power(2, least(e.attempts, 12))),
           dead_at = case when e.attempts + 1 >= v_max then entitlements.now() end
     where e.id = event_id and e.applied_at is null
    returning case when e.dead_at is null then e.next_attempt_at end into v_next;
    return v_next;
end
$$;

-- Give a dead letter (or any unapplied event) a fresh start: retried at once, with its
-- attempts counted from zero.
create or replace function entitlements.stripe_retry_event(event_id text)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._stripe_require_admin('stripe_retry_event');
    perform entitlements._require_not_null(event_id, 'event_id');
    update entitlements.stripe_events e
       set dead_at = null, attempts = 0, next_attempt_at = entitlements.now()
     where e.id = event_id and e.applied_at is null;
    if not found then
        if not exists (select 1 from entitlements.stripe_events e where e.id = event_id) then
            raise exception 'Stripe event % is not stored', event_id using errcode = 'P0002';
        end if;
        return false; -- applied already
    end if;
    return true; -- the applier polls and takes it within a second
end
$$;
comment on function entitlements.stripe_retry_event(text) is
    'Retry a dead-lettered Stripe event now, attempts counted from zero. Admins only.';

-- Metadata never moves a Stripe link.
create or replace function entitlements._stripe_customer(stripe_customer_id text, metadata jsonb)
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_id uuid;
    v_meta text := metadata ->> 'entitlements_customer_id';
begin
    if stripe_customer_id is null then
        return null;
    end if;
    select c.id into v_id from entitlements.customers c where c.stripe_customer_id = _stripe_customer.stripe_customer_id;
    if found then
        return v_id;
    end if;
    if v_meta is not null then
        v_id := entitlements._stripe_uuid(v_meta);
        if v_id is null then
            raise exception 'metadata.entitlements_customer_id of Stripe customer % is not a uuid: %', stripe_customer_id, v_meta
                using errcode = '22023';
        end if;
        -- As for a Checkout (_stripe_apply_link): metadata never moves an existing link.
        if exists (select 1 from entitlements.customers c where c.id = v_id and c.stripe_customer_id is not null) then
            raise exception 'customer % is linked to another Stripe customer; not linking %', v_id, stripe_customer_id
                using errcode = '55000', hint = 'An admin relinks with entitlements.link_stripe_customer.';
        end if;
        perform entitlements._stripe_link(v_id, stripe_customer_id);
    end if;
    return v_id;
end
$$;

-- Grants (sql/grants/grants.sql) -------------------------------------------------------------

create or replace function entitlements._add_grant(
    customer uuid, kind text, feature text, value jsonb, expires_at timestamptz, reason text,
    starts_at timestamptz default entitlements.now())
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_id uuid;
begin
    perform entitlements._require_not_null(customer, 'customer');
    if reason is null or btrim(reason) = '' then
        raise exception 'a reason is required' using errcode = '22023';
    end if;
    if starts_at is null then
        raise exception 'starts_at must not be NULL' using errcode = '22004';
    end if;
    perform entitlements._finite(expires_at, 'expires_at');
    perform entitlements._finite(starts_at, 'starts_at');
    if expires_at is not null and expires_at <= greatest(starts_at, entitlements.now()) then
        raise exception 'expires_at (%) must be in the future and after starts_at', expires_at using errcode = '22023';
    end if;
    perform entitlements._require_admin_of(kind || ' grant', customer);
    if kind <> 'discount' then
        perform entitlements._require_not_null(feature, 'feature');
        if not exists (select 1 from entitlements.features f where f.key = feature) then
            raise exception 'unknown feature "%"', feature
                using errcode = '22023',
                      hint = 'known features: ' || coalesce((select string_agg(f.key, ', ' order by f.key) from entitlements.features f), 'none');
        end if;
    end if;
    perform set_config('entitlements.reason', reason, true);
    -- Only when missing: a tenant admin (who may grant only to its tenant's customers, which
    -- exist) would fail RLS's check on the proposed tenantless row even with DO NOTHING.
    if not exists (select 1 from entitlements.customers c where c.id = customer) then
        insert into entitlements.customers (id) values (customer) on conflict (id) do nothing;
    end if;
    insert into entitlements.grants (customer_id, kind, feature_key, value, starts_at, expires_at, reason, created_by)
    values (customer, kind, feature, value, starts_at, expires_at, reason, entitlements.current_user_id())
    returning id into v_id;
    perform set_config('entitlements.reason', '', true);
    return v_id;
end
$$;

-- Grant a feature: a flag (value omitted = on), or a limit/quota/config value that
-- combines with the plan's (most generous wins).
create or replace function entitlements.grant_feature(
    customer uuid, feature text, value jsonb default null,
    expires_at timestamptz default null, reason text default null)
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_kind text := entitlements._feature_kind(feature);
begin
    if v_kind is not null and value is null and v_kind <> 'flag' then
        raise exception 'a % feature needs a value to grant', v_kind using errcode = '22023';
    end if;
    perform entitlements._valid_json(value, 'value');
    return entitlements._add_grant(customer, 'feature', feature,
        case when v_kind is null then null
             else entitlements._normalize_feature_value(v_kind, coalesce(value, 'true')) end,
        expires_at, reason);
end
$$;

-- Replace the feature's value whatever plans say (e.g. lower a limit after abuse).
create or replace function entitlements.override_feature(
    customer uuid, feature text, value jsonb, expires_at timestamptz default null, reason text default null)
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_kind text := entitlements._feature_kind(feature);
begin
    perform entitlements._require_not_null(value, 'value');
    perform entitlements._valid_json(value, 'value');
    return entitlements._add_grant(customer, 'override', feature,
        case when v_kind is null then null else entitlements._normalize_feature_value(v_kind, value) end,
        expires_at, reason);
end
$$;

-- Add `amount` to a limit, a concurrency limit or a metered quota (one period or all).
create or replace function entitlements.boost_quota(
    customer uuid, feature text, amount numeric, period text default null,
    expires_at timestamptz default null, reason text default null)
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_kind text := entitlements._feature_kind(feature);
begin
    if amount is null or amount <= 0 or amount > 1e15 then
        raise exception 'a quota boost needs an amount from 0 (exclusive) to 1e15, got %', coalesce(amount::text, 'NULL')
            using errcode = '22023';
    end if;
    if v_kind is not null and v_kind not in ('limit', 'metered', 'concurrency') then
        raise exception 'feature "%" is a % feature; only limit, metered and concurrency features take a quota boost', feature, v_kind
            using errcode = '22023';
    end if;
    if period is not null and period not in ('day', 'month', 'billing_period', 'lifetime') then
        raise exception 'unknown period "%"', period using errcode = '22023', hint = 'one of: day, month, billing_period, lifetime';
    end if;
    return entitlements._add_grant(customer, 'quota_boost', feature,
        jsonb_build_object('amount', amount, 'period', period), expires_at, reason);
end
$$;

create or replace function entitlements.revoke_grant(grant_id uuid, reason text)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_customer uuid;
begin
    perform entitlements._require_not_null(grant_id, 'grant_id');
    if reason is null or btrim(reason) = '' then
        raise exception 'a reason is required' using errcode = '22023';
    end if;
    select g.customer_id into v_customer from entitlements.grants g where g.id = grant_id for update;
    if not found then
        raise exception 'grant % does not exist', grant_id using errcode = 'P0002';
    end if;
    perform entitlements._require_admin_of('revoke_grant', v_customer);
    perform set_config('entitlements.reason', reason, true);
    update entitlements.grants g set revoked_at = entitlements.now() where g.id = grant_id and g.revoked_at is null;
    perform set_config('entitlements.reason', '', true);
end
$$;

-- Maintenance (sql/maintenance/tasks.sql) ---------------------------------------------------

-- Rows that disagree with the rules:
--   * manual `active` subscriptions past their period end (nothing renewed them): canceled
--     as of the period end;
--   * organizations with more members than their seats allow (after a downgrade or a lapse):
--     the newest members beyond the limit are removed, plain members before admins, owners
--     never (an organization keeps someone who can manage it); the removed members are
--     listed in details (and the audit log keeps their rows). Organizations whose
--     subscription is in a recoverable state (past_due, unpaid, paused, incomplete) are
--     left alone and listed, so a late payment does not cost them their members;
--   * grants past their expiry that are still open: closed (revoked_at = expires_at).
create or replace function entitlements._task_correct_entitlements()
returns jsonb language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_lapsed bigint;
    v_grants bigint;
    v_removed jsonb := '[]'::jsonb;
    v_pending jsonb := '[]'::jsonb;
    v_owners_over jsonb := '[]'::jsonb;
    v_stale_stripe bigint;
    r record;
    v_limit double precision;
    v_excess bigint;
    v_gone jsonb;
begin
    perform set_config('entitlements.reason', 'correct_entitlements: active past its period end', true);
    update entitlements.subscriptions s
       set status = 'canceled', cancel_at_period_end = false,
           canceled_at = coalesce(s.canceled_at, s.current_period_end), ended_at = s.current_period_end
      from entitlements.plans p
     where p.key = s.plan_key and s.source = 'manual' and s.status = 'active'
       and entitlements._grants_until(s, p.grace_days) <= entitlements.now();
    get diagnostics v_lapsed = row_count;

    select count(*) into v_stale_stripe from entitlements.subscriptions s
      join entitlements.plans p on p.key = s.plan_key
     where s.source = 'stripe' and s.status = 'active' and entitlements._lapsed(s, p.grace_days);

    perform set_config('entitlements.reason', 'correct_entitlements: grant expired', true);
    update entitlements.grants g set revoked_at = g.expires_at
     where g.revoked_at is null and g.expires_at <= entitlements.now();
    get diagnostics v_grants = row_count;

    if exists (select 1 from entitlements.features f where f.key = 'seats') then
        for r in
            select m.organization_id as org, count(*) as used
              from entitlements.members m group by m.organization_id order by m.organization_id
        loop
            -- The same serialization as entitlements._enforce_seats: no add_member races us.
            perform pg_advisory_xact_lock('entitlements.members'::regclass::oid::integer, hashtext(r.org::text));
            v_limit := entitlements._feature_limit(r.org, 'seats');
            continue when v_limit is null or r.used <= v_limit;
            if exists (select 1 from entitlements.subscriptions s
                        where s.customer_id = r.org and s.status in ('past_due', 'unpaid', 'paused', 'incomplete')) then
                v_pending := v_pending || jsonb_build_object('organization', r.org, 'members', r.used, 'seats', v_limit);
                continue;
            end if;
            v_excess := r.used - floor(v_limit)::bigint;
            perform set_config('entitlements.reason',
                format('correct_entitlements: organization over seats (%s members, %s seats)', r.used, v_limit), true);
            with gone as (
                delete from entitlements.members m
                 where m.organization_id = r.org
                   and m.user_id in (select x.user_id from entitlements.members x
                                      where x.organization_id = r.org and x.role <> 'owner'
                                      order by x.role = 'admin', x.created_at desc, x.user_id
                                      limit v_excess)
                returning m.user_id, m.role)
            select coalesce(jsonb_agg(jsonb_build_object('organization', r.org, 'user_id', g.user_id, 'role', g.role)), '[]')
              into v_gone from gone g;
            v_removed := v_removed || v_gone;
            if jsonb_array_length(v_gone) < v_excess then
                v_owners_over := v_owners_over || jsonb_build_object(
                    'organization', r.org, 'members', r.used - jsonb_array_length(v_gone), 'seats', v_limit);
            end if;
        end loop;
    end if;
    perform set_config('entitlements.reason', '', true);

    return jsonb_build_object(
        'rows_touched', v_lapsed + v_grants + jsonb_array_length(v_removed),
        'lapsed_subscriptions', v_lapsed,
        'expired_grants', v_grants,
        'members_removed', v_removed,
        'over_seats_pending', v_pending,
        'over_seats_owners', v_owners_over,
        'stripe_stale', v_stale_stripe);
end
$$;

-- Two more tasks: usage_partitions and retention (sql/maintenance/retention.sql).
-- The tasks with their default intervals, in one place (issue 9); task_names() reads it.
create or replace function entitlements.tasks()
returns table (name text, every interval, description text)
language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select t.name, t.every, t.description
      from (values
        (1, 'expire_subscriptions', interval '1 minute', 'Trials, cancellations and past_due grace that ended get the status the rules give them.'),
        (2, 'correct_entitlements', interval '5 minutes', 'Active subscriptions past their period, organizations over their seats, grants past expiry.'),
        (3, 'health_snapshot', interval '1 minute', 'Counts an operator wants on one page; touches nothing.'),
        (4, 'prune_task_runs', interval '1 hour', 'Task runs older than entitlements.task_runs_keep go.'),
        (5, 'usage_partitions', interval '6 hours', 'Ledger partitions made ahead and old months rolled up; closed counters and old idempotency keys deleted.'),
        (6, 'retention', interval '1 hour', 'Applied and dead Stripe events, delivered notifications, and (when configured) audit rows, past their retention go.'),
        (7, 'time_events', interval '1 minute', 'Trials about to end (trial.ending) and access that ended by time alone (access.suspended), told once each.'),
        (8, 'security_scan', interval '1 minute', 'The security rules: alerts opened or repeated (high and critical go out through the outbox); week-old signals pruned.')
      ) t(n, name, every, description)
     order by t.n
$$;
comment on function entitlements.tasks() is
    'The maintenance tasks entitlements.run_task knows, with the interval the worker runs each at by default.';

create or replace function entitlements.task_names()
returns text[] language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$ select array_agg(t.name) from entitlements.tasks() t $$;
comment on function entitlements.task_names() is 'The maintenance tasks entitlements.run_task knows.';

-- run_task runs the two new ones.
create or replace function entitlements.run_task(task text, worker text default null)
returns entitlements.task_runs language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_run entitlements.task_runs;
    v_result jsonb;
    v_state text;
    v_message text;
    v_detail text;
begin
    if task is null then
        raise exception 'task must not be NULL' using errcode = '22004';
    end if;
    if not task = any (entitlements.task_names()) then
        raise exception 'unknown maintenance task "%"', task
            using errcode = '22023', hint = 'known tasks: ' || array_to_string(entitlements.task_names(), ', ');
    end if;
    perform entitlements._require_admin('run_task');

    v_run.task := task;
    v_run.worker := coalesce(nullif(btrim(worker), ''),
                             nullif(current_setting('application_name', true), '') || ':' || pg_backend_pid(),
                             'backend:' || pg_backend_pid());
    if not entitlements.try_lock_task(task) then
        v_run.started_at := clock_timestamp();
        v_run.finished_at := v_run.started_at;
        v_run.outcome := 'skipped';
        v_run.details := jsonb_build_object('reason', 'another run of this task is in progress');
    else
        -- After the lock: a run's start never precedes the end of the previous one.
        v_run.started_at := clock_timestamp();
        begin
            -- Every task of entitlements.tasks() is the function _task_<name>; the name was
            -- checked against that list above, so this runs nothing else.
            execute format('select entitlements.%I()', '_task_' || task) into v_result;
            v_run.outcome := 'ok';
            v_run.rows_touched := coalesce((v_result ->> 'rows_touched')::bigint, 0);
            v_run.details := v_result - 'rows_touched';
        exception when others then
            -- The task's changes are rolled back with the subtransaction; the record is not.
            get stacked diagnostics v_state = returned_sqlstate, v_message = message_text, v_detail = pg_exception_detail;
            perform set_config('entitlements.reason', '', true);
            v_run.outcome := 'error';
            v_run.rows_touched := 0;
            v_run.error := v_message;
            v_run.details := jsonb_strip_nulls(jsonb_build_object('sqlstate', v_state, 'detail', nullif(v_detail, '')));
            raise warning 'maintenance task % failed: % (SQLSTATE %)', task, v_message, v_state;
        end;
        v_run.finished_at := clock_timestamp();
    end if;

    insert into entitlements.task_runs (task, started_at, finished_at, rows_touched, outcome, error, worker, details)
    values (v_run.task, v_run.started_at, v_run.finished_at, coalesce(v_run.rows_touched, 0), v_run.outcome,
            v_run.error, v_run.worker, coalesce(v_run.details, '{}'))
    returning * into v_run;
    return v_run;
end
$$;
comment on function entitlements.run_task(text, text) is
    'Run a maintenance task (see entitlements.task_names()) and return its recorded run; '
    'a failure is recorded and returned (outcome error), a run while another is in progress is skipped. Admins only.';

-- Metering (sql/metering/) ---------------------------------------------------------

-- The metering engine behind check, consume and try_consume.
--   mode 'check':   report, change nothing;
--   mode 'consume': count, or raise PT429 / PT403;
--   mode 'try':     count, or return allowed = false having changed nothing.
create or replace function entitlements._meter(p_customer uuid, p_feature text, p_amount numeric, p_key text, p_mode text)
returns entitlements.usage
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_lim      record;
    v_limit    numeric;
    v_w        timestamptz;
    v_end      timestamptz;
    v_one      record;
    v_over     numeric := 0::numeric;
    v_price    numeric;
    v_cost     numeric := 0::numeric;
    v_any      boolean := false;
    v_replay   boolean := false;
    v_keyed    boolean := false;
    v_periods  text[] := '{}'::text[];
    v_billing  timestamptz;
    v_done_w   timestamptz[] := '{}'::timestamptz[];
    v_done_s   smallint[] := '{}'::smallint[];
    v_done_slow boolean[] := '{}'::boolean[];
    v_out      entitlements.usage;
    v_best     numeric;
    v_windows  jsonb := '{}'::jsonb;
    v_thresholds numeric[];
    v_crossed  jsonb := '[]'::jsonb;
begin
    if p_mode <> 'check' then
        perform entitlements._require_primary(case p_mode when 'try' then 'try_consume' else 'consume' end);
    end if;
    perform entitlements._meter_check_input(p_customer, p_feature, p_amount, p_mode);
    select f.thresholds into v_thresholds from entitlements.features f where f.key = p_feature;
    if p_key is not null and p_mode <> 'check' then
        v_keyed := entitlements._meter_claim_key(p_customer, p_key, p_feature, p_amount);
        v_replay := not v_keyed;
    end if;

    for v_lim in select * from entitlements._meter_limits(p_customer, p_feature) loop
        v_any := true;
        v_limit := coalesce(v_lim.lim::numeric, 'Infinity');
        v_w := entitlements._ts(v_lim.window_start_us);
        v_end := entitlements._ts(v_lim.resets_at_us);
        v_windows := v_windows || jsonb_build_object(v_lim.period, v_w);
        v_one := entitlements._meter_limit(p_customer, p_feature, p_amount, p_mode, v_replay, v_lim.period, v_w, v_end,
                                           v_limit, v_lim.overage, v_windows, v_thresholds);
        if cardinality(v_one.crossed) > 0 then
            v_crossed := v_crossed || jsonb_build_object('period', v_lim.period, 'window_start', v_w,
                                                         'resets_at', v_end, 'limit', v_limit,
                                                         'used', v_one.total, 'thresholds', to_jsonb(v_one.crossed));
        end if;
        if v_one.refused and p_mode = 'check' then
            v_out.allowed := false;
        elsif v_one.refused then
            perform entitlements._note_refusal('quota_refused', p_customer::text, p_feature);
            perform entitlements._meter_undo(p_customer, p_feature, p_amount, v_periods, v_done_w, v_done_s, v_done_slow,
                                             case when v_keyed then p_key end);
            return row(false, v_limit, v_one.total, greatest(v_limit - v_one.total, 0), v_end)::entitlements.usage;
        elsif v_one.stripe is not null then
            -- Counted: remember where (for an undo) and what it costs beyond the limit.
            v_periods := v_periods || v_lim.period::text;
            v_done_w := v_done_w || v_w;
            v_done_s := v_done_s || v_one.stripe;
            v_done_slow := v_done_slow || (v_one.over is not null);
            v_billing := case when v_lim.period = 'billing_period' then v_w else v_billing end;
            if v_one.over is not null then
                v_over := greatest(v_over, v_one.over);
                if v_lim.overage = 'bill' and v_one.over * coalesce(v_lim.unit_price_cents::numeric, 0) >= v_cost then
                    v_cost := v_one.over * coalesce(v_lim.unit_price_cents::numeric, 0);
                    v_price := v_lim.unit_price_cents::numeric;
                end if;
            end if;
        end if;
        -- Report the limit that binds first: the least remaining.
        if v_best is null or v_limit - v_one.total < v_best then
            v_best := v_limit - v_one.total;
            v_out."limit" := nullif(v_limit, 'Infinity');
            v_out.used := v_one.total;
            v_out.remaining := case when v_limit = 'Infinity' then null else greatest(v_limit - v_one.total, 0) end;
            v_out.resets_at := v_end;
        end if;
    end loop;

    if not v_any then
        -- The feature is not part of the customer's plan at all.
        if p_mode = 'consume' then
            perform entitlements._meter_raise_not_included(p_customer, p_feature, p_amount, v_windows);
        elsif p_mode = 'try' then
            perform entitlements._note_refusal('feature_refused', p_customer::text, p_feature);
        end if;
        perform entitlements._meter_undo(p_customer, p_feature, p_amount, '{}', '{}', '{}', '{}',
                                         case when v_keyed then p_key end);
        return row(false, 0, 0, 0, null)::entitlements.usage;
    end if;

    v_out.allowed := coalesce(v_out.allowed, true);
    if p_mode <> 'check' and not v_replay then
        insert into entitlements.usage_ledger (at, customer_id, feature_key, amount, idempotency_key, periods,
                                               billing_window, overage, unit_price_cents, cost_cents, actor)
        values (entitlements._statement_now(), p_customer, p_feature, p_amount, p_key, v_periods, v_billing, v_over, v_price,
                v_cost, entitlements.current_user_id());
        -- Only now, with every limit counted: a refusal by a later limit writes no event.
        perform entitlements._quota_events(p_customer, p_feature, v_crossed);
    end if;
    return v_out;
end
$$;

create or replace function entitlements.slots_in_use(customer uuid, feature text)
returns integer language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_limit float8;
begin
    perform entitlements._require_primary('slots_in_use');
    v_limit := entitlements._concurrency_limit(customer, feature);
    if not entitlements._may_meter(customer) then
        raise exception 'permission denied' using errcode = '42501';
    end if;
    if v_limit is null then
        return null;
    end if;
    return (select count(*)::int from pg_locks l
             where l.locktype = 'advisory' and l.granted and l.database = (select oid from pg_database where datname = current_database())
               and ((l.classid::bigint << 32) | l.objid::bigint) in
                   (select entitlements._slot_key(customer, feature, n) from generate_series(0, v_limit::int - 1) n));
end
$$;

-- Create the monthly ledger partitions from this month to `months_ahead` months ahead,
-- moving any rows that landed in the default partition. Returns how many it created.
-- SECURITY DEFINER: the partitions are the extension's (made by its owner), whoever asks.
create or replace function entitlements.ensure_usage_partitions(months_ahead integer default 3)
returns integer language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_start timestamptz;
    v_end   timestamptz;
    v_name  text;
    v_made  integer := 0;
begin
    perform entitlements._require_caller_admin('ensure_usage_partitions');
    if months_ahead is null or months_ahead < 0 or months_ahead > 120 then
        raise exception 'months_ahead must be between 0 and 120' using errcode = '22023';
    end if;
    for m in 0 .. months_ahead loop
        v_start := date_trunc('month', entitlements.now(), 'UTC') + make_interval(months => m);
        v_end := v_start + interval '1 month';
        v_name := 'usage_ledger_' || to_char(v_start at time zone 'UTC', 'YYYY_MM');
        continue when to_regclass('entitlements.' || v_name) is not null;
        execute format('create table entitlements.%I (like entitlements.usage_ledger including defaults including constraints)', v_name);
        execute format('alter table entitlements.%I add primary key (id, at)', v_name);
        execute format('create index on entitlements.%I (customer_id, feature_key, at)', v_name);
        -- No row may reach the default partition between the move and the ATTACH.
        lock table entitlements.usage_ledger_default in share row exclusive mode;
        execute format('with moved as (delete from entitlements.usage_ledger_default where at >= %L and at < %L returning *)
                        insert into entitlements.%I select * from moved', v_start, v_end, v_name);
        execute format('alter table entitlements.usage_ledger attach partition entitlements.%I for values from (%L) to (%L)',
                       v_name, v_start, v_end);
        execute format('alter table entitlements.%I enable row level security', v_name);
        execute format('create policy usage_ledger_read on entitlements.%I for select using (entitlements.can_see_customer(customer_id))', v_name);
        v_made := v_made + 1;
    end loop;
    return v_made;
end
$$;

-- Retention: everything of the ledger before the month boundary at or before entitlements.now() - keep
-- goes: whole partitions are dropped, rows that fell into the default partition deleted;
-- their lifetime usage moves to usage_rollup so lifetime counts still reconcile. Counters
-- of windows closed by then and idempotency keys older than that go too. Returns how
-- many partitions it dropped.
create or replace function entitlements.drop_usage_partitions(keep interval default interval '13 months')
returns integer language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_part    record;
    v_through timestamptz;
    v_dropped integer := 0;
begin
    perform entitlements._require_caller_admin('drop_usage_partitions');
    -- A month at least, as settings.usage_keep: idempotency keys younger than that must stay.
    if keep is null or keep < interval '1 month' then
        raise exception 'keep must be at least one month' using errcode = '22023';
    end if;
    v_through := date_trunc('month', entitlements.now() - keep, 'UTC');
    for v_part in
        select c.oid::regclass as rel,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz as upper_bound
          from pg_inherits i join pg_class c on c.oid = i.inhrelid
         where i.inhparent = 'entitlements.usage_ledger'::regclass
    loop
        continue when v_part.upper_bound is null or v_part.upper_bound > v_through;
        execute format('insert into entitlements.usage_rollup (customer_id, feature_key, amount, through)
                        select customer_id, feature_key, sum(amount), %L from %s
                         where ''lifetime'' = any(periods) group by 1, 2
                        on conflict (customer_id, feature_key, through)
                        do update set amount = usage_rollup.amount + excluded.amount', v_through, v_part.rel);
        execute format('drop table %s', v_part.rel);
        v_dropped := v_dropped + 1;
    end loop;
    with old as (delete from entitlements.usage_ledger_default d where d.at < v_through returning d.*)
    insert into entitlements.usage_rollup (customer_id, feature_key, amount, through)
    select o.customer_id, o.feature_key, sum(o.amount), v_through from old o
     where 'lifetime' = any(o.periods) group by 1, 2
    on conflict (customer_id, feature_key, through) do update set amount = usage_rollup.amount + excluded.amount;
    delete from entitlements.usage_counters where window_end is not null and window_end <= v_through;
    delete from entitlements.usage_idempotency where created_at < v_through;
    return v_dropped;
end
$$;

-- Keys and indexes are each partition's own, not the parent's (a dump restores the
-- monthly partitions, not the parent, and the parent's index would be created twice).
-- Dropping the parent's key and index drops their copies on the partitions; every
-- partition then gets its own, named as 0.2.0 names them: the default partition as
-- sql/metering/ does, the monthly ones as ensure_usage_partitions does.
alter table entitlements.usage_ledger drop constraint usage_ledger_pkey;
drop index entitlements.usage_ledger_customer;
do $$
declare
    p record;
begin
    for p in
        select c.oid::regclass as rel, c.relname
          from pg_inherits i join pg_class c on c.oid = i.inhrelid
         where i.inhparent = 'entitlements.usage_ledger'::regclass
         order by c.relname
    loop
        execute format('alter table %s add primary key (id, at)', p.rel);
        if p.rel = 'entitlements.usage_ledger_default'::regclass then
            execute format('create index usage_ledger_default_customer on %s (customer_id, feature_key, at)', p.rel);
        else
            execute format('create index on %s (customer_id, feature_key, at)', p.rel);
        end if;
    end loop;
end
$$;

-- The shape of a table as the writes without the executor see it (extension/src/postgres/shape.rs): access
-- method, and per column in order its name, type with typmod, NOT NULL, generation,
-- identity and default. Names are qualified (search_path is pinned), so the text is the
-- same whoever asks.
create function entitlements._table_shape(rel regclass)
returns text language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce((select am.amname from pg_class c join pg_am am on am.oid = c.relam where c.oid = rel), 'partitioned')
           || ': ' || string_agg(format('%s %s%s%s%s%s', a.attname, format_type(a.atttypid, a.atttypmod),
                        case when a.attnotnull then ' not null' else '' end,
                        case when a.attgenerated <> '' then ' generated' else '' end,
                        case when a.attidentity <> '' then ' identity' else '' end,
                        coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')), ', ' order by a.attnum)
      from pg_attribute a
      left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
     where a.attrelid = rel and a.attnum > 0 and not a.attisdropped
$$;

-- May the counters or the ledger (or one of its partitions) be written without the
-- executor? Only in the shapes that code was written for.
create or replace function entitlements._direct_writes_fit(rel oid)
returns boolean language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select entitlements._table_shape(rel) = any (array[
        -- usage_counters
        'heap: customer_id uuid not null, feature_key text not null, period text not null, '
        || 'window_start timestamp with time zone not null, window_end timestamp with time zone, '
        || 'stripe smallint not null, used numeric not null default 0, cap numeric not null, '
        || 'basis numeric not null, stamp bigint, valid_until timestamp with time zone, '
        || 'sole boolean not null default false, stripes smallint not null default 1, split bigint',
        -- usage_ledger, and each of its partitions (made alike, on the heap)
        'partitioned: id bigint not null default nextval(''entitlements.usage_ledger_id_seq''::regclass), '
        || 'at timestamp with time zone not null, customer_id uuid not null, '
        || 'feature_key text not null, amount numeric not null, idempotency_key text, '
        || 'periods text[] not null, billing_window timestamp with time zone, '
        || 'overage numeric not null default 0, unit_price_cents numeric, '
        || 'cost_cents numeric not null default 0, actor uuid, '
        || 'txid bigint not null default txid_current(), usage_cost_cents numeric, metadata jsonb',
        'heap: id bigint not null default nextval(''entitlements.usage_ledger_id_seq''::regclass), '
        || 'at timestamp with time zone not null, customer_id uuid not null, '
        || 'feature_key text not null, amount numeric not null, idempotency_key text, '
        || 'periods text[] not null, billing_window timestamp with time zone, '
        || 'overage numeric not null default 0, unit_price_cents numeric, '
        || 'cost_cents numeric not null default 0, actor uuid, '
        || 'txid bigint not null default txid_current(), usage_cost_cents numeric, metadata jsonb'])
$$;

-- Retention (sql/maintenance/retention.sql) ------------------------------------------------------
-- Bounded growth: entitlements.settings (retention periods, how far ahead the ledger's
-- partitions are made, how often a Stripe event is retried) and the two tasks run_task
-- now knows, usage_partitions and retention. The table starts empty, as in a fresh install
-- (no row: every setting at its default), and like the extension's other tables it is
-- registered for dumps, under RLS and audited (enable_audit attaches _audit_row to it).

-- One row, written by admins (RLS) and audited. Without the row every setting has its
-- default (_settings()), so a fresh install and a restored dump agree.
-- A lower-case DNS name (RFC 1123), as an Ingress host must be.
create function entitlements._valid_domain(domain text)
returns boolean language sql immutable parallel safe strict
return length(domain) <= 253
   and domain ~ '^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$';

create table entitlements.settings (
    singleton           boolean primary key default true check (singleton),
    -- NULL: keep the audit log forever (the default).
    audit_log_keep      interval check (audit_log_keep >= interval '30 days'),
    stripe_events_keep  interval not null default interval '90 days' check (stripe_events_keep >= interval '1 day'),
    usage_keep          interval not null default interval '13 months' check (usage_keep >= interval '1 month'),
    usage_months_ahead  integer not null default 3 check (usage_months_ahead between 1 and 24),
    stripe_max_attempts integer not null default 20 check (stripe_max_attempts between 1 and 1000),
    updated_at          timestamptz not null default entitlements.now(),
    -- Provisioning (provisioning/): how long a server stays suspended without access before
    -- it is terminated, failures before it is 'failed', the domain suffix of default domains.
    server_retention    interval not null default interval '30 days' check (server_retention >= interval '0'),
    server_max_attempts integer not null default 8 check (server_max_attempts between 1 and 1000),
    server_domain       text not null default 'matrix.example.com' check (entitlements._valid_domain(server_domain)),
    -- Notifications (outbox/): failed sends before a delivery is dead; how long events whose
    -- deliveries all ended are kept.
    delivery_max_attempts integer not null default 10 check (delivery_max_attempts between 1 and 1000),
    outbox_keep         interval not null default interval '30 days' check (outbox_keep >= interval '1 day')
);
comment on table entitlements.settings is
    'Retention periods and queue limits (one row; absent = defaults). Admins only; every change is audited.';
select pg_catalog.pg_extension_config_dump('entitlements.settings', '');
alter table entitlements.settings enable row level security;
create policy settings_admin on entitlements.settings for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());
select entitlements.enable_audit('entitlements.settings');

create or replace function entitlements._settings()
returns entitlements.settings language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce((select s from entitlements.settings s),
                    row(true, null, interval '90 days', interval '13 months', 3, 20, entitlements.now(),
                        interval '30 days', 8, 'matrix.example.com', 10, interval '30 days',
                        interval '3 days')::entitlements.settings)
$$;

create or replace function entitlements._task_usage_partitions()
returns jsonb language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_settings entitlements.settings := entitlements._settings();
    v_made integer;
    v_dropped integer;
begin
    v_made := entitlements.ensure_usage_partitions(v_settings.usage_months_ahead);
    v_dropped := entitlements.drop_usage_partitions(v_settings.usage_keep);
    return jsonb_build_object('rows_touched', v_made + v_dropped, 'created', v_made, 'dropped', v_dropped,
                              'months_ahead', v_settings.usage_months_ahead, 'keep', v_settings.usage_keep::text);
end
$$;

-- Definer: admins may not delete audit rows themselves (nobody may, but this task), and the
-- append-only trigger lets this function's deletes through (audit.sql).
create or replace function entitlements._task_retention()
returns jsonb language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_settings entitlements.settings := entitlements._settings();
    v_events bigint;
    v_outbox bigint;
    v_audit bigint := 0::bigint;
    v_cutoff timestamptz;
begin
    perform entitlements._require_caller_admin('retention');
    delete from entitlements.stripe_events e
     where coalesce(e.applied_at, e.dead_at) < entitlements.now() - v_settings.stripe_events_keep;
    get diagnostics v_events = row_count;
    -- A delivery nobody sent within the retention (no SMTP configured, say) ends dead, so that
    -- its event can go too; then events whose deliveries all ended (theirs go with them).
    update entitlements.deliveries d set status = 'dead', last_error = 'not delivered within settings.outbox_keep'
     where d.status = 'pending' and d.created_at < entitlements.now() - v_settings.outbox_keep;
    delete from entitlements.outbox o
     where o.created_at < entitlements.now() - v_settings.outbox_keep
       and not exists (select 1 from entitlements.deliveries d where d.event_id = o.id and d.status = 'pending');
    get diagnostics v_outbox = row_count;
    if v_settings.audit_log_keep is not null then
        v_cutoff := entitlements.now() - v_settings.audit_log_keep;
        perform set_config('entitlements.audit_retention', 'on', true);
        delete from entitlements.audit_log a where a.at < v_cutoff;
        get diagnostics v_audit = row_count;
        perform set_config('entitlements.audit_retention', '', true);
        if v_audit > 0 then
            insert into entitlements.audit_log (actor, actor_role, action, table_name, new_values, reason)
            values (entitlements.current_user_id(), entitlements._actor_role(), 'retention', 'entitlements.audit_log',
                    jsonb_build_object('deleted', v_audit, 'before', v_cutoff), 'retention');
        end if;
    end if;
    return jsonb_build_object('rows_touched', v_events + v_outbox + v_audit, 'stripe_events_deleted', v_events,
                              'outbox_events_deleted', v_outbox,
                              'audit_rows_deleted', v_audit, 'stripe_events_keep', v_settings.stripe_events_keep::text,
                              'audit_log_keep', coalesce(v_settings.audit_log_keep::text, 'forever'));
end
$$;

-- Leases (sql/maintenance/leases.sql) -----------------------------------------------------------
-- Leases: which worker does a piece of outside work (a fetch from the Stripe API, the
-- Stripe reconcile) for a while. A row with an expiry, taken and given back in short
-- transactions of their own, instead of a lock held by a transaction left open across
-- the HTTP call: no connection sits idle in a transaction while Stripe answers, and a
-- worker that dies loses its lease when it expires. A holder renews by taking it again.

create table entitlements.leases (
    name   text primary key check (length(name) between 1 and 200),
    holder text not null check (length(holder) between 1 and 200),
    until  timestamptz not null check (entitlements._finite(until, 'until'))
);
comment on table entitlements.leases is
    'Who does a piece of outside work until when (take_lease / release_lease). Admins only.';
select pg_catalog.pg_extension_config_dump('entitlements.leases', '');
alter table entitlements.leases enable row level security;
create policy leases_admin on entitlements.leases for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());

-- True when `holder` has the lease `name` for `ttl` from now: it was free, expired, or
-- already theirs (renewed). False when someone else holds it.
create function entitlements.take_lease(name text, holder text, ttl interval)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_admin('take_lease');
    perform entitlements._require_not_null(name, 'name');
    perform entitlements._require_not_null(holder, 'holder');
    if ttl is null or ttl < interval '1 second' or ttl > interval '1 hour' then
        raise exception 'ttl must be from 1 second to 1 hour, got %', coalesce(ttl::text, 'NULL') using errcode = '22023';
    end if;
    insert into entitlements.leases as l (name, holder, until)
    values (take_lease.name, take_lease.holder, clock_timestamp() + ttl)
    on conflict on constraint leases_pkey do update set holder = excluded.holder, until = excluded.until
     where l.until < clock_timestamp() or l.holder = excluded.holder;
    return found;
end
$$;
comment on function entitlements.take_lease(text, text, interval) is
    'Take (or renew) a lease for ttl; false when another holder has it. Admins only.';

create function entitlements.release_lease(name text, holder text)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_admin('release_lease');
    delete from entitlements.leases l where l.name = release_lease.name and l.holder = release_lease.holder;
    return found;
end
$$;
comment on function entitlements.release_lease(text, text) is
    'Give a lease back (only its holder can); false when it was not theirs any more.';

-- A failed attempt of leased work (a delivery, a server), as its holder reports it:
-- 'retry' at next_attempt_at, 'final' (dead or failed: an admin brings it back), or
-- 'lease_lost' (the lease ran out and someone else may have it: nothing was recorded).
create type entitlements.failure as (outcome text, next_attempt_at timestamptz);

-- How long after the n-th failure to try again: 2^n seconds up to an hour, ±25% jitter so
-- that what failed together is not retried together.
create function entitlements._backoff(failures integer)
returns interval language sql volatile parallel safe
return least(interval '1 hour', interval '1 second' * power(2, least(failures, 12))) * (0.75 + random() * 0.5);

-- A claim's lease on one item (a delivery, a server): taken only when nobody holds it, the
-- claimer included (take_lease would renew the claimer's own), so an item is worked on once
-- at a time even within one worker. The caller checked who asks and the lease's length.
create function entitlements._take_free_lease(name text, holder text, lease interval)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    insert into entitlements.leases as l (name, holder, until)
    values (_take_free_lease.name, _take_free_lease.holder, clock_timestamp() + lease)
    on conflict on constraint leases_pkey do update set holder = excluded.holder, until = excluded.until
     where l.until < clock_timestamp();
    return found;
end
$$;

-- The cache's size against its budget (extension/src/checks/) ---------
CREATE  FUNCTION "cache_stats"() RETURNS jsonb /* JsonB */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'cache_stats_wrapper';

-- Admins by role, no longer service_role by name.
comment on function entitlements.is_admin(uuid) is
    'True for superusers, the extension owner, roles granted entitlements_admin, and users listed in entitlements.admins (for that tenant).';

-- Checked jsonb (sql/security/checked_json.sql) -----------------------------------------------
-- The Rust functions that take jsonb move to new names; the old names become checked SQL
-- faces (SECURITY DEFINER) that refuse what pgrx could not decode, with 22023.
CREATE  FUNCTION "_access_token_claims"(
	"event" jsonb /* Option < JsonB > */
) RETURNS jsonb /* JsonB */
STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'custom_access_token_hook_wrapper';
CREATE  FUNCTION "_normalize_catalog_json"(
	"doc" jsonb, /* Option < JsonB > */
	"existing_features" jsonb /* Option < JsonB > */
) RETURNS jsonb /* JsonB */
IMMUTABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'normalize_catalog_wrapper';
CREATE  FUNCTION "_normalize_feature_value_json"(
	"kind" TEXT, /* & str */
	"value" jsonb /* Option < JsonB > */
) RETURNS jsonb /* JsonB */
IMMUTABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'normalize_feature_value_wrapper';

create or replace function entitlements._normalize_catalog(doc jsonb, existing_features jsonb)
returns jsonb language plpgsql immutable parallel safe security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._valid_json(doc, 'catalog');
    perform entitlements._valid_json(existing_features, 'existing_features');
    return entitlements._normalize_catalog_json(doc, existing_features);
end
$$;

create or replace function entitlements._normalize_feature_value(kind text, value jsonb)
returns jsonb language plpgsql immutable parallel safe security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._valid_json(value, 'value');
    return entitlements._normalize_feature_value_json(kind, value);
end
$$;

-- Supabase's Custom Access Token hook (README, Deploy): supabase_auth_admin calls it.
create or replace function entitlements.custom_access_token_hook(event jsonb)
returns jsonb language plpgsql stable parallel safe security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._valid_json(event, 'event');
    return entitlements._access_token_claims(event);
end
$$;
comment on function entitlements.custom_access_token_hook(jsonb) is
    'Supabase Auth hook: adds an entitlements claim (plan, enabled features) to the access token.';

-- Gone in 0.2.0 -----------------------------------------------------------------------

drop function entitlements._customer_tenant(uuid);
drop function entitlements._customer_kind(uuid);

-- Checked input: the new CHECK constraints (sql/schema.sql), named as CREATE TABLE names
-- them in a fresh install. Existing rows are validated (see the top of this file).

alter table entitlements.plans
    drop constraint plans_trial_days_check,
    drop constraint plans_grace_days_check,
    add constraint plans_trial_days_check check (trial_days between 0 and 730),
    add constraint plans_grace_days_check check (grace_days between 0 and 365),
    add constraint plans_metadata_check check (entitlements._valid_json(metadata, 'plans.metadata'));

alter table entitlements.plan_entitlements
    add constraint plan_entitlements_spec_check check (entitlements._valid_json(spec, 'plan_entitlements.spec'));

alter table entitlements.customers
    add constraint customers_metadata_check check (entitlements._valid_json(metadata, 'customers.metadata'));

alter table entitlements.subscriptions
    drop constraint subscriptions_quantity_check,
    add constraint subscriptions_quantity_check check (quantity between 1 and 1000000),
    add constraint subscriptions_current_period_start_check
        check (entitlements._finite(current_period_start, 'current_period_start')),
    add constraint subscriptions_current_period_end_check
        check (entitlements._finite(current_period_end, 'current_period_end')),
    add constraint subscriptions_trial_end_check check (entitlements._finite(trial_end, 'trial_end')),
    add constraint subscriptions_canceled_at_check check (entitlements._finite(canceled_at, 'canceled_at')),
    add constraint subscriptions_ended_at_check check (entitlements._finite(ended_at, 'ended_at')),
    add constraint subscriptions_metadata_check
        check (entitlements._valid_json(metadata, 'subscriptions.metadata'));

alter table entitlements.grants
    add constraint grants_value_check check (entitlements._valid_json(value, 'grants.value')),
    add constraint grants_starts_at_check check (entitlements._finite(starts_at, 'starts_at')),
    add constraint grants_expires_at_check check (entitlements._finite(expires_at, 'expires_at'));

-- More than 100,000 concurrency slots counts as unlimited.
create or replace function entitlements._concurrency_limit(customer uuid, feature text)
returns float8 language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_kind text;
begin
    if customer is null or feature is null then
        raise exception 'customer and feature must not be NULL' using errcode = '22004';
    end if;
    select f.kind into v_kind from entitlements.features f where f.key = feature;
    if v_kind is null then
        perform entitlements.has_feature(customer, feature);  -- raises "unknown feature" with the known list
    elsif v_kind <> 'concurrency' then
        raise exception 'feature "%" is a % feature, not concurrency', feature, v_kind
            using errcode = '22023', hint = 'acquire() takes slots of concurrency features.';
    end if;
    -- Slots are advisory locks looked up one by one: more than 100,000 (a plan's limit plus
    -- quota boosts) is as good as unlimited, and is treated so.
    return nullif(least(entitlements._feature_limit(customer, feature), 100001), 100001);
end
$$;

-- Restorable dumps: the identity sequences are dumped, so restored ids continue.
select pg_catalog.pg_extension_config_dump('entitlements.audit_log_id_seq', '');
select pg_catalog.pg_extension_config_dump('entitlements.task_runs_id_seq', '');

-- Rules written once (issue 9) ---------------------------------------------------------
-- The statuses in one function, which the column's CHECK reads.
create function entitlements.subscription_statuses()
returns text[] language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$ select array['trialing', 'active', 'past_due', 'unpaid', 'canceled', 'incomplete', 'incomplete_expired', 'paused'] $$;
comment on function entitlements.subscription_statuses() is
    'Every status a subscription can be in (Stripe''s). Which of them grant: README, Rules.';
alter table entitlements.subscriptions drop constraint subscriptions_status_check;
alter table entitlements.subscriptions
    add constraint subscriptions_status_check check (status = any (entitlements.subscription_statuses()));

-- The granting rule and the calendar window, Rust, for the SQL that restated them.
CREATE  FUNCTION "_grants_until"(
	"status" TEXT, /* Option < & str > */
	"trial_end" timestamp with time zone, /* Option < TimestampWithTimeZone > */
	"period_end" timestamp with time zone, /* Option < TimestampWithTimeZone > */
	"cancel_at_period_end" bool, /* Option < bool > */
	"status_changed_at" timestamp with time zone, /* Option < TimestampWithTimeZone > */
	"grace_days" INT /* Option < i32 > */
) RETURNS timestamp with time zone /* Option < TimestampWithTimeZone > */
IMMUTABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'grants_until_wrapper';
CREATE  FUNCTION "_window_start"(
	"period" TEXT, /* & str */
	"at" timestamp with time zone /* pgrx :: datum :: TimestampWithTimeZone */
) RETURNS timestamp with time zone /* pgrx :: datum :: TimestampWithTimeZone */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'window_start_wrapper';

-- Synced from the install scripts (scripts/upgrade_sync.py) ----------

create or replace function entitlements._grants_until(s entitlements.subscriptions, grace_days integer)
returns timestamptz language sql immutable parallel safe
as $$
    select entitlements._grants_until(s.status, s.trial_end, s.current_period_end, s.cancel_at_period_end,
                                      s.status_changed_at, grace_days)
$$;

create or replace function entitlements._lapsed(s entitlements.subscriptions, grace_days integer)
returns boolean language sql stable parallel safe
as $$ select g > '-infinity' and g <= entitlements.now() from entitlements._grants_until(s, grace_days) g $$;

create or replace function entitlements._task_expire_subscriptions()
returns jsonb language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_trials bigint;
    v_cancels bigint;
    v_grace bigint;
    v_stale_stripe bigint;
begin
    -- A trial that ended without becoming a paid subscription.
    perform set_config('entitlements.reason', 'expire_subscriptions: trial ended', true);
    update entitlements.subscriptions s
       set status = 'canceled', cancel_at_period_end = false,
           canceled_at = coalesce(s.canceled_at, coalesce(s.trial_end, s.current_period_end)),
           ended_at = coalesce(s.trial_end, s.current_period_end)
      from entitlements.plans p
     where p.key = s.plan_key and s.source = 'manual' and s.status = 'trialing'
       and entitlements._grants_until(s, p.grace_days) <= entitlements.now();
    get diagnostics v_trials = row_count;

    -- Canceled at period end, and the period is over: the cancellation is final.
    perform set_config('entitlements.reason', 'expire_subscriptions: canceled period ended', true);
    update entitlements.subscriptions s
       set cancel_at_period_end = false, ended_at = coalesce(s.ended_at, s.current_period_end)
      from entitlements.plans p
     where p.key = s.plan_key and s.source = 'manual' and s.status = 'canceled' and s.cancel_at_period_end
       and entitlements._grants_until(s, p.grace_days) <= entitlements.now();
    get diagnostics v_cancels = row_count;

    -- past_due beyond the plan's grace period: unpaid, as Stripe does when retries run out.
    perform set_config('entitlements.reason', 'expire_subscriptions: grace period ended', true);
    update entitlements.subscriptions s
       set status = 'unpaid'
      from entitlements.plans p
     where p.key = s.plan_key and s.source = 'manual' and s.status = 'past_due'
       and entitlements._grants_until(s, p.grace_days) <= entitlements.now();
    get diagnostics v_grace = row_count;
    perform set_config('entitlements.reason', '', true);

    select count(*) into v_stale_stripe from entitlements.subscriptions s
      join entitlements.plans p on p.key = s.plan_key
     where s.source = 'stripe' and s.status <> 'active' and entitlements._lapsed(s, p.grace_days);

    return jsonb_build_object(
        'rows_touched', v_trials + v_cancels + v_grace,
        'trials_ended', v_trials,
        'cancellations_final', v_cancels,
        'grace_ended', v_grace,
        'stripe_stale', v_stale_stripe);
end
$$;

create or replace function entitlements._task_health_snapshot()
returns jsonb language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select jsonb_build_object(
        'rows_touched', 0,
        -- Every status, so one that drops to zero reads 0 rather than vanishing.
        'subscriptions_by_status', (select jsonb_object_agg(st.status, (select count(*) from entitlements.subscriptions s
                                                                         where s.status = st.status))
                                      from unnest(entitlements.subscription_statuses()) st(status)),
        'subscriptions_by_plan', (select coalesce(jsonb_object_agg(plan_key, n), '{}')
                                    from (select s.plan_key, count(*) as n from entitlements.subscriptions s
                                           where s.status in ('trialing', 'active', 'past_due')
                                           group by s.plan_key) x),
        'subscriptions_from_stripe', (select count(*) from entitlements.subscriptions s where s.source = 'stripe'),
        -- Status says it grants, the rules say it no longer does: what expiry/correction will tidy.
        'subscriptions_to_tidy', (select count(*) from entitlements.subscriptions s
                                    join entitlements.plans p on p.key = s.plan_key
                                   where entitlements._lapsed(s, p.grace_days)),
        'customers', (select count(*) from entitlements.customers c where c.kind = 'user'),
        'organizations', (select count(*) from entitlements.customers c where c.kind = 'organization'),
        'members', (select count(*) from entitlements.members),
        'grants_open', (select count(*) from entitlements.grants g
                         where g.revoked_at is null and (g.expires_at is null or g.expires_at > entitlements.now())),
        'grants_expired_open', (select count(*) from entitlements.grants g
                                 where g.revoked_at is null and g.expires_at <= entitlements.now()),
        'plans_active', (select count(*) from entitlements.plans p where p.active),
        'audit_rows_24h', (select count(*) from entitlements.audit_log a where a.at > entitlements.now() - interval '24 hours'),
        'task_runs_failed_24h', (select coalesce(jsonb_object_agg(task, n), '{}')
                                   from (select t.task, count(*) as n from entitlements.task_runs t
                                          where t.outcome = 'error' and t.started_at > entitlements.now() - interval '24 hours'
                                          group by t.task) x),
        'task_last_ok', (select coalesce(jsonb_object_agg(task, at), '{}')
                           from (select t.task, max(t.finished_at) as at from entitlements.task_runs t
                                  where t.outcome = 'ok' group by t.task) x))
$$;

create or replace function entitlements._upgrade_plan(customer uuid, feature text, amount numeric, windows jsonb)
returns text language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select p.key
      from entitlements.plans p
      join entitlements.plan_entitlements e on e.plan_key = p.key and e.feature_key = feature
     where p.public and p.active
       -- A store's plan only for that store's customers.
       and (p.tenant_id is null or p.tenant_id = (select c.tenant_id from entitlements.customers c where c.id = customer))
       and not exists (
           select 1 from jsonb_array_elements(e.spec -> 'limits') m
            where jsonb_typeof(m -> 'limit') = 'number'
              and (m ->> 'limit')::numeric < amount + coalesce((
                  select sum(l.amount) from entitlements.usage_ledger l
                   where l.customer_id = customer and l.feature_key = feature
                     and l.at >= coalesce((windows ->> (m ->> 'period'))::timestamptz,
                                          entitlements._window_start(m ->> 'period', entitlements._statement_now()))), 0))
     order by p.price_cents, p.key
     limit 1
$$;

create or replace function entitlements.usage_drift()
returns table (customer_id uuid, feature_key text, period text, window_start timestamptz,
               counted numeric, ledger numeric)
language sql stable
set search_path = pg_catalog, pg_temp
as $$
    with counted as (
        select c.customer_id, c.feature_key, c.period, c.window_start, sum(c.used) as n
          from entitlements.usage_counters c group by 1, 2, 3, 4),
    ledger as (
        select l.customer_id, l.feature_key, p.period,
               case p.period when 'billing_period' then l.billing_window
                   else entitlements._window_start(p.period, l.at) end as window_start,
               sum(l.amount) as n
          from entitlements.usage_ledger l, unnest(l.periods) p(period)
         group by 1, 2, 3, 4
        union all
        select r.customer_id, r.feature_key, 'lifetime', timestamptz '1970-01-01 00:00:00+00', r.amount
          from entitlements.usage_rollup r),
    ledger_sum as (
        select l.customer_id, l.feature_key, l.period, l.window_start, sum(l.n) as n from ledger l group by 1, 2, 3, 4)
    select coalesce(c.customer_id, l.customer_id), coalesce(c.feature_key, l.feature_key),
           coalesce(c.period, l.period), coalesce(c.window_start, l.window_start),
           coalesce(c.n, 0), coalesce(l.n, 0)
      from counted c
      full join ledger_sum l using (customer_id, feature_key, period, window_start)
     where coalesce(c.n, 0) <> coalesce(l.n, 0)
       and (coalesce(c.period, l.period) = 'lifetime'
            or coalesce(c.window_start, l.window_start)
               >= coalesce((select max(r.through) from entitlements.usage_rollup r), '-infinity'))
$$;

create or replace function entitlements._stripe_require_admin(action text)
returns void language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    if entitlements._is_privileged_role() then
        return;
    end if;
    perform entitlements._require_admin(action);
end
$$;

create or replace function entitlements._meter_check_input(p_customer uuid, p_feature text, p_amount numeric, p_mode text)
returns void language plpgsql stable
as $$
begin
    if p_mode not in ('check', 'consume', 'try') then
        raise exception 'unknown metering mode "%"', p_mode using errcode = '22023';
    end if;
    if p_customer is null then
        raise exception 'customer must not be NULL' using errcode = '22004';
    end if;
    if p_feature is null then
        raise exception 'feature must not be NULL' using errcode = '22004';
    end if;
    if p_amount is null or not (p_amount > 0) or p_amount in ('Infinity', 'NaN') or p_amount > 1e15 then
        raise exception 'amount must be a positive number, got % (at most 1e15)', coalesce(left(p_amount::text, 40), 'NULL')
            using errcode = '22023';
    end if;
    if not entitlements._may_meter(p_customer) then
        perform entitlements._note_permission_refused('meter ' || p_feature);
        raise exception 'permission denied: you may meter only your own usage and that of your organizations'
            using errcode = '42501';
    end if;
end
$$;

create or replace function entitlements._meter_claim_key(p_customer uuid, p_key text, p_feature text, p_amount numeric)
returns boolean language plpgsql volatile
as $$
declare
    v_prev record;
begin
    insert into entitlements.usage_idempotency (customer_id, idempotency_key, feature_key, amount)
    values (p_customer, p_key, p_feature, p_amount)
    on conflict do nothing;
    if found then
        return true;
    end if;
    select k.feature_key, k.amount into v_prev
      from entitlements.usage_idempotency k
     where k.customer_id = p_customer and k.idempotency_key = p_key;
    if v_prev.feature_key <> p_feature or v_prev.amount <> p_amount then
        raise exception 'idempotency key "%" was already used with different parameters (% × %)',
            p_key, v_prev.feature_key, v_prev.amount
            using errcode = '22023';
    end if;
    return false;
end
$$;

create or replace function entitlements._meter_window_total(p_customer uuid, p_feature text, p_period text, p_window timestamptz)
returns numeric language sql stable
as $$
    select coalesce(sum(c.used), 0) from entitlements.usage_counters c
     where c.customer_id = p_customer and c.feature_key = p_feature
       and c.period = p_period and c.window_start = p_window
$$;

create or replace function entitlements._meter_take_stripe(p_customer uuid, p_feature text, p_amount numeric, p_period text,
                                                p_window timestamptz, p_window_end timestamptz, p_limit numeric,
                                                p_thresholds numeric[], out stripe smallint, out grow boolean)
language plpgsql volatile
as $$
declare
    max_stripes constant int := 16;
    v_bound numeric := entitlements._quota_bound(p_limit, p_thresholds, 0);
    v_split bigint := entitlements._thresholds_key(p_thresholds);
begin
    grow := false;
    if p_amount < v_bound then
        -- First use of this window: stripe 0 takes the whole quota (up to the first
        -- threshold) in one statement.
        insert into entitlements.usage_counters
               (customer_id, feature_key, period, window_start, window_end, stripe, used, cap, basis, split)
        values (p_customer, p_feature, p_period, p_window, p_window_end, 0, p_amount, v_bound, p_limit, v_split)
        on conflict do nothing
        returning usage_counters.stripe into stripe;
    end if;
    for v_attempt in 1 .. 2 loop
        exit when stripe is not null;
        if v_attempt = 2 then
            grow := exists (select 1 from entitlements.usage_counters s
                             where s.customer_id = p_customer and s.feature_key = p_feature
                               and s.period = p_period and s.window_start = p_window
                               and s.basis = p_limit and s.split = v_split and s.used + p_amount < s.cap);
            insert into entitlements.usage_counters
                   (customer_id, feature_key, period, window_start, window_end, stripe, used, cap, basis)
            values (p_customer, p_feature, p_period, p_window, p_window_end, 0, 0, 0, p_limit)
            on conflict do nothing;
            perform 1 from entitlements.usage_counters s
              where s.customer_id = p_customer and s.feature_key = p_feature
                and s.period = p_period and s.window_start = p_window and s.stripe = 0
                for update;
            -- Adding stripes takes the slow path; at the most stripes, look again.
            exit when grow and (select count(*) from entitlements.usage_counters s
                                 where s.customer_id = p_customer and s.feature_key = p_feature
                                   and s.period = p_period and s.window_start = p_window) < max_stripes;
        end if;
        begin
            update entitlements.usage_counters c set used = c.used + p_amount
             where c.customer_id = p_customer and c.feature_key = p_feature
               and c.period = p_period and c.window_start = p_window
               and c.stripe = (select s.stripe from entitlements.usage_counters s
                                where s.customer_id = p_customer and s.feature_key = p_feature
                                  and s.period = p_period and s.window_start = p_window
                                  and s.basis = p_limit and s.split = v_split and s.used + p_amount < s.cap
                                order by s.stripe
                                for update skip locked
                                limit 1)
            returning c.stripe into stripe;
            if stripe is null then
                raise exception using errcode = 'PE000';  -- undo the attempt's row locks
            end if;
        exception when sqlstate 'PE000' then
            stripe := null;
        end;
    end loop;
end
$$;

create or replace function entitlements._meter_rebalance(p_customer uuid, p_feature text, p_amount numeric, p_period text,
                                              p_window timestamptz, p_window_end timestamptz, p_limit numeric,
                                              p_thresholds numeric[], p_total numeric, p_stripes int, p_grow boolean)
returns void language plpgsql volatile
as $$
declare
    max_stripes constant int := 16;
    v_n     int := p_stripes;
    v_rem   numeric;
    v_share numeric;
begin
    if p_grow and v_n < max_stripes then
        insert into entitlements.usage_counters
               (customer_id, feature_key, period, window_start, window_end, stripe, used, cap, basis)
        select p_customer, p_feature, p_period, p_window, p_window_end, g, 0, 0, p_limit
          from generate_series(v_n, least(v_n * 2, max_stripes) - 1) g
        on conflict do nothing;
        v_n := least(v_n * 2, max_stripes);
    end if;
    v_rem := greatest(entitlements._quota_bound(p_limit, p_thresholds, p_total + p_amount) - p_total - p_amount, 0);
    v_share := case when p_limit = 'Infinity' then 'Infinity' else floor(v_rem / v_n) end;
    update entitlements.usage_counters c
       set used = c.used + case when c.stripe = 0 then p_amount else 0 end,
           cap = case when p_limit = 'Infinity' then 'Infinity'
                      when c.stripe = 0 then c.used + p_amount + v_rem - v_share * (v_n - 1)
                      else c.used + v_share end,
           basis = p_limit, stripes = v_n, split = entitlements._thresholds_key(p_thresholds)
     where c.customer_id = p_customer and c.feature_key = p_feature
       and c.period = p_period and c.window_start = p_window;
end
$$;

create or replace function entitlements._meter_raise_quota(p_customer uuid, p_feature text, p_amount numeric, p_limit numeric,
                                                p_period text, p_total numeric, p_resets_at timestamptz,
                                                p_windows jsonb)
returns void language plpgsql stable
as $$
declare
    v_plan text := entitlements._upgrade_plan(p_customer, p_feature, p_amount, p_windows);
begin
    -- Counted for the security rules (monitoring/signals.sql) before the error ends the transaction.
    perform entitlements._note_refusal('quota_refused', p_customer::text, p_feature);
    raise exception 'quota exceeded for feature "%": limit % per %', p_feature, p_limit, replace(p_period, '_', ' ')
        using errcode = 'PT429',
              detail = case when p_resets_at is null
                            then format('%s of %s used; a lifetime quota does not reset.', p_total, p_limit)
                            else format('%s of %s used; the count resets at %s.', p_total, p_limit,
                                        to_char(p_resets_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')) end,
              hint = case when v_plan is null
                          then 'No public plan allows more; ask for a quota boost.'
                          else format('Upgrade to the "%s" plan to allow it.', v_plan) end;
end
$$;

create or replace function entitlements._meter_raise_not_included(p_customer uuid, p_feature text, p_amount numeric,
                                                       p_windows jsonb)
returns void language plpgsql stable
as $$
declare
    v_plan text := entitlements._upgrade_plan(p_customer, p_feature, p_amount, p_windows);
begin
    perform entitlements._note_refusal('feature_refused', p_customer::text, p_feature);
    raise exception 'feature "%" is not included in your plan', p_feature
        using errcode = 'PT403',
              hint = case when v_plan is null then 'No public plan includes it.'
                          else format('Upgrade to the "%s" plan to use it.', v_plan) end;
end
$$;

create or replace function entitlements._meter_undo(p_customer uuid, p_feature text, p_amount numeric, p_periods text[],
                                         p_windows timestamptz[], p_stripes smallint[], p_resplit boolean[],
                                         p_key text)
returns void language plpgsql volatile
as $$
begin
    for i in 1 .. coalesce(array_length(p_periods, 1), 0) loop
        update entitlements.usage_counters c
           set used = c.used - case when c.stripe = p_stripes[i] then p_amount else 0 end,
               cap = case when p_resplit[i] then c.used - case when c.stripe = p_stripes[i] then p_amount else 0 end
                          else c.cap end
         where c.customer_id = p_customer and c.feature_key = p_feature
           and c.period = p_periods[i] and c.window_start = p_windows[i]
           and (c.stripe = p_stripes[i] or p_resplit[i]);
    end loop;
    if p_key is not null then
        delete from entitlements.usage_idempotency k
         where k.customer_id = p_customer and k.idempotency_key = p_key;
    end if;
end
$$;

create or replace function entitlements._stripe_read_subscription(subscription jsonb,
    out id text, out stripe_customer text, out status text, out rank smallint, out plan text,
    out period_start timestamptz, out period_end timestamptz, out quantity integer)
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_items jsonb;
    v_item jsonb;
begin
    id := subscription ->> 'id';
    stripe_customer := entitlements._stripe_id(subscription -> 'customer');
    status := subscription ->> 'status';
    rank := entitlements._stripe_status_rank(status);
    if jsonb_typeof(subscription) is distinct from 'object' or id is null or id !~ '^sub_[A-Za-z0-9_]+$'
       or coalesce(subscription ->> 'object', 'subscription') <> 'subscription' then
        raise exception 'not a Stripe subscription object (id %)', coalesce(id, 'missing') using errcode = '22023';
    end if;
    if rank is null then
        raise exception 'Stripe subscription %: unknown status "%"', id, status using errcode = '22023';
    end if;
    if stripe_customer is null then
        raise exception 'Stripe subscription % has no customer', id using errcode = '22023';
    end if;

    -- Items: the current API lists them; very old versions carry one `plan` on the subscription.
    v_items := case when jsonb_typeof(subscription #> '{items,data}') = 'array' then subscription #> '{items,data}'
                    when subscription ? 'plan' then jsonb_build_array(jsonb_build_object(
                        'plan', subscription -> 'plan', 'quantity', subscription -> 'quantity'))
                    else '[]' end;
    -- The plan: the most expensive one any item's price maps to through stripe_price_ids.
    select p.key, i.item into plan, v_item
      from jsonb_array_elements(v_items) i(item)
      join entitlements.plans p
        on coalesce(entitlements._stripe_id(i.item -> 'price'), entitlements._stripe_id(i.item -> 'plan')) = any (p.stripe_price_ids)
     order by p.price_cents desc, p.position, p.key
     limit 1;
    if plan is null then
        raise exception 'Stripe subscription %: no plan has any of its prices (%)', id,
            coalesce((select string_agg(coalesce(entitlements._stripe_id(i -> 'price'), entitlements._stripe_id(i -> 'plan')), ', ')
                        from jsonb_array_elements(v_items) i), 'none')
            using errcode = '22023', hint = 'Add the price id to a plan''s stripe_price_ids in the catalog.';
    end if;
    period_start := coalesce(entitlements._stripe_ts(v_item -> 'current_period_start'),
                             entitlements._stripe_ts(subscription -> 'current_period_start'));
    period_end := coalesce(entitlements._stripe_ts(v_item -> 'current_period_end'),
                           entitlements._stripe_ts(subscription -> 'current_period_end'));
    if period_start >= period_end then
        period_start := null;
    end if;
    quantity := greatest(1, coalesce((v_item ->> 'quantity')::integer, (subscription ->> 'quantity')::integer, 1));
end
$$;

create or replace function entitlements._stripe_write_subscription(
    sub uuid, stripe_subscription_id text, customer uuid, plan text, status text, quantity integer,
    period_start timestamptz, period_end timestamptz, trial_end timestamptz, cancel_at_period_end boolean,
    canceled_at timestamptz, ended_at timestamptz, out id uuid, out outcome text)
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    if sub is null then
        insert into entitlements.subscriptions (customer_id, plan_key, status, quantity, current_period_start,
            current_period_end, trial_end, cancel_at_period_end, canceled_at, ended_at, source, stripe_subscription_id)
        values (customer, plan, status, quantity, period_start, period_end, trial_end, cancel_at_period_end,
                canceled_at, ended_at, 'stripe', _stripe_write_subscription.stripe_subscription_id)
        returning subscriptions.id into id;
        outcome := 'created';
        return;
    end if;
    id := sub;
    update entitlements.subscriptions s
       set customer_id = customer, plan_key = plan, status = _stripe_write_subscription.status,
           quantity = _stripe_write_subscription.quantity, current_period_start = period_start,
           current_period_end = period_end, trial_end = _stripe_write_subscription.trial_end,
           cancel_at_period_end = _stripe_write_subscription.cancel_at_period_end,
           canceled_at = _stripe_write_subscription.canceled_at, ended_at = _stripe_write_subscription.ended_at,
           source = 'stripe'
     where s.id = sub
       and (s.customer_id, s.plan_key, s.status, s.quantity, s.current_period_start, s.current_period_end,
            s.trial_end, s.cancel_at_period_end, s.canceled_at, s.ended_at, s.source)
           is distinct from
           (customer, plan, _stripe_write_subscription.status, _stripe_write_subscription.quantity, period_start,
            period_end, _stripe_write_subscription.trial_end, _stripe_write_subscription.cancel_at_period_end,
            _stripe_write_subscription.canceled_at, _stripe_write_subscription.ended_at, 'stripe');
    outcome := case when found then 'updated' else 'unchanged' end;
end
$$;

create or replace function entitlements._stripe_apply_subscription(subscription jsonb, observed_at timestamptz, reason text)
returns text language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_read record;
    v_customer uuid;
    v_ended timestamptz;
    v_cancel_at_end boolean := coalesce((subscription ->> 'cancel_at_period_end')::boolean, false);
    v_prev entitlements.stripe_subscriptions;
    v_observed timestamptz := observed_at;
    v_written record;
begin
    select * into v_read from entitlements._stripe_read_subscription(subscription);

    v_customer := entitlements._stripe_customer(v_read.stripe_customer,
        coalesce(subscription -> 'metadata', '{}') || coalesce(case when jsonb_typeof(subscription -> 'customer') = 'object'
                                                                    then subscription #> '{customer,metadata}' end, '{}'));
    if v_customer is null then
        raise exception 'Stripe customer % is not linked to an entitlements customer', v_read.stripe_customer
            using errcode = 'P0002',
                  hint = 'Call entitlements.link_stripe_customer(customer, stripe_customer_id), or set '
                         'metadata.entitlements_customer_id on the Stripe subscription, customer or Checkout Session.';
    end if;

    perform entitlements.stripe_lock_subscription(v_read.id);
    select * into v_prev from entitlements.stripe_subscriptions s where s.stripe_subscription_id = v_read.id;
    if v_observed is null then
        v_observed := greatest(clock_timestamp(), v_prev.observed_at + interval '1 microsecond');
    elsif not entitlements._stripe_is_newer(v_prev, v_observed, v_read.period_start, v_read.rank) then
        return 'stale';
    end if;

    -- Stripe's `canceled` is final whatever cancel_at_period_end says: nothing runs to the period end.
    if v_read.status in ('canceled', 'incomplete_expired') then
        v_cancel_at_end := false;
        v_ended := coalesce(entitlements._stripe_ts(subscription -> 'ended_at'),
                            entitlements._stripe_ts(subscription -> 'canceled_at'), v_observed);
    end if;

    perform set_config('entitlements.reason', coalesce(reason, 'stripe ' || v_read.id), true);
    select * into v_written from entitlements._stripe_write_subscription(
        coalesce(v_prev.subscription_id,
                 (select s.id from entitlements.subscriptions s where s.stripe_subscription_id = v_read.id)),
        v_read.id, v_customer, v_read.plan, v_read.status, v_read.quantity, v_read.period_start, v_read.period_end,
        entitlements._stripe_ts(subscription -> 'trial_end'), v_cancel_at_end,
        entitlements._stripe_ts(subscription -> 'canceled_at'), v_ended);
    if entitlements._stripe_sync_revenue(v_written.id, v_customer, subscription, v_observed)
       and v_written.outcome = 'unchanged' then
        v_written.outcome := 'updated';
    end if;
    perform entitlements._stripe_remember(v_read.id, v_written.id, v_observed, v_read.period_start, v_read.rank,
                                          coalesce(reason, case when observed_at is null then 'api' else 'payload' end));
    perform set_config('entitlements.reason', '', true);
    return v_written.outcome;
end
$$;

create or replace function entitlements._catalog_apply_features(features jsonb, plan_keys text[])
returns jsonb language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_item jsonb;
    v_feature entitlements.features;
    v_thresholds numeric[];
    v_created text[] := '{}'::text[];
    v_updated text[] := '{}'::text[];
begin
    for v_item in select * from jsonb_array_elements(features) loop
        select * into v_feature from entitlements.features f where f.key = v_item ->> 'key';
        v_thresholds := case when jsonb_typeof(v_item -> 'thresholds') = 'array'
                             then array(select t::numeric from jsonb_array_elements_text(v_item -> 'thresholds') t) end;
        if not found then
            insert into entitlements.features (key, kind, unit, thresholds, unit_cost_cents)
            values (v_item ->> 'key', v_item ->> 'kind', v_item ->> 'unit', v_thresholds,
                    (v_item ->> 'unit_cost_cents')::numeric);
            v_created := v_created || (v_item ->> 'key');
        elsif v_feature.kind is distinct from v_item ->> 'kind' or v_feature.unit is distinct from v_item ->> 'unit'
              or v_feature.thresholds is distinct from v_thresholds
              or v_feature.unit_cost_cents is distinct from (v_item ->> 'unit_cost_cents')::numeric then
            if v_feature.kind <> v_item ->> 'kind' and (
                   exists (select 1 from entitlements.plan_entitlements e
                            where e.feature_key = v_feature.key and e.plan_key <> all (plan_keys))
                or exists (select 1 from entitlements.grants g where g.feature_key = v_feature.key)) then
                raise exception 'invalid catalog: feature "%" cannot change kind from % to %: plans outside this document or grants still use it',
                    v_feature.key, v_feature.kind, v_item ->> 'kind'
                    using errcode = '22023', hint = 'Use a new feature key for the new kind.';
            end if;
            update entitlements.features f
               set kind = v_item ->> 'kind', unit = v_item ->> 'unit', thresholds = v_thresholds,
                   unit_cost_cents = (v_item ->> 'unit_cost_cents')::numeric, updated_at = entitlements.now()
             where f.key = v_feature.key;
            v_updated := v_updated || v_feature.key;
        end if;
    end loop;
    return jsonb_build_object('created', to_jsonb(v_created), 'updated', to_jsonb(v_updated));
end
$$;

create or replace function entitlements._catalog_apply_plan(item jsonb)
returns text language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_plan entitlements.plans;
    v_changed boolean := false;
    v_n bigint;
begin
    select * into v_plan from entitlements.plans p where p.key = item ->> 'key';
    if not found then
        insert into entitlements.plans (key, name, description, price_cents, currency, interval, is_default,
                                        public, active, trial_days, grace_days, position, stripe_price_ids, metadata,
                                        tenant_id)
        select r.key, r.name, r.description, r.price_cents, r.currency, r.interval, r.is_default,
               r.public, true, r.trial_days, r.grace_days, r.position, r.stripe_price_ids, r.metadata, r.tenant_id
          from jsonb_populate_record(null::entitlements.plans, item) r;
    elsif (to_jsonb(v_plan) - 'key' - 'created_at' - 'updated_at')
          is distinct from ((item - 'key' - 'entitlements') || '{"active": true}') then
        update entitlements.plans p
           set name = r.name, description = r.description, price_cents = r.price_cents, currency = r.currency,
               interval = r.interval, is_default = r.is_default, public = r.public, active = true,
               trial_days = r.trial_days, grace_days = r.grace_days, position = r.position,
               stripe_price_ids = r.stripe_price_ids, metadata = r.metadata, tenant_id = r.tenant_id,
               updated_at = entitlements.now()
          from jsonb_populate_record(null::entitlements.plans, item) r
         where p.key = v_plan.key;
        v_changed := true;
    end if;

    delete from entitlements.plan_entitlements e
     where e.plan_key = item ->> 'key' and not (item -> 'entitlements') ? e.feature_key;
    get diagnostics v_n = row_count;
    v_changed := v_changed or v_n > 0;

    insert into entitlements.plan_entitlements as e (plan_key, feature_key, spec)
    select item ->> 'key', x.key, x.value from jsonb_each(item -> 'entitlements') x
    on conflict (plan_key, feature_key) do update set spec = excluded.spec
     where e.spec is distinct from excluded.spec;
    get diagnostics v_n = row_count;
    v_changed := v_changed or v_n > 0;

    return case when v_plan.key is null then 'created' when v_changed then 'updated' end;
end
$$;

create or replace function entitlements._catalog_check_stripe_prices()
returns void language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_conflict record;
begin
    select a.key as a, b.key as b, x.price into v_conflict
      from entitlements.plans a
      join entitlements.plans b on a.key < b.key
      cross join lateral unnest(a.stripe_price_ids) as x(price)
     where x.price = any (b.stripe_price_ids)
     limit 1;
    if found then
        raise exception 'invalid catalog: Stripe price "%" maps to both plan "%" and plan "%"', v_conflict.price, v_conflict.a, v_conflict.b
            using errcode = '22023';
    end if;
end
$$;


create or replace function entitlements._require(allowed boolean, action text, who text default 'an entitlements admin')
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    if not coalesce(allowed, false) then
        perform entitlements._note_permission_refused(action);
        raise exception 'permission denied: % requires %', action, who
            using errcode = '42501',
                  hint = 'Call it as a role granted entitlements_admin, or add the user to entitlements.admins.';
    end if;
end
$$;

create or replace function entitlements._meter_limit(p_customer uuid, p_feature text, p_amount numeric, p_mode text,
                                          p_replay boolean, p_period text, p_window timestamptz,
                                          p_window_end timestamptz, p_limit numeric, p_overage text,
                                          p_windows jsonb, p_thresholds numeric[],
                                          out stripe smallint, out total numeric, out refused boolean,
                                          out over numeric, out crossed numeric[])
language plpgsql volatile
as $$
declare
    v_take record;
    v_n int;
begin
    refused := false;
    if p_mode = 'check' or p_replay then
        total := entitlements._meter_window_total(p_customer, p_feature, p_period, p_window);
        refused := p_overage = 'block' and total + p_amount > p_limit and not p_replay;
        return;
    end if;
    v_take := entitlements._meter_take_stripe(p_customer, p_feature, p_amount, p_period, p_window, p_window_end, p_limit,
                                              p_thresholds);
    stripe := v_take.stripe;
    if stripe is not null then
        total := entitlements._meter_window_total(p_customer, p_feature, p_period, p_window);
        return;
    end if;
    -- Slow path, holding stripe 0: take every stripe; a new statement sees every stripe the
    -- previous rebalancer created.
    select coalesce(sum(l.used), 0), count(*)::int into total, v_n
      from (select s.used from entitlements.usage_counters s
             where s.customer_id = p_customer and s.feature_key = p_feature
               and s.period = p_period and s.window_start = p_window
             order by s.stripe
               for update) l;
    if total + p_amount > p_limit and p_overage = 'block' then
        if p_mode = 'consume' then
            perform entitlements._meter_raise_quota(p_customer, p_feature, p_amount, p_limit, p_period, total,
                                                    p_window_end, p_windows);
        end if;
        refused := true;
        return;
    end if;
    over := greatest(0, total + p_amount - greatest(total, p_limit));
    perform entitlements._meter_rebalance(p_customer, p_feature, p_amount, p_period, p_window, p_window_end, p_limit,
                                          p_thresholds, total, v_n, v_take.grow);
    crossed := array(select t from unnest(p_thresholds) t
                      where total < t * p_limit / 100 and t * p_limit / 100 <= total + p_amount order by t);
    stripe := 0;
    total := total + p_amount;
end
$$;


-- Provisioning (issue #10) and notifications (issue #11): the outbox and its delivery, the
-- events subscriptions and grants write, servers, the worker's applier functions ------------
-- New in 0.2.0; the same statements as sql/outbox/*.sql and sql/provisioning/*.sql.

alter table entitlements.customers
    add column display_name text check (length(display_name) <= 200),
    add column locale text check (locale ~ '^[a-z]{2}(-[A-Z]{2})?$'),
    add column erased_at timestamptz;

CREATE  FUNCTION entitlements."_feature_config"(
	"customer" uuid, /* Uuid */
	"feature" TEXT /* & str */
) RETURNS jsonb /* Option < JsonB > */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'feature_config_wrapper';

-- The outbox: facts worth telling someone about (a subscription started, a server became
-- ready), written in the transaction of the change that caused them, once per dedup key.
-- Delivery (app webhooks, email) is outbox/delivery.sql's and the worker's.

create table entitlements.outbox (
    id          bigint generated always as identity primary key,
    kind        text not null check (kind ~ '^[a-z_]+(\.[a-z_]+)+$'),
    -- Not a reference: a default plan meters ids that have no customers row (quota.threshold).
    customer_id uuid,
    -- The same fact is one event: 'server.ready:<server>:<generation>'.
    dedup_key   text not null unique check (length(dedup_key) between 1 and 500),
    payload     jsonb not null default '{}' check (jsonb_typeof(payload) = 'object'
                                                   and entitlements._valid_json(payload, 'outbox.payload')),
    created_at  timestamptz not null default entitlements.now()
);
create index outbox_customer on entitlements.outbox (customer_id, created_at);
comment on table entitlements.outbox is
    'Events to deliver (server.ready, server.failed, ...), once per dedup_key. A customer reads its own.';
select pg_catalog.pg_extension_config_dump('entitlements.outbox', '');
select pg_catalog.pg_extension_config_dump('entitlements.outbox_id_seq', '');
alter table entitlements.outbox enable row level security;
create policy outbox_read on entitlements.outbox for select
    using (entitlements.can_see_customer(customer_id) or entitlements.is_admin());
-- Written only by the extension's functions as a global admin (the worker's role): the
-- dedup key is global, so a tenant admin could otherwise pre-empt another tenant's event.
create policy outbox_admin on entitlements.outbox for insert
    with check (entitlements.is_admin());

-- Record an event once; true when it is new.
create function entitlements._outbox_record(kind text, customer uuid, dedup_key text, payload jsonb)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    insert into entitlements.outbox (kind, customer_id, dedup_key, payload)
    values (kind, customer, dedup_key, coalesce(payload, '{}'))
    on conflict on constraint outbox_dedup_key_key do nothing;
    return found;
end
$$;

-- Delivering the outbox: every event fans out, in the transaction that wrote it, into one
-- delivery per destination (each enabled webhook endpoint that wants its kind; the
-- customer's email when a template for the kind exists). The worker claims deliveries with
-- a lease, sends them (Standard Webhooks signatures, SMTP) and records each attempt; failures
-- back off in the database and end as dead letters an admin can retry.

-- Webhook endpoints of apps. Global admins only: the signing secrets are here.
create table entitlements.webhook_endpoints (
    id          uuid primary key default gen_random_uuid(),
    url         text not null check (url ~ '^https?://[^\s/?#]+' and length(url) <= 2000),
    -- Event kinds it receives; '*' for every kind.
    event_kinds text[] not null check (cardinality(event_kinds) between 1 and 100
                                       and array_position(event_kinds, null) is null),
    -- Standard Webhooks: 'whsec_' and the base64 of 24 to 64 random bytes.
    secret      text not null check (secret ~ '^whsec_[A-Za-z0-9+/]{32,88}={0,2}$'),
    enabled     boolean not null default true,
    created_at  timestamptz not null default entitlements.now(),
    updated_at  timestamptz not null default entitlements.now()
);
comment on table entitlements.webhook_endpoints is
    'App webhook endpoints (add_webhook_endpoint); payloads signed the Standard Webhooks way. Global admins only.';
select pg_catalog.pg_extension_config_dump('entitlements.webhook_endpoints', '');
alter table entitlements.webhook_endpoints enable row level security;
create policy webhook_endpoints_admin on entitlements.webhook_endpoints for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());
select entitlements.enable_audit('entitlements.webhook_endpoints');

-- Email templates per kind and locale: subject, text and HTML bodies with {{placeholders}}
-- (the event's payload keys, customer_name, customer_email, kind). Admins edit them.
create table entitlements.email_templates (
    kind       text not null check (kind ~ '^[a-z_]+(\.[a-z_]+)+$'),
    locale     text not null default 'en' check (locale ~ '^[a-z]{2}(-[A-Z]{2})?$'),
    subject    text not null check (length(subject) between 1 and 500),
    body_text  text not null check (length(body_text) between 1 and 100000),
    body_html  text check (length(body_html) <= 200000),
    updated_at timestamptz not null default entitlements.now(),
    primary key (kind, locale)
);
comment on table entitlements.email_templates is
    'Email per event kind and locale; {{key}} is replaced by the event''s payload value (HTML-escaped in body_html).';
select pg_catalog.pg_extension_config_dump('entitlements.email_templates', '');
alter table entitlements.email_templates enable row level security;
create policy email_templates_read on entitlements.email_templates for select using (entitlements.is_admin());
create policy email_templates_admin on entitlements.email_templates for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());
select entitlements.enable_audit('entitlements.email_templates');

create table entitlements.deliveries (
    id              bigint generated always as identity primary key,
    event_id        bigint not null references entitlements.outbox (id) on delete cascade,
    channel         text not null check (channel in ('webhook', 'email')),
    endpoint_id     uuid references entitlements.webhook_endpoints (id),
    -- The URL or email address at the time the event was written.
    target          text not null check (length(target) <= 2000),
    status          text not null default 'pending' check (status in ('pending', 'delivered', 'dead', 'canceled')),
    attempts        integer not null default 0 check (attempts >= 0),
    next_attempt_at timestamptz not null default entitlements.now(),
    last_error      text check (length(last_error) <= 2000),
    delivered_at    timestamptz,
    created_at      timestamptz not null default entitlements.now(),
    check ((channel = 'webhook') = (endpoint_id is not null))
);
create index deliveries_due on entitlements.deliveries (next_attempt_at) where status = 'pending';
create index deliveries_event on entitlements.deliveries (event_id);
create index deliveries_dead on entitlements.deliveries (channel) where status = 'dead';
comment on table entitlements.deliveries is
    'One per event and destination: pending, delivered, dead (retry_delivery) or canceled (its customer was erased). A customer reads its own.';
select pg_catalog.pg_extension_config_dump('entitlements.deliveries', '');
select pg_catalog.pg_extension_config_dump('entitlements.deliveries_id_seq', '');
alter table entitlements.deliveries enable row level security;
-- A customer sees the emails sent to it (not the app's webhook URLs).
create policy deliveries_read on entitlements.deliveries for select
    using (entitlements.is_admin()
           or (channel = 'email' and exists (select 1 from entitlements.outbox o where o.id = event_id)));
create policy deliveries_admin on entitlements.deliveries for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());

create table entitlements.delivery_attempts (
    id          bigint generated always as identity primary key,
    delivery_id bigint not null references entitlements.deliveries (id) on delete cascade,
    at          timestamptz not null default entitlements.now(),
    ok          boolean not null,
    status_code integer check (status_code between 100 and 599),
    latency_ms  integer check (latency_ms >= 0),
    error       text check (length(error) <= 2000),
    worker      text check (length(worker) <= 200)
);
create index delivery_attempts_delivery on entitlements.delivery_attempts (delivery_id);
comment on table entitlements.delivery_attempts is 'Every attempt of every delivery (status, latency, error). Admins only.';
select pg_catalog.pg_extension_config_dump('entitlements.delivery_attempts', '');
select pg_catalog.pg_extension_config_dump('entitlements.delivery_attempts_id_seq', '');
alter table entitlements.delivery_attempts enable row level security;
create policy delivery_attempts_admin on entitlements.delivery_attempts for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());

-- Endpoints ------------------------------------------------------------------------------------

create function entitlements.add_webhook_endpoint(url text, event_kinds text[], secret text default null)
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_id uuid;
begin
    perform entitlements._require_admin('add_webhook_endpoint');
    perform entitlements._require_not_null(url, 'url');
    perform entitlements._require_not_null(event_kinds, 'event_kinds');
    if url !~ '^https?://[^\s/?#]+' or length(url) > 2000 then
        raise exception 'url must be an http(s) URL, got %', left(url, 100) using errcode = '22023';
    end if;
    if cardinality(event_kinds) = 0 or exists (select 1 from unnest(event_kinds) k
                                                where k is null or (k <> '*' and k !~ '^[a-z_]+(\.[a-z_]+)+$')) then
        raise exception 'event_kinds must name kinds such as subscription.created, or *'
            using errcode = '22023';
    end if;
    if secret is not null and secret !~ '^whsec_[A-Za-z0-9+/]{32,88}={0,2}$' then
        raise exception 'secret must be whsec_ followed by the base64 of 24 to 64 bytes' using errcode = '22023';
    end if;
    insert into entitlements.webhook_endpoints (url, event_kinds, secret)
    values (url, event_kinds,
            coalesce(secret, 'whsec_' || encode(sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text,
                                                                  'UTF8')), 'base64')))
    returning id into v_id;
    return v_id;
end
$$;
comment on function entitlements.add_webhook_endpoint(text, text[], text) is
    'Register an app webhook endpoint for these event kinds (* = all); the secret is generated when not given '
    '(read it from webhook_endpoints). Global admins only.';

create or replace function entitlements.remove_webhook_endpoint(endpoint uuid)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_admin('remove_webhook_endpoint');
    -- Kept (disabled) for the deliveries that name it; what it still had to receive is dead.
    update entitlements.webhook_endpoints e set enabled = false, updated_at = entitlements.now()
     where e.id = endpoint and e.enabled;
    if not found then
        return false;
    end if;
    update entitlements.deliveries d set status = 'dead', last_error = 'the endpoint was removed'
     where d.endpoint_id = endpoint and d.status = 'pending';
    return true;
end
$$;
comment on function entitlements.remove_webhook_endpoint(uuid) is
    'Stop sending to an endpoint: its pending deliveries end dead, its past ones stay. Global admins only.';

-- The templates shipped with the extension (English), used where no row of email_templates
-- has the kind in that locale.
create or replace function entitlements.default_email_templates()
returns setof entitlements.email_templates language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select t.kind, 'en', t.subject, t.body_text, t.body_html, '2026-12-01 00:00:00+00'::timestamptz
      from (values
        ('subscription.created', 'Welcome to {{plan}}',
         E'Hello {{customer_name}},\n\nyour {{plan}} subscription is active. Welcome!',
         '<p>Hello {{customer_name}},</p><p>your {{plan}} subscription is active. Welcome!</p>'),
        ('subscription.canceled', 'Your {{plan}} subscription is canceled',
         E'Hello {{customer_name}},\n\nyour {{plan}} subscription is canceled.',
         '<p>Hello {{customer_name}},</p><p>your {{plan}} subscription is canceled.</p>'),
        ('payment.failed', 'Your payment for {{plan}} failed',
         E'Hello {{customer_name}},\n\nwe could not take the payment for {{plan}}. Please update your payment method.',
         '<p>Hello {{customer_name}},</p><p>we could not take the payment for {{plan}}. Please update your payment method.</p>'),
        ('server.ready', 'Your server {{name}} is ready',
         E'Hello {{customer_name}},\n\nyour Matrix server {{name}} is ready.',
         '<p>Hello {{customer_name}},</p><p>your Matrix server {{name}} is ready.</p>'),
        ('server.suspended', 'Your server {{name}} is suspended',
         E'Hello {{customer_name}},\n\nyour Matrix server {{name}} is suspended until access is restored. Its data is kept.',
         '<p>Hello {{customer_name}},</p><p>your Matrix server {{name}} is suspended until access is restored. Its data is kept.</p>'),
        ('server.failed', 'We could not set up your server {{name}}',
         E'Hello {{customer_name}},\n\nsetting up your Matrix server {{name}} failed. We are on it.',
         '<p>Hello {{customer_name}},</p><p>setting up your Matrix server {{name}} failed. We are on it.</p>'),
        ('trial.ending', 'Your {{plan}} trial ends soon',
         E'Hello {{customer_name}},\n\nyour {{plan}} trial ends on {{trial_end}}. Subscribe to keep your features.',
         '<p>Hello {{customer_name}},</p><p>your {{plan}} trial ends on {{trial_end}}. Subscribe to keep your features.</p>'),
        ('access.suspended', 'Your {{plan}} access is paused',
         E'Hello {{customer_name}},\n\nyour {{plan}} features are no longer available ({{reason}}). Renew to get them back.',
         '<p>Hello {{customer_name}},</p><p>your {{plan}} features are no longer available ({{reason}}). Renew to get them back.</p>'),
        ('access.restored', 'Your {{plan}} access is back',
         E'Hello {{customer_name}},\n\nyour {{plan}} features are available again.',
         '<p>Hello {{customer_name}},</p><p>your {{plan}} features are available again.</p>'),
        ('security.alert', '[{{severity}}] Security alert: {{rule}}',
         E'Hello {{customer_name}},\n\nthe security rule {{rule}} found {{subject}} ({{events}} events from {{first_seen}} to {{last_seen}}; seen {{count}} times). Alert {{alert_id}}: {{details}}',
         '<p>Hello {{customer_name}},</p><p>the security rule <b>{{rule}}</b> found {{subject}} ({{events}} events from {{first_seen}} to {{last_seen}}; seen {{count}} times).</p><p>Alert {{alert_id}}: {{details}}</p>'),
        ('quota.threshold', 'You have used {{threshold}}% of your {{feature}}',
         E'Hello {{customer_name}},\n\nyou have used {{used}} of {{limit}} {{feature}} this {{period}}. The count resets at {{resets_at}}.',
         '<p>Hello {{customer_name}},</p><p>you have used {{used}} of {{limit}} {{feature}} this {{period}}. The count resets at {{resets_at}}.</p>')
      ) as t(kind, subject, body_text, body_html)
$$;
comment on function entitlements.default_email_templates() is
    'The email templates shipped with the extension; a row of email_templates for the kind replaces them.';

-- The template for a kind in a locale: that locale's, else English (an admin's row, else the
-- shipped one), else any.
create function entitlements._email_template(kind text, locale text)
returns entitlements.email_templates language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select t.* from (select * from entitlements.email_templates x where x.kind = _email_template.kind
                     union all
                     select * from entitlements.default_email_templates() d
                      where d.kind = _email_template.kind
                        and not exists (select 1 from entitlements.email_templates x
                                         where x.kind = d.kind and x.locale = d.locale)) t
     order by t.locale = coalesce(_email_template.locale, 'en') desc, t.locale = 'en' desc, t.locale
     limit 1
$$;

-- Fan-out ---------------------------------------------------------------------------------------

-- {{key}} in `template` replaced by the value of `key` in `vars` (text as is, other JSON as
-- JSON text); HTML-escaped when `html`. Unknown keys become empty.
create function entitlements._render_template(template text, vars jsonb, html boolean)
returns text language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
    -- One pass: the text between placeholders, and the placeholders in order, so a value that
    -- itself contains {{...}} is never expanded.
    v_pattern constant text := '\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}';
    v_parts text[] := regexp_split_to_array(template, v_pattern);
    v_keys text[] := array(select m[1] from regexp_matches(template, v_pattern, 'g') m);
    v_out text := v_parts[1];
    v_value text;
begin
    for i in 1 .. coalesce(cardinality(v_keys), 0) loop
        v_value := coalesce(case jsonb_typeof(vars -> v_keys[i]) when 'string' then vars ->> v_keys[i]
                                                                else (vars -> v_keys[i])::text end, '');
        if html then
            v_value := replace(replace(replace(replace(replace(v_value, '&', '&amp;'), '<', '&lt;'), '>', '&gt;'),
                                       '"', '&quot;'), '''', '&#39;');
        end if;
        v_out := v_out || v_value || v_parts[i + 1];
    end loop;
    return v_out;
end
$$;

-- Definer: an event written by any permitted path fans out to endpoints and emails the
-- writer may not read (secrets, other rows); it reads only the new outbox row.
create or replace function entitlements._outbox_fan_out()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._outbox_fan_out');
    if entitlements._bulk_loading() then
        return null; -- pg_restore: the deliveries are restored as they were
    end if;
    insert into entitlements.deliveries (event_id, channel, endpoint_id, target)
    select new.id, 'webhook', e.id, e.url
      from entitlements.webhook_endpoints e
     where e.enabled and (new.kind = any (e.event_kinds) or '*' = any (e.event_kinds));
    insert into entitlements.deliveries (event_id, channel, target)
    select new.id, 'email', x.email
      from (select entitlements._customer_email(new.customer_id) as email) x
     where x.email is not null and length(x.email) <= 2000
       and (entitlements._email_template(new.kind, (select c.locale from entitlements.customers c
                                                      where c.id = new.customer_id))).kind is not null;
    -- Security alerts (monitoring/alerts.sql) go to the admins who may see them: global ones,
    -- and those of the alert's tenant, at their profile's email.
    -- Only at a profile no one else may edit: a global admin's own row has no tenant (a
    -- tenant's admins edit that tenant's customers), a tenant admin's is in its tenant.
    insert into entitlements.deliveries (event_id, channel, target)
    select distinct new.id, 'email', c.email
      from entitlements.admins a
      join entitlements.customers c on c.id = a.user_id and c.tenant_id is not distinct from a.tenant_id
     where new.kind like 'security.%' and c.email like '%@%' and length(c.email) <= 320
       and (a.tenant_id is null or a.tenant_id::text = new.payload ->> 'tenant_id');
    -- Apps may LISTEN for events (no customer id: anyone may LISTEN; the row is behind RLS).
    perform pg_notify('entitlements_events', jsonb_build_object('id', new.id, 'kind', new.kind)::text);
    perform pg_notify('entitlements_outbox', '');
    return null;
end
$$;
create trigger outbox_fan_out after insert on entitlements.outbox
    for each row execute function entitlements._outbox_fan_out();

-- The worker ------------------------------------------------------------------------------------

create type entitlements.delivery_work as (
    delivery_id   bigint,
    event_id      bigint,
    kind          text,
    customer_id   uuid,
    channel       text,
    target        text,
    message_id    text,
    body          jsonb,
    secret        text,
    email_to_name text,
    subject       text,
    body_text     text,
    body_html     text,
    attempts      integer
);

create or replace function entitlements._delivery_lease_name(delivery bigint)
returns text language sql immutable parallel safe strict
return 'delivery:' || delivery::text;

-- Claim due deliveries of these channels with a lease, each with what to send.
create or replace function entitlements.delivery_claim(holder text, lease interval, max_deliveries integer,
                                            channels text[] default array['webhook', 'email'])
returns setof entitlements.delivery_work language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    d entitlements.deliveries;
    o entitlements.outbox;
    v_vars jsonb;
    v_template entitlements.email_templates;
    v_work entitlements.delivery_work;
    v_name text;
begin
    perform entitlements._require_admin('delivery_claim');
    perform entitlements._require_not_null(holder, 'holder');
    if lease is null or lease < interval '1 second' or lease > interval '1 hour' then
        raise exception 'lease must be from 1 second to 1 hour, got %', coalesce(lease::text, 'NULL')
            using errcode = '22023';
    end if;
    if max_deliveries is null or max_deliveries not between 1 and 10000 then
        raise exception 'max_deliveries must be from 1 to 10000, got %', coalesce(max_deliveries::text, 'NULL')
            using errcode = '22023';
    end if;
    for d in
        select x.* from entitlements.deliveries x
         where x.status = 'pending' and x.next_attempt_at <= entitlements.now() and x.channel = any (channels)
           and not exists (select 1 from entitlements.leases l
                            where l.name = entitlements._delivery_lease_name(x.id) and l.until >= clock_timestamp())
         order by x.next_attempt_at, x.id
         limit max_deliveries
           for update of x skip locked
    loop
        continue when not entitlements._take_free_lease(entitlements._delivery_lease_name(d.id), holder, lease);
        select * into o from entitlements.outbox where id = d.event_id;
        v_work := null;
        v_work.delivery_id := d.id;
        v_work.event_id := o.id;
        v_work.kind := o.kind;
        v_work.customer_id := o.customer_id;
        v_work.channel := d.channel;
        v_work.target := d.target;
        -- The same for every attempt: a receiver deduplicates on it.
        v_work.message_id := format('msg_%s_%s', o.id, d.id);
        v_work.attempts := d.attempts;
        if d.channel = 'webhook' then
            v_work.body := jsonb_build_object(
                'type', o.kind,
                'timestamp', to_char(o.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                'data', o.payload || jsonb_build_object('customer_id', o.customer_id, 'event_id', o.id));
            select e.secret into v_work.secret from entitlements.webhook_endpoints e where e.id = d.endpoint_id;
        else
            select c.display_name into v_name from entitlements.customers c where c.id = o.customer_id;
            v_template := entitlements._email_template(o.kind,
                              (select c.locale from entitlements.customers c where c.id = o.customer_id));
            v_vars := o.payload || jsonb_build_object('kind', o.kind, 'customer_email', d.target,
                                                      'customer_name', coalesce(v_name, d.target));
            v_work.email_to_name := v_name;
            v_work.subject := entitlements._render_template(v_template.subject, v_vars, false);
            v_work.body_text := entitlements._render_template(v_template.body_text, v_vars, false);
            v_work.body_html := entitlements._render_template(v_template.body_html, v_vars, true);
        end if;
        return next v_work;
    end loop;
end
$$;
comment on function entitlements.delivery_claim(text, interval, integer, text[]) is
    'Lease due deliveries of these channels to holder, each with its message id, body (webhooks: the JSON to '
    'sign and POST) or rendered email. The worker''s; admins only.';

-- Record an attempt and give the lease back; false (nothing recorded) when the lease was lost.
create or replace function entitlements._delivery_attempt(delivery_id bigint, holder text, ok boolean, status_code integer,
                                               latency_ms integer, error text)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_admin('recording a delivery');
    perform entitlements._require_not_null(delivery_id, 'delivery_id');
    perform entitlements._require_not_null(holder, 'holder');
    if status_code not between 100 and 599 or latency_ms < 0 then
        raise exception 'status_code must be an HTTP status and latency_ms not negative' using errcode = '22023';
    end if;
    -- Row, then lease: delivery_claim's order.
    perform 1 from entitlements.deliveries d where d.id = delivery_id for update;
    if not found then
        raise exception 'delivery % does not exist', delivery_id using errcode = 'P0002';
    end if;
    if not entitlements.release_lease(entitlements._delivery_lease_name(delivery_id), holder) then
        return false;
    end if;
    insert into entitlements.delivery_attempts (delivery_id, ok, status_code, latency_ms, error, worker)
    values (delivery_id, ok, status_code, latency_ms, left(error, 2000), left(holder, 200));
    return true;
end
$$;

create or replace function entitlements.delivery_done(delivery_id bigint, holder text, status_code integer default null,
                                           latency_ms integer default null)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    if not entitlements._delivery_attempt(delivery_id, holder, true, status_code, latency_ms, null) then
        return false;
    end if;
    update entitlements.deliveries d
       set status = 'delivered', delivered_at = entitlements.now(), attempts = d.attempts + 1, last_error = null
     where d.id = delivery_id;
    return true;
end
$$;
comment on function entitlements.delivery_done(bigint, text, integer, integer) is
    'The worker records a delivery as sent. False when its lease was lost. Admins only.';

-- A failed attempt: the next waits 2^attempts seconds (at most an hour), +-25%; after
-- settings.delivery_max_attempts the delivery is dead (NULL returned) until retry_delivery.
create or replace function entitlements.delivery_failed(delivery_id bigint, holder text, error text,
                                             status_code integer default null, latency_ms integer default null,
                                             permanent boolean default false)
returns entitlements.failure language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_max integer := (entitlements._settings()).delivery_max_attempts;
    d entitlements.deliveries;
begin
    if not entitlements._delivery_attempt(delivery_id, holder, false, status_code, latency_ms,
                                          coalesce(error, 'unknown error')) then
        return row('lease_lost', null)::entitlements.failure;
    end if;
    update entitlements.deliveries x
       set attempts = x.attempts + 1, last_error = left(coalesce(error, 'unknown error'), 2000),
           next_attempt_at = entitlements.now() + entitlements._backoff(x.attempts),
           status = case when x.attempts + 1 >= v_max or coalesce(permanent, false) then 'dead' else x.status end
     where x.id = delivery_id
    returning * into d;
    return case when d.status = 'dead' then row('final', null)::entitlements.failure
                else row('retry', d.next_attempt_at)::entitlements.failure end;
end
$$;
comment on function entitlements.delivery_failed(bigint, text, text, integer, integer, boolean) is
    'The worker records a failed attempt: retry (backoff with jitter), final (dead: after '
    'settings.delivery_max_attempts, or at once when permanent, e.g. an SMTP 5xx), or lease_lost (not recorded). Admins only.';

-- What waits: deliveries pending (due or backing off) and dead letters, per channel, for the
-- worker's gauges (entitlements_deliveries_pending / _dead) and an admin's glance.
create function entitlements.delivery_stats()
returns jsonb language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_admin('delivery_stats');
    return (
        select jsonb_build_object(
            'pending', jsonb_build_object('webhook', count(*) filter (where d.status = 'pending' and d.channel = 'webhook'),
                                          'email', count(*) filter (where d.status = 'pending' and d.channel = 'email')),
            'dead', jsonb_build_object('webhook', count(*) filter (where d.status = 'dead' and d.channel = 'webhook'),
                                       'email', count(*) filter (where d.status = 'dead' and d.channel = 'email')))
          from entitlements.deliveries d
         where d.status in ('pending', 'dead'));
end
$$;
comment on function entitlements.delivery_stats() is
    'Deliveries pending and dead, per channel. Admins only.';

create or replace function entitlements.retry_delivery(delivery_id bigint)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_admin('retry_delivery');
    perform entitlements._require_not_null(delivery_id, 'delivery_id');
    update entitlements.deliveries d
       set status = 'pending', attempts = 0, next_attempt_at = entitlements.now()
     where d.id = delivery_id and d.status not in ('delivered', 'canceled');
    if not found then
        if not exists (select 1 from entitlements.deliveries d where d.id = delivery_id) then
            raise exception 'delivery % does not exist', delivery_id using errcode = 'P0002';
        end if;
        return false;
    end if;
    perform pg_notify('entitlements_outbox', '');
    return true;
end
$$;
comment on function entitlements.retry_delivery(bigint) is
    'Send a dead (or waiting) delivery again now, attempts counted from zero. Admins only.';

-- What writes events: triggers on the tables whose changes are facts worth telling, so every
-- path (subscribe, cancel, change_plan, Stripe applies, grants, direct writes by admins)
-- writes them in its own transaction. A rollback writes none.
--
--   subscription.created    a subscription is made
--   subscription.updated    its plan, status, quantity or period changed
--   subscription.canceled   it was canceled (now or at period end)
--   payment.failed          it became past_due (a payment failed)
--   entitlements.changed    a grant was given or revoked
--   server.*                provisioning/applier.sql

-- Definer: the event is written whoever made the change (a tenant admin, the Stripe applier);
-- it reads only the old and new rows of the extension's own table.
create or replace function entitlements._subscription_events()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_payload jsonb;
    v_tx text := txid_current()::text;
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._subscription_events');
    if entitlements._bulk_loading() then
        return null;
    end if;
    v_payload := jsonb_build_object('subscription_id', new.id, 'plan', new.plan_key, 'status', new.status,
                                    'quantity', new.quantity, 'current_period_end', new.current_period_end,
                                    'trial_end', new.trial_end, 'cancel_at_period_end', new.cancel_at_period_end,
                                    'source', new.source);
    if tg_op = 'INSERT' then
        perform entitlements._outbox_record('subscription.created', new.customer_id,
                                            format('subscription.created:%s', new.id), v_payload);
        perform entitlements._access_notice(new);
        return null;
    end if;
    -- Access lost or back by this change (access.sql). When the old row had already lapsed
    -- by time (the expiry task tidying it up), that is why.
    perform entitlements._access_notice(new,
        case when entitlements._lapsed(old, (select p.grace_days from entitlements.plans p where p.key = old.plan_key))
             then entitlements._access_lost_reason(old.status, old.cancel_at_period_end) end);
    -- Canceled once per cancellation: at period end, or at once; not again when a cancellation
    -- at period end takes effect. Undone and made again, it is a new one.
    if (new.cancel_at_period_end and not old.cancel_at_period_end and old.status <> 'canceled')
       or (new.status = 'canceled' and old.status <> 'canceled' and not old.cancel_at_period_end) then
        perform entitlements._outbox_record('subscription.canceled', new.customer_id,
            format('subscription.canceled:%s:%s', new.id, v_tx), v_payload);
    end if;
    if new.status = 'past_due' and old.status <> 'past_due' then
        perform entitlements._outbox_record('payment.failed', new.customer_id,
            format('payment.failed:%s:%s', new.id, entitlements._us(new.status_changed_at)),
            v_payload || jsonb_build_object('previous_status', old.status));
    end if;
    if (new.plan_key, new.status, new.quantity, new.current_period_end, new.trial_end, new.cancel_at_period_end)
       is distinct from
       (old.plan_key, old.status, old.quantity, old.current_period_end, old.trial_end, old.cancel_at_period_end) then
        -- One per subscription and transaction: the same change is one fact.
        perform entitlements._outbox_record('subscription.updated', new.customer_id,
            format('subscription.updated:%s:%s', new.id, v_tx),
            v_payload || jsonb_build_object('previous', jsonb_build_object(
                'plan', old.plan_key, 'status', old.status, 'quantity', old.quantity,
                'current_period_end', old.current_period_end)));
    end if;
    return null;
end
$$;
create trigger subscriptions_events after insert or update on entitlements.subscriptions
    for each row execute function entitlements._subscription_events();

create function entitlements._grant_events()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._grant_events');
    if entitlements._bulk_loading() then
        return null;
    end if;
    if tg_op = 'INSERT' or new.revoked_at is distinct from old.revoked_at then
        perform entitlements._outbox_record('entitlements.changed', new.customer_id,
            format('entitlements.changed:%s:%s', new.id, case when new.revoked_at is null then 'granted' else 'revoked' end),
            jsonb_build_object('grant_id', new.id, 'grant_kind', new.kind, 'feature', new.feature_key,
                               'value', new.value, 'expires_at', new.expires_at,
                               'change', case when new.revoked_at is null then 'granted' else 'revoked' end));
    end if;
    return null;
end
$$;
create trigger grants_events after insert or update on entitlements.grants
    for each row execute function entitlements._grant_events();

-- Servers: a Matrix homeserver per server of a subscriber, in a Kubernetes namespace of its
-- own. The extension decides what each server should be (running, suspended, terminated)
-- from the entitlement rules, at read time; the worker applies it (provisioning/applier.sql)
-- and writes back where it stands.
--
--   server_records   one row per server ever made: its name is never reused
--   server_secrets   Synapse's secrets, made once with the server, readable by admins only
--   servers          the records with the desired state and its generation (a view)

create function entitlements._valid_domains(domains text[])
returns boolean language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
    v_domain text;
begin
    foreach v_domain in array coalesce(domains, '{}') loop
        if not coalesce(entitlements._valid_domain(v_domain), false) then
            raise exception 'invalid domain "%": expected a lower-case DNS name such as chat.example.com', v_domain
                using errcode = '22023';
        end if;
    end loop;
    if cardinality(domains) <> (select count(distinct d) from unnest(domains) d) then
        raise exception 'a domain is given twice in %', domains using errcode = '22023';
    end if;
    return true;
end
$$;

create table entitlements.server_records (
    id                  uuid primary key default gen_random_uuid(),
    customer_id         uuid not null references entitlements.customers (id),
    -- A DNS label short enough that 'mx-' || name is one too; unique for ever.
    name                text not null unique check (name ~ '^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$'),
    namespace           text not null unique generated always as ('mx-' || name) stored,
    -- The first is the Matrix server_name.
    domains             text[] not null check (cardinality(domains) between 1 and 100
                            and array_position(domains, null) is null
                            and entitlements._valid_domains(domains)),
    phase               text not null default 'pending'
                            check (phase in ('pending', 'provisioning', 'ready', 'suspended', 'terminating',
                                             'terminated', 'failed')),
    conditions          jsonb not null default '[]'
                            check (jsonb_typeof(conditions) = 'array'
                                   and entitlements._valid_json(conditions, 'server_records.conditions')),
    -- The generation (see _server_state) the worker last converged.
    observed_generation bigint,
    -- The resources the cluster has now: what a suspended server keeps, what a plan change
    -- is ordered against.
    applied_resources   jsonb check (jsonb_typeof(applied_resources) = 'object'
                                     and entitlements._valid_json(applied_resources, 'server_records.applied_resources')),
    attempts            integer not null default 0 check (attempts >= 0),
    next_attempt_at     timestamptz not null default entitlements.now() check (entitlements._finite(next_attempt_at, 'next_attempt_at')),
    last_error          text check (length(last_error) <= 2000),
    created_at          timestamptz not null default entitlements.now(),
    ready_at            timestamptz,
    updated_at          timestamptz not null default entitlements.now(),
    terminated_at       timestamptz
);
create index server_records_customer on entitlements.server_records (customer_id);
create index server_records_due on entitlements.server_records (next_attempt_at)
    where phase not in ('terminated', 'failed');
comment on table entitlements.server_records is
    'Every server ever made (names are never reused); read entitlements.servers for the desired state.';
select pg_catalog.pg_extension_config_dump('entitlements.server_records', '');
select entitlements.enable_audit('entitlements.server_records');

create table entitlements.server_secrets (
    server_id                  uuid primary key references entitlements.server_records (id),
    signing_key                text not null,
    registration_shared_secret text not null,
    macaroon_secret_key        text not null,
    created_at                 timestamptz not null default entitlements.now()
);
comment on table entitlements.server_secrets is
    'Synapse''s secrets of each server, made once and never regenerated. Global admins only; never audited.';
select pg_catalog.pg_extension_config_dump('entitlements.server_secrets', '');

-- Row security: a customer (and the members of an organization) sees its servers; who may
-- add one is _may_add_server; only admins change them. Secrets: global admins only.
create function entitlements._may_add_server(customer uuid)
returns boolean language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select entitlements.is_admin_of(customer)
        or customer = entitlements.current_user_id()
        or entitlements.can_manage_organization(customer)
$$;
alter table entitlements.server_records enable row level security;
create policy server_records_read on entitlements.server_records for select
    using (entitlements.can_see_customer(customer_id));
create policy server_records_add on entitlements.server_records for insert
    with check (entitlements._may_add_server(customer_id));
-- Global admins (the worker's role) only: a tenant admin could otherwise move a server's
-- state under another tenant's (a terminated server back to life, a slot freed).
create policy server_records_admin on entitlements.server_records for update
    using (entitlements.is_admin()) with check (entitlements.is_admin());
alter table entitlements.server_secrets enable row level security;
create policy server_secrets_admin on entitlements.server_secrets for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());

-- Desired state ---------------------------------------------------------------------------

-- When the customer's last source of `resources` stopped granting: the latest end among its
-- subscriptions (and its organizations') and resources grants, never before the server
-- existed. A subscription whose plan has no resources stopped with its last change (a move
-- to a smaller plan), unless it never changed. The retention before termination counts
-- from here.
create or replace function entitlements._server_access_lost_at(customer uuid, server_created timestamptz)
returns timestamptz language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select greatest(server_created, max(ended))
      from (select case when not exists (select 1 from entitlements.plan_entitlements e
                                           where e.plan_key = s.plan_key and e.feature_key = 'resources')
                             then case when s.updated_at > s.created_at then least(s.updated_at, entitlements.now()) end
                        when g = '-infinity' then coalesce(s.ended_at, s.canceled_at, s.status_changed_at)
                        else least(coalesce(g, entitlements.now()), entitlements.now()) end
              from entitlements.subscriptions s
              join entitlements.plans p on p.key = s.plan_key
             cross join lateral entitlements._grants_until(s, p.grace_days) g
             where s.customer_id = customer
                or s.customer_id in (select m.organization_id from entitlements.members m where m.user_id = customer)
            union all
            select least(coalesce(g.revoked_at, g.expires_at, entitlements.now()), entitlements.now())
              from entitlements.grants g
             where g.customer_id = customer and g.feature_key = 'resources' and g.kind in ('feature', 'override'))
           as ends(ended)
$$;

-- What a server should be now, the resources it should have, and a generation: a number
-- that changes whenever either (or its domains) does. 'running' while the customer's
-- `resources` resolve; 'suspended' when they do not; 'terminated' once that has lasted
-- settings.server_retention, and for good once the worker started deleting (a server that
-- fails while being deleted stays terminating, provisioning/applier.sql).
create or replace function entitlements._server_state(r entitlements.server_records,
                                           out desired text, out resources jsonb, out generation bigint)
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    if r.phase in ('terminating', 'terminated') then
        desired := 'terminated';
        resources := r.applied_resources;
    else
        resources := entitlements._feature_config(r.customer_id, 'resources');
        if resources is not null then
            desired := 'running';
        else
            resources := r.applied_resources;
            desired := case when entitlements._server_access_lost_at(r.customer_id, r.created_at)
                                 <= entitlements.now() - (entitlements._settings()).server_retention
                            then 'terminated' else 'suspended' end;
        end if;
    end if;
    generation := hashtextextended(jsonb_build_array(desired, resources, r.domains)::text, 0);
end
$$;

create view entitlements.servers with (security_invoker = true) as
select r.id, r.customer_id, r.name, r.namespace, r.domains, st.desired, r.phase, r.conditions,
       r.attempts, r.next_attempt_at, r.last_error, st.generation, r.observed_generation,
       r.created_at, r.ready_at, r.updated_at, r.terminated_at
  from entitlements.server_records r
 cross join lateral entitlements._server_state(r) st;
comment on view entitlements.servers is
    'Each server with its desired state (running, suspended, terminated: decided at read time from the '
    'entitlement rules) and where the worker has it (phase, conditions, attempts). A customer sees its own.';

-- Adding servers --------------------------------------------------------------------------

-- Live servers' domains, one row each: the key makes a domain one live server's only under
-- any isolation level (a check of server_records would race).
create table entitlements.server_domains (
    domain    text primary key,
    server_id uuid not null references entitlements.server_records (id)
);
-- One row per customer, bumped by every server added, so that two transactions adding servers
-- for one customer meet on it: READ COMMITTED waits and then counts the other's server;
-- REPEATABLE READ and SERIALIZABLE fail with 40001 instead of both counting from a snapshot.
create table entitlements.server_counts (
    customer_id uuid primary key references entitlements.customers (id),
    added       bigint not null
);
comment on table entitlements.server_domains is 'Domains of live servers (the extension''s own bookkeeping).';
comment on table entitlements.server_counts is 'Servers ever added per customer (serializes adding them).';
select pg_catalog.pg_extension_config_dump('entitlements.server_domains', '');
select pg_catalog.pg_extension_config_dump('entitlements.server_counts', '');
-- Owner only: written by the definer triggers below, read by nobody else.
alter table entitlements.server_domains enable row level security;
alter table entitlements.server_counts enable row level security;

-- A whole number from a resources document, or `default` when it has none (a grant may hold
-- any JSON: a server that cannot use it fails in the worker, naming it).
create function entitlements._resource_count(resources jsonb, key text, fallback bigint)
returns bigint language sql immutable parallel safe
return case when jsonb_typeof(resources -> key) = 'number' then greatest(floor((resources ->> key)::numeric), 0)::bigint
            else fallback end;

-- Every insert, direct or not: the caller may act for the customer (else nothing about it is
-- told), the customer has `resources` now and fewer live servers than `servers`. Definer: it
-- counts every live server, which RLS may hide from the caller; it reads only the new row of
-- the extension's own table. RLS then decides whether the caller may add it.
create function entitlements._server_check_insert()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_resources jsonb;
    v_allowed bigint;
    v_live bigint;
    v_platform text := (entitlements._settings()).server_domain;
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._server_check_insert');
    if entitlements._bulk_loading() then
        return new; -- pg_restore: the restored servers were within their plans
    end if;
    perform entitlements._require(entitlements._may_meter(new.customer_id), 'adding a server',
                                  'the customer, an owner or admin of the organization, or an entitlements admin');
    insert into entitlements.server_counts as c (customer_id, added) values (new.customer_id, 1)
    on conflict (customer_id) do update set added = c.added + 1;
    -- This statement's own writes (a subscribe that adds the first server) must be seen.
    perform entitlements._cache_touch();
    v_resources := entitlements._feature_config(new.customer_id, 'resources');
    if v_resources is null then
        raise exception 'customer % has no plan that includes a server', new.customer_id
            using errcode = 'PT403', hint = 'Subscribe to a plan with "resources" first.';
    end if;
    v_allowed := entitlements._resource_count(v_resources, 'servers', 1);
    select count(*) into v_live from entitlements.server_records r
     where r.customer_id = new.customer_id and r.phase not in ('terminating', 'terminated');
    if v_live >= v_allowed then
        raise exception 'customer % already has % server(s), as many as its plan allows', new.customer_id, v_live
            using errcode = 'PT429', detail = format('The plan''s resources.servers is %s.', v_allowed),
                  hint = 'Upgrade to a plan with more servers, or wait until a terminated one is gone.';
    end if;
    -- Under the platform's domain a server answers only for its own name; other domains need a
    -- plan with custom_domain (their ownership is the customer's to prove to DNS).
    if exists (select 1 from unnest(new.domains) d
                where d <> new.name || '.' || v_platform
                  and (d like '%.' || v_platform or (v_resources -> 'custom_domain') is distinct from 'true'::jsonb)) then
        raise exception 'server % may answer only for %.%', new.name, new.name, v_platform
            using errcode = 'PT403',
                  hint = 'Other domains need a plan with custom_domain; under the platform''s domain only the server''s own name.';
    end if;
    if cardinality(new.domains) > entitlements._resource_count(v_resources, 'domains', 1) then
        raise exception '% domains given; the plan allows %', cardinality(new.domains),
            entitlements._resource_count(v_resources, 'domains', 1) using errcode = 'PT429';
    end if;
    return new;
end
$$;
create trigger server_records_check before insert on entitlements.server_records
    for each row execute function entitlements._server_check_insert();

-- Definer: a new server's secrets (made once, never again) and its domains, in tables nobody
-- else may write.
create function entitlements._server_made()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    -- 32 bytes from three v4 UUIDs (pg_strong_random; 366 random bits hashed down).
    v_seed bytea := sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text
                                      || gen_random_uuid()::text, 'UTF8'));
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._server_made');
    if entitlements._bulk_loading() then
        return null; -- the dump restores the secrets and domains
    end if;
    begin
        insert into entitlements.server_domains (domain, server_id) select d, new.id from unnest(new.domains) d;
    exception when unique_violation then
        raise exception 'a domain of % is already served by another server', new.domains using errcode = '23505';
    end;
    insert into entitlements.server_secrets (server_id, signing_key, registration_shared_secret, macaroon_secret_key)
    values (new.id,
            -- Synapse's signing key file: algorithm, key id, unpadded base64 of the seed.
            'ed25519 a_' || left(encode(sha256(v_seed), 'hex'), 4) || ' ' || rtrim(encode(v_seed, 'base64'), '='),
            encode(sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')), 'hex'),
            encode(sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')), 'hex'))
    on conflict (server_id) do nothing;
    return null;
end
$$;
create trigger server_records_made after insert on entitlements.server_records
    for each row execute function entitlements._server_made();

-- What a server is never changes (its customer, name, domains, creation), and terminated is
-- final: the worker and admins change only where it stands. A terminated server's domains
-- are free again. Definer: it writes server_domains.
create function entitlements._server_changed()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._server_changed');
    if entitlements._bulk_loading() then
        return new;
    end if;
    if (new.id, new.customer_id, new.name, new.domains, new.created_at)
       is distinct from (old.id, old.customer_id, old.name, old.domains, old.created_at) then
        raise exception 'a server''s id, customer, name, domains and creation never change'
            using errcode = '22023', hint = 'Add another server instead (create_server).';
    end if;
    if old.phase = 'terminated' and new.phase <> 'terminated' then
        raise exception 'server % is terminated; a terminated server stays terminated', old.name
            using errcode = '22023';
    end if;
    if new.phase = 'terminated' and old.phase <> 'terminated' then
        delete from entitlements.server_domains d where d.server_id = old.id;
    end if;
    return new;
end
$$;
create trigger server_records_changed before update on entitlements.server_records
    for each row execute function entitlements._server_changed();

-- Add a server (create_server and the first server of a subscription); wakes the worker.
create function entitlements._server_add(customer uuid, name text, domain text)
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_name text := coalesce(lower(btrim(name)), 's' || left(replace(gen_random_uuid()::text, '-', ''), 11));
    v_domain text := coalesce(lower(btrim(domain)), v_name || '.' || (entitlements._settings()).server_domain);
    v_id uuid;
    v_constraint text;
begin
    if v_name !~ '^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$' then
        raise exception 'invalid server name "%": 1 to 40 of a-z, 0-9 and "-", starting and ending with a letter or digit',
            name using errcode = '22023';
    end if;
    perform entitlements._valid_domains(array[v_domain]);
    if exists (select 1 from entitlements.server_records r where r.name = v_name) then
        raise exception 'server name "%" is taken', v_name
            using errcode = '23505', hint = 'Names are never reused, even after a server is terminated.';
    end if;
    begin
        insert into entitlements.server_records (customer_id, name, domains)
        values (customer, v_name, array[v_domain])
        returning id into v_id;
    exception when unique_violation then
        get stacked diagnostics v_constraint = constraint_name;
        if v_constraint not in ('server_records_name_key', 'server_records_namespace_key') then
            raise;
        end if;
        -- Another customer's server (hidden by RLS) has the name.
        raise exception 'server name "%" is taken', v_name
            using errcode = '23505', hint = 'Names are never reused, even after a server is terminated.';
    end;
    -- No payload: the worker only needs waking, and anyone may LISTEN.
    perform pg_notify('entitlements_provision', '');
    return v_id;
end
$$;

create function entitlements.create_server(customer uuid, name text, domain text default null)
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_not_null(customer, 'customer');
    perform entitlements._require_not_null(name, 'name');
    perform entitlements._require(entitlements._may_add_server(customer), 'create_server',
                                  'the customer, an owner or admin of the organization, or an entitlements admin');
    return entitlements._server_add(customer, name, domain);
end
$$;
comment on function entitlements.create_server(uuid, text, text) is
    'Add a server (a Matrix homeserver) up to the plan''s resources.servers; domain defaults to '
    'name.<settings.server_domain>. The first server comes with the subscription.';

-- A subscription that (now) grants `resources` to a customer with no live server makes one.
create function entitlements._server_first()
returns trigger language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if entitlements._bulk_loading()
       or not exists (select 1 from entitlements.plan_entitlements e
                       where e.plan_key = new.plan_key and e.feature_key = 'resources')
       or exists (select 1 from entitlements.server_records r
                   where r.customer_id = new.customer_id and r.phase not in ('terminating', 'terminated')) then
        return null;
    end if;
    perform entitlements._cache_touch();
    if entitlements._feature_config(new.customer_id, 'resources') is not null then
        begin
            perform entitlements._server_add(new.customer_id, null, null);
        exception when sqlstate 'PT429' then
            -- A concurrent transaction gave the customer its first server meanwhile: the
            -- subscription change stands, without a second one.
            null;
        end;
    end if;
    return null;
end
$$;
create trigger subscriptions_first_server after insert or update of plan_key, status on entitlements.subscriptions
    for each row execute function entitlements._server_first();

-- The worker's side of provisioning: claim servers that need work (with a lease, so two
-- workers never work on one server at once), report what the cluster now has, record a
-- failure with exponential backoff and jitter, and after settings.server_max_attempts
-- failures leave the server 'failed' until an admin retries it. All admin-only.
--
-- A server is converged when the worker has applied its current generation and it rests
-- (ready or suspended); only unconverged servers are claimed, unless the worker resyncs.

create type entitlements.server_work as (
    server_id         uuid,
    customer_id       uuid,
    name              text,
    namespace         text,
    domains           text[],
    desired           text,
    resources         jsonb,
    applied_resources jsonb,
    generation        bigint,
    phase             text,
    attempts          integer,
    created_at        timestamptz,
    secrets           jsonb
);

-- One server as the worker needs it (the secrets included).
create function entitlements._server_work(r entitlements.server_records)
returns entitlements.server_work language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select r.id, r.customer_id, r.name, r.namespace, r.domains, st.desired, st.resources, r.applied_resources,
           st.generation, r.phase, r.attempts, r.created_at,
           (select jsonb_build_object('signing_key', x.signing_key,
                                      'registration_shared_secret', x.registration_shared_secret,
                                      'macaroon_secret_key', x.macaroon_secret_key)
              from entitlements.server_secrets x where x.server_id = r.id)
      from entitlements._server_state(r) st
$$;

create or replace function entitlements._server_lease_name(server uuid)
returns text language sql immutable parallel safe strict
return 'server:' || server::text;

create or replace function entitlements.provision_claim(holder text, lease interval, max_servers integer,
                                             include_converged boolean default false, resync_after uuid default null)
returns setof entitlements.server_work language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    r entitlements.server_records;
    v_work entitlements.server_work;
begin
    perform entitlements._require_admin('provision_claim');
    perform entitlements._require_not_null(holder, 'holder');
    if lease is null or lease < interval '1 second' or lease > interval '1 hour' then
        raise exception 'lease must be from 1 second to 1 hour, got %', coalesce(lease::text, 'NULL')
            using errcode = '22023';
    end if;
    if max_servers is null or max_servers not between 1 and 10000 then
        raise exception 'max_servers must be from 1 to 10000, got %', coalesce(max_servers::text, 'NULL')
            using errcode = '22023';
    end if;
    for r in
        select s.* from entitlements.server_records s
         where s.phase not in ('terminated', 'failed') and s.next_attempt_at <= entitlements.now()
           -- Not while anyone's lease lasts, the claimer's own included: a server is worked on
           -- once at a time, even within one worker.
           and not exists (select 1 from entitlements.leases l
                            where l.name = entitlements._server_lease_name(s.id) and l.until >= clock_timestamp())
           -- A resync walks the resting servers in id order from the worker's cursor, so each is
           -- looked at once per resync without writing anything to remember it.
           and (resync_after is null or s.phase not in ('ready', 'suspended') or s.id > resync_after)
           -- Otherwise a resting server is claimed only when it is not converged (decided here,
           -- so that no converged row is locked by an idle poll).
           and (include_converged or s.phase not in ('ready', 'suspended')
                or s.observed_generation is distinct from (entitlements._server_state(s)).generation)
         -- Servers with work first (a resync must not starve them), then the resting by id.
         order by s.phase in ('ready', 'suspended'),
                  case when s.phase in ('ready', 'suspended') then s.id end,
                  s.next_attempt_at, s.id
           for update of s skip locked
    loop
        v_work := entitlements._server_work(r);
        continue when not entitlements._take_free_lease(entitlements._server_lease_name(r.id), holder, lease);
        return next v_work;
        max_servers := max_servers - 1;
        exit when max_servers = 0;
    end loop;
end
$$;
comment on function entitlements.provision_claim(text, interval, integer, boolean, uuid) is
    'Lease up to max_servers servers that need work (all due ones when include_converged; resting ones '
    'after resync_after, in id order) to holder for lease, with what each should be and its secrets. '
    'The worker''s; admins only.';

-- What the customer hears about a server reaching a resting phase: server.ready the first
-- time, server.suspended each time access is lost, server.resumed when it is ready again
-- after that, server.terminated once. A plan change (ready, briefly provisioning, ready) says
-- nothing.
create function entitlements._server_event(r entitlements.server_records, phase text)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_last entitlements.outbox;
    v_kind text;
    v_key text;
begin
    select * into v_last from entitlements.outbox o
     where o.customer_id = r.customer_id and o.payload ->> 'server_id' = r.id::text
     order by o.id desc limit 1;
    if phase = 'ready' and r.ready_at is null then
        v_kind := 'server.ready';
        v_key := format('server.ready:%s', r.id);
    elsif phase = 'ready' and v_last.kind = 'server.suspended' then
        v_kind := 'server.resumed';
        v_key := format('server.resumed:%s:%s', r.id, v_last.id);
    elsif phase = 'suspended' and v_last.kind is distinct from 'server.suspended' then
        v_kind := 'server.suspended';
        v_key := format('server.suspended:%s:%s', r.id, coalesce(v_last.id, 0));
    elsif phase = 'terminated' then
        v_kind := 'server.terminated';
        v_key := format('server.terminated:%s', r.id);
    else
        return;
    end if;
    perform entitlements._outbox_record(v_kind, r.customer_id, v_key,
        jsonb_build_object('server_id', r.id, 'name', r.name, 'domains', to_jsonb(r.domains)));
end
$$;

-- Report an attempt that did not fail. False, and nothing changed, when holder lost the lease.
create or replace function entitlements.provision_report(server_id uuid, holder text, generation bigint, phase text,
                                              conditions jsonb, applied_resources jsonb,
                                              requeue_after interval default null)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_old entitlements.server_records;
    v_converged boolean := phase in ('ready', 'suspended', 'terminated');
begin
    perform entitlements._require_admin('provision_report');
    perform entitlements._require_not_null(server_id, 'server_id');
    perform entitlements._require_not_null(holder, 'holder');
    perform entitlements._require_not_null(generation, 'generation');
    if jsonb_typeof(conditions) is distinct from 'array' and conditions is not null then
        raise exception 'conditions must be a JSON array, got %', jsonb_typeof(conditions) using errcode = '22023';
    end if;
    if jsonb_typeof(applied_resources) is distinct from 'object' and applied_resources is not null then
        raise exception 'applied_resources must be a JSON object, got %', jsonb_typeof(applied_resources)
            using errcode = '22023';
    end if;
    if phase is null or phase not in ('provisioning', 'ready', 'suspended', 'terminating', 'terminated') then
        raise exception 'phase must be provisioning, ready, suspended, terminating or terminated, got %',
            coalesce(phase, 'NULL') using errcode = '22023';
    end if;
    if requeue_after < interval '0' or requeue_after > interval '1 day' then
        raise exception 'requeue_after must be from 0 to 1 day, got %', requeue_after using errcode = '22023';
    end if;
    -- The server's row first, then its lease: the order provision_claim takes them in, so the
    -- two never deadlock.
    select * into v_old from entitlements.server_records r where r.id = server_id for update;
    if not found then
        raise exception 'server % does not exist', server_id using errcode = 'P0002';
    end if;
    if not entitlements.release_lease(entitlements._server_lease_name(server_id), holder) then
        return false;
    end if;
    -- Only what changed is written: a converged server resynced costs no row version (and no
    -- audit row).
    update entitlements.server_records r
       set phase = provision_report.phase,
           conditions = coalesce(provision_report.conditions, '[]'),
           applied_resources = coalesce(provision_report.applied_resources, r.applied_resources),
           observed_generation = case when v_converged then provision_report.generation else r.observed_generation end,
           attempts = 0, last_error = null,
           next_attempt_at = entitlements.now() + coalesce(requeue_after, interval '0'),
           ready_at = case when provision_report.phase = 'ready' then coalesce(r.ready_at, entitlements.now()) else r.ready_at end,
           terminated_at = case when provision_report.phase = 'terminated' then coalesce(r.terminated_at, entitlements.now()) end,
           updated_at = entitlements.now()
     where r.id = server_id
       and ((r.phase, r.conditions, r.applied_resources, r.observed_generation, r.attempts, r.last_error)
            is distinct from
            (provision_report.phase, coalesce(provision_report.conditions, '[]'),
             coalesce(provision_report.applied_resources, r.applied_resources),
             case when v_converged then provision_report.generation else r.observed_generation end, 0, null::text)
            or (requeue_after > interval '0' and r.next_attempt_at < entitlements.now() + requeue_after));
    if phase is distinct from v_old.phase and phase in ('ready', 'suspended', 'terminated') then
        perform entitlements._server_event(v_old, phase);
    end if;
    return true;
end
$$;
comment on function entitlements.provision_report(uuid, text, bigint, text, jsonb, jsonb, interval) is
    'The worker reports a server''s phase and conditions after an attempt; gives the lease back. '
    'requeue_after: when to look again (a server still converging). False when the lease was lost.';

-- Record a failed attempt: the next waits 2^attempts seconds (at most an hour), +-25% so that
-- servers failing together do not retry together. After settings.server_max_attempts
-- failures, or at once when `permanent` (a mistake in the server's own data that retrying
-- cannot mend), the server is 'failed' (NULL returned) until retry_server.
create or replace function entitlements.provision_failed(server_id uuid, holder text, error text,
                                              permanent boolean default false)
returns entitlements.failure language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_max integer := (entitlements._settings()).server_max_attempts;
    r entitlements.server_records;
begin
    perform entitlements._require_admin('provision_failed');
    perform entitlements._require_not_null(server_id, 'server_id');
    perform entitlements._require_not_null(holder, 'holder');
    -- Row, then lease: provision_claim's order.
    perform 1 from entitlements.server_records s where s.id = server_id for update;
    if not found then
        raise exception 'server % does not exist', server_id using errcode = 'P0002';
    end if;
    if not entitlements.release_lease(entitlements._server_lease_name(server_id), holder) then
        -- Someone else has the server now; their outcome counts.
        return row('lease_lost', null)::entitlements.failure;
    end if;
    update entitlements.server_records s
       set attempts = s.attempts + 1, last_error = left(coalesce(error, 'unknown error'), 2000),
           next_attempt_at = entitlements.now() + entitlements._backoff(s.attempts),
           -- A server being deleted stays terminating (retried, its error kept): failed would let
           -- its desired state follow the customer's access again.
           phase = case when (s.attempts + 1 >= v_max or coalesce(permanent, false)) and s.phase <> 'terminating'
                        then 'failed' else s.phase end,
           updated_at = entitlements.now()
     where s.id = server_id
    returning * into r;
    if r.phase = 'failed' then
        perform entitlements._outbox_record('server.failed', r.customer_id,
            format('server.failed:%s:%s', r.id, entitlements._us(r.updated_at)),
            -- The error stays in servers.last_error (admins): it is the cluster's text, not the customer's.
            jsonb_build_object('server_id', r.id, 'name', r.name, 'domains', to_jsonb(r.domains), 'attempts', r.attempts));
        return row('final', null)::entitlements.failure;
    end if;
    return row('retry', r.next_attempt_at)::entitlements.failure;
end
$$;
comment on function entitlements.provision_failed(uuid, text, text, boolean) is
    'The worker records a failed attempt: retry (backoff with jitter), final (the server is failed: after '
    'settings.server_max_attempts, or at once when permanent), or lease_lost (not recorded). Admins only.';

create or replace function entitlements.retry_server(server uuid)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_admin('retry_server');
    perform entitlements._require_not_null(server, 'server');
    if not exists (select 1 from entitlements.server_records r where r.id = server) then
        raise exception 'server % does not exist', server using errcode = 'P0002';
    end if;
    update entitlements.server_records r
       set phase = case when r.phase = 'failed' then 'pending' else r.phase end,
           attempts = 0, next_attempt_at = entitlements.now(), updated_at = entitlements.now()
     where r.id = server and r.phase <> 'terminated';
    if found then
        perform pg_notify('entitlements_provision', '');
    end if;
    return found;
end
$$;
comment on function entitlements.retry_server(uuid) is
    'Try a failed (or backing-off) server again now, attempts counted from zero; false once terminated. '
    'Global admins only.';

-- What the worker would work on for one customer now, without leasing: provision --dry-run.
create function entitlements.server_specs(customer uuid)
returns setof entitlements.server_work language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_admin('server_specs');
    perform entitlements._require_not_null(customer, 'customer');
    return query select (entitlements._server_work(r)).*
                   from entitlements.server_records r
                  where r.customer_id = customer and r.phase <> 'terminated'
                  order by r.created_at, r.name;
end
$$;
comment on function entitlements.server_specs(uuid) is
    'What each of a customer''s servers should be now (as provision_claim gives it, without a lease). Admins only.';

-- For /metrics: servers needing work, servers by phase.
create or replace function entitlements.provision_stats()
returns jsonb language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_admin('provision_stats');
    return (
        select jsonb_build_object(
            'queue_depth', count(*) filter (where s.phase not in ('failed', 'terminated')
                                              and (s.observed_generation is distinct from s.generation
                                                   or s.phase not in ('ready', 'suspended'))),
            'failed', count(*) filter (where s.phase = 'failed'),
            'phases', (select jsonb_object_agg(ph.name, coalesce(c.n, 0))
                         from unnest(array['pending', 'provisioning', 'ready', 'suspended', 'terminating',
                                           'terminated', 'failed']) as ph(name)
                         left join (select x.phase, count(*) as n from entitlements.server_records x
                                     group by x.phase) c on c.phase = ph.name))
          from entitlements.servers s);
end
$$;
comment on function entitlements.provision_stats() is
    'Servers needing work (queue_depth), failed, and how many are in each phase. Admins only.';


-- Usage thresholds (issue #11) ------------------------------------------------------------
-- quota.threshold events from the slow path of metering (sql/metering/meter.sql).

alter table entitlements.features
    add column thresholds numeric[] check (cardinality(thresholds) <= 10 and 0 < all (thresholds) and 1000 >= all (thresholds));
-- What the catalog now writes for a metered feature that names none.
update entitlements.features set thresholds = '{80,100}' where kind = 'metered';

-- Caps added up to the limit; now they stop at the next threshold. No window has a `split`
-- yet, so each one's next count takes the slow path, which splits it again.
alter table entitlements.usage_counters add column stripes smallint not null default 1, add column split bigint;
update entitlements.usage_counters c
   set stripes = n.stripes
  from (select customer_id, feature_key, period, window_start, count(*)::smallint as stripes
          from entitlements.usage_counters group by 1, 2, 3, 4) n
 where n.customer_id = c.customer_id and n.feature_key = c.feature_key
   and n.period = c.period and n.window_start = c.window_start;

-- How far a window's stripes may count before the slow path must look: the limit, or the
-- first threshold above `used` when that comes sooner. A count on a stripe needs room
-- strictly below its cap and the caps add up to this bound, so no count on a stripe can
-- reach a threshold: every crossing happens on the slow path, which holds every stripe of
-- the window and so sees its exact total (_meter_limit).
create function entitlements._quota_bound(p_limit numeric, p_thresholds numeric[], p_used numeric)
returns numeric language sql immutable parallel safe
return least(p_limit, (select min(t * p_limit / 100) from unnest(p_thresholds) t where t * p_limit / 100 > p_used));

-- Which thresholds a window's caps were split under (usage_counters.split).
create function entitlements._thresholds_key(p_thresholds numeric[])
returns bigint language sql immutable parallel safe
return hashtextextended(coalesce(p_thresholds::text, ''), 0);

-- quota.threshold, once per limit, window and threshold (the dedup key), for the
-- crossings _meter_limit found: `crossed` holds, per limit, its window and thresholds.
create or replace function entitlements._quota_events(p_customer uuid, p_feature text, p_crossed jsonb)
returns void language plpgsql volatile
as $$
declare
    v_limit jsonb;
    v_t numeric;
begin
    for v_limit in select * from jsonb_array_elements(p_crossed) loop
        for v_t in select t::numeric from jsonb_array_elements_text(v_limit -> 'thresholds') t loop
            perform entitlements._outbox_record(
                'quota.threshold', p_customer,
                format('quota:%s:%s:%s:%s:%s:%s', p_customer, p_feature, v_limit ->> 'period',
                       to_char((v_limit ->> 'window_start')::timestamptz at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                       v_limit ->> 'limit', v_t),
                jsonb_build_object('feature', p_feature, 'period', v_limit -> 'period', 'threshold', v_t,
                                   'limit', v_limit -> 'limit', 'used', v_limit -> 'used',
                                   'window_start', v_limit -> 'window_start', 'resets_at', v_limit -> 'resets_at'));
        end loop;
    end loop;
end
$$;

create or replace function entitlements._catalog_snapshot()
returns jsonb language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
    return (
        select jsonb_build_object(
            'features', coalesce((select jsonb_agg(jsonb_build_object('key', f.key, 'kind', f.kind, 'unit', f.unit,
                                                                  'thresholds', f.thresholds::text[],
                                                                  'thresholds_key', entitlements._thresholds_key(f.thresholds))
                                                     order by f.key)
                                    from entitlements.features f), '[]'),
            'plans', coalesce((select jsonb_agg(jsonb_build_object(
                        'key', p.key, 'name', p.name, 'price_cents', p.price_cents, 'public', p.public,
                        'active', p.active, 'is_default', p.is_default, 'grace_days', p.grace_days,
                        'entitlements', coalesce((select jsonb_object_agg(e.feature_key, e.spec)
                                                    from entitlements.plan_entitlements e
                                                   where e.plan_key = p.key), '{}')) order by p.position, p.key)
                                 from entitlements.plans p), '[]')));
end
$$;

-- Access notices and profiles (issue #11) -------------------------------------------------------
-- The same statements as sql/subscriptions/profile.sql and sql/outbox/access.sql.

alter table entitlements.settings
    add column trial_ending_notice interval not null default interval '3 days'
        check (trial_ending_notice between interval '0' and interval '60 days');

-- How notifications address a customer: email, display name, locale. Admins write customers
-- directly; a user sets their own (and an organization's owners and admins the
-- organization's) through set_profile, which touches those three columns and nothing else.

-- SECURITY DEFINER: customers' RLS lets only admins write. Its arguments are text and uuid,
-- and every check asks about the real caller (the outer role, the trusted user id).
create or replace function entitlements.set_profile(customer uuid, email text, display_name text default null,
                                         locale text default null)
returns void language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if customer is null then
        raise exception 'customer must not be NULL' using errcode = '22004';
    end if;
    perform entitlements._require(
        customer = entitlements.current_user_id()
        or entitlements._role_is_privileged(entitlements._outer_role())
        or entitlements._is_listed_admin_of(customer)
        or coalesce(entitlements._my_org_role(customer) in ('owner', 'admin'), false),
        'set_profile', 'the customer themself, an owner or admin of the organization, or an entitlements admin of it');
    -- A plain address (RFC 5322 atext, dots, an ASCII domain): what an SMTP server takes.
    if email is not null and (length(email) > 254
                              or email !~ '^[A-Za-z0-9!#$%&''*+/=?^_`{|}~.-]+@[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?\.[A-Za-z]{2,}$') then
        raise exception 'invalid email address "%"', left(email, 80) using errcode = '22023';
    end if;
    -- No control, format or line-separator characters (a right-to-left override, say): the
    -- name goes into an email's To: header.
    if display_name is not null
       and (length(display_name) > 200
            or display_name ~ ('[[:cntrl:]\u0080-\u009f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f'
                               '\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\U000110bd\U0001d173-\U0001d17a'
                               '\U000e0000-\U000e007f]')) then
        raise exception 'a display name is at most 200 characters, without control or formatting characters'
            using errcode = '22023';
    end if;
    if locale is not null and locale !~ '^[a-z]{2}(-[A-Z]{2})?$' then
        raise exception 'invalid locale "%": expected a language code such as "en" or "pt-BR"', left(locale, 20)
            using errcode = '22023';
    end if;
    insert into entitlements.customers as c (id, email, display_name, locale)
    values (customer, nullif(email, ''), nullif(display_name, ''), locale)
    on conflict (id) do update
       set email = excluded.email, display_name = excluded.display_name, locale = excluded.locale, updated_at = entitlements.now()
     where (c.email, c.display_name, c.locale) is distinct from (excluded.email, excluded.display_name, excluded.locale);
end
$$;
comment on function entitlements.set_profile(uuid, text, text, text) is
    'Set the email, display name and locale notifications use (NULL clears). The customer themself, an owner or admin of the organization, or an admin.';

-- On Supabase, a user's address is auth.users.email. It is copied here by a trigger the
-- operator attaches to auth.users (README, Notifications), never read from there by the
-- extension: planning a query on another role's table can run that role's code (an index
-- predicate, a policy), and the fan-out runs as the extension owner.
create table entitlements.auth_emails (
    user_id    uuid primary key,
    email      text check (length(email) <= 320),
    updated_at timestamptz not null default entitlements.now()
);
comment on table entitlements.auth_emails is
    'Supabase auth.users emails, copied by entitlements.sync_auth_email(); notifications prefer them. A user reads their own.';
select pg_catalog.pg_extension_config_dump('entitlements.auth_emails', '');
alter table entitlements.auth_emails enable row level security;
create policy auth_emails_read on entitlements.auth_emails for select
    using (user_id = entitlements.current_user_id() or entitlements.is_admin());

-- The trigger for auth.users: `create trigger entitlements_email after insert or update of email
-- on auth.users for each row execute function entitlements.sync_auth_email();`. It reads
-- only `id` and `email`, and only when they are uuid and text or varchar (no type someone
-- wrote), and refuses to run on any other table.
create or replace function entitlements.sync_auth_email()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_table_schema <> 'auth' or tg_table_name <> 'users' or tg_level <> 'ROW' or tg_op not in ('INSERT', 'UPDATE')
       or (select a.atttypid from pg_attribute a
            where a.attrelid = tg_relid and a.attname = 'id' and not a.attisdropped) is distinct from 'uuid'::regtype
       or (select a.atttypid from pg_attribute a
            where a.attrelid = tg_relid and a.attname = 'email' and not a.attisdropped)
          not in ('text'::regtype, 'varchar'::regtype) then
        raise exception 'entitlements.sync_auth_email is an insert or update row trigger for auth.users (id uuid, email text)'
            using errcode = '39P01';
    end if;
    if exists (select 1 from entitlements.customers c where c.id = new.id and c.erased_at is not null) then
        delete from entitlements.auth_emails e where e.user_id = new.id;
        return null;
    end if;
    insert into entitlements.auth_emails as e (user_id, email)
    values (new.id, nullif(left(new.email::text, 320), ''))
    on conflict (user_id) do update set email = excluded.email, updated_at = entitlements.now()
     where e.email is distinct from excluded.email;
    return null;
end
$$;
comment on function entitlements.sync_auth_email() is
    'A trigger for auth.users (Supabase): keeps entitlements.auth_emails, which notifications prefer to customers.email.';

-- Where a customer's email goes: the Supabase address when one was copied, else customers.email.
create function entitlements._customer_email(customer uuid)
returns text language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce((select a.email from entitlements.auth_emails a where a.user_id = customer),
                    (select c.email from entitlements.customers c where c.id = customer))
$$;

-- Access notices: access.suspended when a subscription stops granting, access.restored when a
-- suspended one grants again, trial.ending some days before a trial ends.
--
-- Access ends either by a write (a status change, an immediate cancel: the subscriptions
-- trigger in events.sql tells it in that transaction) or by time alone (a trial, a period or
-- past_due grace that ran out: the time_events task tells it, whether or not anything
-- tidied the row up). Each subscription has one row here with what was last told, and each
-- telling locks and moves that row, so every change is told once however many workers run
-- the task and whichever of the two paths comes first.

create table entitlements.access_notices (
    subscription_id uuid primary key references entitlements.subscriptions (id) on delete cascade,
    customer_id     uuid not null,
    -- pending: has not granted yet (incomplete); granting; suspended: access.suspended told.
    state           text not null check (state in ('pending', 'granting', 'suspended')),
    -- When it stops granting, as of its last change (entitlements._grants_until): NULL never.
    until           timestamptz,
    -- access events told: each one's dedup key carries its number.
    told            integer not null default 0,
    -- The trial end a trial.ending was told for.
    trial_told_for  timestamptz,
    updated_at      timestamptz not null default entitlements.now()
);
create index access_notices_due on entitlements.access_notices (until) where state = 'granting';
comment on table entitlements.access_notices is
    'What was last told about each subscription''s access (access.suspended / access.restored, trial.ending). Admins read.';
select pg_catalog.pg_extension_config_dump('entitlements.access_notices', '');
alter table entitlements.access_notices enable row level security;
create policy access_notices_admin on entitlements.access_notices for select using (entitlements.is_admin());

-- Why a subscription in this state stopped granting.
create or replace function entitlements._access_lost_reason(status text, cancel_at_period_end boolean)
returns text language sql immutable parallel safe
return case when status = 'trialing' then 'trial_ended'
            when status = 'active' then 'period_ended'
            when status = 'past_due' then 'grace_ended'
            when status = 'canceled' and cancel_at_period_end then 'period_ended'
            else status end;

-- Bring a subscription's notice up to date with its row `s` (as of now), telling what
-- changed: access.suspended (`reason`, else why `s` itself stopped) or access.restored; the
-- kind told, or NULL. Runs as the owner: from the subscriptions trigger (definer) and the task.
create or replace function entitlements._access_notice(s entitlements.subscriptions, reason text default null)
returns text language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_until timestamptz := entitlements._grants_until(
        s, (select p.grace_days from entitlements.plans p where p.key = s.plan_key));
    v_granting boolean := v_until is null or v_until > entitlements.now();
    v_n entitlements.access_notices;
    v_kind text;
begin
    select * into v_n from entitlements.access_notices n where n.subscription_id = s.id for update;
    if not found then
        insert into entitlements.access_notices (subscription_id, customer_id, state, until)
        values (s.id, s.customer_id, case when v_granting then 'granting' else 'pending' end, v_until);
        return null;
    end if;
    v_kind := case when v_granting and v_n.state = 'suspended' then 'access.restored'
                   when not v_granting and v_n.state = 'granting' then 'access.suspended' end;
    update entitlements.access_notices n
       set until = v_until,
           state = case when v_granting then 'granting' when v_kind is not null then 'suspended' else n.state end,
           told = n.told + (v_kind is not null)::int, updated_at = entitlements.now()
     where n.subscription_id = s.id
       and (n.until is distinct from v_until or v_kind is not null or (v_granting and n.state = 'pending'));
    if v_kind is not null then
        perform entitlements._outbox_record(v_kind, s.customer_id, format('%s:%s:%s', v_kind, s.id, v_n.told + 1),
            jsonb_build_object('subscription_id', s.id, 'plan', s.plan_key, 'status', s.status)
            || case when v_kind = 'access.suspended'
                    then jsonb_build_object('reason', coalesce(reason, entitlements._access_lost_reason(s.status, s.cancel_at_period_end)),
                                            -- When time ended it, the instant kept at the last
                                            -- change (told late, by the task or by the write
                                            -- that tidied the row up); else now, by this write.
                                            'access_ended_at', case when v_n.until > '-infinity' and v_n.until <= entitlements.now()
                                                                    then v_n.until else entitlements.now() end)
                    else '{}' end);
    end if;
    return v_kind;
end
$$;

-- The time_events task: trials about to end (settings.trial_ending_notice ahead) and access
-- that ended by time alone, each told once. Rows another transaction holds are skipped: it
-- is a writer of that subscription (whose trigger tells it) or another run of this task.
-- Definer: the notices are the extension's own bookkeeping, written by no role; the caller
-- must be an admin (run_task's check, asked again of the real caller).
create or replace function entitlements._task_time_events()
returns jsonb language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_notice interval := (entitlements._settings()).trial_ending_notice;
    v_s entitlements.subscriptions;
    v_trials bigint := 0::bigint;
    v_ended bigint := 0::bigint;
begin
    perform entitlements._require_caller_admin('time_events');
    for v_s in
        select s.* from entitlements.subscriptions s
          join entitlements.access_notices n on n.subscription_id = s.id
         where s.status = 'trialing' and s.trial_end > entitlements.now() and s.trial_end <= entitlements.now() + v_notice
           and n.trial_told_for is distinct from s.trial_end
           for update of n skip locked for share of s skip locked
    loop
        update entitlements.access_notices n set trial_told_for = v_s.trial_end, updated_at = entitlements.now()
         where n.subscription_id = v_s.id;
        perform entitlements._outbox_record('trial.ending', v_s.customer_id,
            format('trial_ending:%s:%s', v_s.id, to_char(v_s.trial_end at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')),
            jsonb_build_object('subscription_id', v_s.id, 'plan', v_s.plan_key, 'trial_end', v_s.trial_end,
                               'days_left', ceil(extract(epoch from v_s.trial_end - entitlements.now()) / 86400)));
        v_trials := v_trials + 1;
    end loop;

    -- Due by the instant kept at the last change; past_due rows always, since their grace
    -- is the plan's now (a catalog change may have shortened it).
    for v_s in
        select s.* from entitlements.subscriptions s
          join entitlements.access_notices n on n.subscription_id = s.id
         where n.state = 'granting' and (n.until <= entitlements.now() or s.status = 'past_due')
           for update of n skip locked for share of s skip locked
    loop
        if entitlements._access_notice(v_s) is not null then
            v_ended := v_ended + 1;
        end if;
    end loop;
    return jsonb_build_object('rows_touched', v_trials + v_ended, 'trials_ending', v_trials, 'access_ended', v_ended);
end
$$;

-- What 0.1.0's subscriptions are now: granting, or suspended if they granted once (an
-- incomplete one never did). Nothing is told for them.
insert into entitlements.access_notices (subscription_id, customer_id, state, until)
select s.id, s.customer_id,
       case when g.until is null or g.until > entitlements.now() then 'granting'
            when s.status in ('incomplete', 'incomplete_expired') then 'pending'
            else 'suspended' end,
       g.until
  from entitlements.subscriptions s
  join entitlements.plans p on p.key = s.plan_key
 cross join lateral (select entitlements._grants_until(s, p.grace_days) as until) g;

-- Membership events (issue #11): the same as sql/outbox/events.sql.
-- Joining or leaving an organization changes the member's entitlements (they get the
-- organization's): entitlements.changed for the member, once per change and transaction.
create function entitlements._member_events()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_row entitlements.members := case when tg_op = 'DELETE' then old else new end;
    v_change text := case tg_op when 'INSERT' then 'joined' when 'DELETE' then 'left' else 'role_changed' end;
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._member_events');
    if entitlements._bulk_loading() or (tg_op = 'UPDATE' and new.role is not distinct from old.role) then
        return null;
    end if;
    perform entitlements._outbox_record('entitlements.changed', v_row.user_id,
        format('entitlements.changed:member:%s:%s:%s:%s', v_row.organization_id, v_row.user_id, v_change, txid_current()),
        jsonb_build_object('change', v_change, 'organization_id', v_row.organization_id, 'role', v_row.role));
    return null;
end
$$;
create trigger members_events after insert or update or delete on entitlements.members
    for each row execute function entitlements._member_events();

create or replace function entitlements.renew(subscription uuid, period_end timestamptz)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_sub entitlements.subscriptions;
begin
    v_sub := entitlements._subscription_for_update(subscription);
    if v_sub.source <> 'manual' then
        raise exception 'subscription % is synced from Stripe, which renews it', v_sub.id using errcode = '55000';
    end if;
    if v_sub.status not in ('trialing', 'active', 'past_due', 'unpaid', 'incomplete') then
        raise exception 'a % subscription cannot be renewed', v_sub.status
            using errcode = '55000',
                  hint = case when v_sub.status = 'paused' then 'Resume it with entitlements.set_status(subscription, ''active'', reason).'
                              else 'Start a new one with entitlements.subscribe().' end;
    end if;
    if period_end is null or not isfinite(period_end) or period_end <= entitlements.now() then
        raise exception 'period_end must be a finite instant after now, got %', coalesce(period_end::text, 'NULL')
            using errcode = '22023';
    end if;
    perform set_config('entitlements.reason', 'renew', true);
    update entitlements.subscriptions s
       set status = 'active', current_period_start = entitlements.now(), current_period_end = period_end,
           -- A trial converted before its end ends now.
           trial_end = case when s.status = 'trialing' and s.trial_end > entitlements.now() then entitlements.now() else s.trial_end end
     where s.id = v_sub.id;
    perform set_config('entitlements.reason', '', true);
end
$$;
comment on function entitlements.renew(uuid, timestamptz) is
    'Start the next paid period of a manual subscription, now until period_end; a trial becomes active. Admins of the customer.';

create or replace function entitlements.set_status(subscription uuid, status text, reason text)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_sub entitlements.subscriptions;
begin
    perform entitlements._require_not_null(status, 'status');
    if status in ('trialing', 'canceled') then
        raise exception 'set_status does not set %', status
            using errcode = '22023',
                  hint = case when status = 'canceled' then 'Use entitlements.cancel(subscription, at_period_end).'
                              else 'Start a trial with entitlements.subscribe(customer, plan, ''trialing'', trial_end => ...).' end;
    end if;
    if not status = any (entitlements.subscription_statuses()) then
        raise exception 'unknown subscription status "%"', status
            using errcode = '22023', hint = 'one of ' || array_to_string(entitlements.subscription_statuses(), ', ');
    end if;
    if reason is null or btrim(reason) = '' then
        raise exception 'a reason is required to set a status' using errcode = '22023';
    end if;
    v_sub := entitlements._subscription_for_update(subscription);
    if v_sub.source <> 'manual' then
        raise exception 'subscription % is synced from Stripe, which sets its status', v_sub.id using errcode = '55000';
    end if;
    if v_sub.status in ('canceled', 'incomplete_expired') then
        raise exception 'subscription % has ended (%); start a new one instead', v_sub.id, v_sub.status using errcode = '55000';
    end if;
    if v_sub.status = set_status.status then
        return;
    end if;
    perform set_config('entitlements.reason', reason, true);
    update entitlements.subscriptions s set status = set_status.status where s.id = v_sub.id;
    perform set_config('entitlements.reason', '', true);
end
$$;
comment on function entitlements.set_status(uuid, text, text) is
    'Set a manual subscription''s status (past_due, unpaid, paused, incomplete, incomplete_expired, active), with a reason. Admins of the customer.';

create or replace function entitlements._stripe_is_newer(prev entitlements.stripe_subscriptions, observed_at timestamptz,
                                              period_start timestamptz, state_rank smallint)
returns boolean language sql immutable
return prev.stripe_subscription_id is null
    or (observed_at, coalesce(period_start, '-infinity'), state_rank)
       > (prev.observed_at, coalesce(prev.period_start, '-infinity'), prev.state_rank);

-- PL/pgSQL rather than a SQL function: its plan is cached per session (a SQL function with a
-- SET clause is planned on every call).
create or replace function entitlements._stripe_remember(stripe_subscription_id text, subscription uuid, observed_at timestamptz,
                                              period_start timestamptz, state_rank smallint, applied_from text)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    insert into entitlements.stripe_subscriptions as s
           (stripe_subscription_id, subscription_id, observed_at, period_start, state_rank, applied_from)
    values (_stripe_remember.stripe_subscription_id, subscription, _stripe_remember.observed_at,
            _stripe_remember.period_start, _stripe_remember.state_rank, _stripe_remember.applied_from)
    on conflict on constraint stripe_subscriptions_pkey do update
       set observed_at = excluded.observed_at, period_start = excluded.period_start,
           state_rank = excluded.state_rank, applied_from = excluded.applied_from, updated_at = entitlements.now();
end
$$;

create or replace function entitlements._stripe_link(customer uuid, stripe_customer_id text)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements.link_stripe_customer(customer, stripe_customer_id);
    update entitlements.stripe_events e set next_attempt_at = entitlements.now()
     where e.applied_at is null and e.attempts > 0 and e.next_attempt_at > entitlements.now()
       and entitlements._stripe_id(e.payload #> '{data,object,customer}') = _stripe_link.stripe_customer_id;
end
$$;

create or replace function entitlements._task_prune_task_runs()
returns jsonb language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_keep interval := coalesce(nullif(current_setting('entitlements.task_runs_keep', true), '')::interval,
                                interval '90 days');
    v_skipped bigint;
    v_old bigint;
begin
    delete from entitlements.task_runs t
     where t.outcome = 'skipped' and t.started_at < entitlements.now() - least(v_keep, interval '1 day');
    get diagnostics v_skipped = row_count;
    delete from entitlements.task_runs t
     where t.started_at < entitlements.now() - v_keep
       and t.started_at < (select max(l.started_at) from entitlements.task_runs l where l.task = t.task);
    get diagnostics v_old = row_count;
    return jsonb_build_object('rows_touched', v_skipped + v_old, 'skipped_deleted', v_skipped,
                              'older_deleted', v_old, 'keep', v_keep::text);
end
$$;

create or replace function entitlements._ts(us bigint)
returns timestamptz language sql immutable parallel safe strict
return timestamptz '1970-01-01 00:00:00+00' + us * interval '1 microsecond';

-- Usage in the windows that are open now, for entitlements(customer) (extension/src/metering/limits.rs).
create or replace function entitlements._usage_snapshot(customer uuid)
returns jsonb language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
    return (
        select coalesce(jsonb_agg(jsonb_build_object('feature', feature_key, 'period', period,
                                                     'window_start', entitlements._us(window_start), 'used', used)), '[]')
          from (select feature_key, period, window_start, sum(used) as used
                  from entitlements.usage_counters
                 where customer_id = customer and (window_end is null or window_end > entitlements._statement_now())
                 group by 1, 2, 3) u);
end
$$;

create or replace function entitlements.cancel(subscription uuid, at_period_end boolean default true)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_sub entitlements.subscriptions;
begin
    perform entitlements._require_not_null(at_period_end, 'at_period_end');
    v_sub := entitlements._subscription_for_update(subscription);
    if v_sub.status = 'canceled' and not (at_period_end is false and v_sub.cancel_at_period_end) then
        return; -- already canceled: idempotent
    end if;
    perform set_config('entitlements.reason', 'cancel', true);
    if at_period_end and v_sub.current_period_end > entitlements.now() then
        update entitlements.subscriptions s
           set status = 'canceled', cancel_at_period_end = true, canceled_at = entitlements.now(), ended_at = v_sub.current_period_end
         where s.id = v_sub.id;
    else
        if at_period_end then
            raise notice 'subscription % has no future period end; canceled immediately', v_sub.id;
        end if;
        update entitlements.subscriptions s
           set status = 'canceled', cancel_at_period_end = false, canceled_at = entitlements.now(), ended_at = entitlements.now()
         where s.id = v_sub.id;
    end if;
    perform set_config('entitlements.reason', '', true);
end
$$;

create or replace function entitlements.change_plan(subscription uuid, plan text, reason text)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_sub entitlements.subscriptions;
    v_plan entitlements.plans;
begin
    perform entitlements._require_not_null(plan, 'plan');
    if reason is null or btrim(reason) = '' then
        raise exception 'a reason is required to change a plan' using errcode = '22023';
    end if;
    v_sub := entitlements._subscription_for_update(subscription);
    select * into v_plan from entitlements.plans p where p.key = change_plan.plan;
    if not found then
        perform entitlements._raise_unknown_plan(plan);
    end if;
    if not v_plan.active then
        raise exception 'plan "%" is no longer offered', plan using errcode = '22023';
    end if;
    if v_sub.ended_at is not null and v_sub.ended_at <= entitlements.now() then
        raise exception 'subscription % has ended; start a new one instead', v_sub.id using errcode = '55000';
    end if;
    if v_sub.plan_key = plan then
        return;
    end if;
    perform set_config('entitlements.reason', reason, true);
    update entitlements.subscriptions s set plan_key = plan where s.id = v_sub.id;
    perform set_config('entitlements.reason', '', true);
end
$$;

create or replace function entitlements.stripe_apply_event(event_id text, fetched jsonb default null)
returns text language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_event entitlements.stripe_events;
    v_object jsonb;
    v_reason text;
    v_outcome text;
begin
    perform entitlements._stripe_require_admin('stripe_apply_event');
    perform entitlements._require_not_null(event_id, 'event_id');
    select * into v_event from entitlements.stripe_events e where e.id = event_id for update skip locked;
    if not found then
        if not exists (select 1 from entitlements.stripe_events e where e.id = event_id) then
            raise exception 'Stripe event % is not stored', event_id using errcode = 'P0002';
        end if;
        return null;
    end if;
    if v_event.applied_at is not null then
        return 'duplicate';
    end if;
    v_object := v_event.payload #> '{data,object}';
    v_reason := format('stripe %s %s', v_event.type, v_event.id);
    if fetched is not null and coalesce(fetched ->> 'object', 'subscription') <> 'subscription' then
        raise exception 'fetched must be the Stripe subscription the event is about' using errcode = '22023';
    end if;
    v_outcome := case
        when v_event.type like 'customer.subscription.%' then
            case when fetched is not null then entitlements._stripe_apply_subscription(fetched, null, v_reason)
                 else entitlements._stripe_apply_subscription(v_object, v_event.created, v_reason) end
        when v_event.type in ('invoice.paid', 'invoice.payment_succeeded', 'invoice.payment_failed') then
            case when fetched is not null then entitlements._stripe_apply_subscription(fetched, null, v_reason)
                 else entitlements._stripe_apply_invoice(v_event.payload, v_event.created, v_reason) end
        when v_event.type = 'checkout.session.completed' then entitlements._stripe_apply_link(v_object)
            || case when fetched is not null then ', ' || entitlements._stripe_apply_subscription(fetched, null, v_reason)
                    else '' end
        when v_event.type in ('customer.created', 'customer.updated') then entitlements._stripe_apply_link(v_object)
        else 'ignored'
    end;
    update entitlements.stripe_events e
       set applied_at = entitlements.now(), outcome = v_outcome, attempts = e.attempts + 1, last_error = null
     where e.id = event_id;
    return v_outcome;
end
$$;
comment on function entitlements.stripe_apply_event(text, jsonb) is
    'Apply a stored Stripe event once (subscription, invoice, checkout and customer events; others are '
    'acknowledged as ignored). fetched: the subscription as just fetched from the API. Admins only.';

-- Store plans (issue #12) ---------------------------------------------------------------------
-- A plan may belong to a tenant (a store): its customers only, managed by its admins.
alter table entitlements.plans
    add column tenant_id uuid,
    add constraint plans_check1 check (tenant_id is null or not is_default);
-- Direct writes (a store admin has them under row security) held to the catalog's rules.
alter table entitlements.plans
    drop constraint plans_price_cents_check,
    add constraint plans_price_cents_check check (price_cents between 0 and 2147483647);
alter table entitlements.grants
    add constraint grants_discount_check check (kind <> 'discount' or (
        jsonb_typeof(value -> 'percent_off') = 'number'
        and (value ->> 'percent_off')::numeric > 0 and (value ->> 'percent_off')::numeric <= 100));
alter policy plans_read on entitlements.plans
    using (public or entitlements.is_admin(tenant_id) or entitlements._i_have_plan(key));
alter policy plans_admin on entitlements.plans
    using (entitlements.is_admin(tenant_id)) with check (entitlements.is_admin(tenant_id));
alter policy plan_entitlements_admin on entitlements.plan_entitlements
    using (exists (select 1 from entitlements.plans p where p.key = plan_key and entitlements.is_admin(p.tenant_id)))
    with check (exists (select 1 from entitlements.plans p where p.key = plan_key and entitlements.is_admin(p.tenant_id)));

-- BEGIN copy of sql/revenue/history.sql
-- Subscription history (issue #12): every change of a subscription's plan, status,
-- quantity, price or period, with the instant it took effect (entitlements.now(), so the
-- test clock dates it). entitlements.subscriptions stays the current state; this is what
-- "as of" reads and the revenue metrics (revenue/metrics.sql) read. Discounts keep their
-- own time ranges (revenue/discounts.sql, grants of kind discount).

-- What a subscription pays, when it differs from its plan's price (a Stripe price, a
-- negotiated price); NULL: the plan's price_cents, currency and interval.
alter table entitlements.subscriptions
    add column price_cents bigint check (price_cents between 0 and 2147483647),
    add column currency text check (currency ~ '^[a-z]{3}$'),
    add column billing_interval text check (billing_interval in ('day', 'week', 'month', 'year', 'once'));

create table entitlements.subscription_history (
    id                   bigint generated always as identity primary key,
    subscription_id      uuid not null references entitlements.subscriptions (id) on delete cascade,
    customer_id          uuid not null,
    -- The state held from valid_from until valid_to (NULL: still the current state).
    valid_from           timestamptz not null,
    valid_to             timestamptz,
    plan_key             text not null,
    status               text not null,
    quantity             integer not null,
    -- The price in force then (the subscription's own, else the plan's at that instant):
    -- a later catalog price change does not rewrite what was paid.
    price_cents          bigint not null,
    currency             text not null,
    billing_interval     text not null,
    current_period_start timestamptz,
    current_period_end   timestamptz,
    trial_end            timestamptz,
    cancel_at_period_end boolean not null,
    ended_at             timestamptz,
    check (valid_to is null or valid_to >= valid_from)
);
comment on table entitlements.subscription_history is
    'Every state a subscription has been in, with the instants it held; the current one has valid_to NULL.';
create unique index subscription_history_current on entitlements.subscription_history (subscription_id)
    where valid_to is null;
create index subscription_history_subscription on entitlements.subscription_history (subscription_id, valid_from);
create index subscription_history_customer on entitlements.subscription_history (customer_id);
select pg_catalog.pg_extension_config_dump('entitlements.subscription_history', '');
select pg_catalog.pg_extension_config_dump('entitlements.subscription_history_id_seq', '');

-- Row security: whoever may see the customer sees its history; only the trigger writes.
alter table entitlements.subscription_history enable row level security;
create policy subscription_history_read on entitlements.subscription_history for select
    using (entitlements.can_see_customer(customer_id));

-- After every insert and update of a subscription: a change of what history keeps closes
-- the current row and opens the next. Two changes at the same instant (one transaction, a
-- frozen test clock) leave one row. Runs as the owner: only it writes history.
create function entitlements._record_subscription_history()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_at timestamptz := entitlements.now();
    v_current entitlements.subscription_history;
    v_plan entitlements.plans;
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._record_subscription_history');
    if entitlements._bulk_loading() then
        return null; -- pg_restore: the history is restored with the rest
    end if;
    if tg_op = 'UPDATE'
       and (new.plan_key, new.status, new.quantity, new.price_cents, new.currency, new.billing_interval,
            new.current_period_start, new.current_period_end, new.trial_end, new.cancel_at_period_end, new.ended_at)
           is not distinct from
           (old.plan_key, old.status, old.quantity, old.price_cents, old.currency, old.billing_interval,
            old.current_period_start, old.current_period_end, old.trial_end, old.cancel_at_period_end, old.ended_at) then
        return null;
    end if;
    select * into v_plan from entitlements.plans p where p.key = new.plan_key;
    select * into v_current from entitlements.subscription_history h
     where h.subscription_id = new.id and h.valid_to is null
       for update;
    if found then
        -- A clock set back before the current row still appends: history never reorders.
        v_at := greatest(v_at, v_current.valid_from);
        if v_current.valid_from = v_at then
            delete from entitlements.subscription_history h where h.id = v_current.id;
        else
            update entitlements.subscription_history h set valid_to = v_at where h.id = v_current.id;
        end if;
    end if;
    insert into entitlements.subscription_history (
        subscription_id, customer_id, valid_from, plan_key, status, quantity, price_cents, currency,
        billing_interval, current_period_start, current_period_end, trial_end, cancel_at_period_end, ended_at)
    values (new.id, new.customer_id, v_at, new.plan_key, new.status, new.quantity,
            coalesce(new.price_cents, v_plan.price_cents, 0), coalesce(new.currency, v_plan.currency, 'usd'),
            coalesce(new.billing_interval, v_plan.interval, 'month'), new.current_period_start,
            new.current_period_end, new.trial_end, new.cancel_at_period_end, new.ended_at);
    return null;
end
$$;
create trigger subscriptions_history after insert or update on entitlements.subscriptions
    for each row execute function entitlements._record_subscription_history();

-- A subscription as it was at `at`: the history row in force then (none before it began).
create function entitlements.subscription_as_of(subscription uuid, at timestamptz default entitlements.now())
returns setof entitlements.subscription_history language sql stable strict
set search_path = pg_catalog, pg_temp
as $$
    select h.* from entitlements.subscription_history h
     where h.subscription_id = subscription
       and h.valid_from <= at and (h.valid_to is null or h.valid_to > at)
$$;
comment on function entitlements.subscription_as_of(uuid, timestamptz) is
    'The state a subscription was in at an instant (its plan, status, quantity, price, period), from its history.';
-- END copy of sql/revenue/history.sql

-- Revenue (issue #12): each subscription's history starts with its state now, dated from its
-- creation (0.1.0 kept no history; earlier states are not known).
insert into entitlements.subscription_history (
    subscription_id, customer_id, valid_from, plan_key, status, quantity, price_cents, currency, billing_interval,
    current_period_start, current_period_end, trial_end, cancel_at_period_end, ended_at)
select s.id, s.customer_id, s.created_at, s.plan_key, s.status, s.quantity, coalesce(s.price_cents, p.price_cents, 0),
       coalesce(s.currency, p.currency, 'usd'), coalesce(s.billing_interval, p.interval, 'month'),
       s.current_period_start, s.current_period_end, s.trial_end, s.cancel_at_period_end, s.ended_at
  from entitlements.subscriptions s
  left join entitlements.plans p on p.key = s.plan_key;

-- BEGIN copy of sql/revenue/discounts.sql
-- Coupons, promotion codes and discounts, with Stripe's semantics (issue #12).
-- A coupon says how much (percent_off or amount_off_cents) and for how long (once: the
-- first billing period; repeating: duration_in_months; forever). Redeeming its code on a
-- subscription makes a discount, dated: the revenue metrics reduce MRR while it is in
-- force. Admin discounts (entitlements.grant_discount, grants of kind discount) count too.

create table entitlements.coupons (
    id                 uuid primary key default gen_random_uuid(),
    -- The promotion code customers type; matched case-insensitively (unique lower-cased).
    code               text not null check (code ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$'),
    percent_off        numeric check (percent_off > 0 and percent_off <= 100),
    amount_off_cents   bigint check (amount_off_cents > 0 and amount_off_cents <= 1000000000000),
    currency           text not null default 'usd' check (currency ~ '^[a-z]{3}$'),
    duration           text not null check (duration in ('once', 'repeating', 'forever')),
    duration_in_months integer check (duration_in_months between 1 and 120),
    max_redemptions    integer check (max_redemptions > 0),
    times_redeemed     integer not null default 0 check (times_redeemed >= 0),
    redeem_by          timestamptz check (entitlements._finite(redeem_by, 'redeem_by')),
    -- The plans it applies to; NULL: every plan.
    plans              text[] check (cardinality(plans) between 1 and 100),
    -- Only for a customer's first paid subscription.
    first_time_only    boolean not null default false,
    active             boolean not null default true,
    created_at         timestamptz not null default entitlements.now(),
    check ((percent_off is null) <> (amount_off_cents is null)),
    check ((duration = 'repeating') = (duration_in_months is not null)),
    check (max_redemptions is null or times_redeemed <= max_redemptions)
);
comment on table entitlements.coupons is
    'Coupons and their promotion codes; times_redeemed counts redemptions (never above max_redemptions).';
create unique index coupons_code on entitlements.coupons (lower(code));

create table entitlements.discounts (
    id               uuid primary key default gen_random_uuid(),
    subscription_id  uuid not null references entitlements.subscriptions (id) on delete cascade,
    customer_id      uuid not null,
    coupon_id        uuid references entitlements.coupons (id),
    source           text not null check (source in ('coupon', 'stripe')),
    percent_off      numeric check (percent_off > 0 and percent_off <= 100),
    amount_off_cents bigint check (amount_off_cents > 0 and amount_off_cents <= 1000000000000),
    -- In force from starts_at until ends_at (NULL: forever) or removed_at.
    starts_at        timestamptz not null check (entitlements._finite(starts_at, 'starts_at')),
    ends_at          timestamptz check (entitlements._finite(ends_at, 'ends_at')),
    removed_at       timestamptz,
    stripe_id        text unique,
    created_at       timestamptz not null default entitlements.now(),
    check ((percent_off is null) <> (amount_off_cents is null)),
    check (ends_at is null or ends_at > starts_at)
);
comment on table entitlements.discounts is
    'Discounts on subscriptions (redeemed coupons, Stripe discounts), each in force over a time range.';
create index discounts_subscription on entitlements.discounts (subscription_id, starts_at);
create index discounts_customer on entitlements.discounts (customer_id);
select pg_catalog.pg_extension_config_dump('entitlements.coupons', '');
select pg_catalog.pg_extension_config_dump('entitlements.discounts', '');

-- Row security: coupons (their codes) are for global admins; a customer sees its discounts.
-- Writes go through create_coupon and redeem.
alter table entitlements.coupons enable row level security;
create policy coupons_admin on entitlements.coupons for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());
alter table entitlements.discounts enable row level security;
create policy discounts_read on entitlements.discounts for select
    using (entitlements.can_see_customer(customer_id));
-- Written directly by global admins only: a row names a subscription and a customer, and a
-- tenant admin could otherwise name its own customer with another tenant's subscription.
create policy discounts_admin on entitlements.discounts for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());
select entitlements.enable_audit(t::regclass)
  from unnest(array['entitlements.coupons', 'entitlements.discounts']) as t;

create function entitlements.create_coupon(
    code text,
    percent_off numeric default null,
    amount_off_cents bigint default null,
    duration text default 'once',
    duration_in_months integer default null,
    max_redemptions integer default null,
    redeem_by timestamptz default null,
    plans text[] default null,
    first_time_only boolean default false,
    currency text default 'usd')
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_id uuid;
    v_unknown text;
begin
    perform entitlements._require_admin('create_coupon');
    perform entitlements._require_not_null(code, 'code');
    perform entitlements._require_not_null(duration, 'duration');
    if code !~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$' then
        raise exception 'a promotion code is 1 to 64 letters, digits, "-" or "_", got "%"', code using errcode = '22023';
    end if;
    if (percent_off is null) = (amount_off_cents is null) then
        raise exception 'a coupon takes exactly one of percent_off and amount_off_cents' using errcode = '22023';
    end if;
    if percent_off <= 0 or percent_off > 100 then
        raise exception 'percent_off must be in (0, 100], got %', percent_off using errcode = '22023';
    end if;
    if amount_off_cents <= 0 or amount_off_cents > 1000000000000 then
        raise exception 'amount_off_cents must be from 1 to 1000000000000, got %', amount_off_cents using errcode = '22023';
    end if;
    if duration not in ('once', 'repeating', 'forever') then
        raise exception 'duration must be once, repeating or forever, got "%"', duration using errcode = '22023';
    end if;
    if (duration = 'repeating') <> (duration_in_months is not null) then
        raise exception 'duration_in_months is for repeating coupons, and they need it' using errcode = '22023';
    end if;
    if duration_in_months not between 1 and 120 then
        raise exception 'duration_in_months must be from 1 to 120, got %', duration_in_months using errcode = '22023';
    end if;
    if max_redemptions <= 0 then
        raise exception 'max_redemptions must be positive, got %', max_redemptions using errcode = '22023';
    end if;
    perform entitlements._finite(redeem_by, 'redeem_by');
    if redeem_by <= entitlements.now() then
        raise exception 'redeem_by (%) must be in the future', redeem_by using errcode = '22023';
    end if;
    select string_agg(k, ', ') into v_unknown
      from unnest(plans) k where not exists (select 1 from entitlements.plans p where p.key = k);
    if v_unknown is not null or array_position(plans, null) is not null then
        raise exception 'unknown plan(s) in plans: %', coalesce(v_unknown, 'NULL') using errcode = '22023';
    end if;
    if exists (select 1 from entitlements.coupons c where lower(c.code) = lower(create_coupon.code)) then
        raise exception 'promotion code "%" already exists', code using errcode = '23505';
    end if;
    insert into entitlements.coupons (code, percent_off, amount_off_cents, currency, duration, duration_in_months,
                                      max_redemptions, redeem_by, plans, first_time_only)
    values (code, percent_off, amount_off_cents, lower(coalesce(currency, 'usd')), duration, duration_in_months,
            max_redemptions, redeem_by, plans, coalesce(first_time_only, false))
    returning id into v_id;
    return v_id;
end
$$;
comment on function entitlements.create_coupon(text, numeric, bigint, text, integer, integer, timestamptz, text[], boolean, text) is
    'Create a coupon and its promotion code (Stripe''s semantics). Admins only.';

-- How long a discount made now lasts: once = the subscription's first billing period.
create function entitlements._discount_end(duration text, months integer, billing_interval text, starts_at timestamptz)
returns timestamptz language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select case duration
        when 'forever' then null
        when 'repeating' then starts_at + make_interval(months => months)
        else starts_at + case billing_interval when 'year' then interval '1 year' when 'week' then interval '1 week'
                                               when 'day' then interval '1 day' else interval '1 month' end
    end
$$;

-- Redeem a promotion code on a subscription: by an admin of the customer, the customer,
-- or an owner or admin of the organization that is the customer. Runs as the owner (the
-- caller may not read coupons); the coupon row is locked, so concurrent redemptions are
-- counted one at a time and never pass max_redemptions. Any refusal writes nothing.
create function entitlements.redeem(subscription uuid, code text)
returns uuid language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_sub entitlements.subscriptions;
    v_coupon entitlements.coupons;
    v_interval text;
    v_currency text;
    -- The statement's instant, not the transaction's: a code that expired while a long
    -- transaction ran is expired.
    v_now timestamptz := entitlements._statement_now();
    v_id uuid;
begin
    perform entitlements._require_not_null(subscription, 'subscription');
    perform entitlements._require_not_null(code, 'code');
    if length(code) > 64 then
        raise exception 'unknown promotion code' using errcode = '22023';
    end if;
    select * into v_sub from entitlements.subscriptions s where s.id = subscription for update;
    if not found
       or not (entitlements._role_is_privileged(entitlements._outer_role())
               or entitlements._is_listed_admin_of(v_sub.customer_id)
               or v_sub.customer_id = entitlements.current_user_id()
               or coalesce(entitlements._my_org_role(v_sub.customer_id) in ('owner', 'admin'), false)) then
        -- The same answer for "missing" and "not yours": nothing about others leaks.
        raise exception 'subscription % does not exist or is not yours', subscription using errcode = '42501';
    end if;
    if v_sub.status not in ('trialing', 'active', 'past_due') or v_sub.ended_at is not null then
        raise exception 'a % subscription cannot take a promotion code', v_sub.status using errcode = '22023';
    end if;
    select * into v_coupon from entitlements.coupons c where lower(c.code) = lower(redeem.code) for update;
    if not found or not v_coupon.active then
        raise exception 'unknown promotion code "%"', code using errcode = '22023';
    end if;
    if v_coupon.redeem_by <= v_now then
        raise exception 'promotion code "%" expired at %', code, v_coupon.redeem_by using errcode = '22023';
    end if;
    if v_coupon.times_redeemed >= v_coupon.max_redemptions then
        raise exception 'promotion code "%" has reached its maximum of % redemptions', code, v_coupon.max_redemptions
            using errcode = '22023';
    end if;
    if v_coupon.plans is not null and not v_sub.plan_key = any (v_coupon.plans) then
        raise exception 'promotion code "%" is not for plan "%"', code, v_sub.plan_key using errcode = '22023';
    end if;
    select coalesce(v_sub.billing_interval, p.interval), coalesce(v_sub.currency, p.currency)
      into v_interval, v_currency
      from entitlements.plans p where p.key = v_sub.plan_key;
    if v_coupon.amount_off_cents is not null and v_coupon.currency <> v_currency then
        raise exception 'promotion code "%" is in %, the subscription pays in %', code, v_coupon.currency, v_currency
            using errcode = '22023';
    end if;
    if v_coupon.duration = 'repeating' and v_interval = 'year' and v_coupon.duration_in_months < 12 then
        raise exception 'promotion code "%" repeats for % months, shorter than the subscription''s yearly billing',
            code, v_coupon.duration_in_months using errcode = '22023';
    end if;
    if v_coupon.first_time_only and exists (
        select 1 from entitlements.subscription_history h
         where h.customer_id = v_sub.customer_id and h.subscription_id <> v_sub.id
           and h.status in ('active', 'past_due') and h.price_cents > 0) then
        raise exception 'promotion code "%" is for a first purchase only', code using errcode = '22023';
    end if;
    if exists (select 1 from entitlements.discounts d
                where d.subscription_id = v_sub.id and d.removed_at is null
                  and (d.ends_at is null or d.ends_at > v_now)) then
        raise exception 'subscription % already has a discount', subscription using errcode = '22023';
    end if;
    update entitlements.coupons c set times_redeemed = c.times_redeemed + 1 where c.id = v_coupon.id;
    insert into entitlements.discounts (subscription_id, customer_id, coupon_id, source, percent_off,
                                        amount_off_cents, starts_at, ends_at)
    values (v_sub.id, v_sub.customer_id, v_coupon.id, 'coupon', v_coupon.percent_off, v_coupon.amount_off_cents,
            v_now, entitlements._discount_end(v_coupon.duration, v_coupon.duration_in_months, v_interval, v_now))
    returning id into v_id;
    return v_id;
end
$$;
comment on function entitlements.redeem(uuid, text) is
    'Apply a promotion code to a subscription (case-insensitive): a discount from now, counted against the coupon.';
-- END copy of sql/revenue/discounts.sql

-- BEGIN copy of sql/revenue/metrics.sql
-- Revenue metrics (issue #12), exact for any past instant, from the subscription history
-- and the discounts' time ranges. Definitions (ChartMogul's; README, Revenue):
--   * MRR: the subscriptions paying at an instant, each normalised to a month (yearly / 12,
--     weekly * 52 / 12, daily * 365 / 12; one-time prices are not recurring) after every
--     discount in force (amount off the invoice, then percent off, then an admin discount),
--     rounded to the cent per customer. Zero-priced plans and trials carry none. past_due
--     still counts (the customer owes it; it churns if it ends unpaid); unpaid, paused,
--     incomplete and ended subscriptions do not. A subscription canceled at period end
--     counts until that end: churn is dated at the end of the final paid period.
--   * Movements per customer over a bucket, from its MRR at the start and at the end: new
--     (none before, never paid before), reactivation (none at the start, paid before),
--     expansion, contraction, churn (some at the start, none at the end). They add up:
--     end = start + new + expansion - contraction - churned + reactivation.
-- Admins read every customer's revenue; a tenant (store) admin reads its tenant's only.
-- The public readers (mrr, revenue_movements, conversions, revenue_by_tenant; usage_report in
-- costs.sql) are SECURITY DEFINER: they check the real caller first (_require_revenue_reader,
-- _require_caller_admin), every query of theirs filters by the tenant asked about, and then
-- they read the history without row security, which would otherwise ask who may see each of
-- a hundred thousand customers row by row (seconds instead of milliseconds for a signed-in
-- admin; bench/README.md, console). Their arguments are built-in types only.

-- Does a subscription in this state pay at `at`? This and _monthly_cents pin no search_path
-- on purpose: a pinned SQL function is never inlined, and the revenue queries evaluate them
-- per history row (pinned, the movements took 1.7x as long; bench/README.md). Every caller pins its
-- search_path, the bodies use built-in operators only, and they run as their caller.
create function entitlements._paying(status text, cancel_at_period_end boolean, current_period_end timestamptz,
                                     ended_at timestamptz, at timestamptz)
returns boolean language sql immutable parallel safe
as $$
    select (status in ('active', 'past_due') or (status = 'canceled' and cancel_at_period_end))
       and (current_period_end is null or current_period_end > at)
       and (ended_at is null or ended_at > at)
$$;

-- A price normalised to a month, after discounts, in cents (not rounded).
create function entitlements._monthly_cents(price_cents bigint, quantity integer, billing_interval text,
                                            amount_off_cents bigint, percent_off numeric, admin_percent_off numeric)
returns numeric language sql immutable parallel safe
as $$
    -- (Most rows are a monthly price without a discount: no numeric arithmetic for them.)
    select case when amount_off_cents is null and percent_off is null and admin_percent_off is null
                     and billing_interval = 'month'
                then (price_cents * quantity)::numeric
                else greatest(price_cents::numeric * quantity - coalesce(amount_off_cents, 0), 0)
                     * (1 - coalesce(percent_off, 0) / 100) * (1 - coalesce(admin_percent_off, 0) / 100)
                     * case billing_interval when 'month' then 1 when 'year' then 1 / 12.0
                                             when 'week' then 52 / 12.0 when 'day' then 365 / 12.0 else 0 end end
$$;

-- Revenue is for admins, and for a tenant's admins about that tenant.
create function entitlements._require_revenue_reader(tenant uuid)
returns void language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    -- The real caller (these readers are definer functions): a privileged role or a listed
    -- admin, globally or of `tenant`.
    if not (entitlements._role_is_privileged(entitlements._outer_role()) or entitlements._is_listed_admin(tenant)) then
        raise exception 'permission denied: revenue is for entitlements admins, and a tenant''s admins with that tenant'
            using errcode = '42501', hint = 'A tenant admin passes its tenant: mrr(at, currency, tenant).';
    end if;
end
$$;

-- MRR of every paying customer at each of `points` (rounded per customer). The heart of
-- every metric: one pass over the history rows in force at the points. PL/pgSQL so that
-- each call is planned for its arguments (without a tenant, no customer is looked up); the
-- memory lets the sums per customer and point stay in one hash table (bench/README.md).
create function entitlements._mrr_by_customer(points timestamptz[], p_currency text, p_tenant uuid,
                                              p_customer uuid default null)
returns table (at timestamptz, customer_id uuid, mrr bigint)
language plpgsql stable
set search_path = pg_catalog, pg_temp
set work_mem = '64MB'
as $$
begin
    return query
    with admin_discounts as (
        select g.customer_id, p.at, max((g.value ->> 'percent_off')::numeric) as percent_off
          from entitlements.grants g
          join unnest(points) as p(at)
            on g.starts_at <= p.at and (g.expires_at is null or g.expires_at > p.at)
               and (g.revoked_at is null or g.revoked_at > p.at)
         where g.kind = 'discount'
         group by g.customer_id, p.at),
    per_customer as (
        select p.at, h.customer_id,
               round(sum(entitlements._monthly_cents(h.price_cents, h.quantity, h.billing_interval,
                                                     d.amount_off_cents, d.percent_off, a.percent_off))) as mrr
          from unnest(points) as p(at)
          join entitlements.subscription_history h
            on h.valid_from <= p.at and (h.valid_to is null or h.valid_to > p.at)
          left join entitlements.discounts d
            on d.subscription_id = h.subscription_id and d.starts_at <= p.at
               and (d.ends_at is null or d.ends_at > p.at) and (d.removed_at is null or d.removed_at > p.at)
          left join admin_discounts a on a.customer_id = h.customer_id and a.at = p.at
         where h.currency = p_currency and h.price_cents > 0
           and entitlements._paying(h.status, h.cancel_at_period_end, h.current_period_end, h.ended_at, p.at)
           and (p_tenant is null
                or h.customer_id in (select c.id from entitlements.customers c where c.tenant_id = p_tenant))
           and (p_customer is null or h.customer_id = p_customer)
         group by p.at, h.customer_id)
    select x.at, x.customer_id, x.mrr::bigint from per_customer x where x.mrr > 0;
end
$$;

create function entitlements.mrr(at timestamptz default entitlements.now(), currency text default 'usd',
                                 tenant uuid default null)
returns bigint language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_revenue_reader(tenant);
    perform entitlements._require_not_null(at, 'at');
    perform entitlements._finite(at, 'at');
    return coalesce((select sum(m.mrr)::bigint from entitlements._mrr_by_customer(array[at], lower(currency), tenant) m), 0);
end
$$;
comment on function entitlements.mrr(timestamptz, text, uuid) is
    'Monthly recurring revenue in cents at an instant (ChartMogul''s definition; README, Revenue). Admins; tenant admins with their tenant.';

-- The bucket starts from from_at (inclusive) up to to_at (exclusive), and to_at.
create function entitlements._bucket_points(from_at timestamptz, to_at timestamptz, bucket text)
returns timestamptz[] language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_step interval;
begin
    perform entitlements._require_not_null(from_at, 'from_at');
    perform entitlements._require_not_null(to_at, 'to_at');
    perform entitlements._finite(from_at, 'from_at');
    perform entitlements._finite(to_at, 'to_at');
    if to_at <= from_at then
        raise exception 'to_at (%) must be after from_at (%)', to_at, from_at using errcode = '22023';
    end if;
    v_step := case bucket when 'day' then interval '1 day' when 'week' then interval '1 week'
                          when 'month' then interval '1 month' when 'quarter' then interval '3 months'
                          when 'year' then interval '1 year' end;
    if v_step is null then
        raise exception 'bucket must be day, week, month, quarter or year, got "%"', bucket using errcode = '22023';
    end if;
    if from_at + v_step * 1000 < to_at then
        raise exception 'at most 1000 buckets' using errcode = '22023';
    end if;
    -- Month arithmetic from the start (Jan 31 + 1 month = Feb 28), never drifting.
    return array(select least(from_at + v_step * i, to_at)
                   from generate_series(0, 1000) i
                  where from_at + v_step * (i - 1) < to_at);
end
$$;

create function entitlements.revenue_movements(
    from_at timestamptz, to_at timestamptz, bucket text default 'month', currency text default 'usd',
    tenant uuid default null)
returns table (
    bucket_start timestamptz, bucket_end timestamptz,
    start_mrr bigint, new_mrr bigint, expansion_mrr bigint, contraction_mrr bigint, churned_mrr bigint,
    reactivation_mrr bigint, end_mrr bigint, arr bigint,
    customers_start integer, customers_end integer, new_customers integer, churned_customers integer,
    reactivated_customers integer,
    logo_churn numeric, gross_mrr_churn numeric, net_mrr_churn numeric, nrr numeric, grr numeric,
    arpa numeric, ltv numeric)
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_points timestamptz[];
begin
    perform entitlements._require_revenue_reader(tenant);
    v_points := entitlements._bucket_points(from_at, to_at, bucket);
    return query
    with m as (
        select * from entitlements._mrr_by_customer(v_points, lower(currency), tenant)),
    buckets as (
        select v_points[i] as b_start, v_points[i + 1] as b_end
          from generate_series(1, cardinality(v_points) - 1) i),
    -- When each customer first paid (the first history row that was paying, with a price).
    first_paid as (
        select h.customer_id, min(h.valid_from) as at
          from entitlements.subscription_history h
         where h.currency = lower(revenue_movements.currency) and h.price_cents > 0
           and h.status in ('active', 'past_due')
         group by h.customer_id),
    -- Each customer's MRR at the start (s) and the end (e) of each bucket.
    ends as (
        select b.b_start, b.b_end, x.customer_id, x.mrr as s, 0::bigint as e
          from buckets b join m x on x.at = b.b_start
        union all
        select b.b_start, b.b_end, x.customer_id, 0::bigint, x.mrr
          from buckets b join m x on x.at = b.b_end),
    per_customer as (
        select x.b_start, x.b_end, x.customer_id, sum(x.s) as s, sum(x.e) as e
          from ends x group by x.b_start, x.b_end, x.customer_id),
    moves as (
        select b.b_start, b.b_end,
               coalesce(sum(p.s), 0)::bigint as start_mrr,
               coalesce(sum(p.e) filter (where p.s = 0 and not coalesce(f.at < p.b_start, false)), 0)::bigint as new_mrr,
               coalesce(sum(p.e - p.s) filter (where p.s > 0 and p.e > p.s), 0)::bigint as expansion,
               coalesce(sum(p.s - p.e) filter (where p.e > 0 and p.e < p.s), 0)::bigint as contraction,
               coalesce(sum(p.s) filter (where p.e = 0), 0)::bigint as churned,
               coalesce(sum(p.e) filter (where p.s = 0 and coalesce(f.at < p.b_start, false)), 0)::bigint as reactivation,
               coalesce(sum(p.e), 0)::bigint as end_mrr,
               (count(*) filter (where p.s > 0))::integer as customers_start,
               (count(*) filter (where p.e > 0))::integer as customers_end,
               (count(*) filter (where p.s = 0 and p.e > 0 and not coalesce(f.at < p.b_start, false)))::integer as new_customers,
               (count(*) filter (where p.s > 0 and p.e = 0))::integer as churned_customers,
               (count(*) filter (where p.s = 0 and p.e > 0 and coalesce(f.at < p.b_start, false)))::integer as reactivated
          from buckets b
          left join per_customer p on p.b_start = b.b_start
          left join first_paid f on f.customer_id = p.customer_id
         group by b.b_start, b.b_end)
    select x.b_start, x.b_end, x.start_mrr, x.new_mrr, x.expansion, x.contraction, x.churned, x.reactivation,
           x.end_mrr, x.end_mrr * 12, x.customers_start, x.customers_end, x.new_customers, x.churned_customers,
           x.reactivated,
           round(x.churned_customers::numeric / nullif(x.customers_start, 0), 6),
           round((x.churned + x.contraction)::numeric / nullif(x.start_mrr, 0), 6),
           round((x.churned + x.contraction - x.expansion - x.reactivation)::numeric / nullif(x.start_mrr, 0), 6),
           round((x.start_mrr + x.expansion - x.contraction - x.churned)::numeric / nullif(x.start_mrr, 0), 6),
           round((x.start_mrr - x.contraction - x.churned)::numeric / nullif(x.start_mrr, 0), 6),
           round(x.end_mrr::numeric / nullif(x.customers_end, 0), 2),
           round((x.end_mrr::numeric / nullif(x.customers_end, 0))
                 / nullif(x.churned_customers::numeric / nullif(x.customers_start, 0), 0), 2)
      from moves x
     order by x.b_start;
end
$$;
comment on function entitlements.revenue_movements(timestamptz, timestamptz, text, text, uuid) is
    'MRR movements per bucket (new, expansion, contraction, churned, reactivation) with churn rates, NRR, GRR, ARPA and LTV. Admins; tenant admins with their tenant.';

-- One customer's MRR at each bucket start from from_at, and at to_at: for its admins, the
-- customer, and the owners and admins of an organization that is the customer.
create function entitlements.customer_mrr_history(
    customer uuid, from_at timestamptz, to_at timestamptz, bucket text default 'month', currency text default 'usd')
returns table (at timestamptz, mrr bigint)
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_points timestamptz[];
begin
    perform entitlements._require_not_null(customer, 'customer');
    perform entitlements._require(entitlements.can_see_customer(customer), 'reading a customer''s MRR',
                                  'the customer or an entitlements admin of it');
    v_points := entitlements._bucket_points(from_at, to_at, bucket);
    return query
    select p.at, coalesce(m.mrr, 0)
      from unnest(v_points) as p(at)
      left join entitlements._mrr_by_customer(v_points, lower(currency), null, customer) m on m.at = p.at
     order by p.at;
end
$$;

-- MRR by tenant (store) at an instant; customers without a tenant under NULL.
create function entitlements.revenue_by_tenant(at timestamptz default entitlements.now(), currency text default 'usd')
returns table (tenant_id uuid, mrr bigint, customers integer)
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_caller_admin('revenue_by_tenant');
    perform entitlements._finite(at, 'at');
    return query
    select c.tenant_id, sum(m.mrr)::bigint, count(*)::integer
      from entitlements._mrr_by_customer(array[at], lower(currency), null) m
      join entitlements.customers c on c.id = m.customer_id
     group by c.tenant_id
     order by c.tenant_id nulls first;
end
$$;

-- Trial-to-paid and free-to-paid conversion by cohort: subscriptions whose trial began in
-- the bucket, and customers whose first subscription (on a zero-priced plan) began in it;
-- converted when they later paid.
create function entitlements.conversions(
    from_at timestamptz, to_at timestamptz, bucket text default 'month', tenant uuid default null)
returns table (cohort_start timestamptz, kind text, started integer, converted integer, rate numeric)
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_points timestamptz[];
begin
    perform entitlements._require_revenue_reader(tenant);
    v_points := entitlements._bucket_points(from_at, to_at, bucket);
    return query
    with buckets as (
        select v_points[i] as b_start, v_points[i + 1] as b_end from generate_series(1, cardinality(v_points) - 1) i),
    scoped as (
        select h.* from entitlements.subscription_history h
          join entitlements.customers c on c.id = h.customer_id
         where tenant is null or c.tenant_id = tenant),
    paying as (
        select x.subscription_id, x.customer_id from scoped x
         where x.status in ('active', 'past_due') and x.price_cents > 0),
    trials as (
        select t.subscription_id, min(t.valid_from) as began,
               t.subscription_id in (select p.subscription_id from paying p) as paid
          from scoped t where t.status = 'trialing'
         group by t.subscription_id),
    firsts as (
        select distinct on (f.customer_id) f.customer_id, f.valid_from as began, f.price_cents
          from scoped f order by f.customer_id, f.valid_from, f.id),
    free as (
        select f.customer_id, f.began, f.customer_id in (select p.customer_id from paying p) as paid
          from firsts f where f.price_cents = 0)
    select b.b_start, k.kind, coalesce(k.started, 0)::integer, coalesce(k.converted, 0)::integer,
           round(k.converted::numeric / nullif(k.started, 0), 6)
      from buckets b
      cross join lateral (
          select 'trial'::text as kind, count(*) as started, count(*) filter (where t.paid) as converted
            from trials t where t.began >= b.b_start and t.began < b.b_end
          union all
          select 'free', count(*), count(*) filter (where f.paid)
            from free f where f.began >= b.b_start and f.began < b.b_end) k
     order by b.b_start, k.kind desc;
end
$$;
comment on function entitlements.conversions(timestamptz, timestamptz, text, uuid) is
    'Trial-to-paid and free-to-paid conversion by cohort (when the trial or the free plan began). Admins; tenant admins with their tenant.';
-- END copy of sql/revenue/metrics.sql

create or replace function entitlements._require_store_customer(p_plan entitlements.plans, customer uuid)
returns void language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_plan.tenant_id is not null
       and not exists (select 1 from entitlements.customers c where c.id = customer and c.tenant_id = p_plan.tenant_id) then
        raise exception 'permission denied: plan "%" is for the customers of its store', p_plan.key
            using errcode = '42501';
    end if;
end
$$;

-- BEGIN copy of sql/revenue/costs.sql
-- Usage cost and margin (issue #12). A metered feature may carry unit_cost_cents: what a
-- unit costs the business (an AI call, a minute of transcription), apart from any overage
-- price charged. record_usage records usage that has a cost but no limit. The report puts
-- subscription revenue, overage revenue and usage cost side by side, per plan and feature.

-- Every unit cost a feature has had, from the instant it took effect: consume's ledger
-- rows carry no cost of their own (the hot path stays as it is) and are priced at the cost
-- in force at their instant, so a later change of the price list does not rewrite the past.
create table entitlements.feature_unit_costs (
    feature_key     text not null references entitlements.features (key) on update cascade on delete cascade,
    valid_from      timestamptz not null,
    unit_cost_cents numeric,
    primary key (feature_key, valid_from)
);
comment on table entitlements.feature_unit_costs is
    'The unit cost of each metered feature over time (features.unit_cost_cents as it was set).';
select pg_catalog.pg_extension_config_dump('entitlements.feature_unit_costs', '');
alter table entitlements.feature_unit_costs enable row level security;
create policy feature_unit_costs_admin on entitlements.feature_unit_costs for select
    using (entitlements.is_admin(null) or exists (select 1 from entitlements.admins a
                                                   where a.user_id = entitlements.current_user_id()));

create function entitlements._record_unit_cost()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._record_unit_cost');
    if entitlements._bulk_loading() then
        return null;
    end if;
    if (tg_op = 'INSERT' and new.unit_cost_cents is null)
       or (tg_op = 'UPDATE' and new.unit_cost_cents is not distinct from old.unit_cost_cents) then
        return null;
    end if;
    insert into entitlements.feature_unit_costs as c (feature_key, valid_from, unit_cost_cents)
    values (new.key, entitlements.now(), new.unit_cost_cents)
    on conflict (feature_key, valid_from) do update set unit_cost_cents = excluded.unit_cost_cents;
    return null;
end
$$;
create trigger features_unit_cost after insert or update of unit_cost_cents on entitlements.features
    for each row execute function entitlements._record_unit_cost();

-- Record usage that has a cost but no limit (nothing is counted against any quota): the
-- ledger gets a row with the cost (cost_cents, else amount times the unit cost now; NULL
-- when neither is known) and the metadata. The same idempotency key twice records once.
-- Whoever may consume for the customer may record (checked as consume checks it); a cost
-- of its own is the business's figure, so only admins of the customer (the app's service
-- role) give one: a user recording its own usage is priced at the unit cost.
create function entitlements.record_usage(
    customer uuid, feature text, amount numeric, cost_cents numeric default null,
    metadata jsonb default '{}', idempotency_key text default null)
returns table (ledger_id bigint, recorded_cost_cents numeric, replayed boolean)
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_feature entitlements.features;
    v_cost numeric;
    v_id bigint;
begin
    perform entitlements._meter_check_input(customer, feature, amount, 'consume');
    select * into v_feature from entitlements.features f where f.key = feature;
    if not found then
        raise exception 'unknown feature "%"', feature using errcode = '22023';
    end if;
    if v_feature.kind <> 'metered' then
        raise exception 'feature "%" is a % feature; usage is recorded for metered features', feature, v_feature.kind
            using errcode = '22023';
    end if;
    if cost_cents is not null and (not (cost_cents >= 0) or cost_cents > 1e15) then
        raise exception 'cost_cents must be from 0 to 1e15, got %', left(cost_cents::text, 40) using errcode = '22023';
    end if;
    if cost_cents is not null and not (entitlements._role_is_privileged(entitlements._outer_role())
                                       or entitlements._is_listed_admin_of(customer)) then
        raise exception 'permission denied: a cost of its own is given by an entitlements admin of the customer'
            using errcode = '42501', hint = 'Record without cost_cents: it is priced at the feature''s unit cost.';
    end if;
    if metadata is null or jsonb_typeof(metadata) <> 'object' then
        raise exception 'metadata must be a JSON object' using errcode = '22023';
    end if;
    perform entitlements._valid_json(metadata, 'metadata');
    if idempotency_key is not null then
        if length(idempotency_key) not between 1 and 255 then
            raise exception 'idempotency_key must be 1 to 255 characters' using errcode = '22023';
        end if;
        if not entitlements._meter_claim_key(customer, idempotency_key, feature, amount) then
            return query
            select l.id, l.usage_cost_cents, true from entitlements.usage_ledger l
             where l.customer_id = record_usage.customer and l.idempotency_key = record_usage.idempotency_key
               and l.feature_key = record_usage.feature
             order by l.id limit 1;
            return;
        end if;
    end if;
    v_cost := coalesce(cost_cents, amount * v_feature.unit_cost_cents);
    insert into entitlements.usage_ledger (at, customer_id, feature_key, amount, idempotency_key, periods, actor,
                                           usage_cost_cents, metadata)
    values (entitlements._statement_now(), customer, feature, amount, idempotency_key, '{}', entitlements.current_user_id(),
            v_cost, metadata)
    returning id into v_id;
    return query select v_id, v_cost, false;
end
$$;
comment on function entitlements.record_usage(uuid, text, numeric, numeric, jsonb, text) is
    'Record usage with a cost and no limit (an AI call): a ledger row with its cost in cents and metadata. Idempotent by key.';

-- Subscription revenue recognised over [from_at, to_at): each subscription's MRR (as
-- entitlements.mrr counts it) over every stretch in which nothing about it changed, pro
-- rata to the days of its calendar month. A whole month at 1000 MRR is 1000.
create function entitlements._subscription_revenue(from_at timestamptz, to_at timestamptz, p_currency text, p_tenant uuid)
returns table (subscription_id uuid, customer_id uuid, plan_key text, revenue_cents numeric)
language sql stable
set search_path = pg_catalog, pg_temp
as $$
    with subs as (
        select distinct h.subscription_id, h.customer_id
          from entitlements.subscription_history h
          join entitlements.customers c on c.id = h.customer_id
         where h.valid_from < to_at and (h.valid_to is null or h.valid_to > from_at)
           and h.currency = p_currency and h.price_cents > 0 and (p_tenant is null or c.tenant_id = p_tenant)),
    -- Every instant at which a subscription's MRR may change, and each month start.
    breaks as (
        select s.subscription_id, s.customer_id, t.at
          from subs s
          cross join lateral (
              select greatest(h.valid_from, from_at) from entitlements.subscription_history h
               where h.subscription_id = s.subscription_id
              union select h.current_period_end from entitlements.subscription_history h
               where h.subscription_id = s.subscription_id
              union select h.ended_at from entitlements.subscription_history h where h.subscription_id = s.subscription_id
              union select unnest(array[d.starts_at, d.ends_at, d.removed_at]) from entitlements.discounts d
               where d.subscription_id = s.subscription_id
              union select unnest(array[g.starts_at, g.expires_at, g.revoked_at]) from entitlements.grants g
               where g.customer_id = s.customer_id and g.kind = 'discount'
              union select m from generate_series(date_trunc('month', from_at, 'UTC'), to_at, interval '1 month') m
              union select from_at) as t(at)
         where t.at >= from_at and t.at < to_at),
    segments as (
        select b.subscription_id, b.customer_id, b.at as seg_start,
               coalesce(lead(b.at) over (partition by b.subscription_id order by b.at), to_at) as seg_end
          from breaks b)
    select g.subscription_id, g.customer_id, h.plan_key,
           sum(entitlements._monthly_cents(h.price_cents, h.quantity, h.billing_interval, d.amount_off_cents,
                                           d.percent_off, a.percent_off)
               * extract(epoch from g.seg_end - g.seg_start)
               / extract(epoch from (date_trunc('month', g.seg_start, 'UTC') + interval '1 month')
                                    - date_trunc('month', g.seg_start, 'UTC')))
      from segments g
      join entitlements.subscription_history h
        on h.subscription_id = g.subscription_id and h.valid_from <= g.seg_start
           and (h.valid_to is null or h.valid_to > g.seg_start)
      left join entitlements.discounts d
        on d.subscription_id = g.subscription_id and d.starts_at <= g.seg_start
           and (d.ends_at is null or d.ends_at > g.seg_start) and (d.removed_at is null or d.removed_at > g.seg_start)
      left join lateral (
          select max((x.value ->> 'percent_off')::numeric) as percent_off from entitlements.grants x
           where x.customer_id = g.customer_id and x.kind = 'discount' and x.starts_at <= g.seg_start
             and (x.expires_at is null or x.expires_at > g.seg_start)
             and (x.revoked_at is null or x.revoked_at > g.seg_start)) a on true
     where entitlements._paying(h.status, h.cancel_at_period_end, h.current_period_end, h.ended_at, g.seg_start)
     group by g.subscription_id, g.customer_id, h.plan_key
$$;

-- Revenue, usage and cost by plan and feature over [from_at, to_at). Per plan (feature_key
-- NULL): subscription revenue plus overage charged, the cost of all its customers' usage,
-- and the margin. Per plan and metered feature: units, overage charged, usage cost, margin.
-- Usage belongs to the plan the customer paid most for at its instant (the default plan
-- when none). Costs and overage prices are in the catalog's currency.
create function entitlements.usage_report(
    from_at timestamptz, to_at timestamptz, currency text default 'usd', tenant uuid default null)
returns table (plan_key text, feature_key text, customers integer, units numeric, revenue_cents numeric,
               cost_cents numeric, margin_cents numeric)
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_revenue_reader(tenant);
    perform entitlements._bucket_points(from_at, to_at, 'year');  -- checks the range
    return query
    with usage as (
        select l.customer_id, l.feature_key, l.amount, l.cost_cents as overage_cents,
               coalesce(l.usage_cost_cents, l.amount * (
                   select u.unit_cost_cents from entitlements.feature_unit_costs u
                    where u.feature_key = l.feature_key and u.valid_from <= l.at
                    order by u.valid_from desc limit 1)) as cost,
               coalesce((select h.plan_key from entitlements.subscription_history h
                          where h.customer_id = l.customer_id and h.valid_from <= l.at
                            and (h.valid_to is null or h.valid_to > l.at)
                            and entitlements._paying(h.status, h.cancel_at_period_end, h.current_period_end, h.ended_at, l.at)
                          order by h.price_cents * h.quantity desc, h.subscription_id limit 1),
                        (select p.key from entitlements.plans p where p.is_default)) as plan_key
          from entitlements.usage_ledger l
          join entitlements.customers c on c.id = l.customer_id
         where l.at >= from_at and l.at < to_at and (tenant is null or c.tenant_id = tenant)),
    by_feature as (
        select u.plan_key, u.feature_key, count(distinct u.customer_id)::integer as customers, sum(u.amount) as units,
               coalesce(sum(u.overage_cents), 0) as revenue, coalesce(sum(u.cost), 0) as cost
          from usage u group by u.plan_key, u.feature_key),
    subscriptions as (
        select r.plan_key, count(distinct r.customer_id)::integer as customers, sum(r.revenue_cents) as revenue
          from entitlements._subscription_revenue(from_at, to_at, lower(currency), tenant) r
         group by r.plan_key),
    plans as (
        select coalesce(s.plan_key, f.plan_key) as plan_key, coalesce(s.customers, 0) as customers,
               coalesce(s.revenue, 0) + coalesce(f.revenue, 0) as revenue, coalesce(f.cost, 0) as cost
          from subscriptions s
          full join (select b.plan_key, sum(b.revenue) as revenue, sum(b.cost) as cost from by_feature b
                      group by b.plan_key) f on f.plan_key = s.plan_key)
    select p.plan_key, null::text, p.customers, null::numeric, round(p.revenue), round(p.cost),
           round(p.revenue) - round(p.cost)
      from plans p
    union all
    select b.plan_key, b.feature_key, b.customers, b.units, round(b.revenue), round(b.cost),
           round(b.revenue) - round(b.cost)
      from by_feature b
     order by 1, 2 nulls first;
end
$$;
comment on function entitlements.usage_report(timestamptz, timestamptz, text, uuid) is
    'Revenue (subscriptions and overage), usage cost and margin by plan and feature over a range. Admins; tenant admins with their tenant.';
-- END copy of sql/revenue/costs.sql

create or replace function entitlements._stripe_sync_revenue(p_subscription uuid, p_customer uuid, subscription jsonb,
                                                  observed timestamptz)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_price jsonb := subscription #> '{items,data,0,price}';
    v_count integer := greatest(coalesce((v_price #>> '{recurring,interval_count}')::integer, 1), 1);
    v_amount bigint;
    v_interval text := v_price #>> '{recurring,interval}';
    v_discounts jsonb;
    v_d jsonb;
    v_ids text[] := '{}'::text[];
    v_n bigint;
    v_changed boolean := false;
begin
    if jsonb_typeof(v_price -> 'unit_amount') = 'number' and (v_price ->> 'unit_amount')::numeric >= 0 then
        v_amount := round((v_price ->> 'unit_amount')::numeric / v_count)::bigint;
        update entitlements.subscriptions s
           set price_cents = v_amount, currency = lower(coalesce(v_price ->> 'currency', s.currency, 'usd')),
               billing_interval = case when v_interval in ('day', 'week', 'month', 'year') then v_interval
                                       when v_price ->> 'type' = 'one_time' then 'once' else s.billing_interval end
         where s.id = p_subscription
           and (s.price_cents, s.currency, s.billing_interval) is distinct from
               (v_amount, lower(coalesce(v_price ->> 'currency', s.currency, 'usd')),
                case when v_interval in ('day', 'week', 'month', 'year') then v_interval
                     when v_price ->> 'type' = 'one_time' then 'once' else s.billing_interval end);
        get diagnostics v_n = row_count;
        v_changed := v_n > 0;
    end if;

    v_discounts := case when jsonb_typeof(subscription -> 'discounts') = 'array' then subscription -> 'discounts'
                        when jsonb_typeof(subscription -> 'discount') = 'object' then jsonb_build_array(subscription -> 'discount')
                        when subscription ? 'discount' or subscription ? 'discounts' then '[]'::jsonb end;
    if v_discounts is null or exists (select 1 from jsonb_array_elements(v_discounts) x where jsonb_typeof(x) <> 'object') then
        return v_changed;
    end if;
    for v_d in select * from jsonb_array_elements(v_discounts) loop
        -- A coupon is a percentage or an amount off; anything else is not a discount we can count.
        continue when v_d ->> 'id' is null or jsonb_typeof(v_d -> 'coupon') <> 'object'
                   or (nullif((v_d #>> '{coupon,percent_off}')::numeric, 0) is null)
                      = (nullif((v_d #>> '{coupon,amount_off}')::bigint, 0) is null);
        v_ids := v_ids || (v_d ->> 'id');
        insert into entitlements.discounts as d (subscription_id, customer_id, source, percent_off, amount_off_cents,
                                                 starts_at, ends_at, stripe_id)
        values (p_subscription, p_customer, 'stripe', nullif((v_d #>> '{coupon,percent_off}')::numeric, 0),
                nullif((v_d #>> '{coupon,amount_off}')::bigint, 0),
                coalesce(entitlements._stripe_ts(v_d -> 'start'), observed), entitlements._stripe_ts(v_d -> 'end'), v_d ->> 'id')
        on conflict (stripe_id) do update
           set percent_off = excluded.percent_off, amount_off_cents = excluded.amount_off_cents,
               starts_at = excluded.starts_at, ends_at = excluded.ends_at, removed_at = null
         where (d.percent_off, d.amount_off_cents, d.starts_at, d.ends_at, d.removed_at)
               is distinct from (excluded.percent_off, excluded.amount_off_cents, excluded.starts_at, excluded.ends_at, null);
        get diagnostics v_n = row_count;
        v_changed := v_changed or v_n > 0;
    end loop;
    update entitlements.discounts d set removed_at = greatest(observed, d.starts_at)
     where d.subscription_id = p_subscription and d.source = 'stripe' and d.removed_at is null
       and d.stripe_id <> all (v_ids);
    get diagnostics v_n = row_count;
    return v_changed or v_n > 0;
end
$$;

create or replace function entitlements._check_subscription_plan()
returns trigger language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_plan entitlements.plans;
begin
    if entitlements._bulk_loading() then
        return new;
    end if;
    if tg_op = 'UPDATE' and new.plan_key = old.plan_key and new.customer_id = old.customer_id then
        return new;
    end if;
    select * into v_plan from entitlements.plans p where p.key = new.plan_key;
    if not found then
        -- Missing or hidden alike (subscribe and change_plan name unknown plans first).
        raise exception 'permission denied: plan "%" is not one this role may write', new.plan_key
            using errcode = '42501';
    end if;
    perform entitlements._require_store_customer(v_plan, new.customer_id);
    return new;
end
$$;

create or replace function entitlements._plan_stripe_prices_unique()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_price text;
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._plan_stripe_prices_unique');
    if entitlements._bulk_loading() then
        return null;
    end if;
    select x into v_price
      from entitlements.plans me
     cross join unnest(me.stripe_price_ids) x
     where me.key = new.key
       and exists (select 1 from entitlements.plans p where p.key <> me.key and x = any (p.stripe_price_ids))
     limit 1;
    if v_price is not null then
        raise exception 'Stripe price "%" already maps to another plan', v_price using errcode = '23505';
    end if;
    return null;
end
$$;

-- The store rules' triggers (issue #12; their functions are synced above).
create constraint trigger plans_stripe_prices after insert or update of stripe_price_ids on entitlements.plans
    deferrable initially immediate
    for each row when (cardinality(new.stripe_price_ids) > 0)
    execute function entitlements._plan_stripe_prices_unique();
create trigger subscriptions_plan before insert or update of plan_key, customer_id on entitlements.subscriptions
    for each row execute function entitlements._check_subscription_plan();

create or replace function entitlements.acquire(customer uuid, feature text)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_limit float8;
    v_held  bigint[];
    v_key   bigint;
begin
    perform entitlements._require_primary('acquire');
    v_limit := entitlements._concurrency_limit(customer, feature);
    if not entitlements._may_meter(customer) then
        perform entitlements._note_permission_refused('acquire ' || feature);
        raise exception 'permission denied: you may take slots only for yourself and your organizations'
            using errcode = '42501';
    end if;
    if v_limit is null then
        return true;  -- unlimited
    end if;
    -- Advisory locks are re-entrant within a backend, so remember the slots this
    -- transaction holds (a transaction-local setting, undone with it).
    v_held := string_to_array(nullif(current_setting('entitlements.held_slots', true), ''), ',')::bigint[];
    for n in 0 .. v_limit::int - 1 loop
        v_key := entitlements._slot_key(customer, feature, n);
        continue when v_key = any(coalesce(v_held, '{}'));
        if pg_try_advisory_xact_lock(v_key) then
            perform set_config('entitlements.held_slots', array_to_string(coalesce(v_held, '{}') || v_key, ','), true);
            return true;
        end if;
    end loop;
    return false;
end
$$;
comment on function entitlements.acquire(uuid, text) is
    'Take one concurrency slot until the end of the transaction; false when all are taken.';

-- BEGIN copy of sql/monitoring/signals.sql
-- Security signals: what was refused, counted per kind, subject and minute (never a row per
-- call). The hot paths count in memory and a short-lived background worker writes the counts
-- in a transaction of its own (extension/src/monitoring/signals.rs), so a refusal whose
-- transaction rolls back (consume's PT429) is still counted. The worker reports what it sees
-- itself (refused Stripe webhooks) through record_signal. The rules (monitoring/rules.sql)
-- read these rows, and also the audit log, task runs and delivery attempts.
--
--   quota_refused       PT429 of consume, allowed = false of try_consume     subject: customer, detail: feature
--   feature_refused     PT403: a feature the plan does not include           subject: customer, detail: feature
--   permission_refused  42501 of an admin function or of acting for another  subject: user id or role:<name>, detail: action
--   webhook_refused     an incoming webhook the worker refused (signature)   subject: the source (stripe), detail: why
--   sign_in_refused     a console sign-in the worker refused (bad, expired or  subject: the client address, detail: why
--                       revoked token; an access token that does not verify)
--   signals_dropped     counts a backend could not keep (more than 256 keys a second)

create table entitlements.security_signals (
    kind         text not null check (kind in ('quota_refused', 'feature_refused', 'permission_refused',
                                               'webhook_refused', 'sign_in_refused', 'signals_dropped')),
    subject      text not null check (length(subject) <= 200),
    detail       text not null default '' check (length(detail) <= 200),
    -- The minute the refusals fell in, by the engine's clock (entitlements.now()).
    window_start timestamptz not null check (date_trunc('minute', window_start) = window_start),
    count        bigint not null check (count > 0),
    first_at     timestamptz not null,
    last_at      timestamptz not null,
    primary key (kind, subject, detail, window_start),
    check (first_at <= last_at)
);
create index security_signals_recent on entitlements.security_signals (kind, last_at);
comment on table entitlements.security_signals is
    'Refusals counted per kind, subject, detail and minute, for the security rules. Global admins read them.';
select pg_catalog.pg_extension_config_dump('entitlements.security_signals', '');
alter table entitlements.security_signals enable row level security;
create policy security_signals_read on entitlements.security_signals for select using (entitlements.is_admin());

-- Adds counts (the flush worker's, record_signal's): one upsert per key.
create function entitlements._add_signals(entries jsonb)
returns bigint language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_rows bigint;
begin
    insert into entitlements.security_signals as s (kind, subject, detail, window_start, count, first_at, last_at)
    select x.kind, left(coalesce(x.subject, ''), 200), left(coalesce(x.detail, ''), 200),
           timestamptz 'epoch' + x.window_us * interval '1 microsecond', sum(x.count),
           timestamptz 'epoch' + min(x.first_us) * interval '1 microsecond',
           timestamptz 'epoch' + max(x.last_us) * interval '1 microsecond'
      from jsonb_to_recordset(entries) as x(kind text, subject text, detail text, window_us bigint,
                                            first_us bigint, last_us bigint, count bigint)
     where x.count > 0
     group by 1, 2, 3, 4
    on conflict (kind, subject, detail, window_start) do update
       set count = s.count + excluded.count,
           first_at = least(s.first_at, excluded.first_at),
           last_at = greatest(s.last_at, excluded.last_at);
    get diagnostics v_rows = row_count;
    return v_rows;
end
$$;

-- What the flush worker calls (as the bootstrap superuser, with counts it made itself).
create function entitlements._record_signals(entries jsonb)
returns void language sql volatile
set search_path = pg_catalog, pg_temp
as $$ select entitlements._add_signals(entries) $$;

-- A refusal the worker saw (an incoming webhook whose signature did not verify). Global admins
-- only (the worker's role); definer, as nobody writes signals directly.
create function entitlements.record_signal(kind text, subject text, detail text default '', count integer default 1)
returns void language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_now bigint := (extract(epoch from entitlements._statement_now()) * 1000000)::bigint;
begin
    perform entitlements._require_caller_admin('record_signal');
    if kind is null or kind not in ('webhook_refused', 'sign_in_refused') then
        raise exception 'kind must be webhook_refused or sign_in_refused, not %', coalesce(kind, 'NULL')
            using errcode = '22023';
    end if;
    if subject is null or length(subject) not between 1 and 200 or length(coalesce(detail, '')) > 200 then
        raise exception 'subject must be 1 to 200 characters and detail at most 200' using errcode = '22023';
    end if;
    if count is null or count not between 1 and 1000000 then
        raise exception 'count must be between 1 and 1000000' using errcode = '22023';
    end if;
    perform entitlements._add_signals(jsonb_build_array(jsonb_build_object(
        'kind', kind, 'subject', subject, 'detail', coalesce(detail, ''),
        'window_us', v_now - v_now % 60000000, 'first_us', v_now, 'last_us', v_now, 'count', count)));
end
$$;
comment on function entitlements.record_signal(text, text, text, integer) is
    'Count a refusal seen outside the database (the worker: webhook_refused, sign_in_refused). Admins only.';
-- END copy of sql/monitoring/signals.sql

-- BEGIN copy of sql/monitoring/rules.sql
-- Security rules: each looks at a window of signals or of the audit log and names the
-- subjects over its threshold; the security_scan task (monitoring/alerts.sql) turns what they
-- find into alerts. The rules ship with defaults (security_rule_defaults()); admins change
-- any of enabled, threshold, window, severity and config with configure_security_rule, kept
-- in entitlements.security_rules (only what differs from the defaults, so a dump restores
-- into a new install without colliding with shipped rows).
--
-- Signals are dated by the engine's clock (entitlements.now()); the audit log, task runs and
-- delivery attempts by real time, and their rules measure their window in real time.

create function entitlements.security_rule_defaults()
returns table (rule text, enabled boolean, threshold integer, window_length interval, severity text,
               config jsonb, description text)
language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select r.rule, r.enabled, r.threshold, r.window_length, r.severity, r.config, r.description
      from (values
        (1, 'refusal_burst', true, 5, interval '5 minutes', 'medium', '{}'::jsonb,
         'One principal (user or role) refused admin functions or acting for others (42501) this many times.'),
        (2, 'privilege_change', true, 1, interval '1 hour', 'high', '{}'::jsonb,
         'An admin was added or widened to every tenant; critical when by a non-admin path (a database role, no admin user) or to oneself.'),
        (3, 'mass_grants', true, 10, interval '10 minutes', 'medium', '{}'::jsonb,
         'One actor gave this many grants (quota boosts, feature grants, denies, discounts).'),
        (4, 'quota_abuse', true, 50, interval '10 minutes', 'medium', '{}'::jsonb,
         'One customer got this many over-limit answers (PT429, try_consume refused).'),
        (5, 'feature_probing', true, 20, interval '10 minutes', 'low', '{}'::jsonb,
         'One customer asked this many times for features its plan does not include (PT403).'),
        (6, 'webhook_signature', true, 5, interval '10 minutes', 'high', '{}'::jsonb,
         'Incoming webhooks refused (signature, timestamp) this many times from one source.'),
        (7, 'delivery_failures', true, 5, interval '30 minutes', 'medium', '{}'::jsonb,
         'Deliveries to one webhook endpoint (or email) failed this many times.'),
        (8, 'task_failures', true, 3, interval '30 minutes', 'medium', '{}'::jsonb,
         'One maintenance task failed this many times.'),
        (9, 'off_hours_admin', false, 1, interval '1 hour', 'low',
         '{"timezone": "UTC", "from": "07:00", "to": "20:00", "days": [1, 2, 3, 4, 5]}'::jsonb,
         'Admin changes (catalog, grants, admins, endpoints, templates) outside the configured hours and days (ISO: 1 is Monday); off until configured.'),
        (10, 'customer_many_admins', true, 3, interval '30 minutes', 'medium', '{}'::jsonb,
         'A customer''s grants or subscriptions were changed by this many different actors.'),
        (11, 'sign_in_failures', true, 10, interval '10 minutes', 'high', '{}'::jsonb,
         'Console sign-ins refused (unknown, expired or revoked admin tokens, access tokens that do not verify) this many times from one client address.')
      ) r(n, rule, enabled, threshold, window_length, severity, config, description)
     order by r.n
$$;
comment on function entitlements.security_rule_defaults() is
    'The security rules shipped with the extension and their default settings.';

create table entitlements.security_rules (
    rule          text primary key check (length(rule) <= 63),
    enabled       boolean,
    threshold     integer check (threshold between 1 and 1000000),
    window_length interval check (window_length between interval '1 minute' and interval '7 days'),
    severity      text check (severity in ('info', 'low', 'medium', 'high', 'critical')),
    config        jsonb check (jsonb_typeof(config) = 'object' and entitlements._valid_json(config, 'security_rules.config')),
    updated_at    timestamptz not null default entitlements.now()
);
comment on table entitlements.security_rules is
    'What admins changed of the security rules'' defaults (NULL: the default). Read them with security_rules().';
select pg_catalog.pg_extension_config_dump('entitlements.security_rules', '');
alter table entitlements.security_rules enable row level security;
create policy security_rules_read on entitlements.security_rules for select using (entitlements.is_admin());
create policy security_rules_admin on entitlements.security_rules for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());
select entitlements.enable_audit('entitlements.security_rules');

-- Unknown rules and bad hours are refused where they are written, so the scan never meets one.
create function entitlements._check_security_rule()
returns trigger language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_config jsonb;
begin
    if not exists (select 1 from entitlements.security_rule_defaults() d where d.rule = new.rule) then
        raise exception 'unknown security rule "%"', new.rule
            using errcode = '22023',
                  hint = 'known rules: ' || (select string_agg(d.rule, ', ') from entitlements.security_rule_defaults() d);
    end if;
    if new.rule = 'off_hours_admin' and new.config is not null then
        v_config := (select d.config from entitlements.security_rule_defaults() d where d.rule = new.rule) || new.config;
        perform entitlements._office_hours_check(v_config);
    end if;
    new.updated_at := entitlements.now();
    return new;
end
$$;
create trigger security_rules_check before insert or update on entitlements.security_rules
    for each row execute function entitlements._check_security_rule();

-- off_hours_admin's config: {"timezone", "from", "to" (HH:MM, to after from), "days" (1..7)}.
create function entitlements._office_hours_check(config jsonb)
returns void language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    if not exists (select 1 from pg_timezone_names z where z.name = config ->> 'timezone') then
        raise exception 'config.timezone must be a time zone name, not %', coalesce(config ->> 'timezone', 'NULL')
            using errcode = '22023';
    end if;
    if coalesce(config ->> 'from', '') !~ '^([01][0-9]|2[0-3]):[0-5][0-9]$'
       or coalesce(config ->> 'to', '') !~ '^([01][0-9]|2[0-4]):[0-5][0-9]$'
       or (config ->> 'to') <= (config ->> 'from') then
        raise exception 'config.from and config.to must be HH:MM with from before to' using errcode = '22023';
    end if;
    if jsonb_typeof(config -> 'days') is distinct from 'array'
       or exists (select 1 from jsonb_array_elements(config -> 'days') d
                   where jsonb_typeof(d) <> 'number' or d::text not in ('1', '2', '3', '4', '5', '6', '7')) then
        raise exception 'config.days must be an array of ISO weekdays 1 (Monday) to 7' using errcode = '22023';
    end if;
end
$$;

-- The rules in force: the defaults with what admins changed.
create function entitlements.security_rules()
returns table (rule text, enabled boolean, threshold integer, window_length interval, severity text,
               config jsonb, description text, changed boolean)
language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select d.rule, coalesce(r.enabled, d.enabled), coalesce(r.threshold, d.threshold),
           coalesce(r.window_length, d.window_length), coalesce(r.severity, d.severity),
           d.config || coalesce(r.config, '{}'), d.description, r.rule is not null
      from entitlements.security_rule_defaults() d
      left join entitlements.security_rules r on r.rule = d.rule
$$;
comment on function entitlements.security_rules() is
    'The security rules with the settings in force (defaults, and what admins changed). Admins see their changes.';

-- Change a rule's settings (NULL keeps the current one). Global admins only.
create function entitlements.configure_security_rule(rule text, enabled boolean default null, threshold integer default null,
                                                     window_length interval default null, severity text default null,
                                                     config jsonb default null)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_admin('configure_security_rule');
    if rule is null then
        raise exception 'rule must not be NULL' using errcode = '22004';
    end if;
    insert into entitlements.security_rules as r (rule, enabled, threshold, window_length, severity, config)
    values (rule, enabled, threshold, window_length, severity, config)
    on conflict on constraint security_rules_pkey do update
       set enabled = coalesce(excluded.enabled, r.enabled),
           threshold = coalesce(excluded.threshold, r.threshold),
           window_length = coalesce(excluded.window_length, r.window_length),
           severity = coalesce(excluded.severity, r.severity),
           config = coalesce(r.config, '{}') || coalesce(excluded.config, '{}');
end
$$;
comment on function entitlements.configure_security_rule(text, boolean, integer, interval, text, jsonb) is
    'Change a security rule''s settings (NULL keeps what is set). Global admins only.';

-- What a rule found: one row per subject over the threshold.
create type entitlements.security_finding as (
    subject     text,
    customer_id uuid,
    events      bigint,
    first_at    timestamptz,
    last_at     timestamptz,
    severity    text,
    details     jsonb
);

-- A subject that is a customer id: the customer (and through it the tenant).
create function entitlements._subject_customer(subject text)
returns uuid language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select case when subject ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then subject::uuid end
$$;

-- Signals of one kind per subject over the threshold in the window (by the engine clock).
-- The details listed are the 20 most counted (a caller chooses some of them).
create function entitlements._signal_findings(p_kind text, p_threshold integer, p_window interval, p_severity text)
returns setof entitlements.security_finding language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select s.subject, entitlements._subject_customer(s.subject), s.total, s.first_at, s.last_at, p_severity,
           jsonb_build_object('by_detail', (
               select jsonb_object_agg(d.detail, d.count)
                 from (select x.detail, sum(x.count) as count from entitlements.security_signals x
                        where x.kind = p_kind and x.subject = s.subject and x.last_at > entitlements.now() - p_window
                        group by x.detail order by 2 desc, 1 limit 20) d))
      from (select x.subject, sum(x.count)::bigint as total, min(x.first_at) as first_at, max(x.last_at) as last_at
              from entitlements.security_signals x
             where x.kind = p_kind and x.last_at > entitlements.now() - p_window
             group by x.subject
            having sum(x.count) >= p_threshold) s
$$;

-- Who made an audited change: the user id, else the role.
create function entitlements._audit_actor(a entitlements.audit_log)
returns text language sql immutable parallel safe
as $$ select coalesce(a.actor::text, 'role:' || a.actor_role) $$;

-- Database roles that administer the engine (superusers and members of entitlements_admin)
-- as the last scan saw them, so one granted since is found. Filled at install, not dumped: a
-- restored database starts from the roles of its own cluster.
create table entitlements.security_admin_roles (
    role_name text primary key,
    superuser boolean not null,
    seen_at   timestamptz not null default entitlements.now()
);
comment on table entitlements.security_admin_roles is
    'Database roles with admin powers over the engine as the security scan last saw them (privilege_change).';
alter table entitlements.security_admin_roles enable row level security;
create policy security_admin_roles_read on entitlements.security_admin_roles for select using (entitlements.is_admin());

create function entitlements._admin_roles()
returns table (role_name text, superuser boolean) language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select r.rolname::text, r.rolsuper from pg_roles r
     where r.rolsuper or pg_has_role(r.oid, 'entitlements_admin', 'MEMBER')
$$;
insert into entitlements.security_admin_roles (role_name, superuser) select * from entitlements._admin_roles();

-- privilege_change: every new admin row, and a tenant admin made global. Critical when the
-- actor is the new admin, or no admin user made it (a database role by direct SQL), or
-- the actor user was not an admin at all. And, always critical, a database role that became
-- a superuser or got entitlements_admin since the last scan (nothing audits a GRANT).
create function entitlements._rule_privilege_change(p_threshold integer, p_window interval, p_severity text)
returns setof entitlements.security_finding language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select 'role:' || r.role_name, null::uuid, 1::bigint, entitlements.now(), entitlements.now(), 'critical',
           jsonb_build_object('role', r.role_name, 'superuser', r.superuser,
                              'change', case when r.superuser then 'superuser' else 'granted entitlements_admin' end)
      from entitlements._admin_roles() r
     where not exists (select 1 from entitlements.security_admin_roles k
                        where k.role_name = r.role_name and k.superuser >= r.superuser)
    union all
    select a.new_values ->> 'user_id', null::uuid, count(*), min(a.at), max(a.at),
           case when bool_or(a.actor is null or a.actor::text = a.new_values ->> 'user_id'
                             or not exists (select 1 from entitlements.admins x
                                             where x.user_id = a.actor and x.user_id::text <> a.new_values ->> 'user_id'))
                then 'critical' else p_severity end,
           jsonb_build_object('changes', jsonb_agg(jsonb_build_object(
               'at', a.at, 'action', a.action, 'by', entitlements._audit_actor(a),
               'tenant_id', a.new_values -> 'tenant_id') order by a.id))
      from entitlements.audit_log a
     where a.table_name = 'entitlements.admins' and a.at > statement_timestamp() - p_window
       and (a.action = 'insert'
            or (a.action = 'update' and a.new_values -> 'tenant_id' = 'null'::jsonb
                and a.old_values -> 'tenant_id' <> 'null'::jsonb))
     group by a.new_values ->> 'user_id'
    having count(*) >= p_threshold
$$;

create function entitlements._rule_mass_grants(p_threshold integer, p_window interval, p_severity text)
returns setof entitlements.security_finding language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select entitlements._audit_actor(a), a.actor, count(*), min(a.at), max(a.at), p_severity,
           jsonb_build_object('customers', count(distinct a.new_values ->> 'customer_id'),
                              'kinds', jsonb_agg(distinct a.new_values ->> 'kind'))
      from entitlements.audit_log a
     where a.table_name in ('entitlements.grants', 'entitlements.discounts') and a.action = 'insert'
       and a.at > statement_timestamp() - p_window
     group by entitlements._audit_actor(a), a.actor
    having count(*) >= p_threshold
$$;

create function entitlements._rule_delivery_failures(p_threshold integer, p_window interval, p_severity text)
returns setof entitlements.security_finding language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce('endpoint:' || d.endpoint_id::text, 'email'), null::uuid, count(*), min(t.at), max(t.at), p_severity,
           jsonb_build_object('last_error', (array_agg(t.error order by t.at desc))[1],
                              'deliveries', count(distinct d.id))
      from entitlements.delivery_attempts t
      join entitlements.deliveries d on d.id = t.delivery_id
     where not t.ok and t.at > statement_timestamp() - p_window
     group by coalesce('endpoint:' || d.endpoint_id::text, 'email')
    having count(*) >= p_threshold
$$;

create function entitlements._rule_task_failures(p_threshold integer, p_window interval, p_severity text)
returns setof entitlements.security_finding language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select 'task:' || r.task, null::uuid, count(*), min(r.started_at), max(r.finished_at), p_severity,
           jsonb_build_object('last_error', (array_agg(r.error order by r.started_at desc))[1])
      from entitlements.task_runs r
     where r.outcome = 'error' and r.started_at > statement_timestamp() - p_window
     group by r.task
    having count(*) >= p_threshold
$$;

create function entitlements._rule_off_hours_admin(p_threshold integer, p_window interval, p_severity text, p_config jsonb)
returns setof entitlements.security_finding language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select entitlements._audit_actor(a), a.actor, count(*), min(a.at), max(a.at), p_severity,
           jsonb_build_object('tables', jsonb_agg(distinct a.table_name), 'timezone', p_config ->> 'timezone')
      from entitlements.audit_log a
      cross join lateral (select a.at at time zone (p_config ->> 'timezone') as local) l
     where a.table_name in ('entitlements.features', 'entitlements.plans', 'entitlements.plan_entitlements',
                            'entitlements.grants', 'entitlements.admins', 'entitlements.webhook_endpoints',
                            'entitlements.email_templates', 'entitlements.security_rules', 'entitlements.coupons',
                            'entitlements.discounts')
       and a.at > statement_timestamp() - p_window
       and (not (p_config -> 'days') @> to_jsonb(extract(isodow from l.local)::integer)
            or l.local::time < (p_config ->> 'from')::time
            or l.local::time >= case when p_config ->> 'to' = '24:00' then time '24:00' else (p_config ->> 'to')::time end)
     group by entitlements._audit_actor(a), a.actor
    having count(*) >= p_threshold
$$;

create function entitlements._rule_customer_many_admins(p_threshold integer, p_window interval, p_severity text)
returns setof entitlements.security_finding language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select c.customer::text, c.customer, count(*), min(c.at), max(c.at), p_severity,
           jsonb_build_object('actors', jsonb_agg(distinct c.actor))
      from (select coalesce(a.new_values ->> 'customer_id', a.old_values ->> 'customer_id')::uuid as customer,
                   a.at, entitlements._audit_actor(a) as actor
              from entitlements.audit_log a
             where a.table_name in ('entitlements.grants', 'entitlements.subscriptions', 'entitlements.discounts')
               and a.at > statement_timestamp() - p_window) c
     where c.customer is not null
     group by c.customer
    having count(distinct c.actor) >= p_threshold
$$;

-- Every finding of one rule with its settings.
create function entitlements._rule_findings(p_rule text, p_threshold integer, p_window interval, p_severity text,
                                            p_config jsonb)
returns setof entitlements.security_finding language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    case p_rule
        when 'refusal_burst' then
            return query select * from entitlements._signal_findings('permission_refused', p_threshold, p_window, p_severity);
        when 'quota_abuse' then
            return query select * from entitlements._signal_findings('quota_refused', p_threshold, p_window, p_severity);
        when 'feature_probing' then
            return query select * from entitlements._signal_findings('feature_refused', p_threshold, p_window, p_severity);
        when 'webhook_signature' then
            return query select * from entitlements._signal_findings('webhook_refused', p_threshold, p_window, p_severity);
        when 'sign_in_failures' then
            return query select * from entitlements._signal_findings('sign_in_refused', p_threshold, p_window, p_severity);
        when 'privilege_change' then
            return query select * from entitlements._rule_privilege_change(p_threshold, p_window, p_severity);
        when 'mass_grants' then
            return query select * from entitlements._rule_mass_grants(p_threshold, p_window, p_severity);
        when 'delivery_failures' then
            return query select * from entitlements._rule_delivery_failures(p_threshold, p_window, p_severity);
        when 'task_failures' then
            return query select * from entitlements._rule_task_failures(p_threshold, p_window, p_severity);
        when 'off_hours_admin' then
            return query select * from entitlements._rule_off_hours_admin(p_threshold, p_window, p_severity, p_config);
        when 'customer_many_admins' then
            return query select * from entitlements._rule_customer_many_admins(p_threshold, p_window, p_severity);
        else
            raise exception 'security rule "%" has no evaluation', p_rule using errcode = '55000';
    end case;
end
$$;
-- END copy of sql/monitoring/rules.sql

-- BEGIN copy of sql/monitoring/alerts.sql
-- Alerts and incidents. The security_scan task runs every enabled rule (monitoring/rules.sql)
-- and keeps one open alert per rule and subject (its dedup key): a finding with evidence newer
-- than the alert's adds one to its count and moves last_seen, instead of a new row. High and
-- critical alerts go out through the outbox (security.alert: app webhooks, email to admins).
-- Incidents group alerts and move open -> acknowledged -> resolved (and back to open), the
-- database refusing any other move; every change is audited. An alert or incident about a
-- customer of a tenant (store) belongs to that tenant, and its admins see it; the rest are for
-- global admins. Nobody writes these tables directly (no grants): the scan and the incident
-- functions are SECURITY DEFINER, check the real caller, and set who did what themselves, so
-- an alert cannot be pre-empted, edited or closed and a note cannot be signed in another name.

create function entitlements._severity_rank(severity text)
returns integer language sql immutable parallel safe strict
return array_position(array['info', 'low', 'medium', 'high', 'critical'], severity);

create table entitlements.security_incidents (
    id              bigint generated always as identity primary key,
    tenant_id       uuid,
    title           text not null check (length(title) between 1 and 200),
    severity        text not null check (severity in ('info', 'low', 'medium', 'high', 'critical')),
    status          text not null default 'open' check (status in ('open', 'acknowledged', 'resolved')),
    assignee        uuid,
    opened_at       timestamptz not null default entitlements.now(),
    opened_by       text not null check (length(opened_by) <= 100),
    acknowledged_at timestamptz,
    acknowledged_by text check (length(acknowledged_by) <= 100),
    resolved_at     timestamptz,
    resolved_by     text check (length(resolved_by) <= 100),
    resolution      text check (length(resolution) between 1 and 10000),
    reopened        integer not null default 0 check (reopened >= 0),
    check ((status = 'resolved') = (resolved_at is not null and resolved_by is not null and resolution is not null)),
    check ((status = 'acknowledged') <= (acknowledged_at is not null and acknowledged_by is not null))
);
create index security_incidents_open on entitlements.security_incidents (tenant_id, status) where status <> 'resolved';
comment on table entitlements.security_incidents is
    'Incidents: alerts grouped, open -> acknowledged -> resolved (reopen goes back to open). Change them with the incident functions.';
select pg_catalog.pg_extension_config_dump('entitlements.security_incidents', '');
select pg_catalog.pg_extension_config_dump('entitlements.security_incidents_id_seq', '');
alter table entitlements.security_incidents enable row level security;
create policy security_incidents_admin on entitlements.security_incidents for all
    using (entitlements.is_admin(tenant_id)) with check (entitlements.is_admin(tenant_id));
select entitlements.enable_audit('entitlements.security_incidents');

create table entitlements.security_alerts (
    id             bigint generated always as identity primary key,
    rule           text not null check (length(rule) <= 63),
    subject        text not null check (length(subject) <= 200),
    -- One open alert per key: rule and subject.
    dedup_key      text not null check (dedup_key = rule || ':' || subject),
    tenant_id      uuid,
    customer_id    uuid,
    severity       text not null check (severity in ('info', 'low', 'medium', 'high', 'critical')),
    status         text not null default 'open' check (status in ('open', 'closed')),
    incident_id    bigint references entitlements.security_incidents (id),
    -- How many times the rule found it (each time with newer evidence), and the evidence of
    -- the last finding: how many events, until when.
    count          integer not null default 1 check (count >= 1),
    events         bigint not null check (events >= 0),
    first_seen     timestamptz not null default entitlements.now(),
    last_seen      timestamptz not null default entitlements.now(),
    evidence_until timestamptz not null,
    details        jsonb not null default '{}' check (jsonb_typeof(details) = 'object'),
    closed_at      timestamptz,
    check ((status = 'closed') = (closed_at is not null))
);
create unique index security_alerts_one_open on entitlements.security_alerts (dedup_key) where status = 'open';
create index security_alerts_incident on entitlements.security_alerts (incident_id) where incident_id is not null;
create index security_alerts_open on entitlements.security_alerts (tenant_id, severity) where status = 'open';
comment on table entitlements.security_alerts is
    'What the security rules found: one open alert per rule and subject, count and last_seen grow on repeats.';
select pg_catalog.pg_extension_config_dump('entitlements.security_alerts', '');
select pg_catalog.pg_extension_config_dump('entitlements.security_alerts_id_seq', '');
alter table entitlements.security_alerts enable row level security;
create policy security_alerts_read on entitlements.security_alerts for select using (entitlements.is_admin(tenant_id));
-- Tenant admins file their tenant's alerts into incidents and close them (alerts.sql functions);
-- only global admins (the scan) write the rest.
create policy security_alerts_admin on entitlements.security_alerts for all
    using (entitlements.is_admin(tenant_id)) with check (entitlements.is_admin(tenant_id));

create table entitlements.incident_notes (
    id          bigint generated always as identity primary key,
    incident_id bigint not null references entitlements.security_incidents (id),
    at          timestamptz not null default entitlements.now(),
    author      text not null check (length(author) <= 100),
    body        text not null check (length(body) between 1 and 10000)
);
create index incident_notes_incident on entitlements.incident_notes (incident_id, at);
comment on table entitlements.incident_notes is 'Notes on incidents (who, when, what); never edited.';
select pg_catalog.pg_extension_config_dump('entitlements.incident_notes', '');
select pg_catalog.pg_extension_config_dump('entitlements.incident_notes_id_seq', '');
alter table entitlements.incident_notes enable row level security;
create policy incident_notes_read on entitlements.incident_notes for select
    using (exists (select 1 from entitlements.security_incidents i where i.id = incident_id));
create policy incident_notes_add on entitlements.incident_notes for insert
    with check (exists (select 1 from entitlements.security_incidents i where i.id = incident_id));
select entitlements.enable_audit('entitlements.incident_notes');

-- The state machine, for every path (the functions below, and direct writes by admins).
create function entitlements._incident_transition()
returns trigger language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_op = 'INSERT' then
        if new.status <> 'open' or new.reopened <> 0 then
            raise exception 'a new incident is open' using errcode = '55000';
        end if;
        return new;
    end if;
    if new.tenant_id is distinct from old.tenant_id or new.opened_at <> old.opened_at or new.opened_by <> old.opened_by then
        raise exception 'an incident''s tenant and opening are fixed' using errcode = '55000';
    end if;
    if new.status = old.status then
        if old.status = 'resolved' and (new.assignee, new.severity, new.title, new.resolution, new.resolved_at)
                                       is distinct from (old.assignee, old.severity, old.title, old.resolution, old.resolved_at) then
            raise exception 'incident % is resolved: reopen it first', old.id using errcode = '55000';
        end if;
        return new;
    end if;
    if (old.status, new.status) not in (('open', 'acknowledged'), ('open', 'resolved'), ('acknowledged', 'resolved'),
                                        ('resolved', 'open')) then
        raise exception 'incident % cannot go from % to %', old.id, old.status, new.status
            using errcode = '55000', hint = 'open -> acknowledged -> resolved; resolved -> open (reopen).';
    end if;
    if new.status = 'open' and old.status = 'resolved' and new.reopened <> old.reopened + 1 then
        raise exception 'reopening counts in reopened' using errcode = '55000';
    end if;
    return new;
end
$$;
create trigger security_incidents_transition before insert or update on entitlements.security_incidents
    for each row execute function entitlements._incident_transition();

-- An alert filed into an incident belongs to its tenant; a closed alert stays closed.
create function entitlements._alert_check()
returns trigger language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if new.incident_id is not null and (tg_op = 'INSERT' or new.incident_id is distinct from old.incident_id)
       and not exists (select 1 from entitlements.security_incidents i
                        where i.id = new.incident_id and i.tenant_id is not distinct from new.tenant_id) then
        raise exception 'alert % and incident % belong to different tenants', new.id, new.incident_id
            using errcode = '22023';
    end if;
    if tg_op = 'UPDATE' and old.status = 'closed' and new.status = 'open' then
        raise exception 'alert % is closed; the rule opens a new one when it finds it again', old.id
            using errcode = '55000';
    end if;
    return new;
end
$$;
create trigger security_alerts_check before insert or update on entitlements.security_alerts
    for each row execute function entitlements._alert_check();

-- Is the real caller (outside these definer functions) an admin of `tenant` (NULL: global)?
create function entitlements._caller_administers(tenant uuid)
returns boolean language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select entitlements._role_is_privileged(entitlements._outer_role()) or entitlements._is_listed_admin(tenant)
$$;

-- The scan ---------------------------------------------------------------------------------

-- High and critical alerts, once per alert and severity, through the outbox: app webhooks
-- that want security.alert, and email to the admins (outbox/delivery.sql). No customer id on
-- the event: the customer it is about must not read it.
create function entitlements._alert_event(a entitlements.security_alerts)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    if entitlements._severity_rank(a.severity) >= entitlements._severity_rank('high') then
        perform entitlements._outbox_record('security.alert', null, format('security.alert:%s:%s', a.id, a.severity),
            jsonb_build_object('alert_id', a.id, 'rule', a.rule, 'subject', a.subject, 'severity', a.severity,
                               'tenant_id', a.tenant_id, 'customer_id', a.customer_id, 'count', a.count,
                               'events', a.events, 'first_seen', a.first_seen, 'last_seen', a.last_seen,
                               'details', a.details));
    end if;
end
$$;

-- Runs every enabled rule; each finding opens an alert or repeats the open one. Definer: it
-- reads the whole audit log and signals and writes alerts; global admins only.
create function entitlements._task_security_scan()
returns jsonb language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    r record;
    f entitlements.security_finding;
    a entitlements.security_alerts;
    v_opened bigint := 0::bigint;
    v_repeated bigint := 0::bigint;
    v_pruned bigint;
    v_severity text;
begin
    perform entitlements._require_caller_admin('security_scan');
    for r in select * from entitlements.security_rules() x where x.enabled order by x.rule loop
        for f in select * from entitlements._rule_findings(r.rule, r.threshold, r.window_length, r.severity, r.config) loop
            v_severity := coalesce(f.severity, r.severity);
            select * into a from entitlements.security_alerts x
             where x.dedup_key = r.rule || ':' || f.subject and x.status = 'open'
             for update;
            if a.id is null then
                insert into entitlements.security_alerts (rule, subject, dedup_key, tenant_id, customer_id, severity,
                                                          events, evidence_until, details)
                -- A store's alert only when it is about one of the store's customers; one about
                -- an actor (an admin's grants, refusals, hours) is global: a tenant admin must
                -- not close what an admin of another scope did.
                values (r.rule, f.subject, r.rule || ':' || f.subject,
                        case when r.rule in ('quota_abuse', 'feature_probing', 'customer_many_admins')
                             then (select c.tenant_id from entitlements.customers c where c.id = f.customer_id) end,
                        f.customer_id, v_severity, f.events, f.last_at, coalesce(f.details, '{}'))
                returning * into a;
                v_opened := v_opened + 1;
                perform entitlements._alert_event(a);
            elsif f.last_at > a.evidence_until then
                update entitlements.security_alerts x
                   set count = x.count + 1, last_seen = entitlements.now(), events = f.events,
                       evidence_until = f.last_at, details = coalesce(f.details, '{}'),
                       severity = case when entitlements._severity_rank(v_severity) > entitlements._severity_rank(x.severity)
                                       then v_severity else x.severity end
                 where x.id = a.id
                returning * into a;
                v_repeated := v_repeated + 1;
                perform entitlements._alert_event(a);
            end if;
        end loop;
    end loop;
    -- The admin roles seen now are the ones the next scan compares with.
    if exists (select 1 from entitlements.security_rules() x where x.rule = 'privilege_change' and x.enabled) then
        delete from entitlements.security_admin_roles k
         where not exists (select 1 from entitlements._admin_roles() x where x.role_name = k.role_name);
        insert into entitlements.security_admin_roles as k (role_name, superuser)
        select x.role_name, x.superuser from entitlements._admin_roles() x
        on conflict (role_name) do update set superuser = excluded.superuser, seen_at = entitlements.now()
         where k.superuser is distinct from excluded.superuser;
    end if;
    -- Signals older than a week serve no rule (a window is at most 7 days).
    delete from entitlements.security_signals s where s.last_at < entitlements.now() - interval '7 days';
    get diagnostics v_pruned = row_count;
    return jsonb_build_object('rows_touched', v_opened + v_repeated + v_pruned, 'alerts_opened', v_opened,
                              'alerts_repeated', v_repeated, 'signals_pruned', v_pruned);
end
$$;

-- Incidents ------------------------------------------------------------------------------------

-- The incident, locked, if the real caller administers its tenant; 22023 when there is none
-- or it is another tenant's (the same answer: nothing is revealed).
create function entitlements._incident_for_update(p_incident bigint)
returns entitlements.security_incidents language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v entitlements.security_incidents;
begin
    if p_incident is null then
        raise exception 'incident must not be NULL' using errcode = '22004';
    end if;
    select * into v from entitlements.security_incidents i where i.id = p_incident for update;
    if v.id is null or not entitlements._caller_administers(v.tenant_id) then
        raise exception 'no incident %', p_incident using errcode = '22023';
    end if;
    return v;
end
$$;

-- Open an incident for alerts (all of one tenant, none in another incident). Its tenant is
-- theirs; with no alerts, `tenant` (NULL: global admins').
create function entitlements.open_incident(title text, alerts bigint[] default '{}', severity text default null,
                                           assignee uuid default null, tenant uuid default null)
returns bigint language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_tenants uuid[];
    v_tenant uuid := tenant;
    v_id bigint;
    v_severity text := severity;
begin
    if array_position(alerts, null) is not null then
        raise exception 'alerts must not contain NULL' using errcode = '22004';
    end if;
    if coalesce(cardinality(alerts), 0) > 0 then
        select array_agg(distinct a.tenant_id),
               (array_agg(a.severity order by entitlements._severity_rank(a.severity) desc))[1]
          into v_tenants, v_severity
          from entitlements.security_alerts a where a.id = any (alerts) and entitlements._caller_administers(a.tenant_id);
        v_severity := coalesce(severity, v_severity);
        if (select count(*) from entitlements.security_alerts a
             where a.id = any (alerts) and entitlements._caller_administers(a.tenant_id))
           <> (select count(distinct x) from unnest(alerts) x) then
            raise exception 'no alert with some of the ids %', alerts using errcode = '22023';
        end if;
        if cardinality(v_tenants) > 1 then
            raise exception 'the alerts belong to different tenants' using errcode = '22023';
        end if;
        v_tenant := v_tenants[1];
        if tenant is not null and tenant is distinct from v_tenant then
            raise exception 'the alerts belong to another tenant than %', tenant using errcode = '22023';
        end if;
    end if;
    perform entitlements._require(entitlements._caller_administers(v_tenant), 'open_incident');
    insert into entitlements.security_incidents (tenant_id, title, severity, assignee, opened_by)
    values (v_tenant, title, coalesce(v_severity, 'medium'), assignee, entitlements._principal())
    returning id into v_id;
    if coalesce(cardinality(alerts), 0) > 0 then
        perform entitlements.attach_alerts(v_id, alerts);
    end if;
    return v_id;
end
$$;
comment on function entitlements.open_incident(text, bigint[], text, uuid, uuid) is
    'Open an incident for alerts (of one tenant); its severity is the highest of theirs unless given. Admins of that tenant.';

-- File alerts into an incident (open, of its tenant, in no other incident).
create function entitlements.attach_alerts(incident bigint, alerts bigint[])
returns integer language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v entitlements.security_incidents := entitlements._incident_for_update(incident);
    v_n integer;
begin
    perform entitlements._require(entitlements._caller_administers(v.tenant_id), 'attach_alerts');
    if alerts is null or cardinality(alerts) = 0 or array_position(alerts, null) is not null then
        raise exception 'alerts must be a non-empty array of ids' using errcode = '22023';
    end if;
    if v.status = 'resolved' then
        raise exception 'incident % is resolved: reopen it first', v.id using errcode = '55000';
    end if;
    if exists (select 1 from entitlements.security_alerts a
                where a.id = any (alerts) and a.tenant_id is not distinct from v.tenant_id
                  and a.incident_id is not null and a.incident_id <> v.id) then
        raise exception 'an alert of % is in another incident', alerts using errcode = '22023';
    end if;
    update entitlements.security_alerts a set incident_id = v.id
     where a.id = any (alerts) and a.tenant_id is not distinct from v.tenant_id;
    get diagnostics v_n = row_count;
    if v_n <> (select count(distinct x) from unnest(alerts) x) then
        raise exception 'no alert with some of the ids %', alerts using errcode = '22023';
    end if;
    return v_n;
end
$$;
comment on function entitlements.attach_alerts(bigint, bigint[]) is 'File alerts into an incident of their tenant.';

create function entitlements._incident_note(p_incident bigint, p_body text)
returns void language sql volatile
set search_path = pg_catalog, pg_temp
as $$
    insert into entitlements.incident_notes (incident_id, author, body)
    select p_incident, entitlements._principal(), p_body where nullif(btrim(p_body), '') is not null
$$;

create function entitlements.add_incident_note(incident bigint, body text)
returns void language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v entitlements.security_incidents := entitlements._incident_for_update(incident);
begin
    perform entitlements._require(entitlements._caller_administers(v.tenant_id), 'add_incident_note');
    if nullif(btrim(body), '') is null then
        raise exception 'body must not be empty' using errcode = '22023';
    end if;
    perform entitlements._incident_note(v.id, body);
end
$$;
comment on function entitlements.add_incident_note(bigint, text) is 'Add a note to an incident.';

create function entitlements.acknowledge_incident(incident bigint, note text default null)
returns entitlements.security_incidents language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v entitlements.security_incidents := entitlements._incident_for_update(incident);
begin
    perform entitlements._require(entitlements._caller_administers(v.tenant_id), 'acknowledge_incident');
    if v.status <> 'open' then
        raise exception 'incident % is %, not open', v.id, v.status using errcode = '55000';
    end if;
    update entitlements.security_incidents i
       set status = 'acknowledged', acknowledged_at = entitlements.now(), acknowledged_by = entitlements._principal()
     where i.id = v.id
    returning * into v;
    perform entitlements._incident_note(v.id, note);
    return v;
end
$$;
comment on function entitlements.acknowledge_incident(bigint, text) is 'open -> acknowledged.';

-- The assignee is an admin who can see the incident (a global one, or of its tenant).
create function entitlements.assign_incident(incident bigint, assignee uuid, note text default null)
returns entitlements.security_incidents language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v entitlements.security_incidents := entitlements._incident_for_update(incident);
begin
    perform entitlements._require(entitlements._caller_administers(v.tenant_id), 'assign_incident');
    if assignee is not null and not entitlements._user_administers(assignee, v.tenant_id) then
        raise exception 'user % is not an admin of this incident''s tenant', assignee using errcode = '22023';
    end if;
    update entitlements.security_incidents i set assignee = assign_incident.assignee where i.id = v.id
    returning * into v;
    perform entitlements._incident_note(v.id, note);
    return v;
end
$$;
comment on function entitlements.assign_incident(bigint, uuid, text) is
    'Assign an incident (NULL: nobody) to an admin of its tenant or a global admin.';

-- Is `user_id` listed as an admin of `tenant` (or globally)? Answers only to that tenant's
-- admins, who may assign its incidents.
create function entitlements._user_administers(user_id uuid, tenant uuid)
returns boolean language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if not entitlements._caller_administers(tenant) then
        return false;
    end if;
    return exists (select 1 from entitlements.admins a
                    where a.user_id = _user_administers.user_id and (a.tenant_id is null or a.tenant_id = tenant));
end
$$;

-- Resolving closes the incident's open alerts: the rule opens a new one if it finds it again.
create function entitlements.resolve_incident(incident bigint, resolution text)
returns entitlements.security_incidents language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v entitlements.security_incidents := entitlements._incident_for_update(incident);
begin
    perform entitlements._require(entitlements._caller_administers(v.tenant_id), 'resolve_incident');
    if nullif(btrim(resolution), '') is null then
        raise exception 'resolution must say what was found and done' using errcode = '22023';
    end if;
    update entitlements.security_incidents i
       set status = 'resolved', resolved_at = entitlements.now(), resolved_by = entitlements._principal(),
           resolution = resolve_incident.resolution
     where i.id = v.id
    returning * into v;
    update entitlements.security_alerts a set status = 'closed', closed_at = entitlements.now()
     where a.incident_id = v.id and a.status = 'open';
    return v;
end
$$;
comment on function entitlements.resolve_incident(bigint, text) is
    '-> resolved, with who and when; its open alerts close.';

create function entitlements.reopen_incident(incident bigint, reason text)
returns entitlements.security_incidents language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v entitlements.security_incidents := entitlements._incident_for_update(incident);
begin
    perform entitlements._require(entitlements._caller_administers(v.tenant_id), 'reopen_incident');
    if nullif(btrim(reason), '') is null then
        raise exception 'reason must not be empty' using errcode = '22023';
    end if;
    if v.status <> 'resolved' then
        raise exception 'incident % is %, not resolved', v.id, v.status using errcode = '55000';
    end if;
    update entitlements.security_incidents i
       set status = 'open', reopened = i.reopened + 1, resolved_at = null, resolved_by = null, resolution = null,
           acknowledged_at = null, acknowledged_by = null
     where i.id = v.id
    returning * into v;
    perform entitlements._incident_note(v.id, 'reopened: ' || reason);
    return v;
end
$$;
comment on function entitlements.reopen_incident(bigint, text) is 'resolved -> open, with why.';

-- Open alerts by severity, for /metrics and the console.
create function entitlements.open_alert_counts()
returns table (severity text, open bigint) language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select s.severity, count(a.id)
      from unnest(array['info', 'low', 'medium', 'high', 'critical']) with ordinality s(severity, n)
      left join entitlements.security_alerts a on a.severity = s.severity and a.status = 'open'
     group by s.severity, s.n
     order by s.n
$$;
comment on function entitlements.open_alert_counts() is 'Open alerts per severity (the ones the caller may see).';
-- END copy of sql/monitoring/alerts.sql

create or replace function entitlements.stripe_record_event(event jsonb)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_new boolean;
    v_object jsonb;
    v_stripe_customer text;
    v_customer uuid;
begin
    perform entitlements._stripe_require_admin('stripe_record_event');
    if jsonb_typeof(event) is distinct from 'object' or event ->> 'id' !~ '^evt_[A-Za-z0-9_]+$'
       or coalesce(event ->> 'object', 'event') <> 'event' or jsonb_typeof(event -> 'type') is distinct from 'string'
       or jsonb_typeof(event -> 'created') is distinct from 'number'
       or jsonb_typeof(event #> '{data,object}') is distinct from 'object' then
        raise exception 'not a Stripe event: it needs an id (evt_...), a type, created and data.object'
            using errcode = '22023';
    end if;
    v_object := event #> '{data,object}';
    v_stripe_customer := case when v_object ->> 'object' = 'customer' then v_object ->> 'id'
                              else entitlements._stripe_id(v_object -> 'customer') end;
    v_customer := entitlements._stripe_uuid(coalesce(v_object #>> '{metadata,entitlements_customer_id}',
                                                     v_object ->> 'client_reference_id'));
    if exists (select 1 from entitlements.customers c
                where c.erased_at is not null and (c.stripe_customer_id = v_stripe_customer or c.id = v_customer)) then
        event := entitlements._erase_json(event, '{}'::text[], entitlements._erase_stripe_keys());
    end if;
    insert into entitlements.stripe_events (id, type, created, api_version, payload)
    values (event ->> 'id', event ->> 'type', entitlements._stripe_ts(event -> 'created'), event ->> 'api_version', event)
    on conflict (id) do nothing
    returning true into v_new;
    return coalesce(v_new, false);
end
$$;
comment on function entitlements.stripe_record_event(jsonb) is
    'Store a (signature-verified) Stripe event once by id; true when it was new. Admins only.';

-- BEGIN copy of sql/privacy/export.sql
-- GDPR access (issue #13): everything the engine holds about one person, as one document.
-- Erasure (privacy/erasure.sql, which comes after this file) uses the same idea of "about":
-- rows found by the person's exact identifiers (their uuid, their Stripe customer id), never
-- by an email or a name, which anyone can set for themselves (set_profile) without proof.

-- Does the engine hold anything about `customer`? A customers row (or the audit rows of
-- one that was deleted), or what a user of the default plan has without one (usage, events,
-- a membership, a Supabase address, a place in entitlements.admins, earlier subscriptions).
create function entitlements._privacy_known(customer uuid)
returns boolean language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select exists (select 1 from entitlements.customers c where c.id = customer)
        or exists (select 1 from entitlements.members m where m.user_id = customer)
        or exists (select 1 from entitlements.usage_counters u where u.customer_id = customer)
        or exists (select 1 from entitlements.usage_ledger l where l.customer_id = customer)
        or exists (select 1 from entitlements.usage_rollup r where r.customer_id = customer)
        or exists (select 1 from entitlements.usage_idempotency i where i.customer_id = customer)
        or exists (select 1 from entitlements.outbox o where o.customer_id = customer)
        or exists (select 1 from entitlements.auth_emails a where a.user_id = customer)
        or exists (select 1 from entitlements.admins a where a.user_id = customer)
        or exists (select 1 from entitlements.subscription_history h where h.customer_id = customer)
        or exists (select 1 from entitlements.discounts d where d.customer_id = customer)
        or exists (select 1 from entitlements.audit_log a
                    where a.table_name = 'entitlements.customers' and a.row_key = customer::text)
$$;

-- The customer's addresses, lower case and trimmed: the current one, the Supabase one, and
-- every one their own customers audit rows hold. Only ever compared with whole values (or
-- searched in the customer's own rows); they select no row. (Named _privacy_json_emails
-- since it first returned them as JSON text; security/privileges.sql names it.)
create function entitlements._privacy_json_emails(customer uuid)
returns text[] language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce(array_agg(distinct lower(btrim(x.e))), '{}')
      from (select c.email from entitlements.customers c where c.id = customer
            union all
            select a.email from entitlements.auth_emails a where a.user_id = customer
            union all
            select v.x ->> 'email' from entitlements.audit_log a
             cross join lateral (values (a.old_values), (a.new_values)) v(x)
             where a.table_name = 'entitlements.customers' and a.row_key = customer::text) x(e)
     where btrim(x.e) <> '' and x.e <> '[erased]'
$$;

-- Is the Stripe event `payload` about the customer? Only by exact identifiers: their Stripe
-- customer id as the object's customer (or as the id of a customer object), or their uuid as
-- the object's metadata.entitlements_customer_id or client_reference_id (read as
-- stripe_record_event and the apply path read them). An address or a name in the payload
-- says nothing: anyone can give themselves someone else's.
create function entitlements._privacy_stripe_about(payload jsonb, stripe_customer text, customer uuid)
returns boolean language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select coalesce(
        (stripe_customer is not null
         and (entitlements._stripe_id(payload #> '{data,object,customer}') = stripe_customer
              or (payload #>> '{data,object,object}' = 'customer' and payload #>> '{data,object,id}' = stripe_customer)))
        or (payload #>> '{data,object,metadata,entitlements_customer_id}' is not null
            and entitlements._stripe_uuid(payload #>> '{data,object,metadata,entitlements_customer_id}') = customer)
        or (payload #>> '{data,object,client_reference_id}' is not null
            and entitlements._stripe_uuid(payload #>> '{data,object,client_reference_id}') = customer), false)
$$;

-- Is an audit row about the customer? Its row key is their uuid, or (the extension's tables)
-- its id, customer_id, user_id or organization_id is, or (an app table, whose columns we do
-- not know) one of its top-level values is. Exact ids only: a row that merely mentions their
-- address or name is someone else's.
create function entitlements._privacy_audit_about(table_name text, row_key text, old_values jsonb, new_values jsonb,
                                                  customer uuid)
returns boolean language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select coalesce(row_key = customer::text, false)
        or case when table_name like 'entitlements.%'
                then exists (select 1 from unnest(array['id', 'customer_id', 'user_id', 'organization_id']) k
                              where old_values ->> k = customer::text or new_values ->> k = customer::text)
                else exists (select 1 from jsonb_each_text(case when jsonb_typeof(old_values) = 'object' then old_values end) e
                              where lower(e.value) = customer::text)
                  or exists (select 1 from jsonb_each_text(case when jsonb_typeof(new_values) = 'object' then new_values end) e
                              where lower(e.value) = customer::text) end
$$;

-- Definer: the audit log, Stripe events and deliveries are for admins, yet a user may ask
-- for their own. Every check is about the real caller (the outer role, its trusted user id);
-- only the engine's own tables are read, whose columns have built-in types.
create function entitlements.export_customer(customer uuid)
returns jsonb language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_stripe text;
begin
    if customer is null then
        raise exception 'customer must not be NULL' using errcode = '22004';
    end if;
    perform entitlements._require(
        customer = entitlements.current_user_id()
        or entitlements._role_is_privileged(entitlements._outer_role())
        or entitlements._is_listed_admin(null),
        'export_customer', 'the customer themself or a global entitlements admin');
    if not entitlements._privacy_known(customer) then
        raise exception 'customer % is not known', customer using errcode = '22023';
    end if;
    select c.stripe_customer_id into v_stripe from entitlements.customers c where c.id = customer;

    return jsonb_build_object(
        'customer', customer,
        'exported_at', entitlements.now(),
        'profile', (select to_jsonb(c) from entitlements.customers c where c.id = customer),
        'auth_email', (select to_jsonb(a) from entitlements.auth_emails a where a.user_id = customer),
        'memberships', jsonb_build_object(
            'as_user', coalesce((select jsonb_agg(to_jsonb(m) order by m.organization_id)
                                   from entitlements.members m where m.user_id = customer), '[]'),
            'as_organization', coalesce((select jsonb_agg(to_jsonb(m) order by m.user_id)
                                           from entitlements.members m where m.organization_id = customer), '[]')),
        'subscriptions', coalesce((
            select jsonb_agg(to_jsonb(s) || jsonb_build_object(
                       'history', coalesce((select jsonb_agg(to_jsonb(h) order by h.valid_from, h.id)
                                              from entitlements.subscription_history h
                                             where h.subscription_id = s.id and h.customer_id = customer), '[]'),
                       'access_notice', (select to_jsonb(n) from entitlements.access_notices n where n.subscription_id = s.id),
                       'stripe_sync', (select to_jsonb(x) from entitlements.stripe_subscriptions x where x.subscription_id = s.id))
                   order by s.created_at, s.id)
              from entitlements.subscriptions s where s.customer_id = customer), '[]'),
        -- History of subscriptions that Stripe has since moved to another customer.
        'earlier_subscription_history', coalesce((
            select jsonb_agg(to_jsonb(h) order by h.valid_from, h.id)
              from entitlements.subscription_history h
             where h.customer_id = customer
               and not exists (select 1 from entitlements.subscriptions s where s.id = h.subscription_id and s.customer_id = customer)), '[]'),
        'grants', coalesce((select jsonb_agg(to_jsonb(g) order by g.created_at, g.id)
                              from entitlements.grants g where g.customer_id = customer), '[]'),
        'discounts', coalesce((
            select jsonb_agg(to_jsonb(d) || jsonb_build_object('coupon', (
                       select jsonb_build_object('code', k.code, 'percent_off', k.percent_off, 'amount_off_cents', k.amount_off_cents,
                                                 'currency', k.currency, 'duration', k.duration,
                                                 'duration_in_months', k.duration_in_months)
                         from entitlements.coupons k where k.id = d.coupon_id))
                   order by d.starts_at, d.id)
              from entitlements.discounts d where d.customer_id = customer), '[]'),
        'usage', jsonb_build_object(
            'ledger', coalesce((select jsonb_agg(to_jsonb(l) order by l.at, l.id)
                                  from entitlements.usage_ledger l where l.customer_id = customer), '[]'),
            'counters', coalesce((select jsonb_agg(to_jsonb(u) order by u.feature_key, u.period, u.window_start, u.stripe)
                                    from entitlements.usage_counters u where u.customer_id = customer), '[]'),
            'rollup', coalesce((select jsonb_agg(to_jsonb(r) order by r.feature_key, r.through)
                                  from entitlements.usage_rollup r where r.customer_id = customer), '[]'),
            'idempotency_keys', coalesce((select jsonb_agg(to_jsonb(i) order by i.created_at, i.idempotency_key)
                                            from entitlements.usage_idempotency i where i.customer_id = customer), '[]')),
        -- Emails sent to the customer with their attempts; of the app's webhooks only that
        -- they were sent (their URLs are the app's, not the customer's).
        'notifications', jsonb_build_object(
            'events', coalesce((
                select jsonb_agg(to_jsonb(o) || jsonb_build_object('deliveries', coalesce((
                           select jsonb_agg(case when d.channel = 'email'
                                                 then to_jsonb(d) || jsonb_build_object('attempts', coalesce((
                                                          select jsonb_agg(to_jsonb(t) - 'worker' order by t.id)
                                                            from entitlements.delivery_attempts t where t.delivery_id = d.id), '[]'))
                                                 else to_jsonb(d) - 'target' - 'endpoint_id' - 'last_error' end
                                            order by d.id)
                             from entitlements.deliveries d where d.event_id = o.id), '[]'))
                       order by o.id)
                  from entitlements.outbox o where o.customer_id = customer), '[]'),
            'access_notices', coalesce((select jsonb_agg(to_jsonb(n) order by n.subscription_id)
                                          from entitlements.access_notices n where n.customer_id = customer), '[]')),
        -- Server secrets are credentials, not personal data: not exported.
        'servers', coalesce((
            select jsonb_agg(to_jsonb(r) || jsonb_build_object('domain_claims', coalesce((
                       select jsonb_agg(x.domain order by x.domain) from entitlements.server_domains x where x.server_id = r.id), '[]'))
                   order by r.created_at, r.id)
              from entitlements.server_records r where r.customer_id = customer), '[]'),
        'servers_added', (select x.added from entitlements.server_counts x where x.customer_id = customer),
        'stripe', jsonb_build_object(
            'customer_id', v_stripe,
            'events', coalesce((
                select jsonb_agg(to_jsonb(e) order by e.created, e.received_at, e.id)
                  from entitlements.stripe_events e
                 where entitlements._privacy_stripe_about(e.payload, v_stripe, customer)), '[]')),
        -- Rows about the customer in full; rows of what they did to others without the values
        -- (those are the others' data, as are app rows that merely mention their address).
        'audit', coalesce((
            select jsonb_agg(case when x.about then to_jsonb(a)
                                  else to_jsonb(a) - 'old_values' - 'new_values' - 'reason'
                                       || jsonb_build_object('values_withheld', true) end
                             order by a.id)
              from entitlements.audit_log a
             cross join lateral (select entitlements._privacy_audit_about(a.table_name, a.row_key, a.old_values, a.new_values,
                                                                          customer) as about) x
             where x.about or a.actor = customer), '[]'));
end
$$;
comment on function entitlements.export_customer(uuid) is
    'GDPR access: everything the engine holds about a customer as one JSON document. The customer themself, or an admin of it.';
-- END copy of sql/privacy/export.sql

-- BEGIN copy of sql/privacy/erasure.sql
-- GDPR erasure (issue #13): irreversible pseudonymisation of one customer. Their email,
-- name, locale and metadata go, from their row and from the copies the engine made in rows
-- about them (audit values, events, deliveries, usage metadata, Stripe payloads); ids,
-- amounts, plans, prices, dates, subscriptions, their history and discounts stay, so the
-- revenue of every past instant reads the same. Needs privacy/export.sql (_privacy_known,
-- _privacy_json_emails, _privacy_stripe_about, _privacy_audit_about).
--
-- Rows are chosen by the customer's exact identifiers only, as export_customer chooses them:
-- their uuid as a row's key, id, customer_id, user_id or organization_id (any top-level value
-- of an app table's audit row), rows they wrote (audit actor, usage actor), their outbox events
-- with those events' deliveries and attempts, Stripe events by their Stripe customer id or
-- uuid. Never by an address or a name: a customer sets those themself (set_profile) and may
-- have set someone else's, or "usd". Inside the chosen rows, personal keys are nulled, a JSON
-- string is replaced only when it is WHOLE one of their addresses or names (keys, ids, dates,
-- currencies and statuses stay), and free text (reasons, delivery errors, their own
-- idempotency keys) loses their addresses and names of 3+ letters/digits as whole words.
--
-- What may remain: rows about OTHER people that merely mention one of their addresses or
-- names: another Stripe customer's invoice sent to their address, an app row about someone
-- else that cc'd them (and its audit rows), an organization's idempotency keys or usage
-- metadata naming them (unless they recorded it), free text inside app rows about them that
-- contains their name among other words. Those are the other party's records: erasing by
-- string match there is what let a customer who claimed another's address or a short name
-- rewrite and cancel other people's data.

comment on column entitlements.customers.erased_at is
    'When entitlements.erase_customer pseudonymised the customer; its email, name, locale and metadata stay empty.';

-- Is the erasure running? erase_customer sets entitlements.audit_erasure for its own
-- transaction; it counts only for the schema's owner (erase_customer is a definer), so no
-- other role can claim it.
create function entitlements._erasing()
returns boolean language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce(current_setting('entitlements.audit_erasure', true), '') = 'on'
       and exists (select 1 from pg_roles r where r.rolname = current_user
                      and r.oid = (select n.nspowner from pg_namespace n where n.nspname = 'entitlements'))
$$;

-- May the caller give `customer` a customers row in `tenant`? A global admin may. A tenant
-- admin may only for an id the engine holds nothing about: a row in their tenant would make
-- them an admin of that person (export_customer, erase_customer), whose usage, events,
-- memberships and Supabase address were never theirs. Definer: tenant admins cannot read
-- those tables; it answers one boolean, and to anyone but an admin of `tenant` always false
-- (their insert is refused by the customers policy anyway), so it tells nobody else anything.
create function entitlements._customer_id_claimable(customer uuid, tenant uuid)
returns boolean language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
    select entitlements._role_is_privileged(entitlements._outer_role())
        or entitlements._is_listed_admin(null)
        or (entitlements._is_listed_admin(tenant) and not entitlements._privacy_known(customer))
$$;

-- An erased customer stays erased: only erase_customer sets erased_at, and the profile
-- columns stay empty whoever writes the row later (set_profile, an admin's UPDATE). And a
-- customers row with a tenant (new, or moved to another id) is for an id the caller may
-- claim (_customer_id_claimable).
create function entitlements._customer_erasure_guard()
returns trigger language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_was timestamptz;
begin
    if entitlements._bulk_loading() then
        return new; -- pg_restore: restored as it was
    end if;
    if tg_op = 'UPDATE' then
        v_was := old.erased_at;
    end if;
    if new.tenant_id is not null and (tg_op = 'INSERT' or new.id is distinct from old.id) then
        perform entitlements._require(entitlements._customer_id_claimable(new.id, new.tenant_id),
            'creating a customer in a tenant', 'a global admin when the engine already holds data about that id');
    end if;
    if new.erased_at is distinct from v_was and not entitlements._erasing() then
        raise exception 'customers.erased_at is set by entitlements.erase_customer only' using errcode = '42501';
    end if;
    if v_was is not null
       and (new.email is not null or new.display_name is not null or new.locale is not null
            or new.metadata is distinct from '{}'::jsonb) then
        raise exception 'customer % is erased: its email, name, locale and metadata stay empty', new.id
            using errcode = '55000';
    end if;
    return new;
end
$$;
create trigger customers_erased before insert or update on entitlements.customers
    for each row execute function entitlements._customer_erasure_guard();

-- Erasing text ---------------------------------------------------------------------------------------

-- A regex for `needle` (matched case-insensitively) where it is not part of a longer word:
-- "Al" is not erased from "Also".
create function entitlements._erase_pattern(needle text)
returns text language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select case when needle ~ '^[[:alnum:]_]' then '(?<![[:alnum:]_])' else '' end
        || regexp_replace(needle, '([^[:alnum:][:space:]])', '\\\1', 'g')
        || case when needle ~ '[[:alnum:]_]$' then '(?![[:alnum:]_])' else '' end
$$;

-- `s` with every match of `patterns` replaced by [erased].
create function entitlements._erase_text(s text, patterns text[])
returns text language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
    v_out text := s;
    v_pattern text;
begin
    if v_out is null then
        return null;
    end if;
    foreach v_pattern in array coalesce(patterns, '{}'::text[]) loop
        v_out := regexp_replace(v_out, v_pattern, '[erased]', 'gi');
    end loop;
    return v_out;
end
$$;

-- Keys whose string values are identifiers, dates, amounts' currencies or states: never
-- taken for a name, whatever the customer called themself.
create function entitlements._erase_kept_key(key text)
returns boolean language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select key ~ '^(id|object|type|currency|status|kind|plan|feature|action|role|interval|created|period|change|valid_from|valid_to|trial_end)$'
        or key ~ '_(id|ids|at|start|end|key|kind|status|interval)$'
$$;

-- `v` with the values of `keys`, at any depth, null (empty ones stay), and every other
-- string that is as a whole (trimmed, any case) one of `needles` (lower case) [erased].
-- Keys are never rewritten, nor strings under _erase_kept_key.
-- Past 64 levels (app tables' values have no depth limit) a subtree that holds a needle
-- anywhere is erased whole, so no value can make the erasure run out of stack.
create function entitlements._erase_json(v jsonb, needles text[], keys text[], depth integer default 0)
returns jsonb language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
    if depth >= 64 then
        return case when exists (select 1 from unnest(needles) n where strpos(lower(v::text), n) > 0)
                    then '"[erased]"'::jsonb else v end;
    end if;
    return case jsonb_typeof(v)
        when 'object' then coalesce((
            select jsonb_object_agg(e.key,
                                    case when e.key = any (keys)
                                         then case when e.value in ('{}'::jsonb, '[]'::jsonb, '""'::jsonb) then e.value
                                                   else 'null'::jsonb end
                                         when jsonb_typeof(e.value) = 'string' and entitlements._erase_kept_key(e.key)
                                         then e.value
                                         else entitlements._erase_json(e.value, needles, keys, depth + 1) end)
              from jsonb_each(v) e), '{}'::jsonb)
        when 'array' then coalesce((
            select jsonb_agg(entitlements._erase_json(e.value, needles, keys, depth + 1) order by e.n)
              from jsonb_array_elements(v) with ordinality e(value, n)), '[]'::jsonb)
        when 'string' then case when lower(btrim(v #>> '{}')) = any (needles) then '"[erased]"'::jsonb else v end
        else v end;
end
$$;

-- `v` (an audit row's values) with the top-level string `columns` (free text: a grant's
-- reason, a server's last error) through _erase_text.
create function entitlements._erase_columns(v jsonb, columns text[], patterns text[])
returns jsonb language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select case when jsonb_typeof(v) = 'object'
                then coalesce((select jsonb_object_agg(e.key,
                                          case when e.key = any (columns) and jsonb_typeof(e.value) = 'string'
                                               then to_jsonb(entitlements._erase_text(e.value #>> '{}', patterns))
                                               else e.value end)
                                 from jsonb_each(v) e), '{}'::jsonb)
                else v end
$$;

-- Where Stripe objects keep a person's details (customers, Checkout Sessions, invoices,
-- charges, payment methods): nulled in the events about an erased customer.
create function entitlements._erase_stripe_keys()
returns text[] language sql immutable parallel safe
return array['email', 'name', 'phone', 'address', 'shipping', 'description', 'billing_details', 'customer_details',
             'customer_email', 'customer_name', 'customer_phone', 'customer_address', 'customer_shipping',
             'customer_tax_ids', 'tax_ids', 'receipt_email'];

-- Where a profile keeps a person's details: nulled in their outbox events and in the audited
-- values of rows about them (app tables' too; the customers row adds locale and metadata).
create function entitlements._erase_profile_keys()
returns text[] language sql immutable parallel safe
return array['email', 'display_name', 'name', 'full_name', 'first_name', 'last_name', 'phone', 'address',
             'customer_email', 'customer_name'];

-- Erasure --------------------------------------------------------------------------------------------

-- Definer: it rewrites the audit log (append-only for everyone else), the Stripe events and
-- deliveries of every tenant; the caller must be an admin of the customer, asked of the
-- real caller. Only the engine's own tables are read and written (built-in types).
create function entitlements.erase_customer(customer uuid, reason text)
returns jsonb language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_key constant text := customer::text;
    v_now constant timestamptz := entitlements.now();
    v_customer entitlements.customers;
    v_emails text[];   -- lower case, trimmed
    v_names text[];    -- lower case, trimmed
    v_needles text[];  -- whole JSON strings to erase: v_emails and v_names
    v_patterns text[]; -- free text: the addresses, and the names of 3+ letters/digits, as words
    v_prev_reason text := current_setting('entitlements.reason', true);
    v_counts jsonb := '{}'::jsonb;
    v_n bigint;
begin
    if customer is null then
        raise exception 'customer must not be NULL' using errcode = '22004';
    end if;
    -- Global admins only: erasure reaches beyond any tenant (app tables' audit rows,
    -- Stripe events), and a tenant admin controls its customers' names and addresses.
    perform entitlements._require_caller_admin('erase_customer');
    if not entitlements._privacy_known(customer) then
        raise exception 'customer % is not known', customer using errcode = '22023';
    end if;
    if reason is null or btrim(reason) = '' then
        raise exception 'a reason is required' using errcode = '22023';
    end if;
    if length(reason) > 1000 then
        raise exception 'the reason is at most 1000 characters' using errcode = '22023';
    end if;
    -- One erasure of a customer at a time (it may have no customers row yet).
    perform pg_advisory_xact_lock('entitlements.customers'::regclass::oid::integer, hashtext('erase:' || v_key));
    select * into v_customer from entitlements.customers c where c.id = customer for update;
    if v_customer.erased_at is not null then
        return jsonb_build_object('customer', customer, 'already_erased', true, 'erased_at', v_customer.erased_at,
                                  'changed', '{}'::jsonb);
    end if;

    -- Their addresses and names: the current ones, the Supabase address, and those their own
    -- customers audit rows hold. The reason (kept in the erase audit row) names none of them,
    -- nor any word of 3+ letters/digits of a name.
    v_emails := entitlements._privacy_json_emails(customer);
    select coalesce(array_agg(distinct lower(btrim(x.n))), '{}') into v_names
      from (select v_customer.display_name
            union all select v.x ->> 'display_name' from entitlements.audit_log a
                       cross join lateral (values (a.old_values), (a.new_values)) v(x)
                      where a.table_name = 'entitlements.customers' and a.row_key = v_key) x(n)
     where btrim(x.n) <> '' and x.n <> '[erased]';
    if exists (select 1 from unnest(v_emails) e where strpos(e, '@') > 0 and reason ~* entitlements._erase_pattern(e))
       or exists (select 1 from unnest(v_names) n cross join lateral regexp_split_to_table(n, '[^[:alnum:]]+') w
                   where length(w) >= 3 and reason ~* entitlements._erase_pattern(w)) then
        raise exception 'the reason must not contain the customer''s email address or any word of their name'
            using errcode = '22023';
    end if;
    -- To erase, also the addresses their own emails went to.
    select coalesce(array_agg(distinct x.e), '{}') into v_emails
      from (select e from unnest(v_emails) e
            union all
            select lower(btrim(d.target)) from entitlements.deliveries d join entitlements.outbox o on o.id = d.event_id
             where o.customer_id = customer and d.channel = 'email') x(e)
     where x.e <> '' and x.e <> '[erased]';
    v_needles := v_emails || v_names;
    select coalesce(array_agg(entitlements._erase_pattern(x.n)), '{}') into v_patterns
      from (select e from unnest(v_emails) e where strpos(e, '@') > 0
            union
            select n from unnest(v_names) n where length(regexp_replace(n, '[^[:alnum:]]', '', 'g')) >= 3) x(n);

    -- The audit rows the triggers write below carry the reason; the erasure path opens.
    perform set_config('entitlements.reason', reason, true);
    perform set_config('entitlements.audit_erasure', 'on', true);

    -- The profile first: events the writes below cause find no address.
    if v_customer.id is null then
        insert into entitlements.customers (id, erased_at, updated_at) values (customer, v_now, v_now);
    else
        update entitlements.customers c
           set email = null, display_name = null, locale = null, metadata = '{}', erased_at = v_now, updated_at = v_now
         where c.id = customer;
    end if;
    v_counts := v_counts || jsonb_build_object('customers', 1);
    delete from entitlements.auth_emails a where a.user_id = customer;
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('auth_emails', v_n);

    -- Their grants' reasons and values, their subscriptions' metadata; amounts, plans and dates stay.
    with x as (select g.id, coalesce(nullif(btrim(entitlements._erase_text(g.reason, v_patterns)), ''), '[erased]') as reason,
                      entitlements._erase_json(g.value, v_needles, '{}') as value
                 from entitlements.grants g where g.customer_id = customer)
    update entitlements.grants g set reason = x.reason, value = x.value
      from x where x.id = g.id and (g.reason, g.value) is distinct from (x.reason, x.value);
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('grants', v_n);
    with x as (select s.id, entitlements._erase_json(s.metadata, v_needles, '{}') as metadata
                 from entitlements.subscriptions s where s.customer_id = customer)
    update entitlements.subscriptions s set metadata = x.metadata
      from x where x.id = s.id and s.metadata is distinct from x.metadata;
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('subscriptions', v_n);

    -- Usage: their ledger rows lose their metadata; rows they recorded for others (an
    -- organization's) lose what names them as a whole value: the metadata of their own act
    -- (found by actor: one scan of the ledger, for a rare call). Amounts and costs stay.
    -- (Audit rows they merely wrote are left whole, below: those hold the others' rows.)
    with x as (select l.id, l.at,
                      case when l.customer_id = customer then null
                           else entitlements._erase_json(l.metadata, v_needles, '{}') end as metadata
                 from entitlements.usage_ledger l
                where (l.customer_id = customer or l.actor = customer) and l.metadata is not null)
    update entitlements.usage_ledger l set metadata = x.metadata
      from x where x.id = l.id and x.at = l.at and l.metadata is distinct from x.metadata;
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('usage_ledger', v_n);
    -- Their own idempotency keys that name them are replaced (key table and ledger alike);
    -- nobody else's, not even their organizations'. A retry that still carries an old key
    -- would count once more: acceptable, as the key held their personal data and the app
    -- has nothing left to retry for an erased person (its key names an address now gone).
    with k as (select y.idempotency_key, 'erased:' || gen_random_uuid()::text as replacement
                 from (select i.idempotency_key from entitlements.usage_idempotency i where i.customer_id = customer
                       union
                       select l.idempotency_key from entitlements.usage_ledger l
                        where l.customer_id = customer and l.idempotency_key is not null) y
                where entitlements._erase_text(y.idempotency_key, v_patterns) <> y.idempotency_key),
         i as (update entitlements.usage_idempotency i set idempotency_key = k.replacement
                 from k where i.customer_id = customer and i.idempotency_key = k.idempotency_key returning 1),
         l as (update entitlements.usage_ledger l set idempotency_key = k.replacement
                 from k where l.customer_id = customer and l.idempotency_key = k.idempotency_key returning 1)
    select (select count(*) from i) + (select count(*) from l) into v_n;
    v_counts := v_counts || jsonb_build_object('idempotency_keys', v_n);

    -- Stripe events about them lose the person's details.
    with x as (select e.id,
                      entitlements._erase_json(e.payload, v_needles, entitlements._erase_stripe_keys()) as payload,
                      entitlements._erase_text(e.last_error, v_patterns) as last_error
                 from entitlements.stripe_events e
                where entitlements._privacy_stripe_about(e.payload, v_customer.stripe_customer_id, customer))
    update entitlements.stripe_events e set payload = x.payload, last_error = x.last_error
      from x where x.id = e.id and (e.payload, e.last_error) is distinct from (x.payload, x.last_error);
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('stripe_events', v_n);

    -- Their notifications: the events' payloads; what still waits is never sent; the emails'
    -- addresses go, and errors lose what names them (within the columns' 2000 characters).
    with x as (select o.id, entitlements._erase_json(o.payload, v_needles, entitlements._erase_profile_keys()) as payload
                 from entitlements.outbox o where o.customer_id = customer)
    update entitlements.outbox o set payload = x.payload
      from x where x.id = o.id and o.payload is distinct from x.payload;
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('outbox', v_n);
    update entitlements.deliveries d set status = 'canceled', last_error = 'customer erased'
     where d.status = 'pending'
       and d.event_id in (select o.id from entitlements.outbox o where o.customer_id = customer);
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('deliveries_canceled', v_n);
    with x as (select d.id,
                      case when d.channel = 'email' then '[erased]' else d.target end as target,
                      left(entitlements._erase_text(d.last_error, v_patterns), 2000) as last_error
                 from entitlements.deliveries d
                where d.event_id in (select o.id from entitlements.outbox o where o.customer_id = customer))
    update entitlements.deliveries d set target = x.target, last_error = x.last_error
      from x where x.id = d.id and (d.target, d.last_error) is distinct from (x.target, x.last_error);
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('deliveries', v_n);
    with x as (select t.id, left(entitlements._erase_text(t.error, v_patterns), 2000) as error
                 from entitlements.delivery_attempts t
                where t.error is not null
                  and t.delivery_id in (select d.id from entitlements.deliveries d
                                          join entitlements.outbox o on o.id = d.event_id where o.customer_id = customer))
    update entitlements.delivery_attempts t set error = x.error
      from x where x.id = t.id and t.error is distinct from x.error;
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('delivery_attempts', v_n);

    -- The audit log last, with the rows the writes above just added: rows about them (their
    -- profile's personal columns, an app row's personal keys null) and rows they wrote.
    with y as (select a.id, a.row_key, a.old_values, a.new_values, a.reason,
                      case when not entitlements._privacy_audit_about(a.table_name, a.row_key, a.old_values, a.new_values,
                                                                      customer) then '{}'::text[]
                           when a.table_name = 'entitlements.customers'
                           then entitlements._erase_profile_keys() || array['locale', 'metadata']
                           when a.table_name like 'entitlements.%' then '{}'::text[]
                           else entitlements._erase_profile_keys() end as keys,
                      case when a.table_name like 'entitlements.%' then array['reason', 'last_error']
                           else '{}'::text[] end as text_columns
                 from entitlements.audit_log a
                -- Not rows they merely wrote: those hold other people's data, which a name or
                -- address the person chose must not get erased from.
                where entitlements._privacy_audit_about(a.table_name, a.row_key, a.old_values, a.new_values, customer)),
         x as (select y.id,
                      entitlements._erase_columns(entitlements._erase_json(y.old_values, v_needles, y.keys),
                                                  y.text_columns, v_patterns) as old_values,
                      entitlements._erase_columns(entitlements._erase_json(y.new_values, v_needles, y.keys),
                                                  y.text_columns, v_patterns) as new_values,
                      entitlements._erase_text(y.reason, v_patterns) as reason,
                      case when lower(btrim(y.row_key)) = any (v_needles) then '[erased]' else y.row_key end as row_key
                 from y)
    update entitlements.audit_log a
       set old_values = x.old_values, new_values = x.new_values, reason = x.reason, row_key = x.row_key
      from x where x.id = a.id
       and (a.old_values, a.new_values, a.reason, a.row_key) is distinct from (x.old_values, x.new_values, x.reason, x.row_key);
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('audit_log', v_n);

    perform set_config('entitlements.audit_erasure', '', true);
    perform set_config('entitlements.reason', coalesce(v_prev_reason, ''), true);
    -- The one row that says it happened: who, when, why, what changed; nothing personal.
    insert into entitlements.audit_log (actor, actor_role, action, table_name, row_key, new_values, reason)
    values (entitlements.current_user_id(), entitlements._actor_role(), 'erase', 'entitlements.customers', v_key,
            jsonb_build_object('erased_at', v_now, 'changed', v_counts), reason);
    return jsonb_build_object('customer', customer, 'already_erased', false, 'erased_at', v_now, 'changed', v_counts);
end
$$;
comment on function entitlements.erase_customer(uuid, text) is
    'GDPR erasure: pseudonymise a customer (email, name, locale, metadata and their copies in rows about them), keeping '
    'the financial record. Irreversible; idempotent; one audit row. Admins of the customer.';

-- What reads an address later brings none back: _customer_email, the fan-out and
-- delivery_claim read customers and auth_emails, emptied above; set_profile and direct writes
-- meet customers_erased; sync_auth_email (subscriptions/profile.sql), retry_delivery
-- (outbox/delivery.sql) and stripe_record_event (stripe/events.sql) look at erased_at.
-- END copy of sql/privacy/erasure.sql

-- BEGIN copy of sql/console/tokens.sql
-- Admin tokens: how an admin without a Supabase session signs in to the worker's console
-- (/admin). A token is shown once, when created; only its SHA-256 is kept, so a dump or a
-- reader of this table cannot sign in with it. Revoking or expiring it ends the console
-- sessions made with it at their next request (the worker checks the row, as the user,
-- on every page).

create table entitlements.admin_tokens (
    id          uuid primary key default gen_random_uuid(),
    user_id     uuid not null,
    label       text not null check (length(label) between 1 and 200),
    token_hash  bytea not null unique check (length(token_hash) = 32),
    created_at  timestamptz not null default entitlements.now(),
    -- Who made it: the admin user, or NULL for a database role (then created_role says which).
    created_by  uuid,
    created_role text not null default current_user,
    expires_at  timestamptz not null check (expires_at > created_at and expires_at < 'infinity'),
    revoked_at  timestamptz,
    last_used_at timestamptz
);
create index admin_tokens_user on entitlements.admin_tokens (user_id);
comment on table entitlements.admin_tokens is
    'Console sign-in tokens (SHA-256 only). Made by create_admin_token, ended by revoke_admin_token.';
select pg_catalog.pg_extension_config_dump('entitlements.admin_tokens', '');

-- A user reads their own tokens (the console checks its session this way, as the user);
-- global admins read all. Nobody writes them but the functions below.
alter table entitlements.admin_tokens enable row level security;
create policy admin_tokens_read on entitlements.admin_tokens for select
    using (user_id = entitlements.current_user_id() or entitlements.is_admin());

-- A new token for `user_id`, an admin (entitlements.admins, globally or of a tenant): the
-- token itself, returned this once. Global admins only (the real caller: definer).
create function entitlements.create_admin_token(user_id uuid, label text, expires_at timestamptz)
returns text language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_now timestamptz := entitlements.now();
    -- 244 random bits (two version-4 uuids, from the server's strong random source).
    v_token text := 'eat_' || replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '');
begin
    perform entitlements._require_caller_admin('create_admin_token');
    if user_id is null then
        raise exception 'user_id must not be NULL' using errcode = '22023';
    end if;
    if not exists (select 1 from entitlements.admins a where a.user_id = create_admin_token.user_id) then
        raise exception 'user % is not an admin', user_id using errcode = '22023',
            hint = 'Make them one first: select entitlements.add_admin(user_id[, tenant]).';
    end if;
    if label is null or length(btrim(label)) not between 1 and 200 then
        raise exception 'label must be 1 to 200 characters' using errcode = '22023';
    end if;
    if expires_at is null or expires_at <= v_now or expires_at > v_now + interval '1 year' then
        raise exception 'expires_at must be in the future and at most a year away, not %',
            coalesce(expires_at::text, 'NULL') using errcode = '22023';
    end if;
    insert into entitlements.admin_tokens (user_id, label, token_hash, created_at, created_by, created_role, expires_at)
    values (user_id, btrim(label), sha256(convert_to(v_token, 'UTF8')), v_now,
            entitlements.current_user_id(), pg_catalog.pg_get_userbyid(entitlements._outer_role()), expires_at);
    return v_token;
end
$$;
comment on function entitlements.create_admin_token(uuid, text, timestamptz) is
    'A console sign-in token for an admin user, shown this once (only its hash is kept); at most a year. Global admins only.';

-- End a token: the user it belongs to, or a global admin. True when it was active.
create function entitlements.revoke_admin_token(token_id uuid)
returns boolean language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_owner uuid;
begin
    select t.user_id into v_owner from entitlements.admin_tokens t where t.id = token_id;
    -- Someone else's token (or none) reads as a refusal either way: no existence oracle.
    perform entitlements._require(
        (v_owner is not null and v_owner = entitlements.current_user_id())
        or entitlements._role_is_privileged(entitlements._outer_role())
        or entitlements._is_listed_admin(null),
        'revoke_admin_token', 'the token''s user or an entitlements admin');
    update entitlements.admin_tokens t set revoked_at = entitlements.now()
     where t.id = token_id and t.revoked_at is null;
    return found;
end
$$;
comment on function entitlements.revoke_admin_token(uuid) is
    'End a console sign-in token (its sessions end at their next request). Its user or a global admin.';

-- The console's sign-in: the token's id, user and end when `token` is active and its user
-- still an admin; no row otherwise (the worker counts that as sign_in_refused). Run with
-- the worker's own role before anyone is signed in, as PostgREST's authenticator checks a
-- JWT: executable by entitlements_admin only.
create function entitlements.admin_token_sign_in(token text)
returns table (token_id uuid, user_id uuid, expires_at timestamptz)
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_caller_admin('admin_token_sign_in');
    if token is null or length(token) > 200 then
        return;
    end if;
    return query
    update entitlements.admin_tokens t set last_used_at = entitlements.now()
     where t.token_hash = sha256(convert_to(token, 'UTF8'))
       and t.revoked_at is null and t.expires_at > entitlements.now()
       and exists (select 1 from entitlements.admins a where a.user_id = t.user_id)
    returning t.id, t.user_id, t.expires_at;
end
$$;
comment on function entitlements.admin_token_sign_in(text) is
    'The console''s sign-in check of an admin token: its id, user and expiry when active. The worker''s role only.';
-- END copy of sql/console/tokens.sql

-- BEGIN copy of sql/console/search.sql
-- Finding a customer (the console's search; also for apps' own admin screens): by exact id,
-- exact Stripe customer id, or the start of an email address or display name (any case).
-- Runs as the caller: RLS decides whom they find (a tenant admin finds their tenant's only).
create index customers_email_prefix on entitlements.customers (lower(email) text_pattern_ops) where email is not null;
create index customers_name_prefix on entitlements.customers (lower(display_name) text_pattern_ops)
    where display_name is not null;
create index customers_stripe_id on entitlements.customers (stripe_customer_id) where stripe_customer_id is not null;

create function entitlements.search_customers(query text, max_rows integer default 50)
returns table (id uuid, kind text, email text, display_name text, stripe_customer_id text, tenant_id uuid,
               plan_key text, status text, created_at timestamptz)
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_q text := btrim(coalesce(query, ''));
    v_prefix text;
begin
    if max_rows is null or max_rows not between 1 and 500 then
        raise exception 'max_rows must be between 1 and 500' using errcode = '22023';
    end if;
    if length(v_q) > 320 then
        raise exception 'query must be at most 320 characters' using errcode = '22023';
    end if;
    -- LIKE's wildcards in what was typed are matched as themselves.
    v_prefix := replace(replace(replace(lower(v_q), '\', '\\'), '%', '\%'), '_', '\_') || '%';
    return query
    select c.id, c.kind, c.email, c.display_name, c.stripe_customer_id, c.tenant_id, s.plan_key, s.status, c.created_at
      from (
        select x.* from entitlements.customers x
         where v_q ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$' and x.id = v_q::uuid
        union
        select x.* from entitlements.customers x where v_q like 'cus\_%' and x.stripe_customer_id = v_q
        union
        (select x.* from entitlements.customers x
          where v_q <> '' and x.email is not null and lower(x.email) like v_prefix
          order by lower(x.email) limit max_rows)
        union
        (select x.* from entitlements.customers x
          where v_q <> '' and x.display_name is not null and lower(x.display_name) like v_prefix
          order by lower(x.display_name) limit max_rows)
        union
        (select x.* from entitlements.customers x where v_q = '' order by x.created_at desc, x.id limit max_rows)
      ) c
      left join lateral (
        select s.plan_key, s.status from entitlements.subscriptions s
         where s.customer_id = c.id order by s.created_at desc limit 1) s on true
     order by c.email nulls last, c.id
     limit max_rows;
end
$$;
comment on function entitlements.search_customers(text, integer) is
    'Customers by exact id, exact Stripe customer id, or the start of an email or name (empty: the newest), with their latest plan; as the caller sees them.';

-- A customer's audit trail (the console's customer page): their customers row by its key, and
-- every other row that names them as customer_id, by this index rather than a scan of the log.
create index audit_log_customer on entitlements.audit_log ((coalesce(new_values ->> 'customer_id', old_values ->> 'customer_id')));
-- END copy of sql/console/search.sql

-- BEGIN copy of sql/catalog/document.sql
-- The catalog as a document in apply_catalog's own shape: what the console's plan editor
-- starts from, and what an operator keeps in version control. Applying it back changes
-- nothing (pg_test/28_console_catalog.sql holds it to that). Active plans of one owner
-- (everyone's, or one store's), in their order; every feature.
create function entitlements.catalog_document(tenant uuid default null)
returns jsonb language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    if tenant is null then
        perform entitlements._require_admin('catalog_document');
    else
        perform entitlements._require_admin('catalog_document for a store', tenant);
    end if;
    return jsonb_build_object(
        'features', coalesce((
            select jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                       'key', f.key, 'kind', f.kind, 'unit', f.unit,
                       'thresholds', to_jsonb(f.thresholds), 'unit_cost_cents', f.unit_cost_cents))
                   order by f.created_at, f.key)
              from entitlements.features f), '[]'::jsonb),
        'plans', coalesce((
            select jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                       'key', p.key, 'name', p.name, 'description', p.description,
                       'price_cents', p.price_cents, 'currency', p.currency, 'interval', p.interval,
                       'default', case when p.is_default then true end, 'public', p.public,
                       'trial_days', p.trial_days, 'grace_days', p.grace_days,
                       'stripe_price_ids', case when cardinality(p.stripe_price_ids) > 0 then to_jsonb(p.stripe_price_ids) end,
                       'metadata', case when p.metadata <> '{}'::jsonb then p.metadata end))
                   || jsonb_build_object('entitlements', coalesce((
                       select jsonb_object_agg(e.feature_key, entitlements._catalog_entry(f.kind, e.spec))
                         from entitlements.plan_entitlements e
                         join entitlements.features f on f.key = e.feature_key
                        where e.plan_key = p.key), '{}'::jsonb))
                   order by p.position, p.key)
              from entitlements.plans p
             where p.active and p.tenant_id is not distinct from tenant), '[]'::jsonb));
end
$$;
comment on function entitlements.catalog_document(uuid) is
    'The active catalog (of a store, with a tenant) as an apply_catalog document; applying it back changes nothing. Admins.';

-- One plan's value of a feature as a document writes it (the inverse of the normalization in
-- extension/src/catalog/mod.rs): a flag's boolean, a limit's number (an object when per unit),
-- a concurrency's number, a metered feature's limits, a config's value.
create function entitlements._catalog_entry(kind text, spec jsonb)
returns jsonb language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select case kind
        when 'flag' then spec -> 'enabled'
        when 'limit' then case when (spec ->> 'per_unit')::boolean then spec else spec -> 'limit' end
        when 'concurrency' then spec -> 'limit'
        when 'metered' then spec -> 'limits'
        else spec -> 'value'
    end
$$;
-- END copy of sql/catalog/document.sql

-- BEGIN copy of sql/scaleout/replicas.sql
-- Read replicas. A streaming hot standby answers every check (has_feature, entitlements(),
-- check, the access-token hook) from its replayed copy: the per-backend cache is keyed by
-- entitlements.cache_version, which replays with the commit that moved it, so a change is
-- seen on a replica by the first statement after the replica has replayed that commit.
-- Counting and slots are the primary's alone: a slot taken on a replica (an advisory lock
-- there) would not count against the primary's, and a replica sees none of the primary's
-- slots, so acquire and slots_in_use refuse instead of answering.
-- Every other write fails with PostgreSQL's own 25006 naming the statement.

-- No SET clause (a SET costs every call of _meter and acquire a GUC save and restore): the
-- one name it uses is qualified.
create function entitlements._require_primary(verb text)
returns void language plpgsql stable
as $$
begin
    if pg_catalog.pg_is_in_recovery() then
        raise exception '% cannot run on a read replica: this server is a hot standby', verb
            using errcode = '25006',
                  detail = 'Usage counts and concurrency slots are kept by the primary only.',
                  hint = 'Send consume, try_consume, acquire and every change to the primary; '
                         'has_feature, entitlements() and check answer on replicas.';
    end if;
end
$$;
comment on function entitlements._require_primary(text) is
    'Refuse (25006) a counting verb on a hot standby, naming it.';
-- END copy of sql/scaleout/replicas.sql

-- Privileges (sql/security/privileges.sql) -----------------------------------------------------
-- 0.1.0 granted the tables to PUBLIC and the access-token hook to service_role; 0.2.0
-- grants nothing to PUBLIC but the checks and app-table auditing, the rest to the API and
-- admin roles. The statements of sql/security/privileges.sql follow in their order, after every
-- object of the extension went back to its owner's rights alone, so each ACL comes out as
-- in a fresh install item for item (and so does pg_init_privs, which pg_dump compares
-- with). "All tables/sequences/functions in schema entitlements" is the extension's own
-- here: the monthly ledger partitions (created by ensure_usage_partitions, not by the
-- extension) keep their privileges, as they do in a 0.2.0 install.

-- Privileges, last. Nothing is granted to PUBLIC but the checks app policies call for any
-- role and what an audited app table's writers need; the API and admin roles
-- (sql/security/roles.sql) get the rest explicitly, and RLS (roles.sql) decides row by row.
-- tests/privileges.allow lists every function with its SECURITY DEFINER flag and
-- grantees; `make test` holds the database to it, so a new function needs an entry.

revoke all on schema entitlements from public;
grant usage on schema entitlements to public;
-- What 0.1.0 granted goes: PUBLIC's rights on every table, sequence and function of the
-- extension (what a fresh install's `revoke all on all ... in schema entitlements from
-- public` takes), and the access-token hook's grants to supabase_auth_admin and
-- service_role (supabase_auth_admin gets it again below). Grants an operator made to
-- other roles stay.
do $$
declare
    o text;
begin
    for o in
        select format('%s %I.%I', case when c.relkind = 'S' then 'sequence' else 'table' end, n.nspname, c.relname)
          from pg_depend d
          join pg_class c on c.oid = d.objid
          join pg_namespace n on n.oid = c.relnamespace
         where d.classid = 'pg_class'::regclass and d.objsubid = 0 and d.deptype = 'e'
           and d.refclassid = 'pg_extension'::regclass
           and d.refobjid = (select e.oid from pg_extension e where e.extname = 'pg_entitlements')
           and n.nspname = 'entitlements' and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
        union all
        select format('function %I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid))
          from pg_depend d
          join pg_proc p on p.oid = d.objid
          join pg_namespace n on n.oid = p.pronamespace
         where d.classid = 'pg_proc'::regclass and d.deptype = 'e'
           and d.refclassid = 'pg_extension'::regclass
           and d.refobjid = (select e.oid from pg_extension e where e.extname = 'pg_entitlements')
           and n.nspname = 'entitlements' and p.prokind <> 'p'
         order by 1
    loop
        execute format('revoke all on %s from public', o);
    end loop;
    if exists (select 1 from pg_roles where rolname = 'supabase_auth_admin') then
        revoke all on function entitlements.custom_access_token_hook(jsonb) from supabase_auth_admin;
    end if;
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        revoke all on function entitlements.custom_access_token_hook(jsonb) from service_role;
    end if;
end
$$;

-- Any role: the checks (an app's RLS policy calls them as whoever queries its table) and
-- the version has_feature reads as its caller (a number, nothing else), and the clock.
grant execute on function entitlements.current_user_id(), entitlements.has_feature(text),
    entitlements.has_feature(uuid, text), entitlements.now() to public;
grant select on entitlements.cache_version to public;
-- Auditing any app table: its owner attaches the trigger, its writers run it.
grant execute on function entitlements.enable_audit(regclass), entitlements._is_extension_table(oid),
    entitlements._audit_app_row(), entitlements._audit_append(oid, text, text, jsonb, jsonb) to public;

-- API roles and admins: every table to read (RLS filters rows), the write paths' tables to
-- write (the functions run as the caller, RLS refuses what they may not do), every function
-- but the owner-only ones below.
do $$
declare
    o text;
begin
    -- grant select on all tables in schema entitlements to entitlements_api, entitlements_admin;
    for o in
        select format('table %I.%I', n.nspname, c.relname)
          from pg_depend d
          join pg_class c on c.oid = d.objid
          join pg_namespace n on n.oid = c.relnamespace
         where d.classid = 'pg_class'::regclass and d.objsubid = 0 and d.deptype = 'e'
           and d.refclassid = 'pg_extension'::regclass
           and d.refobjid = (select e.oid from pg_extension e where e.extname = 'pg_entitlements')
           and n.nspname = 'entitlements' and c.relkind in ('r', 'p', 'v', 'm', 'f')
         order by 1
    loop
        execute format('grant select on %s to entitlements_api, entitlements_admin', o);
    end loop;
end
$$;
grant insert, update, delete on entitlements.features, entitlements.plans, entitlements.plan_entitlements,
    entitlements.customers, entitlements.subscriptions, entitlements.members, entitlements.grants,
    entitlements.admins, entitlements.stripe_events, entitlements.stripe_subscriptions, entitlements.settings,
    entitlements.leases, entitlements.coupons, entitlements.discounts
    to entitlements_api, entitlements_admin;
-- Servers: added through create_server (the rest of a row is the worker's, through the admin
-- functions), never deleted (a name is never reused); the secrets are for global admins.
-- Updates and events: global admins only (RLS), the worker's role or a listed admin.
grant insert (customer_id, name, domains), update on entitlements.server_records to entitlements_api, entitlements_admin;
grant insert on entitlements.outbox to entitlements_api, entitlements_admin;
-- A task run is recorded and pruned, never rewritten.
grant insert, delete on entitlements.task_runs to entitlements_api, entitlements_admin;
do $$
declare
    o text;
begin
    -- grant usage on all sequences in schema entitlements to entitlements_api, entitlements_admin;
    for o in
        select format('sequence %I.%I', n.nspname, c.relname)
          from pg_depend d
          join pg_class c on c.oid = d.objid
          join pg_namespace n on n.oid = c.relnamespace
         where d.classid = 'pg_class'::regclass and d.objsubid = 0 and d.deptype = 'e'
           and d.refclassid = 'pg_extension'::regclass
           and d.refobjid = (select e.oid from pg_extension e where e.extname = 'pg_entitlements')
           and n.nspname = 'entitlements' and c.relkind = 'S'
         order by 1
    loop
        execute format('grant usage on %s to entitlements_api, entitlements_admin', o);
    end loop;
end
$$;
do $$
declare
    o text;
begin
    -- grant execute on all functions in schema entitlements to entitlements_api, entitlements_admin;
revoke select on entitlements.server_secrets from entitlements_api;
revoke select on entitlements.server_domains, entitlements.server_counts from entitlements_api, entitlements_admin;
-- Notifications: endpoints (their secrets), templates and attempts are for admins (RLS); a
-- customer reads its own events and emails.
grant insert, update on entitlements.webhook_endpoints, entitlements.email_templates to entitlements_api, entitlements_admin;
grant delete on entitlements.email_templates to entitlements_api, entitlements_admin;
grant insert, update on entitlements.deliveries to entitlements_api, entitlements_admin;
grant insert on entitlements.delivery_attempts to entitlements_api, entitlements_admin;
-- Security monitoring: global admins configure the rules (RLS); signals, alerts, incidents
-- and notes are written only by the definer functions (monitoring/), which check the caller.
grant insert, update, delete on entitlements.security_rules to entitlements_api, entitlements_admin;
    for o in
        select format('function %I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid))
          from pg_depend d
          join pg_proc p on p.oid = d.objid
          join pg_namespace n on n.oid = p.pronamespace
         where d.classid = 'pg_proc'::regclass and d.deptype = 'e'
           and d.refclassid = 'pg_extension'::regclass
           and d.refobjid = (select e.oid from pg_extension e where e.extname = 'pg_entitlements')
           and n.nspname = 'entitlements' and p.prokind <> 'p'
         order by 1
    loop
        execute format('grant execute on %s to entitlements_api, entitlements_admin', o);
    end loop;
end
$$;

-- Owner only: SECURITY DEFINER triggers (nobody may attach them elsewhere; a trigger that
-- fires needs no EXECUTE), and what reads around RLS without asking who calls.
revoke execute on function entitlements._audit_row(), entitlements._cache_bump(), entitlements._enforce_seats(),
    entitlements._touch_subscription(), entitlements._cache_touch_trigger(), entitlements._audit_log_is_append_only(),
    entitlements._require_own_table(oid, text), entitlements._catalog_snapshot(),
    entitlements._normalize_catalog_json(jsonb, jsonb), entitlements._normalize_feature_value_json(text, jsonb),
    entitlements._access_token_claims(jsonb), entitlements._server_made(), entitlements._server_changed(),
    entitlements._server_check_insert(), entitlements._server_first(), entitlements._outbox_fan_out(),
    entitlements._subscription_events(), entitlements._grant_events(), entitlements._member_events(),
    entitlements._record_subscription_history(), entitlements._record_unit_cost(),
    entitlements._plan_stripe_prices_unique(),
    -- The steps of _meter, which pin no search_path: only _meter (pinned) calls them.
    entitlements._meter_check_input(uuid, text, numeric, text), entitlements._meter_claim_key(uuid, text, text, numeric),
    entitlements._meter_window_total(uuid, text, text, timestamptz),
    entitlements._meter_limit(uuid, text, numeric, text, boolean, text, timestamptz, timestamptz, numeric, text, jsonb,
                              numeric[]),
    entitlements._meter_take_stripe(uuid, text, numeric, text, timestamptz, timestamptz, numeric, numeric[]),
    entitlements._meter_rebalance(uuid, text, numeric, text, timestamptz, timestamptz, numeric, numeric[], numeric,
                                  integer, boolean),
    entitlements._quota_bound(numeric, numeric[], numeric), entitlements._quota_events(uuid, text, jsonb),
    entitlements._thresholds_key(numeric[]),
    -- Access notices run as the owner, from the subscriptions trigger and the time_events task.
    entitlements._access_notice(entitlements.subscriptions, text), entitlements._customer_email(uuid),
    -- Attached to auth.users by the operator; anyone else attaching it could redirect emails.
    entitlements.sync_auth_email(),
    entitlements._meter_raise_quota(uuid, text, numeric, numeric, text, numeric, timestamptz, jsonb),
    entitlements._meter_raise_not_included(uuid, text, numeric, jsonb),
    entitlements._meter_undo(uuid, text, numeric, text[], timestamptz[], smallint[], boolean[], text),
    -- Refusal counts: _meter (definer) names the customer; the flush worker writes them.
    entitlements._note_refusal(text, text, text), entitlements._record_signals(jsonb),
    entitlements._check_security_rule(), entitlements._incident_transition(), entitlements._alert_check(),
    entitlements._add_signals(jsonb), entitlements._incident_for_update(bigint), entitlements._incident_note(bigint, text),
    entitlements._alert_event(entitlements.security_alerts),
    -- Erasure: the guard trigger, and the readers export and erasure use around RLS.
    entitlements._customer_erasure_guard(), entitlements._privacy_known(uuid), entitlements._privacy_json_emails(uuid)
    from entitlements_api, entitlements_admin;

-- The console's sign-in check runs with the worker's own role (an admin), before anyone is
-- signed in; the API roles never need it.
revoke execute on function entitlements.admin_token_sign_in(text) from entitlements_api;

-- The Supabase Auth hook runs as supabase_auth_admin; nobody else needs it.
revoke execute on function entitlements.custom_access_token_hook(jsonb) from entitlements_api;

-- Supabase's roles, when they exist: the API roles speak for signed-in users, service_role
-- administers, supabase_auth_admin runs the access-token hook. Other deployments grant
-- entitlements_api / entitlements_admin to their own roles (README, Security).
do $$
declare
    r text;
begin
    foreach r in array array['anon', 'authenticated', 'service_role'] loop
        if exists (select 1 from pg_roles where rolname = r) then
            execute format('grant entitlements_api to %I', r);
        end if;
    end loop;
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        execute 'grant entitlements_admin to service_role';
    end if;
    if exists (select 1 from pg_roles where rolname = 'supabase_auth_admin') then
        execute 'grant execute on function entitlements.custom_access_token_hook(jsonb) to supabase_auth_admin';
    end if;
end
$$;
