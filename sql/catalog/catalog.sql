-- Configuration-driven catalog: one JSON document in, an idempotent upsert out.

-- The steps of apply_catalog (below), each on the normalized document. They run as the
-- caller, under apply_catalog's admin check and lock; RLS keeps anyone else from writing.

-- Create or update the document's features; {"created": [...], "updated": [...]}. A
-- feature changes kind only while nothing outside the document (`plan_keys`) uses it.
create function entitlements._catalog_apply_features(features jsonb, plan_keys text[])
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

-- Create or update one plan of the document with its entitlements: 'created', 'updated',
-- or NULL when it was already so.
create function entitlements._catalog_apply_plan(item jsonb)
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

-- A Stripe price maps to exactly one plan, including plans kept inactive.
create function entitlements._catalog_check_stripe_prices()
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

-- A Stripe price maps to one plan, whoever writes the plans (a store's admin writes its own
-- directly, and cannot see others' private plans): checked as the owner, on every write of
-- stripe_price_ids, without naming the other plan. A constraint trigger, checked at the end
-- of each statement, except that apply_catalog defers it to the end of the whole document
-- (a document may move a price from one plan to another); it reads the plan as it is then.
create function entitlements._plan_stripe_prices_unique()
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
create constraint trigger plans_stripe_prices after insert or update of stripe_price_ids on entitlements.plans
    deferrable initially immediate
    for each row when (cardinality(new.stripe_price_ids) > 0)
    execute function entitlements._plan_stripe_prices_unique();

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
