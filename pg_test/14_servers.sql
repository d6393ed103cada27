\set ON_ERROR_STOP 1
\set QUIET 1
-- Provisioning, database side (issue #10): servers, their desired state at read time, the
-- worker's claim/report/failed, secrets, the outbox, and who may do what.
begin;
select plan(87);
create role ops login;
grant entitlements_admin to ops;
create role mallory login;

select entitlements.apply_catalog($${
  "features": [{"key": "chat", "kind": "flag"}],
  "plans": [
    {"key": "free", "name": "Free", "default": true, "public": true, "entitlements": {"chat": true}},
    {"key": "host", "name": "Host", "public": true, "grace_days": 3,
     "entitlements": {"chat": true, "resources": {"servers": 1, "cpu": "1", "memory": "2Gi",
       "data_storage": "10Gi", "media_storage": "20Gi", "users": 50, "domains": 1}}},
    {"key": "big", "name": "Big", "public": true,
     "entitlements": {"chat": true, "resources": {"servers": 2, "cpu": "4", "memory": "8Gi",
       "data_storage": "50Gi", "media_storage": "200Gi", "users": 500, "domains": 2, "custom_domain": true}}}
  ]}$$::jsonb) is not null as applied \gset

\set u1 '''00000000-0000-0000-0000-00000000e001'''
\set u2 '''00000000-0000-0000-0000-00000000e002'''
\set u3 '''00000000-0000-0000-0000-00000000e003'''

-- Subscribing makes the first server -------------------------------------------------------
select entitlements.subscribe(:u1, 'host') as sub1 \gset
select entitlements.subscribe(:u3, 'free') is not null as s3 \gset
select is((select count(*)::int from entitlements.servers where customer_id = :u1), 1,
          'subscribing to a plan with resources makes the first server');
select is((select count(*)::int from entitlements.servers where customer_id = :u3), 0,
          'a plan without resources makes none');
select id as srv1, name as name1 from entitlements.servers where customer_id = :u1 \gset
select is((select array[desired, phase, namespace, domains[1]] from entitlements.servers where id = :'srv1'),
          array['running', 'pending', 'mx-' || :'name1', :'name1' || '.matrix.example.com'],
          'it should run, is pending, lives in mx-<name>, answers for <name>.<settings.server_domain>');
select ok((select signing_key ~ '^ed25519 a_[0-9a-f]{4} [A-Za-z0-9+/]{43}$'
                  and registration_shared_secret ~ '^[0-9a-f]{64}$' and macaroon_secret_key ~ '^[0-9a-f]{64}$'
                  and registration_shared_secret <> macaroon_secret_key
             from entitlements.server_secrets where server_id = :'srv1'),
          'its secrets are made with it: a Synapse ed25519 signing key and two 256-bit secrets');
select entitlements.change_plan(:'sub1', 'big', 'more room') is null as changed \gset
select is((select count(*)::int from entitlements.servers where customer_id = :u1), 1,
          'a plan change keeps the server (no second one)');

-- create_server ------------------------------------------------------------------------------
select lives_ok($$select entitlements.create_server('00000000-0000-0000-0000-00000000e001', 'second', 'chat.example.org')$$,
                'create_server adds a server up to resources.servers');
select throws_ok($$select entitlements.create_server('00000000-0000-0000-0000-00000000e001', 'third')$$,
                 'PT429', NULL, 'and no further');
select throws_ok($$select entitlements.create_server('00000000-0000-0000-0000-00000000e003', 'nope')$$,
                 'PT403', NULL, 'a customer without resources gets none');
select entitlements.subscribe(:u2, 'big') is not null as s2 \gset
select throws_ok($$select entitlements.create_server('00000000-0000-0000-0000-00000000e002', 'second')$$,
                 '23505', 'server name "second" is taken', 'names are unique across customers');
select throws_ok($$select entitlements.create_server('00000000-0000-0000-0000-00000000e002', 'x2', 'chat.example.org')$$,
                 '23505', NULL, 'so is a domain among live servers');
select throws_ok($$select entitlements.create_server('00000000-0000-0000-0000-00000000e002', 'Bad_Name')$$,
                 '22023', NULL, 'a name is a DNS label');
select throws_ok($$select entitlements.create_server('00000000-0000-0000-0000-00000000e002', 'ok2', 'not a domain')$$,
                 '22023', NULL, 'a domain is a DNS name');
select throws_ok($$select entitlements.create_server(null, 'x3')$$, '22004', NULL, 'a NULL customer is refused');
select is((select count(*)::int from entitlements.server_records where customer_id = :u2), 1,
          'refused calls wrote nothing');

-- Desired state at read time -------------------------------------------------------------------
select entitlements.subscribe(:u3, 'host') as sub3 \gset
select id as srv3 from entitlements.servers where customer_id = :u3 \gset
update entitlements.subscriptions set status = 'past_due' where id = :'sub3';
select is((select desired from entitlements.servers where id = :'srv3'), 'running', 'past_due within grace: still running');
-- Grace (3 days) ran out a week ago; no task ran.
update entitlements.subscriptions set status_changed_at = now() - interval '10 days' where id = :'sub3';
-- (The server is as old as the subscription: retention never counts from before it existed.
-- Its creation never changes, so the test steps around the trigger that says so.)
set local session_replication_role = replica;
update entitlements.server_records set created_at = now() - interval '10 days' where id = :'srv3';
set local session_replication_role = origin;
select is((select desired from entitlements.servers where id = :'srv3'), 'suspended',
          'past_due beyond grace: suspended at once, no job needed');
insert into entitlements.settings (server_retention) values ('5 days');
select is((select desired from entitlements.servers where id = :'srv3'), 'terminated',
          'without access for longer than settings.server_retention: terminated');
update entitlements.settings set server_retention = '30 days';
select is((select desired from entitlements.servers where id = :'srv3'), 'suspended', 'the retention is configurable');
update entitlements.subscriptions set status = 'active' where id = :'sub3';
select is((select desired from entitlements.servers where id = :'srv3'), 'running', 'payment back: running again');
select entitlements.grant_feature(:u3, 'resources', '{"servers": 1, "cpu": "8", "memory": "8Gi"}', reason => 'vip')
    is not null as g \gset
select isnt((select generation from entitlements.servers where id = :'srv3'),
            (select generation from entitlements.servers where id = :'srv1'), 'generations differ with resources');

-- The worker: claim, report, failures ---------------------------------------------------------
set local role ops;
select is((select count(*)::int from entitlements.provision_claim('w1', '1 minute', 100)), 4,
          'the worker claims every server that needs work');
select is((select count(*)::int from entitlements.provision_claim('w2', '1 minute', 100)), 0,
          'another worker gets none of them while the leases last');
select is((select count(*)::int from entitlements.provision_claim('w1', '1 minute', 2)), 0,
          'nor does the holder itself, so no server is worked on twice at once');
select is(entitlements.provision_report(:'srv1', 'w2', 1, 'ready', '[]', null), false,
          'a worker without the lease cannot report');
select generation as gen1 from entitlements.servers where id = :'srv1' \gset
select ok(entitlements.provision_report(:'srv1', 'w1', :gen1, 'ready', '[{"type": "Ready", "status": "True"}]',
                                        '{"cpu": "4"}'), 'the holder reports the server ready');
select is((select array[phase, (observed_generation = generation)::text, (ready_at is not null)::text]
             from entitlements.servers where id = :'srv1'),
          array['ready', 'true', 'true'], 'ready, converged, ready_at set');
select is((select count(*)::int from entitlements.outbox where kind = 'server.ready' and customer_id = :u1), 1,
          'server.ready is in the outbox');
select is((select count(*)::int from entitlements.provision_claim('w2', '1 minute', 100) where server_id = :'srv1'), 0,
          'a converged server is not claimed');
select is((select count(*)::int from entitlements.provision_claim('w2', '1 minute', 100, true) where server_id = :'srv1'), 1,
          'unless the worker resyncs');
select xmin::text as xmin_before from entitlements.server_records where id = :'srv1' \gset
select count(*) as audit_before from entitlements.audit_log where table_name = 'entitlements.server_records' \gset
select ok(entitlements.provision_report(:'srv1', 'w2', :gen1, 'ready', '[{"type": "Ready", "status": "True"}]', null),
          'a resync reports the same');
select is((select xmin::text from entitlements.server_records where id = :'srv1'), :'xmin_before',
          'which writes no row version');
select is((select count(*) from entitlements.audit_log where table_name = 'entitlements.server_records'), :audit_before::bigint,
          'and no audit row');
select is((select count(*)::int from entitlements.outbox where kind = 'server.ready' and customer_id = :u1), 1,
          'and no second server.ready');
select is((select count(*)::int from entitlements.provision_claim('w7', '1 minute', 100, true, :'srv1'::uuid)
             where server_id = :'srv1'), 0, 'a resync from a cursor skips resting servers up to it');
delete from entitlements.leases where holder = 'w7';
select is((select count(*)::int from entitlements.provision_claim('w7', '1 minute', 100, true, '00000000-0000-0000-0000-000000000000')
             where server_id = :'srv1'), 1, 'and takes those after it');
delete from entitlements.leases where holder = 'w7';
select count(*) from entitlements.provision_claim('w2', '1 minute', 100, true) \gset
select ok(entitlements.provision_report(:'srv1', 'w2', :gen1, 'provisioning', '[]', null), 'a plan change rolls it');
select count(*) from entitlements.provision_claim('w2', '1 minute', 100) \gset
select ok(entitlements.provision_report(:'srv1', 'w2', :gen1, 'ready', '[]', null), 'ready again');
select is((select count(*)::int from entitlements.outbox where customer_id = :u1 and kind like 'server.%'), 1,
          'which tells the customer nothing new');
select count(*) from entitlements.provision_claim('w2', '1 minute', 100, true) \gset
select entitlements.provision_report(:'srv1', 'w2', :gen1, 'suspended', '[]', null) as r \gset
select count(*) from entitlements.provision_claim('w2', '1 minute', 100, true) \gset
select entitlements.provision_report(:'srv1', 'w2', :gen1, 'suspended', '[]', null) as r \gset
select count(*) from entitlements.provision_claim('w2', '1 minute', 100, true) \gset
select entitlements.provision_report(:'srv1', 'w2', :gen1, 'ready', '[]', null) as r \gset
select is((select array_agg(kind order by id) from entitlements.outbox where customer_id = :u1 and kind like 'server.%'),
          array['server.ready', 'server.suspended', 'server.resumed'], 'suspended once, then resumed');
select ok(entitlements.provision_report(:'srv3', 'w1', 7, 'provisioning', '[]', null, '5 seconds'),
          'a server still converging is reported with a requeue');
select is((select array[phase, (next_attempt_at = now() + interval '5 seconds')::text] from entitlements.servers where id = :'srv3'),
          array['provisioning', 'true'], 'and looked at again after it');
select throws_ok($$select entitlements.provision_report(gen_random_uuid(), 'w1', 1, 'bogus', '[]', null)$$, '22023', NULL,
                 'an unknown phase is refused');
select throws_ok(format('select entitlements.provision_report(%L, %L, 1, %L, %L, null)', :'srv1', 'w1', 'ready', '{"a": 1}'),
                 '22023', NULL, 'conditions must be an array');
select throws_ok($$select entitlements.provision_failed(gen_random_uuid(), 'w1', 'x')$$, 'P0002', NULL,
                 'a failure of an unknown server is refused');
select throws_ok($$select * from entitlements.provision_claim('w1', '0 seconds', 1)$$, '22023', NULL,
                 'a lease shorter than a second is refused');
reset role;
update entitlements.settings set server_max_attempts = 2;
select id as srv2 from entitlements.servers where name = 'second' \gset
set local role ops;
select count(*) from entitlements.provision_claim('w9', '1 minute', 100, true) \gset
select is((select count(*)::int from entitlements.leases where holder = 'w9'), 1,
          'a resync claims only the one server no other worker holds (and that is due)');
select is((entitlements.provision_failed(:'srv2', 'w9', 'a late report')).outcome, 'lease_lost',
          'a worker without the lease records nothing, and hears so');
select ok((select f.outcome = 'retry' and f.next_attempt_at between now() + interval '0.75 seconds' and now() + interval '1.25 seconds'
             from entitlements.provision_failed(:'srv2', 'w1', 'API answered 500') f),
          'the first failure waits a second, +-25%');
select is((select array[attempts::text, last_error, phase] from entitlements.servers where id = :'srv2'),
          array['1', 'API answered 500', 'pending'], 'the attempt and its error are kept');
reset role;
update entitlements.server_records set next_attempt_at = now() where id = :'srv2';
set local role ops;
select is((select count(*)::int from entitlements.provision_claim('w1', '1 minute', 100) where server_id = :'srv2'), 1,
          'due again after the backoff');
select is(entitlements.provision_failed(:'srv2', 'w1', 'API answered 500 again'), row('final', null)::entitlements.failure,
          'after settings.server_max_attempts failures: final');
select is((select phase from entitlements.servers where id = :'srv2'), 'failed', 'the server is failed');
select is((select count(*)::int from entitlements.outbox where kind = 'server.failed'), 1, 'server.failed is in the outbox');
select is((select count(*)::int from entitlements.provision_claim('w1', '1 minute', 100, true) where server_id = :'srv2'), 0,
          'a failed server is not claimed');
select ok(entitlements.retry_server(:'srv2'), 'an admin retries it');
select is((select array[phase, attempts::text] from entitlements.servers where id = :'srv2'), array['pending', '0'],
          'pending again, attempts from zero');
select count(*) from entitlements.provision_claim('w1', '1 minute', 100) \gset
select is(entitlements.provision_failed(:'srv2', 'w1', 'resources: cpu is not a quantity', permanent => true),
          row('final', null)::entitlements.failure, 'a permanent failure (bad data, not a flaky API)');
select is((select array[phase, attempts::text] from entitlements.servers where id = :'srv2'), array['failed', '1'],
          'fails the server at once');
select ok(entitlements.retry_server(:'srv2'), 'and an admin retries it the same way');
select is((entitlements.provision_stats() -> 'phases' ->> 'ready')::int, 1, 'provision_stats counts phases');
select is((select count(*)::int from entitlements.server_specs(:u1)), 2, 'server_specs lists a customer''s servers');
select is((select secrets ->> 'macaroon_secret_key' from entitlements.server_specs(:u1) where server_id = :'srv1'),
          (select macaroon_secret_key from entitlements.server_secrets where server_id = :'srv1'),
          'with the secrets made at creation');
reset role;

-- Terminated: the name stays taken ------------------------------------------------------------
update entitlements.server_records set phase = 'terminated', terminated_at = now() where id = :'srv3';
select throws_ok($$select entitlements.create_server('00000000-0000-0000-0000-00000000e003', (select name from entitlements.server_records where customer_id = '00000000-0000-0000-0000-00000000e003'))$$,
                 '23505', NULL, 'a terminated server''s name is never reused');
set local role ops;
select throws_ok($$delete from entitlements.server_records$$, '42501', NULL, 'server records are never deleted, not even by admins');
select throws_ok(format('update entitlements.server_records set name = %L where id = %L', 'renamed', :'srv1'), '22023', NULL,
                 'a server''s name never changes (nor its customer, domains or creation)');
select throws_ok(format('update entitlements.server_records set phase = %L where id = %L', 'pending', :'srv3'), '22023', NULL,
                 'terminated is final');
select throws_ok($$select * from entitlements.server_domains$$, '42501', NULL, 'the domain bookkeeping is the extension''s own');
reset role;
select is((select count(*)::int from entitlements.server_domains where server_id = :'srv3'), 0,
          'a terminated server''s domains are free again');
select throws_ok(format('select entitlements.create_server(%L, %L, %L)', :u3, 'x9', 'chat.other.example.net'), 'PT403', NULL,
                 'a custom domain needs a plan with custom_domain');
select throws_ok(format('select entitlements.create_server(%L, %L, %L)', :u2, 'x8', :'name1' || '.matrix.example.com'),
                 'PT403', NULL, 'and nobody answers for another server''s name under the platform''s domain');

-- As a signed-in user ------------------------------------------------------------------------
set local role authenticated;
select set_config('request.jwt.claims', '{"sub": "00000000-0000-0000-0000-00000000e002", "role": "authenticated"}', true)
    is not null as c \gset
select is((select array_agg(distinct customer_id) from entitlements.servers), array[:u2::uuid],
          'a user sees only their own servers');
select throws_ok($$select * from entitlements.server_secrets$$, '42501', NULL, 'and no secrets');
select throws_ok($$select entitlements._server_work(r) from entitlements.server_records r$$, '42501', NULL,
                 'not even through the internal function');
select lives_ok($$select entitlements.create_server('00000000-0000-0000-0000-00000000e002', 'mine')$$,
                'a user adds a server of their own (their plan allows two)');
select throws_ok($$select entitlements.create_server('00000000-0000-0000-0000-00000000e003', 'theirs')$$, '42501', NULL,
                 'but not for another customer');
select throws_ok($$insert into entitlements.server_records (customer_id, name, domains, phase) values ('00000000-0000-0000-0000-00000000e002', 'forged', '{forged.example.com}', 'ready')$$,
                 '42501', NULL, 'nor insert a server with a phase of their choosing');
update entitlements.server_records set phase = 'ready', attempts = 0;
select is((select count(*)::int from entitlements.servers where phase = 'ready'), 0,
          'a direct UPDATE changes nothing (RLS)');
select is((select count(*)::int from entitlements.outbox where customer_id <> '00000000-0000-0000-0000-00000000e002'), 0,
          'another customer''s events are hidden');
select throws_ok($$insert into entitlements.outbox (kind, customer_id, dedup_key) values ('server.ready', '00000000-0000-0000-0000-00000000e002', 'forged')$$,
                 '42501', NULL, 'and a user cannot forge one');
select throws_ok($$select * from entitlements.provision_claim('me', '1 minute', 10)$$, '42501', NULL, 'nor claim servers');
select throws_ok(format('select entitlements.retry_server(%L)', :'srv2'), '42501', NULL, 'nor retry a server');
select throws_ok($$select entitlements._feature_config('00000000-0000-0000-0000-00000000e001', 'resources')$$, '42501', NULL,
                 'nor read another customer''s resources');
reset role;
-- A tenant admin administers its tenant's customers, but not where servers stand.
update entitlements.customers set tenant_id = '00000000-0000-0000-0000-0000000000f1' where id = :u1;
insert into entitlements.admins (user_id, tenant_id) values ('00000000-0000-0000-0000-00000000ad01', '00000000-0000-0000-0000-0000000000f1');
set local role authenticated;
select set_config('request.jwt.claims', '{"sub": "00000000-0000-0000-0000-00000000ad01", "role": "authenticated"}', true)
    is not null as c \gset
select ok(entitlements.is_admin_of(:u1), 'a tenant admin of u1''s tenant');
update entitlements.server_records set phase = 'terminated' where customer_id = :u1;
select is((select count(*)::int from entitlements.server_records where customer_id = :u1 and phase = 'terminated'), 0,
          'cannot free a slot by marking a server terminated (RLS: global admins only)');
reset role;
set local role mallory;
select throws_ok($$select * from entitlements.servers$$, '42501', NULL, 'a plain login role reads no servers');
select throws_ok($$select * from entitlements.outbox$$, '42501', NULL, 'nor events');
select throws_ok($$select entitlements.create_server('00000000-0000-0000-0000-00000000e002', 'm1')$$, '42501', NULL,
                 'and adds none');
reset role;

select * from finish();
rollback;
