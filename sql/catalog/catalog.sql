-- Configuration-driven catalog: one JSON document in, an idempotent upsert out.

create function entitlements.apply_catalog(catalog jsonb)
returns jsonb language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_doc jsonb;
    v_item jsonb;
    v_feature entitlements.features;
    v_plan entitlements.plans;
    v_keys text[];
    v_default text;
    v_n bigint;
    v_plan_changed boolean;
    v_conflict record;
    f_created text[] := '{}'::text[];
    f_updated text[] := '{}'::text[];
    p_created text[] := '{}'::text[];
    p_updated text[] := '{}'::text[];
    p_deactivated text[] := '{}'::text[];
begin
    perform entitlements._require_admin('apply_catalog');
    if catalog is null then
        raise exception 'catalog must not be NULL' using errcode = '22004';
    end if;
    perform entitlements._valid_json(catalog, 'catalog');
    -- One catalog change at a time; readers (checks) are not blocked.
    lock table entitlements.plans in share row exclusive mode;
    v_doc := entitlements._normalize_catalog(
        catalog, (select coalesce(jsonb_object_agg(f.key, f.kind), '{}') from entitlements.features f));
    perform set_config('entitlements.reason', 'apply_catalog', true);

    select coalesce(array_agg(p ->> 'key'), '{}') into v_keys from jsonb_array_elements(v_doc -> 'plans') p;
    select p ->> 'key' into v_default from jsonb_array_elements(v_doc -> 'plans') p where (p ->> 'is_default')::boolean;

    -- Features -------------------------------------------------------------------
    for v_item in select * from jsonb_array_elements(v_doc -> 'features') loop
        select * into v_feature from entitlements.features f where f.key = v_item ->> 'key';
        if not found then
            insert into entitlements.features (key, kind, unit)
            values (v_item ->> 'key', v_item ->> 'kind', v_item ->> 'unit');
            f_created := f_created || (v_item ->> 'key');
        elsif v_feature.kind is distinct from v_item ->> 'kind' or v_feature.unit is distinct from v_item ->> 'unit' then
            if v_feature.kind <> v_item ->> 'kind' and (
                   exists (select 1 from entitlements.plan_entitlements e
                            where e.feature_key = v_feature.key and e.plan_key <> all (v_keys))
                or exists (select 1 from entitlements.grants g where g.feature_key = v_feature.key)) then
                raise exception 'invalid catalog: feature "%" cannot change kind from % to %: plans outside this document or grants still use it',
                    v_feature.key, v_feature.kind, v_item ->> 'kind'
                    using errcode = '22023', hint = 'Use a new feature key for the new kind.';
            end if;
            update entitlements.features f
               set kind = v_item ->> 'kind', unit = v_item ->> 'unit', updated_at = now()
             where f.key = v_feature.key;
            f_updated := f_updated || v_feature.key;
        end if;
    end loop;

    -- The default moves before plans are written, so the single-default index holds.
    with moved as (
        update entitlements.plans p set is_default = false, updated_at = now()
         where p.is_default and p.key is distinct from v_default and p.key = any (v_keys)
        returning p.key)
    select coalesce(array_agg(key), '{}') into p_updated from moved;

    -- Plans missing from the document: inactive, never deleted; subscribers keep them.
    with gone as (
        update entitlements.plans p set active = false, is_default = false, updated_at = now()
         where p.active and p.key <> all (v_keys)
        returning p.key)
    select coalesce(array_agg(key order by key), '{}') into p_deactivated from gone;

    -- Plans -----------------------------------------------------------------------
    for v_item in select * from jsonb_array_elements(v_doc -> 'plans') loop
        v_plan_changed := false;
        select * into v_plan from entitlements.plans p where p.key = v_item ->> 'key';
        if not found then
            insert into entitlements.plans (key, name, description, price_cents, currency, interval, is_default,
                                            public, active, trial_days, grace_days, position, stripe_price_ids, metadata)
            select r.key, r.name, r.description, r.price_cents, r.currency, r.interval, r.is_default,
                   r.public, true, r.trial_days, r.grace_days, r.position, r.stripe_price_ids, r.metadata
              from jsonb_populate_record(null::entitlements.plans, v_item) r;
            p_created := p_created || (v_item ->> 'key');
        elsif (to_jsonb(v_plan) - 'key' - 'created_at' - 'updated_at')
              is distinct from ((v_item - 'key' - 'entitlements') || '{"active": true}') then
            update entitlements.plans p
               set name = r.name, description = r.description, price_cents = r.price_cents, currency = r.currency,
                   interval = r.interval, is_default = r.is_default, public = r.public, active = true,
                   trial_days = r.trial_days, grace_days = r.grace_days, position = r.position,
                   stripe_price_ids = r.stripe_price_ids, metadata = r.metadata, updated_at = now()
              from jsonb_populate_record(null::entitlements.plans, v_item) r
             where p.key = v_plan.key;
            v_plan_changed := true;
        end if;

        delete from entitlements.plan_entitlements e
         where e.plan_key = v_item ->> 'key' and not (v_item -> 'entitlements') ? e.feature_key;
        get diagnostics v_n = row_count;
        v_plan_changed := v_plan_changed or v_n > 0;

        insert into entitlements.plan_entitlements as e (plan_key, feature_key, spec)
        select v_item ->> 'key', x.key, x.value from jsonb_each(v_item -> 'entitlements') x
        on conflict (plan_key, feature_key) do update set spec = excluded.spec
         where e.spec is distinct from excluded.spec;
        get diagnostics v_n = row_count;
        v_plan_changed := v_plan_changed or (v_n > 0 and v_plan.key is not null);

        if v_plan_changed and v_plan.key is not null and not (v_plan.key = any (p_updated)) then
            p_updated := p_updated || v_plan.key;
        end if;
    end loop;

    -- A Stripe price maps to exactly one plan, including plans kept inactive.
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

    perform set_config('entitlements.reason', '', true);
    return jsonb_build_object(
        'changed', cardinality(f_created) + cardinality(f_updated) + cardinality(p_created)
                   + cardinality(p_updated) + cardinality(p_deactivated) > 0,
        'features', jsonb_build_object('created', to_jsonb(f_created), 'updated', to_jsonb(f_updated)),
        'plans', jsonb_build_object('created', to_jsonb(p_created), 'updated', to_jsonb(p_updated),
                                    'deactivated', to_jsonb(p_deactivated)));
end
$$;
comment on function entitlements.apply_catalog(jsonb) is
    'Idempotent upsert of features and plans from one document; returns what changed. Plans missing from the document become inactive.';
