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
