\set ON_ERROR_STOP 1
\set QUIET 1
-- Issue #13, security monitoring: refusal signals (through the flush worker, which commits on
-- its own, so those rows outlive this transaction: they use fresh ids), each rule below and at
-- its threshold, repeats, incidents and their state machine, tenant scoping, the outbox.
begin;
select plan(95);
\ir fixtures/catalog.sql

-- The SQLSTATE a statement fails with, or 'ok'.
create function pg_temp.outcome(stmt text) returns text language plpgsql as $f$
begin
    execute stmt;
    return 'ok';
exception when others then
    return sqlstate;
end
$f$;
grant execute on function pg_temp.outcome(text) to public;

-- Waits (bounded) until the flush worker has written `n` refusals of a kind for a subject.
create function pg_temp.signals(p_kind text, p_subject text, n bigint) returns bigint language plpgsql volatile as $f$
declare
    v bigint;
begin
    for i in 1 .. 400 loop
        select coalesce(sum(s.count), 0) into v from entitlements.security_signals s
         where s.kind = p_kind and s.subject = p_subject;
        exit when v >= n;
        perform pg_sleep(0.05);
    end loop;
    return v;
end
$f$;

-- Adds counts as the flush worker would (rolled back with the test).
create function pg_temp.signal(p_kind text, p_subject text, n bigint, p_at timestamptz default now(),
                               p_detail text default 'minutes') returns void language sql as $f$
    select entitlements._record_signals(jsonb_build_array(jsonb_build_object(
        'kind', p_kind, 'subject', p_subject, 'detail', p_detail,
        'window_us', (extract(epoch from date_trunc('minute', p_at)) * 1e6)::bigint,
        'first_us', (extract(epoch from p_at) * 1e6)::bigint, 'last_us', (extract(epoch from p_at) * 1e6)::bigint,
        'count', n)))
$f$;

create function pg_temp.scan() returns jsonb language sql as $f$
    select (entitlements.run_task('security_scan')).details
$f$;

create function pg_temp.alert(p_rule text, p_subject text) returns entitlements.security_alerts language sql as $f$
    select * from entitlements.security_alerts where rule = p_rule and subject = p_subject order by id desc limit 1
$f$;

select gen_random_uuid() as user1, gen_random_uuid() as abuser, gen_random_uuid() as admin_a,
       gen_random_uuid() as admin_b, gen_random_uuid() as admin_c, gen_random_uuid() as newcomer,
       gen_random_uuid() as tenant1, gen_random_uuid() as tenant2, gen_random_uuid() as store_admin1,
       gen_random_uuid() as store_admin2, gen_random_uuid() as store_customer, gen_random_uuid() as intruder,
       gen_random_uuid() as quiet \gset
select entitlements.subscribe(:'abuser', 'free') is not null as s1 \gset
select entitlements.subscribe(:'user1', 'free') is not null as s2 \gset
insert into entitlements.admins (user_id) values (:'admin_a'), (:'admin_b'), (:'admin_c');
insert into entitlements.customers (id, email, display_name) values (:'admin_a', 'admin-a@example.test', 'Admin A');
-- Global admins whose profiles sit in a store: that store's admins could edit them.
insert into entitlements.customers (id, tenant_id, email) values (:'admin_b', :'tenant1', 'admin-b@example.test'),
                                                                  (:'admin_c', :'tenant1', null);
insert into entitlements.customers (id, tenant_id) values (:'store_customer', :'tenant1');
insert into entitlements.customers (id) values (:'quiet');
insert into entitlements.admins (user_id, tenant_id) values (:'store_admin1', :'tenant1'), (:'store_admin2', :'tenant2');
-- What those rows themselves trip (privilege_change) is not what this file tests next.
select pg_temp.scan() is not null as baseline \gset
update entitlements.security_alerts set status = 'closed', closed_at = now() where status = 'open';

-- Rules ----------------------------------------------------------------------------------------
select is((select count(*) from entitlements.security_rules()), 11::bigint, 'eleven rules ship');
select is((select array_agg(rule order by rule) from entitlements.security_rules() where not enabled),
          array['off_hours_admin'], 'all on but office hours, which need configuring');
select is(pg_temp.outcome($$select entitlements.configure_security_rule('no_such_rule', threshold => 3)$$), '22023',
          'an unknown rule is refused');
