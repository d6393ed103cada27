-- Append-only audit trail: every change to the extension's tables, and to any app table
-- passed to entitlements.enable_audit(), becomes a row of entitlements.audit_log.

-- Who did it: the JWT/GUC user id, and the role the statement ran as (SET ROLE, as
-- PostgREST does, else the session user). Readable inside SECURITY DEFINER functions.
create function entitlements._actor_role()
returns text language sql stable
set search_path = pg_catalog, pg_temp
as $$ select coalesce(nullif(current_setting('role'), 'none'), session_user::text) $$;

-- pg_restore loads the extension's tables with `row_security = off` after CREATE EXTENSION
-- has attached these triggers; they must not fire then (they would audit the restore,
-- collide with the restored audit ids, and reset the restored timestamps). Only roles RLS
-- does not bind (superusers, BYPASSRLS, the tables' owner) can write our tables with
-- row_security off, and they could disable the triggers anyway.
create function entitlements._bulk_loading()
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
create function entitlements._is_extension_table(relid oid)
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
-- revoked (security/privileges.sql), so nobody else can attach them.
create function entitlements._require_own_table(relid oid, trigger_function text)
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
create function entitlements._audit_row()
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
create function entitlements._audit_app_row()
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
-- actor, role, time and transaction are its own, never the caller's word. (Any role that
-- runs a trigger of its own can still add rows naming such a table, even without rights on
-- it: the rows carry its role and user id, so they are told apart from the table's own.)
create function entitlements._audit_append(target oid, action text, row_key text, old_values jsonb, new_values jsonb)
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

create function entitlements._audit_log_is_append_only()
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

create trigger audit_log_append_only before update or delete on entitlements.audit_log
    for each row execute function entitlements._audit_log_is_append_only();
create trigger audit_log_no_truncate before truncate on entitlements.audit_log
    for each statement execute function entitlements._audit_log_is_append_only();

-- Attach the audit trigger to a table (idempotent). The caller must own the table (or
-- have TRIGGER on it). App tables get the invoker trigger, the extension's own the definer.
create function entitlements.enable_audit(target regclass)
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
comment on function entitlements.enable_audit(regclass) is
    'Record every insert, update and delete on the table in entitlements.audit_log.';

select entitlements.enable_audit(t::regclass) from unnest(array[
    'entitlements.features', 'entitlements.plans', 'entitlements.plan_entitlements',
    'entitlements.customers', 'entitlements.subscriptions', 'entitlements.members',
    'entitlements.grants', 'entitlements.admins']) as t;
