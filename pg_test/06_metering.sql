\set ON_ERROR_STOP 1
\set QUIET 1
-- Metering in one session: check, consume, try_consume, periods, overage, grants,
-- idempotency, bad input, concurrency slots and the ledger. The races are in tests/.
begin;
select plan(79);

select entitlements.apply_catalog($json$
{
  "features": [
    {"key": "api",     "kind": "metered"},
    {"key": "audio",   "kind": "metered", "unit": "minute"},
    {"key": "exports", "kind": "metered"},
    {"key": "tokens",  "kind": "metered"},
    {"key": "gpu",     "kind": "metered"},
    {"key": "jobs",    "kind": "concurrency"},
    {"key": "agents",  "kind": "flag"}
  ],
  "plans": [
    {"key": "free", "name": "Free", "price_cents": 0, "default": true, "public": true,
     "entitlements": {"api": [{"limit": 5, "period": "day"}, {"limit": 3, "period": "month"}],
                      "audio": {"limit": 10, "period": "month"},
                      "exports": {"limit": 2, "period": "lifetime"},
                      "tokens": {"limit": 100, "period": "billing_period"},
                      "jobs": 2}},
    {"key": "starter", "name": "Starter (hidden)", "price_cents": 500,
     "entitlements": {"api": [{"limit": 1000, "period": "day"}], "gpu": 1}},
    {"key": "pro", "name": "Pro", "price_cents": 1900, "public": true,
     "entitlements": {"api": [{"limit": 2, "period": "day"}, {"limit": 100, "period": "month"}],
                      "audio": {"limit": 300, "period": "month", "overage": "bill", "unit_price_cents": 5},
                      "tokens": {"limit": 1000, "period": "billing_period"},
                      "jobs": 5}},
    {"key": "scale", "name": "Scale", "price_cents": 9900, "public": true,
     "entitlements": {"api": [{"limit": 10000, "period": "month"}],
                      "audio": {"limit": 20, "period": "month", "overage": "allow"},
                      "gpu": {"limit": 50, "period": "month"}, "jobs": null}}
  ]
}
$json$) is not null as catalog_applied \gset

\set f '''00000000-0000-0000-0000-0000000000f1'''
\set p '''00000000-0000-0000-0000-0000000000f2'''
\set s '''00000000-0000-0000-0000-0000000000f3'''
\set x '''00000000-0000-0000-0000-0000000000f4'''

-- Free: api is 5 a day and 3 a month; both are checked on every request.
select is((entitlements.check(:f, 'api')).allowed, true, 'check allows the first call');
select is((select (c.limit, c.used, c.remaining) from entitlements.consume(:f, 'api') c),
          (3::numeric, 1::numeric, 2::numeric), 'consume answers the binding limit (month: 3), used 1, remaining 2');
select is((entitlements.consume(:f, 'api', 2)).remaining, 0::numeric, 'two more use the month up');
select throws_ok($$select entitlements.consume('00000000-0000-0000-0000-0000000000f1', 'api')$$,
                 'PT429', 'quota exceeded for feature "api": limit 3 per month',
                 'the fourth call is refused with PT429 by the month limit although the day allows 5');
select is((select count(*) from entitlements.usage_ledger where customer_id = :f), 2::bigint,
          'the refused call left nothing in the ledger');

-- The error's HINT names the cheapest public plan that would allow it: not the hidden
-- Starter, and not Pro, whose day limit of 2 the 3 calls made today already exceed.
create function pg_temp.error_parts(sql text) returns text[] language plpgsql as $$
declare m text; d text; h text; c text;
begin
    execute sql;
    return null;
exception when others then
    get stacked diagnostics m = message_text, d = pg_exception_detail, h = pg_exception_hint, c = returned_sqlstate;
    return array[c, m, d, h];
