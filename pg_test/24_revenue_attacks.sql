\set ON_ERROR_STOP 1
\set QUIET 1
-- Issue #12's functions and tables as an attacker sees them: a plain login role (no grants,
-- not an API role) and a signed-in user of another customer.
begin;
select plan(22);
\ir fixtures/catalog.sql
\set victim '''00000000-0000-0000-0000-0000000a7701'''
\set me '''00000000-0000-0000-0000-0000000a7702'''
select entitlements.subscribe(:victim, 'pro') as vs \gset
select entitlements.subscribe(:me, 'pro') as ms \gset
select entitlements.create_coupon('VICTIM50', percent_off => 50) is not null as made \gset
select entitlements.redeem(:'vs', 'VICTIM50') is not null as redeemed \gset
select * from entitlements.record_usage(:victim, 'minutes', 1, 5) \gset

-- The SQLSTATE a statement fails with, or 'ok'.
create function pg_temp.outcome(stmt text) returns text language plpgsql as $f$
begin
    execute stmt;
    return 'ok';
exception when others then
    return sqlstate;
end
$f$;
grant execute on function pg_temp.outcome(text) to public;
create temp table attempts (what text, stmt text);
insert into attempts values
    ('create_coupon', $$select entitlements.create_coupon('MINE', percent_off => 100)$$),
    ('redeem', format($$select entitlements.redeem(%L, 'VICTIM50')$$, :'vs')),
    ('subscription_as_of', format($$select * from entitlements.subscription_as_of(%L)$$, :'vs')),
    ('mrr', $$select entitlements.mrr()$$),
    ('revenue_movements', $$select * from entitlements.revenue_movements(now() - interval '1 month', now())$$),
    ('conversions', $$select * from entitlements.conversions(now() - interval '1 month', now())$$),
    ('customer_mrr_history', format($$select * from entitlements.customer_mrr_history(%L, now() - interval '1 month', now())$$, :victim)),
    ('revenue_by_tenant', $$select * from entitlements.revenue_by_tenant()$$),
    ('record_usage', format($$select * from entitlements.record_usage(%L, 'minutes', 1)$$, :victim)),
    ('usage_report', $$select * from entitlements.usage_report(now() - interval '1 month', now())$$),
    ('apply_catalog for a store', $$select entitlements.apply_catalog('{"plans": []}', '00000000-0000-0000-0000-00000000aaaa')$$);
grant select on attempts to public;

create role revenue_plain login;
set local role revenue_plain;
select is(array(select what || ': ' || pg_temp.outcome(stmt) from attempts where pg_temp.outcome(stmt) <> '42501' order by what),
          '{}'::text[], 'a plain login role: every new function refuses with 42501');
select is(array(select t || ': ' || pg_temp.outcome(format('select count(*) from entitlements.%I', t))
                  from unnest(array['subscription_history', 'coupons', 'discounts', 'feature_unit_costs']) t
                 where pg_temp.outcome(format('select count(*) from entitlements.%I', t)) <> '42501'),
          '{}'::text[], 'and every new table');
reset role;

-- A signed-in user of another customer ------------------------------------------------------------
set local role authenticated;
select set_config('request.jwt.claims', json_build_object('sub', :me, 'role', 'authenticated')::text, true) is not null as signed_in \gset
select is(pg_temp.outcome((select stmt from attempts where what = 'create_coupon')), '42501', 'cannot create a coupon');
select is(pg_temp.outcome((select stmt from attempts where what = 'redeem')), '42501', 'cannot redeem on another''s subscription');
select is(pg_temp.outcome(format($$select entitlements.redeem(%L, 'VICTIM50')$$, gen_random_uuid())), '42501',
          'and a missing subscription answers the same');
select is((select count(*) from entitlements.subscription_as_of(:'vs')), 0::bigint, 'sees nothing of another''s history');
select is((select count(*) from entitlements.subscription_history where customer_id = :victim), 0::bigint, 'directly neither');
select is((select count(*) from entitlements.coupons), 0::bigint, 'sees no coupon (codes are for admins)');
select is((select count(*) from entitlements.discounts where customer_id = :victim), 0::bigint, 'nor another''s discounts');
select is((select count(*) from entitlements.feature_unit_costs), 0::bigint, 'nor unit costs');
select is(pg_temp.outcome((select stmt from attempts where what = 'mrr')), '42501', 'reads no MRR');
select is(pg_temp.outcome((select stmt from attempts where what = 'revenue_movements')), '42501', 'no movements');
select is(pg_temp.outcome((select stmt from attempts where what = 'conversions')), '42501', 'no conversions');
select is(pg_temp.outcome((select stmt from attempts where what = 'revenue_by_tenant')), '42501', 'no revenue by tenant');
select is(pg_temp.outcome((select stmt from attempts where what = 'usage_report')), '42501', 'no usage report');
select is(pg_temp.outcome((select stmt from attempts where what = 'customer_mrr_history')), '42501', 'not another''s MRR history');
select is(pg_temp.outcome((select stmt from attempts where what = 'record_usage')), '42501', 'records no usage for another');
select is(pg_temp.outcome((select stmt from attempts where what = 'apply_catalog for a store')), '42501', 'applies no store''s catalog');
select is(pg_temp.outcome(format($$insert into entitlements.discounts (subscription_id, customer_id, source, percent_off, starts_at)
                                   values (%L, %L, 'coupon', 100, now())$$, :'ms', :me)), '42501',
          'gives itself no discount directly');
select is(pg_temp.outcome($$update entitlements.coupons set times_redeemed = 0$$), 'ok', 'an UPDATE of coupons reaches no row');
select is((select times_redeemed from entitlements.coupons where code = 'VICTIM50'), null::integer, '(it sees none)');
reset role;
select is((select times_redeemed from entitlements.coupons where code = 'VICTIM50'), 1, 'the count stayed');

select * from finish();
rollback;
