-- Delivering the outbox: every event fans out, in the transaction that wrote it, into one
-- delivery per destination (each enabled webhook endpoint that wants its kind; the
-- customer's email when a template for the kind exists). The worker claims deliveries with
-- a lease, sends them (Standard Webhooks signatures, SMTP) and records each attempt; failures
-- back off in the database and end as dead letters an admin can retry.

-- Webhook endpoints of apps. Global admins only: the signing secrets are here.
create table entitlements.webhook_endpoints (
    id          uuid primary key default gen_random_uuid(),
    url         text not null check (url ~ '^https?://[^\s/?#]+' and length(url) <= 2000),
    -- Event kinds it receives; '*' for every kind.
    event_kinds text[] not null check (cardinality(event_kinds) between 1 and 100
                                       and array_position(event_kinds, null) is null),
    -- Standard Webhooks: 'whsec_' and the base64 of 24 to 64 random bytes.
    secret      text not null check (secret ~ '^whsec_[A-Za-z0-9+/]{32,88}={0,2}$'),
    enabled     boolean not null default true,
    created_at  timestamptz not null default entitlements.now(),
    updated_at  timestamptz not null default entitlements.now()
);
comment on table entitlements.webhook_endpoints is
    'App webhook endpoints (add_webhook_endpoint); payloads signed the Standard Webhooks way. Global admins only.';
select pg_catalog.pg_extension_config_dump('entitlements.webhook_endpoints', '');
alter table entitlements.webhook_endpoints enable row level security;
create policy webhook_endpoints_admin on entitlements.webhook_endpoints for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());
select entitlements.enable_audit('entitlements.webhook_endpoints');

-- Email templates per kind and locale: subject, text and HTML bodies with {{placeholders}}
-- (the event's payload keys, customer_name, customer_email, kind). Admins edit them.
create table entitlements.email_templates (
    kind       text not null check (kind ~ '^[a-z_]+(\.[a-z_]+)+$'),
    locale     text not null default 'en' check (locale ~ '^[a-z]{2}(-[A-Z]{2})?$'),
    subject    text not null check (length(subject) between 1 and 500),
    body_text  text not null check (length(body_text) between 1 and 100000),
    body_html  text check (length(body_html) <= 200000),
    updated_at timestamptz not null default entitlements.now(),
    primary key (kind, locale)
);
comment on table entitlements.email_templates is
    'Email per event kind and locale; {{key}} is replaced by the event''s payload value (HTML-escaped in body_html).';
select pg_catalog.pg_extension_config_dump('entitlements.email_templates', '');
alter table entitlements.email_templates enable row level security;
create policy email_templates_read on entitlements.email_templates for select using (entitlements.is_admin());
create policy email_templates_admin on entitlements.email_templates for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());
select entitlements.enable_audit('entitlements.email_templates');

create table entitlements.deliveries (
    id              bigint generated always as identity primary key,
    event_id        bigint not null references entitlements.outbox (id) on delete cascade,
    channel         text not null check (channel in ('webhook', 'email')),
    endpoint_id     uuid references entitlements.webhook_endpoints (id),
    -- The URL or email address at the time the event was written.
    target          text not null check (length(target) <= 2000),
    status          text not null default 'pending' check (status in ('pending', 'delivered', 'dead', 'canceled')),
    attempts        integer not null default 0 check (attempts >= 0),
    next_attempt_at timestamptz not null default entitlements.now(),
    last_error      text check (length(last_error) <= 2000),
    delivered_at    timestamptz,
    created_at      timestamptz not null default entitlements.now(),
    check ((channel = 'webhook') = (endpoint_id is not null))
);
create index deliveries_due on entitlements.deliveries (next_attempt_at) where status = 'pending';
create index deliveries_event on entitlements.deliveries (event_id);
create index deliveries_dead on entitlements.deliveries (channel) where status = 'dead';
comment on table entitlements.deliveries is
    'One per event and destination: pending, delivered, dead (retry_delivery) or canceled (its customer was erased). A customer reads its own.';