end $$;
select pg_temp.error_parts($$select entitlements.consume('00000000-0000-0000-0000-0000000000f1', 'api')$$) as e \gset
select is((:'e'::text[])[1], 'PT429', 'SQLSTATE PT429 (PostgREST answers HTTP 429)');
select is((:'e'::text[])[4], 'Upgrade to the "scale" plan to allow it.', 'HINT: the cheapest public plan with room in that period');
select matches((:'e'::text[])[3], '^3 of 3 used; the count resets at \d{4}-\d\d-01T00:00:00Z\.$',
               'DETAIL: usage and when the month resets');

-- The day limit binds first when it is smaller: Pro allows 2 a day (100 a month).
select entitlements.subscribe(:p, 'pro', period_end => now() + interval '30 days') is not null as sp \gset
select is((entitlements.consume(:p, 'api', 2)).resets_at, date_trunc('day', now(), 'UTC') + interval '1 day',
          'Pro: the day limit binds, resets at next midnight UTC');
select pg_temp.error_parts($$select entitlements.consume('00000000-0000-0000-0000-0000000000f2', 'api')$$) as e \gset
select is((:'e'::text[])[2], 'quota exceeded for feature "api": limit 2 per day', 'the third call today is refused by the day limit');

-- try_consume answers instead of raising, and changes nothing.
select is((select (t.allowed, t.limit, t.used) from entitlements.try_consume(:p, 'api') t),
          (false, 2::numeric, 2::numeric), 'try_consume: allowed = false with the binding limit');
select is((select sum(used) from entitlements.usage_counters where customer_id = :p and feature_key = 'api'),
          4::numeric, 'a refused try_consume counted nothing (2 per period, day and month)');
select is((entitlements.check(:p, 'api')).allowed, false, 'check agrees');

