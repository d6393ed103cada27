\set ON_ERROR_STOP 1
\set QUIET 1
-- Revenue, worked by hand (issue #12). The test clock walks eight customers through
-- December 2024 to March 2025; every figure below is computed in the comments.
--
-- Plans: free 0, basic 1000/month, pro 3000/month (14-day trial), pro_annual 24000/year
-- (2000 a month). Coupons: HALF12 50% repeating 12 months, HALF2 50% repeating 2 months
-- for first purchases.
--   A  Dec 15 basic; Feb 10 upgrades to pro.              1000 1000 3000 3000
--   B  Dec  1 pro; Mar 5 downgrades to basic.             3000 3000 3000 1000
--   C  Dec 20 basic until Feb 20; Jan 25 cancels at
--      period end (churn dated Feb 20).                   1000 1000    0    0
--   D  Dec  1 basic; Jan 10 cancels now; Feb 15 comes
--      back (a reactivation).                             1000    0 1000 1000
--   E  Jan  5 pro_annual with HALF12: 24000 / 12 * 50%.      0 1000 1000 1000
--   F  Jan 10 pro trial; Jan 24 converts, redeems HALF2
--      (until Mar 24): 1500, then 3000.                      0 1500 1500 3000
--   G  Feb  1 pro trial that never converts.                 0    0    0    0
--   H  Jan  3 free; Mar 10 upgrades to basic.                0    0    0 1000
--                            MRR on Jan 1, Feb 1, Mar 1, Apr 1:  6000 7500 9500 10000
begin;
select plan(54);

select entitlements.apply_catalog($${
  "features": [{"key": "agents", "kind": "flag"}],
  "plans": [
    {"key": "free", "name": "Free", "price_cents": 0, "default": true, "public": true, "entitlements": {}},
    {"key": "basic", "name": "Basic", "price_cents": 1000, "interval": "month", "entitlements": {"agents": true}},
    {"key": "pro", "name": "Pro", "price_cents": 3000, "interval": "month", "trial_days": 14,
     "entitlements": {"agents": true}},
    {"key": "pro_annual", "name": "Pro (yearly)", "price_cents": 24000, "interval": "year",
     "entitlements": {"agents": true}}]}$$) is not null as applied \gset

\set a '''00000000-0000-0000-0000-00000000a001'''
\set b '''00000000-0000-0000-0000-00000000a002'''
\set c '''00000000-0000-0000-0000-00000000a003'''
\set d '''00000000-0000-0000-0000-00000000a004'''
\set e '''00000000-0000-0000-0000-00000000a005'''
\set f '''00000000-0000-0000-0000-00000000a006'''
\set g '''00000000-0000-0000-0000-00000000a007'''
\set h '''00000000-0000-0000-0000-00000000a008'''

-- The clock -----------------------------------------------------------------------------------------
set entitlements.clock = '2024-12-01 00:00:00+00';
select is(entitlements.now(), '2024-12-01 00:00:00+00'::timestamptz, 'the test clock sets entitlements.now()');
select entitlements.subscribe(:b, 'pro') as sb \gset
select entitlements.subscribe(:d, 'basic') as sd1 \gset
select is((select created_at from entitlements.subscriptions where id = :'sb'), '2024-12-01 00:00:00+00'::timestamptz,
          'writes are dated by it');
set entitlements.clock = '2024-12-15 00:00:00+00';
select entitlements.subscribe(:a, 'basic') as sa \gset
set entitlements.clock = '2024-12-20 00:00:00+00';
select entitlements.subscribe(:c, 'basic', period_end => '2025-02-20 00:00:00+00') as sc \gset
set entitlements.clock = '2025-01-03 00:00:00+00';
select entitlements.subscribe(:h, 'free') as sh \gset

-- Coupons ------------------------------------------------------------------------------------------
select entitlements.create_coupon('HALF12', percent_off => 50, duration => 'repeating', duration_in_months => 12) is not null as k1 \gset
select entitlements.create_coupon('HALF2', percent_off => 50, duration => 'repeating', duration_in_months => 2,
                                  first_time_only => true) is not null as k2 \gset
select entitlements.create_coupon('SHORT3', percent_off => 10, duration => 'repeating', duration_in_months => 3) is not null as k3 \gset
select entitlements.create_coupon('ONEUSE', amount_off_cents => 100, max_redemptions => 1, plans => array['basic']) is not null as k4 \gset
select entitlements.create_coupon('SOON', percent_off => 5, redeem_by => '2025-01-04 00:00:00+00') is not null as k5 \gset
select throws_ok($$select entitlements.create_coupon('half12', percent_off => 10)$$, '23505', NULL,
                 'codes are unique whatever their case');
select throws_ok($$select entitlements.create_coupon('X', percent_off => 10, amount_off_cents => 5)$$, '22023', NULL,
                 'a coupon takes percent_off or amount_off_cents, not both');
select throws_ok($$select entitlements.create_coupon('X', percent_off => 150)$$, '22023', NULL, 'percent_off over 100');
select throws_ok($$select entitlements.create_coupon('X', percent_off => 10, duration => 'repeating')$$, '22023', NULL,
                 'a repeating coupon needs its months');
select throws_ok($$select entitlements.create_coupon('X', percent_off => 10, plans => array['nope'])$$, '22023', NULL,
                 'an unknown plan');

set entitlements.clock = '2025-01-05 00:00:00+00';
select entitlements.subscribe(:e, 'pro_annual', period_end => '2026-01-05 00:00:00+00') as se \gset
select throws_ok(format($$select entitlements.redeem(%L, 'SHORT3')$$, :'se'), '22023',
                 'promotion code "SHORT3" repeats for 3 months, shorter than the subscription''s yearly billing',
                 'a repeating coupon shorter than a yearly interval is refused');
select throws_ok(format($$select entitlements.redeem(%L, 'SOON')$$, :'se'), '22023', NULL, 'an expired code is refused');
select throws_ok(format($$select entitlements.redeem(%L, 'ONEUSE')$$, :'se'), '22023',
                 'promotion code "ONEUSE" is not for plan "pro_annual"', 'a code for other plans is refused');
select throws_ok(format($$select entitlements.redeem(%L, 'NOPE')$$, :'se'), '22023', NULL, 'an unknown code is refused');
select throws_ok(format($$select entitlements.redeem(%L, repeat('X', 100000))$$, :'se'), '22023', 'unknown promotion code',
                 'a huge code is refused without being repeated back');
select is((select count(*) from entitlements.discounts), 0::bigint, 'refusals wrote nothing');
select lives_ok(format($$select entitlements.redeem(%L, 'half12')$$, :'se'), 'codes match case-insensitively');
select throws_ok(format($$select entitlements.redeem(%L, 'HALF2')$$, :'se'), '22023', NULL,
                 'one discount at a time');
select is((select times_redeemed from entitlements.coupons where code = 'HALF12'), 1, 'the redemption is counted');
select lives_ok(format($$select entitlements.redeem(%L, 'ONEUSE')$$, :'sd1'), 'ONEUSE on basic');
select throws_ok(format($$select entitlements.redeem(%L, 'ONEUSE')$$, :'sa'), '22023',
                 'promotion code "ONEUSE" has reached its maximum of 1 redemptions', 'an exhausted code is refused');
-- D's 100 off is once: its first month, Jan 5 to Feb 5 (D leaves on Jan 10 anyway).
select is(entitlements.mrr(), 1000 + 3000 + 1000 + (1000 - 100) + 1000::bigint, 'MRR now: A 1000, B 3000, C 1000, D 900, E 1000');

set entitlements.clock = '2025-01-10 00:00:00+00';
select entitlements.cancel(:'sd1', false) is null as x \gset
select entitlements.subscribe(:f, 'pro', 'trialing') as sf \gset
select is((select trial_end from entitlements.subscriptions where id = :'sf'), '2025-01-24 00:00:00+00'::timestamptz,
          'trials run from the clock');

set entitlements.clock = '2025-01-24 00:00:00+00';
select entitlements.renew(:'sf', '2025-07-24 00:00:00+00') is null as x \gset
select lives_ok(format($$select entitlements.redeem(%L, 'HALF2')$$, :'sf'), 'a first purchase takes HALF2');
set entitlements.clock = '2025-01-25 00:00:00+00';
select entitlements.cancel(:'sc', true) is null as x \gset
set entitlements.clock = '2025-02-01 00:00:00+00';
select entitlements.subscribe(:g, 'pro', 'trialing') as sg \gset
set entitlements.clock = '2025-02-10 00:00:00+00';
select entitlements.change_plan(:'sa', 'pro', 'upgrade') is null as x \gset
set entitlements.clock = '2025-02-15 00:00:00+00';
select entitlements.subscribe(:d, 'basic') as sd2 \gset
select throws_ok(format($$select entitlements.redeem(%L, 'HALF2')$$, :'sd2'), '22023',
                 'promotion code "HALF2" is for a first purchase only', 'a returning customer is not a first purchase');
set entitlements.clock = '2025-03-05 00:00:00+00';
select entitlements.change_plan(:'sb', 'basic', 'downgrade') is null as x \gset
set entitlements.clock = '2025-03-10 00:00:00+00';
select entitlements.change_plan(:'sh', 'basic', 'upgrade') is null as x \gset
set entitlements.clock = '2025-04-02 00:00:00+00';

-- History ------------------------------------------------------------------------------------------
select is((select array_agg(plan_key || ':' || status order by valid_from) from entitlements.subscription_history
            where subscription_id = :'sa'), array['basic:active', 'pro:active'], 'A''s history: basic, then pro');
select is((select plan_key from entitlements.subscription_as_of(:'sa', '2025-02-09 23:59:59+00')), 'basic',
          'as of Feb 9, A was on basic');
select is((select plan_key from entitlements.subscription_as_of(:'sa', '2025-02-10 00:00:00+00')), 'pro',
          'as of Feb 10, on pro');
select is((select array[status, trial_end::text] from entitlements.subscription_as_of(:'sf', '2025-01-20 00:00:00+00')),
          array['trialing', '2025-01-24 00:00:00+00'], 'as of Jan 20, F was trialing');
select is((select count(*) from entitlements.subscription_as_of(:'sg', '2025-01-20 00:00:00+00')), 0::bigint,
          'G had not begun on Jan 20');

-- MRR at instants ----------------------------------------------------------------------------------
select is(entitlements.mrr('2025-01-01 00:00:00+00'), 6000::bigint, 'MRR Jan 1: A 1000 + B 3000 + C 1000 + D 1000');
select is(entitlements.mrr('2025-02-01 00:00:00+00'), 7500::bigint, 'MRR Feb 1: A 1000 + B 3000 + C 1000 + E 1000 + F 1500');
select is(entitlements.mrr('2025-02-19 00:00:00+00'), 10500::bigint, 'MRR Feb 19: A 3000 + B 3000 + C 1000 + D 1000 + E 1000 + F 1500');
select is(entitlements.mrr('2025-02-20 00:00:00+00'), 9500::bigint, 'MRR Feb 20: C churned at the end of its paid period');
select is(entitlements.mrr('2025-03-01 00:00:00+00'), 9500::bigint, 'MRR Mar 1: A 3000 + B 3000 + D 1000 + E 1000 + F 1500');
select is(entitlements.mrr('2025-04-01 00:00:00+00'), 10000::bigint, 'MRR Apr 1: A 3000 + B 1000 + D 1000 + E 1000 + F 3000 + H 1000');
select is(entitlements.mrr(), 10000::bigint, 'mrr() defaults to the clock');
select is(entitlements.mrr('2025-04-01 00:00:00+00', 'eur'), 0::bigint, 'nothing in eur');

-- Movements -----------------------------------------------------------------------------------------
create temp table mv as
select * from entitlements.revenue_movements('2025-01-01 00:00:00+00', '2025-04-01 00:00:00+00');
select is((select array_agg(array[start_mrr, new_mrr, expansion_mrr, contraction_mrr, churned_mrr, reactivation_mrr, end_mrr, arr]
                            order by bucket_start) from mv),
          array[
            -- Jan: D churns 1000; E (1000) and F (1500) are new.
            array[6000, 2500, 0, 0, 1000, 0, 7500, 90000],
            -- Feb: A expands 2000; C churns 1000 (Feb 20); D reactivates 1000.
            array[7500, 0, 2000, 0, 1000, 1000, 9500, 114000],
            -- Mar: H new 1000; F expands 1500 (HALF2 ended Mar 24); B contracts 2000.
            array[9500, 1000, 1500, 2000, 0, 0, 10000, 120000]]::bigint[],
          'every movement, by month');
select is((select array_agg(array[customers_start, customers_end, new_customers, churned_customers, reactivated_customers]
                            order by bucket_start) from mv),
          array[array[4, 5, 2, 1, 0], array[5, 5, 0, 1, 1], array[5, 6, 1, 0, 0]], 'customers, by month');
select is((select array_agg(start_mrr + new_mrr + expansion_mrr - contraction_mrr - churned_mrr + reactivation_mrr - end_mrr) from mv),
          array[0, 0, 0]::bigint[], 'movements add up to the change in MRR');
select is((select array_agg(array[logo_churn, gross_mrr_churn, net_mrr_churn, nrr, grr] order by bucket_start) from mv),
          array[
            -- Jan: 1/4; 1000/6000; (1000)/6000; (6000 - 1000)/6000; (6000 - 1000)/6000
            array[0.25, 0.166667, 0.166667, 0.833333, 0.833333],
            -- Feb: 1/5; 1000/7500; (1000 - 2000 - 1000)/7500; (7500 + 2000 - 1000)/7500; (7500 - 1000)/7500
            array[0.2, 0.133333, -0.266667, 1.133333, 0.866667],
            -- Mar: 0/5; 2000/9500; (2000 - 1500)/9500; (9500 + 1500 - 2000)/9500; (9500 - 2000)/9500
            array[0, 0.210526, 0.052632, 0.947368, 0.789474]]::numeric[],
          'churn rates, NRR and GRR');
select is((select array_agg(array[arpa, ltv] order by bucket_start) from mv),
          -- ARPA = end MRR / customers; LTV = ARPA / logo churn (none without churn).
          array[array[1500.00, 6000.00], array[1900.00, 9500.00], array[1666.67, null]]::numeric[], 'ARPA and LTV');
select is((select array_agg(array[bucket_start::text, bucket_end::text] order by bucket_start)
             from entitlements.revenue_movements('2025-01-15 00:00:00+00', '2025-03-01 00:00:00+00')),
          array[array['2025-01-15 00:00:00+00', '2025-02-15 00:00:00+00'], array['2025-02-15 00:00:00+00', '2025-03-01 00:00:00+00']],
          'buckets run from from_at; the last ends at to_at');
select throws_ok($$select * from entitlements.revenue_movements('2025-02-01', '2025-01-01')$$, '22023', NULL,
                 'an empty range is refused');
select throws_ok($$select * from entitlements.revenue_movements('2025-01-01', '2025-02-01', 'fortnight')$$, '22023', NULL,
                 'so is an unknown bucket');

-- Conversions and a customer's own history -------------------------------------------------------
select is((select array_agg(array[kind, started::text, converted::text, coalesce(rate::text, '-')] order by cohort_start, kind)
             from entitlements.conversions('2025-01-01 00:00:00+00', '2025-03-01 00:00:00+00')),
          array[array['free', '1', '1', '1.000000'], array['trial', '1', '1', '1.000000'],
                array['free', '0', '0', '-'], array['trial', '1', '0', '0.000000']],
          'January: H went free to paid, F trial to paid; February: G''s trial did not convert');
select is((select array_agg(mrr order by at) from entitlements.customer_mrr_history(:f, '2025-01-01', '2025-04-01')),
          array[0, 1500, 1500, 3000]::bigint[], 'F''s own MRR history');

-- An admin discount counts from when it is given, and only while it lasts ----------------------------
select entitlements.grant_discount(:b, 10, expires_at => '2025-04-10 00:00:00+00', reason => 'apology') is not null as granted \gset
select is(entitlements.mrr(), 10000 - 100::bigint, 'B''s 10% admin discount takes 100 off now');
select is(entitlements.mrr('2025-04-01 00:00:00+00'), 10000::bigint, 'and nothing off before it was given');
select is(entitlements.mrr('2025-04-10 00:00:00+00'), 10000::bigint, 'or after it expired');

-- Who may read it ----------------------------------------------------------------------------------
create role revenue_mallory login;
set local role revenue_mallory;
select throws_ok($$select entitlements.mrr()$$, '42501', NULL, 'a plain login role cannot read MRR');
reset role;
set local role authenticated;
select set_config('request.jwt.claims', json_build_object('sub', :f)::text, true) is not null as x \gset
select throws_ok($$select entitlements.mrr()$$, '42501', NULL, 'nor can a signed-in user');
select throws_ok($$select * from entitlements.revenue_movements('2025-01-01', '2025-02-01')$$, '42501', NULL,
                 'nor read movements');
select is((select array_agg(mrr order by at) from entitlements.customer_mrr_history(:f, '2025-03-01', '2025-04-01')),
          array[1500, 3000]::bigint[], 'but F reads its own MRR history');
select throws_ok(format($$select * from entitlements.customer_mrr_history(%L, '2025-03-01', '2025-04-01')$$, :a), '42501', NULL,
                 'and not another customer''s');
reset role;

reset entitlements.clock;
select ok(entitlements.now() > '2026-01-01', 'reset entitlements.clock returns to real time');

select * from finish();
rollback;
