-- GDPR erasure (issue #13): irreversible pseudonymisation of one customer. Their email,
-- name, locale and metadata go, from their row and from every copy the engine made (audit
-- values, events, deliveries, usage metadata, Stripe payloads); ids, amounts, plans, prices,
-- dates, subscriptions, their history and discounts stay, so the revenue of every past
-- instant reads the same. Needs privacy/export.sql (_privacy_known, _privacy_json_emails).

comment on column entitlements.customers.erased_at is
    'When entitlements.erase_customer pseudonymised the customer; its email, name, locale and metadata stay empty.';

-- Is the erasure running? erase_customer sets entitlements.audit_erasure for its own
-- transaction; it counts only for the schema's owner (erase_customer is a definer), so no
-- other role can claim it.
create function entitlements._erasing()
returns boolean language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce(current_setting('entitlements.audit_erasure', true), '') = 'on'
       and exists (select 1 from pg_roles r where r.rolname = current_user
                      and r.oid = (select n.nspowner from pg_namespace n where n.nspname = 'entitlements'))
$$;

-- An erased customer stays erased: only erase_customer sets erased_at, and the profile
-- columns stay empty whoever writes the row later (set_profile, an admin's UPDATE).
create function entitlements._customer_erasure_guard()
returns trigger language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_was timestamptz;
begin
    if entitlements._bulk_loading() then
        return new; -- pg_restore: restored as it was
    end if;
    if tg_op = 'UPDATE' then
        v_was := old.erased_at;
    end if;
    if new.erased_at is distinct from v_was and not entitlements._erasing() then
        raise exception 'customers.erased_at is set by entitlements.erase_customer only' using errcode = '42501';
    end if;
    if v_was is not null
       and (new.email is not null or new.display_name is not null or new.locale is not null
            or new.metadata is distinct from '{}'::jsonb) then
        raise exception 'customer % is erased: its email, name, locale and metadata stay empty', new.id
            using errcode = '55000';
    end if;
    return new;
end
$$;
create trigger customers_erased before insert or update on entitlements.customers
    for each row execute function entitlements._customer_erasure_guard();

-- Erasing text ---------------------------------------------------------------------------------------

-- A regex for `needle` (matched case-insensitively) where it is not part of a longer word:
-- "Al" is not erased from "Also".
create function entitlements._erase_pattern(needle text)
returns text language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select case when needle ~ '^[[:alnum:]_]' then '(?<![[:alnum:]_])' else '' end
        || regexp_replace(needle, '([^[:alnum:][:space:]])', '\\\1', 'g')
        || case when needle ~ '[[:alnum:]_]$' then '(?![[:alnum:]_])' else '' end
$$;

-- `s` with every match of `patterns` replaced by [erased].
create function entitlements._erase_text(s text, patterns text[])
returns text language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
    v_out text := s;
    v_pattern text;
begin
    if v_out is null then
        return null;
    end if;
    foreach v_pattern in array coalesce(patterns, '{}'::text[]) loop
        v_out := regexp_replace(v_out, v_pattern, '[erased]', 'gi');
    end loop;
    return v_out;
end
$$;

-- `v` with every string (and key) through _erase_text, and the values of `keys`, at any depth,
-- null (empty ones stay).
create function entitlements._erase_json(v jsonb, patterns text[], keys text[])
returns jsonb language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
    return case jsonb_typeof(v)
        when 'object' then coalesce((
            select jsonb_object_agg(entitlements._erase_text(e.key, patterns),
                                    case when not e.key = any (keys) then entitlements._erase_json(e.value, patterns, keys)
                                         when e.value in ('{}'::jsonb, '[]'::jsonb, '""'::jsonb) then e.value
                                         else 'null'::jsonb end)
              from jsonb_each(v) e), '{}'::jsonb)
        when 'array' then coalesce((
            select jsonb_agg(entitlements._erase_json(e.value, patterns, keys) order by e.n)
              from jsonb_array_elements(v) with ordinality e(value, n)), '[]'::jsonb)
        when 'string' then to_jsonb(entitlements._erase_text(v #>> '{}', patterns))
        else v end;
end
$$;

-- Where Stripe objects keep a person's details (customers, Checkout Sessions, invoices,
-- charges, payment methods): nulled in the events about an erased customer.
create function entitlements._erase_stripe_keys()
returns text[] language sql immutable parallel safe
return array['email', 'name', 'phone', 'address', 'shipping', 'description', 'billing_details', 'customer_details',
             'customer_email', 'customer_name', 'customer_phone', 'customer_address', 'customer_shipping',
             'customer_tax_ids', 'tax_ids', 'receipt_email'];

-- Erasure --------------------------------------------------------------------------------------------

-- Definer: it rewrites the audit log (append-only for everyone else), the Stripe events and
-- deliveries of every tenant; the caller must be an admin of the customer, asked of the
-- real caller. Only the engine's own tables are read and written (built-in types).
create function entitlements.erase_customer(customer uuid, reason text)
returns jsonb language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_key constant text := customer::text;
    v_now constant timestamptz := entitlements.now();
    v_customer entitlements.customers;
    v_emails text[];      -- lower case
    v_json_emails text[]; -- lower case, as inside JSON text
    v_patterns text[];
    v_ids uuid[];         -- the customer and its organizations (whose usage may name it)
    v_prev_reason text := current_setting('entitlements.reason', true);
    v_counts jsonb := '{}'::jsonb;
    v_n bigint;
begin
    if customer is null then
        raise exception 'customer must not be NULL' using errcode = '22004';
    end if;
    perform entitlements._require(
        entitlements._role_is_privileged(entitlements._outer_role()) or entitlements._is_listed_admin_of(customer),
        'erase_customer', 'an entitlements admin of this customer');
    if not entitlements._privacy_known(customer) then
        raise exception 'customer % is not known', customer using errcode = '22023';
    end if;
    if reason is null or btrim(reason) = '' then
        raise exception 'a reason is required' using errcode = '22023';
    end if;
    -- One erasure of a customer at a time (it may have no customers row yet).
    perform pg_advisory_xact_lock('entitlements.customers'::regclass::oid::integer, hashtext('erase:' || v_key));
    select * into v_customer from entitlements.customers c where c.id = customer for update;
    if v_customer.erased_at is not null then
        return jsonb_build_object('customer', customer, 'already_erased', true, 'erased_at', v_customer.erased_at,
                                  'changed', '{}'::jsonb);
    end if;

    -- What to look for: every address and name the customer had (their audit rows keep the
    -- earlier ones; their emails went to the addresses of the time).
    select coalesce(array_agg(distinct lower(btrim(x.e))), '{}') into v_emails
      from (select v_customer.email
            union all select a.email from entitlements.auth_emails a where a.user_id = customer
            union all select v.x ->> 'email' from entitlements.audit_log a
                       cross join lateral (values (a.old_values), (a.new_values)) v(x)
                      where a.table_name = 'entitlements.customers' and a.row_key = v_key
            union all select d.target from entitlements.deliveries d join entitlements.outbox o on o.id = d.event_id
                      where o.customer_id = customer and d.channel = 'email') x(e)
     where btrim(x.e) <> '' and x.e <> '[erased]';
    v_json_emails := array(select lower(substr(to_jsonb(e)::text, 2, length(to_jsonb(e)::text) - 2)) from unnest(v_emails) e);
    select coalesce(array_agg(entitlements._erase_pattern(n)), '{}') into v_patterns
      from (select e from unnest(v_emails) e
            union
            select btrim(x.n) from (select v_customer.display_name
                                    union all select v.x ->> 'display_name' from entitlements.audit_log a
                                               cross join lateral (values (a.old_values), (a.new_values)) v(x)
                                              where a.table_name = 'entitlements.customers' and a.row_key = v_key) x(n)
             where btrim(x.n) <> '') p(n);
    if exists (select 1 from unnest(v_patterns) p where reason ~* p) then
        raise exception 'the reason must not contain the customer''s email address or name' using errcode = '22023';
    end if;
    v_ids := array[customer] || array(select m.organization_id from entitlements.members m where m.user_id = customer);

    -- The audit rows the triggers write below carry the reason; the erasure path opens.
    perform set_config('entitlements.reason', reason, true);
    perform set_config('entitlements.audit_erasure', 'on', true);

    -- The profile first: events the writes below cause find no address.
    if v_customer.id is null then
        insert into entitlements.customers (id, erased_at, updated_at) values (customer, v_now, v_now);
    else
        update entitlements.customers c
           set email = null, display_name = null, locale = null, metadata = '{}', erased_at = v_now, updated_at = v_now
         where c.id = customer;
    end if;
    v_counts := v_counts || jsonb_build_object('customers', 1);
    delete from entitlements.auth_emails a where a.user_id = customer;
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('auth_emails', v_n);

    -- Reasons and metadata that name them; amounts, plans and dates stay.
    with x as (select g.id, coalesce(nullif(btrim(entitlements._erase_text(g.reason, v_patterns)), ''), '[erased]') as reason,
                      entitlements._erase_json(g.value, v_patterns, '{}') as value
                 from entitlements.grants g where g.customer_id = customer)
    update entitlements.grants g set reason = x.reason, value = x.value
      from x where x.id = g.id and (g.reason, g.value) is distinct from (x.reason, x.value);
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('grants', v_n);
    with x as (select s.id, entitlements._erase_json(s.metadata, v_patterns, '{}') as metadata
                 from entitlements.subscriptions s where s.customer_id = customer)
    update entitlements.subscriptions s set metadata = x.metadata
      from x where x.id = s.id and s.metadata is distinct from x.metadata;
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('subscriptions', v_n);

    -- Usage: the metadata of their ledger rows goes, what their organizations' rows say of
    -- them is erased; amounts and costs stay. Idempotency keys naming them are replaced
    -- (ledger and key table alike).
    with x as (select l.id, l.at,
                      case when l.customer_id = customer then null
                           else entitlements._erase_json(l.metadata, v_patterns, '{}') end as metadata
                 from entitlements.usage_ledger l
                where l.customer_id = any (v_ids) and l.metadata is not null)
    update entitlements.usage_ledger l set metadata = x.metadata
      from x where x.id = l.id and x.at = l.at and l.metadata is distinct from x.metadata;
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('usage_ledger', v_n);
    with k as (select y.customer_id, y.idempotency_key, 'erased:' || gen_random_uuid()::text as replacement
                 from (select i.customer_id, i.idempotency_key from entitlements.usage_idempotency i
                        where i.customer_id = any (v_ids)
                       union
                       select l.customer_id, l.idempotency_key from entitlements.usage_ledger l
                        where l.customer_id = any (v_ids) and l.idempotency_key is not null) y
                where exists (select 1 from unnest(v_patterns) p where y.idempotency_key ~* p)),
         i as (update entitlements.usage_idempotency i set idempotency_key = k.replacement
                 from k where i.customer_id = k.customer_id and i.idempotency_key = k.idempotency_key returning 1),
         l as (update entitlements.usage_ledger l set idempotency_key = k.replacement
                 from k where l.customer_id = k.customer_id and l.idempotency_key = k.idempotency_key returning 1)
    select (select count(*) from i) + (select count(*) from l) into v_n;
    v_counts := v_counts || jsonb_build_object('idempotency_keys', v_n);

    -- Stripe events about them lose the person's details; any other naming their address, the address.
    with x as (select e.id,
                      entitlements._erase_json(e.payload, v_patterns,
                          case when (v_customer.stripe_customer_id is not null
                                     and (entitlements._stripe_id(e.payload #> '{data,object,customer}') = v_customer.stripe_customer_id
                                          or (e.payload #>> '{data,object,object}' = 'customer'
                                              and e.payload #>> '{data,object,id}' = v_customer.stripe_customer_id)))
                                    or strpos(e.payload::text, v_key) > 0
                               then entitlements._erase_stripe_keys() else '{}'::text[] end) as payload,
                      entitlements._erase_text(e.last_error, v_patterns) as last_error
                 from entitlements.stripe_events e
                where (v_customer.stripe_customer_id is not null
                       and (entitlements._stripe_id(e.payload #> '{data,object,customer}') = v_customer.stripe_customer_id
                            or (e.payload #>> '{data,object,object}' = 'customer'
                                and e.payload #>> '{data,object,id}' = v_customer.stripe_customer_id)))
                   or strpos(e.payload::text, v_key) > 0
                   or exists (select 1 from unnest(v_json_emails) m
                               where strpos(lower(e.payload::text), m) > 0 or strpos(lower(coalesce(e.last_error, '')), m) > 0))
    update entitlements.stripe_events e set payload = x.payload, last_error = x.last_error
      from x where x.id = e.id and (e.payload, e.last_error) is distinct from (x.payload, x.last_error);
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('stripe_events', v_n);

    -- Notifications: their events' payloads, and any event naming their address.
    with x as (select o.id,
                      entitlements._erase_json(o.payload, v_patterns,
                          case when o.customer_id = customer
                               then array['email', 'display_name', 'customer_email', 'customer_name', 'phone', 'address']
                               else '{}'::text[] end) as payload
                 from entitlements.outbox o
                where o.customer_id = customer
                   or exists (select 1 from unnest(v_json_emails) m where strpos(lower(o.payload::text), m) > 0))
    update entitlements.outbox o set payload = x.payload
      from x where x.id = o.id and o.payload is distinct from x.payload;
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('outbox', v_n);
    -- What still waits for their events, or for their address, is never sent.
    update entitlements.deliveries d set status = 'canceled', last_error = 'customer erased'
     where d.status = 'pending'
       and (d.event_id in (select o.id from entitlements.outbox o where o.customer_id = customer)
            or (d.channel = 'email' and lower(btrim(d.target)) = any (v_emails)));
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('deliveries_canceled', v_n);
    with x as (select d.id,
                      case when d.channel = 'email' and (o.customer_id = customer or lower(btrim(d.target)) = any (v_emails))
                           then '[erased]' else entitlements._erase_text(d.target, v_patterns) end as target,
                      entitlements._erase_text(d.last_error, v_patterns) as last_error
                 from entitlements.deliveries d join entitlements.outbox o on o.id = d.event_id
                where o.customer_id = customer
                   or exists (select 1 from unnest(v_emails) m
                               where strpos(lower(d.target), m) > 0 or strpos(lower(coalesce(d.last_error, '')), m) > 0))
    update entitlements.deliveries d set target = x.target, last_error = x.last_error
      from x where x.id = d.id and (d.target, d.last_error) is distinct from (x.target, x.last_error);
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('deliveries', v_n);
    with x as (select t.id, entitlements._erase_text(t.error, v_patterns) as error
                 from entitlements.delivery_attempts t
                where t.error is not null
                  and (t.delivery_id in (select d.id from entitlements.deliveries d
                                           join entitlements.outbox o on o.id = d.event_id where o.customer_id = customer)
                       or exists (select 1 from unnest(v_emails) m where strpos(lower(t.error), m) > 0)))
    update entitlements.delivery_attempts t set error = x.error
      from x where x.id = t.id and t.error is distinct from x.error;
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('delivery_attempts', v_n);

    -- The audit log last, with the rows the writes above just added: rows about them (their
    -- profile's personal columns null), rows they wrote, and any row anywhere (app tables
    -- too) naming their address.
    with x as (select a.id,
                      entitlements._erase_json(a.old_values, v_patterns, y.keys) as old_values,
                      entitlements._erase_json(a.new_values, v_patterns, y.keys) as new_values,
                      entitlements._erase_text(a.reason, v_patterns) as reason,
                      entitlements._erase_text(a.row_key, v_patterns) as row_key
                 from entitlements.audit_log a
                cross join lateral (
                    select case when a.table_name = 'entitlements.customers'
                                     and (a.row_key = v_key or a.old_values ->> 'id' = v_key or a.new_values ->> 'id' = v_key)
                                then array['email', 'display_name', 'locale', 'metadata'] else '{}'::text[] end as keys) y
                where a.row_key = v_key or a.actor = customer
                   or exists (select 1 from unnest(array['id', 'customer_id', 'user_id', 'organization_id']) k
                               where a.old_values ->> k = v_key or a.new_values ->> k = v_key)
                   or exists (select 1 from unnest(v_json_emails) m
                               where strpos(lower(a.old_values::text), m) > 0 or strpos(lower(a.new_values::text), m) > 0
                                  or strpos(lower(coalesce(a.reason, '')), m) > 0 or strpos(lower(coalesce(a.row_key, '')), m) > 0))
    update entitlements.audit_log a
       set old_values = x.old_values, new_values = x.new_values, reason = x.reason, row_key = x.row_key
      from x where x.id = a.id
       and (a.old_values, a.new_values, a.reason, a.row_key) is distinct from (x.old_values, x.new_values, x.reason, x.row_key);
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('audit_log', v_n);

    perform set_config('entitlements.audit_erasure', '', true);
    perform set_config('entitlements.reason', coalesce(v_prev_reason, ''), true);
    -- The one row that says it happened: who, when, why, what changed; nothing personal.
    insert into entitlements.audit_log (actor, actor_role, action, table_name, row_key, new_values, reason)
    values (entitlements.current_user_id(), entitlements._actor_role(), 'erase', 'entitlements.customers', v_key,
            jsonb_build_object('erased_at', v_now, 'changed', v_counts), reason);
    return jsonb_build_object('customer', customer, 'already_erased', false, 'erased_at', v_now, 'changed', v_counts);
end
$$;
comment on function entitlements.erase_customer(uuid, text) is
    'GDPR erasure: pseudonymise a customer (email, name, locale, metadata and every copy of them), keeping the '
    'financial record. Irreversible; idempotent; one audit row. Admins of the customer.';

-- What reads an address later brings none back --------------------------------------------------------
-- (_customer_email, the fan-out and delivery_claim read customers and auth_emails, emptied above;
-- set_profile and direct writes meet customers_erased. These three needed changing:)

