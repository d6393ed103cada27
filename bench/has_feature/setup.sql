-- Benchmark data for has_feature: 1,000 customers in every situation the rule knows,
-- 200,000 rows owned by them. Deterministic (setseed), so runs are comparable.
\set ON_ERROR_STOP 1
select setseed(0.42);
create schema bench;

-- Customers 1..1000: uuid from the number, so the data is the same every run.
create function bench.cid(i int) returns uuid language sql immutable
as $$ select ('00000000-0000-0000-0000-' || lpad(to_hex(i), 12, '0'))::uuid $$;

insert into entitlements.customers (id) select bench.cid(i) from generate_series(1, 1000) i;

-- 101..200 are organizations' members; organizations are 9001..9050.
select entitlements.subscribe(bench.cid(9000 + o), case when o % 2 = 0 then 'business' else 'enterprise' end)
  from generate_series(1, 50) o;
select entitlements.add_member(bench.cid(9000 + (i % 50) + 1), bench.cid(i)) from generate_series(101, 200) i;

select case
    when i <= 100 then null                                                       -- default plan only
    when i <= 200 then null                                                       -- organization members
    when i <= 400 then entitlements.subscribe(bench.cid(i), 'pro', period_end => now() + interval '20 days')
    when i <= 450 then entitlements.subscribe(bench.cid(i), 'pro', period_end => now() + interval '1 day')  -- lapses below
    when i <= 500 then entitlements.subscribe(bench.cid(i), 'pro', 'trialing')
    when i <= 550 then entitlements.subscribe(bench.cid(i), 'pro', 'trialing', trial_end => now() + interval '1 hour')
    when i <= 600 then entitlements.subscribe(bench.cid(i), 'pro', 'past_due')
    when i <= 650 then entitlements.subscribe(bench.cid(i), 'pro', 'unpaid')
    when i <= 700 then entitlements.subscribe(bench.cid(i), 'business', 'paused')
    when i <= 800 then entitlements.subscribe(bench.cid(i), 'business', period_end => now() + interval '5 days')
    else entitlements.subscribe(bench.cid(i), 'free')
  end
  from generate_series(1, 1000) i;
-- Canceled at period end (still granting) and canceled now (not).
select entitlements.cancel(s.id, true) from entitlements.subscriptions s
 where s.customer_id in (select bench.cid(i) from generate_series(381, 400) i);
select entitlements.cancel(s.id, false) from entitlements.subscriptions s
 where s.customer_id in (select bench.cid(i) from generate_series(361, 380) i);
-- Time passes: periods and trials that ended.
update entitlements.subscriptions
   set current_period_start = now() - interval '31 days', current_period_end = now() - interval '1 day'
 where customer_id in (select bench.cid(i) from generate_series(401, 450) i);
update entitlements.subscriptions set trial_end = now() - interval '1 hour'
 where customer_id in (select bench.cid(i) from generate_series(501, 550) i);
-- past_due beyond its grace period for half of them.
update entitlements.subscriptions set status_changed_at = now() - interval '40 days'
 where customer_id in (select bench.cid(i) from generate_series(576, 600) i);
-- Grants: some on, some expired, some denies.
select entitlements.grant_feature(bench.cid(i), 'advanced_agents', reason => 'beta') from generate_series(1, 1000, 37) i;
select entitlements.grant_feature(bench.cid(i), 'sso', reason => 'pilot') from generate_series(3, 1000, 41) i;
insert into entitlements.grants (customer_id, kind, feature_key, starts_at, expires_at, reason)
select bench.cid(i), 'feature', 'advanced_agents', now() - interval '10 days', now() - interval '1 day', 'expired'
  from generate_series(5, 1000, 23) i;
select entitlements.deny_feature(bench.cid(i), 'advanced_agents', reason => 'abuse') from generate_series(7, 1000, 29) i;

create table bench.docs (id bigint primary key, owner uuid not null, body text not null);
insert into bench.docs
select n, bench.cid(1 + (random() * 999)::int), md5(n::text) from generate_series(1, 200000) n;
vacuum analyze bench.docs;
