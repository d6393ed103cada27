-- Stripe's webhook events: stored once, claimed, applied (stripe/objects.sql), retried,
-- dead-lettered. The ordering rules are in stripe/objects.sql's header.

-- Store a webhook event once by its id. True when it is new. Verifying the signature is the
-- caller's job (the worker does it on the raw body).
create function entitlements.stripe_record_event(event jsonb)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_new boolean;
    v_object jsonb;
    v_stripe_customer text;
    v_customer uuid;
begin
    perform entitlements._stripe_require_admin('stripe_record_event');
    if jsonb_typeof(event) is distinct from 'object' or event ->> 'id' !~ '^evt_[A-Za-z0-9_]+$'
       or coalesce(event ->> 'object', 'event') <> 'event' or jsonb_typeof(event -> 'type') is distinct from 'string'
       or jsonb_typeof(event -> 'created') is distinct from 'number'
       or jsonb_typeof(event #> '{data,object}') is distinct from 'object' then
        raise exception 'not a Stripe event: it needs an id (evt_...), a type, created and data.object'
            using errcode = '22023';
    end if;
    v_object := event #> '{data,object}';
    v_stripe_customer := case when v_object ->> 'object' = 'customer' then v_object ->> 'id'
                              else entitlements._stripe_id(v_object -> 'customer') end;
    v_customer := entitlements._stripe_uuid(coalesce(v_object #>> '{metadata,entitlements_customer_id}',
                                                     v_object ->> 'client_reference_id'));
    if exists (select 1 from entitlements.customers c
                where c.erased_at is not null and (c.stripe_customer_id = v_stripe_customer or c.id = v_customer)) then
        event := entitlements._erase_json(event, '{}'::text[], entitlements._erase_stripe_keys());
    end if;
    insert into entitlements.stripe_events (id, type, created, api_version, payload)
    values (event ->> 'id', event ->> 'type', entitlements._stripe_ts(event -> 'created'), event ->> 'api_version', event)
    on conflict (id) do nothing
    returning true into v_new;
    return coalesce(v_new, false);
end
$$;
comment on function entitlements.stripe_record_event(jsonb) is
    'Store a (signature-verified) Stripe event once by id; true when it was new. Admins only.';

-- Events due to be applied, oldest first, with the Stripe subscription each is about.
create function entitlements.stripe_pending_events(max_events integer default 100)
returns table (id text, type text, received_at timestamptz, stripe_subscription_id text)
language sql stable
set search_path = pg_catalog, pg_temp
begin atomic
    select e.id, e.type, e.received_at, entitlements._stripe_event_subscription(e.payload)
      from entitlements.stripe_events e
     where e.applied_at is null and e.dead_at is null and e.next_attempt_at <= entitlements.now()
     order by e.created, e.received_at, e.id
     limit max_events;
end;

-- Lock a pending event for this transaction; false when it is applied or another session
-- holds it. For apps that apply Stripe events themselves; the worker uses leases instead
-- (maintenance/leases.sql), so no transaction stays open while it fetches.
create function entitlements.stripe_claim_event(event_id text)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._stripe_require_admin('stripe_claim_event');
    perform 1 from entitlements.stripe_events e where e.id = event_id and e.applied_at is null
        for update skip locked;
    return found;
end
$$;

-- Apply a stored event once. `fetched`: the object as just fetched from the Stripe API
-- (the subscription the event is about), which is applied instead of the payload.
-- Returns the outcome, 'duplicate' when the event was applied before, or NULL when another
-- session is applying it right now (several workers share the queue).
create function entitlements.stripe_apply_event(event_id text, fetched jsonb default null)
returns text language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_event entitlements.stripe_events;
    v_object jsonb;
    v_reason text;
    v_outcome text;
begin
    perform entitlements._stripe_require_admin('stripe_apply_event');
    perform entitlements._require_not_null(event_id, 'event_id');
    select * into v_event from entitlements.stripe_events e where e.id = event_id for update skip locked;
    if not found then
        if not exists (select 1 from entitlements.stripe_events e where e.id = event_id) then
            raise exception 'Stripe event % is not stored', event_id using errcode = 'P0002';
        end if;
        return null;
    end if;
    if v_event.applied_at is not null then
        return 'duplicate';
    end if;
    v_object := v_event.payload #> '{data,object}';
    v_reason := format('stripe %s %s', v_event.type, v_event.id);
    if fetched is not null and coalesce(fetched ->> 'object', 'subscription') <> 'subscription' then
        raise exception 'fetched must be the Stripe subscription the event is about' using errcode = '22023';
    end if;
    v_outcome := case
        when v_event.type like 'customer.subscription.%' then
            case when fetched is not null then entitlements._stripe_apply_subscription(fetched, null, v_reason)
                 else entitlements._stripe_apply_subscription(v_object, v_event.created, v_reason) end
        when v_event.type in ('invoice.paid', 'invoice.payment_succeeded', 'invoice.payment_failed') then
            case when fetched is not null then entitlements._stripe_apply_subscription(fetched, null, v_reason)
                 else entitlements._stripe_apply_invoice(v_event.payload, v_event.created, v_reason) end
        when v_event.type = 'checkout.session.completed' then entitlements._stripe_apply_link(v_object)
            || case when fetched is not null then ', ' || entitlements._stripe_apply_subscription(fetched, null, v_reason)
                    else '' end
        when v_event.type in ('customer.created', 'customer.updated') then entitlements._stripe_apply_link(v_object)
        else 'ignored'
    end;
    update entitlements.stripe_events e
       set applied_at = entitlements.now(), outcome = v_outcome, attempts = e.attempts + 1, last_error = null
     where e.id = event_id;
    return v_outcome;
end
$$;
comment on function entitlements.stripe_apply_event(text, jsonb) is
    'Apply a stored Stripe event once (subscription, invoice, checkout and customer events; others are '
    'acknowledged as ignored). fetched: the subscription as just fetched from the API. Admins only.';

-- Record a failed attempt; the next one waits 2^attempts seconds, at most an hour. After
-- settings.stripe_max_attempts failures the event is a dead letter (dead_at set, NULL
-- returned): it is not retried until an admin calls stripe_retry_event.
create function entitlements.stripe_event_failed(event_id text, error text)
returns timestamptz language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_next timestamptz;
    v_max integer := (entitlements._settings()).stripe_max_attempts;
begin
    perform entitlements._stripe_require_admin('stripe_event_failed');
    update entitlements.stripe_events e
       set attempts = e.attempts + 1, last_error = left(error, 2000),
           next_attempt_at = entitlements.now() + least(interval '1 hour', interval '1 second' * power(2, least(e.attempts, 12))),
           dead_at = case when e.attempts + 1 >= v_max then entitlements.now() end
     where e.id = event_id and e.applied_at is null
    returning case when e.dead_at is null then e.next_attempt_at end into v_next;
    return v_next;
end
$$;

-- Give a dead letter (or any unapplied event) a fresh start: retried at once, with its
-- attempts counted from zero.
create function entitlements.stripe_retry_event(event_id text)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._stripe_require_admin('stripe_retry_event');
    perform entitlements._require_not_null(event_id, 'event_id');
    update entitlements.stripe_events e
       set dead_at = null, attempts = 0, next_attempt_at = entitlements.now()
     where e.id = event_id and e.applied_at is null;
    if not found then
        if not exists (select 1 from entitlements.stripe_events e where e.id = event_id) then
            raise exception 'Stripe event % is not stored', event_id using errcode = 'P0002';
        end if;
        return false; -- applied already
    end if;
    return true; -- the applier polls and takes it within a second
end
$$;
comment on function entitlements.stripe_retry_event(text) is
    'Retry a dead-lettered Stripe event now, attempts counted from zero. Admins only.';
