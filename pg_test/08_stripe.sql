\set ON_ERROR_STOP 1
\set QUIET 1
begin;
select plan(62);
\ir fixtures/catalog.sql
update entitlements.plans set stripe_price_ids = '{price_pro_m,price_pro_y}' where key = 'pro';
update entitlements.plans set stripe_price_ids = '{price_team_m}' where key = 'team';

-- Builders: a subscription as the current API shapes it (periods on the items), and an event.
create function pg_temp.sub(id text, customer text, price text, status text, p_start bigint, p_end bigint,
                            extra jsonb default '{}')
returns jsonb language sql as $$
    select jsonb_build_object('id', id, 'object', 'subscription', 'customer', customer, 'status', status,
        'cancel_at_period_end', false, 'metadata', '{}'::jsonb,
        'items', jsonb_build_object('object', 'list', 'data', jsonb_build_array(jsonb_build_object(
            'id', 'si_' || id, 'object', 'subscription_item', 'price', jsonb_build_object('id', price),
            'quantity', 1, 'current_period_start', p_start, 'current_period_end', p_end)))) || extra
$$;
create function pg_temp.ev(id text, type text, created bigint, obj jsonb)
returns jsonb language sql as $$
    select jsonb_build_object('id', id, 'object', 'event', 'type', type, 'created', created,
                              'api_version', '2025-03-31.basil', 'data', jsonb_build_object('object', obj))
$$;
create function pg_temp.status(stripe_id text) returns text language sql as $$
    select status from entitlements.subscriptions where stripe_subscription_id = stripe_id
$$;
select extract(epoch from now())::bigint as t0 \gset
select :t0 - 86400 as p0, :t0 + 29 * 86400 as p1, :t0 + 29 * 86400 as q0, :t0 + 59 * 86400 as q1 \gset

\set a '''00000000-0000-0000-0000-0000000005a1'''
\set b '''00000000-0000-0000-0000-0000000005b1'''
\set c '''00000000-0000-0000-0000-0000000005c1'''

-- The event store: once by id -------------------------------------------------------------
select is(entitlements.stripe_record_event(pg_temp.ev('evt_a1', 'customer.subscription.created', :t0,
          pg_temp.sub('sub_a', 'cus_a', 'price_pro_m', 'active', :p0, :p1, jsonb_build_object('metadata',
              jsonb_build_object('entitlements_customer_id', :a))))), true, 'a new event is stored: true');
select is(entitlements.stripe_record_event(pg_temp.ev('evt_a1', 'customer.subscription.created', :t0,
          pg_temp.sub('sub_a', 'cus_a', 'price_pro_m', 'active', :p0, :p1))), false, 'the same id again: false');
select is((select count(*)::int from entitlements.stripe_events where id = 'evt_a1'), 1, 'stored once');
select is((select payload #>> '{data,object,metadata,entitlements_customer_id}' from entitlements.stripe_events
            where id = 'evt_a1'), '00000000-0000-0000-0000-0000000005a1', 'the first delivery is the one kept');
select throws_ok($$select entitlements.stripe_record_event('{"id": "evt_x", "type": "a.b"}')$$, '22023', null,
                 'an event without created and data.object is refused (22023)');
select throws_ok($$select entitlements.stripe_record_event('{"id": "nope", "type": "a.b", "created": 1, "data": {"object": {}}}')$$,
                 '22023', null, 'an id that is not evt_... is refused');
select is((select count(*)::int from entitlements.stripe_events where id in ('evt_x', 'nope')), 0, 'and nothing is stored');
select is((select array_agg(id) from entitlements.stripe_pending_events()), array['evt_a1'], 'the new event is pending');

-- Applying: customer by metadata, price to plan, periods on the items ---------------------
select is(entitlements.stripe_apply_event('evt_a1'), 'created', 'applying creates the subscription');
select is(entitlements.stripe_apply_event('evt_a1'), 'duplicate', 'applying it again does nothing');
select is((select stripe_customer_id from entitlements.customers where id = :a), 'cus_a',
          'metadata.entitlements_customer_id linked the Stripe customer');
select results_eq($$select plan_key, status, source, current_period_end from entitlements.subscriptions
                     where stripe_subscription_id = 'sub_a'$$,
                  format($$values ('pro', 'active', 'stripe', to_timestamp(%s))$$, :p1),
                  'plan from stripe_price_ids, status, and the period from the subscription item');
