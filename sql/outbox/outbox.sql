-- The outbox: facts worth telling someone about (a subscription started, a server became
-- ready), written in the transaction of the change that caused them, once per dedup key.
-- Delivery (app webhooks, email) is outbox/delivery.sql's and the worker's.

create table entitlements.outbox (
    id          bigint generated always as identity primary key,
    kind        text not null check (kind ~ '^[a-z_]+(\.[a-z_]+)+$'),
    -- Not a reference: a default plan meters ids that have no customers row (quota.threshold).
    customer_id uuid,
    -- The same fact is one event: 'server.ready:<server>:<generation>'.
    dedup_key   text not null unique check (length(dedup_key) between 1 and 500),
    payload     jsonb not null default '{}' check (jsonb_typeof(payload) = 'object'
                                                   and entitlements._valid_json(payload, 'outbox.payload')),
    created_at  timestamptz not null default entitlements.now()
);
create index outbox_customer on entitlements.outbox (customer_id, created_at);
comment on table entitlements.outbox is
    'Events to deliver (server.ready, server.failed, ...), once per dedup_key. A customer reads its own.';
select pg_catalog.pg_extension_config_dump('entitlements.outbox', '');
select pg_catalog.pg_extension_config_dump('entitlements.outbox_id_seq', '');
alter table entitlements.outbox enable row level security;
create policy outbox_read on entitlements.outbox for select
    using (entitlements.can_see_customer(customer_id) or entitlements.is_admin());
-- Written only by the extension's functions as a global admin (the worker's role): the
-- dedup key is global, so a tenant admin could otherwise pre-empt another tenant's event.
create policy outbox_admin on entitlements.outbox for insert
    with check (entitlements.is_admin());

-- Record an event once; true when it is new.
create function entitlements._outbox_record(kind text, customer uuid, dedup_key text, payload jsonb)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    insert into entitlements.outbox (kind, customer_id, dedup_key, payload)
    values (kind, customer, dedup_key, coalesce(payload, '{}'))
    on conflict on constraint outbox_dedup_key_key do nothing;
    return found;
end
$$;
