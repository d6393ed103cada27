-- Metering: quotas counted per period window, the durable usage ledger, idempotency keys
-- and concurrency slots. The limits come from the rules (entitlements._meter_limits, in
-- Rust, through the same cache as has_feature); this file only counts.
--
-- Why striped counters. The obvious counter, one row per (customer, feature, window)
-- updated with `used = used + n where used + n <= limit`, makes every consumer of a hot
-- customer wait for the previous one's commit: the row lock is held until commit, and a
-- commit waits for its WAL flush. Here a window's remaining quota is split over up to 16
-- stripe rows, each with its own cap. A consumer takes a stripe with room that nobody
-- holds (SKIP LOCKED), so concurrent transactions commit in parallel and share WAL
-- flushes. The caps of a window never add up to more than its limit, so the stripes
-- cannot overshoot together. When no stripe has room, the consumer locks stripe 0 (which
-- serializes rebalancing) and then every stripe, sees the exact total, and either refuses
-- or splits what remains again. Exactly the limit goes through.
--
-- Counters and ledger are written in the caller's transaction: a rollback un-consumes.
-- They are not audited row by row (the ledger is itself the append-only record).

create type entitlements.usage as (
    allowed   boolean,
    "limit"   numeric,
    used      numeric,
    remaining numeric,
    resets_at timestamptz
);
comment on type entitlements.usage is
    'Answer of check/consume/try_consume for the limit that binds first; NULL limit and remaining = unlimited.';

-- The counters and the ledger carry no CHECK constraints on purpose: only the
-- extension's own functions write them (nobody else has the privilege), after
-- validating, and PostgreSQL re-reads every CHECK expression from the catalog on each
-- execution of a statement, a measurable share of a consume call. Kept invariants: period is
-- day/month/billing_period/lifetime, stripe 0..15, used >= 0, amount > 0, overage >= 0;
-- usage_drift() and the metering tests check them.
create table entitlements.usage_counters (
    customer_id  uuid not null,
    feature_key  text not null,
    period       text not null,
    window_start timestamptz not null,
    window_end   timestamptz,
    stripe       smallint not null,
    used         numeric not null default 0,
    -- This stripe may count while it stays below `cap`; the caps were split from `basis`,
    -- the limit when they were set ('Infinity' = unlimited), and add up to the limit or
    -- the next usage threshold before it. A changed limit forces a re-split.
    cap          numeric not null,
    basis        numeric not null,
    -- A shared memo of the rules, so a backend that has never seen this customer can
    -- count without resolving them (extension/src/metering/counting.rs): `basis` is still the customer's
    -- limit while entitlements.cache_version equals `stamp` (nothing the rules read has
    -- changed) and until `valid_until` (the next instant the rules' answer changes by
    -- time alone); `sole` says this window was the feature's only limited period then.
    stamp        bigint,
    valid_until  timestamptz,
    sole         boolean not null default false,
    -- How many stripes the window has, as its last split left it (1 until then): a count
    -- on the only stripe knows the window's total without summing (metering/stamps.rs).
    stripes      smallint not null default 1,
    -- The thresholds the caps were split under (_thresholds_key): a count on a stripe needs
    -- the feature's current ones, so a window split under others is split again first.
    split        bigint,
    primary key (customer_id, feature_key, period, window_start, stripe)
);
comment on table entitlements.usage_counters is
    'Usage per customer, feature and period window, split into stripes; sum(used) of a window is its usage.';

create sequence entitlements.usage_ledger_id_seq;

-- Partitioned by month on `at`; entitlements.ensure_usage_partitions() creates the
-- months ahead (the worker runs it daily), the default partition catches anything else.
create table entitlements.usage_ledger (
    id               bigint not null default nextval('entitlements.usage_ledger_id_seq'),
    at               timestamptz not null,
    customer_id      uuid not null,
    feature_key      text not null,
    amount           numeric not null,
    idempotency_key  text,
    -- The periods this consumption was counted in, and the billing window when one of them.
    periods          text[] not null,
    billing_window   timestamptz,
    -- Units of this consumption beyond the limit (overage allow/bill) and what they cost.
    overage          numeric not null default 0,
    unit_price_cents numeric,
    cost_cents       numeric not null default 0,
    actor            uuid,
    txid             bigint not null default txid_current(),
    -- What this usage cost the business (issue #12): given to record_usage, or its amount
    -- times the feature's unit cost then; NULL for consume's rows, which the reports price
    -- at the feature's unit cost at `at` (feature_unit_costs). No CHECK here: the ledger is
    -- written without the executor (metering/ledger.rs); record_usage checks its input.
    usage_cost_cents numeric,
    metadata         jsonb
) partition by range (at);
-- Keys and indexes are each partition's own, not the parent's: the parent belongs to the
-- extension and is not in a dump, the monthly partitions are; an index of the parent
-- would be created again on every restored partition as it is attached, and the dump's
-- own copy of it would then fail (two primary keys).
create table entitlements.usage_ledger_default partition of entitlements.usage_ledger default;
alter table entitlements.usage_ledger_default add primary key (id, at);
create index usage_ledger_default_customer on entitlements.usage_ledger_default (customer_id, feature_key, at);
comment on table entitlements.usage_ledger is
    'Every accepted consumption, append-only, partitioned by month. Counters always equal it (see usage_drift()).';

-- Usage of ledger partitions dropped by retention, so lifetime counts still reconcile.
create table entitlements.usage_rollup (
    customer_id uuid not null,
    feature_key text not null,
    amount      numeric not null,
    through     timestamptz not null,
    primary key (customer_id, feature_key, through)
);

create table entitlements.usage_idempotency (
    customer_id     uuid not null,
    idempotency_key text not null check (length(idempotency_key) between 1 and 255),
    feature_key     text not null,
    amount          numeric not null,
    created_at      timestamptz not null default entitlements.now(),
    primary key (customer_id, idempotency_key)
);

alter table entitlements.usage_counters enable row level security;
create policy usage_counters_read on entitlements.usage_counters for select
    using (entitlements.can_see_customer(customer_id));
alter table entitlements.usage_ledger enable row level security;
create policy usage_ledger_read on entitlements.usage_ledger for select
    using (entitlements.can_see_customer(customer_id));
alter table entitlements.usage_ledger_default enable row level security;
create policy usage_ledger_default_read on entitlements.usage_ledger_default for select
    using (entitlements.can_see_customer(customer_id));
alter table entitlements.usage_rollup enable row level security;
create policy usage_rollup_read on entitlements.usage_rollup for select
    using (entitlements.can_see_customer(customer_id));
alter table entitlements.usage_idempotency enable row level security;
create policy usage_idempotency_read on entitlements.usage_idempotency for select
    using (entitlements.can_see_customer(customer_id));

select pg_catalog.pg_extension_config_dump('entitlements.usage_counters', '');
select pg_catalog.pg_extension_config_dump('entitlements.usage_ledger_default', '');
select pg_catalog.pg_extension_config_dump('entitlements.usage_rollup', '');
select pg_catalog.pg_extension_config_dump('entitlements.usage_idempotency', '');
