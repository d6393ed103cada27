-- pg_entitlements: tables. Loaded first (bootstrap); everything is schema-qualified.
--
-- Conventions
--   * Keys of catalog objects are short snake_case identifiers chosen by the app.
--   * Time columns are timestamptz; "granting" is decided at read time by the
--     extension (extension/src/rules.rs), never stored.
--   * Every table is audited (sql/audit/) and protected by RLS (sql/security/roles.sql).

-- Time --------------------------------------------------------------------------------
-- Every instant the engine takes as "now" comes from these two, so the test clock
-- (`set entitlements.clock = ...`, extension/src/clock.rs) moves all of it: rules, column
-- defaults, history, tasks and analytics. Real time: now() and statement_timestamp().
create function entitlements.now()
returns timestamptz language c stable parallel safe
as 'MODULE_PATHNAME', 'clock_now_wrapper';
comment on function entitlements.now() is
    'now(), or the test clock (entitlements.clock) when it is set.';

create function entitlements._statement_now()
returns timestamptz language c stable parallel safe
as 'MODULE_PATHNAME', 'clock_statement_now_wrapper';

-- What is written can always be read ------------------------------------------------
-- Every jsonb and instant the rules read is checked where it is written, by these
-- functions in CHECK constraints, so a direct INSERT is held to them as much as the
-- functions are: SQLSTATE 22023 naming the column and the path, and nothing written.

-- A JSON value the readers take: nested at most 32 deep, every number within
-- +-1e15 (exact as f64; extension/src/catalog/mod.rs MAX_NUMBER), at most 256 kB.
create function entitlements._valid_json(value jsonb, what text)
returns boolean language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
    v_problem text;
begin
    if value is null then
        return true;
    end if;
    if pg_column_size(value) > 262144 then
        raise exception '%: the value is larger than 256 kB', what using errcode = '22023';
    end if;
    with recursive walk(path, v, depth) as (
        select '$'::text, value, 1
        union all
        select w.path || e.step, e.v, w.depth + 1
          from walk w
          cross join lateral (
              select '.' || k as step, x as v
                from jsonb_each(case when jsonb_typeof(w.v) = 'object' then w.v end) as o(k, x)
              union all
              select '[' || (i - 1) || ']', x
                from jsonb_array_elements(case when jsonb_typeof(w.v) = 'array' then w.v end)
                     with ordinality as a(x, i)) e
         where w.depth <= 32)
    select case when w.depth > 32 then w.path || ': nested deeper than 32 levels'
                else w.path || ': number ' || left(w.v::text, 40) || ' is outside -1e15..1e15' end
      into v_problem
      from walk w
     where w.depth > 32
        or (jsonb_typeof(w.v) = 'number' and abs(w.v::text::numeric) > 1e15)
     limit 1;
    if v_problem is not null then
        raise exception '%: %', what, v_problem using errcode = '22023';
    end if;
    return true;
end
$$;

-- An instant is finite: "no end" is NULL, never 'infinity'.
create function entitlements._finite(value timestamptz, what text)
returns boolean language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
    if not isfinite(value) then
        raise exception '% must be a finite instant, got %', what, value
            using errcode = '22023', hint = 'Use NULL for "no end".';
    end if;
    return true;
end
$$;

-- A lower-case DNS name (RFC 1123), as an Ingress host must be.
create function entitlements._valid_domain(domain text)
returns boolean language sql immutable parallel safe strict
return length(domain) <= 253
   and domain ~ '^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$';

-- Catalog ---------------------------------------------------------------------

