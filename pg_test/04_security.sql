\set ON_ERROR_STOP 1
\set QUIET 1
-- Runs in a Supabase-shaped database: roles anon, authenticated, service_role and
-- supabase_auth_admin existed before CREATE EXTENSION (see the Makefile's test database).
begin;
select plan(29);
\ir fixtures/catalog.sql

\set org '''00000000-0000-0000-0000-0000000000c0'''
\set u1  '''00000000-0000-0000-0000-0000000000c1'''
\set u2  '''00000000-0000-0000-0000-0000000000c2'''
\set u3  '''00000000-0000-0000-0000-0000000000c3'''
select entitlements.subscribe(:u1, 'pro') is not null as s1 \gset
select entitlements.subscribe(:u2, 'pro') is not null as s2 \gset
select entitlements.subscribe(:org, 'team') is not null as so \gset
select entitlements.add_member(:org, :u1, 'admin');
select entitlements.add_member(:org, :u2, 'member');
-- Warm this backend's cache as superuser: it must not leak to the roles below.
select entitlements.entitlements(:u2) is not null as warm \gset

select ok((select not rolsuper and not rolbypassrls from pg_roles where rolname = 'authenticated')
          and not pg_has_role('authenticated', (select relowner from pg_class where oid = 'entitlements.subscriptions'::regclass), 'USAGE'),
          'authenticated is not superuser, not BYPASSRLS and not the owner');

-- Signed in as u1 through PostgREST's settings.
set local role authenticated;
select set_config('request.jwt.claims', '{"sub": "00000000-0000-0000-0000-0000000000c1", "role": "authenticated"}', true) is not null as c \gset
select is(entitlements.current_user_id(), :u1::uuid, 'current_user_id() reads the JWT sub');
select ok(entitlements.has_feature('agents'), 'has_feature(feature) answers for the signed-in user');
select is(entitlements.entitlements() ->> 'plan', 'pro', 'entitlements() defaults to the signed-in user');
select ok(entitlements.entitlements(:org) is not null, 'a member may read the organization''s entitlements');
select throws_ok($$select entitlements.entitlements('00000000-0000-0000-0000-0000000000c2')$$, '42501', NULL,
                 'but not another customer''s');
select throws_ok($$select entitlements.subscribe('00000000-0000-0000-0000-0000000000c1', 'enterprise')$$, '42501', NULL,
                 'a user cannot subscribe themselves');
select throws_ok($$insert into entitlements.subscriptions (customer_id, plan_key, status) values ('00000000-0000-0000-0000-0000000000c1', 'enterprise', 'active')$$,
                 '42501', NULL, 'not even with a direct INSERT (RLS)');
select throws_ok($$select entitlements.apply_catalog('{"features": [], "plans": []}')$$, '42501', NULL, 'a user cannot change the catalog');
-- A direct UPDATE under RLS matches no row rather than failing.
update entitlements.plans set price_cents = 0;
select is((select count(*) from entitlements.plans where price_cents = 0), 1::bigint,
          'a direct UPDATE of plans changes nothing (only free costs 0)');
select throws_ok($$select entitlements.grant_feature('00000000-0000-0000-0000-0000000000c1', 'agents', reason => 'me')$$, '42501', NULL,
                 'a user cannot grant themselves features');
select is((select count(*) from entitlements.subscriptions), 2::bigint, 'RLS: u1 sees own and organization subscriptions only');
select is((select array_agg(id order by id) from entitlements.customers), array[:org::uuid, :u1::uuid],
          'RLS: u1 sees own and organization customer rows');
select is((select count(*) from entitlements.audit_log), 0::bigint, 'the audit log is for admins only');
select throws_ok($$delete from entitlements.audit_log$$, '42501', NULL, 'a user cannot delete audit rows');
select throws_ok($$update entitlements.audit_log set reason = 'x'$$, '42501', NULL, 'or rewrite them');
select throws_ok($$insert into entitlements.audit_log (actor_role, action, table_name) values ('x', 'x', 'x')$$, '42501', NULL,
                 'or forge them');
select throws_ok($$select entitlements._catalog_snapshot()$$, '42501', NULL,
                 'the internal snapshot reader is not callable');
select ok(not exists (select 1 from entitlements.plans where key = 'enterprise')
          and exists (select 1 from entitlements.plans where key = 'team'), 'private plans are hidden from non-subscribers');

-- Organization admins manage their organization; plain members do not.
select lives_ok($$select entitlements.add_member('00000000-0000-0000-0000-0000000000c0', '00000000-0000-0000-0000-0000000000c3')$$,
                'an organization admin adds a member');
select set_config('request.jwt.claims', '{"sub": "00000000-0000-0000-0000-0000000000c2", "role": "authenticated"}', true) is not null as c \gset
select throws_ok($$select entitlements.remove_member('00000000-0000-0000-0000-0000000000c0', '00000000-0000-0000-0000-0000000000c3')$$,
                 '42501', NULL, 'a plain member cannot remove members');

-- Anonymous.
reset role;
set local role anon;
select set_config('request.jwt.claims', '{"role": "anon"}', true) is not null as c \gset
select ok(not entitlements.has_feature('agents'), 'anonymous callers have no features');
select throws_ok($$select entitlements.has_feature('agentz')$$, '22023', NULL, 'but a misspelt feature still fails loudly');
select throws_ok($$select entitlements.entitlements()$$, '22004', NULL, 'entitlements() needs a customer');

-- service_role and listed admins may administer.
reset role;
set local role service_role;
select set_config('request.jwt.claims', '{"role": "service_role"}', true) is not null as c \gset
select lives_ok($$select entitlements.subscribe('00000000-0000-0000-0000-0000000000c4', 'pro')$$, 'service_role subscribes customers');
reset role;
select entitlements.add_admin('00000000-0000-0000-0000-0000000000ad');
set local role authenticated;
select set_config('request.jwt.claims', '{"sub": "00000000-0000-0000-0000-0000000000ad", "role": "authenticated"}', true) is not null as c \gset
select lives_ok($$select entitlements.subscribe('00000000-0000-0000-0000-0000000000c5', 'pro')$$,
                'a user listed in entitlements.admins may subscribe others');

-- The Supabase access token hook: supabase_auth_admin only.
reset role;
select set_config('request.jwt.claims', '', true) is not null as c \gset
set local role supabase_auth_admin;
select is(entitlements.custom_access_token_hook(
              '{"user_id": "00000000-0000-0000-0000-0000000000c1", "claims": {"sub": "00000000-0000-0000-0000-0000000000c1", "role": "authenticated"}}')
          -> 'claims' -> 'entitlements',
          '{"plan": "pro", "features": ["agents", "files", "minutes", "seats", "slots", "theme"]}'::jsonb,
          'the hook adds the plan and enabled features to the claims');
reset role;
set local role authenticated;
select throws_ok($$select entitlements.custom_access_token_hook('{"user_id": "00000000-0000-0000-0000-0000000000c1", "claims": {}}')$$,
                 '42501', NULL, 'users cannot call the hook');
reset role;

-- Even the owner cannot rewrite history.
select throws_ok($$update entitlements.audit_log set reason = 'x'$$, '42501', NULL, 'the audit log is append-only, even for the owner');

select * from finish();
rollback;
