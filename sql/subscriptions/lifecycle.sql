-- Customers, subscriptions and organization membership: the write path.
-- Whether a subscription grants is decided at read time (extension/src/rules.rs).

create function entitlements._touch_subscription()
returns trigger language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if entitlements._bulk_loading() then
        return new; -- pg_restore: keep the restored instants
    end if;
    new.updated_at := entitlements.now();
    if tg_op = 'INSERT' or new.status is distinct from old.status then
        -- The past_due grace period counts from here.
        new.status_changed_at := entitlements.now();
    end if;
    return new;
end
$$;
create trigger subscriptions_touch before insert or update on entitlements.subscriptions
    for each row execute function entitlements._touch_subscription();

-- Every write of a subscription's plan or customer, through the functions, Stripe or a
-- direct INSERT/UPDATE (admins have those under row security): the plan must be one the
-- writer can see (not another store's or a private plan it cannot read), and a store's
-- plan needs a customer of that store. Runs as the writer, so "see" is its row security.
create function entitlements._check_subscription_plan()
returns trigger language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_plan entitlements.plans;
begin
    if entitlements._bulk_loading() then
        return new;
    end if;
    if tg_op = 'UPDATE' and new.plan_key = old.plan_key and new.customer_id = old.customer_id then
        return new;
    end if;
    select * into v_plan from entitlements.plans p where p.key = new.plan_key;
    if not found then
        -- Missing or hidden alike (subscribe and change_plan name unknown plans first).
        raise exception 'permission denied: plan "%" is not one this role may write', new.plan_key
            using errcode = '42501';
    end if;
    perform entitlements._require_store_customer(v_plan, new.customer_id);
    return new;
end
$$;
create trigger subscriptions_plan before insert or update of plan_key, customer_id on entitlements.subscriptions
    for each row execute function entitlements._check_subscription_plan();

create function entitlements._raise_unknown_plan(plan text)
returns void language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    raise exception 'unknown plan "%"', plan
        using errcode = '22023',
              hint = 'active plans: ' || coalesce((select string_agg(p.key, ', ' order by p.position)
                                                  from entitlements.plans p where p.active), 'none');
end
$$;

create function entitlements._require_not_null(value anyelement, name text)
returns void language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
    if value is null then
        raise exception '% must not be NULL', name using errcode = '22004';
    end if;
end
$$;

-- Only a store's customers subscribe to its plans (42501, nothing written).
create function entitlements._require_store_customer(p_plan entitlements.plans, customer uuid)
returns void language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_plan.tenant_id is not null
       and not exists (select 1 from entitlements.customers c where c.id = customer and c.tenant_id = p_plan.tenant_id) then
        raise exception 'permission denied: plan "%" is for the customers of its store', p_plan.key
            using errcode = '42501';
    end if;
end
$$;

create function entitlements.subscribe(
    customer uuid,
    plan text,
    status text default 'active',
    period_end timestamptz default null,
    trial_end timestamptz default null,
    quantity integer default 1)
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_plan entitlements.plans;
    v_trial_end timestamptz := trial_end;
    v_id uuid;
begin
    perform entitlements._require_not_null(customer, 'customer');
    perform entitlements._require_not_null(plan, 'plan');
    perform entitlements._require_not_null(status, 'status');
    select * into v_plan from entitlements.plans p where p.key = subscribe.plan;
    -- A store's admins may also subscribe a new customer to the store's plans (below, once
    -- the customer is the store's); anything else is for an admin of the customer.
    if v_plan.tenant_id is null then
        perform entitlements._require_admin_of('subscribe', customer);
    end if;
    if v_plan.key is null then
        perform entitlements._raise_unknown_plan(plan);
    end if;
    if not v_plan.active then
        raise exception 'plan "%" is no longer offered', plan
            using errcode = '22023', hint = 'Existing subscribers keep it; new subscriptions need an active plan.';
    end if;
    if not coalesce(status = any (entitlements.subscription_statuses()), false) then
        raise exception 'unknown subscription status "%"', status
            using errcode = '22023',
                  hint = 'one of: ' || array_to_string(entitlements.subscription_statuses(), ', ');
    end if;
    if quantity is null or quantity < 1 or quantity > 1000000 then
        raise exception 'quantity must be from 1 to 1000000, got %', coalesce(quantity::text, 'NULL') using errcode = '22023';
    end if;
    perform entitlements._finite(period_end, 'period_end');
    perform entitlements._finite(trial_end, 'trial_end');
    if period_end <= entitlements.now() then
        raise exception 'period_end (%) must be in the future', period_end using errcode = '22023';
    end if;
    if trial_end <= entitlements.now() then
        raise exception 'trial_end (%) must be in the future', trial_end using errcode = '22023';
    end if;
    if status = 'trialing' and v_trial_end is null and v_plan.trial_days > 0 then
        v_trial_end := entitlements.now() + make_interval(days => v_plan.trial_days);
    end if;

    -- A new customer of a store's plan is that store's customer (its admins may create it).
    -- (ON CONFLICT would hold the new row to the read policy, which a row not yet written
    -- cannot pass; a customer the caller cannot see is left to the checks below.)
    if not exists (select 1 from entitlements.customers c where c.id = customer) then
        begin
            insert into entitlements.customers (id, tenant_id) values (customer, v_plan.tenant_id);
        exception when unique_violation then
            null;
        end;
    end if;
    if v_plan.tenant_id is not null then
        -- (Checked above for the other plans; a store's plan for another store's customer is
        -- refused by _check_subscription_plan.)
        perform entitlements._require_admin_of('subscribe', customer);
    end if;
    insert into entitlements.subscriptions (customer_id, plan_key, status, quantity, current_period_start,
                                            current_period_end, trial_end, canceled_at, ended_at)
    values (customer, plan, status, quantity, entitlements.now(), period_end, v_trial_end,
            case when status = 'canceled' then entitlements.now() end,
            case when status in ('canceled', 'incomplete_expired') then entitlements.now() end)
    returning id into v_id;
    return v_id;
end
$$;
comment on function entitlements.subscribe(uuid, text, text, timestamptz, timestamptz, integer) is
    'Create a manual (non-Stripe) subscription; creates the customer if missing. Admins only.';

create function entitlements._subscription_for_update(subscription uuid)
returns entitlements.subscriptions language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_sub entitlements.subscriptions;
begin
    perform entitlements._require_not_null(subscription, 'subscription');
    select * into v_sub from entitlements.subscriptions s where s.id = subscription for update;
    if not found then
        -- Row security lets a customer read its subscription but not lock it for a change:
        -- that is a refusal, not a missing row.
        if exists (select 1 from entitlements.subscriptions s where s.id = subscription) then
            raise exception 'permission denied: changing a subscription requires an entitlements admin of this customer'
                using errcode = '42501';
        end if;
        raise exception 'subscription % does not exist', subscription using errcode = 'P0002';
    end if;
    perform entitlements._require_admin_of('changing a subscription', v_sub.customer_id);
    return v_sub;
end
$$;

-- Cancel now, or at the end of the current period (access continues until then).
-- A subscription without a period end has nothing to run out, so it ends now.
create function entitlements.cancel(subscription uuid, at_period_end boolean default true)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_sub entitlements.subscriptions;
begin
    perform entitlements._require_not_null(at_period_end, 'at_period_end');
    v_sub := entitlements._subscription_for_update(subscription);
    if v_sub.status = 'canceled' and not (at_period_end is false and v_sub.cancel_at_period_end) then
        return; -- already canceled: idempotent
    end if;
    perform set_config('entitlements.reason', 'cancel', true);
    if at_period_end and v_sub.current_period_end > entitlements.now() then
        update entitlements.subscriptions s
           set status = 'canceled', cancel_at_period_end = true, canceled_at = entitlements.now(), ended_at = v_sub.current_period_end
         where s.id = v_sub.id;
    else
        if at_period_end then
            raise notice 'subscription % has no future period end; canceled immediately', v_sub.id;
        end if;
        update entitlements.subscriptions s
           set status = 'canceled', cancel_at_period_end = false, canceled_at = entitlements.now(), ended_at = entitlements.now()
         where s.id = v_sub.id;
    end if;
    perform set_config('entitlements.reason', '', true);
end
$$;

create function entitlements.change_plan(subscription uuid, plan text, reason text)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_sub entitlements.subscriptions;
    v_plan entitlements.plans;
begin
    perform entitlements._require_not_null(plan, 'plan');
    if reason is null or btrim(reason) = '' then
        raise exception 'a reason is required to change a plan' using errcode = '22023';
    end if;
    v_sub := entitlements._subscription_for_update(subscription);
    select * into v_plan from entitlements.plans p where p.key = change_plan.plan;
    if not found then
        perform entitlements._raise_unknown_plan(plan);
    end if;
    if not v_plan.active then
        raise exception 'plan "%" is no longer offered', plan using errcode = '22023';
    end if;
    if v_sub.ended_at is not null and v_sub.ended_at <= entitlements.now() then
        raise exception 'subscription % has ended; start a new one instead', v_sub.id using errcode = '55000';
    end if;
    if v_sub.plan_key = plan then
        return;
    end if;
    perform set_config('entitlements.reason', reason, true);
    update entitlements.subscriptions s set plan_key = plan where s.id = v_sub.id;
    perform set_config('entitlements.reason', '', true);
end
$$;

-- The manual lifecycle, for apps that bill without Stripe (a subscription synced from Stripe
-- is Stripe's to change: 55000). Both are audited with their reason and tell what changed
-- through the outbox like any other change.

-- The next paid period starts now (the payment's instant) and runs to `period_end`: a trial
-- becomes active (the trial-to-paid conversion), past_due, unpaid or incomplete active again.
-- A canceled or paused subscription is not renewed (subscribe again; resume with set_status).
create function entitlements.renew(subscription uuid, period_end timestamptz)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_sub entitlements.subscriptions;
begin
    v_sub := entitlements._subscription_for_update(subscription);
    if v_sub.source <> 'manual' then
        raise exception 'subscription % is synced from Stripe, which renews it', v_sub.id using errcode = '55000';
    end if;
    if v_sub.status not in ('trialing', 'active', 'past_due', 'unpaid', 'incomplete') then
        raise exception 'a % subscription cannot be renewed', v_sub.status
            using errcode = '55000',
                  hint = case when v_sub.status = 'paused' then 'Resume it with entitlements.set_status(subscription, ''active'', reason).'
                              else 'Start a new one with entitlements.subscribe().' end;
    end if;
    if period_end is null or not isfinite(period_end) or period_end <= entitlements.now() then
        raise exception 'period_end must be a finite instant after now, got %', coalesce(period_end::text, 'NULL')
            using errcode = '22023';
    end if;
    perform set_config('entitlements.reason', 'renew', true);
    update entitlements.subscriptions s
       set status = 'active', current_period_start = entitlements.now(), current_period_end = period_end,
           -- A trial converted before its end ends now.
           trial_end = case when s.status = 'trialing' and s.trial_end > entitlements.now() then entitlements.now() else s.trial_end end
     where s.id = v_sub.id;
    perform set_config('entitlements.reason', '', true);
end
$$;
comment on function entitlements.renew(uuid, timestamptz) is
    'Start the next paid period of a manual subscription, now until period_end; a trial becomes active. Admins of the customer.';

-- past_due, unpaid, paused, incomplete, incomplete_expired, and back to active. Trials are
-- started by subscribe and cancellations made by cancel, which know their instants.
create function entitlements.set_status(subscription uuid, status text, reason text)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_sub entitlements.subscriptions;
begin
    perform entitlements._require_not_null(status, 'status');
    if status in ('trialing', 'canceled') then
        raise exception 'set_status does not set %', status
            using errcode = '22023',
                  hint = case when status = 'canceled' then 'Use entitlements.cancel(subscription, at_period_end).'
                              else 'Start a trial with entitlements.subscribe(customer, plan, ''trialing'', trial_end => ...).' end;
    end if;
    if not status = any (entitlements.subscription_statuses()) then
        raise exception 'unknown subscription status "%"', status
            using errcode = '22023', hint = 'one of ' || array_to_string(entitlements.subscription_statuses(), ', ');
    end if;
    if reason is null or btrim(reason) = '' then
        raise exception 'a reason is required to set a status' using errcode = '22023';
    end if;
    v_sub := entitlements._subscription_for_update(subscription);
    if v_sub.source <> 'manual' then
        raise exception 'subscription % is synced from Stripe, which sets its status', v_sub.id using errcode = '55000';
    end if;
    if v_sub.status in ('canceled', 'incomplete_expired') then
        raise exception 'subscription % has ended (%); start a new one instead', v_sub.id, v_sub.status using errcode = '55000';
    end if;
    if v_sub.status = set_status.status then
        return;
    end if;
    perform set_config('entitlements.reason', reason, true);
    update entitlements.subscriptions s set status = set_status.status where s.id = v_sub.id;
    perform set_config('entitlements.reason', '', true);
end
$$;
comment on function entitlements.set_status(uuid, text, text) is
    'Set a manual subscription''s status (past_due, unpaid, paused, incomplete, incomplete_expired, active), with a reason. Admins of the customer.';

create function entitlements.link_stripe_customer(customer uuid, stripe_customer_id text)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_not_null(customer, 'customer');
    if stripe_customer_id is null or stripe_customer_id !~ '^cus_[A-Za-z0-9]+$' then
        raise exception 'not a Stripe customer id: %', coalesce(stripe_customer_id, 'NULL') using errcode = '22023';
    end if;
    perform entitlements._require_admin_of('link_stripe_customer', customer);
    -- UPDATE first: an INSERT ... ON CONFLICT is held to the INSERT policy even when it
    -- updates, and a tenant admin may not insert a customer without a tenant.
    update entitlements.customers c set stripe_customer_id = link_stripe_customer.stripe_customer_id, updated_at = entitlements.now()
     where c.id = customer and c.stripe_customer_id is distinct from link_stripe_customer.stripe_customer_id;
    if not found and not exists (select 1 from entitlements.customers c where c.id = customer) then
        insert into entitlements.customers (id, stripe_customer_id) values (customer, stripe_customer_id);
    end if;
end
$$;
