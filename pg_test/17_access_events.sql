\set ON_ERROR_STOP 1
\set QUIET 1
-- Access events (issue #11): access.suspended and access.restored, by a write (told by the
-- subscriptions trigger) or by time alone (told by the time_events task), trial.ending, each
-- told once; and how a customer sets the address its notifications go to.
begin;
select plan(43);
\ir fixtures/catalog.sql
create role mallory3 login;

\set c1 '''00000000-0000-0000-0000-0000000b0001'''
\set c2 '''00000000-0000-0000-0000-0000000b0002'''
\set c3 '''00000000-0000-0000-0000-0000000b0003'''
\set c4 '''00000000-0000-0000-0000-0000000b0004'''
\set org '''00000000-0000-0000-0000-0000000b00a0'''

create function pg_temp.told(c uuid) returns text[] language sql as $$
    select coalesce(array_agg(kind || coalesce(' ' || (payload ->> 'reason'), '') order by id), '{}')
      from entitlements.outbox where customer_id = c and kind in ('access.suspended', 'access.restored', 'trial.ending')
$$;
-- Time passing for one subscription: its row and its notice as if written that long ago (the
-- triggers stay out of it, as they would for a change that is only the clock moving).
create function pg_temp.age(sub uuid, by interval) returns void language plpgsql as $$
begin
    set local session_replication_role = replica;
    update entitlements.subscriptions
       set trial_end = trial_end - by, current_period_end = current_period_end - by,
           status_changed_at = status_changed_at - by
     where id = sub;
    update entitlements.access_notices set until = until - by where subscription_id = sub;
    set local session_replication_role = origin;
end
$$;

-- trial.ending -------------------------------------------------------------------------------------
select entitlements.subscribe(:c1, 'pro', 'trialing', trial_end => now() + interval '2 days') as t1 \gset
select is((select state from entitlements.access_notices where subscription_id = :'t1'), 'granting',
          'a new trial grants');
