\set ON_ERROR_STOP 1
\set QUIET 1
-- The manual lifecycle for apps that bill without Stripe: renew (the next paid period; a
-- trial converts) and set_status (past_due, unpaid, paused and back), audited with their
-- reason, told through the outbox, refused with a clear error otherwise.
begin;
select plan(27);
\ir fixtures/catalog.sql
create role mallory4 login;

\set c1 '''00000000-0000-0000-0000-0000000c0001'''
\set c2 '''00000000-0000-0000-0000-0000000c0002'''

create function pg_temp.last_reason(sub uuid) returns text language sql as $$
    select reason from entitlements.audit_log
     where table_name = 'entitlements.subscriptions' and row_key like '%' || sub || '%' and action = 'update'
     order by id desc limit 1
$$;

-- renew -----------------------------------------------------------------------------------------------
select entitlements.subscribe(:c1, 'pro', 'trialing', trial_end => now() + interval '5 days') as s1 \gset
select entitlements.renew(:'s1', now() + interval '30 days') is null as r \gset
select is((select array[status, (current_period_start = now())::text, (current_period_end = now() + interval '30 days')::text,
                        (trial_end = now())::text]
             from entitlements.subscriptions where id = :'s1'),
          array['active', 'true', 'true', 'true'], 'renew converts a trial: active now until period_end, the trial ends now');
select is(pg_temp.last_reason(:'s1'), 'renew', 'audited with its reason');
select is((select payload -> 'previous' ->> 'status' from entitlements.outbox
            where kind = 'subscription.updated' and customer_id = :c1 order by id desc limit 1),
          'trialing', 'and told: subscription.updated from trialing');
select is(entitlements.has_feature(:c1, 'agents'), true, 'it grants');
select throws_ok(format($$select entitlements.renew(%L, now() - interval '1 day')$$, :'s1'), '22023', NULL,
                 'a period_end in the past is refused');
select throws_ok(format($$select entitlements.renew(%L, 'infinity')$$, :'s1'), '22023', NULL, 'so is infinity');
select throws_ok(format($$select entitlements.renew(%L, NULL)$$, :'s1'), '22023', NULL, 'and NULL');
select throws_ok($$select entitlements.renew('00000000-0000-0000-0000-00000000dead', now() + interval '1 day')$$, 'P0002', NULL,
                 'an unknown subscription');

-- set_status ------------------------------------------------------------------------------------------
select entitlements.set_status(:'s1', 'past_due', 'card declined') is null as x \gset
select is((select status from entitlements.subscriptions where id = :'s1'), 'past_due', 'set_status: past_due');
select is(pg_temp.last_reason(:'s1'), 'card declined', 'audited with the reason given');
select is((select count(*)::int from entitlements.outbox where kind = 'payment.failed' and customer_id = :c1), 1,
          'payment.failed is told');
select entitlements.renew(:'s1', now() + interval '30 days') is null as r \gset
select is((select status from entitlements.subscriptions where id = :'s1'), 'active', 'renew after a failed payment: active');
select entitlements.set_status(:'s1', 'paused', 'customer asked') is null as x \gset
select is(entitlements.has_feature(:c1, 'agents'), false, 'paused grants nothing');
select is((select count(*)::int from entitlements.outbox where kind = 'access.suspended' and customer_id = :c1), 1,
          'access.suspended is told');
select throws_ok(format($$select entitlements.renew(%L, now() + interval '30 days')$$, :'s1'), '55000', NULL,
                 'a paused subscription is resumed, not renewed');
select entitlements.set_status(:'s1', 'active', 'back') is null as x \gset
select is(entitlements.has_feature(:c1, 'agents'), true, 'active again');
select is((select count(*)::int from entitlements.outbox where kind = 'access.restored' and customer_id = :c1), 1,
          'access.restored is told');
select entitlements.set_status(:'s1', 'active', 'again') is null as x \gset
select is(pg_temp.last_reason(:'s1'), 'back', 'the same status again changes nothing');
select throws_ok(format($$select entitlements.set_status(%L, 'canceled', 'x')$$, :'s1'), '22023', NULL,
                 'canceling is cancel()''s');
select throws_ok(format($$select entitlements.set_status(%L, 'trialing', 'x')$$, :'s1'), '22023', NULL,
                 'a trial is subscribe()''s');
select throws_ok(format($$select entitlements.set_status(%L, 'bogus', 'x')$$, :'s1'), '22023', NULL, 'an unknown status');
select throws_ok(format($$select entitlements.set_status(%L, 'unpaid', ' ')$$, :'s1'), '22023', NULL, 'a reason is required');
select entitlements.cancel(:'s1', false) is null as x \gset
select throws_ok(format($$select entitlements.set_status(%L, 'active', 'x')$$, :'s1'), '55000', NULL,
                 'an ended subscription keeps its status');

-- Stripe's subscriptions are Stripe's ---------------------------------------------------------------
insert into entitlements.customers (id) values (:c2);
insert into entitlements.subscriptions (customer_id, plan_key, status, source, current_period_end)
values (:c2, 'pro', 'active', 'stripe', now() + interval '10 days') returning id as s2 \gset
select throws_ok(format($$select entitlements.renew(%L, now() + interval '30 days')$$, :'s2'), '55000', NULL,
                 'renew refuses a Stripe subscription');
select throws_ok(format($$select entitlements.set_status(%L, 'paused', 'x')$$, :'s2'), '55000', NULL,
                 'so does set_status');

-- Who may ----------------------------------------------------------------------------------------------
select entitlements.subscribe(:c2, 'team') as s3 \gset
set local role authenticated;
select set_config('request.jwt.claims', format('{"sub": "%s", "role": "authenticated"}', :c2), true) is not null as c \gset
select throws_ok(format($$select entitlements.set_status(%L, 'active', 'x')$$, :'s3'), '42501', NULL,
                 'a customer cannot set its own status');
reset role;
set local role mallory4;
select throws_ok(format($$select entitlements.renew(%L, now() + interval '30 days')$$, :'s3'), '42501', NULL,
                 'nor can a plain login role renew');
reset role;

select * from finish();
rollback;
