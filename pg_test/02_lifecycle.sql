\set ON_ERROR_STOP 1
\set QUIET 1
begin;
select plan(30);
\ir fixtures/catalog.sql

-- Customers: a = active, t = trialing, c = canceled, d = past_due, ...
\set a '''00000000-0000-0000-0000-00000000000a'''
\set t '''00000000-0000-0000-0000-00000000000b'''
\set c '''00000000-0000-0000-0000-00000000000c'''
\set e '''00000000-0000-0000-0000-00000000000e'''
\set n '''00000000-0000-0000-0000-0000000000ff'''

-- Default plan for someone with no subscription.
select ok(not entitlements.has_feature(:n, 'agents'), 'no subscription: the default plan (free) has no agents');
select is(entitlements.entitlements(:n) ->> 'plan', 'free', 'no subscription: entitlements() shows the default plan');
select is(entitlements.entitlements(:n) -> 'features' -> 'files' -> 'limit', '3'::jsonb, 'and its limits');

-- Active until the period end, and not one statement longer: no job runs in between.
select entitlements.subscribe(:a, 'pro', period_end => clock_timestamp() + interval '1 second') as sub_a \gset
select ok(entitlements.has_feature(:a, 'agents'), 'active pro grants agents');
select is(entitlements.entitlements(:a) ->> 'status', 'active', 'entitlements() shows the status');
select pg_sleep(1.2);
select ok(not entitlements.has_feature(:a, 'agents'), 'past its period end it grants nothing, at once');
select is(entitlements.entitlements(:a) ->> 'plan', 'free', 'and the customer falls back to the default plan');

-- Trial: the plan's trial_days when no trial end is given; a short explicit one ends on time.
select entitlements.subscribe(:t, 'pro', 'trialing') as sub_t \gset
select ok((select trial_end between now() + interval '14 days' - interval '1 minute' and now() + interval '14 days'
             from entitlements.subscriptions where id = :'sub_t'), 'trial_end defaults to the plan''s 14 trial days');
select ok(entitlements.has_feature(:t, 'agents'), 'trialing grants');
update entitlements.subscriptions set trial_end = clock_timestamp() + interval '1 second' where id = :'sub_t';
select ok(entitlements.has_feature(:t, 'agents'), 'trialing grants until the trial end');
select pg_sleep(1.2);
select ok(not entitlements.has_feature(:t, 'agents'), 'a trial past its end grants nothing');

-- Cancel at period end keeps access until the end; immediate cancel stops at once.
select entitlements.subscribe(:c, 'pro', period_end => clock_timestamp() + interval '2 seconds') as sub_c \gset
select entitlements.cancel(:'sub_c');
select is((select status from entitlements.subscriptions where id = :'sub_c'), 'canceled', 'cancel sets status canceled');
select ok(entitlements.has_feature(:c, 'agents'), 'canceled at period end still grants before the end');
select is((entitlements.entitlements(:c) -> 'cancel_at_period_end')::boolean, true, 'entitlements() shows cancel_at_period_end');
select pg_sleep(2.2);
select ok(not entitlements.has_feature(:c, 'agents'), 'and stops when the period ends');

select entitlements.subscribe(:e, 'pro', period_end => now() + interval '30 days') as sub_e \gset
select ok(entitlements.has_feature(:e, 'agents'), 'a fresh subscription grants');
select entitlements.cancel(:'sub_e', at_period_end => false);
select ok(not entitlements.has_feature(:e, 'agents'), 'an immediate cancellation stops access in the next statement');

-- Statuses that do not grant.
select is(array_agg(s order by s), array['incomplete', 'incomplete_expired', 'paused', 'unpaid'],
          'incomplete, incomplete_expired, paused and unpaid never grant')
  from unnest(array['unpaid', 'incomplete', 'incomplete_expired', 'paused']) as s
 where not entitlements.has_feature(
        (select entitlements.subscribe(gen_random_uuid(), 'pro', s, period_end => now() + interval '1 month')),
        'agents');

-- past_due grants within the plan's grace period (pro: 3 days), not after.
select entitlements.subscribe('00000000-0000-0000-0000-0000000000d1', 'pro', 'past_due') as sub_d \gset
select ok(entitlements.has_feature('00000000-0000-0000-0000-0000000000d1', 'agents'), 'past_due grants within grace');
update entitlements.subscriptions set status_changed_at = now() - interval '3 days 1 second' where id = :'sub_d';
select ok(not entitlements.has_feature('00000000-0000-0000-0000-0000000000d1', 'agents'), 'past_due beyond grace grants nothing');

-- change_plan
select entitlements.subscribe('00000000-0000-0000-0000-0000000000d2', 'pro') as sub_p \gset
select entitlements.change_plan(:'sub_p', 'team', 'upgrade requested by customer');
select is(entitlements.entitlements('00000000-0000-0000-0000-0000000000d2') ->> 'plan', 'team', 'change_plan moves the plan');
select is((select reason from entitlements.audit_log where row_key = :'sub_p' and action = 'update' order by id desc limit 1),
          'upgrade requested by customer', 'the reason is in the audit log');

-- Bad input: clear errors, proper SQLSTATEs, nothing written.
select count(*) as subs_before from entitlements.subscriptions \gset
select throws_ok($$select entitlements.subscribe('00000000-0000-0000-0000-000000000bad', 'platinum')$$, '22023',
                 'unknown plan "platinum"', 'unknown plan');
select throws_ok($$select entitlements.subscribe('00000000-0000-0000-0000-000000000bad', 'pro', 'activ')$$, '22023',
                 'unknown subscription status "activ"', 'unknown status');
select throws_ok($$select entitlements.subscribe('00000000-0000-0000-0000-000000000bad', 'pro', period_end => now() - interval '1 day')$$,
                 '22023', NULL, 'a period end in the past');
select throws_ok($$select entitlements.subscribe('00000000-0000-0000-0000-000000000bad', 'pro', quantity => 0)$$,
                 '22023', NULL, 'a quantity below 1');
select throws_ok($$select entitlements.subscribe(NULL, 'pro')$$, '22004', 'customer must not be NULL', 'NULL customer');
select throws_ok($$select entitlements.has_feature('00000000-0000-0000-0000-000000000bad'::uuid, 'agentz')$$, '22023',
                 'unknown feature "agentz"', 'unknown feature in a check');
select is((select count(*) from entitlements.subscriptions), :subs_before::bigint, 'bad input wrote nothing');
select ok(not exists (select 1 from entitlements.customers where id = '00000000-0000-0000-0000-000000000bad'),
          'no customer was created by a refused call');

select * from finish();
rollback;
