-- Benchmark data for consume: customers 20001..30000 (10,000) and one hot customer
-- (20000) on the Business plan (api_requests: 1,000,000 a month, one period, so the
-- extension counts one window like the baseline counts one row). Runs after
-- bench/has_feature/setup.sql, which creates bench.cid().
\set ON_ERROR_STOP 1
select count(entitlements.subscribe(bench.cid(i), 'business')) from generate_series(20000, 30000) i;

-- The baseline: how apps write it by hand. One counter row per customer and a ledger.
create table bench.counters (
    customer_id uuid primary key,
    used        bigint not null default 0,
    lim         bigint not null
);
insert into bench.counters (customer_id, lim) select bench.cid(i), 1000000 from generate_series(20000, 30000) i;
create table bench.ledger (
    id          bigint generated always as identity primary key,
    at          timestamptz not null default now(),
    customer_id uuid not null,
    feature     text not null,
    amount      bigint not null
);
create index on bench.ledger (customer_id, at);

-- The hot customer never runs out in a full run (every round counts consume twice, with and
-- without usage thresholds): 100,000,000 more on both sides.
select entitlements.boost_quota(bench.cid(20000), 'api_requests', 100000000, reason => 'bench: hot customer')
       is not null;
update bench.counters set lim = lim + 100000000 where customer_id = bench.cid(20000);

-- The race check: customer 31000 may make exactly 1,000 calls this month.
select entitlements.override_feature(bench.cid(31000), 'api_requests', '{"limit": 1000, "period": "month"}',
                                     reason => 'overshoot check') is not null;
insert into bench.counters (customer_id, lim) values (bench.cid(31000), 1000);
analyze;