-- Rollback un-consumes (the count lives in the caller's transaction).
savepoint before_audio;
select is((entitlements.consume(:p, 'audio', 30)).used, 30::numeric, 'audio 30 counted');
rollback to savepoint before_audio;
select is((entitlements.check(:p, 'audio')).used, 0::numeric, 'rolled back: audio is 0 again');

-- Idempotency: the same key twice consumes once; another feature with it is refused.
select is((entitlements.consume(:p, 'audio', 7, 'upload-42')).used, 7::numeric, 'keyed consume counts 7');
select is((select (c.allowed, c.used) from entitlements.consume(:p, 'audio', 7, 'upload-42') c),
          (true, 7::numeric), 'the same key again: allowed, counted once');
select is((select count(*) from entitlements.usage_ledger where idempotency_key = 'upload-42'), 1::bigint, 'one ledger row for the key');
select throws_ok($$select entitlements.consume('00000000-0000-0000-0000-0000000000f2', 'audio', 8, 'upload-42')$$,
                 '22023', null, 'the same key with other parameters is refused');
select is((select (t.allowed) from entitlements.try_consume(:f, 'exports', 5, 'big-export') t), false,
          'a refused keyed try_consume ...');
select is((select count(*) from entitlements.usage_idempotency where idempotency_key = 'big-export'), 0::bigint,
          '... does not burn its key');

-- Overage "bill": usage goes through, the units over the limit are recorded with their price.
select is((select (c.allowed, c.limit, c.used, c.remaining) from entitlements.consume(:p, 'audio', 290) c),
          (true, 300::numeric, 297::numeric, 3::numeric), 'audio within the limit');
select is((entitlements.consume(:p, 'audio', 10)).used, 307::numeric, 'over the limit with overage bill: allowed');
select is((select (overage, unit_price_cents, cost_cents) from entitlements.usage_ledger
            where customer_id = :p and feature_key = 'audio' order by id desc limit 1),
          (7::numeric, 5::numeric, 35::numeric), 'the ledger records 7 units over at 5 cents: 35 cents');
select is((select (overage, cost_cents) from entitlements.usage_ledger
            where customer_id = :p and feature_key = 'audio' and amount = 290), (0::numeric, 0::numeric),
          'a consumption within the limit has no overage');
-- Overage "allow": through, counted as overage, no cost.
select entitlements.subscribe(:s, 'scale') is not null as ss \gset
select is((entitlements.consume(:s, 'audio', 25)).used, 25::numeric, 'overage allow: 25 of 20 goes through');
select is((select (overage, cost_cents) from entitlements.usage_ledger where customer_id = :s and feature_key = 'audio'),
          (5::numeric, 0::numeric), 'allow: 5 units over, no cost');
select is((entitlements.check(:s, 'audio', 1000)).allowed, true, 'check allows more under allow');

-- Lifetime counts never reset.
select is((select (c.used, c.resets_at) from entitlements.consume(:f, 'exports', 2) c), (2::numeric, null::timestamptz),
          'lifetime: no reset time');
select throws_ok($$select entitlements.consume('00000000-0000-0000-0000-0000000000f1', 'exports')$$,
                 'PT429', 'quota exceeded for feature "exports": limit 2 per lifetime', 'lifetime limit enforced');
select pg_temp.error_parts($$select entitlements.consume('00000000-0000-0000-0000-0000000000f1', 'exports')$$) as e \gset
select is((:'e'::text[])[3], '2 of 2 used; a lifetime quota does not reset.', 'DETAIL says it never resets');

-- Windows: usage of an earlier window does not count (the count resets at the boundary, no job).
insert into entitlements.usage_counters (customer_id, feature_key, period, window_start, window_end, stripe, used, cap, basis)
values (:x, 'audio', 'month', date_trunc('month', now(), 'UTC') - interval '1 month', date_trunc('month', now(), 'UTC'), 0, 10, 10, 10);
select is((select (c.allowed, c.used) from entitlements.consume(:x, 'audio', 10) c), (true, 10::numeric),
          'last month''s full count does not limit this month');

-- billing_period follows the subscription: a renewal starts a fresh count.
select is((entitlements.consume(:p, 'tokens', 400)).used, 400::numeric, 'tokens counted in the billing period');
select is((entitlements.check(:p, 'tokens')).resets_at,
          (select current_period_end from entitlements.subscriptions where customer_id = :p),
          'billing_period resets at the subscription''s period end');
update entitlements.subscriptions set current_period_start = clock_timestamp(),
       current_period_end = clock_timestamp() + interval '1 month' where customer_id = :p;
select is((entitlements.check(:p, 'tokens')).used, 0::numeric, 'after a renewal the billing period count starts at 0');
select is((entitlements.check(:f, 'tokens')).resets_at, date_trunc('month', now(), 'UTC') + interval '1 month',
          'without a subscription billing_period is the calendar month');

-- Grants raise limits and show in check.
select entitlements.boost_quota(:p, 'api', 3, 'day', now() + interval '1 day', reason => 'launch week') is not null as b \gset
select is((select (c.allowed, c.limit, c.remaining) from entitlements.check(:p, 'api') c),
          (true, 5::numeric, 3::numeric), 'a day boost of 3: limit 5, remaining 3');
select is((entitlements.consume(:p, 'api', 3)).remaining, 0::numeric, 'the boost can be consumed');
select entitlements.boost_quota(:f, 'exports', 1, reason => 'support ticket') is not null as b2 \gset
select is((entitlements.consume(:f, 'exports')).used, 3::numeric, 'a boost also lifts a limit already reached');

-- entitlements() shows the counts.
select is(entitlements.entitlements(:p) -> 'features' -> 'audio' -> 'used', '307'::jsonb, 'entitlements() shows used');
select is(entitlements.entitlements(:p) -> 'features' -> 'api' -> 'limits' -> 1 -> 'used', '5'::jsonb,
          'and per period (api this month: 5)');
select is(entitlements.entitlements(:p) -> 'features' -> 'audio' -> 'remaining', '0'::jsonb, 'remaining never below 0');

-- Not part of the plan: PT403 with the cheapest public plan that has it.
select pg_temp.error_parts($$select entitlements.consume('00000000-0000-0000-0000-0000000000f1', 'gpu')$$) as e \gset
select is((:'e'::text[])[1:2], array['PT403', 'feature "gpu" is not included in your plan'], 'a feature the plan lacks: PT403');
select is((:'e'::text[])[4], 'Upgrade to the "scale" plan to use it.', 'HINT names the cheapest public plan with it');
select is((select (t.allowed, t.limit) from entitlements.try_consume(:f, 'gpu') t), (false, 0::numeric), 'try_consume: false, limit 0');

-- Bad input: a clear SQLSTATE, never XX000, and nothing written.
select count(*) as ledger_before from entitlements.usage_ledger \gset
select throws_ok($$select entitlements.consume('00000000-0000-0000-0000-0000000000f2', 'audio', -1)$$, '22023', 'amount must be a positive number, got -1 (at most 1e15)', 'negative amount');
select throws_ok($$select entitlements.consume('00000000-0000-0000-0000-0000000000f2', 'audio', 0)$$, '22023', 'amount must be a positive number, got 0 (at most 1e15)', 'zero amount');
select throws_ok($$select entitlements.consume('00000000-0000-0000-0000-0000000000f2', 'audio', 'NaN')$$, '22023', null, 'NaN amount');
select throws_ok($$select entitlements.consume(null, 'audio')$$, '22004', 'customer must not be NULL', 'NULL customer');
select throws_ok($$select entitlements.consume('00000000-0000-0000-0000-0000000000f2', 'nope')$$, '22023', 'unknown feature "nope"', 'unknown feature');
select throws_ok($$select entitlements.consume('00000000-0000-0000-0000-0000000000f2', 'agents')$$, '22023',
                 'feature "agents" is a flag feature, not metered', 'a feature that is not metered');
select throws_ok($$select entitlements.check('00000000-0000-0000-0000-0000000000f2', 'jobs')$$, '22023',
                 'feature "jobs" is a concurrency feature, not metered', 'check refuses non-metered features too');
select is((select count(*) from entitlements.usage_ledger), :'ledger_before'::bigint, 'bad input wrote nothing');

-- Concurrency slots: held until the end of the transaction (cross-session and crash tests in tests/).
select is(array[entitlements.acquire(:f, 'jobs'), entitlements.acquire(:f, 'jobs'), entitlements.acquire(:f, 'jobs')],
          array[true, true, false], 'Free has 2 job slots: the third acquire is refused');
select is(entitlements.slots_in_use(:f, 'jobs'), 2, 'slots_in_use sees both');
select is(entitlements.acquire(:s, 'jobs'), true, 'unlimited slots always acquire');
select throws_ok($$select entitlements.acquire('00000000-0000-0000-0000-0000000000f1', 'api')$$, '22023',
                 'feature "api" is a metered feature, not concurrency', 'acquire refuses non-concurrency features');

-- The ledger and the counters agree; partitions take over from the default partition.
select is((select count(*) from entitlements.usage_drift()), 1::bigint,
          'drift shows exactly the counter written by hand above (no ledger row)');
delete from entitlements.usage_counters where customer_id = :x and window_start < date_trunc('month', now(), 'UTC');
select is((select count(*) from entitlements.usage_drift()), 0::bigint, 'counters equal the ledger');
select is(entitlements.ensure_usage_partitions(2), 3, 'three monthly partitions created');
select is((select count(*) from entitlements.usage_ledger_default), 0::bigint, 'rows moved out of the default partition');
select is(entitlements.ensure_usage_partitions(2), 0, 'idempotent');
select is((select count(*) from entitlements.usage_drift()), 0::bigint, 'still no drift after the move');

-- Retention: a month older than `keep` is dropped; its lifetime usage is kept as a rollup.
create table entitlements.usage_ledger_2024_01 partition of entitlements.usage_ledger
    for values from ('2024-01-01 00:00:00+00') to ('2024-02-01 00:00:00+00');
insert into entitlements.usage_ledger (at, customer_id, feature_key, amount, periods) values
    ('2024-01-15 12:00:00+00', :x, 'exports', 4, '{lifetime,month}'),
    ('2024-03-15 12:00:00+00', :x, 'exports', 1, '{lifetime}');
insert into entitlements.usage_counters (customer_id, feature_key, period, window_start, window_end, stripe, used, cap, basis) values
    (:x, 'exports', 'lifetime', '1970-01-01 00:00:00+00', null, 0, 5, 5, 5),
    (:x, 'exports', 'month', '2024-01-01 00:00:00+00', '2024-02-01 00:00:00+00', 0, 4, 4, 4);
select is((select count(*) from entitlements.usage_drift()), 0::bigint, 'old usage reconciles before retention');
select is(entitlements.drop_usage_partitions('13 months'), 1, 'retention drops the old month''s partition');
select ok(to_regclass('entitlements.usage_ledger_2024_01') is null, 'the partition is gone');
select is((select count(*) from entitlements.usage_ledger where at < '2025-01-01'), 0::bigint,
          'old rows of the default partition are gone too');
select is((select sum(amount) from entitlements.usage_rollup where customer_id = :x), 5::numeric,
          'their lifetime usage is kept as a rollup');
select is((select count(*) from entitlements.usage_counters where customer_id = :x and window_start < '2025-01-01'
             and period <> 'lifetime'), 0::bigint, 'counters of old closed windows are gone');
select is((select count(*) from entitlements.usage_drift()), 0::bigint, 'lifetime counts still reconcile');

-- RLS: a signed-in user meters only themselves and sees only their own usage.
set local role authenticated;
select set_config('request.jwt.claims', '{"sub": "00000000-0000-0000-0000-0000000000f1", "role": "authenticated"}', true) is not null as c \gset
select is((select count(distinct customer_id) from entitlements.usage_counters), 1::bigint, 'a user sees only their own counters');
select is((entitlements.check(:f, 'audio')).allowed, true, 'and may check their own usage');
select throws_ok($$select entitlements.consume('00000000-0000-0000-0000-0000000000f2', 'audio')$$, '42501', null,
                 'but not consume another customer''s quota');
select throws_ok($$insert into entitlements.usage_ledger (at, customer_id, feature_key, amount, periods)
                   values (now(), '00000000-0000-0000-0000-0000000000f1', 'api', 1, '{}')$$, '42501', null,
                 'nor write the ledger directly');
reset role;

-- consume is inlined into the caller's query even when an argument is a costly
-- expression (a PL/pgSQL helper, a subquery): a SQL function that is not inlined is
-- planned again on every call. sql/metering/consume.sql says how.
create function pg_temp.plan_of(q text) returns text language plpgsql as $$
declare
    line text;
    plan text := '';
begin
    for line in execute 'explain (verbose, costs off) ' || q loop
        plan := plan || line || E'\n';
    end loop;
    return plan;
end
$$;
create function pg_temp.uid() returns uuid language plpgsql stable
as $$ begin return nullif(current_setting('request.jwt.claim.sub', true), '')::uuid; end $$;
select matches(pg_temp.plan_of($$select entitlements.consume(pg_temp.uid(), 'audio')$$), '_consume_fast',
               'consume is inlined when the customer is a PL/pgSQL function call');
select matches(pg_temp.plan_of($$select entitlements.try_consume((select pg_temp.uid()), 'audio', 2)$$), '_consume_fast',
               'so is try_consume, with a subquery');
select throws_ok($$select entitlements._meter_pending('consume')$$, '55000', null,
                 '_meter_pending meters only what _consume_fast just left to it');

-- The counters and the ledger carry no CHECK constraints (sql/metering/tables.sql says why); after
-- everything above, their invariants still hold.
select is((select count(*) from entitlements.usage_counters
            where period not in ('day', 'month', 'billing_period', 'lifetime')
               or stripe not between 0 and 15 or used < 0 or cap < 0),
          0::bigint, 'every counter row is well-formed');
select is((select count(*) from entitlements.usage_ledger where amount <= 0 or overage < 0 or cost_cents < 0),
          0::bigint, 'every ledger row is well-formed');

select * from finish();
rollback;