select is(pg_temp.outcome($$select entitlements.configure_security_rule('quota_abuse', threshold => 0)$$), '23514',
          'a threshold below 1 is refused');
select is(pg_temp.outcome($$select entitlements.configure_security_rule('off_hours_admin', config => '{"from": "18:00", "to": "09:00"}')$$),
          '22023', 'office hours that end before they start are refused');
select is(pg_temp.outcome($$select entitlements.configure_security_rule('off_hours_admin', config => '{"timezone": "Mars/Base"}')$$),
          '22023', 'so is an unknown time zone');
select is((select count(*) from entitlements.security_rules), 0::bigint, 'nothing was written');
select entitlements.configure_security_rule('feature_probing', threshold => 4, window_length => '2 minutes');
select is((select threshold || ' ' || window_length::text || ' ' || severity from entitlements.security_rules()
            where rule = 'feature_probing'), '4 00:02:00 low', 'a changed rule keeps what was not changed');

-- Signals through the flush worker --------------------------------------------------------------
select throws_ok(format($$select entitlements.consume(%L, 'minutes', 100)$$, :'abuser'), 'PT429') from generate_series(1, 3);
select is((select allowed from entitlements.try_consume(:'abuser', 'minutes', 100)), false, 'try_consume refuses too');
insert into entitlements.features (key, kind) values ('exports', 'metered');
select throws_ok(format($$select entitlements.consume(%L, 'exports', 1)$$, :'abuser'), 'PT403');
select is(pg_temp.signals('quota_refused', :'abuser', 4), 4::bigint,
          'three PT429 (each rolled back) and a refused try_consume: counted 4 by the flush worker');
select is(pg_temp.signals('feature_refused', :'abuser', 1), 1::bigint, 'a PT403 is counted as feature_refused');
select is((select detail from entitlements.security_signals where kind = 'quota_refused' and subject = :'abuser' limit 1),
          'minutes', 'with the feature');

set local role authenticated;
select set_config('request.jwt.claims', json_build_object('sub', :'user1', 'role', 'authenticated')::text, true) is not null as u \gset
select throws_ok($$select entitlements.run_task('health_snapshot')$$, '42501') from generate_series(1, 5);
reset role;
select is(pg_temp.signals('permission_refused', :'user1', 5), 5::bigint, 'five refused admin calls of one user');
set local role authenticated;
select set_config('request.jwt.claims', json_build_object('sub', :'admin_c', 'role', 'authenticated')::text, true) is not null as u \gset
select count(pg_temp.outcome(format($$select entitlements._require(false, 'probe_%s')$$, i))) as probes from generate_series(1, 40) i \gset
reset role;
select is(pg_temp.signals('permission_refused', :'admin_c', 40), 40::bigint, 'forty refusals under forty made-up action names: all counted');
select cmp_ok((select count(*) from entitlements.security_signals where kind = 'permission_refused' and subject = :'admin_c'),
              '<=', 17::bigint, 'in at most 16 details and one * (a caller cannot flood the table)');
select is((select detail from entitlements.security_signals where kind = 'permission_refused' and subject = :'user1' limit 1),
          'run_task', 'naming the action');
select is((pg_temp.scan() ->> 'alerts_opened')::int >= 1, true, 'the scan opens alerts');
select is((pg_temp.alert('refusal_burst', :'user1')).events, 5::bigint, 'refusal_burst at 5 in 5 minutes');
select is((pg_temp.alert('feature_probing', :'abuser')).subject, null, 'one PT403 is below feature_probing''s 4');
select is((pg_temp.alert('refusal_burst', :'abuser')).id, null, 'the customer refused by quota is no refusal_burst');
select pg_temp.signal('permission_refused', 'role:someone', 4, now(), 'add_admin');
select pg_temp.signal('feature_refused', :'abuser', 3, now() + interval '1 second', 'exports');
select pg_temp.scan() is not null as scanned \gset
select is((pg_temp.alert('refusal_burst', 'role:someone')).id, null, 'four refused admin calls: below refusal_burst''s 5');
select is((pg_temp.alert('feature_probing', :'abuser')).events, 4::bigint, 'four PT403 in 2 minutes: feature_probing at its 4');