create table entitlements.features (
    key         text primary key check (key ~ '^[a-z][a-z0-9_]{0,62}$'),
    kind        text not null check (kind in ('flag', 'limit', 'metered', 'concurrency', 'config')),
    unit        text,
    created_at  timestamptz not null default entitlements.now(),
    updated_at  timestamptz not null default entitlements.now(),
    -- Percentages of each limit of a metered feature whose crossing sends quota.threshold,
    -- once per window (metering/meter.sql); NULL for other kinds.
    thresholds  numeric[] check (cardinality(thresholds) <= 10 and 0 < all (thresholds) and 1000 >= all (thresholds)),
    -- What a unit costs the business, in cents (issue #12; revenue/costs.sql), apart from
    -- any overage price charged; NULL: unknown. Its history is in feature_unit_costs.
    unit_cost_cents numeric check (unit_cost_cents >= 0 and unit_cost_cents <= 1e12)
);
comment on table entitlements.features is
    'What can be sold: flags, static limits, metered quotas, concurrency slots and config values.';

create table entitlements.plans (
    key              text primary key check (key ~ '^[a-z][a-z0-9_]{0,62}$'),
    name             text not null,
    description      text,
    -- At most what a catalog takes (extension/src/catalog/mod.rs), so that the revenue sums
    -- hold (a store admin writes its plans directly too).
    price_cents      bigint not null default 0 check (price_cents between 0 and 2147483647),
    currency         text not null default 'usd' check (currency ~ '^[a-z]{3}$'),
    interval         text not null default 'month' check (interval in ('day', 'week', 'month', 'year', 'once')),
    is_default       boolean not null default false,
    public           boolean not null default false,
    active           boolean not null default true,
    trial_days       integer not null default 0 check (trial_days between 0 and 730),
    grace_days       integer not null default 7 check (grace_days between 0 and 365),
    position         integer not null default 0,
    stripe_price_ids text[] not null default '{}',
    metadata         jsonb not null default '{}' check (entitlements._valid_json(metadata, 'plans.metadata')),
    created_at       timestamptz not null default entitlements.now(),
    updated_at       timestamptz not null default entitlements.now(),
    -- A store's plan (issue #12): only that tenant's customers subscribe to it, and that
    -- tenant's admins manage it (apply_catalog(catalog, tenant)). NULL: a plan for everyone.
    tenant_id        uuid,
    check (not is_default or active),
    check (tenant_id is null or not is_default)
);
comment on table entitlements.plans is
    'Plans from the catalog. A plan dropped from the catalog becomes inactive, never deleted.';
-- At most one default plan: who has no subscription gets it.
create unique index plans_single_default on entitlements.plans ((true)) where is_default;

create table entitlements.plan_entitlements (
    plan_key    text not null references entitlements.plans (key) on update cascade on delete cascade,
    feature_key text not null references entitlements.features (key) on update cascade,
    -- Normalized by entitlements._normalize_catalog (extension/src/catalog/mod.rs); shape depends on the kind.
    spec        jsonb not null check (entitlements._valid_json(spec, 'plan_entitlements.spec')),
    primary key (plan_key, feature_key)
);
create index plan_entitlements_feature on entitlements.plan_entitlements (feature_key);

-- Customers, organizations, subscriptions ---------------------------------------

create table entitlements.customers (
    id                 uuid primary key,
    kind               text not null default 'user' check (kind in ('user', 'organization')),
    -- The store/tenant this customer belongs to; tenant admins see only theirs.
    tenant_id          uuid,
    stripe_customer_id text unique,
    email              text,
    metadata           jsonb not null default '{}' check (entitlements._valid_json(metadata, 'customers.metadata')),
    created_at         timestamptz not null default entitlements.now(),
    updated_at         timestamptz not null default entitlements.now(),
    -- How notifications address the customer (outbox/delivery.sql).
    display_name       text check (length(display_name) <= 200),
    locale             text check (locale ~ '^[a-z]{2}(-[A-Z]{2})?$'),
    -- Set once, by entitlements.erase_customer (privacy/erasure.sql).
    erased_at          timestamptz
);
create index customers_tenant on entitlements.customers (tenant_id) where tenant_id is not null;

-- The statuses a subscription can be in (Stripe's), in one place: the column's CHECK,
-- subscribe's validation and the health snapshot read them from here.
create function entitlements.subscription_statuses()
returns text[] language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$ select array['trialing', 'active', 'past_due', 'unpaid', 'canceled', 'incomplete', 'incomplete_expired', 'paused'] $$;
comment on function entitlements.subscription_statuses() is
    'Every status a subscription can be in (Stripe''s). Which of them grant: README, Rules.';

create table entitlements.subscriptions (
    id                     uuid primary key default gen_random_uuid(),
    customer_id            uuid not null references entitlements.customers (id),
    plan_key               text not null references entitlements.plans (key) on update cascade,
    status                 text not null check (status = any (entitlements.subscription_statuses())),
    quantity               integer not null default 1 check (quantity between 1 and 1000000),
    current_period_start   timestamptz check (entitlements._finite(current_period_start, 'current_period_start')),
    current_period_end     timestamptz check (entitlements._finite(current_period_end, 'current_period_end')),
    trial_end              timestamptz check (entitlements._finite(trial_end, 'trial_end')),
    cancel_at_period_end   boolean not null default false,
    canceled_at            timestamptz check (entitlements._finite(canceled_at, 'canceled_at')),
    ended_at               timestamptz check (entitlements._finite(ended_at, 'ended_at')),
    -- Start of the past_due grace period; maintained by trigger.
    status_changed_at      timestamptz not null default entitlements.now(),
    source                 text not null default 'manual' check (source in ('manual', 'stripe')),
    stripe_subscription_id text unique,
    metadata               jsonb not null default '{}' check (entitlements._valid_json(metadata, 'subscriptions.metadata')),
    created_at             timestamptz not null default entitlements.now(),
    updated_at             timestamptz not null default entitlements.now(),
    check (current_period_start is null or current_period_end is null
           or current_period_end > current_period_start)
);
create index subscriptions_customer on entitlements.subscriptions (customer_id);
create index subscriptions_plan on entitlements.subscriptions (plan_key);

create table entitlements.members (
    organization_id uuid not null references entitlements.customers (id) on delete cascade,
    user_id         uuid not null,
    role            text not null default 'member' check (role in ('owner', 'admin', 'member')),
    created_at      timestamptz not null default entitlements.now(),
    primary key (organization_id, user_id),
    check (organization_id <> user_id)
);
create index members_user on entitlements.members (user_id);

-- Grants and overrides --------------------------------------------------------

create table entitlements.grants (
    id          uuid primary key default gen_random_uuid(),
    customer_id uuid not null references entitlements.customers (id),
    -- feature: grant a value; quota_boost: add to a limit; override: replace the value;
    -- deny: remove the feature whatever else grants it; discount: billing only.
    kind        text not null check (kind in ('feature', 'quota_boost', 'override', 'deny', 'discount')),
    feature_key text references entitlements.features (key) on update cascade,
    value       jsonb check (entitlements._valid_json(value, 'grants.value')),
    starts_at   timestamptz not null default entitlements.now() check (entitlements._finite(starts_at, 'starts_at')),
    expires_at  timestamptz check (entitlements._finite(expires_at, 'expires_at')),
    reason      text not null check (length(btrim(reason)) > 0),
    created_by  uuid,
    created_at  timestamptz not null default entitlements.now(),
    revoked_at  timestamptz,
    check ((kind = 'discount') = (feature_key is null)),
    -- What the revenue metrics read of a discount (grant_discount writes it so).
    constraint grants_discount_check check (kind <> 'discount' or (
        jsonb_typeof(value -> 'percent_off') = 'number'
        and (value ->> 'percent_off')::numeric > 0 and (value ->> 'percent_off')::numeric <= 100)),
    check (expires_at is null or expires_at > starts_at)
);
create index grants_customer on entitlements.grants (customer_id);

-- Who administers: global admins (tenant_id null) or admins of one tenant.
create table entitlements.admins (
    user_id    uuid not null,
    tenant_id  uuid,
    created_at timestamptz not null default entitlements.now(),
    unique nulls not distinct (user_id, tenant_id)
);

-- Audit -------------------------------------------------------------------------

create table entitlements.audit_log (
    id          bigint generated always as identity primary key,
    at          timestamptz not null default clock_timestamp(),
    txid        bigint not null default txid_current(),
    actor       uuid,
    actor_role  text not null,
    action      text not null,
    table_name  text not null,
    row_key     text,
    old_values  jsonb,
    new_values  jsonb,
    reason      text
);
create index audit_log_table_row on entitlements.audit_log (table_name, row_key);
create index audit_log_at on entitlements.audit_log using brin (at);

-- Cache coherence ---------------------------------------------------------------

-- One row. Every committed change to the tables the checks read bumps `version`
-- (a deferred trigger, so the row lock is held only for the commit). Backends
-- compare it once per snapshot and drop their cache when it moved.
create table entitlements.cache_version (
    singleton boolean primary key default true check (singleton),
    version   bigint not null,
    bumped_by bigint
);
-- Starts at the install's instant in microseconds, not at 1: counters restored from a dump
-- carry stamps of the old database's versions (sql/metering/tables.sql), and a version that
-- started over could meet one of them again. It is not dumped; every install starts anew.
insert into entitlements.cache_version (singleton, version)
values (true, (extract(epoch from clock_timestamp()) * 1000000)::bigint);

-- User data survives pg_dump of a database that has the extension.
select pg_catalog.pg_extension_config_dump('entitlements.features', '');
select pg_catalog.pg_extension_config_dump('entitlements.plans', '');
select pg_catalog.pg_extension_config_dump('entitlements.plan_entitlements', '');
select pg_catalog.pg_extension_config_dump('entitlements.customers', '');
select pg_catalog.pg_extension_config_dump('entitlements.subscriptions', '');
select pg_catalog.pg_extension_config_dump('entitlements.members', '');
select pg_catalog.pg_extension_config_dump('entitlements.grants', '');
select pg_catalog.pg_extension_config_dump('entitlements.admins', '');
select pg_catalog.pg_extension_config_dump('entitlements.audit_log', '');
select pg_catalog.pg_extension_config_dump('entitlements.audit_log_id_seq', '');
