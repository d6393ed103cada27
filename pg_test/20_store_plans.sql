\set ON_ERROR_STOP 1
\set QUIET 1
-- Store plans (issue #12): a plan may belong to a tenant (a store). Only that store's
-- customers subscribe to it; the store's admins manage its plans and read its revenue,
-- and nothing of any other store or of the global catalog.
begin;
select plan(38);
\ir fixtures/catalog.sql

\set t1 '''00000000-0000-0000-0000-0000000057a1'''
\set t2 '''00000000-0000-0000-0000-0000000057a2'''
\set a1 '''00000000-0000-0000-0000-00000000ad01'''
\set a2 '''00000000-0000-0000-0000-00000000ad02'''
\set k1 '''00000000-0000-0000-0000-00000000c501'''
\set k2 '''00000000-0000-0000-0000-00000000c502'''
\set k3 '''00000000-0000-0000-0000-00000000c503'''
insert into entitlements.admins (user_id, tenant_id) values (:a1, :t1), (:a2, :t2);

create function pg_temp.store_doc(plan_key text, price integer, extra jsonb default '{}') returns jsonb language sql as $$
    select jsonb_build_object('plans', jsonb_build_array(jsonb_build_object(
        'key', plan_key, 'name', 'Club', 'price_cents', price, 'public', true,
        'entitlements', jsonb_build_object('agents', true)) || extra))
$$;
create function pg_temp.sign_in(u uuid) returns void language sql as $$
    select set_config('request.jwt.claims', json_build_object('sub', u, 'role', 'authenticated')::text, true)
$$;

-- The store's admin manages the store's plans ---------------------------------------------------
set local role authenticated;
select pg_temp.sign_in(:a1);
select is(entitlements.apply_catalog(pg_temp.store_doc('club_t1', 500), :t1) -> 'plans' -> 'created', '["club_t1"]',
          'a store admin applies its store''s catalog');
select is(entitlements.apply_catalog(pg_temp.store_doc('club_t1', 500), :t1) ->> 'changed', 'false', 'idempotently');
select throws_ok(format($$select entitlements.apply_catalog(pg_temp.store_doc('club_x', 500), %L)$$, :t2), '42501', NULL,
                 'not another store''s');
select throws_ok($$select entitlements.apply_catalog(pg_temp.store_doc('club_x', 500))$$, '42501', NULL,
                 'nor the global catalog');
select throws_ok(format($$select entitlements.apply_catalog(pg_temp.store_doc('pro', 500), %L)$$, :t1), '42501', NULL,
                 'nor a global plan, through its own catalog');
select throws_ok(format($$select entitlements.apply_catalog(
                     pg_temp.store_doc('club_t1', 500) || '{"features": [{"key": "minutes", "kind": "metered", "unit": "second"}]}', %L)$$, :t1),
                 '42501', NULL, 'a store''s catalog cannot change a feature');
select throws_ok(format($$select entitlements.apply_catalog(pg_temp.store_doc('club_t1', 500, '{"default": true}'), %L)$$, :t1),
                 '22023', NULL, 'nor make the default plan');
update entitlements.plans set price_cents = 600 where key in ('club_t1', 'pro');
select is((select array_agg(key || '=' || price_cents order by key) from entitlements.plans where key in ('club_t1', 'pro')),
          array['club_t1=600', 'pro=1900'], 'a direct UPDATE reaches the store''s plan only');
select lives_ok(format($$select entitlements.subscribe(%L, 'club_t1')$$, :k1), 'the store admin subscribes a new customer');
select is((select tenant_id from entitlements.customers where id = :k1), :t1::uuid, 'who becomes the store''s customer');
select throws_ok(format($$select entitlements.subscribe(%L, 'pro')$$, :k2), '42501', NULL,
                 'a global plan is not the store admin''s to sell');
select is(entitlements.mrr(tenant => :t1), 600::bigint, 'the store admin reads its MRR');
select is((select end_mrr from entitlements.revenue_movements(entitlements.now() - interval '1 day', entitlements.now() + interval '1 second',
                                                              'day', 'usd', :t1) order by bucket_start desc limit 1),
          600::bigint, 'and its movements');
select throws_ok($$select entitlements.mrr()$$, '42501', NULL, 'not everyone''s');
select throws_ok(format($$select entitlements.mrr(tenant => %L)$$, :t2), '42501', NULL, 'nor another store''s');
select throws_ok($$select * from entitlements.revenue_by_tenant()$$, '42501', NULL, 'nor revenue by tenant');

-- Another store ----------------------------------------------------------------------------------
select pg_temp.sign_in(:a2);
select is((select count(*) from entitlements.plans where key = 'club_t1' and not public), 0::bigint, 'plans are visible as before');
select lives_ok(format($$select entitlements.apply_catalog(pg_temp.store_doc('club_t2', 300), %L)$$, :t2), 'store 2 has its own plan');
select lives_ok(format($$select entitlements.subscribe(%L, 'club_t2')$$, :k3), 'and customer');
select throws_ok(format($$select entitlements.subscribe(%L, 'club_t1')$$, :k1), '42501', NULL,
                 'store 2''s admin cannot touch store 1''s customer');
select throws_ok(format($$select entitlements.subscribe(%L, 'club_t1')$$, :k2), '42501', NULL,
                 'nor sell store 1''s plan');
update entitlements.plans set price_cents = 1 where key = 'club_t1';
select is((select price_cents from entitlements.plans where key = 'club_t1'), 600::bigint, 'nor change it');
reset role;

-- Even a global admin keeps each store's plans for its customers ----------------------------------
select throws_ok(format($$select entitlements.subscribe(%L, 'club_t1')$$, :k3), '42501',
                 'permission denied: plan "club_t1" is for the customers of its store', 'store 2''s customer cannot take store 1''s plan');
select throws_ok(format($$select entitlements.change_plan(%L, 'club_t1', 'move')$$,
                        (select id from entitlements.subscriptions where customer_id = :k3)), '42501', NULL,
                 'not by a plan change either');
select is((select entitlements.apply_catalog((select doc from pg_temp.fixture_catalog)) -> 'plans' -> 'deactivated'), '[]',
          'the global catalog does not retire the stores'' plans');
select is((select array_agg(tenant_id::text || '=' || mrr || '/' || customers order by tenant_id) from entitlements.revenue_by_tenant()),
          array[:t1 || '=600/1', :t2 || '=300/1'], 'revenue by tenant');
select is(entitlements.mrr() - entitlements.mrr(tenant => :t1) - entitlements.mrr(tenant => :t2),
          (select coalesce(sum(mrr), 0)::bigint from entitlements.revenue_by_tenant() where tenant_id is null),
          'the stores'' MRR and the rest add up');
-- The upgrade hint of a refusal names a store's plan to that store's customers only.
select entitlements.apply_catalog(jsonb_insert(pg_temp.store_doc('club_t2', 300), '{plans,1}',
           '{"key": "club_minutes", "name": "Minutes", "price_cents": 100, "public": true, "entitlements": {"minutes": 100000}}'),
       :t2) is not null as applied \gset
create function pg_temp.hint(customer uuid) returns text language plpgsql as $$
declare h text;
begin
    perform entitlements.consume(customer, 'minutes', 200);
    return null;
exception when sqlstate 'PT429' or sqlstate 'PT403' then
    get stacked diagnostics h = pg_exception_hint;
    return h;
end $$;
select is(pg_temp.hint(:k3), 'Upgrade to the "club_minutes" plan to use it.', 'a store''s customer is pointed to its store''s plan');
select is(pg_temp.hint('00000000-0000-0000-0000-00000000c5ff'), 'Upgrade to the "pro" plan to allow it.',
          'a customer of no store is not (to Pro, dearer)');
update entitlements.plans set stripe_price_ids = '{price_team_m}' where key = 'team';
set local role authenticated;
select pg_temp.sign_in(:a1);
-- Direct writes hold a store admin to the same rules (row security lets it write its rows).
select throws_ok(format($$insert into entitlements.discounts (subscription_id, customer_id, source, percent_off, starts_at)
                          values (%L, %L, 'coupon', 100, now())$$,
                        (select id from entitlements.subscriptions where customer_id = :k3), :k1), '42501', NULL,
                 'no discount written directly, not even naming its own customer');
select throws_ok(format($$update entitlements.subscriptions set plan_key = 'club_t2' where customer_id = %L$$, :k1), '42501',
                 NULL, 'its customer cannot be put on another store''s plan');
select throws_ok(format($$insert into entitlements.subscriptions (customer_id, plan_key, status) values (%L, 'enterprise', 'active')$$, :k1),
                 '42501', NULL, 'nor on a private plan it cannot see');
select throws_ok($$update entitlements.plans set stripe_price_ids = '{price_team_m}' where key = 'club_t1'$$, '23505',
                 'Stripe price "price_team_m" already maps to another plan', 'nor claim a Stripe price of another plan');
select throws_ok($$update entitlements.plans set price_cents = 9223372036854775807 where key = 'club_t1'$$, '23514', NULL,
                 'nor set a price no catalog takes');
select throws_ok(format($$insert into entitlements.grants (customer_id, kind, value, reason) values (%L, 'discount', '{"percent_off": "x"}', 'r')$$, :k1),
                 '23514', NULL, 'nor an admin discount that is not a percentage');
select is(entitlements.apply_catalog('{"plans": []}', :t1) -> 'plans' -> 'deactivated', '["club_t1"]',
          'a store''s catalog retires its own plans only');
select is((select array_agg(key order by key) from entitlements.plans where not active), array['club_t1'], 'club_t2 is still offered');
select pg_temp.sign_in(:k1);
select throws_ok(format($$select entitlements.mrr(tenant => %L)$$, :t1), '42501', NULL, 'a store''s customer reads no revenue');
reset role;

select * from finish();
rollback;
