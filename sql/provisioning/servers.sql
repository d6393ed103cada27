-- Servers: a Matrix homeserver per server of a subscriber, in a Kubernetes namespace of its
-- own. The extension decides what each server should be (running, suspended, terminated)
-- from the entitlement rules, at read time; the worker applies it (provisioning/applier.sql)
-- and writes back where it stands.
--
--   server_records   one row per server ever made: its name is never reused
--   server_secrets   Synapse's secrets, made once with the server, readable by admins only
--   servers          the records with the desired state and its generation (a view)

create function entitlements._valid_domains(domains text[])
returns boolean language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
    v_domain text;
begin
    foreach v_domain in array coalesce(domains, '{}') loop
        if not coalesce(entitlements._valid_domain(v_domain), false) then
            raise exception 'invalid domain "%": expected a lower-case DNS name such as chat.example.com', v_domain
                using errcode = '22023';
        end if;
    end loop;
    if cardinality(domains) <> (select count(distinct d) from unnest(domains) d) then
        raise exception 'a domain is given twice in %', domains using errcode = '22023';
    end if;
    return true;
end
$$;

create table entitlements.server_records (
    id                  uuid primary key default gen_random_uuid(),
    customer_id         uuid not null references entitlements.customers (id),
    -- A DNS label short enough that 'mx-' || name is one too; unique for ever.
    name                text not null unique check (name ~ '^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$'),
    namespace           text not null unique generated always as ('mx-' || name) stored,
    -- The first is the Matrix server_name.
    domains             text[] not null check (cardinality(domains) between 1 and 100
                            and array_position(domains, null) is null
                            and entitlements._valid_domains(domains)),
    phase               text not null default 'pending'
                            check (phase in ('pending', 'provisioning', 'ready', 'suspended', 'terminating',
                                             'terminated', 'failed')),
    conditions          jsonb not null default '[]'
                            check (jsonb_typeof(conditions) = 'array'
                                   and entitlements._valid_json(conditions, 'server_records.conditions')),
    -- The generation (see _server_state) the worker last converged.
    observed_generation bigint,
    -- The resources the cluster has now: what a suspended server keeps, what a plan change
    -- is ordered against.
    applied_resources   jsonb check (jsonb_typeof(applied_resources) = 'object'
                                     and entitlements._valid_json(applied_resources, 'server_records.applied_resources')),
    attempts            integer not null default 0 check (attempts >= 0),
    next_attempt_at     timestamptz not null default entitlements.now() check (entitlements._finite(next_attempt_at, 'next_attempt_at')),
    last_error          text check (length(last_error) <= 2000),
    created_at          timestamptz not null default entitlements.now(),
    ready_at            timestamptz,
    updated_at          timestamptz not null default entitlements.now(),
    terminated_at       timestamptz
);
create index server_records_customer on entitlements.server_records (customer_id);
create index server_records_due on entitlements.server_records (next_attempt_at)
    where phase not in ('terminated', 'failed');
comment on table entitlements.server_records is
    'Every server ever made (names are never reused); read entitlements.servers for the desired state.';
select pg_catalog.pg_extension_config_dump('entitlements.server_records', '');
select entitlements.enable_audit('entitlements.server_records');

create table entitlements.server_secrets (
    server_id                  uuid primary key references entitlements.server_records (id),
    signing_key                text not null,
    registration_shared_secret text not null,
    macaroon_secret_key        text not null,
    created_at                 timestamptz not null default entitlements.now()
);
comment on table entitlements.server_secrets is
    'Synapse''s secrets of each server, made once and never regenerated. Global admins only; never audited.';
select pg_catalog.pg_extension_config_dump('entitlements.server_secrets', '');

-- Row security: a customer (and the members of an organization) sees its servers; who may
-- add one is _may_add_server; only admins change them. Secrets: global admins only.
create function entitlements._may_add_server(customer uuid)
returns boolean language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select entitlements.is_admin_of(customer)
        or customer = entitlements.current_user_id()
        or entitlements.can_manage_organization(customer)
$$;
alter table entitlements.server_records enable row level security;
create policy server_records_read on entitlements.server_records for select
    using (entitlements.can_see_customer(customer_id));
create policy server_records_add on entitlements.server_records for insert
    with check (entitlements._may_add_server(customer_id));
