\set ON_ERROR_STOP 1
\set QUIET 1
-- What the console reads (issue #14): catalog_document, the catalog in apply_catalog's own
-- shape (applying it back changes nothing, for everyone's catalog and a store's), and
-- search_customers (exact id, exact Stripe id, email or name prefix in any case, LIKE's
-- wildcards taken literally, as the caller may see them).
begin;
select plan(28);
\ir fixtures/catalog.sql

\set t1 '''00000000-0000-0000-0000-0000000c7a01'''
\set t2 '''00000000-0000-0000-0000-0000000c7a02'''
\set ta '''00000000-0000-0000-0000-0000000c7ad1'''
\set ada '''00000000-0000-0000-0000-0000000c7c01'''
\set bob '''00000000-0000-0000-0000-0000000c7c02'''
\set cy  '''00000000-0000-0000-0000-0000000c7c03'''
\set pct '''00000000-0000-0000-0000-0000000c7c04'''

create function pg_temp.outcome(stmt text) returns text language plpgsql as $f$
begin
    execute stmt;
    return 'ok';
exception when others then
    return sqlstate;
end
$f$;
grant execute on function pg_temp.outcome(text) to public;

-- The catalog document ---------------------------------------------------------------------------
select is((entitlements.apply_catalog(entitlements.catalog_document()) ->> 'changed')::boolean, false,
          'applying the document back changes nothing');
select is(jsonb_array_length(entitlements.catalog_document() -> 'plans'), 4, 'every active plan');
select is(entitlements.catalog_document() #> '{plans,2,entitlements,seats}', '{"limit": 5, "per_unit": true}'::jsonb,
          'a per-seat limit stays an object');
select is(entitlements.catalog_document() #> '{plans,0,entitlements,minutes}',
          '[{"limit": 60, "period": "month", "overage": "block"}]'::jsonb, 'a metered limit, written out');
select is(entitlements.catalog_document() #> '{plans,0,default}', 'true'::jsonb, 'the default plan says so');
-- A changed copy applies as a change; the document follows it.
select is((entitlements.apply_catalog(jsonb_set(entitlements.catalog_document(), '{plans,1,price_cents}', '2900')) -> 'plans' -> 'updated'),
          '["pro"]'::jsonb, 'a price changed in the document is an update of that plan');
select is(entitlements.catalog_document() #> '{plans,1,price_cents}', '2900'::jsonb, 'and the document shows it');
-- A plan left out is retired, and no longer in the document.
select is((entitlements.apply_catalog(jsonb_set(entitlements.catalog_document(), '{plans}',
          (entitlements.catalog_document() -> 'plans') - 3)) -> 'plans' -> 'deactivated'), '["enterprise"]'::jsonb,
          'a plan left out is retired');
select is(jsonb_array_length(entitlements.catalog_document() -> 'plans'), 3, 'and left out of the document');

-- A store's catalog
insert into entitlements.admins (user_id, tenant_id) values (:ta, :t1);
select entitlements.apply_catalog('{"plans": [{"key": "t1_gold", "name": "Gold", "price_cents": 700, "public": true,
                                   "stripe_price_ids": ["price_gold"], "metadata": {"tier": 3},
                                   "entitlements": {"agents": true, "minutes": 90}}]}', :t1) is not null as store \gset
select is(entitlements.catalog_document(:t1) -> 'plans',
          '[{"key": "t1_gold", "name": "Gold", "price_cents": 700, "currency": "usd", "interval": "month", "public": true,
             "trial_days": 0, "grace_days": 7, "stripe_price_ids": ["price_gold"], "metadata": {"tier": 3},
             "entitlements": {"agents": true, "minutes": [{"limit": 90, "period": "month", "overage": "block"}]}}]'::jsonb,
          'a store''s document: its plans only');
select is((entitlements.apply_catalog(entitlements.catalog_document(:t1), :t1) ->> 'changed')::boolean, false,
          'and it applies back unchanged');

-- Who may read it
set local role authenticated;
select set_config('request.jwt.claims', json_build_object('sub', :ta::text, 'role', 'authenticated')::text, true) is not null as t \gset
select is(pg_temp.outcome(format('select entitlements.catalog_document(%L)', :t1)), 'ok', 'a store admin reads their store''s');
select is(pg_temp.outcome('select entitlements.catalog_document()'), '42501', 'but not everyone''s');
select is(pg_temp.outcome(format('select entitlements.catalog_document(%L)', :t2)), '42501', 'nor another store''s');
select set_config('request.jwt.claims', json_build_object('sub', :ada::text, 'role', 'authenticated')::text, true) is not null as u \gset
select is(pg_temp.outcome('select entitlements.catalog_document()'), '42501', 'a signed-in customer does not');
reset role;

-- Customer search -------------------------------------------------------------------------------
insert into entitlements.customers (id, tenant_id, email, display_name, stripe_customer_id) values
    (:ada, :t1, 'Ada.Lovelace@example.org', 'Ada Lovelace', 'cus_ada1'),
    (:bob, :t2, 'bob@example.org', 'Bob', 'cus_bob2'),
    (:cy, null, 'cy@example.net', 'Cyrus', null),
    (:pct, null, 'percent%@example.org', 'Per Cent', null);
select entitlements.subscribe(:ada, 'pro') is not null as s \gset

select is((select array_agg(email) from entitlements.search_customers('ada.')), array['Ada.Lovelace@example.org'],
          'an email prefix, any case');
select is((select array_agg(email order by email) from entitlements.search_customers('example')), null,
          'a prefix, not a substring');
select is((select plan_key || '/' || status from entitlements.search_customers('ADA')), 'pro/active',
          'with the latest plan and status');
select is((select array_agg(id) from entitlements.search_customers(:ada)), array[:ada::uuid], 'an exact id');
select is((select array_agg(id) from entitlements.search_customers(replace(:ada, '-', ''))), array[:ada::uuid],
          'an id without dashes');
select is((select array_agg(id) from entitlements.search_customers('cus_bob2')), array[:bob::uuid], 'an exact Stripe id');
select is((select array_agg(id) from entitlements.search_customers('cyr')), array[:cy::uuid], 'a name prefix');
select is((select array_agg(id) from entitlements.search_customers('percent%')), array[:pct::uuid],
          'a % typed is a % matched');
select is((select count(*) from entitlements.search_customers('%')), 0::bigint, 'and % alone matches nothing');
select is(array[pg_temp.outcome('select * from entitlements.search_customers(''a'', 0)'),
                pg_temp.outcome('select * from entitlements.search_customers(''a'', 501)'),
                pg_temp.outcome(format('select * from entitlements.search_customers(%L)', repeat('a', 321)))],
          array['22023', '22023', '22023'], 'bounds on rows and query length');

-- As a store admin: their store's customers only; as a customer: themself; a plain role: nothing.
set local role authenticated;
select set_config('request.jwt.claims', json_build_object('sub', :ta::text, 'role', 'authenticated')::text, true) is not null as t \gset
select is((select array_agg(id) from entitlements.search_customers('')), array[:ada::uuid],
          'a store admin finds their store''s customers only');
select set_config('request.jwt.claims', json_build_object('sub', :bob::text, 'role', 'authenticated')::text, true) is not null as u \gset
select is((select array_agg(id order by id) from entitlements.search_customers('')), array[:bob::uuid],
          'a signed-in customer finds only themself');
reset role;
create role console_search_plain login;
set local role console_search_plain;
select is(pg_temp.outcome('select * from entitlements.search_customers(''a'')'), '42501',
          'a plain login role cannot search');
reset role;

select * from finish();
rollback;
