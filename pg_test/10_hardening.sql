\set ON_ERROR_STOP 1
\set QUIET 1
-- Issue 8 beyond the exploits: membership rules, Stripe links, the consume hand-off, bounds.
begin;
select plan(28);
\ir fixtures/catalog.sql

\set org   '''00000000-0000-0000-0000-0000000009a0'''
\set owner '''00000000-0000-0000-0000-0000000009a1'''
\set adm   '''00000000-0000-0000-0000-0000000009a2'''
\set mem   '''00000000-0000-0000-0000-0000000009a3'''
\set org2  '''00000000-0000-0000-0000-0000000009b0'''
select entitlements.subscribe(:org, 'team', quantity => 2) is not null as s \gset
select entitlements.subscribe(:org2, 'team') is not null as s \gset
select entitlements.add_member(:org, :owner, 'owner');
select entitlements.add_member(:org, :adm, 'admin');
select entitlements.add_member(:org, :mem, 'member');

-- Organization admins manage members, but not owners.
set local role authenticated;
select set_config('request.jwt.claims', '{"sub": "00000000-0000-0000-0000-0000000009a2", "role": "authenticated"}', true) is not null as c \gset
select throws_ok($$select entitlements.add_member('00000000-0000-0000-0000-0000000009a0', '00000000-0000-0000-0000-0000000009a1', 'member')$$,
                 '42501', NULL, 'an organization admin cannot demote the owner');
select throws_ok($$select entitlements.remove_member('00000000-0000-0000-0000-0000000009a0', '00000000-0000-0000-0000-0000000009a1')$$,
                 '42501', NULL, 'nor remove the owner');
select throws_ok($$update entitlements.members set role = 'member' where user_id = '00000000-0000-0000-0000-0000000009a1'$$,
                 '42501', NULL, 'nor demote the owner with a direct UPDATE');
select throws_ok($$select entitlements.add_member('00000000-0000-0000-0000-0000000009a0', '00000000-0000-0000-0000-0000000009a3', 'owner')$$,
                 '42501', NULL, 'nor make an owner');
select lives_ok($$select entitlements.add_member('00000000-0000-0000-0000-0000000009a0', '00000000-0000-0000-0000-0000000009a3', 'admin')$$,
                'but promotes a member to admin');
select throws_ok($$update entitlements.members set user_id = '00000000-0000-0000-0000-0000000009a2'
                    where user_id = '00000000-0000-0000-0000-0000000009a1'$$,
                 '22023', NULL, 'nor take the owner''s row by changing its user');
reset role;
insert into entitlements.members (organization_id, user_id, role) values (:org2, :adm, 'owner');
set local role authenticated;
select set_config('request.jwt.claims', '{"sub": "00000000-0000-0000-0000-0000000009a2", "role": "authenticated"}', true) is not null as c \gset
select throws_ok($$update entitlements.members set organization_id = '00000000-0000-0000-0000-0000000009b0'
                    where user_id = '00000000-0000-0000-0000-0000000009a1'$$,
                 '42501', NULL, 'nor move the owner away to an organization they own themselves');
reset role;
delete from entitlements.members where organization_id = :org2 and user_id = :adm;
set local role authenticated;
-- The owner may hand ownership on.
select set_config('request.jwt.claims', '{"sub": "00000000-0000-0000-0000-0000000009a1", "role": "authenticated"}', true) is not null as c \gset
select lives_ok($$select entitlements.add_member('00000000-0000-0000-0000-0000000009a0', '00000000-0000-0000-0000-0000000009a3', 'owner')$$,
                'an owner makes another owner');
reset role;
select is((select role from entitlements.members where user_id = :mem), 'owner', 'and it holds');

-- Seats through UPDATE: team has 5 seats per unit; org2 (1 unit) has one member left to fill.
select entitlements.add_member(:org2, u::uuid) from unnest(array['00000000-0000-0000-0000-0000000009c1', '00000000-0000-0000-0000-0000000009c2',
    '00000000-0000-0000-0000-0000000009c3', '00000000-0000-0000-0000-0000000009c4', '00000000-0000-0000-0000-0000000009c5']) u;
select throws_ok($$update entitlements.members set organization_id = '00000000-0000-0000-0000-0000000009b0' where user_id = '00000000-0000-0000-0000-0000000009a2'$$,
                 'PT403', NULL, 'moving a member into a full organization takes a seat it does not have');

-- A member is a user, never an organization, however it is written.
select throws_ok($$select entitlements.add_member('00000000-0000-0000-0000-0000000009a0', '00000000-0000-0000-0000-0000000009b0')$$,
                 '22023', NULL, 'an organization cannot be a member');
select throws_ok($$insert into entitlements.members (organization_id, user_id) values ('00000000-0000-0000-0000-0000000009a0', '00000000-0000-0000-0000-0000000009b0')$$,
                 '22023', NULL, 'not even with a direct INSERT');

