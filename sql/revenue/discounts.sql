-- Coupons, promotion codes and discounts, with Stripe's semantics (issue #12).
-- A coupon says how much (percent_off or amount_off_cents) and for how long (once: the
-- first billing period; repeating: duration_in_months; forever). Redeeming its code on a
-- subscription makes a discount, dated: the revenue metrics reduce MRR while it is in
-- force. Admin discounts (entitlements.grant_discount, grants of kind discount) count too.

create table entitlements.coupons (
    id                 uuid primary key default gen_random_uuid(),
    -- The promotion code customers type; matched case-insensitively (unique lower-cased).
    code               text not null check (code ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$'),
    percent_off        numeric check (percent_off > 0 and percent_off <= 100),
    amount_off_cents   bigint check (amount_off_cents > 0 and amount_off_cents <= 1000000000000),
    currency           text not null default 'usd' check (currency ~ '^[a-z]{3}$'),
    duration           text not null check (duration in ('once', 'repeating', 'forever')),
    duration_in_months integer check (duration_in_months between 1 and 120),
    max_redemptions    integer check (max_redemptions > 0),
    times_redeemed     integer not null default 0 check (times_redeemed >= 0),
    redeem_by          timestamptz check (entitlements._finite(redeem_by, 'redeem_by')),
    -- The plans it applies to; NULL: every plan.
    plans              text[] check (cardinality(plans) between 1 and 100),
    -- Only for a customer's first paid subscription.
    first_time_only    boolean not null default false,
    active             boolean not null default true,
    created_at         timestamptz not null default entitlements.now(),
    check ((percent_off is null) <> (amount_off_cents is null)),
    check ((duration = 'repeating') = (duration_in_months is not null)),
    check (max_redemptions is null or times_redeemed <= max_redemptions)
);
comment on table entitlements.coupons is
    'Coupons and their promotion codes; times_redeemed counts redemptions (never above max_redemptions).';
create unique index coupons_code on entitlements.coupons (lower(code));

create table entitlements.discounts (
    id               uuid primary key default gen_random_uuid(),
    subscription_id  uuid not null references entitlements.subscriptions (id) on delete cascade,
    customer_id      uuid not null,
    coupon_id        uuid references entitlements.coupons (id),
    source           text not null check (source in ('coupon', 'stripe')),
    percent_off      numeric check (percent_off > 0 and percent_off <= 100),
    amount_off_cents bigint check (amount_off_cents > 0 and amount_off_cents <= 1000000000000),
    -- In force from starts_at until ends_at (NULL: forever) or removed_at.
    starts_at        timestamptz not null check (entitlements._finite(starts_at, 'starts_at')),
    ends_at          timestamptz check (entitlements._finite(ends_at, 'ends_at')),
    removed_at       timestamptz,
    stripe_id        text unique,
    created_at       timestamptz not null default entitlements.now(),
    check ((percent_off is null) <> (amount_off_cents is null)),
    check (ends_at is null or ends_at > starts_at)
);
comment on table entitlements.discounts is
    'Discounts on subscriptions (redeemed coupons, Stripe discounts), each in force over a time range.';
create index discounts_subscription on entitlements.discounts (subscription_id, starts_at);
create index discounts_customer on entitlements.discounts (customer_id);
select pg_catalog.pg_extension_config_dump('entitlements.coupons', '');
select pg_catalog.pg_extension_config_dump('entitlements.discounts', '');

-- Row security: coupons (their codes) are for global admins; a customer sees its discounts.
-- Writes go through create_coupon and redeem.
alter table entitlements.coupons enable row level security;
create policy coupons_admin on entitlements.coupons for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());
alter table entitlements.discounts enable row level security;
create policy discounts_read on entitlements.discounts for select
    using (entitlements.can_see_customer(customer_id));
-- Written directly by global admins only: a row names a subscription and a customer, and a
-- tenant admin could otherwise name its own customer with another tenant's subscription.
create policy discounts_admin on entitlements.discounts for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());
select entitlements.enable_audit(t::regclass)
  from unnest(array['entitlements.coupons', 'entitlements.discounts']) as t;

