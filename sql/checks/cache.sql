-- What the per-backend cache (extension/src/checks/cache.rs) reads, and the triggers that keep
-- it coherent. The catalog snapshot is executed by the extension as the owner, so
-- callers cannot use it to read around RLS: EXECUTE is revoked in security/privileges.sql.

alter table entitlements.cache_version enable row level security;
create policy cache_version_read on entitlements.cache_version for select using (true);

-- The catalog is read through a PL/pgSQL helper (its plans are cached per session; a SQL
-- function with a SET clause is planned again on every call). A customer's sources and
-- the version are read by the extension itself with kept plans (extension/src/checks/cache.rs).

-- Microseconds since the Unix epoch: how the Rust side reads instants.
-- A standard SQL body: resolved when created (no search_path to pin) and inlined.
create function entitlements._us(t timestamptz)
returns bigint language sql immutable parallel safe strict
return (extract(epoch from t) * 1000000)::bigint;

create function entitlements._catalog_snapshot()
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

-- Deferred to commit: the version row is locked only while committing, so writers in
-- different transactions do not queue behind each other for their whole duration, and
-- the bump becomes visible atomically with the change.
create function entitlements._cache_bump()
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

-- Immediate, per statement: this backend must not serve its cache to itself any more.
create function entitlements._cache_touch_trigger()
returns trigger language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._cache_touch();
    return null;
end
$$;

do $$
declare
    t text;
begin
    foreach t in array array['features', 'plans', 'plan_entitlements', 'customers',
                             'subscriptions', 'members', 'grants']
    loop
        execute format('create constraint trigger cache_bump after insert or update or delete on entitlements.%I '
                       'deferrable initially deferred for each row execute function entitlements._cache_bump()', t);
        -- TRUNCATE fires no row triggers: bump at once.
        execute format('create trigger cache_bump_truncate after truncate on entitlements.%I '
                       'for each statement execute function entitlements._cache_bump()', t);
        execute format('create trigger cache_touch after insert or update or delete or truncate on entitlements.%I '
                       'for each statement execute function entitlements._cache_touch_trigger()', t);
    end loop;
end
$$;