-- quota_abuse below, at and past its threshold; repeats ------------------------------------------
select pg_temp.signal('quota_refused', :'user1', 49);
select pg_temp.signal('quota_refused', :'admin_c', 70, now() - interval '11 minutes');
select pg_temp.scan() is not null as scanned \gset
select is((pg_temp.alert('quota_abuse', :'user1')).id, null, '49 over-limit answers in 10 minutes: no alert');
select is((pg_temp.alert('quota_abuse', :'admin_c')).id, null, '70 older than the window: no alert');
select pg_temp.signal('quota_refused', :'user1', 1, now() + interval '1 second');
select pg_temp.scan() is not null as scanned \gset
select is((select (count, events, severity, status) from entitlements.security_alerts
            where rule = 'quota_abuse' and subject = :'user1'),
          row(1, 50::bigint, 'medium'::text, 'open'::text), 'the 50th opens one alert: count 1, 50 events, medium');
select is((pg_temp.alert('quota_abuse', :'user1')).customer_id, :'user1'::uuid, 'about that customer');
select pg_temp.scan() is not null as scanned \gset
select is((pg_temp.alert('quota_abuse', :'user1')).count, 1, 'a scan with no newer evidence repeats nothing');
select pg_temp.signal('quota_refused', :'user1', 7, now() + interval '2 seconds');
select pg_temp.scan() is not null as scanned \gset
select is((select (count(*), max(count), max(events)) from entitlements.security_alerts
            where rule = 'quota_abuse' and subject = :'user1'),
          row(1::bigint, 2, 57::bigint), 'newer evidence: still one alert, count 2, 57 events');

-- The audit-log rules -------------------------------------------------------------------------------
set local role authenticated;
select set_config('request.jwt.claims', json_build_object('sub', :'admin_a', 'role', 'authenticated')::text, true) is not null as a \gset
select entitlements.add_admin(:'newcomer');
select count(entitlements.grant_feature(:'abuser', 'agents', reason => 'support')) as g from generate_series(1, 10) \gset
select set_config('request.jwt.claims', json_build_object('sub', :'admin_b', 'role', 'authenticated')::text, true) is not null as b \gset
select count(entitlements.grant_feature(:'quiet', 'agents', reason => 'support')) as g from generate_series(1, 8) \gset
select entitlements.grant_feature(:'abuser', 'agents', reason => 'second opinion') is not null as g \gset
select set_config('request.jwt.claims', json_build_object('sub', :'admin_c', 'role', 'authenticated')::text, true) is not null as c \gset
select entitlements.grant_feature(:'abuser', 'agents', reason => 'third opinion') is not null as g \gset
select entitlements.grant_feature(:'quiet', 'agents', reason => 'second opinion') is not null as g \gset
reset role;
select set_config('request.jwt.claims', '', true) is not null as signed_out \gset
insert into entitlements.admins (user_id) values (:'intruder');  -- by direct SQL: no admin user
select pg_temp.scan() is not null as scanned \gset
select is((pg_temp.alert('privilege_change', :'newcomer')).severity, 'high', 'an admin added by an admin: high');
select is((pg_temp.alert('privilege_change', :'intruder')).severity, 'critical',
          'an admin added by a database role, no admin user: critical');
select is((pg_temp.alert('mass_grants', :'admin_a')).events, 10::bigint, '10 grants by one admin in 10 minutes');
create role monitoring_sneaky nologin;
grant entitlements_admin to monitoring_sneaky;
select pg_temp.scan() is not null as scanned \gset
select is((select (severity, details ->> 'change') from entitlements.security_alerts
            where rule = 'privilege_change' and subject = 'role:monitoring_sneaky'),
          row('critical'::text, 'granted entitlements_admin'::text), 'a database role granted entitlements_admin: critical');
select pg_temp.scan() is not null as scanned \gset
select is((pg_temp.alert('privilege_change', 'role:monitoring_sneaky')).count, 1, 'found once');
select is((select count(*) from entitlements.security_alerts
            where subject like 'role:%' and rule = 'privilege_change' and status = 'open'),
          1::bigint, 'the roles that were admins at the scan before raise nothing');
select is((pg_temp.alert('mass_grants', :'admin_b')).id, null, '9 grants by another (over two customers): none');
select is((pg_temp.alert('customer_many_admins', :'abuser')).events >= 3, true,
          'a customer''s grants changed by three admins');
select is((pg_temp.alert('customer_many_admins', :'quiet')).id, null, 'two admins: no alert');

