-- What the per-backend cache (extension/src/cache.rs) reads, and the triggers that keep
-- it coherent. The snapshot functions are executed by the extension as the owner, so
-- callers cannot use them to read around RLS: EXECUTE is revoked in privileges.sql.

alter table entitlements.cache_version enable row level security;
create policy cache_version_read on entitlements.cache_version for select using (true);

-- The read path's helpers are PL/pgSQL so their plans are cached per session: a SQL
-- function with a SET clause is planned again on every call, which cost more than the
-- whole check.
create function entitlements._cache_state(out version bigint, out owner oid)
returns record language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
    select c.version, n.nspowner into version, owner
      from entitlements.cache_version c, pg_namespace n
     where n.nspname = 'entitlements';
end
$$;

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
            'features', coalesce((select jsonb_agg(jsonb_build_object('key', f.key, 'kind', f.kind, 'unit', f.unit) order by f.key)
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

create function entitlements._party_snapshot(party uuid)
returns jsonb language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
    return (
        select jsonb_build_object(
            'subscriptions', coalesce((
                select jsonb_agg(jsonb_build_object(
                    'id', s.id, 'plan', s.plan_key, 'status', s.status, 'quantity', s.quantity,
                    'period_start', entitlements._us(s.current_period_start),
                    'period_end', entitlements._us(s.current_period_end),
                    'trial_end', entitlements._us(s.trial_end),
                    'cancel_at_period_end', s.cancel_at_period_end,
                    'status_changed_at', entitlements._us(s.status_changed_at)) order by s.created_at, s.id)
                  from entitlements.subscriptions s
                 where s.customer_id = party and (s.ended_at is null or s.ended_at > now())), '[]'),
            'grants', coalesce((
                select jsonb_agg(jsonb_build_object(
                    'kind', g.kind, 'feature', g.feature_key, 'value', g.value,
                    'starts_at', entitlements._us(g.starts_at),
                    'expires_at', entitlements._us(g.expires_at)) order by g.created_at, g.id)
                  from entitlements.grants g
                 where g.customer_id = party and g.revoked_at is null and g.kind <> 'discount'), '[]')));
end
$$;

create function entitlements._customer_snapshot(customer uuid)
returns jsonb language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
    return (
        select entitlements._party_snapshot(customer) || jsonb_build_object(
            'exists', exists (select 1 from entitlements.customers c where c.id = customer),
            'organizations', coalesce((
                select jsonb_agg(entitlements._party_snapshot(m.organization_id)
                                 || jsonb_build_object('id', m.organization_id, 'role', m.role)
                                 order by m.organization_id)
                  from entitlements.members m where m.user_id = customer), '[]')));
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
    update entitlements.cache_version
       set version = version + 1, bumped_by = txid_current()
     where bumped_by is distinct from txid_current();
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
