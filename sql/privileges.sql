-- Privileges, last. Tables are readable and writable by everyone at the SQL level and
-- RLS (security.sql) decides row by row; internals that read around RLS are not executable.

grant usage on schema entitlements to public;
grant select on all tables in schema entitlements to public;
grant insert, update, delete on entitlements.features, entitlements.plans, entitlements.plan_entitlements,
    entitlements.customers, entitlements.subscriptions, entitlements.members, entitlements.grants,
    entitlements.admins to public;
-- The audit log and the cache version are written only by the extension's own triggers.
revoke insert, update, delete, truncate on entitlements.audit_log, entitlements.cache_version from public;

revoke execute on function entitlements._catalog_snapshot() from public;
revoke execute on function entitlements._cache_bump() from public;
revoke execute on function entitlements._audit_row() from public;

-- The Supabase Auth hook runs as supabase_auth_admin; nobody else needs it.
revoke execute on function entitlements.custom_access_token_hook(jsonb) from public;
do $$
declare
    r text;
begin
    foreach r in array array['supabase_auth_admin', 'service_role'] loop
        if exists (select 1 from pg_roles where rolname = r) then
            execute format('grant execute on function entitlements.custom_access_token_hook(jsonb) to %I', r);
        end if;
    end loop;
end
$$;