select pg_catalog.pg_extension_config_dump('entitlements.deliveries', '');
select pg_catalog.pg_extension_config_dump('entitlements.deliveries_id_seq', '');
alter table entitlements.deliveries enable row level security;
-- A customer sees the emails sent to it (not the app's webhook URLs).
create policy deliveries_read on entitlements.deliveries for select
    using (entitlements.is_admin()
           or (channel = 'email' and exists (select 1 from entitlements.outbox o where o.id = event_id)));
create policy deliveries_admin on entitlements.deliveries for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());

create table entitlements.delivery_attempts (
    id          bigint generated always as identity primary key,
    delivery_id bigint not null references entitlements.deliveries (id) on delete cascade,
    at          timestamptz not null default entitlements.now(),
    ok          boolean not null,
    status_code integer check (status_code between 100 and 599),
    latency_ms  integer check (latency_ms >= 0),
    error       text check (length(error) <= 2000),
    worker      text check (length(worker) <= 200)
);
create index delivery_attempts_delivery on entitlements.delivery_attempts (delivery_id);
comment on table entitlements.delivery_attempts is 'Every attempt of every delivery (status, latency, error). Admins only.';
select pg_catalog.pg_extension_config_dump('entitlements.delivery_attempts', '');
select pg_catalog.pg_extension_config_dump('entitlements.delivery_attempts_id_seq', '');
alter table entitlements.delivery_attempts enable row level security;
create policy delivery_attempts_admin on entitlements.delivery_attempts for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());

-- Endpoints ------------------------------------------------------------------------------------

create function entitlements.add_webhook_endpoint(url text, event_kinds text[], secret text default null)
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_id uuid;
begin
    perform entitlements._require_admin('add_webhook_endpoint');
    perform entitlements._require_not_null(url, 'url');
    perform entitlements._require_not_null(event_kinds, 'event_kinds');
    if url !~ '^https?://[^\s/?#]+' or length(url) > 2000 then
        raise exception 'url must be an http(s) URL, got %', left(url, 100) using errcode = '22023';
    end if;
    if cardinality(event_kinds) = 0 or exists (select 1 from unnest(event_kinds) k
                                                where k is null or (k <> '*' and k !~ '^[a-z_]+(\.[a-z_]+)+$')) then
        raise exception 'event_kinds must name kinds such as subscription.created, or *'
            using errcode = '22023';
    end if;
    if secret is not null and secret !~ '^whsec_[A-Za-z0-9+/]{32,88}={0,2}$' then
        raise exception 'secret must be whsec_ followed by the base64 of 24 to 64 bytes' using errcode = '22023';
    end if;
    insert into entitlements.webhook_endpoints (url, event_kinds, secret)
    values (url, event_kinds,
            coalesce(secret, 'whsec_' || encode(sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text,
                                                                  'UTF8')), 'base64')))
    returning id into v_id;
    return v_id;
end
$$;
comment on function entitlements.add_webhook_endpoint(text, text[], text) is
    'Register an app webhook endpoint for these event kinds (* = all); the secret is generated when not given '
    '(read it from webhook_endpoints). Global admins only.';

create function entitlements.remove_webhook_endpoint(endpoint uuid)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_admin('remove_webhook_endpoint');
    -- Kept (disabled) for the deliveries that name it; what it still had to receive is dead.
    update entitlements.webhook_endpoints e set enabled = false, updated_at = entitlements.now()
     where e.id = endpoint and e.enabled;
    if not found then
        return false;
    end if;
    update entitlements.deliveries d set status = 'dead', last_error = 'the endpoint was removed'
     where d.endpoint_id = endpoint and d.status = 'pending';
    return true;
end
$$;
comment on function entitlements.remove_webhook_endpoint(uuid) is
    'Stop sending to an endpoint: its pending deliveries end dead, its past ones stay. Global admins only.';

