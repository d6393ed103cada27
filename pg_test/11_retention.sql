\set ON_ERROR_STOP 1
\set QUIET 1
-- Bounded growth: settings, the usage_partitions and retention tasks, Stripe dead letters.
begin;
select plan(30);
\ir fixtures/catalog.sql
create role ops login;
grant entitlements_admin to ops;
create role mallory login;

-- Settings: defaults without a row; admins only; bounds.
select is((entitlements._settings()).stripe_max_attempts, 20, 'without a settings row every setting has its default');
select is((entitlements._settings()).audit_log_keep, null, 'and the audit log is kept forever');
set local role authenticated;
select set_config('request.jwt.claims', '{"sub": "00000000-0000-0000-0000-000000000a01", "role": "authenticated"}', true) is not null as c \gset
select throws_ok($$insert into entitlements.settings (stripe_max_attempts) values (1)$$, '42501', NULL,
                 'a signed-in user cannot change settings');
select throws_ok($$select entitlements.ensure_usage_partitions(1)$$, '42501', NULL,
                 'nor make partitions (a SECURITY DEFINER function that asks who calls)');
select throws_ok($$select entitlements._task_retention()$$, '42501', NULL, 'nor run the retention task directly');
reset role;
set local role mallory;
select throws_ok($$select * from entitlements.settings$$, '42501', NULL, 'a plain login role cannot read settings');
reset role;
select throws_ok($$insert into entitlements.settings (audit_log_keep) values ('1 day')$$, '23514', NULL,
                 'the audit log is kept at least 30 days');
insert into entitlements.settings (stripe_max_attempts, stripe_events_keep) values (3, '7 days');
select is((select count(*)::int from entitlements.audit_log where table_name = 'entitlements.settings'), 1,
          'a settings change is audited');

-- usage_partitions, as a non-superuser admin role: months ahead made, by the extension's owner.
set local role ops;
select is((entitlements.run_task('usage_partitions')).outcome, 'ok', 'an entitlements_admin role runs usage_partitions');
reset role;
select is((select count(*)::int from pg_inherits i join pg_class c on c.oid = i.inhrelid
            where i.inhparent = 'entitlements.usage_ledger'::regclass and c.relname <> 'usage_ledger_default'), 4,
          'this month and three ahead');
select is((select count(*)::int from pg_inherits i join pg_class c on c.oid = i.inhrelid
            where i.inhparent = 'entitlements.usage_ledger'::regclass
              and c.relowner <> (select nspowner from pg_namespace where nspname = 'entitlements')), 0,
          'every partition belongs to the extension''s owner');

-- Stripe dead letters: after stripe_max_attempts (3) failures the event waits for an admin.
select entitlements.stripe_record_event('{"id": "evt_dead", "type": "customer.updated", "created": 1700000000,
                                          "data": {"object": {"id": "cus_dead"}}}') as r \gset
select isnt(entitlements.stripe_event_failed('evt_dead', 'boom 1'), null, 'a first failure is retried later');
select isnt(entitlements.stripe_event_failed('evt_dead', 'boom 2'), null, 'a second too');
select is(entitlements.stripe_event_failed('evt_dead', 'boom 3'), null, 'the third makes it a dead letter');
update entitlements.stripe_events set next_attempt_at = now() - interval '1 hour' where id = 'evt_dead';
select is((select count(*)::int from entitlements.stripe_pending_events(100) where id = 'evt_dead'), 0,
          'a dead letter is not pending, however due');
select ok((select dead_at is not null and attempts = 3 from entitlements.stripe_events where id = 'evt_dead'), 'it is marked dead');
set local role authenticated;
select throws_ok($$select entitlements.stripe_retry_event('evt_dead')$$, '42501', NULL, 'a user cannot retry it');
reset role;
select is(entitlements.stripe_retry_event('evt_dead'), true, 'an admin retries it');
select is((select count(*)::int from entitlements.stripe_pending_events(100) where id = 'evt_dead'), 1,
          'and it is pending again, attempts from zero');

-- retention: applied events and (when configured) audit rows older than their retention.
insert into entitlements.stripe_events (id, type, created, payload, applied_at, outcome)
values ('evt_old', 'customer.updated', now() - interval '30 days', '{}', now() - interval '8 days', 'ignored'),
       ('evt_new', 'customer.updated', now(), '{}', now(), 'ignored');
insert into entitlements.audit_log (at, actor_role, action, table_name) values (now() - interval '400 days', 'test', 'insert', 'old');
select is(((entitlements.run_task('retention')).details ->> 'stripe_events_deleted')::int, 1,
          'retention deletes applied events older than stripe_events_keep');
select is((select count(*)::int from entitlements.audit_log where table_name = 'old'), 1,
          'and keeps the audit log while audit_log_keep is not set');
update entitlements.settings set audit_log_keep = '365 days';
select is(((entitlements.run_task('retention')).details ->> 'audit_rows_deleted')::int, 1,
          'with audit_log_keep it deletes older audit rows');
select is((select count(*)::int from entitlements.audit_log where action = 'retention'), 1,
          'and records the purge in the audit log');

-- Leases: outside work one worker does at a time, without an open transaction.
select is(entitlements.take_lease('job', 'w1', '1 minute'), true, 'a free lease is taken');
select is(entitlements.take_lease('job', 'w2', '1 minute'), false, 'not by another holder while it runs');
select is(entitlements.take_lease('job', 'w1', '1 minute'), true, 'its holder renews it');
update entitlements.leases set until = clock_timestamp() - interval '1 second' where name = 'job';
select is(entitlements.take_lease('job', 'w2', '1 minute'), true, 'an expired lease is anyone''s');
select is(entitlements.release_lease('job', 'w1'), false, 'only the holder gives it back');
select throws_ok($$select entitlements.take_lease('job', 'w3', '2 hours')$$, '22023', NULL, 'a lease lasts at most an hour');
set local role authenticated;
select throws_ok($$select entitlements.take_lease('other', 'me', '1 minute')$$, '42501', NULL, 'users take no leases');
reset role;

select * from finish();
rollback;
