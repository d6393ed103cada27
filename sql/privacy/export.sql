-- GDPR access (issue #13): everything the engine holds about one person, as one document.
-- Erasure (privacy/erasure.sql, which comes after this file) uses the same idea of "about":
-- rows found by the person's exact identifiers (their uuid, their Stripe customer id), never
-- by an email or a name, which anyone can set for themselves (set_profile) without proof.

-- Does the engine hold anything about `customer`? A customers row (or the audit rows of
-- one that was deleted), or what a user of the default plan has without one (usage, events,
-- a membership, a Supabase address, a place in entitlements.admins, earlier subscriptions).
create function entitlements._privacy_known(customer uuid)
returns boolean language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select exists (select 1 from entitlements.customers c where c.id = customer)
        or exists (select 1 from entitlements.members m where m.user_id = customer)
        or exists (select 1 from entitlements.usage_counters u where u.customer_id = customer)
        or exists (select 1 from entitlements.usage_ledger l where l.customer_id = customer)
        or exists (select 1 from entitlements.usage_rollup r where r.customer_id = customer)
        or exists (select 1 from entitlements.usage_idempotency i where i.customer_id = customer)
        or exists (select 1 from entitlements.outbox o where o.customer_id = customer)
        or exists (select 1 from entitlements.auth_emails a where a.user_id = customer)
        or exists (select 1 from entitlements.admins a where a.user_id = customer)
        or exists (select 1 from entitlements.subscription_history h where h.customer_id = customer)
        or exists (select 1 from entitlements.discounts d where d.customer_id = customer)
        or exists (select 1 from entitlements.audit_log a
                    where a.table_name = 'entitlements.customers' and a.row_key = customer::text)
$$;

-- The customer's addresses, lower case and trimmed: the current one, the Supabase one, and
-- every one their own customers audit rows hold. Only ever compared with whole values (or
-- searched in the customer's own rows); they select no row. (Named _privacy_json_emails
-- since it first returned them as JSON text; security/privileges.sql names it.)
create function entitlements._privacy_json_emails(customer uuid)
returns text[] language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce(array_agg(distinct lower(btrim(x.e))), '{}')
      from (select c.email from entitlements.customers c where c.id = customer
            union all
            select a.email from entitlements.auth_emails a where a.user_id = customer
            union all
            select v.x ->> 'email' from entitlements.audit_log a
             cross join lateral (values (a.old_values), (a.new_values)) v(x)
             where a.table_name = 'entitlements.customers' and a.row_key = customer::text) x(e)
     where btrim(x.e) <> '' and x.e <> '[erased]'
$$;

-- Is the Stripe event `payload` about the customer? Only by exact identifiers: their Stripe
-- customer id as the object's customer (or as the id of a customer object), or their uuid as
-- the object's metadata.entitlements_customer_id or client_reference_id (read as
-- stripe_record_event and the apply path read them). An address or a name in the payload
-- says nothing: anyone can give themselves someone else's.
create function entitlements._privacy_stripe_about(payload jsonb, stripe_customer text, customer uuid)
returns boolean language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select coalesce(
        (stripe_customer is not null
         and (entitlements._stripe_id(payload #> '{data,object,customer}') = stripe_customer
              or (payload #>> '{data,object,object}' = 'customer' and payload #>> '{data,object,id}' = stripe_customer)))
        or (payload #>> '{data,object,metadata,entitlements_customer_id}' is not null
            and entitlements._stripe_uuid(payload #>> '{data,object,metadata,entitlements_customer_id}') = customer)
        or (payload #>> '{data,object,client_reference_id}' is not null
            and entitlements._stripe_uuid(payload #>> '{data,object,client_reference_id}') = customer), false)
$$;

-- Is an audit row about the customer? Its row key is their uuid, or (the extension's tables)
-- its id, customer_id, user_id or organization_id is, or (an app table, whose columns we do
-- not know) one of its top-level values is. Exact ids only: a row that merely mentions their
-- address or name is someone else's.
create function entitlements._privacy_audit_about(table_name text, row_key text, old_values jsonb, new_values jsonb,
                                                  customer uuid)
returns boolean language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select coalesce(row_key = customer::text, false)
        or case when table_name like 'entitlements.%'
                then exists (select 1 from unnest(array['id', 'customer_id', 'user_id', 'organization_id']) k
                              where old_values ->> k = customer::text or new_values ->> k = customer::text)
                else exists (select 1 from jsonb_each_text(case when jsonb_typeof(old_values) = 'object' then old_values end) e
                              where lower(e.value) = customer::text)
                  or exists (select 1 from jsonb_each_text(case when jsonb_typeof(new_values) = 'object' then new_values end) e
                              where lower(e.value) = customer::text) end
$$;

-- Definer: the audit log, Stripe events and deliveries are for admins, yet a user may ask
-- for their own. Every check is about the real caller (the outer role, its trusted user id);
-- only the engine's own tables are read, whose columns have built-in types.
create function entitlements.export_customer(customer uuid)
returns jsonb language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_stripe text;
begin
    if customer is null then
        raise exception 'customer must not be NULL' using errcode = '22004';
    end if;
    perform entitlements._require(
        customer = entitlements.current_user_id()
        or entitlements._role_is_privileged(entitlements._outer_role())
        or entitlements._is_listed_admin(null),
        'export_customer', 'the customer themself or a global entitlements admin');
    if not entitlements._privacy_known(customer) then
        raise exception 'customer % is not known', customer using errcode = '22023';
    end if;
    select c.stripe_customer_id into v_stripe from entitlements.customers c where c.id = customer;

    return jsonb_build_object(
        'customer', customer,
        'exported_at', entitlements.now(),
        'profile', (select to_jsonb(c) from entitlements.customers c where c.id = customer),
        'auth_email', (select to_jsonb(a) from entitlements.auth_emails a where a.user_id = customer),
        'memberships', jsonb_build_object(
            'as_user', coalesce((select jsonb_agg(to_jsonb(m) order by m.organization_id)
                                   from entitlements.members m where m.user_id = customer), '[]'),
            'as_organization', coalesce((select jsonb_agg(to_jsonb(m) order by m.user_id)
                                           from entitlements.members m where m.organization_id = customer), '[]')),
        'subscriptions', coalesce((
            select jsonb_agg(to_jsonb(s) || jsonb_build_object(
                       'history', coalesce((select jsonb_agg(to_jsonb(h) order by h.valid_from, h.id)
                                              from entitlements.subscription_history h
                                             where h.subscription_id = s.id and h.customer_id = customer), '[]'),
                       'access_notice', (select to_jsonb(n) from entitlements.access_notices n where n.subscription_id = s.id),
                       'stripe_sync', (select to_jsonb(x) from entitlements.stripe_subscriptions x where x.subscription_id = s.id))
                   order by s.created_at, s.id)
              from entitlements.subscriptions s where s.customer_id = customer), '[]'),
        -- History of subscriptions that Stripe has since moved to another customer.
        'earlier_subscription_history', coalesce((
            select jsonb_agg(to_jsonb(h) order by h.valid_from, h.id)
              from entitlements.subscription_history h
             where h.customer_id = customer
               and not exists (select 1 from entitlements.subscriptions s where s.id = h.subscription_id and s.customer_id = customer)), '[]'),
        'grants', coalesce((select jsonb_agg(to_jsonb(g) order by g.created_at, g.id)
                              from entitlements.grants g where g.customer_id = customer), '[]'),
        'discounts', coalesce((
            select jsonb_agg(to_jsonb(d) || jsonb_build_object('coupon', (
                       select jsonb_build_object('code', k.code, 'percent_off', k.percent_off, 'amount_off_cents', k.amount_off_cents,
                                                 'currency', k.currency, 'duration', k.duration,
                                                 'duration_in_months', k.duration_in_months)
                         from entitlements.coupons k where k.id = d.coupon_id))
                   order by d.starts_at, d.id)
              from entitlements.discounts d where d.customer_id = customer), '[]'),
        'usage', jsonb_build_object(
            'ledger', coalesce((select jsonb_agg(to_jsonb(l) order by l.at, l.id)
                                  from entitlements.usage_ledger l where l.customer_id = customer), '[]'),
            'counters', coalesce((select jsonb_agg(to_jsonb(u) order by u.feature_key, u.period, u.window_start, u.stripe)
                                    from entitlements.usage_counters u where u.customer_id = customer), '[]'),
            'rollup', coalesce((select jsonb_agg(to_jsonb(r) order by r.feature_key, r.through)
                                  from entitlements.usage_rollup r where r.customer_id = customer), '[]'),
            'idempotency_keys', coalesce((select jsonb_agg(to_jsonb(i) order by i.created_at, i.idempotency_key)
                                            from entitlements.usage_idempotency i where i.customer_id = customer), '[]')),
        -- Emails sent to the customer with their attempts; of the app's webhooks only that
        -- they were sent (their URLs are the app's, not the customer's).
        'notifications', jsonb_build_object(
            'events', coalesce((
                select jsonb_agg(to_jsonb(o) || jsonb_build_object('deliveries', coalesce((
                           select jsonb_agg(case when d.channel = 'email'
                                                 then to_jsonb(d) || jsonb_build_object('attempts', coalesce((
                                                          select jsonb_agg(to_jsonb(t) - 'worker' order by t.id)
                                                            from entitlements.delivery_attempts t where t.delivery_id = d.id), '[]'))
                                                 else to_jsonb(d) - 'target' - 'endpoint_id' - 'last_error' end
                                            order by d.id)
                             from entitlements.deliveries d where d.event_id = o.id), '[]'))
                       order by o.id)
                  from entitlements.outbox o where o.customer_id = customer), '[]'),
            'access_notices', coalesce((select jsonb_agg(to_jsonb(n) order by n.subscription_id)
                                          from entitlements.access_notices n where n.customer_id = customer), '[]')),
        -- Server secrets are credentials, not personal data: not exported.
        'servers', coalesce((
            select jsonb_agg(to_jsonb(r) || jsonb_build_object('domain_claims', coalesce((
                       select jsonb_agg(x.domain order by x.domain) from entitlements.server_domains x where x.server_id = r.id), '[]'))
                   order by r.created_at, r.id)
              from entitlements.server_records r where r.customer_id = customer), '[]'),
        'servers_added', (select x.added from entitlements.server_counts x where x.customer_id = customer),
        'stripe', jsonb_build_object(
            'customer_id', v_stripe,
            'events', coalesce((
                select jsonb_agg(to_jsonb(e) order by e.created, e.received_at, e.id)
                  from entitlements.stripe_events e
                 where entitlements._privacy_stripe_about(e.payload, v_stripe, customer)), '[]')),
        -- Rows about the customer in full; rows of what they did to others without the values
        -- (those are the others' data, as are app rows that merely mention their address).
        'audit', coalesce((
            select jsonb_agg(case when x.about then to_jsonb(a)
                                  else to_jsonb(a) - 'old_values' - 'new_values' - 'reason'
                                       || jsonb_build_object('values_withheld', true) end
                             order by a.id)
              from entitlements.audit_log a
             cross join lateral (select entitlements._privacy_audit_about(a.table_name, a.row_key, a.old_values, a.new_values,
                                                                          customer) as about) x
             where x.about or a.actor = customer), '[]'));
end
$$;
comment on function entitlements.export_customer(uuid) is
    'GDPR access: everything the engine holds about a customer as one JSON document. The customer themself, or an admin of it.';
