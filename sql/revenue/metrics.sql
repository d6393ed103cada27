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
