-- Append-only audit trail: every change to the extension's tables, and to any app table
-- passed to entitlements.enable_audit(), becomes a row of entitlements.audit_log.

-- Who did it: the JWT/GUC user id, and the role the statement ran as (SET ROLE, as
-- PostgREST does, else the session user). Readable inside SECURITY DEFINER functions.
create function entitlements._actor_role()
returns text language sql stable
set search_path = pg_catalog, pg_temp
as $$ select coalesce(nullif(current_setting('role'), 'none'), session_user::text) $$;

-- Row trigger. TG_ARGV holds the primary key columns, so the row key is readable.
create function entitlements._audit_row()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_old jsonb;
    v_new jsonb;
    v_row jsonb;
    v_key text;
    i int;
begin
    if tg_op in ('UPDATE', 'DELETE') then v_old := to_jsonb(old); end if;
    if tg_op in ('INSERT', 'UPDATE') then v_new := to_jsonb(new); end if;
    if tg_op = 'UPDATE' and v_old = v_new then
        return null;
    end if;
    v_row := coalesce(v_new, v_old);
    if tg_nargs > 0 then
        for i in 0 .. tg_nargs - 1 loop
            v_key := concat_ws(',', v_key, v_row ->> tg_argv[i]);
        end loop;
    end if;
    insert into entitlements.audit_log (actor, actor_role, action, table_name, row_key, old_values, new_values, reason)
    values (entitlements.current_user_id(), entitlements._actor_role(), lower(tg_op),
            format('%I.%I', tg_table_schema, tg_table_name), v_key, v_old, v_new,
            nullif(current_setting('entitlements.reason', true), ''));
    return null;
end
$$;

create function entitlements._audit_log_is_append_only()
returns trigger language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    raise exception 'entitlements.audit_log is append-only: % is not allowed', lower(tg_op)
        using errcode = '42501';
end
$$;

create trigger audit_log_append_only before update or delete on entitlements.audit_log
    for each row execute function entitlements._audit_log_is_append_only();
create trigger audit_log_no_truncate before truncate on entitlements.audit_log
    for each statement execute function entitlements._audit_log_is_append_only();

-- Attach the audit trigger to a table (idempotent). The caller must own the table.
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
                   'for each row execute function entitlements._audit_row(%s)', target, coalesce(v_keys, ''));
end
$$;
comment on function entitlements.enable_audit(regclass) is
    'Record every insert, update and delete on the table in entitlements.audit_log.';

select entitlements.enable_audit(t::regclass) from unnest(array[
    'entitlements.features', 'entitlements.plans', 'entitlements.plan_entitlements',
    'entitlements.customers', 'entitlements.subscriptions', 'entitlements.members',
    'entitlements.grants', 'entitlements.admins']) as t;
