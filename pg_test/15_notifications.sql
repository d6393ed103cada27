\set ON_ERROR_STOP 1
\set QUIET 1
-- Notifications (issue #11, first slice): events written by the changes that cause them,
-- fanned out to webhook endpoints and emails, claimed and recorded by the worker.
begin;
select plan(48);
\ir fixtures/catalog.sql
create role ops2 login;
grant entitlements_admin to ops2;
create role mallory2 login;

\set c1 '''00000000-0000-0000-0000-00000000f001'''
\set c2 '''00000000-0000-0000-0000-00000000f002'''
insert into entitlements.customers (id, email, display_name) values (:c1, 'ann@example.com', 'Ann <admin>');
select entitlements.add_webhook_endpoint('https://app.example.com/hooks', array['subscription.created', 'payment.failed'])
    as ep \gset
select entitlements.add_webhook_endpoint('https://all.example.com/hooks', array['*'], 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')
    as ep_all \gset
select ok((select secret ~ '^whsec_[A-Za-z0-9+/]{43}=$' from entitlements.webhook_endpoints where id = :'ep'),
          'a secret is generated when none is given');

-- Events from the changes that cause them ------------------------------------------------------
savepoint before_rollback;
select entitlements.subscribe(:c1, 'pro') is not null as s \gset
rollback to savepoint before_rollback;
select is((select count(*)::int from entitlements.outbox), 0, 'a rolled-back change writes no event');

select entitlements.subscribe(:c1, 'pro') as sub \gset
select is((select array_agg(kind) from entitlements.outbox), array['subscription.created'], 'subscribe: subscription.created');
select is((select payload ->> 'plan' from entitlements.outbox where kind = 'subscription.created'), 'pro', 'with the plan');
select is((select array_agg(channel || ' ' || target order by id) from entitlements.deliveries),
          array['webhook https://app.example.com/hooks', 'webhook https://all.example.com/hooks', 'email ann@example.com'],
          'fanned out to the endpoints that want the kind, and the customer''s email');
update entitlements.subscriptions set status = 'past_due' where id = :'sub';
select is((select array_agg(kind order by id) from entitlements.outbox where kind <> 'subscription.created'),
          array['payment.failed', 'subscription.updated'], 'past_due: payment.failed and subscription.updated');
select entitlements.change_plan(:'sub', 'team', 'more seats') is null as cp \gset
select entitlements.cancel(:'sub', false) is null as cx \gset
select is((select count(*)::int from entitlements.outbox where kind = 'subscription.canceled'), 1, 'cancel: subscription.canceled');
select entitlements.grant_feature(:c1, 'agents', reason => 'pilot') as g \gset
select entitlements.revoke_grant(:'g', 'pilot over') is null as r \gset
select is((select array_agg(payload ->> 'change' order by id) from entitlements.outbox where kind = 'entitlements.changed'),
          array['granted', 'revoked'], 'grants: entitlements.changed, granted then revoked');
select is((select count(*)::int from entitlements.outbox), (select count(distinct dedup_key)::int from entitlements.outbox),
          'one event per dedup key');
select entitlements.remove_webhook_endpoint(:'ep_all') as removed \gset
select entitlements.subscribe(:c2, 'pro') is not null as s2 \gset
select is((select count(*)::int from entitlements.deliveries d join entitlements.outbox o on o.id = d.event_id
            where o.customer_id = :c2), 1, 'a removed endpoint gets nothing new (and c2 has no email)');
select is((select count(*)::int from entitlements.deliveries where endpoint_id = :'ep_all' and status = 'pending'), 0,
          'and what it still had to receive is dead');

-- Templates -----------------------------------------------------------------------------------------
select is(entitlements._render_template('Hi {{ customer_name }}, {{plan}}{{missing}}!',
                                        '{"customer_name": "A<b>", "plan": "pro"}', true),
          'Hi A&lt;b&gt;, pro!', 'placeholders, HTML-escaped in HTML, unknown ones empty');
select is(entitlements._render_template('{{customer_name}} on {{plan}}', '{"customer_name": "{{plan}}", "plan": "pro"}', false),
          '{{plan}} on pro', 'a value is never expanded itself');
select is((entitlements._email_template('subscription.created', 'de')).subject, 'Welcome to {{plan}}',
          'the shipped template when admins wrote none');
insert into entitlements.email_templates (kind, locale, subject, body_text) values ('subscription.created', 'de', 'Willkommen', 'Hallo');
select is((entitlements._email_template('subscription.created', 'de')).subject, 'Willkommen', 'an admin''s template replaces it');

-- The worker ----------------------------------------------------------------------------------------
set local role ops2;
select count(*) as claimed from entitlements.delivery_claim('w1', '1 minute', 100, array['webhook']) \gset
select ok(:claimed > 0, 'the worker claims due webhook deliveries');
select is((select count(*)::int from entitlements.delivery_claim('w2', '1 minute', 100, array['webhook'])), 0,
          'another worker gets none while the leases last');
select delivery_id as d_email, subject, body_html, message_id from entitlements.delivery_claim('w1', '1 minute', 1, array['email']) \gset
select is(:'subject'::text, 'Welcome to pro', 'an email comes rendered');
select ok(:'body_html' like '%Ann &lt;admin&gt;%', 'with the customer''s name escaped in HTML');
select ok(entitlements.delivery_done(:d_email, 'w1', 250, 12), 'sent');
select is((select status from entitlements.deliveries where id = :d_email), 'delivered', 'recorded as delivered');
select is((select array[ok::text, status_code::text, latency_ms::text] from entitlements.delivery_attempts where delivery_id = :d_email),
          array['true', '250', '12'], 'with its attempt');
select is(entitlements.delivery_done(:d_email, 'w2', 200, 1), false, 'a worker without the lease records nothing');
select min(d.id) as d_hook from entitlements.deliveries d
 where d.channel = 'webhook' and d.status = 'pending' and exists (select 1 from entitlements.leases l where l.name = 'delivery:' || d.id and l.holder = 'w1') \gset
select is((entitlements.delivery_failed(:d_hook, 'w2', 'HTTP 500', 500, 30)).outcome, 'lease_lost',
          'a worker without the lease records no failure, and hears so');
select ok((select f.outcome = 'retry' and f.next_attempt_at between now() + interval '0.75 seconds' and now() + interval '1.25 seconds'
             from entitlements.delivery_failed(:d_hook, 'w1', 'HTTP 500', 500, 30) f), 'a failure waits a second, +-25%');
reset role;
update entitlements.settings set delivery_max_attempts = 2;
insert into entitlements.settings (delivery_max_attempts) select 2 where not exists (select 1 from entitlements.settings);
update entitlements.deliveries set next_attempt_at = now() where id = :d_hook;
set local role ops2;
select count(*) from entitlements.delivery_claim('w1', '1 minute', 100, array['webhook']) \gset
select is(entitlements.delivery_failed(:d_hook, 'w1', 'HTTP 500 again', 500, 30), row('final', null)::entitlements.failure,
          'after settings.delivery_max_attempts: dead (final)');
select is((select array[status, attempts::text, last_error] from entitlements.deliveries where id = :d_hook),
          array['dead', '2', 'HTTP 500 again'], 'the dead letter keeps its error');
select is((select count(*)::int from entitlements.delivery_claim('w3', '1 minute', 100) where delivery_id = :d_hook), 0,
          'a dead letter is not claimed');
select ok(entitlements.retry_delivery(:d_hook), 'an admin retries it');
select is((select array[status, attempts::text] from entitlements.deliveries where id = :d_hook), array['pending', '0'],
          'pending again');
select count(*) from entitlements.delivery_claim('w1', '1 minute', 100, array['webhook']) \gset
select is(entitlements.delivery_failed(:d_hook, 'w1', 'SMTP: 550 no such user', 550, 30, permanent => true),
          row('final', null)::entitlements.failure, 'a permanent failure (an SMTP 5xx) is final at once');
select is((select array[status, attempts::text] from entitlements.deliveries where id = :d_hook), array['dead', '1'],
          'dead after one attempt');
select is(entitlements.delivery_stats(),
          (select jsonb_build_object(
                      'pending', jsonb_build_object('webhook', count(*) filter (where status = 'pending' and channel = 'webhook'),
                                                    'email', count(*) filter (where status = 'pending' and channel = 'email')),
                      'dead', jsonb_build_object('webhook', count(*) filter (where status = 'dead' and channel = 'webhook'),
                                                 'email', count(*) filter (where status = 'dead' and channel = 'email')))
             from entitlements.deliveries),
          'delivery_stats counts pending deliveries and dead letters per channel');
select ok(entitlements.retry_delivery(:d_hook), 'and retried the same way');
select throws_ok($$select entitlements.delivery_failed(-1, 'w1', 'x')$$, 'P0002', NULL, 'an unknown delivery is refused');
select throws_ok($$select * from entitlements.delivery_claim('w1', '0 seconds', 1)$$, '22023', NULL, 'a lease under a second is refused');
select throws_ok($$select entitlements.add_webhook_endpoint('ftp://x', array['*'])$$, '22023', NULL, 'an endpoint is http(s)');
select throws_ok($$select entitlements.add_webhook_endpoint('https://x.example.com', array['Not A Kind'])$$, '22023', NULL,
                 'kinds are event kinds or *');
select throws_ok($$select entitlements.add_webhook_endpoint('https://x.example.com', array['*'], 'plain')$$, '22023', NULL,
                 'a given secret is a whsec_ secret');
reset role;

-- Who sees what -----------------------------------------------------------------------------------
set local role authenticated;
select set_config('request.jwt.claims', '{"sub": "00000000-0000-0000-0000-00000000f002", "role": "authenticated"}', true)
    is not null as c \gset
select is((select count(*)::int from entitlements.outbox where customer_id <> :c2), 0, 'a customer sees only its own events');
select is((select count(*)::int from entitlements.webhook_endpoints), 0, 'and no endpoint (nor its secret)');
select is((select count(*)::int from entitlements.deliveries where channel = 'webhook'), 0, 'nor the app''s webhook deliveries');
select throws_ok($$select entitlements.add_webhook_endpoint('https://evil.example.com', array['*'])$$, '42501', NULL,
                 'a user cannot register an endpoint');
select throws_ok($$select * from entitlements.delivery_claim('me', '1 minute', 10)$$, '42501', NULL, 'nor claim deliveries');
select throws_ok($$select entitlements.delivery_stats()$$, '42501', NULL, 'nor read the queue''s figures');
select throws_ok($$insert into entitlements.email_templates (kind, subject, body_text) values ('subscription.created', 'x', 'y')$$,
                 '42501', NULL, 'nor write templates');
reset role;
set local role mallory2;
select throws_ok($$select * from entitlements.outbox$$, '42501', NULL, 'a plain login role reads no events');
select throws_ok($$select * from entitlements.webhook_endpoints$$, '42501', NULL, 'nor endpoints');
reset role;

select * from finish();
rollback;