select ok(entitlements.has_feature(:a, 'agents'), 'and it grants at once');
select ok((select applied_at is not null and outcome = 'created' and attempts = 1 from entitlements.stripe_events
            where id = 'evt_a1'), 'the event is marked applied with its outcome');
select is((select count(*)::int from entitlements.stripe_pending_events()), 0, 'nothing is pending any more');
select is((select reason from entitlements.audit_log where table_name = 'entitlements.subscriptions'
            order by id desc limit 1), 'stripe customer.subscription.created evt_a1', 'audited with the event as the reason');

-- Older API versions: periods on the subscription, the price as `plan`.
select entitlements.link_stripe_customer(:b, 'cus_b');
select is(entitlements.stripe_apply_subscription(jsonb_build_object('id', 'sub_b', 'object', 'subscription',
              'customer', 'cus_b', 'status', 'trialing', 'current_period_start', :p0, 'current_period_end', :p1,
              'trial_end', :p1, 'items', jsonb_build_object('data', jsonb_build_array(jsonb_build_object(
                  'plan', jsonb_build_object('id', 'price_team_m'), 'quantity', 3))))), 'created',
          'an older-API subscription (periods on the subscription, plan on the item) applies');
select results_eq($$select plan_key, status, quantity, current_period_start, trial_end from entitlements.subscriptions
                     where stripe_subscription_id = 'sub_b'$$,
                  format($$values ('team', 'trialing', 3, to_timestamp(%s), to_timestamp(%s))$$, :p0, :p1),
                  'plan, status, quantity, period and trial end read from the older shape');
select throws_ok(format($$select entitlements.stripe_apply_subscription(%L)$$,
                        pg_temp.sub('sub_u', 'cus_b', 'price_unknown', 'active', :p0, :p1)),
                 '22023', null, 'a price no plan lists is refused (22023)');
select throws_ok(format($$select entitlements.stripe_apply_subscription(%L)$$,
                        pg_temp.sub('sub_n', 'cus_nobody', 'price_pro_m', 'active', :p0, :p1)),
                 'P0002', null, 'an unlinked Stripe customer is P0002 (retried later)');

-- Ordering: an older state never overwrites a newer one ---------------------------------------
select is(entitlements.stripe_apply_subscription(pg_temp.sub('sub_a', 'cus_a', 'price_pro_m', 'past_due', :p0, :p1),
                                                 to_timestamp(:t0 + 20)), 'updated', 'a newer state applies');
select is(entitlements.stripe_apply_subscription(pg_temp.sub('sub_a', 'cus_a', 'price_pro_m', 'active', :p0, :p1),
                                                 to_timestamp(:t0 + 10)), 'stale', 'an older one arriving late is stale');
select is(pg_temp.status('sub_a'), 'past_due', 'and changes nothing');
-- Same `created` second: the later billing period wins, then the later status.
select is(entitlements.stripe_apply_subscription(pg_temp.sub('sub_a', 'cus_a', 'price_pro_m', 'active', :q0, :q1),
                                                 to_timestamp(:t0 + 20)), 'updated', 'same second, next period: applies');
select is(entitlements.stripe_apply_subscription(pg_temp.sub('sub_a', 'cus_a', 'price_pro_m', 'past_due', :p0, :p1),
                                                 to_timestamp(:t0 + 20)), 'stale', 'same second, earlier period: stale');
select is(entitlements.stripe_apply_subscription(pg_temp.sub('sub_a', 'cus_a', 'price_pro_m', 'canceled', :q0, :q1),
                                                 to_timestamp(:t0 + 20)), 'updated', 'same second and period: canceled beats active');
select is(entitlements.stripe_apply_subscription(pg_temp.sub('sub_a', 'cus_a', 'price_pro_m', 'active', :q0, :q1),
                                                 to_timestamp(:t0 + 20)), 'stale', 'and active cannot come back in that second');
select is(entitlements.stripe_apply_subscription(pg_temp.sub('sub_a', 'cus_a', 'price_pro_m', 'canceled', :q0, :q1),
                                                 to_timestamp(:t0 + 20)), 'stale', 'the very same state again: nothing to do');
select ok(not entitlements.has_feature(:a, 'agents'), 'canceled grants nothing');
-- A fetched object (observed_at NULL) is the current state: it wins, and moves the key past now.
select is(entitlements.stripe_apply_subscription(pg_temp.sub('sub_a', 'cus_a', 'price_pro_y', 'active', :q0, :q1)),
          'updated', 'an object fetched from the API wins over any payload');