select is(pg_temp.told(:c1), '{}', 'nothing told before the task runs');
select is((entitlements.run_task('time_events')).outcome, 'ok', 'time_events runs');
select is(pg_temp.told(:c1), '{trial.ending}', 'a trial ending within 3 days: trial.ending');
select is((select dedup_key from entitlements.outbox where kind = 'trial.ending' and customer_id = :c1),
          format('trial_ending:%s:%s', :'t1',
                 to_char((now() + interval '2 days') at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')),
          'keyed by subscription and trial end');
select is((select (payload ->> 'days_left')::int from entitlements.outbox where kind = 'trial.ending' and customer_id = :c1),
          2, 'with the days left');
select entitlements.run_task('time_events') is not null as again \gset
select is(pg_temp.told(:c1), '{trial.ending}', 'told once');
update entitlements.settings set trial_ending_notice = interval '1 day';
insert into entitlements.settings (trial_ending_notice) select interval '1 day' where not exists (select 1 from entitlements.settings);
select entitlements.subscribe(:c2, 'pro', 'trialing', trial_end => now() + interval '2 days') as t2 \gset
select entitlements.run_task('time_events') is not null as again \gset
select is(pg_temp.told(:c2), '{}', 'settings.trial_ending_notice decides how early');

-- Access ended by time alone: told by the task, once ----------------------------------------------
select pg_temp.age(:'t1', interval '2 days 1 minute');
select is(entitlements.has_feature(:c1, 'agents'), false, 'the trial is over (read time)');
select is(pg_temp.told(:c1), '{trial.ending}', 'and nothing told it yet');
select is((entitlements.run_task('time_events')).rows_touched, 1::bigint, 'the task tells one change');
select is(pg_temp.told(:c1), '{trial.ending,"access.suspended trial_ended"}', 'access.suspended, the trial ended');
select is((select payload ->> 'access_ended_at' from entitlements.outbox where kind = 'access.suspended' and customer_id = :c1)::timestamptz,
          (select trial_end from entitlements.subscriptions where id = :'t1'), 'as of the trial end');
select entitlements.run_task('time_events') is not null as again \gset
select entitlements.run_task('expire_subscriptions') is not null as tidy \gset
select is((select status from entitlements.subscriptions where id = :'t1'), 'canceled', 'the expiry task tidies the row up');
select is(pg_temp.told(:c1), '{trial.ending,"access.suspended trial_ended"}', '... and neither tells it again');

-- The expiry task first: the write tells it, with the reason it lapsed ---------------------------
select entitlements.subscribe(:c3, 'pro', 'trialing', trial_end => now() + interval '10 days') as t3 \gset
select pg_temp.age(:'t3', interval '11 days');
select entitlements.run_task('expire_subscriptions') is not null as tidy \gset
select is(pg_temp.told(:c3), '{"access.suspended trial_ended"}', 'tidied up by the expiry task: told by the write');
select is((select (payload ->> 'access_ended_at')::timestamptz from entitlements.outbox
            where kind = 'access.suspended' and customer_id = :c3),
          (select trial_end from entitlements.subscriptions where id = :'t3'), 'as of the trial end all the same');
select entitlements.run_task('time_events') is not null as again \gset
select is(pg_temp.told(:c3), '{"access.suspended trial_ended"}', 'and not again by time_events');

-- Access changed by writes ------------------------------------------------------------------------
select entitlements.subscribe(:c4, 'pro', period_end => now() + interval '20 days') as s4 \gset
update entitlements.subscriptions set status = 'unpaid' where id = :'s4';
select is(pg_temp.told(:c4), '{"access.suspended unpaid"}', 'unpaid: access.suspended in the same transaction');
select is((select (payload ->> 'access_ended_at')::timestamptz from entitlements.outbox
            where kind = 'access.suspended' and customer_id = :c4), now(), 'as of the change');
update entitlements.subscriptions set status = 'active' where id = :'s4';
select is(pg_temp.told(:c4), '{"access.suspended unpaid",access.restored}', 'active again: access.restored');
update entitlements.subscriptions set status = 'paused' where id = :'s4';
select is(pg_temp.told(:c4), '{"access.suspended unpaid",access.restored,"access.suspended paused"}',
          'each suspension is its own event');
select is((select count(distinct dedup_key)::int from entitlements.outbox where customer_id = :c4 and kind like 'access.%'),
          3, '(distinct keys)');
savepoint s;
update entitlements.subscriptions set status = 'active' where id = :'s4';
rollback to savepoint s;
select is((select state from entitlements.access_notices where subscription_id = :'s4'), 'suspended',
          'a rolled-back change tells nothing and leaves the notice as it was');
select entitlements.subscribe(:c4, 'team', 'incomplete') as s5 \gset
update entitlements.subscriptions set status = 'active', current_period_end = now() + interval '30 days' where id = :'s5';
select is((select count(*)::int from entitlements.outbox where customer_id = :c4 and kind = 'access.restored'), 1,
          'incomplete to active is a start, not a restoration');

-- Who sees the notices ------------------------------------------------------------------------------
set local role authenticated;
select set_config('request.jwt.claims', format('{"sub": "%s", "role": "authenticated"}', :c4), true) is not null as c \gset
select is((select count(*)::int from entitlements.access_notices), 0, 'a user reads no notices (admins only)');
select is((select count(*)::int from entitlements.outbox where kind like 'access.%'), 3, 'but reads its own access events');

-- set_profile -----------------------------------------------------------------------------------------
select entitlements.set_profile(:c4, 'me@example.com', 'Me', 'de') is null as p \gset
select is((select array[email, display_name, locale] from entitlements.customers where id = :c4),
          array['me@example.com', 'Me', 'de'], 'a user sets their own email, name and locale');
select throws_ok(format($$select entitlements.set_profile(%L, 'x@example.com')$$, :c3), '42501', NULL,
                 'but not another customer''s');
select throws_ok(format($$select entitlements.set_profile(%L, 'not an address')$$, :c4), '22023', NULL,
                 'a malformed email is refused');
select throws_ok(format($$select entitlements.set_profile(%L, 'a@b.co', E'bell\x07')$$, :c4), '22023', NULL,
                 'a display name with control characters too');
select throws_ok(format($$select entitlements.set_profile(%L, 'a@b.co', E'evil\u202Egnp.exe')$$, :c4), '22023', NULL,
                 'or with a right-to-left override');
select throws_ok(format($$select entitlements.set_profile(%L, E'a\u0001b@example.com')$$, :c4), '22023', NULL,
                 'an address with a control character in it is refused');
select is((select tenant_id from entitlements.customers where id = :c4), null, 'nothing else of the row changed');
reset role;
select entitlements.subscribe(:org, 'team') is not null as o \gset
select entitlements.add_member(:org, :c4, 'admin') is null as m \gset
set local role authenticated;
select set_config('request.jwt.claims', format('{"sub": "%s", "role": "authenticated"}', :c4), true) is not null as c \gset
select entitlements.set_profile(:org, 'billing@example.com', 'Org') is null as p \gset
select is((select email from entitlements.customers where id = :org), 'billing@example.com',
          'an organization''s admin sets the organization''s');
reset role;
set local role mallory3;
select throws_ok(format($$select entitlements.set_profile(%L, 'x@example.com')$$, :c4), '42501', NULL,
                 'a plain login role cannot call it');
reset role;

-- Joining and leaving an organization change the member's entitlements --------------------------
select is((select array[payload ->> 'change', payload ->> 'organization_id', payload ->> 'role'] from entitlements.outbox
            where kind = 'entitlements.changed' and customer_id = :c4),
          array['joined', :org::text, 'admin'], 'a new member hears entitlements.changed (joined)');
select entitlements.remove_member(:org, :c4) is null as r \gset
select is((select array_agg(payload ->> 'change' order by id) from entitlements.outbox
            where kind = 'entitlements.changed' and customer_id = :c4),
          array['joined', 'left'], 'and leaving (left)');

-- Supabase's auth.users email, copied by the trigger the operator attaches --------------------------
create schema auth;
create table auth.users (id uuid primary key, email varchar(255));
create trigger entitlements_email after insert or update of email on auth.users
    for each row execute function entitlements.sync_auth_email();
insert into auth.users values (:c4, 'auth@example.com');
select is(entitlements._customer_email(:c4), 'auth@example.com', 'the auth.users address first');
update auth.users set email = 'new@example.com' where id = :c4;
select is(entitlements._customer_email(:c4), 'new@example.com', 'kept up to date');
select is(entitlements._customer_email(:c1), null, 'no address at all: none');
create table public.not_auth (id uuid, email text);
create trigger wrong after insert on public.not_auth for each row execute function entitlements.sync_auth_email();
select throws_ok($$insert into public.not_auth values (gen_random_uuid(), 'x@example.com')$$, '39P01', NULL,
                 'the trigger refuses to run on any other table');
set local role mallory3;
create temp table mine (id uuid, email text);
select throws_ok($$create trigger t after insert on mine for each row execute function entitlements.sync_auth_email()$$,
                 '42501', NULL, 'and nobody but the owner may attach it');
reset role;

select * from finish();
rollback;
