-- Stripe: the webhook event store and the functions that apply Stripe objects.
--
-- The worker (worker/src/stripe/) verifies signatures, stores events and, when it has an API
-- key, fetches current objects; every decision (which plan a price is, which customer a
-- Stripe customer is, which of two states is newer) is made here, so an app that syncs Stripe
-- some other way calls the same functions:
--
--   entitlements.stripe_record_event(event jsonb) -> boolean      store once by id (true = new)
--   entitlements.stripe_apply_event(event_id text, fetched jsonb)   apply a stored event
--   entitlements.stripe_apply_subscription(subscription jsonb, observed_at timestamptz)
--   entitlements.link_stripe_customer(customer uuid, stripe_customer_id text)  (subscriptions/lifecycle.sql)
--
-- Ordering. Stripe delivers at least once and in any order, and an event's `created` has
-- one-second resolution, so two events can tie. A subscription state is applied only when its
-- key is greater than the key of the state applied last, compared left to right:
--
--     (observed_at, period_start, state_rank)
--
--   * observed_at: when the state was true: the event's `created`, or, for an object just
--     fetched from the API (observed_at => NULL), now. The worker fetches holding the
--     subscription's lease (take_lease('stripe_subscription:<id>'), taken again before it
--     applies), so fetch-and-apply of one subscription is serialized across workers and a
--     fetched object is the current state: its key is bumped past the stored one, so it
--     always wins. (The reconcile's pages are applied as observed when requested.)
--   * period_start: billing periods only move forward (renewals, anchor resets).
--   * state_rank: within one period a subscription moves forward through incomplete, trialing,
--     active, past_due, unpaid, paused, and ends in canceled or incomplete_expired. The moves
--     back (a past_due invoice paid again, a resume) come minutes or days after the move they
--     undo, never in the same second.
-- A full tie keeps what is there. Only two payload states of one subscription in the same
-- second, same period and same status (say, two quantity changes) are undecidable from the
-- payloads; with STRIPE_SECRET_KEY set the worker never applies payloads, only fetched objects.
--
-- Neither table here is audited row by row: the event store is itself the record of what
-- Stripe said (as the usage ledger is for usage), and the sync keys are bookkeeping. What the
-- events change (customers, subscriptions) is audited, with the event id as the reason.

create table entitlements.stripe_events (
    id              text primary key check (id ~ '^evt_[A-Za-z0-9_]+$'),
    type            text not null check (type ~ '^[a-z0-9_]+(\.[a-z0-9_]+)+$'),
    created         timestamptz not null,
    api_version     text,
    payload         jsonb not null,
    received_at     timestamptz not null default entitlements.now(),
    applied_at      timestamptz,
    -- What applying it did: created, updated, unchanged, stale, linked, ignored, ...
    outcome         text,
    attempts        integer not null default 0,
    last_error      text,
    next_attempt_at timestamptz not null default entitlements.now(),
    -- Set when it failed settings.stripe_max_attempts times: no more retries until an admin
    -- calls stripe_retry_event (dead letters show in the worker's /healthz and /metrics).
    dead_at         timestamptz check (entitlements._finite(dead_at, 'dead_at'))
);
comment on table entitlements.stripe_events is
    'Stripe webhook events, stored once by id, applied asynchronously (entitlements.stripe_apply_event).';
create index stripe_events_pending on entitlements.stripe_events (next_attempt_at, created)
    where applied_at is null and dead_at is null;

-- One row per Stripe subscription: the key of the state applied last (see Ordering above).
create table entitlements.stripe_subscriptions (
    stripe_subscription_id text primary key,
    subscription_id        uuid not null unique references entitlements.subscriptions (id) on delete cascade,
    observed_at            timestamptz not null,
    period_start           timestamptz,
    state_rank             smallint not null,
    applied_from           text not null,
    updated_at             timestamptz not null default entitlements.now()
);

alter table entitlements.stripe_events enable row level security;
create policy stripe_events_admin on entitlements.stripe_events for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());
alter table entitlements.stripe_subscriptions enable row level security;
create policy stripe_subscriptions_admin on entitlements.stripe_subscriptions for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());
-- Privileges: sql/security/privileges.sql (admins only); RLS decides row by row.

