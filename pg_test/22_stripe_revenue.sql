\set ON_ERROR_STOP 1
\set QUIET 1
-- Stripe subscriptions count in revenue as manual ones do (issue #12): the price they pay
-- (their item's price, not the plan's) and their discounts, dated, synced on every apply.
begin;
select plan(9);
\ir fixtures/catalog.sql
update entitlements.plans set stripe_price_ids = '{price_pro_m,price_pro_y}' where key = 'pro';

create function pg_temp.sub(price jsonb, extra jsonb default '{}') returns jsonb language sql as $$
    select jsonb_build_object('id', 'sub_r', 'object', 'subscription', 'customer', 'cus_r', 'status', 'active',
        'cancel_at_period_end', false,
        'metadata', jsonb_build_object('entitlements_customer_id', '00000000-0000-0000-0000-0000000005e1'),
        'items', jsonb_build_object('object', 'list', 'data', jsonb_build_array(jsonb_build_object(
            'id', 'si_r', 'object', 'subscription_item', 'price', price, 'quantity', 2,
            'current_period_start', extract(epoch from now() - interval '1 day')::bigint,
            'current_period_end', extract(epoch from now() + interval '300 days')::bigint)))) || extra
$$;
\set monthly '{"id": "price_pro_m", "unit_amount": 2500, "currency": "usd", "type": "recurring", "recurring": {"interval": "month", "interval_count": 1}}'
\set yearly '{"id": "price_pro_y", "unit_amount": 24000, "currency": "usd", "type": "recurring", "recurring": {"interval": "year", "interval_count": 1}}'
\set discount '{"discount": {"id": "di_1", "object": "discount", "start": 1700000000, "end": null, "coupon": {"id": "TWENTY", "percent_off": 20, "duration": "forever"}}}'

select is(entitlements.stripe_apply_subscription(pg_temp.sub(:'monthly'::jsonb, :'discount'::jsonb), now() - interval '3 seconds'),
          'created', 'a Stripe subscription with its price and a discount');
select is((select array[price_cents::text, currency, billing_interval] from entitlements.subscriptions where stripe_subscription_id = 'sub_r'),
          array['2500', 'usd', 'month'], 'it pays its item''s price, not the plan''s 1900');
select is((select array[source, percent_off::text, stripe_id] from entitlements.discounts), array['stripe', '20', 'di_1'],
          'the discount is kept, dated');
select is(entitlements.mrr(), 2 * 2500 * 80 / 100::bigint, 'MRR: 2 x 2500, 20% off');
select is(entitlements.stripe_apply_subscription(pg_temp.sub(:'monthly'::jsonb, :'discount'::jsonb), now() - interval '2 seconds'),
          'unchanged', 'the same state again changes nothing');
select is((select count(*) from entitlements.discounts), 1::bigint, 'and keeps one discount');
select is(entitlements.stripe_apply_subscription(pg_temp.sub(:'yearly'::jsonb, '{"discount": null}'), now() - interval '1 second'),
          'updated', 'moved to the yearly price, the discount removed');
select is(entitlements.mrr(), 2 * 24000 / 12::bigint, 'MRR: 2 x 24000 / 12, no discount');
select ok((select removed_at is not null from entitlements.discounts where stripe_id = 'di_1'), 'the discount ended when Stripe said so');

select * from finish();
rollback;
