\set ON_ERROR_STOP 1
\set QUIET 1
-- Usage cost (issue #12), worked by hand with the test clock over March 2025 (31 days).
--   X  Mar 1 basic (1000/month); Mar 10 consumes 30 minutes (limit 25, overage billed at 5:
--      5 over = 25 charged; cost 30 x 1) and records 10 AI calls (cost 10 x 2 = 20) and one
--      with its own cost (7); Mar 15 minutes start to cost 3; Mar 20 moves to pro (3000);
--      Mar 21 consumes 10 minutes on pro (cost 10 x 3 = 30).
--   Y  Mar 16 basic.
-- Subscription revenue: X 1000 x 19/31 on basic + 3000 x 12/31 on pro; Y 1000 x 16/31.
--   basic: 612.90 + 516.13 + 25 overage = 1154; cost 30 + 20 + 7 = 57; margin 1097
--   pro:   1161.29 = 1161; cost 30; margin 1131
begin;
select plan(25);

set entitlements.clock = '2025-03-01 00:00:00+00';
create temp table doc as select $${
  "features": [
    {"key": "minutes", "kind": "metered", "unit": "minute", "unit_cost_cents": 1},
    {"key": "ai_calls", "kind": "metered", "unit_cost_cents": 2},
    {"key": "agents", "kind": "flag"}],
  "plans": [
    {"key": "free", "name": "Free", "default": true, "entitlements": {}},
    {"key": "basic", "name": "Basic", "price_cents": 1000,
     "entitlements": {"minutes": {"limit": 25, "period": "month", "overage": "bill", "unit_price_cents": 5}}},
    {"key": "pro", "name": "Pro", "price_cents": 3000,
     "entitlements": {"minutes": {"limit": 1000, "period": "month"}}}]}$$::jsonb as d;
select entitlements.apply_catalog((select d from doc)) is not null as applied \gset
select throws_ok($$select entitlements.apply_catalog('{"features": [{"key": "agents", "kind": "flag", "unit_cost_cents": 1}]}')$$,
                 '22023', NULL, 'only metered features have a unit cost');
select throws_ok($$select entitlements.apply_catalog('{"features": [{"key": "minutes", "kind": "metered", "unit_cost_cents": -1}]}')$$,
                 '22023', NULL, 'a unit cost is not negative');

\set x '''00000000-0000-0000-0000-0000000c0501'''
\set y '''00000000-0000-0000-0000-0000000c0502'''
select entitlements.subscribe(:x, 'basic') as sx \gset

set entitlements.clock = '2025-03-10 00:00:00+00';
select is((select used from entitlements.consume(:x, 'minutes', 30)), 30::numeric, 'X consumes 30 minutes (5 over, billed)');
select is((select array[recorded_cost_cents, replayed::int] from entitlements.record_usage(:x, 'ai_calls', 10)),
          array[20, 0]::numeric[], 'record_usage prices 10 AI calls at the unit cost: 20');
select is((select array[recorded_cost_cents, replayed::int]
             from entitlements.record_usage(:x, 'ai_calls', 1, 7, '{"model": "large"}', 'call-1')),
          array[7, 0]::numeric[], 'or takes the cost given');
select is((select array[recorded_cost_cents, replayed::int]
             from entitlements.record_usage(:x, 'ai_calls', 1, 7, '{"model": "large"}', 'call-1')),
          array[7, 1]::numeric[], 'the same idempotency key records once');
select is((select count(*) from entitlements.usage_ledger where feature_key = 'ai_calls'), 2::bigint, 'two rows in the ledger');
select is((select metadata ->> 'model' from entitlements.usage_ledger where idempotency_key = 'call-1'), 'large',
          'with the metadata');
select is((select at from entitlements.usage_ledger where idempotency_key = 'call-1'), '2025-03-10 00:00:00+00'::timestamptz,
          'dated by the clock');
select is((select used from entitlements.check(:x, 'ai_calls')), 0::numeric, 'recorded usage counts against no quota');
select throws_ok(format($$select * from entitlements.record_usage(%L, 'agents', 1)$$, :x), '22023', NULL,
                 'a flag has no usage');
select throws_ok(format($$select * from entitlements.record_usage(%L, 'nope', 1)$$, :x), '22023', NULL, 'an unknown feature');
select throws_ok(format($$select * from entitlements.record_usage(%L, 'ai_calls', 0)$$, :x), '22023', NULL, 'a zero amount');
select throws_ok(format($$select * from entitlements.record_usage(%L, 'ai_calls', 1, -1)$$, :x), '22023', NULL, 'a negative cost');
select throws_ok(format($$select * from entitlements.record_usage(%L, 'ai_calls', 1, null, '[1]')$$, :x), '22023', NULL,
                 'metadata that is not an object');
select throws_ok(format($$select * from entitlements.record_usage(%L, 'ai_calls', 2, 7, '{}', 'call-1')$$, :x), '22023', NULL,
                 'an idempotency key reused with other parameters');
select is((select count(*) from entitlements.usage_ledger where feature_key = 'ai_calls'), 2::bigint, 'refusals wrote nothing');

set entitlements.clock = '2025-03-15 00:00:00+00';
select entitlements.apply_catalog(jsonb_set((select d from doc), '{features,0,unit_cost_cents}', '3')) is not null as applied \gset
select is((select array_agg(unit_cost_cents order by valid_from) from entitlements.feature_unit_costs where feature_key = 'minutes'),
          array[1, 3]::numeric[], 'the unit cost''s history is kept');
set entitlements.clock = '2025-03-16 00:00:00+00';
select entitlements.subscribe(:y, 'basic') as sy \gset
set entitlements.clock = '2025-03-20 00:00:00+00';
select entitlements.change_plan(:'sx', 'pro', 'upgrade') is null as done \gset
set entitlements.clock = '2025-03-21 00:00:00+00';
select is((select used from entitlements.consume(:x, 'minutes', 10)), 40::numeric, 'X consumes 10 more on pro');
set entitlements.clock = '2025-04-02 00:00:00+00';

select is((select array_agg(array[plan_key, coalesce(feature_key, '-'), customers::text, coalesce(units::text, '-'),
                                  revenue_cents::text, cost_cents::text, margin_cents::text] order by plan_key, feature_key nulls first)
             from entitlements.usage_report('2025-03-01 00:00:00+00', '2025-04-01 00:00:00+00')),
          array[array['basic', '-', '2', '-', '1154', '57', '1097'],
                array['basic', 'ai_calls', '1', '11', '0', '27', '-27'],
                array['basic', 'minutes', '1', '30', '25', '30', '-5'],
                array['pro', '-', '1', '-', '1161', '30', '1131'],
                array['pro', 'minutes', '1', '10', '0', '30', '-30']],
          'revenue, usage, cost and margin by plan and feature');
select is((select revenue_cents from entitlements.usage_report('2025-03-01 00:00:00+00', '2025-03-02 00:00:00+00')
            where plan_key = 'basic' and feature_key is null),
          32::numeric, 'one day of basic is 1000 / 31');

-- Who may record and read ------------------------------------------------------------------------
set local role authenticated;
select set_config('request.jwt.claims', json_build_object('sub', :y)::text, true) is not null as signed_in \gset
select lives_ok(format($$select * from entitlements.record_usage(%L, 'ai_calls', 1)$$, :y), 'Y records its own usage');
select throws_ok(format($$select * from entitlements.record_usage(%L, 'ai_calls', 1, 0)$$, :y), '42501', NULL,
                 'but not its cost: that is the business''s figure');
select throws_ok(format($$select * from entitlements.record_usage(%L, 'ai_calls', 1)$$, :x), '42501', NULL,
                 'not another customer''s');
select throws_ok($$select * from entitlements.usage_report('2025-03-01', '2025-04-01')$$, '42501', NULL,
                 'nor reads the report');
reset role;

select * from finish();
rollback;