-- Task failures, delivery failures, refused webhooks, office hours -------------------------------------
insert into entitlements.task_runs (task, started_at, finished_at, outcome, error)
select 'retention', now(), now(), 'error', 'disk full' from generate_series(1, 2);
select pg_temp.scan() is not null as scanned \gset
select is((pg_temp.alert('task_failures', 'task:retention')).id, null, 'two failed runs: below 3');
insert into entitlements.task_runs (task, started_at, finished_at, outcome, error) values ('retention', now(), now(), 'error', 'disk full');
select entitlements.add_webhook_endpoint('https://hooks.example.test/x', array['subscription.created']) as endpoint \gset
select entitlements.subscribe(gen_random_uuid(), 'free') is not null as s3 \gset
insert into entitlements.delivery_attempts (delivery_id, ok, status_code, error)
select d.id, false, 500, 'HTTP 500' from entitlements.deliveries d, generate_series(1, 5)
 where d.endpoint_id = :'endpoint';
select entitlements.record_signal('webhook_refused', 'stripe', 'signature_mismatch', 5);
select entitlements.record_signal('webhook_refused', 'stripe-eu', 'stale', 4);
select entitlements.add_webhook_endpoint('https://hooks.example.test/y', array['subscription.created']) as endpoint2 \gset
insert into entitlements.delivery_attempts (delivery_id, ok, status_code, error)
select d.id, false, 500, 'HTTP 500' from entitlements.deliveries d, generate_series(1, 4)
 where d.endpoint_id = :'endpoint2';
select pg_temp.scan() is not null as scanned \gset
select is((pg_temp.alert('task_failures', 'task:retention')).details ->> 'last_error', 'disk full', 'three: alert, with the error');
select is((pg_temp.alert('delivery_failures', 'endpoint:' || :'endpoint')).events, 5::bigint, 'five failed deliveries to one endpoint');
select is((pg_temp.alert('webhook_signature', 'stripe')).severity, 'high', 'five refused Stripe webhooks: high');
select is((pg_temp.alert('delivery_failures', 'endpoint:' || :'endpoint2')).id, null, 'four failures: below 5');
select is((pg_temp.alert('webhook_signature', 'stripe-eu')).id, null, 'four refused webhooks from another source: below 5');
select is((pg_temp.alert('off_hours_admin', :'admin_a')).id, null, 'office hours are off until configured');
select is(pg_temp.outcome($$select entitlements.record_signal('quota_refused', 'x')$$), '22023',
          'record_signal takes only what the worker sees');
select entitlements.configure_security_rule('off_hours_admin', enabled => true,
    config => '{"from": "00:00", "to": "24:00", "days": [1, 2, 3, 4, 5, 6, 7]}');
select pg_temp.scan() is not null as scanned \gset
select is((pg_temp.alert('off_hours_admin', :'admin_a')).id, null, 'office hours around the clock: nothing is off hours');
select entitlements.configure_security_rule('off_hours_admin',
    config => jsonb_build_object('days', jsonb_build_array(extract(isodow from now() + interval '1 day')::int)));
select pg_temp.scan() is not null as scanned \gset
select is((pg_temp.alert('off_hours_admin', :'admin_a')).details -> 'tables' ? 'entitlements.grants', true,
          'office hours on: today is not a working day, so every admin change is off hours');

-- High and critical alerts go out through the outbox ------------------------------------------------
select is((select count(*) from entitlements.outbox o
            where o.kind = 'security.alert' and o.customer_id is null
              and (o.payload ->> 'alert_id')::bigint in (select id from entitlements.security_alerts
                                                          where severity in ('high', 'critical'))),
          (select count(*) from entitlements.security_alerts where severity in ('high', 'critical')),
          'one security.alert event per high or critical alert, about no customer');
select is((select count(*) from entitlements.outbox o
            where o.kind = 'security.alert'
              and (o.payload ->> 'alert_id')::bigint in (select id from entitlements.security_alerts where severity = 'medium')),
          0::bigint, 'none for medium ones');
select is((select count(distinct d.event_id) from entitlements.deliveries d join entitlements.outbox o on o.id = d.event_id
            where o.kind = 'security.alert' and d.channel = 'email' and d.target = 'admin-a@example.test'),
          (select count(*) from entitlements.outbox where kind = 'security.alert'),
          'each emailed to the global admin with an email');
select is((select count(*) from entitlements.deliveries where target = 'admin-b@example.test'), 0::bigint,
          'not to a global admin whose profile is in a store (its admins could redirect the mail)');
