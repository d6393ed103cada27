-- Revenue bench data: 100,000 customers with 24 months of history (2024-01 to 2025-12):
-- monthly and yearly plans, trials, upgrades, downgrades, cancellations at period end,
-- reactivations and 50% coupons. Written straight into the tables the metrics read (as the
-- history trigger would have written them), with triggers off, so that setting up takes
-- seconds, not the hour that 300,000 calls of subscribe/change_plan would.
set session_replication_role = replica;
create schema if not exists bench_revenue;

insert into entitlements.plans (key, name, price_cents, interval, public)
values ('r_basic', 'Basic', 1000, 'month', true), ('r_pro', 'Pro', 3000, 'month', true),
       ('r_annual', 'Pro yearly', 24000, 'year', true)
on conflict (key) do nothing;

create function bench_revenue.cust(i integer) returns uuid language sql immutable
return ('00000000-0000-0000-0000-' || lpad(to_hex(i), 12, '0'))::uuid;

-- One row per state of each subscription: (customer, subscription number, from, to, plan, status, ...).
create temp table states as
with c as (
    select i,
           timestamptz '2024-01-01 00:00:00+00' + make_interval(months => (i * 7919) % 24, days => i % 28) as t0,
           case when i % 10 < 5 then 'r_basic' when i % 10 < 8 then 'r_pro' else 'r_annual' end as plan
      from generate_series(1, 100000) i)
-- the first subscription: an optional 14-day trial, then paid; plan changes; a cancellation
select i, 1 as n, t0 as valid_from, t0 + interval '14 days' as valid_to, 'r_pro' as plan, 'trialing' as status,
       t0 + interval '14 days' as period_end, false as cancel_end
  from c where i % 10 = 3
union all
select i, 1, t0 + case when i % 10 = 3 then interval '14 days' else interval '0' end,
       case when plan = 'r_basic' and i % 7 = 0 then t0 + interval '2 months'
            when plan = 'r_pro' and i % 11 = 0 then t0 + interval '3 months'
            when i % 5 = 0 then t0 + interval '4 months' end,
       plan, 'active', null, false
  from c
union all -- upgrades
select i, 1, t0 + interval '2 months', case when i % 5 = 0 then t0 + interval '4 months' end, 'r_pro', 'active', null, false
  from c where plan = 'r_basic' and i % 7 = 0
union all -- downgrades
select i, 1, t0 + interval '3 months', case when i % 5 = 0 then t0 + interval '4 months' end, 'r_basic', 'active', null, false
  from c where plan = 'r_pro' and i % 11 = 0
union all -- canceled at period end, a month later
select i, 1, t0 + interval '4 months', null,
       case when plan = 'r_basic' and i % 7 = 0 then 'r_pro' when plan = 'r_pro' and i % 11 = 0 then 'r_basic' else plan end,
       'canceled', t0 + interval '5 months', true
  from c where i % 5 = 0
union all -- some come back three months after churning
select i, 2, t0 + interval '8 months', null, 'r_basic', 'active', null, false
  from c where i % 25 = 0;

create index on states (i, n, valid_from);
analyze states;

insert into entitlements.customers (id)
select bench_revenue.cust(i) from generate_series(1, 100000) i on conflict do nothing;

create temp table subs as
select i, n, gen_random_uuid() as id from (select distinct i, n from states) s;
create index on subs (i, n);
analyze subs;

insert into entitlements.subscriptions (id, customer_id, plan_key, status, current_period_start, current_period_end,
                                        cancel_at_period_end, ended_at, created_at)
select s.id, bench_revenue.cust(s.i), last.plan, last.status, first.valid_from, last.period_end, last.cancel_end,
       case when last.cancel_end then last.period_end end, first.valid_from
  from subs s
  cross join lateral (select * from states x where x.i = s.i and x.n = s.n order by x.valid_from desc limit 1) last
  cross join lateral (select * from states x where x.i = s.i and x.n = s.n order by x.valid_from limit 1) first;

insert into entitlements.subscription_history (
    subscription_id, customer_id, valid_from, valid_to, plan_key, status, quantity, price_cents, currency,
    billing_interval, current_period_start, current_period_end, trial_end, cancel_at_period_end, ended_at)
select s.id, bench_revenue.cust(x.i), x.valid_from, x.valid_to, x.plan, x.status, 1, p.price_cents, 'usd', p.interval,
       x.valid_from, x.period_end, case when x.status = 'trialing' then x.period_end end, x.cancel_end,
       case when x.cancel_end then x.period_end end
  from states x
  join subs s on s.i = x.i and s.n = x.n
  join entitlements.plans p on p.key = x.plan;

-- A 50% coupon for the first three months of one customer in six.
insert into entitlements.discounts (subscription_id, customer_id, source, percent_off, starts_at, ends_at)
select s.id, bench_revenue.cust(s.i), 'coupon', 50, h.valid_from, h.valid_from + interval '3 months'
  from subs s
  join lateral (select min(x.valid_from) as valid_from from states x where x.i = s.i and x.n = s.n) h on true
 where s.i % 6 = 0 and s.n = 1;

reset session_replication_role;
analyze entitlements.subscription_history;
analyze entitlements.subscriptions;
analyze entitlements.discounts;
analyze entitlements.customers;