-- Tenants: a tenant admin cannot link a customer of another tenant.
insert into entitlements.customers (id, tenant_id) values
    ('00000000-0000-0000-0000-0000000009d1', '00000000-0000-0000-0000-00000000e001'),
    ('00000000-0000-0000-0000-0000000009d2', '00000000-0000-0000-0000-00000000e002');
insert into entitlements.admins (user_id, tenant_id) values ('00000000-0000-0000-0000-0000000009ad', '00000000-0000-0000-0000-00000000e001');
set local role authenticated;
select set_config('request.jwt.claims', '{"sub": "00000000-0000-0000-0000-0000000009ad", "role": "authenticated"}', true) is not null as c \gset
select lives_ok($$select entitlements.link_stripe_customer('00000000-0000-0000-0000-0000000009d1', 'cus_tenant1')$$,
                'a tenant admin links a customer of their tenant');
select throws_ok($$select entitlements.link_stripe_customer('00000000-0000-0000-0000-0000000009d2', 'cus_tenant2')$$,
                 '42501', NULL, 'but not one of another tenant');
reset role;

-- Stripe: a Checkout's client_reference_id never moves an existing link (each refusal warns).
set local client_min_messages = error;
select entitlements.stripe_record_event(jsonb_build_object('id', 'evt_h_co', 'type', 'checkout.session.completed', 'created', 1700000000,
    'data', jsonb_build_object('object', jsonb_build_object('object', 'checkout.session', 'id', 'cs_h', 'customer', 'cus_attacker',
        'client_reference_id', '00000000-0000-0000-0000-0000000009d1')))) as r \gset
select is(entitlements.stripe_apply_event('evt_h_co'), 'conflict', 'a checkout naming an already linked customer is refused');
select is((select stripe_customer_id from entitlements.customers where id = '00000000-0000-0000-0000-0000000009d1'), 'cus_tenant1',
          'and the link stays');
select entitlements.stripe_record_event(jsonb_build_object('id', 'evt_h_co2', 'type', 'checkout.session.completed', 'created', 1700000001,
    'data', jsonb_build_object('object', jsonb_build_object('object', 'checkout.session', 'id', 'cs_h2', 'customer', 'cus_tenant1',
        'client_reference_id', '00000000-0000-0000-0000-0000000009e9')))) as r \gset
select is(entitlements.stripe_apply_event('evt_h_co2'), 'conflict', 'nor takes a Stripe customer linked to someone else');

-- Nor does a Stripe subscription's or customer's metadata (what _stripe_apply_subscription reads).
select throws_ok($$select entitlements._stripe_customer('cus_other', '{"entitlements_customer_id": "00000000-0000-0000-0000-0000000009d1"}')$$, '55000', NULL,
                 'subscription metadata naming a customer linked elsewhere is refused');
select is((select stripe_customer_id from entitlements.customers where id = '00000000-0000-0000-0000-0000000009d1'), 'cus_tenant1',
          'and the link stays');

-- The consume hand-off: a statement cancelled between _consume_fast and _meter leaves
-- nothing a later statement could pick up.
select is(entitlements._consume_fast(:owner, 'minutes', 1e16, null), null, 'an amount the fast path leaves to _meter (over 1e15)');
select throws_ok($$select * from entitlements._take_pending()$$, '55000', NULL,
                 'what that statement left is refused by the next one');
select throws_ok($$select entitlements.consume('00000000-0000-0000-0000-0000000009a1', 'minutes', 1e16)$$, '22023', NULL,
                 'amounts over 1e15 are refused');

-- Every jsonb the Rust functions take is checked before they decode it: 22023, not XX000.
set local role authenticated;
select throws_ok($$select entitlements._normalize_catalog((repeat('[', 300) || '1' || repeat(']', 300))::jsonb, '{}')$$,
                 '22023', NULL, 'a catalog nested 300 deep is refused with 22023, even called directly');
select throws_ok($$select entitlements._normalize_feature_value('limit', '1e400')$$, '22023', NULL,
                 'so is a number beyond f64');
select throws_ok($$select entitlements._normalize_catalog_json('{}', '{}')$$, '42501', NULL,
                 'and the Rust function behind it is the owner''s');
reset role;
set local role supabase_auth_admin;
select throws_ok($$select entitlements.custom_access_token_hook(jsonb_build_object('user_id', '00000000-0000-0000-0000-0000000009a1',
                    'claims', (repeat('[', 300) || '1' || repeat(']', 300))::jsonb))$$, '22023', NULL,
                 'the access-token hook refuses an event nested 300 deep with 22023');
reset role;

-- Bounds of the catalog.
select throws_ok($$select entitlements.apply_catalog('{"features": [{"key": "slots", "kind": "concurrency"}],
    "plans": [{"key": "odd", "name": "Odd", "entitlements": {"slots": 1.5}}]}')$$, '22023', NULL, 'fractional concurrency slots are refused');
select throws_ok($$select entitlements.apply_catalog('{"features": [], "plans": [{"key": "odd", "name": "Odd", "grace_days": 10000}]}')$$,
                 '22023', NULL, 'grace_days beyond 365 is refused');

select * from finish();
rollback;