create function entitlements.create_coupon(
    code text,
    percent_off numeric default null,
    amount_off_cents bigint default null,
    duration text default 'once',
    duration_in_months integer default null,
    max_redemptions integer default null,
    redeem_by timestamptz default null,
    plans text[] default null,
    first_time_only boolean default false,
    currency text default 'usd')
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_id uuid;
    v_unknown text;
begin
    perform entitlements._require_admin('create_coupon');
    perform entitlements._require_not_null(code, 'code');
    perform entitlements._require_not_null(duration, 'duration');
    if code !~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$' then
        raise exception 'a promotion code is 1 to 64 letters, digits, "-" or "_", got "%"', code using errcode = '22023';
    end if;
    if (percent_off is null) = (amount_off_cents is null) then
        raise exception 'a coupon takes exactly one of percent_off and amount_off_cents' using errcode = '22023';
    end if;
    if percent_off <= 0 or percent_off > 100 then
        raise exception 'percent_off must be in (0, 100], got %', percent_off using errcode = '22023';
    end if;
    if amount_off_cents <= 0 or amount_off_cents > 1000000000000 then
        raise exception 'amount_off_cents must be from 1 to 1000000000000, got %', amount_off_cents using errcode = '22023';
    end if;
    if duration not in ('once', 'repeating', 'forever') then
        raise exception 'duration must be once, repeating or forever, got "%"', duration using errcode = '22023';
    end if;
    if (duration = 'repeating') <> (duration_in_months is not null) then
        raise exception 'duration_in_months is for repeating coupons, and they need it' using errcode = '22023';
    end if;
    if duration_in_months not between 1 and 120 then
        raise exception 'duration_in_months must be from 1 to 120, got %', duration_in_months using errcode = '22023';
    end if;
    if max_redemptions <= 0 then
        raise exception 'max_redemptions must be positive, got %', max_redemptions using errcode = '22023';
    end if;
    perform entitlements._finite(redeem_by, 'redeem_by');
    if redeem_by <= entitlements.now() then
        raise exception 'redeem_by (%) must be in the future', redeem_by using errcode = '22023';
    end if;
    select string_agg(k, ', ') into v_unknown
      from unnest(plans) k where not exists (select 1 from entitlements.plans p where p.key = k);
    if v_unknown is not null or array_position(plans, null) is not null then
        raise exception 'unknown plan(s) in plans: %', coalesce(v_unknown, 'NULL') using errcode = '22023';
    end if;
    if exists (select 1 from entitlements.coupons c where lower(c.code) = lower(create_coupon.code)) then
        raise exception 'promotion code "%" already exists', code using errcode = '23505';
    end if;
    insert into entitlements.coupons (code, percent_off, amount_off_cents, currency, duration, duration_in_months,
                                      max_redemptions, redeem_by, plans, first_time_only)
    values (code, percent_off, amount_off_cents, lower(coalesce(currency, 'usd')), duration, duration_in_months,
            max_redemptions, redeem_by, plans, coalesce(first_time_only, false))
    returning id into v_id;
    return v_id;
end
$$;
comment on function entitlements.create_coupon(text, numeric, bigint, text, integer, integer, timestamptz, text[], boolean, text) is
    'Create a coupon and its promotion code (Stripe''s semantics). Admins only.';

-- How long a discount made now lasts: once = the subscription's first billing period.
create function entitlements._discount_end(duration text, months integer, billing_interval text, starts_at timestamptz)
returns timestamptz language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select case duration
        when 'forever' then null
        when 'repeating' then starts_at + make_interval(months => months)
        else starts_at + case billing_interval when 'year' then interval '1 year' when 'week' then interval '1 week'
                                               when 'day' then interval '1 day' else interval '1 month' end
    end
$$;

-- Redeem a promotion code on a subscription: by an admin of the customer, the customer,
-- or an owner or admin of the organization that is the customer. Runs as the owner (the
-- caller may not read coupons); the coupon row is locked, so concurrent redemptions are
-- counted one at a time and never pass max_redemptions. Any refusal writes nothing.
create function entitlements.redeem(subscription uuid, code text)
returns uuid language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_sub entitlements.subscriptions;
    v_coupon entitlements.coupons;
    v_interval text;
    v_currency text;
    -- The statement's instant, not the transaction's: a code that expired while a long
    -- transaction ran is expired.
    v_now timestamptz := entitlements._statement_now();
    v_id uuid;
