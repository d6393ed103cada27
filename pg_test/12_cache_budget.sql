\set ON_ERROR_STOP 1
\set QUIET 1
-- The per-backend cache holds to a budget in bytes (entitlements.cache_max_kb), evicting
-- some customers rather than clearing everything, and answers stay right after eviction.
begin;
select plan(7);
\ir fixtures/catalog.sql
select entitlements.subscribe('00000000-0000-0000-0000-000000000b01', 'pro') is not null as s \gset
set local entitlements.cache_max_kb = 64;
select is((entitlements.cache_stats() ->> 'budget_bytes')::int, 65536, 'the budget is the setting, in bytes');
-- 3,000 customers through has_feature, as an RLS scan would.
select count(*) filter (where entitlements.has_feature(('00000000-0000-0000-0000-' || lpad(to_hex(g), 12, '0'))::uuid, 'agents'))
  from generate_series(1, 3000) g \gset
select ok((entitlements.cache_stats() ->> 'approx_bytes')::int <= 65536, 'the cache stays within its budget');
select ok((entitlements.cache_stats() ->> 'evictions')::int > 0, 'by evicting customers');
select ok((entitlements.cache_stats() ->> 'customers')::int between 10 and 2999,
          'some, not all: the cache is never simply cleared');
select ok(entitlements.has_feature('00000000-0000-0000-0000-000000000b01', 'agents'), 'an evicted customer is read again, right');
select is(count(*)::int, 3000, 'and every answer was right (no subscription: Free has no agents)')
  from generate_series(1, 3000) g
 where not entitlements.has_feature(('00000000-0000-0000-0000-' || lpad(to_hex(g), 12, '0'))::uuid, 'agents')
    or ('00000000-0000-0000-0000-' || lpad(to_hex(g), 12, '0'))::uuid = '00000000-0000-0000-0000-000000000b01';
reset entitlements.cache_max_kb;
select is((entitlements.cache_stats() ->> 'budget_bytes')::bigint, 67108864::bigint, 'the default budget is 64 MiB');
select * from finish();
rollback;