select is((select (a.id is not null, a.tenant_id) from pg_temp.alert('refusal_burst', :'admin_c') a),
          row(true, null::uuid), 'an alert about an admin''s own conduct is global, wherever its profile sits');
select is((select array_agg(severity || '=' || open order by entitlements._severity_rank(severity)) from entitlements.open_alert_counts()),
          (select array_agg(s || '=' || (select count(*) from entitlements.security_alerts a where a.severity = s and a.status = 'open')
                            order by n)
             from unnest(array['info', 'low', 'medium', 'high', 'critical']) with ordinality x(s, n)),
          'open_alert_counts: open alerts by severity');

-- Incidents -------------------------------------------------------------------------------------------
select (pg_temp.alert('quota_abuse', :'user1')).id as quota_alert, (pg_temp.alert('privilege_change', :'newcomer')).id as priv_alert \gset
set local role authenticated;
select set_config('request.jwt.claims', json_build_object('sub', :'admin_a', 'role', 'authenticated')::text, true) is not null as a \gset
select entitlements.open_incident('Abuse and a new admin', array[:quota_alert, :priv_alert]::bigint[]) as incident \gset
select is((select (status, severity, opened_by) from entitlements.security_incidents where id = :incident),
          row('open'::text, 'high'::text, :'admin_a'::text), 'an incident: open, the highest severity of its alerts, who opened it');
select is((select count(*) from entitlements.security_alerts where incident_id = :incident), 2::bigint, 'its alerts');
select is(pg_temp.outcome(format($$select entitlements.assign_incident(%s, %L)$$, :incident, :'abuser')), '22023',
          'assigning to someone who is not an admin is refused');
select is((entitlements.assign_incident(:incident, :'admin_b', 'yours')).assignee, :'admin_b'::uuid, 'assigned to an admin');
select is((entitlements.acknowledge_incident(:incident)).status, 'acknowledged', 'open -> acknowledged');
select is(pg_temp.outcome(format($$select entitlements.acknowledge_incident(%s)$$, :incident)), '55000',
          'acknowledged once: a second acknowledgement does not overwrite who and when');
select is(pg_temp.outcome(format($$select entitlements.resolve_incident(%s, '  ')$$, :incident)), '22023',
          'resolving needs a resolution');
select is((select (status, resolved_by) from entitlements.resolve_incident(:incident, 'customer throttled; admin confirmed')),
          row('resolved'::text, :'admin_a'::text), 'acknowledged -> resolved, with who');
select is((select count(*) from entitlements.security_alerts where incident_id = :incident and status = 'closed'), 2::bigint,
          'its alerts closed');
select is(pg_temp.outcome(format($$select entitlements.acknowledge_incident(%s)$$, :incident)), '55000',
          'resolved -> acknowledged is refused');
select is(pg_temp.outcome(format($$select entitlements.assign_incident(%s, %L)$$, :incident, :'admin_c')), '55000',
          'a resolved incident is not reassigned');
select is(pg_temp.outcome(format($$update entitlements.security_incidents set status = 'acknowledged', acknowledged_at = now(), acknowledged_by = 'x' where id = %s$$, :incident)),
          '42501', 'an admin writes incidents only through the functions');
select is(pg_temp.outcome(format($$update entitlements.security_alerts set status = 'closed', closed_at = now(), severity = 'info' where id = %s$$, :quota_alert)),
          '42501', 'and alerts not at all');
select is(pg_temp.outcome(format($$insert into entitlements.incident_notes (incident_id, author, body) values (%s, 'someone else', 'signed by another')$$, :incident)),
          '42501', 'nor notes in another''s name');
reset role;
select is(pg_temp.outcome(format($$update entitlements.security_incidents set status = 'acknowledged', acknowledged_at = now(), acknowledged_by = 'x' where id = %s$$, :incident)),
          '55000', 'even the owner does not move an incident out of order');
select is(pg_temp.outcome(format($$update entitlements.security_alerts set status = 'open', closed_at = null where incident_id = %s$$, :incident)),
          '55000', 'and a closed alert stays closed');
set local role authenticated;
select is((select (status, reopened, resolved_at) from entitlements.reopen_incident(:incident, 'it came back')),
          row('open'::text, 1, null::timestamptz), 'resolved -> open (reopen)');
select is((select array_agg(body order by id) from entitlements.incident_notes where incident_id = :incident),
          array['yours', 'reopened: it came back'], 'notes kept');