begin
    perform entitlements._require_not_null(subscription, 'subscription');
    perform entitlements._require_not_null(code, 'code');
    if length(code) > 64 then
        raise exception 'unknown promotion code' using errcode = '22023';
    end if;
    select * into v_sub from entitlements.subscriptions s where s.id = subscription for update;
    if not found
       or not (entitlements._role_is_privileged(entitlements._outer_role())
               or entitlements._is_listed_admin_of(v_sub.customer_id)
               or v_sub.customer_id = entitlements.current_user_id()
               or coalesce(entitlements._my_org_role(v_sub.customer_id) in ('owner', 'admin'), false)) then
        -- The same answer for "missing" and "not yours": nothing about others leaks.
        raise exception 'subscription % does not exist or is not yours', subscription using errcode = '42501';
    end if;
    if v_sub.status not in ('trialing', 'active', 'past_due') or v_sub.ended_at is not null then
        raise exception 'a % subscription cannot take a promotion code', v_sub.status using errcode = '22023';
    end if;
    select * into v_coupon from entitlements.coupons c where lower(c.code) = lower(redeem.code) for update;
    if not found or not v_coupon.active then
        raise exception 'unknown promotion code "%"', code using errcode = '22023';
    end if;
    if v_coupon.redeem_by <= v_now then
        raise exception 'promotion code "%" expired at %', code, v_coupon.redeem_by using errcode = '22023';
    end if;
    if v_coupon.times_redeemed >= v_coupon.max_redemptions then
        raise exception 'promotion code "%" has reached its maximum of % redemptions', code, v_coupon.max_redemptions
            using errcode = '22023';
    end if;
    if v_coupon.plans is not null and not v_sub.plan_key = any (v_coupon.plans) then
        raise exception 'promotion code "%" is not for plan "%"', code, v_sub.plan_key using errcode = '22023';
    end if;
    select coalesce(v_sub.billing_interval, p.interval), coalesce(v_sub.currency, p.currency)
      into v_interval, v_currency
      from entitlements.plans p where p.key = v_sub.plan_key;
    if v_coupon.amount_off_cents is not null and v_coupon.currency <> v_currency then
        raise exception 'promotion code "%" is in %, the subscription pays in %', code, v_coupon.currency, v_currency
            using errcode = '22023';
    end if;
    if v_coupon.duration = 'repeating' and v_interval = 'year' and v_coupon.duration_in_months < 12 then
        raise exception 'promotion code "%" repeats for % months, shorter than the subscription''s yearly billing',
            code, v_coupon.duration_in_months using errcode = '22023';
    end if;
    if v_coupon.first_time_only and exists (
        select 1 from entitlements.subscription_history h
         where h.customer_id = v_sub.customer_id and h.subscription_id <> v_sub.id
           and h.status in ('active', 'past_due') and h.price_cents > 0) then
        raise exception 'promotion code "%" is for a first purchase only', code using errcode = '22023';
    end if;
    if exists (select 1 from entitlements.discounts d
                where d.subscription_id = v_sub.id and d.removed_at is null
                  and (d.ends_at is null or d.ends_at > v_now)) then
        raise exception 'subscription % already has a discount', subscription using errcode = '22023';
    end if;
    update entitlements.coupons c set times_redeemed = c.times_redeemed + 1 where c.id = v_coupon.id;
    insert into entitlements.discounts (subscription_id, customer_id, coupon_id, source, percent_off,
                                        amount_off_cents, starts_at, ends_at)
    values (v_sub.id, v_sub.customer_id, v_coupon.id, 'coupon', v_coupon.percent_off, v_coupon.amount_off_cents,
            v_now, entitlements._discount_end(v_coupon.duration, v_coupon.duration_in_months, v_interval, v_now))
    returning id into v_id;
    return v_id;
end
$$;
comment on function entitlements.redeem(uuid, text) is
    'Apply a promotion code to a subscription (case-insensitive): a discount from now, counted against the coupon.';