select is(entitlements.stripe_apply_subscription(pg_temp.sub('sub_a', 'cus_a', 'price_pro_m', 'canceled', :q0, :q1),
                                                 to_timestamp(:t0 + 20)), 'stale', 'a payload older than the fetch is stale');
select is(entitlements.stripe_apply_subscription(pg_temp.sub('sub_a', 'cus_a', 'price_pro_y', 'active', :q0, :q1)),
          'unchanged', 'fetching the same state again writes nothing');
-- Stripe's canceled is final even with cancel_at_period_end still set.
select entitlements.stripe_apply_subscription(pg_temp.sub('sub_a', 'cus_a', 'price_pro_y', 'canceled', :q0, :q1,
                                              jsonb_build_object('cancel_at_period_end', true, 'canceled_at', :t0)));
select results_eq($$select status, cancel_at_period_end, ended_at from entitlements.subscriptions where stripe_subscription_id = 'sub_a'$$,
                  format($$values ('canceled', false, to_timestamp(%s))$$, :t0), 'canceled: no access to the period end, ended at canceled_at');
select ok(not entitlements.has_feature(:a, 'agents'), 'so it grants nothing');
-- Cancel at period end: still active, access until the period end.
select entitlements.stripe_apply_subscription(pg_temp.sub('sub_b', 'cus_b', 'price_team_m', 'active', :p0, :p1,
                                              jsonb_build_object('cancel_at_period_end', true)));
select ok(entitlements.has_feature(:b, 'agents') and (entitlements.entitlements(:b) ->> 'cancel_at_period_end')::boolean,
          'active with cancel_at_period_end grants and shows it');

-- Paused and resumed: the events carry the subscription like any other.
select entitlements.stripe_record_event(pg_temp.ev('evt_b_pause', 'customer.subscription.paused', :t0 + 300,
    pg_temp.sub('sub_b', 'cus_b', 'price_team_m', 'paused', :p0, :p1)));
select is(entitlements.stripe_apply_event('evt_b_pause'), 'updated', 'customer.subscription.paused applies');
select ok(not entitlements.has_feature(:b, 'agents'), 'paused grants nothing');
select entitlements.stripe_record_event(pg_temp.ev('evt_b_resume', 'customer.subscription.resumed', :t0 + 400,
    pg_temp.sub('sub_b', 'cus_b', 'price_team_m', 'active', :p0, :p1)));
select is(entitlements.stripe_apply_event('evt_b_resume'), 'updated', 'customer.subscription.resumed, a later second: active again');
select ok(entitlements.has_feature(:b, 'agents'), 'and it grants again');

-- Invoices ----------------------------------------------------------------------------------
select entitlements.link_stripe_customer(:c, 'cus_c');
select entitlements.stripe_record_event(pg_temp.ev('evt_c_fail', 'invoice.payment_failed', :t0 + 100,
    jsonb_build_object('id', 'in_c1', 'object', 'invoice', 'customer', 'cus_c',
                       'parent', jsonb_build_object('subscription_details', jsonb_build_object('subscription', 'sub_c')))));
select is((select stripe_subscription_id from entitlements.stripe_pending_events()), 'sub_c',
          'the pending list names the subscription an invoice is about (current API: parent)');
select throws_ok($$select entitlements.stripe_apply_event('evt_c_fail')$$, 'P0002', null,
                 'a failed invoice of a subscription not known yet fails, to be retried');
select ok(entitlements.stripe_event_failed('evt_c_fail', 'not known yet') > now(), 'a failure schedules a retry later');
select ok((select attempts = 1 and last_error = 'not known yet' and applied_at is null from entitlements.stripe_events
            where id = 'evt_c_fail'), 'attempts and the error are recorded');
select is((select count(*)::int from entitlements.stripe_pending_events()), 0, 'and it is not due yet');
-- The subscription arrives (older event), then the retry applies the failure.
select entitlements.stripe_apply_subscription(pg_temp.sub('sub_c', 'cus_c', 'price_pro_m', 'active', :p0, :p1), to_timestamp(:t0));
select is(entitlements.stripe_apply_event('evt_c_fail'), 'updated', 'the retry applies invoice.payment_failed');
select is(pg_temp.status('sub_c'), 'past_due', 'past_due');
select ok(entitlements.has_feature(:c, 'agents'), 'which keeps access within the plan''s grace period');
update entitlements.subscriptions set status_changed_at = now() - interval '4 days' where stripe_subscription_id = 'sub_c';
select ok(not entitlements.has_feature(:c, 'agents'), 'and not after it (pro: 3 grace days)');
select entitlements.stripe_record_event(pg_temp.ev('evt_c_paid', 'invoice.paid', :t0 + 200,
    jsonb_build_object('id', 'in_c2', 'object', 'invoice', 'subscription', 'sub_c', 'lines', jsonb_build_object('data',
        jsonb_build_array(jsonb_build_object('type', 'subscription', 'period', jsonb_build_object('start', :q0, 'end', :q1)))))));
