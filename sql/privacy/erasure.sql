-- GDPR erasure (issue #13): irreversible pseudonymisation of one customer. Their email,
-- name, locale and metadata go, from their row and from the copies the engine made in rows
-- about them (audit values, events, deliveries, usage metadata, Stripe payloads); ids,
-- amounts, plans, prices, dates, subscriptions, their history and discounts stay, so the
-- revenue of every past instant reads the same. Needs privacy/export.sql (_privacy_known,
-- _privacy_json_emails, _privacy_stripe_about, _privacy_audit_about).
--
-- Rows are chosen by the customer's exact identifiers only, as export_customer chooses them:
-- their uuid as a row's key, id, customer_id, user_id or organization_id (any top-level value
-- of an app table's audit row), rows they wrote (audit actor, usage actor), their outbox events
-- with those events' deliveries and attempts, Stripe events by their Stripe customer id or
-- uuid. Never by an address or a name: a customer sets those themself (set_profile) and may
-- have set someone else's, or "usd". Inside the chosen rows, personal keys are nulled, a JSON
-- string is replaced only when it is WHOLE one of their addresses or names (keys, ids, dates,
-- currencies and statuses stay), and free text (reasons, delivery errors, their own
-- idempotency keys) loses their addresses and names of 3+ letters/digits as whole words.
--
-- What may remain: rows about OTHER people that merely mention one of their addresses or
-- names: another Stripe customer's invoice sent to their address, an app row about someone
-- else that cc'd them (and its audit rows), an organization's idempotency keys or usage
-- metadata naming them (unless they recorded it), free text inside app rows about them that
-- contains their name among other words. Those are the other party's records: erasing by
-- string match there is what let a customer who claimed another's address or a short name
-- rewrite and cancel other people's data.

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

-- May the caller give `customer` a customers row in `tenant`? A global admin may. A tenant
-- admin may only for an id the engine holds nothing about: a row in their tenant would make
-- them an admin of that person (export_customer, erase_customer), whose usage, events,
-- memberships and Supabase address were never theirs. Definer: tenant admins cannot read
-- those tables; it answers one boolean, and to anyone but an admin of `tenant` always false
-- (their insert is refused by the customers policy anyway), so it tells nobody else anything.
create function entitlements._customer_id_claimable(customer uuid, tenant uuid)
returns boolean language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
    select entitlements._role_is_privileged(entitlements._outer_role())
        or entitlements._is_listed_admin(null)
        or (entitlements._is_listed_admin(tenant) and not entitlements._privacy_known(customer))
$$;

-- An erased customer stays erased: only erase_customer sets erased_at, and the profile
-- columns stay empty whoever writes the row later (set_profile, an admin's UPDATE). And a
-- customers row with a tenant (new, or moved to another id) is for an id the caller may
-- claim (_customer_id_claimable).
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
    if new.tenant_id is not null and (tg_op = 'INSERT' or new.id is distinct from old.id) then
        perform entitlements._require(entitlements._customer_id_claimable(new.id, new.tenant_id),
            'creating a customer in a tenant', 'a global admin when the engine already holds data about that id');
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

-- Keys whose string values are identifiers, dates, amounts' currencies or states: never
-- taken for a name, whatever the customer called themself.
create function entitlements._erase_kept_key(key text)
returns boolean language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select key ~ '^(id|object|type|currency|status|kind|plan|feature|action|role|interval|created|period|change|valid_from|valid_to|trial_end)$'
        or key ~ '_(id|ids|at|start|end|key|kind|status|interval)$'
$$;

-- `v` with the values of `keys`, at any depth, null (empty ones stay), and every other
-- string that is as a whole (trimmed, any case) one of `needles` (lower case) [erased].
-- Keys are never rewritten, nor strings under _erase_kept_key.
-- Past 64 levels (app tables' values have no depth limit) a subtree that holds a needle
-- anywhere is erased whole, so no value can make the erasure run out of stack.
create function entitlements._erase_json(v jsonb, needles text[], keys text[], depth integer default 0)
returns jsonb language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
    if depth >= 64 then
        return case when exists (select 1 from unnest(needles) n where strpos(lower(v::text), n) > 0)
                    then '"[erased]"'::jsonb else v end;
    end if;
    return case jsonb_typeof(v)
        when 'object' then coalesce((
            select jsonb_object_agg(e.key,
                                    case when e.key = any (keys)
                                         then case when e.value in ('{}'::jsonb, '[]'::jsonb, '""'::jsonb) then e.value
                                                   else 'null'::jsonb end
                                         when jsonb_typeof(e.value) = 'string' and entitlements._erase_kept_key(e.key)
                                         then e.value
                                         else entitlements._erase_json(e.value, needles, keys, depth + 1) end)
              from jsonb_each(v) e), '{}'::jsonb)
        when 'array' then coalesce((
            select jsonb_agg(entitlements._erase_json(e.value, needles, keys, depth + 1) order by e.n)
              from jsonb_array_elements(v) with ordinality e(value, n)), '[]'::jsonb)
        when 'string' then case when lower(btrim(v #>> '{}')) = any (needles) then '"[erased]"'::jsonb else v end
        else v end;
end
$$;

-- `v` (an audit row's values) with the top-level string `columns` (free text: a grant's
-- reason, a server's last error) through _erase_text.
create function entitlements._erase_columns(v jsonb, columns text[], patterns text[])
returns jsonb language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select case when jsonb_typeof(v) = 'object'
                then coalesce((select jsonb_object_agg(e.key,
                                          case when e.key = any (columns) and jsonb_typeof(e.value) = 'string'
                                               then to_jsonb(entitlements._erase_text(e.value #>> '{}', patterns))
                                               else e.value end)
                                 from jsonb_each(v) e), '{}'::jsonb)
                else v end
$$;

-- Where Stripe objects keep a person's details (customers, Checkout Sessions, invoices,
-- charges, payment methods): nulled in the events about an erased customer.
create function entitlements._erase_stripe_keys()
returns text[] language sql immutable parallel safe
return array['email', 'name', 'phone', 'address', 'shipping', 'description', 'billing_details', 'customer_details',
             'customer_email', 'customer_name', 'customer_phone', 'customer_address', 'customer_shipping',
             'customer_tax_ids', 'tax_ids', 'receipt_email'];

-- Where a profile keeps a person's details: nulled in their outbox events and in the audited
-- values of rows about them (app tables' too; the customers row adds locale and metadata).
create function entitlements._erase_profile_keys()
returns text[] language sql immutable parallel safe
return array['email', 'display_name', 'name', 'full_name', 'first_name', 'last_name', 'phone', 'address',
             'customer_email', 'customer_name'];

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
    v_emails text[];   -- lower case, trimmed
    v_names text[];    -- lower case, trimmed
    v_needles text[];  -- whole JSON strings to erase: v_emails and v_names
    v_patterns text[]; -- free text: the addresses, and the names of 3+ letters/digits, as words
    v_prev_reason text := current_setting('entitlements.reason', true);
    v_counts jsonb := '{}'::jsonb;
    v_n bigint;
begin
    if customer is null then
        raise exception 'customer must not be NULL' using errcode = '22004';
    end if;
    -- Global admins only: erasure reaches beyond any tenant (app tables' audit rows,
    -- Stripe events), and a tenant admin controls its customers' names and addresses.
    perform entitlements._require_caller_admin('erase_customer');
    if not entitlements._privacy_known(customer) then
        raise exception 'customer % is not known', customer using errcode = '22023';
    end if;
    if reason is null or btrim(reason) = '' then
        raise exception 'a reason is required' using errcode = '22023';
    end if;
    if length(reason) > 1000 then
        raise exception 'the reason is at most 1000 characters' using errcode = '22023';
    end if;
    -- One erasure of a customer at a time (it may have no customers row yet).
    perform pg_advisory_xact_lock('entitlements.customers'::regclass::oid::integer, hashtext('erase:' || v_key));
    select * into v_customer from entitlements.customers c where c.id = customer for update;
    if v_customer.erased_at is not null then
        return jsonb_build_object('customer', customer, 'already_erased', true, 'erased_at', v_customer.erased_at,
                                  'changed', '{}'::jsonb);
    end if;

    -- Their addresses and names: the current ones, the Supabase address, and those their own
    -- customers audit rows hold. The reason (kept in the erase audit row) names none of them,
    -- nor any word of 3+ letters/digits of a name.
    v_emails := entitlements._privacy_json_emails(customer);
    select coalesce(array_agg(distinct lower(btrim(x.n))), '{}') into v_names
      from (select v_customer.display_name
            union all select v.x ->> 'display_name' from entitlements.audit_log a
                       cross join lateral (values (a.old_values), (a.new_values)) v(x)
                      where a.table_name = 'entitlements.customers' and a.row_key = v_key) x(n)
     where btrim(x.n) <> '' and x.n <> '[erased]';
    if exists (select 1 from unnest(v_emails) e where strpos(e, '@') > 0 and reason ~* entitlements._erase_pattern(e))
       or exists (select 1 from unnest(v_names) n cross join lateral regexp_split_to_table(n, '[^[:alnum:]]+') w
                   where length(w) >= 3 and reason ~* entitlements._erase_pattern(w)) then
        raise exception 'the reason must not contain the customer''s email address or any word of their name'
            using errcode = '22023';
    end if;
    -- To erase, also the addresses their own emails went to.
    select coalesce(array_agg(distinct x.e), '{}') into v_emails
      from (select e from unnest(v_emails) e
            union all
            select lower(btrim(d.target)) from entitlements.deliveries d join entitlements.outbox o on o.id = d.event_id
             where o.customer_id = customer and d.channel = 'email') x(e)
     where x.e <> '' and x.e <> '[erased]';
    v_needles := v_emails || v_names;
    select coalesce(array_agg(entitlements._erase_pattern(x.n)), '{}') into v_patterns
      from (select e from unnest(v_emails) e where strpos(e, '@') > 0
            union
            select n from unnest(v_names) n where length(regexp_replace(n, '[^[:alnum:]]', '', 'g')) >= 3) x(n);

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

    -- Their grants' reasons and values, their subscriptions' metadata; amounts, plans and dates stay.
    with x as (select g.id, coalesce(nullif(btrim(entitlements._erase_text(g.reason, v_patterns)), ''), '[erased]') as reason,
                      entitlements._erase_json(g.value, v_needles, '{}') as value
                 from entitlements.grants g where g.customer_id = customer)
    update entitlements.grants g set reason = x.reason, value = x.value
      from x where x.id = g.id and (g.reason, g.value) is distinct from (x.reason, x.value);
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('grants', v_n);
    with x as (select s.id, entitlements._erase_json(s.metadata, v_needles, '{}') as metadata
                 from entitlements.subscriptions s where s.customer_id = customer)
    update entitlements.subscriptions s set metadata = x.metadata
      from x where x.id = s.id and s.metadata is distinct from x.metadata;
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('subscriptions', v_n);

    -- Usage: their ledger rows lose their metadata; rows they recorded for others (an
    -- organization's) lose what names them as a whole value: the metadata of their own act
    -- (found by actor: one scan of the ledger, for a rare call). Amounts and costs stay.
    -- (Audit rows they merely wrote are left whole, below: those hold the others' rows.)
    with x as (select l.id, l.at,
                      case when l.customer_id = customer then null
                           else entitlements._erase_json(l.metadata, v_needles, '{}') end as metadata
                 from entitlements.usage_ledger l
                where (l.customer_id = customer or l.actor = customer) and l.metadata is not null)
    update entitlements.usage_ledger l set metadata = x.metadata
      from x where x.id = l.id and x.at = l.at and l.metadata is distinct from x.metadata;
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('usage_ledger', v_n);
    -- Their own idempotency keys that name them are replaced (key table and ledger alike);
    -- nobody else's, not even their organizations'. A retry that still carries an old key
    -- would count once more: acceptable, as the key held their personal data and the app
    -- has nothing left to retry for an erased person (its key names an address now gone).
    with k as (select y.idempotency_key, 'erased:' || gen_random_uuid()::text as replacement
                 from (select i.idempotency_key from entitlements.usage_idempotency i where i.customer_id = customer
                       union
                       select l.idempotency_key from entitlements.usage_ledger l
                        where l.customer_id = customer and l.idempotency_key is not null) y
                where entitlements._erase_text(y.idempotency_key, v_patterns) <> y.idempotency_key),
         i as (update entitlements.usage_idempotency i set idempotency_key = k.replacement
                 from k where i.customer_id = customer and i.idempotency_key = k.idempotency_key returning 1),
         l as (update entitlements.usage_ledger l set idempotency_key = k.replacement
                 from k where l.customer_id = customer and l.idempotency_key = k.idempotency_key returning 1)
    select (select count(*) from i) + (select count(*) from l) into v_n;
    v_counts := v_counts || jsonb_build_object('idempotency_keys', v_n);

    -- Stripe events about them lose the person's details.
    with x as (select e.id,
                      entitlements._erase_json(e.payload, v_needles, entitlements._erase_stripe_keys()) as payload,
                      entitlements._erase_text(e.last_error, v_patterns) as last_error
                 from entitlements.stripe_events e
                where entitlements._privacy_stripe_about(e.payload, v_customer.stripe_customer_id, customer))
    update entitlements.stripe_events e set payload = x.payload, last_error = x.last_error
      from x where x.id = e.id and (e.payload, e.last_error) is distinct from (x.payload, x.last_error);
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('stripe_events', v_n);

    -- Their notifications: the events' payloads; what still waits is never sent; the emails'
    -- addresses go, and errors lose what names them (within the columns' 2000 characters).
    with x as (select o.id, entitlements._erase_json(o.payload, v_needles, entitlements._erase_profile_keys()) as payload
                 from entitlements.outbox o where o.customer_id = customer)
    update entitlements.outbox o set payload = x.payload
      from x where x.id = o.id and o.payload is distinct from x.payload;
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('outbox', v_n);
    update entitlements.deliveries d set status = 'canceled', last_error = 'customer erased'
     where d.status = 'pending'
       and d.event_id in (select o.id from entitlements.outbox o where o.customer_id = customer);
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('deliveries_canceled', v_n);
    with x as (select d.id,
                      case when d.channel = 'email' then '[erased]' else d.target end as target,
                      left(entitlements._erase_text(d.last_error, v_patterns), 2000) as last_error
                 from entitlements.deliveries d
                where d.event_id in (select o.id from entitlements.outbox o where o.customer_id = customer))
    update entitlements.deliveries d set target = x.target, last_error = x.last_error
      from x where x.id = d.id and (d.target, d.last_error) is distinct from (x.target, x.last_error);
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('deliveries', v_n);
    with x as (select t.id, left(entitlements._erase_text(t.error, v_patterns), 2000) as error
                 from entitlements.delivery_attempts t
                where t.error is not null
                  and t.delivery_id in (select d.id from entitlements.deliveries d
                                          join entitlements.outbox o on o.id = d.event_id where o.customer_id = customer))
    update entitlements.delivery_attempts t set error = x.error
      from x where x.id = t.id and t.error is distinct from x.error;
    get diagnostics v_n = row_count;
    v_counts := v_counts || jsonb_build_object('delivery_attempts', v_n);

    -- The audit log last, with the rows the writes above just added: rows about them (their
    -- profile's personal columns, an app row's personal keys null) and rows they wrote.
    with y as (select a.id, a.row_key, a.old_values, a.new_values, a.reason,
                      case when not entitlements._privacy_audit_about(a.table_name, a.row_key, a.old_values, a.new_values,
                                                                      customer) then '{}'::text[]
                           when a.table_name = 'entitlements.customers'
                           then entitlements._erase_profile_keys() || array['locale', 'metadata']
                           when a.table_name like 'entitlements.%' then '{}'::text[]
                           else entitlements._erase_profile_keys() end as keys,
                      case when a.table_name like 'entitlements.%' then array['reason', 'last_error']
                           else '{}'::text[] end as text_columns
                 from entitlements.audit_log a
                -- Not rows they merely wrote: those hold other people's data, which a name or
                -- address the person chose must not get erased from.
                where entitlements._privacy_audit_about(a.table_name, a.row_key, a.old_values, a.new_values, customer)),
         x as (select y.id,
                      entitlements._erase_columns(entitlements._erase_json(y.old_values, v_needles, y.keys),
                                                  y.text_columns, v_patterns) as old_values,
                      entitlements._erase_columns(entitlements._erase_json(y.new_values, v_needles, y.keys),
                                                  y.text_columns, v_patterns) as new_values,
                      entitlements._erase_text(y.reason, v_patterns) as reason,
                      case when lower(btrim(y.row_key)) = any (v_needles) then '[erased]' else y.row_key end as row_key
                 from y)
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
    'GDPR erasure: pseudonymise a customer (email, name, locale, metadata and their copies in rows about them), keeping '
    'the financial record. Irreversible; idempotent; one audit row. Admins of the customer.';

-- What reads an address later brings none back: _customer_email, the fan-out and
-- delivery_claim read customers and auth_emails, emptied above; set_profile and direct writes
-- meet customers_erased; sync_auth_email (subscriptions/profile.sql), retry_delivery
-- (outbox/delivery.sql) and stripe_record_event (stripe/events.sql) look at erased_at.