select pg_catalog.pg_extension_config_dump('entitlements.stripe_events', '');
select pg_catalog.pg_extension_config_dump('entitlements.stripe_subscriptions', '');

-- Helpers ------------------------------------------------------------------------------

-- Stripe instants are Unix seconds; NULL for anything else.
create function entitlements._stripe_ts(v jsonb)
returns timestamptz language sql immutable parallel safe
return case when jsonb_typeof(v) = 'number' then to_timestamp((v #>> '{}')::double precision) end;

-- An id field that may be expanded into the object it names.
create function entitlements._stripe_id(v jsonb)
returns text language sql immutable parallel safe
return case jsonb_typeof(v) when 'string' then v #>> '{}' when 'object' then v ->> 'id' end;

create function entitlements._stripe_status_rank(status text)
returns smallint language sql immutable parallel safe
return case status
    when 'incomplete' then 0 when 'trialing' then 1 when 'active' then 2 when 'past_due' then 3
    when 'unpaid' then 4 when 'paused' then 5 when 'canceled' then 9 when 'incomplete_expired' then 9 end;

create function entitlements._stripe_uuid(v text)
returns uuid language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
    return v::uuid;
exception when invalid_text_representation then
    return null;
end
$$;

-- Admins only, like every write path (entitlements._require_admin). A privileged role (what
-- a worker connects as) passes on the Rust check alone; everyone else takes the full one,
-- whose SQL functions with SET clauses are planned again on every call.
create function entitlements._stripe_require_admin(action text)
returns void language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    if entitlements._is_privileged_role() then
        return;
    end if;
    perform entitlements._require_admin(action);
end
$$;

-- The Stripe subscription an event is about (what the worker fetches when it has a key).
create function entitlements._stripe_event_subscription(event jsonb)
returns text language sql immutable parallel safe
return (
    select case
        when event ->> 'type' like 'customer.subscription.%' then o ->> 'id'
        when event ->> 'type' like 'invoice.%' then coalesce(
            entitlements._stripe_id(o -> 'subscription'),
            o #>> '{parent,subscription_details,subscription}',
            (select coalesce(entitlements._stripe_id(l -> 'subscription'),
                             l #>> '{parent,subscription_item_details,subscription}')
               from jsonb_array_elements(case when jsonb_typeof(o #> '{lines,data}') = 'array'
                                              then o #> '{lines,data}' else '[]' end) l
              where coalesce(entitlements._stripe_id(l -> 'subscription'),
                             l #>> '{parent,subscription_item_details,subscription}') is not null
              limit 1))
        when event ->> 'type' = 'checkout.session.completed' then entitlements._stripe_id(o -> 'subscription')
    end
    from (select event #> '{data,object}' as o) x);

-- Serializes everything applied to one Stripe subscription (transaction-scoped). The worker
-- takes it before fetching, so a fetched object is never older than one applied before it.
create function entitlements.stripe_lock_subscription(stripe_subscription_id text)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_not_null(stripe_subscription_id, 'stripe_subscription_id');
    perform pg_advisory_xact_lock('entitlements.stripe_subscriptions'::regclass::oid::integer,
                                  hashtext(stripe_subscription_id));
end
$$;

-- The entitlements customer of a Stripe customer: its link, else metadata.entitlements_customer_id
-- on the object at hand (subscription, customer or Checkout Session), which then becomes the link.
create function entitlements._stripe_customer(stripe_customer_id text, metadata jsonb)
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_id uuid;
    v_meta text := metadata ->> 'entitlements_customer_id';
begin
    if stripe_customer_id is null then
        return null;
    end if;
    select c.id into v_id from entitlements.customers c where c.stripe_customer_id = _stripe_customer.stripe_customer_id;
    if found then
        return v_id;
    end if;
    if v_meta is not null then
        v_id := entitlements._stripe_uuid(v_meta);
        if v_id is null then
            raise exception 'metadata.entitlements_customer_id of Stripe customer % is not a uuid: %', stripe_customer_id, v_meta
                using errcode = '22023';
        end if;
        -- As for a Checkout (_stripe_apply_link): metadata never moves an existing link.
        if exists (select 1 from entitlements.customers c where c.id = v_id and c.stripe_customer_id is not null) then
            raise exception 'customer % is linked to another Stripe customer; not linking %', v_id, stripe_customer_id
                using errcode = '55000', hint = 'An admin relinks with entitlements.link_stripe_customer.';
        end if;
        perform entitlements._stripe_link(v_id, stripe_customer_id);
    end if;
    return v_id;
end
$$;

-- Link, and retry at once the events that were waiting for this customer.
create function entitlements._stripe_link(customer uuid, stripe_customer_id text)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements.link_stripe_customer(customer, stripe_customer_id);
    update entitlements.stripe_events e set next_attempt_at = entitlements.now()
     where e.applied_at is null and e.attempts > 0 and e.next_attempt_at > entitlements.now()
       and entitlements._stripe_id(e.payload #> '{data,object,customer}') = _stripe_link.stripe_customer_id;
end
$$;

-- Is a state with this key newer than the one applied last?
create function entitlements._stripe_is_newer(prev entitlements.stripe_subscriptions, observed_at timestamptz,
                                              period_start timestamptz, state_rank smallint)
returns boolean language sql immutable
return prev.stripe_subscription_id is null
    or (observed_at, coalesce(period_start, '-infinity'), state_rank)
       > (prev.observed_at, coalesce(prev.period_start, '-infinity'), prev.state_rank);

-- PL/pgSQL rather than a SQL function: its plan is cached per session (a SQL function with a
-- SET clause is planned on every call).
create function entitlements._stripe_remember(stripe_subscription_id text, subscription uuid, observed_at timestamptz,
                                              period_start timestamptz, state_rank smallint, applied_from text)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    insert into entitlements.stripe_subscriptions as s
           (stripe_subscription_id, subscription_id, observed_at, period_start, state_rank, applied_from)
    values (_stripe_remember.stripe_subscription_id, subscription, _stripe_remember.observed_at,
            _stripe_remember.period_start, _stripe_remember.state_rank, _stripe_remember.applied_from)
    on conflict on constraint stripe_subscriptions_pkey do update
       set observed_at = excluded.observed_at, period_start = excluded.period_start,
           state_rank = excluded.state_rank, applied_from = excluded.applied_from, updated_at = entitlements.now();
end
$$;

-- Applying objects -----------------------------------------------------------------------

-- What a Stripe subscription object says, checked: its id, customer, status (and its
-- rank, stripe/objects.sql header), the plan its most expensive mapped price belongs to,
-- the billing period (on the item in the current API, on the subscription in older ones)
-- and the quantity. Raises 22023 for what is not a subscription or maps to no plan.
create function entitlements._stripe_read_subscription(subscription jsonb,
    out id text, out stripe_customer text, out status text, out rank smallint, out plan text,
    out period_start timestamptz, out period_end timestamptz, out quantity integer)
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_items jsonb;
    v_item jsonb;
begin
    id := subscription ->> 'id';
    stripe_customer := entitlements._stripe_id(subscription -> 'customer');
    status := subscription ->> 'status';
    rank := entitlements._stripe_status_rank(status);
    if jsonb_typeof(subscription) is distinct from 'object' or id is null or id !~ '^sub_[A-Za-z0-9_]+$'
       or coalesce(subscription ->> 'object', 'subscription') <> 'subscription' then
        raise exception 'not a Stripe subscription object (id %)', coalesce(id, 'missing') using errcode = '22023';
    end if;
    if rank is null then
        raise exception 'Stripe subscription %: unknown status "%"', id, status using errcode = '22023';
    end if;
    if stripe_customer is null then
        raise exception 'Stripe subscription % has no customer', id using errcode = '22023';
    end if;

    -- Items: the current API lists them; very old versions carry one `plan` on the subscription.
    v_items := case when jsonb_typeof(subscription #> '{items,data}') = 'array' then subscription #> '{items,data}'
                    when subscription ? 'plan' then jsonb_build_array(jsonb_build_object(
                        'plan', subscription -> 'plan', 'quantity', subscription -> 'quantity'))
                    else '[]' end;
    -- The plan: the most expensive one any item's price maps to through stripe_price_ids.
    select p.key, i.item into plan, v_item
      from jsonb_array_elements(v_items) i(item)
      join entitlements.plans p
        on coalesce(entitlements._stripe_id(i.item -> 'price'), entitlements._stripe_id(i.item -> 'plan')) = any (p.stripe_price_ids)
     order by p.price_cents desc, p.position, p.key
     limit 1;
    if plan is null then
        raise exception 'Stripe subscription %: no plan has any of its prices (%)', id,
            coalesce((select string_agg(coalesce(entitlements._stripe_id(i -> 'price'), entitlements._stripe_id(i -> 'plan')), ', ')
                        from jsonb_array_elements(v_items) i), 'none')
            using errcode = '22023', hint = 'Add the price id to a plan''s stripe_price_ids in the catalog.';
    end if;
    period_start := coalesce(entitlements._stripe_ts(v_item -> 'current_period_start'),
                             entitlements._stripe_ts(subscription -> 'current_period_start'));
    period_end := coalesce(entitlements._stripe_ts(v_item -> 'current_period_end'),
                           entitlements._stripe_ts(subscription -> 'current_period_end'));
    if period_start >= period_end then
        period_start := null;
    end if;
    quantity := greatest(1, coalesce((v_item ->> 'quantity')::integer, (subscription ->> 'quantity')::integer, 1));
end
$$;

-- Write a Stripe subscription's state into entitlements.subscriptions: a new row, or the
-- existing one `sub` changed only where it differs (so only a real change is audited).
-- Returns the row's id and created, updated or unchanged.
create function entitlements._stripe_write_subscription(
    sub uuid, stripe_subscription_id text, customer uuid, plan text, status text, quantity integer,
    period_start timestamptz, period_end timestamptz, trial_end timestamptz, cancel_at_period_end boolean,
    canceled_at timestamptz, ended_at timestamptz, out id uuid, out outcome text)
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    if sub is null then
        insert into entitlements.subscriptions (customer_id, plan_key, status, quantity, current_period_start,
            current_period_end, trial_end, cancel_at_period_end, canceled_at, ended_at, source, stripe_subscription_id)
        values (customer, plan, status, quantity, period_start, period_end, trial_end, cancel_at_period_end,
                canceled_at, ended_at, 'stripe', _stripe_write_subscription.stripe_subscription_id)
        returning subscriptions.id into id;
        outcome := 'created';
        return;
    end if;
    id := sub;
    update entitlements.subscriptions s
       set customer_id = customer, plan_key = plan, status = _stripe_write_subscription.status,
           quantity = _stripe_write_subscription.quantity, current_period_start = period_start,
           current_period_end = period_end, trial_end = _stripe_write_subscription.trial_end,
           cancel_at_period_end = _stripe_write_subscription.cancel_at_period_end,
           canceled_at = _stripe_write_subscription.canceled_at, ended_at = _stripe_write_subscription.ended_at,
           source = 'stripe'
     where s.id = sub
       and (s.customer_id, s.plan_key, s.status, s.quantity, s.current_period_start, s.current_period_end,
            s.trial_end, s.cancel_at_period_end, s.canceled_at, s.ended_at, s.source)
           is distinct from
           (customer, plan, _stripe_write_subscription.status, _stripe_write_subscription.quantity, period_start,
            period_end, _stripe_write_subscription.trial_end, _stripe_write_subscription.cancel_at_period_end,
            _stripe_write_subscription.canceled_at, _stripe_write_subscription.ended_at, 'stripe');
    outcome := case when found then 'updated' else 'unchanged' end;
end
$$;

-- Apply a Stripe subscription object, as the current API shapes it (billing periods on the
-- items) or as older versions do (on the subscription). `observed_at`: when this state was
-- true (the event's `created`); NULL means "just fetched from the Stripe API", which wins.
-- Returns created, updated, unchanged or stale (an older state than the one applied).
-- Steps: read it, find the customer, order it against what was applied (lock, staleness),
-- write it, remember it. The checked entry point is stripe_apply_subscription below.
-- What a Stripe subscription pays, for the revenue metrics (issue #12): the price of its
-- first item (unit_amount, currency, recurring interval; an interval_count above 1 is spread
-- evenly over its intervals), and its discounts (`discount`, or `discounts` when expanded)
-- as dated discounts; one no longer there ends at `observed`. Discounts given only as ids
-- (not expanded) leave the known ones as they are.
create function entitlements._stripe_sync_revenue(p_subscription uuid, p_customer uuid, subscription jsonb,
                                                  observed timestamptz)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_price jsonb := subscription #> '{items,data,0,price}';
    v_count integer := greatest(coalesce((v_price #>> '{recurring,interval_count}')::integer, 1), 1);
    v_amount bigint;
    v_interval text := v_price #>> '{recurring,interval}';
    v_discounts jsonb;
    v_d jsonb;
    v_ids text[] := '{}'::text[];
    v_n bigint;
    v_changed boolean := false;
begin
    if jsonb_typeof(v_price -> 'unit_amount') = 'number' and (v_price ->> 'unit_amount')::numeric >= 0 then
        v_amount := round((v_price ->> 'unit_amount')::numeric / v_count)::bigint;
        update entitlements.subscriptions s
           set price_cents = v_amount, currency = lower(coalesce(v_price ->> 'currency', s.currency, 'usd')),
               billing_interval = case when v_interval in ('day', 'week', 'month', 'year') then v_interval
                                       when v_price ->> 'type' = 'one_time' then 'once' else s.billing_interval end
         where s.id = p_subscription
           and (s.price_cents, s.currency, s.billing_interval) is distinct from
               (v_amount, lower(coalesce(v_price ->> 'currency', s.currency, 'usd')),
                case when v_interval in ('day', 'week', 'month', 'year') then v_interval
                     when v_price ->> 'type' = 'one_time' then 'once' else s.billing_interval end);
        get diagnostics v_n = row_count;
        v_changed := v_n > 0;
    end if;

    v_discounts := case when jsonb_typeof(subscription -> 'discounts') = 'array' then subscription -> 'discounts'
                        when jsonb_typeof(subscription -> 'discount') = 'object' then jsonb_build_array(subscription -> 'discount')
                        when subscription ? 'discount' or subscription ? 'discounts' then '[]'::jsonb end;
    if v_discounts is null or exists (select 1 from jsonb_array_elements(v_discounts) x where jsonb_typeof(x) <> 'object') then
        return v_changed;
    end if;
    for v_d in select * from jsonb_array_elements(v_discounts) loop
        -- A coupon is a percentage or an amount off; anything else is not a discount we can count.
        continue when v_d ->> 'id' is null or jsonb_typeof(v_d -> 'coupon') <> 'object'
                   or (nullif((v_d #>> '{coupon,percent_off}')::numeric, 0) is null)
                      = (nullif((v_d #>> '{coupon,amount_off}')::bigint, 0) is null);
        v_ids := v_ids || (v_d ->> 'id');
        insert into entitlements.discounts as d (subscription_id, customer_id, source, percent_off, amount_off_cents,
                                                 starts_at, ends_at, stripe_id)
        values (p_subscription, p_customer, 'stripe', nullif((v_d #>> '{coupon,percent_off}')::numeric, 0),
                nullif((v_d #>> '{coupon,amount_off}')::bigint, 0),
                coalesce(entitlements._stripe_ts(v_d -> 'start'), observed), entitlements._stripe_ts(v_d -> 'end'), v_d ->> 'id')
        on conflict (stripe_id) do update
           set percent_off = excluded.percent_off, amount_off_cents = excluded.amount_off_cents,
               starts_at = excluded.starts_at, ends_at = excluded.ends_at, removed_at = null
         where (d.percent_off, d.amount_off_cents, d.starts_at, d.ends_at, d.removed_at)
               is distinct from (excluded.percent_off, excluded.amount_off_cents, excluded.starts_at, excluded.ends_at, null);
        get diagnostics v_n = row_count;
        v_changed := v_changed or v_n > 0;
    end loop;
    update entitlements.discounts d set removed_at = greatest(observed, d.starts_at)
     where d.subscription_id = p_subscription and d.source = 'stripe' and d.removed_at is null
       and d.stripe_id <> all (v_ids);
    get diagnostics v_n = row_count;
    return v_changed or v_n > 0;
end
$$;

create function entitlements._stripe_apply_subscription(subscription jsonb, observed_at timestamptz, reason text)
returns text language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_read record;
    v_customer uuid;
    v_ended timestamptz;
    v_cancel_at_end boolean := coalesce((subscription ->> 'cancel_at_period_end')::boolean, false);
    v_prev entitlements.stripe_subscriptions;
    v_observed timestamptz := observed_at;
    v_written record;
begin
    select * into v_read from entitlements._stripe_read_subscription(subscription);

    v_customer := entitlements._stripe_customer(v_read.stripe_customer,
        coalesce(subscription -> 'metadata', '{}') || coalesce(case when jsonb_typeof(subscription -> 'customer') = 'object'
                                                                    then subscription #> '{customer,metadata}' end, '{}'));
    if v_customer is null then
        raise exception 'Stripe customer % is not linked to an entitlements customer', v_read.stripe_customer
            using errcode = 'P0002',
                  hint = 'Call entitlements.link_stripe_customer(customer, stripe_customer_id), or set '
                         'metadata.entitlements_customer_id on the Stripe subscription, customer or Checkout Session.';
    end if;

    perform entitlements.stripe_lock_subscription(v_read.id);
    select * into v_prev from entitlements.stripe_subscriptions s where s.stripe_subscription_id = v_read.id;
    if v_observed is null then
        v_observed := greatest(clock_timestamp(), v_prev.observed_at + interval '1 microsecond');
    elsif not entitlements._stripe_is_newer(v_prev, v_observed, v_read.period_start, v_read.rank) then
        return 'stale';
    end if;

    -- Stripe's `canceled` is final whatever cancel_at_period_end says: nothing runs to the period end.
    if v_read.status in ('canceled', 'incomplete_expired') then
        v_cancel_at_end := false;
        v_ended := coalesce(entitlements._stripe_ts(subscription -> 'ended_at'),
                            entitlements._stripe_ts(subscription -> 'canceled_at'), v_observed);
    end if;

    perform set_config('entitlements.reason', coalesce(reason, 'stripe ' || v_read.id), true);
    select * into v_written from entitlements._stripe_write_subscription(
        coalesce(v_prev.subscription_id,
                 (select s.id from entitlements.subscriptions s where s.stripe_subscription_id = v_read.id)),
        v_read.id, v_customer, v_read.plan, v_read.status, v_read.quantity, v_read.period_start, v_read.period_end,
        entitlements._stripe_ts(subscription -> 'trial_end'), v_cancel_at_end,
        entitlements._stripe_ts(subscription -> 'canceled_at'), v_ended);
    if entitlements._stripe_sync_revenue(v_written.id, v_customer, subscription, v_observed)
       and v_written.outcome = 'unchanged' then
        v_written.outcome := 'updated';
    end if;
    perform entitlements._stripe_remember(v_read.id, v_written.id, v_observed, v_read.period_start, v_read.rank,
                                          coalesce(reason, case when observed_at is null then 'api' else 'payload' end));
    perform set_config('entitlements.reason', '', true);
    return v_written.outcome;
end
$$;
create function entitlements.stripe_apply_subscription(subscription jsonb, observed_at timestamptz default null,
                                                       reason text default null)
returns text language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._stripe_require_admin('stripe_apply_subscription');
    return entitlements._stripe_apply_subscription(subscription, observed_at, reason);
end
$$;
comment on function entitlements.stripe_apply_subscription(jsonb, timestamptz, text) is
    'Apply a Stripe subscription object unless a newer state was applied. observed_at: when the state was true '
    '(the event''s created); NULL = just fetched from the Stripe API. Returns created, updated, unchanged or stale. Admins only.';

-- invoice.paid / invoice.payment_succeeded / invoice.payment_failed from the payload alone
-- (with an API key the worker applies the fetched subscription instead). A failed payment
-- makes an active or trialing subscription past_due: it keeps access for the plan's
-- grace_days (extension/src/rules.rs). A paid one makes past_due/unpaid/incomplete active
-- and moves the period forward to the one the invoice paid for.
create function entitlements._stripe_apply_invoice(event jsonb, observed_at timestamptz, reason text)
returns text language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_invoice jsonb := event #> '{data,object}';
    v_id text := entitlements._stripe_event_subscription(event);
    v_failed boolean := event ->> 'type' = 'invoice.payment_failed';
    v_prev entitlements.stripe_subscriptions;
    v_sub entitlements.subscriptions;
    v_line jsonb;
    v_start timestamptz;
    v_end timestamptz;
    v_status text;
    v_changed boolean;
begin
    if v_id is null then
        return 'ignored'; -- not a subscription invoice
    end if;
    perform entitlements.stripe_lock_subscription(v_id);
    select * into v_prev from entitlements.stripe_subscriptions s where s.stripe_subscription_id = v_id;
    if not found then
        -- Delivered before the subscription itself: fail, so it is retried once that is applied.
        raise exception 'Stripe subscription % is not known yet', v_id using errcode = 'P0002';
    end if;
    select * into v_sub from entitlements.subscriptions s where s.id = v_prev.subscription_id for update;
    -- The period this invoice is for: its subscription line.
    select l into v_line
      from jsonb_array_elements(case when jsonb_typeof(v_invoice #> '{lines,data}') = 'array'
                                     then v_invoice #> '{lines,data}' else '[]' end) l
     where l ? 'period' and coalesce(l ->> 'type', 'subscription') = 'subscription'
     order by (l #>> '{period,end}')::numeric desc nulls last
     limit 1;
    v_start := greatest(v_prev.period_start, entitlements._stripe_ts(v_line #> '{period,start}'));
    v_end := greatest(v_sub.current_period_end, entitlements._stripe_ts(v_line #> '{period,end}'));
    if v_start >= v_end then
        v_start := v_prev.period_start;
    end if;
    if v_failed then
        if v_sub.status not in ('active', 'trialing') then
            return 'unchanged';
        end if;
        v_status := 'past_due';
    else
        v_status := case when v_sub.status in ('past_due', 'unpaid', 'incomplete') then 'active' else v_sub.status end;
    end if;
    if not entitlements._stripe_is_newer(v_prev, observed_at, v_start, entitlements._stripe_status_rank(v_status)) then
        return 'stale';
    end if;
    perform set_config('entitlements.reason', reason, true);
    update entitlements.subscriptions s
       set status = v_status,
           current_period_start = case when v_failed then s.current_period_start else v_start end,
           current_period_end = case when v_failed then s.current_period_end else v_end end
     where s.id = v_sub.id
       and (s.status, s.current_period_start, s.current_period_end) is distinct from
           (v_status, case when v_failed then s.current_period_start else v_start end,
                      case when v_failed then s.current_period_end else v_end end);
    v_changed := found;
    perform entitlements._stripe_remember(v_id, v_sub.id, observed_at,
                                          case when v_failed then v_prev.period_start else v_start end,
                                          entitlements._stripe_status_rank(v_status), reason);
    perform set_config('entitlements.reason', '', true);
    return case when v_changed then 'updated' else 'unchanged' end;
end
$$;

-- checkout.session.completed (and customer.created/updated): link the Stripe customer to the
-- entitlements customer named by metadata.entitlements_customer_id or client_reference_id.
create function entitlements._stripe_apply_link(object jsonb)
returns text language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_stripe_customer text := case when object ->> 'object' = 'customer' then object ->> 'id'
                                   else entitlements._stripe_id(object -> 'customer') end;
    v_ref text := coalesce(object #>> '{metadata,entitlements_customer_id}', object ->> 'client_reference_id');
    v_customer uuid := entitlements._stripe_uuid(v_ref);
begin
    if v_stripe_customer is null or v_customer is null then
        return 'ignored'; -- a guest checkout, or a Stripe customer this app does not know
    end if;
    if exists (select 1 from entitlements.customers c
                where c.id = v_customer and c.stripe_customer_id = v_stripe_customer) then
        return 'unchanged';
    end if;
    -- An event never moves a link: whoever opens a Checkout (a Payment Link takes
    -- client_reference_id from its URL) could otherwise tie someone else's customer to their
    -- Stripe customer, or take over another's. Relinking is link_stripe_customer's, an admin's.
    if exists (select 1 from entitlements.customers c
                where (c.id = v_customer and c.stripe_customer_id is not null)
                   or (c.stripe_customer_id = v_stripe_customer and c.id <> v_customer)) then
        raise warning 'Stripe customer % not linked to %: one of them is linked already', v_stripe_customer, v_customer;
        return 'conflict';
    end if;
    perform entitlements._stripe_link(v_customer, v_stripe_customer);
    return 'linked';
end
$$;
