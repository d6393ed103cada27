-- Subscription history (issue #12): every change of a subscription's plan, status,
-- quantity, price or period, with the instant it took effect (entitlements.now(), so the
-- test clock dates it). entitlements.subscriptions stays the current state; this is what
-- "as of" reads and the revenue metrics (revenue/metrics.sql) read. Discounts keep their
-- own time ranges (revenue/discounts.sql, grants of kind discount).

-- What a subscription pays, when it differs from its plan's price (a Stripe price, a
-- negotiated price); NULL: the plan's price_cents, currency and interval.
alter table entitlements.subscriptions
    add column price_cents bigint check (price_cents between 0 and 2147483647),
    add column currency text check (currency ~ '^[a-z]{3}$'),
    add column billing_interval text check (billing_interval in ('day', 'week', 'month', 'year', 'once'));

create table entitlements.subscription_history (
    id                   bigint generated always as identity primary key,
    subscription_id      uuid not null references entitlements.subscriptions (id) on delete cascade,
    customer_id          uuid not null,
    -- The state held from valid_from until valid_to (NULL: still the current state).
    valid_from           timestamptz not null,
    valid_to             timestamptz,
    plan_key             text not null,
    status               text not null,
    quantity             integer not null,
    -- The price in force then (the subscription's own, else the plan's at that instant):
    -- a later catalog price change does not rewrite what was paid.
    price_cents          bigint not null,
    currency             text not null,
    billing_interval     text not null,
    current_period_start timestamptz,
    current_period_end   timestamptz,
    trial_end            timestamptz,
    cancel_at_period_end boolean not null,
    ended_at             timestamptz,
    check (valid_to is null or valid_to >= valid_from)
);
comment on table entitlements.subscription_history is
    'Every state a subscription has been in, with the instants it held; the current one has valid_to NULL.';
create unique index subscription_history_current on entitlements.subscription_history (subscription_id)
    where valid_to is null;
create index subscription_history_subscription on entitlements.subscription_history (subscription_id, valid_from);
create index subscription_history_customer on entitlements.subscription_history (customer_id);
select pg_catalog.pg_extension_config_dump('entitlements.subscription_history', '');
select pg_catalog.pg_extension_config_dump('entitlements.subscription_history_id_seq', '');

-- Row security: whoever may see the customer sees its history; only the trigger writes.
alter table entitlements.subscription_history enable row level security;
create policy subscription_history_read on entitlements.subscription_history for select
    using (entitlements.can_see_customer(customer_id));

-- After every insert and update of a subscription: a change of what history keeps closes
-- the current row and opens the next. Two changes at the same instant (one transaction, a
-- frozen test clock) leave one row. Runs as the owner: only it writes history.
create function entitlements._record_subscription_history()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_at timestamptz := entitlements.now();
    v_current entitlements.subscription_history;
    v_plan entitlements.plans;
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._record_subscription_history');
    if entitlements._bulk_loading() then
        return null; -- pg_restore: the history is restored with the rest
    end if;
    if tg_op = 'UPDATE'
       and (new.plan_key, new.status, new.quantity, new.price_cents, new.currency, new.billing_interval,
            new.current_period_start, new.current_period_end, new.trial_end, new.cancel_at_period_end, new.ended_at)
           is not distinct from
           (old.plan_key, old.status, old.quantity, old.price_cents, old.currency, old.billing_interval,
            old.current_period_start, old.current_period_end, old.trial_end, old.cancel_at_period_end, old.ended_at) then
        return null;
    end if;
    select * into v_plan from entitlements.plans p where p.key = new.plan_key;
    select * into v_current from entitlements.subscription_history h
     where h.subscription_id = new.id and h.valid_to is null
       for update;
    if found then
        -- A clock set back before the current row still appends: history never reorders.
        v_at := greatest(v_at, v_current.valid_from);
        if v_current.valid_from = v_at then
            delete from entitlements.subscription_history h where h.id = v_current.id;
        else
            update entitlements.subscription_history h set valid_to = v_at where h.id = v_current.id;
        end if;
    end if;
    insert into entitlements.subscription_history (
        subscription_id, customer_id, valid_from, plan_key, status, quantity, price_cents, currency,
        billing_interval, current_period_start, current_period_end, trial_end, cancel_at_period_end, ended_at)
    values (new.id, new.customer_id, v_at, new.plan_key, new.status, new.quantity,
            coalesce(new.price_cents, v_plan.price_cents, 0), coalesce(new.currency, v_plan.currency, 'usd'),
            coalesce(new.billing_interval, v_plan.interval, 'month'), new.current_period_start,
            new.current_period_end, new.trial_end, new.cancel_at_period_end, new.ended_at);
    return null;
end
$$;
create trigger subscriptions_history after insert or update on entitlements.subscriptions
    for each row execute function entitlements._record_subscription_history();

-- A subscription as it was at `at`: the history row in force then (none before it began).
create function entitlements.subscription_as_of(subscription uuid, at timestamptz default entitlements.now())
returns setof entitlements.subscription_history language sql stable strict
set search_path = pg_catalog, pg_temp
as $$
    select h.* from entitlements.subscription_history h
     where h.subscription_id = subscription
       and h.valid_from <= at and (h.valid_to is null or h.valid_to > at)
$$;
comment on function entitlements.subscription_as_of(uuid, timestamptz) is
    'The state a subscription was in at an instant (its plan, status, quantity, price, period), from its history.';
