\set ON_ERROR_STOP 1
\set QUIET 1
begin;
select plan(9);
\ir fixtures/catalog.sql

-- Changes made through PostgREST carry the JWT user and the role.
select entitlements.add_admin('00000000-0000-0000-0000-0000000000ad');
set local role authenticated;
select set_config('request.jwt.claims', '{"sub": "00000000-0000-0000-0000-0000000000ad", "role": "authenticated"}', true) is not null as c \gset
select entitlements.subscribe('00000000-0000-0000-0000-0000000000e5', 'pro') as sub \gset
select entitlements.grant_feature('00000000-0000-0000-0000-0000000000e5', 'agents', reason => 'support ticket 42') as g \gset
reset role;

select is((select actor from entitlements.audit_log where table_name = 'entitlements.subscriptions' and row_key = :'sub'),
          '00000000-0000-0000-0000-0000000000ad'::uuid, 'the actor is the JWT user');
select is((select actor_role from entitlements.audit_log where table_name = 'entitlements.subscriptions' and row_key = :'sub'),
          'authenticated', 'the role is the one PostgREST switched to');
select is((select new_values ->> 'plan_key' from entitlements.audit_log where row_key = :'sub' and action = 'insert'),
          'pro', 'new values are recorded');
select is((select reason from entitlements.audit_log where row_key = :'g'), 'support ticket 42', 'the grant''s reason is recorded');
select is((select txid from entitlements.audit_log where row_key = :'sub'), txid_current(), 'the transaction id is recorded');

select entitlements.cancel(:'sub', false);
select is((select old_values ->> 'status' || '->' || (new_values ->> 'status') from entitlements.audit_log
            where row_key = :'sub' and action = 'update'), 'active->canceled', 'updates keep old and new values');

-- Any app table can be audited.
create table public.club_posts (club_id int, post_id int, body text, primary key (club_id, post_id));
select entitlements.enable_audit('public.club_posts');
select entitlements.enable_audit('public.club_posts'); -- idempotent
insert into public.club_posts values (7, 1, 'hello');
delete from public.club_posts;
select is((select array_agg(action || ':' || row_key order by id) from entitlements.audit_log where table_name = 'public.club_posts'),
          array['insert:7,1', 'delete:7,1'], 'enable_audit records app table changes once, keyed by primary key');
select throws_ok($$select entitlements.enable_audit('entitlements.audit_log')$$, '22023', NULL, 'the audit log does not audit itself');
select throws_ok($$truncate entitlements.audit_log$$, '42501', NULL, 'the audit log cannot be truncated');

select * from finish();
rollback;