-- The templates shipped with the extension (English), used where no row of email_templates
-- has the kind in that locale.
create function entitlements.default_email_templates()
returns setof entitlements.email_templates language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select t.kind, 'en', t.subject, t.body_text, t.body_html, '2026-12-01 00:00:00+00'::timestamptz
      from (values
        ('subscription.created', 'Welcome to {{plan}}',
         E'Hello {{customer_name}},\n\nyour {{plan}} subscription is active. Welcome!',
         '<p>Hello {{customer_name}},</p><p>your {{plan}} subscription is active. Welcome!</p>'),
        ('subscription.canceled', 'Your {{plan}} subscription is canceled',
         E'Hello {{customer_name}},\n\nyour {{plan}} subscription is canceled.',
         '<p>Hello {{customer_name}},</p><p>your {{plan}} subscription is canceled.</p>'),
        ('payment.failed', 'Your payment for {{plan}} failed',
         E'Hello {{customer_name}},\n\nwe could not take the payment for {{plan}}. Please update your payment method.',
         '<p>Hello {{customer_name}},</p><p>we could not take the payment for {{plan}}. Please update your payment method.</p>'),
        ('server.ready', 'Your server {{name}} is ready',
         E'Hello {{customer_name}},\n\nyour Matrix server {{name}} is ready.',
         '<p>Hello {{customer_name}},</p><p>your Matrix server {{name}} is ready.</p>'),
        ('server.suspended', 'Your server {{name}} is suspended',
         E'Hello {{customer_name}},\n\nyour Matrix server {{name}} is suspended until access is restored. Its data is kept.',
         '<p>Hello {{customer_name}},</p><p>your Matrix server {{name}} is suspended until access is restored. Its data is kept.</p>'),
        ('server.failed', 'We could not set up your server {{name}}',
         E'Hello {{customer_name}},\n\nsetting up your Matrix server {{name}} failed. We are on it.',
         '<p>Hello {{customer_name}},</p><p>setting up your Matrix server {{name}} failed. We are on it.</p>'),
        ('trial.ending', 'Your {{plan}} trial ends soon',
         E'Hello {{customer_name}},\n\nyour {{plan}} trial ends on {{trial_end}}. Subscribe to keep your features.',
         '<p>Hello {{customer_name}},</p><p>your {{plan}} trial ends on {{trial_end}}. Subscribe to keep your features.</p>'),
        ('access.suspended', 'Your {{plan}} access is paused',
         E'Hello {{customer_name}},\n\nyour {{plan}} features are no longer available ({{reason}}). Renew to get them back.',
         '<p>Hello {{customer_name}},</p><p>your {{plan}} features are no longer available ({{reason}}). Renew to get them back.</p>'),
        ('access.restored', 'Your {{plan}} access is back',
         E'Hello {{customer_name}},\n\nyour {{plan}} features are available again.',
         '<p>Hello {{customer_name}},</p><p>your {{plan}} features are available again.</p>'),
        ('security.alert', '[{{severity}}] Security alert: {{rule}}',
         E'Hello {{customer_name}},\n\nthe security rule {{rule}} found {{subject}} ({{events}} events from {{first_seen}} to {{last_seen}}; seen {{count}} times). Alert {{alert_id}}: {{details}}',
         '<p>Hello {{customer_name}},</p><p>the security rule <b>{{rule}}</b> found {{subject}} ({{events}} events from {{first_seen}} to {{last_seen}}; seen {{count}} times).</p><p>Alert {{alert_id}}: {{details}}</p>'),
        ('quota.threshold', 'You have used {{threshold}}% of your {{feature}}',
         E'Hello {{customer_name}},\n\nyou have used {{used}} of {{limit}} {{feature}} this {{period}}. The count resets at {{resets_at}}.',
         '<p>Hello {{customer_name}},</p><p>you have used {{used}} of {{limit}} {{feature}} this {{period}}. The count resets at {{resets_at}}.</p>')
      ) as t(kind, subject, body_text, body_html)
$$;
comment on function entitlements.default_email_templates() is
    'The email templates shipped with the extension; a row of email_templates for the kind replaces them.';

-- The template for a kind in a locale: that locale's, else English (an admin's row, else the
-- shipped one), else any.
create function entitlements._email_template(kind text, locale text)
returns entitlements.email_templates language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select t.* from (select * from entitlements.email_templates x where x.kind = _email_template.kind
                     union all
                     select * from entitlements.default_email_templates() d
                      where d.kind = _email_template.kind
                        and not exists (select 1 from entitlements.email_templates x
                                         where x.kind = d.kind and x.locale = d.locale)) t
     order by t.locale = coalesce(_email_template.locale, 'en') desc, t.locale = 'en' desc, t.locale
     limit 1