select is(entitlements.stripe_apply_event('evt_c_paid'), 'updated', 'invoice.paid (older API: invoice.subscription) applies');
select results_eq($$select status, current_period_end from entitlements.subscriptions where stripe_subscription_id = 'sub_c'$$,
                  format($$values ('active', to_timestamp(%s))$$, :q1), 'active again, for the period the invoice paid');
select entitlements.stripe_record_event(pg_temp.ev('evt_c_fail_old', 'invoice.payment_failed', :t0 + 150,
    jsonb_build_object('id', 'in_c1', 'object', 'invoice', 'subscription', 'sub_c')));
select is(entitlements.stripe_apply_event('evt_c_fail_old'), 'stale', 'a failure older than the payment arriving late is stale');

-- Checkout links the customer and retries what waited for it ---------------------------------
select entitlements.stripe_record_event(pg_temp.ev('evt_d_sub', 'customer.subscription.created', :t0,
    pg_temp.sub('sub_d', 'cus_d', 'price_pro_m', 'active', :p0, :p1)));
select throws_ok($$select entitlements.stripe_apply_event('evt_d_sub')$$, 'P0002', null, 'not linked yet');
select entitlements.stripe_event_failed('evt_d_sub', 'not linked');
select entitlements.stripe_record_event(pg_temp.ev('evt_d_co', 'checkout.session.completed', :t0,
    jsonb_build_object('id', 'cs_d', 'object', 'checkout.session', 'customer', 'cus_d', 'subscription', 'sub_d',
                       'client_reference_id', '00000000-0000-0000-0000-0000000005d1')));
select is(entitlements.stripe_apply_event('evt_d_co'), 'linked', 'checkout.session.completed links client_reference_id');
select is((select array_agg(id order by id) from entitlements.stripe_pending_events()), array['evt_d_sub'],
          'and the event that waited for the link is due again at once');
select is(entitlements.stripe_apply_event('evt_d_sub'), 'created', 'and applies');

-- Unknown types are stored and acknowledged.
select entitlements.stripe_record_event(pg_temp.ev('evt_other', 'charge.refunded', :t0, '{"id": "ch_1"}'));
select is(entitlements.stripe_apply_event('evt_other'), 'ignored', 'an unknown type is acknowledged as ignored');
select is(entitlements.stripe_record_event(pg_temp.ev('evt_digits', 'v1.billing.meter.error_report_triggered', :t0, '{"id": "mtr_1"}')),
          true, 'any Stripe type is stored, digits included');
select is(entitlements.stripe_apply_event('evt_digits'), 'ignored', 'and acknowledged');

-- Security: admins only, and RLS on the new tables.
set local role authenticated;
select set_config('request.jwt.claims', '{"sub": "00000000-0000-0000-0000-0000000005a1", "role": "authenticated"}', true);
select throws_ok($$select entitlements.stripe_record_event('{"id": "evt_evil", "type": "customer.subscription.created",
                                                               "created": 1, "data": {"object": {}}}')$$,
                 '42501', null, 'a signed-in user cannot record Stripe events');
select is((select count(*)::int from entitlements.stripe_events), 0, 'nor read the event store');
reset role;
insert into entitlements.admins (user_id) values ('00000000-0000-0000-0000-0000000005e1');
set local role authenticated;
select set_config('request.jwt.claims', '{"sub": "00000000-0000-0000-0000-0000000005e1", "role": "authenticated"}', true);
select is(entitlements.stripe_record_event('{"id": "evt_by_admin", "type": "customer.updated", "created": 1,
                                             "data": {"object": {"id": "cus_1"}}}'), true,
          'an admin listed in entitlements.admins may (the full check, not only privileged roles)');
select is(entitlements.stripe_apply_event('evt_by_admin'), 'ignored', 'and apply');
reset role;

select * from finish();
rollback;
