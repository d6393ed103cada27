\set ON_ERROR_STOP 1
\set QUIET 1
-- The test clock (issue #12): a superuser's session lives at another instant, frozen; the
-- rules, writes and caches follow it, and reset returns to real time.
begin;
select plan(15);
\ir fixtures/catalog.sql
\set c '''00000000-0000-0000-0000-00000000c10c'''

select entitlements.subscribe(:c, 'pro', period_end => now() + interval '10 days') as s \gset
select ok(entitlements.has_feature(:c, 'agents'), 'Pro grants now');
set entitlements.clock = '2099-01-01 00:00:00+00';
select is(entitlements.now(), '2099-01-01 00:00:00+00'::timestamptz, 'now() is the clock');
select ok(not entitlements.has_feature(:c, 'agents'), 'in 2099 the period has ended: the cached answer is dropped');
select is((entitlements.entitlements(:c) ->> 'as_of')::timestamptz, '2099-01-01 00:00:00+00'::timestamptz,
          'entitlements() is as of the clock');
reset entitlements.clock;
select ok(entitlements.has_feature(:c, 'agents'), 'and back in real time it grants again');

set entitlements.clock = '2030-03-15 12:00:00+00';
select is((select resets_at from entitlements.consume(:c, 'minutes', 1)), '2030-04-01 00:00:00+00'::timestamptz,
          'consume counts in the clock''s month (Free''s 60 a month: Pro''s period ended by then)');
select is((select at from entitlements.usage_ledger where customer_id = :c order by id desc limit 1),
          '2030-03-15 12:00:00+00'::timestamptz, 'its ledger row is dated by the clock');

set timezone = 'Asia/Tokyo';
set entitlements.clock = 'now';
select is(current_setting('entitlements.clock'), to_char(now() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
          'a relative value is kept as the instant it meant, in UTC');
reset timezone;
select throws_ok($$set entitlements.clock = 'garbage'$$, '22007', NULL, 'garbage is refused');
select throws_ok($$set entitlements.clock = 'infinity'$$, '22023', NULL, 'so is infinity');
select throws_ok($$set entitlements.clock = '294276-12-31 23:59:59+00'$$, '22023', NULL, 'and an instant after the year 9999');
select throws_ok($$set entitlements.clock = '0044-03-15 00:00:00+00 BC'$$, '22023', NULL, 'or before the year 1');
set entitlements.clock = '9999-12-31 23:59:59.999999+00';
select is(entitlements.now(), '9999-12-31 23:59:59.999999+00'::timestamptz, 'the last instant of 9999 is fine');
reset entitlements.clock;

create role clock_mallory login;
set local role clock_mallory;
select throws_ok($$set entitlements.clock = '2000-01-01'$$, '42501', NULL, 'a plain role cannot set it');
select throws_ok($$select set_config('entitlements.clock', '2000-01-01', false)$$, '42501', NULL, 'nor through set_config');
reset role;

select * from finish();
rollback;