$$;

-- Fan-out ---------------------------------------------------------------------------------------

-- {{key}} in `template` replaced by the value of `key` in `vars` (text as is, other JSON as
-- JSON text); HTML-escaped when `html`. Unknown keys become empty.
create function entitlements._render_template(template text, vars jsonb, html boolean)
returns text language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
    -- One pass: the text between placeholders, and the placeholders in order, so a value that
    -- itself contains {{...}} is never expanded.
    v_pattern constant text := '\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}';
    v_parts text[] := regexp_split_to_array(template, v_pattern);
    v_keys text[] := array(select m[1] from regexp_matches(template, v_pattern, 'g') m);
    v_out text := v_parts[1];
    v_value text;
begin
    for i in 1 .. coalesce(cardinality(v_keys), 0) loop
        v_value := coalesce(case jsonb_typeof(vars -> v_keys[i]) when 'string' then vars ->> v_keys[i]
                                                                else (vars -> v_keys[i])::text end, '');
        if html then
            v_value := replace(replace(replace(replace(replace(v_value, '&', '&amp;'), '<', '&lt;'), '>', '&gt;'),
                                       '"', '&quot;'), '''', '&#39;');
        end if;
        v_out := v_out || v_value || v_parts[i + 1];
    end loop;
    return v_out;
end
$$;

-- Definer: an event written by any permitted path fans out to endpoints and emails the
-- writer may not read (secrets, other rows); it reads only the new outbox row.
create function entitlements._outbox_fan_out()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._outbox_fan_out');
    if entitlements._bulk_loading() then
        return null; -- pg_restore: the deliveries are restored as they were
    end if;
    insert into entitlements.deliveries (event_id, channel, endpoint_id, target)
    select new.id, 'webhook', e.id, e.url
      from entitlements.webhook_endpoints e
     where e.enabled and (new.kind = any (e.event_kinds) or '*' = any (e.event_kinds));
    insert into entitlements.deliveries (event_id, channel, target)
    select new.id, 'email', x.email
      from (select entitlements._customer_email(new.customer_id) as email) x
     where x.email is not null and length(x.email) <= 2000
       and (entitlements._email_template(new.kind, (select c.locale from entitlements.customers c
                                                      where c.id = new.customer_id))).kind is not null;
    -- Security alerts (monitoring/alerts.sql) go to the admins who may see them: global ones,
    -- and those of the alert's tenant, at their profile's email.
    -- Only at a profile no one else may edit: a global admin's own row has no tenant (a
    -- tenant's admins edit that tenant's customers), a tenant admin's is in its tenant.
    insert into entitlements.deliveries (event_id, channel, target)
    select distinct new.id, 'email', c.email
      from entitlements.admins a
      join entitlements.customers c on c.id = a.user_id and c.tenant_id is not distinct from a.tenant_id
     where new.kind like 'security.%' and c.email like '%@%' and length(c.email) <= 320
       and (a.tenant_id is null or a.tenant_id::text = new.payload ->> 'tenant_id');
    -- Apps may LISTEN for events (no customer id: anyone may LISTEN; the row is behind RLS).
    perform pg_notify('entitlements_events', jsonb_build_object('id', new.id, 'kind', new.kind)::text);
    perform pg_notify('entitlements_outbox', '');
    return null;
end
$$;
create trigger outbox_fan_out after insert on entitlements.outbox
    for each row execute function entitlements._outbox_fan_out();

-- The worker ------------------------------------------------------------------------------------

create type entitlements.delivery_work as (
    delivery_id   bigint,
    event_id      bigint,
    kind          text,
    customer_id   uuid,
    channel       text,
    target        text,
    message_id    text,
    body          jsonb,
    secret        text,
    email_to_name text,
    subject       text,
    body_text     text,
    body_html     text,
    attempts      integer
);

create function entitlements._delivery_lease_name(delivery bigint)
returns text language sql immutable parallel safe strict
return 'delivery:' || delivery::text;

-- Claim due deliveries of these channels with a lease, each with what to send.
create function entitlements.delivery_claim(holder text, lease interval, max_deliveries integer,
                                            channels text[] default array['webhook', 'email'])
returns setof entitlements.delivery_work language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    d entitlements.deliveries;
    o entitlements.outbox;
    v_vars jsonb;
    v_template entitlements.email_templates;
    v_work entitlements.delivery_work;
    v_name text;
begin
    perform entitlements._require_admin('delivery_claim');
    perform entitlements._require_not_null(holder, 'holder');
    if lease is null or lease < interval '1 second' or lease > interval '1 hour' then
        raise exception 'lease must be from 1 second to 1 hour, got %', coalesce(lease::text, 'NULL')
            using errcode = '22023';
    end if;
    if max_deliveries is null or max_deliveries not between 1 and 10000 then
        raise exception 'max_deliveries must be from 1 to 10000, got %', coalesce(max_deliveries::text, 'NULL')
            using errcode = '22023';
    end if;
    for d in
        select x.* from entitlements.deliveries x
         where x.status = 'pending' and x.next_attempt_at <= entitlements.now() and x.channel = any (channels)
           and not exists (select 1 from entitlements.leases l
                            where l.name = entitlements._delivery_lease_name(x.id) and l.until >= clock_timestamp())
         order by x.next_attempt_at, x.id
         limit max_deliveries
           for update of x skip locked
    loop
        continue when not entitlements._take_free_lease(entitlements._delivery_lease_name(d.id), holder, lease);
        select * into o from entitlements.outbox where id = d.event_id;
        v_work := null;
        v_work.delivery_id := d.id;
        v_work.event_id := o.id;
        v_work.kind := o.kind;
        v_work.customer_id := o.customer_id;
        v_work.channel := d.channel;
        v_work.target := d.target;
        -- The same for every attempt: a receiver deduplicates on it.
        v_work.message_id := format('msg_%s_%s', o.id, d.id);
        v_work.attempts := d.attempts;
        if d.channel = 'webhook' then
            v_work.body := jsonb_build_object(
                'type', o.kind,
                'timestamp', to_char(o.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                'data', o.payload || jsonb_build_object('customer_id', o.customer_id, 'event_id', o.id));
            select e.secret into v_work.secret from entitlements.webhook_endpoints e where e.id = d.endpoint_id;
        else
            select c.display_name into v_name from entitlements.customers c where c.id = o.customer_id;
            v_template := entitlements._email_template(o.kind,
                              (select c.locale from entitlements.customers c where c.id = o.customer_id));
            v_vars := o.payload || jsonb_build_object('kind', o.kind, 'customer_email', d.target,
                                                      'customer_name', coalesce(v_name, d.target));
            v_work.email_to_name := v_name;
            v_work.subject := entitlements._render_template(v_template.subject, v_vars, false);
            v_work.body_text := entitlements._render_template(v_template.body_text, v_vars, false);
            v_work.body_html := entitlements._render_template(v_template.body_html, v_vars, true);
        end if;
        return next v_work;
    end loop;
end
$$;
comment on function entitlements.delivery_claim(text, interval, integer, text[]) is
    'Lease due deliveries of these channels to holder, each with its message id, body (webhooks: the JSON to '
    'sign and POST) or rendered email. The worker''s; admins only.';

-- Record an attempt and give the lease back; false (nothing recorded) when the lease was lost.
create function entitlements._delivery_attempt(delivery_id bigint, holder text, ok boolean, status_code integer,
                                               latency_ms integer, error text)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_admin('recording a delivery');
    perform entitlements._require_not_null(delivery_id, 'delivery_id');
    perform entitlements._require_not_null(holder, 'holder');
    if status_code not between 100 and 599 or latency_ms < 0 then
        raise exception 'status_code must be an HTTP status and latency_ms not negative' using errcode = '22023';
    end if;
    -- Row, then lease: delivery_claim's order.
    perform 1 from entitlements.deliveries d where d.id = delivery_id for update;
    if not found then
        raise exception 'delivery % does not exist', delivery_id using errcode = 'P0002';
    end if;
    if not entitlements.release_lease(entitlements._delivery_lease_name(delivery_id), holder) then
        return false;
    end if;
    insert into entitlements.delivery_attempts (delivery_id, ok, status_code, latency_ms, error, worker)
    values (delivery_id, ok, status_code, latency_ms, left(error, 2000), left(holder, 200));
    return true;
end
$$;

create function entitlements.delivery_done(delivery_id bigint, holder text, status_code integer default null,
                                           latency_ms integer default null)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    if not entitlements._delivery_attempt(delivery_id, holder, true, status_code, latency_ms, null) then
        return false;
    end if;
    update entitlements.deliveries d
       set status = 'delivered', delivered_at = entitlements.now(), attempts = d.attempts + 1, last_error = null
     where d.id = delivery_id;
    return true;
end
$$;
comment on function entitlements.delivery_done(bigint, text, integer, integer) is
    'The worker records a delivery as sent. False when its lease was lost. Admins only.';

-- A failed attempt: the next waits 2^attempts seconds (at most an hour), +-25%; after
-- settings.delivery_max_attempts the delivery is dead (NULL returned) until retry_delivery.
create function entitlements.delivery_failed(delivery_id bigint, holder text, error text,
                                             status_code integer default null, latency_ms integer default null,
                                             permanent boolean default false)
returns entitlements.failure language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_max integer := (entitlements._settings()).delivery_max_attempts;
    d entitlements.deliveries;
begin
    if not entitlements._delivery_attempt(delivery_id, holder, false, status_code, latency_ms,
                                          coalesce(error, 'unknown error')) then
        return row('lease_lost', null)::entitlements.failure;
    end if;
    update entitlements.deliveries x
       set attempts = x.attempts + 1, last_error = left(coalesce(error, 'unknown error'), 2000),
           next_attempt_at = entitlements.now() + entitlements._backoff(x.attempts),
           status = case when x.attempts + 1 >= v_max or coalesce(permanent, false) then 'dead' else x.status end
     where x.id = delivery_id
    returning * into d;
    return case when d.status = 'dead' then row('final', null)::entitlements.failure
                else row('retry', d.next_attempt_at)::entitlements.failure end;
end
$$;
comment on function entitlements.delivery_failed(bigint, text, text, integer, integer, boolean) is
    'The worker records a failed attempt: retry (backoff with jitter), final (dead: after '
    'settings.delivery_max_attempts, or at once when permanent, e.g. an SMTP 5xx), or lease_lost (not recorded). Admins only.';

-- What waits: deliveries pending (due or backing off) and dead letters, per channel, for the
-- worker's gauges (entitlements_deliveries_pending / _dead) and an admin's glance.
create function entitlements.delivery_stats()
returns jsonb language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_admin('delivery_stats');
    return (
        select jsonb_build_object(
            'pending', jsonb_build_object('webhook', count(*) filter (where d.status = 'pending' and d.channel = 'webhook'),
                                          'email', count(*) filter (where d.status = 'pending' and d.channel = 'email')),
            'dead', jsonb_build_object('webhook', count(*) filter (where d.status = 'dead' and d.channel = 'webhook'),
                                       'email', count(*) filter (where d.status = 'dead' and d.channel = 'email')))
          from entitlements.deliveries d
         where d.status in ('pending', 'dead'));
end
$$;
comment on function entitlements.delivery_stats() is
    'Deliveries pending and dead, per channel. Admins only.';

create function entitlements.retry_delivery(delivery_id bigint)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_admin('retry_delivery');
    perform entitlements._require_not_null(delivery_id, 'delivery_id');
    update entitlements.deliveries d
       set status = 'pending', attempts = 0, next_attempt_at = entitlements.now()
     where d.id = delivery_id and d.status not in ('delivered', 'canceled');
    if not found then
        if not exists (select 1 from entitlements.deliveries d where d.id = delivery_id) then
            raise exception 'delivery % does not exist', delivery_id using errcode = 'P0002';
        end if;
        return false;
    end if;
    perform pg_notify('entitlements_outbox', '');
    return true;
end
$$;
comment on function entitlements.retry_delivery(bigint) is
    'Send a dead (or waiting) delivery again now, attempts counted from zero. Admins only.';