-- Global admins (the worker's role) only: a tenant admin could otherwise move a server's
-- state under another tenant's (a terminated server back to life, a slot freed).
create policy server_records_admin on entitlements.server_records for update
    using (entitlements.is_admin()) with check (entitlements.is_admin());
alter table entitlements.server_secrets enable row level security;
create policy server_secrets_admin on entitlements.server_secrets for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());

-- Desired state ---------------------------------------------------------------------------

-- When the customer's last source of `resources` stopped granting: the latest end among its
-- subscriptions (and its organizations') and resources grants, never before the server
-- existed. A subscription whose plan has no resources stopped with its last change (a move
-- to a smaller plan), unless it never changed. The retention before termination counts
-- from here.
create function entitlements._server_access_lost_at(customer uuid, server_created timestamptz)
returns timestamptz language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select greatest(server_created, max(ended))
      from (select case when not exists (select 1 from entitlements.plan_entitlements e
                                           where e.plan_key = s.plan_key and e.feature_key = 'resources')
                             then case when s.updated_at > s.created_at then least(s.updated_at, entitlements.now()) end
                        when g = '-infinity' then coalesce(s.ended_at, s.canceled_at, s.status_changed_at)
                        else least(coalesce(g, entitlements.now()), entitlements.now()) end
              from entitlements.subscriptions s
              join entitlements.plans p on p.key = s.plan_key
             cross join lateral entitlements._grants_until(s, p.grace_days) g
             where s.customer_id = customer
                or s.customer_id in (select m.organization_id from entitlements.members m where m.user_id = customer)
            union all
            select least(coalesce(g.revoked_at, g.expires_at, entitlements.now()), entitlements.now())
              from entitlements.grants g
             where g.customer_id = customer and g.feature_key = 'resources' and g.kind in ('feature', 'override'))
           as ends(ended)
$$;

-- What a server should be now, the resources it should have, and a generation: a number
-- that changes whenever either (or its domains) does. 'running' while the customer's
-- `resources` resolve; 'suspended' when they do not; 'terminated' once that has lasted
-- settings.server_retention, and for good once the worker started deleting (a server that
-- fails while being deleted stays terminating, provisioning/applier.sql).
create function entitlements._server_state(r entitlements.server_records,
                                           out desired text, out resources jsonb, out generation bigint)
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    if r.phase in ('terminating', 'terminated') then
        desired := 'terminated';
        resources := r.applied_resources;
    else
        resources := entitlements._feature_config(r.customer_id, 'resources');
        if resources is not null then
            desired := 'running';
        else
            resources := r.applied_resources;
            desired := case when entitlements._server_access_lost_at(r.customer_id, r.created_at)
                                 <= entitlements.now() - (entitlements._settings()).server_retention
                            then 'terminated' else 'suspended' end;
        end if;
    end if;
    generation := hashtextextended(jsonb_build_array(desired, resources, r.domains)::text, 0);
end
$$;

create view entitlements.servers with (security_invoker = true) as
select r.id, r.customer_id, r.name, r.namespace, r.domains, st.desired, r.phase, r.conditions,
       r.attempts, r.next_attempt_at, r.last_error, st.generation, r.observed_generation,
       r.created_at, r.ready_at, r.updated_at, r.terminated_at
  from entitlements.server_records r
 cross join lateral entitlements._server_state(r) st;
comment on view entitlements.servers is
    'Each server with its desired state (running, suspended, terminated: decided at read time from the '
    'entitlement rules) and where the worker has it (phase, conditions, attempts). A customer sees its own.';

-- Adding servers --------------------------------------------------------------------------

-- Live servers' domains, one row each: the key makes a domain one live server's only under
-- any isolation level (a check of server_records would race).
create table entitlements.server_domains (
    domain    text primary key,
    server_id uuid not null references entitlements.server_records (id)
);
-- One row per customer, bumped by every server added, so that two transactions adding servers
-- for one customer meet on it: READ COMMITTED waits and then counts the other's server;
-- REPEATABLE READ and SERIALIZABLE fail with 40001 instead of both counting from a snapshot.
create table entitlements.server_counts (
    customer_id uuid primary key references entitlements.customers (id),
    added       bigint not null
);
comment on table entitlements.server_domains is 'Domains of live servers (the extension''s own bookkeeping).';
comment on table entitlements.server_counts is 'Servers ever added per customer (serializes adding them).';
select pg_catalog.pg_extension_config_dump('entitlements.server_domains', '');
select pg_catalog.pg_extension_config_dump('entitlements.server_counts', '');
-- Owner only: written by the definer triggers below, read by nobody else.
alter table entitlements.server_domains enable row level security;
alter table entitlements.server_counts enable row level security;

-- A whole number from a resources document, or `default` when it has none (a grant may hold
-- any JSON: a server that cannot use it fails in the worker, naming it).
create function entitlements._resource_count(resources jsonb, key text, fallback bigint)
returns bigint language sql immutable parallel safe
return case when jsonb_typeof(resources -> key) = 'number' then greatest(floor((resources ->> key)::numeric), 0)::bigint
            else fallback end;

-- Every insert, direct or not: the caller may act for the customer (else nothing about it is
-- told), the customer has `resources` now and fewer live servers than `servers`. Definer: it
-- counts every live server, which RLS may hide from the caller; it reads only the new row of
-- the extension's own table. RLS then decides whether the caller may add it.
create function entitlements._server_check_insert()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_resources jsonb;
    v_allowed bigint;
    v_live bigint;
    v_platform text := (entitlements._settings()).server_domain;
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._server_check_insert');
    if entitlements._bulk_loading() then
        return new; -- pg_restore: the restored servers were within their plans
    end if;
    perform entitlements._require(entitlements._may_meter(new.customer_id), 'adding a server',
                                  'the customer, an owner or admin of the organization, or an entitlements admin');
    insert into entitlements.server_counts as c (customer_id, added) values (new.customer_id, 1)
    on conflict (customer_id) do update set added = c.added + 1;
    -- This statement's own writes (a subscribe that adds the first server) must be seen.
    perform entitlements._cache_touch();
    v_resources := entitlements._feature_config(new.customer_id, 'resources');
    if v_resources is null then
        raise exception 'customer % has no plan that includes a server', new.customer_id
            using errcode = 'PT403', hint = 'Subscribe to a plan with "resources" first.';
    end if;
    v_allowed := entitlements._resource_count(v_resources, 'servers', 1);
    select count(*) into v_live from entitlements.server_records r
     where r.customer_id = new.customer_id and r.phase not in ('terminating', 'terminated');
    if v_live >= v_allowed then
        raise exception 'customer % already has % server(s), as many as its plan allows', new.customer_id, v_live
            using errcode = 'PT429', detail = format('The plan''s resources.servers is %s.', v_allowed),
                  hint = 'Upgrade to a plan with more servers, or wait until a terminated one is gone.';
    end if;
    -- Under the platform's domain a server answers only for its own name; other domains need a
    -- plan with custom_domain (their ownership is the customer's to prove to DNS).
    if exists (select 1 from unnest(new.domains) d
                where d <> new.name || '.' || v_platform
                  and (d like '%.' || v_platform or (v_resources -> 'custom_domain') is distinct from 'true'::jsonb)) then
        raise exception 'server % may answer only for %.%', new.name, new.name, v_platform
            using errcode = 'PT403',
                  hint = 'Other domains need a plan with custom_domain; under the platform''s domain only the server''s own name.';
    end if;
    if cardinality(new.domains) > entitlements._resource_count(v_resources, 'domains', 1) then
        raise exception '% domains given; the plan allows %', cardinality(new.domains),
            entitlements._resource_count(v_resources, 'domains', 1) using errcode = 'PT429';
    end if;
    return new;
end
$$;
create trigger server_records_check before insert on entitlements.server_records
    for each row execute function entitlements._server_check_insert();

-- Definer: a new server's secrets (made once, never again) and its domains, in tables nobody
-- else may write.
create function entitlements._server_made()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    -- 32 bytes from three v4 UUIDs (pg_strong_random; 366 random bits hashed down).
    v_seed bytea := sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text
                                      || gen_random_uuid()::text, 'UTF8'));
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._server_made');
    if entitlements._bulk_loading() then
        return null; -- the dump restores the secrets and domains
    end if;
    begin
        insert into entitlements.server_domains (domain, server_id) select d, new.id from unnest(new.domains) d;
    exception when unique_violation then
        raise exception 'a domain of % is already served by another server', new.domains using errcode = '23505';
    end;
    insert into entitlements.server_secrets (server_id, signing_key, registration_shared_secret, macaroon_secret_key)
    values (new.id,
            -- Synapse's signing key file: algorithm, key id, unpadded base64 of the seed.
            'ed25519 a_' || left(encode(sha256(v_seed), 'hex'), 4) || ' ' || rtrim(encode(v_seed, 'base64'), '='),
            encode(sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')), 'hex'),
            encode(sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')), 'hex'))
    on conflict (server_id) do nothing;
    return null;
end
$$;
create trigger server_records_made after insert on entitlements.server_records
    for each row execute function entitlements._server_made();

-- What a server is never changes (its customer, name, domains, creation), and terminated is
-- final: the worker and admins change only where it stands. A terminated server's domains
-- are free again. Definer: it writes server_domains.
create function entitlements._server_changed()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._server_changed');
    if entitlements._bulk_loading() then
        return new;
    end if;
    if (new.id, new.customer_id, new.name, new.domains, new.created_at)
       is distinct from (old.id, old.customer_id, old.name, old.domains, old.created_at) then
        raise exception 'a server''s id, customer, name, domains and creation never change'
            using errcode = '22023', hint = 'Add another server instead (create_server).';
    end if;
    if old.phase = 'terminated' and new.phase <> 'terminated' then
        raise exception 'server % is terminated; a terminated server stays terminated', old.name
            using errcode = '22023';
    end if;
    if new.phase = 'terminated' and old.phase <> 'terminated' then
        delete from entitlements.server_domains d where d.server_id = old.id;
    end if;
    return new;
end
$$;
create trigger server_records_changed before update on entitlements.server_records
    for each row execute function entitlements._server_changed();

-- Add a server (create_server and the first server of a subscription); wakes the worker.
create function entitlements._server_add(customer uuid, name text, domain text)
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_name text := coalesce(lower(btrim(name)), 's' || left(replace(gen_random_uuid()::text, '-', ''), 11));
    v_domain text := coalesce(lower(btrim(domain)), v_name || '.' || (entitlements._settings()).server_domain);
    v_id uuid;
    v_constraint text;
begin
    if v_name !~ '^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$' then
        raise exception 'invalid server name "%": 1 to 40 of a-z, 0-9 and "-", starting and ending with a letter or digit',
            name using errcode = '22023';
    end if;
    perform entitlements._valid_domains(array[v_domain]);
    if exists (select 1 from entitlements.server_records r where r.name = v_name) then
        raise exception 'server name "%" is taken', v_name
            using errcode = '23505', hint = 'Names are never reused, even after a server is terminated.';
    end if;
    begin
        insert into entitlements.server_records (customer_id, name, domains)
        values (customer, v_name, array[v_domain])
        returning id into v_id;
    exception when unique_violation then
        get stacked diagnostics v_constraint = constraint_name;
        if v_constraint not in ('server_records_name_key', 'server_records_namespace_key') then
            raise;
        end if;
        -- Another customer's server (hidden by RLS) has the name.
        raise exception 'server name "%" is taken', v_name
            using errcode = '23505', hint = 'Names are never reused, even after a server is terminated.';
    end;
    -- No payload: the worker only needs waking, and anyone may LISTEN.
    perform pg_notify('entitlements_provision', '');
    return v_id;
end
$$;

create function entitlements.create_server(customer uuid, name text, domain text default null)
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_not_null(customer, 'customer');
    perform entitlements._require_not_null(name, 'name');
    perform entitlements._require(entitlements._may_add_server(customer), 'create_server',
                                  'the customer, an owner or admin of the organization, or an entitlements admin');
    return entitlements._server_add(customer, name, domain);
end
$$;
comment on function entitlements.create_server(uuid, text, text) is
    'Add a server (a Matrix homeserver) up to the plan''s resources.servers; domain defaults to '
    'name.<settings.server_domain>. The first server comes with the subscription.';

-- A subscription that (now) grants `resources` to a customer with no live server makes one.
create function entitlements._server_first()
returns trigger language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if entitlements._bulk_loading()
       or not exists (select 1 from entitlements.plan_entitlements e
                       where e.plan_key = new.plan_key and e.feature_key = 'resources')
       or exists (select 1 from entitlements.server_records r
                   where r.customer_id = new.customer_id and r.phase not in ('terminating', 'terminated')) then
        return null;
    end if;
    perform entitlements._cache_touch();
    if entitlements._feature_config(new.customer_id, 'resources') is not null then
        begin
            perform entitlements._server_add(new.customer_id, null, null);
        exception when sqlstate 'PT429' then
            -- A concurrent transaction gave the customer its first server meanwhile: the
            -- subscription change stands, without a second one.
            null;
        end;
    end if;
    return null;
end
$$;
create trigger subscriptions_first_server after insert or update of plan_key, status on entitlements.subscriptions
    for each row execute function entitlements._server_first();
