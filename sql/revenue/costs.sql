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