reset role;
select is((select count(*) from entitlements.audit_log
            where table_name = 'entitlements.security_incidents' and row_key = :'incident'),
          5::bigint, 'every change audited: opened, assigned, acknowledged, resolved, reopened');

-- Tenant scoping -----------------------------------------------------------------------------------------
select pg_temp.signal('quota_refused', :'store_customer', 60);
select pg_temp.scan() is not null as scanned \gset
select is((pg_temp.alert('quota_abuse', :'store_customer')).tenant_id, :'tenant1'::uuid, 'an alert about a store''s customer is the store''s');
select (pg_temp.alert('quota_abuse', :'store_customer')).id as store_alert \gset
set local role authenticated;
select set_config('request.jwt.claims', json_build_object('sub', :'store_admin2', 'role', 'authenticated')::text, true) is not null as t2 \gset
select is((select count(*) from entitlements.security_alerts), 0::bigint, 'another store''s admin sees no alert');
select is(pg_temp.outcome(format($$select entitlements.open_incident('mine', array[%s]::bigint[])$$, :store_alert)), '22023',
          'nor files it (it does not exist for them)');
select is(pg_temp.outcome($$select entitlements.configure_security_rule('quota_abuse', threshold => 1000)$$), '42501',
          'nor configures rules');
select is(pg_temp.outcome(format($$insert into entitlements.security_alerts (rule, subject, dedup_key, tenant_id, severity, events, evidence_until)
                                   values ('privilege_change', 'x', 'privilege_change:x', %L, 'info', 0, 'infinity')$$, :'tenant2')),
          '42501', 'nor squats a dedup key with an alert of its own');
select set_config('request.jwt.claims', json_build_object('sub', :'store_admin1', 'role', 'authenticated')::text, true) is not null as t1 \gset
select is((select array_agg(subject) from entitlements.security_alerts), array[:'store_customer'],
          'the store''s admin sees its alert only');
select entitlements.open_incident('Store abuse', array[:store_alert]::bigint[]) as store_incident \gset
select is((select tenant_id from entitlements.security_incidents where id = :store_incident), :'tenant1'::uuid,
          'and opens an incident of the store');
select is(pg_temp.outcome(format($$select entitlements.acknowledge_incident(%s)$$, :incident)), '22023',
          'a global incident does not exist for a store admin');
select is((entitlements.acknowledge_incident(:store_incident)).status, 'acknowledged', 'its own it works');
select isnt(entitlements.boost_quota(:'store_customer', 'minutes', 10, reason => 'goodwill after the incident'), null,
            'and it boosts its customer''s quota (regression: RLS refused the tenantless customers row)');
select is(pg_temp.outcome(format($$select entitlements.assign_incident(%s, %L)$$, :store_incident, :'store_admin2')), '22023',
          'and assigns it to no admin of another store');
select is(pg_temp.outcome($$select entitlements.open_incident('global', tenant => null)$$), '42501',
          'opens no global incident');
select set_config('request.jwt.claims', json_build_object('sub', :'user1', 'role', 'authenticated')::text, true) is not null as u \gset
select is((select count(*) from entitlements.security_incidents) + (select count(*) from entitlements.security_signals)
          + (select count(*) from entitlements.incident_notes), 0::bigint, 'a signed-in user sees no incident, signal or note');
reset role;

-- A plain login role ------------------------------------------------------------------------------------------
create role monitoring_plain login;
set local role monitoring_plain;
select is(array(select s || ': ' || pg_temp.outcome(s) from unnest(array[
              $$select entitlements.configure_security_rule('quota_abuse', threshold => 1)$$,
              $$select * from entitlements.security_rules()$$,
              $$select entitlements.open_incident('x')$$,
              $$select entitlements.record_signal('webhook_refused', 'stripe')$$,
              $$select * from entitlements.open_alert_counts()$$,
              $$select entitlements._record_signals('[]')$$,
              $$select entitlements._note_refusal('quota_refused', 'x', 'y')$$,
              $$select count(*) from entitlements.security_alerts$$,
              $$select count(*) from entitlements.security_incidents$$,
              $$select count(*) from entitlements.security_signals$$,
              $$select count(*) from entitlements.incident_notes$$]) s
             where pg_temp.outcome(s) <> '42501'),
          '{}'::text[], 'a plain login role: every new function and table refuses with 42501');
reset role;

select * from finish();
rollback;
