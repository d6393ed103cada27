\set ON_ERROR_STOP 1
\set QUIET 1
begin;
select plan(29);
\ir fixtures/catalog.sql

select ok(:'catalog_applied', 'the fixture catalog applies');
select is((select count(*) from entitlements.plans where active), 4::bigint, 'four active plans');
select is((select key from entitlements.plans where is_default), 'free', 'free is the default plan');

-- Idempotent: the same document again changes nothing.
create temp table doc as select doc as d from pg_temp.fixture_catalog;
select count(*) as audit_before from entitlements.audit_log \gset
select is(entitlements.apply_catalog((select d from doc)) -> 'changed', 'false'::jsonb, 'same document twice: no change');
select is((select count(*) from entitlements.audit_log), :audit_before::bigint, 'an unchanged apply writes no audit rows');

-- A change is reported precisely.
select is(entitlements.apply_catalog(jsonb_set((select d from doc), '{plans,1,entitlements,files}', '20')),
          '{"changed": true, "features": {"created": [], "updated": []},
            "plans": {"created": [], "updated": ["pro"], "deactivated": []}}'::jsonb,
          'changing one limit reports exactly that plan');
select is((select spec from entitlements.plan_entitlements where plan_key = 'pro' and feature_key = 'files'),
          '{"limit": 20, "per_unit": false}'::jsonb, 'the new limit is stored normalized');

-- A plan missing from the document becomes inactive; its subscribers keep it.
select entitlements.subscribe('00000000-0000-0000-0000-0000000000e1', 'enterprise') is not null as s \gset
select is(entitlements.apply_catalog((select d #- '{plans,3}' from doc)) -> 'plans' -> 'deactivated',
          '["enterprise"]'::jsonb, 'enterprise missing from the document is deactivated');
select ok(exists (select 1 from entitlements.plans where key = 'enterprise' and not active), 'the plan row is kept, inactive');
select ok(entitlements.has_feature('00000000-0000-0000-0000-0000000000e1', 'agents'), 'its subscriber keeps access');
select throws_ok($$select entitlements.subscribe('00000000-0000-0000-0000-0000000000e2', 'enterprise')$$,
                 '22023', 'plan "enterprise" is no longer offered', 'new subscriptions to an inactive plan are refused');
select is(entitlements.apply_catalog((select d from doc)) -> 'plans' -> 'updated', '["enterprise"]'::jsonb,
          'putting it back reactivates it');

-- Moving the default.
select is(entitlements.apply_catalog(jsonb_set(jsonb_set((select d from doc), '{plans,0,default}', 'false'),
                                               '{plans,1,default}', 'true')) -> 'plans' -> 'updated',
          '["free", "pro"]'::jsonb, 'moving the default updates both plans');
select ok(entitlements.has_feature('00000000-0000-0000-0000-00000000d0d0', 'agents'),
          'someone without a subscription now gets the new default (pro)');

-- Malformed catalogs are refused with the path of the bad entry, and change nothing.
create temp table before as select (select count(*) from entitlements.audit_log) as n;
select throws_ok($$select entitlements.apply_catalog('{"features": [], "plans": [{"key": "x", "entitlements": {"nope": true}}]}')$$,
                 '22023', 'invalid catalog at $.plans[0].entitlements.nope: unknown feature "nope"', 'an unknown feature is named');
select throws_ok($$select entitlements.apply_catalog('{"features": [{"key": "m", "kind": "metered"}], "plans": [{"key": "x", "entitlements": {"m": {"limit": 5, "period": "fortnight"}}}]}')$$,
                 '22023', NULL, 'a bad period is refused');
select throws_like($$select entitlements.apply_catalog('{"features": [{"key": "f", "kind": "flag"}], "plans": [{"key": "a"}, {"key": "b", "price_cents": -1}]}')$$,
                 '%$.plans[1].price_cents%', 'a negative price is refused at its path');
select throws_ok($$select entitlements.apply_catalog('{"plans": [{"key": "a", "default": true}, {"key": "b", "default": true}]}')$$,
                 '22023', NULL, 'two default plans are refused');
select throws_ok($$select entitlements.apply_catalog('[1, 2]')$$, '22023', NULL, 'a non-object document is refused');
select throws_ok($$select entitlements.apply_catalog(NULL)$$, '22004', NULL, 'NULL is refused');
select throws_ok($$select entitlements.apply_catalog('{"features": [{"key": "z", "kind": "flag"}], "plans": [{"key": "q", "stripe_price_ids": ["p1"]}, {"key": "r", "stripe_price_ids": ["p1"]}]}')$$,
                 '22023', NULL, 'one Stripe price on two plans is refused');
savepoint moving;
select entitlements.apply_catalog('{"plans": [{"key": "q", "entitlements": {}}, {"key": "r", "stripe_price_ids": ["p_move"], "entitlements": {}}]}') is not null as before_move \gset
select is(entitlements.apply_catalog('{"plans": [{"key": "q", "stripe_price_ids": ["p_move"], "entitlements": {}}, {"key": "r", "entitlements": {}}]}') -> 'plans' -> 'updated',
          '["q", "r"]', 'one document may move a Stripe price from one plan to another');
rollback to savepoint moving;
-- A plan's `resources` (what a provisioned server gets) is checked too.
select throws_ok($$select entitlements.apply_catalog('{"plans": [{"key": "h", "entitlements": {"resources": {"cpu": "2", "memory": "4GB"}}}]}')$$,
                 '22023', 'invalid catalog at $.plans[0].entitlements.resources.memory: expected a Kubernetes quantity string such as "2", "500m" or "4Gi", got "4GB"',
                 'a memory that is not a Kubernetes quantity is refused at its path');
select throws_like($$select entitlements.apply_catalog('{"plans": [{"key": "h", "entitlements": {"resources": {"servers": 0}}}]}')$$,
                   '%$.plans[0].entitlements.resources.servers: expected a whole number from 1 to%', 'zero servers are refused');
select throws_like($$select entitlements.apply_catalog('{"features": [{"key": "resources", "kind": "limit"}], "plans": [{"key": "h", "entitlements": {"resources": {"cpu": "1"}}}]}')$$,
                   '%declare it as kind config%', 'resources declared with another kind is refused');
select is((select count(*) from entitlements.audit_log), (select n from before), 'refused catalogs wrote nothing');
select ok(not exists (select 1 from entitlements.features where key in ('z', 'm', 'f')), 'no feature of a refused catalog was created');

-- A valid `resources` is stored normalized.
select is(entitlements.apply_catalog(jsonb_set((select doc from pg_temp.fixture_catalog), '{plans}',
              (select doc -> 'plans' from pg_temp.fixture_catalog)
              || '[{"key": "hosting", "entitlements": {"resources": {"servers": 2, "cpu": "500m", "memory": "1Gi", "storage": "10Gi", "federation": true}}}]'::jsonb))
            #> '{plans,created}', '["hosting"]', 'a plan with resources is created');
select is((select spec from entitlements.plan_entitlements where plan_key = 'hosting' and feature_key = 'resources'),
          '{"value": {"servers": 2, "cpu": "500m", "memory": "1Gi", "data_storage": "10Gi", "federation": true}}'::jsonb,
          'resources are stored normalized (storage, the 0.1.0 name, becomes data_storage)');

select * from finish();
rollback;
