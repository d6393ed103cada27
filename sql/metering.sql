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
-- execution of a statement, which cost 8% of a consume call. Kept invariants: period is
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
    -- This stripe may count up to `cap`; the caps were split from `basis`, the limit
    -- when they were set ('Infinity' = unlimited). A changed limit forces a re-split.
    cap          numeric not null,
    basis        numeric not null,
    -- A shared memo of the rules, so a backend that has never seen this customer can
    -- count without resolving them (src/counting.rs): `basis` is still the customer's
    -- limit while entitlements.cache_version equals `stamp` (nothing the rules read has
    -- changed) and until `valid_until` (the next instant the rules' answer changes by
    -- time alone); `sole` says this window was the feature's only limited period then.
    stamp        bigint,
    valid_until  timestamptz,
    sole         boolean not null default false,
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
    txid             bigint not null default txid_current()
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
    created_at      timestamptz not null default now(),
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

create function entitlements._ts(us bigint)
returns timestamptz language sql immutable parallel safe strict
return timestamptz '1970-01-01 00:00:00+00' + us * interval '1 microsecond';

-- Usage in the windows that are open now, for entitlements(customer) (src/metering.rs).
create function entitlements._usage_snapshot(customer uuid)
returns jsonb language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
    return (
        select coalesce(jsonb_agg(jsonb_build_object('feature', feature_key, 'period', period,
                                                     'window_start', entitlements._us(window_start), 'used', used)), '[]')
          from (select feature_key, period, window_start, sum(used) as used
                  from entitlements.usage_counters
                 where customer_id = customer and (window_end is null or window_end > statement_timestamp())
                 group by 1, 2, 3) u);
end
$$;

-- The cheapest public, active plan that would allow `amount` more of `feature` given
-- what the customer used in each period's window (`windows`: period → window start; a
-- period the customer's own plan does not constrain uses its calendar window).
-- For the HINT of a refused request. Reads the ledger, so only on the refusal path.
create function entitlements._upgrade_plan(customer uuid, feature text, amount numeric, windows jsonb)
returns text language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select p.key
      from entitlements.plans p
      join entitlements.plan_entitlements e on e.plan_key = p.key and e.feature_key = feature
     where p.public and p.active
       and not exists (
           select 1 from jsonb_array_elements(e.spec -> 'limits') m
            where jsonb_typeof(m -> 'limit') = 'number'
              and (m ->> 'limit')::numeric < amount + coalesce((
                  select sum(l.amount) from entitlements.usage_ledger l
                   where l.customer_id = customer and l.feature_key = feature
                     and l.at >= coalesce((windows ->> (m ->> 'period'))::timestamptz,
                                          entitlements._window_start(m ->> 'period', statement_timestamp()))), 0))
     order by p.price_cents, p.key
     limit 1
$$;

-- The metering engine behind check, consume and try_consume.
--   mode 'check':   report, change nothing;
--   mode 'consume': count, or raise PT429 / PT403;
--   mode 'try':     count, or return allowed = false having changed nothing.
create function entitlements._meter(p_customer uuid, p_feature text, p_amount numeric, p_key text, p_mode text)
returns entitlements.usage
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    max_stripes constant int := 16;
    v_now      timestamptz := statement_timestamp();
    v_lim      record;
    v_limit    numeric;
    v_w        timestamptz;
    v_stripe   smallint;
    v_total    numeric;
    v_n        int;
    v_grow     boolean := false;
    v_rem      numeric;
    v_share    numeric;
    v_over_p   numeric;
    v_over     numeric := 0::numeric;
    v_price    numeric;
    v_cost     numeric := 0::numeric;
    v_any      boolean := false;
    v_replay   boolean := false;
    v_keyed    boolean := false;
    v_periods  text[] := '{}'::text[];
    v_billing  timestamptz;
    v_done_p   text[] := '{}'::text[];
    v_done_w   timestamptz[] := '{}'::timestamptz[];
    v_done_s   smallint[] := '{}'::smallint[];
    v_out      entitlements.usage;
    v_best     numeric;
    v_plan     text;
    v_windows  jsonb := '{}'::jsonb;
    v_prev     record;
begin
    if p_mode not in ('check', 'consume', 'try') then
        raise exception 'unknown metering mode "%"', p_mode using errcode = '22023';
    end if;
    if p_customer is null then
        raise exception 'customer must not be NULL' using errcode = '22004';
    end if;
    if p_feature is null then
        raise exception 'feature must not be NULL' using errcode = '22004';
    end if;
    if p_amount is null or not (p_amount > 0) or p_amount in ('Infinity', 'NaN') or p_amount > 1e15 then
        raise exception 'amount must be a positive number, got % (at most 1e15)', coalesce(left(p_amount::text, 40), 'NULL')
            using errcode = '22023';
    end if;
    if not entitlements._may_meter(p_customer) then
        raise exception 'permission denied: you may meter only your own usage and that of your organizations'
            using errcode = '42501';
    end if;

    -- The same idempotency key twice counts once: the second caller waits for the first
    -- transaction on the unique key, then sees its row (or takes over if it rolled back).
    if p_key is not null and p_mode <> 'check' then
        insert into entitlements.usage_idempotency (customer_id, idempotency_key, feature_key, amount)
        values (p_customer, p_key, p_feature, p_amount)
        on conflict do nothing;
        if found then
            v_keyed := true;
        else
            select k.feature_key, k.amount into v_prev
              from entitlements.usage_idempotency k
             where k.customer_id = p_customer and k.idempotency_key = p_key;
            if v_prev.feature_key <> p_feature or v_prev.amount <> p_amount then
                raise exception 'idempotency key "%" was already used with different parameters (% × %)',
                    p_key, v_prev.feature_key, v_prev.amount
                    using errcode = '22023';
            end if;
            v_replay := true;
        end if;
    end if;

    for v_lim in select * from entitlements._meter_limits(p_customer, p_feature) loop
        v_any := true;
        v_limit := coalesce(v_lim.lim::numeric, 'Infinity');
        v_w := entitlements._ts(v_lim.window_start_us);
        v_windows := v_windows || jsonb_build_object(v_lim.period, v_w);

        if p_mode = 'check' or v_replay then
            select coalesce(sum(c.used), 0) into v_total
              from entitlements.usage_counters c
             where c.customer_id = p_customer and c.feature_key = p_feature
               and c.period = v_lim.period and c.window_start = v_w;
            if v_lim.overage = 'block' and v_total + p_amount > v_limit and not v_replay then
                v_out.allowed := false;
            end if;
        else
            v_stripe := null;
            v_grow := false;
            if p_amount <= v_limit then
                -- First use of this window: stripe 0 takes the whole quota in one statement.
                insert into entitlements.usage_counters
                       (customer_id, feature_key, period, window_start, window_end, stripe, used, cap, basis)
                values (p_customer, p_feature, v_lim.period, v_w, entitlements._ts(v_lim.resets_at_us), 0,
                        p_amount, v_limit, v_limit)
                on conflict do nothing
                returning stripe, used into v_stripe, v_total;
            end if;

            -- Fast path: a stripe with room that nobody holds. In a subtransaction: a
            -- stripe that FOR UPDATE locked but then skipped (it ran out of room after
            -- our snapshot) stays locked until the subtransaction ends, and no stray lock
            -- may be held while the slow path waits below, or two consumers could deadlock.
            -- A second attempt comes after queueing for stripe 0 (one rebalancer at a
            -- time): the rebalancer ahead holds every stripe until it commits, so without
            -- looking again each consumer queued behind it would rebalance in turn and keep
            -- the next ones off the fast path, a convoy that lasts as long as the load.
            for v_attempt in 1 .. 2 loop
                exit when v_stripe is not null;
                if v_attempt = 2 then
                    -- Others held every stripe that had room: contention, so add stripes.
                    v_grow := exists (select 1 from entitlements.usage_counters s
                                       where s.customer_id = p_customer and s.feature_key = p_feature
                                         and s.period = v_lim.period and s.window_start = v_w
                                         and s.basis = v_limit and s.used + p_amount <= s.cap);
                    insert into entitlements.usage_counters
                           (customer_id, feature_key, period, window_start, window_end, stripe, used, cap, basis)
                    values (p_customer, p_feature, v_lim.period, v_w, entitlements._ts(v_lim.resets_at_us), 0, 0, 0, v_limit)
                    on conflict do nothing;
                    perform 1 from entitlements.usage_counters s
                      where s.customer_id = p_customer and s.feature_key = p_feature
                        and s.period = v_lim.period and s.window_start = v_w and s.stripe = 0
                        for update;
                    -- Adding stripes takes the slow path; at the most stripes, look again.
                    exit when v_grow and (select count(*) from entitlements.usage_counters s
                                           where s.customer_id = p_customer and s.feature_key = p_feature
                                             and s.period = v_lim.period and s.window_start = v_w) < max_stripes;
                end if;
                begin
                    update entitlements.usage_counters c set used = c.used + p_amount
                     where c.customer_id = p_customer and c.feature_key = p_feature
                       and c.period = v_lim.period and c.window_start = v_w
                       and c.stripe = (select s.stripe from entitlements.usage_counters s
                                        where s.customer_id = p_customer and s.feature_key = p_feature
                                          and s.period = v_lim.period and s.window_start = v_w
                                          and s.basis = v_limit and s.used + p_amount <= s.cap
                                        order by s.stripe
                                        for update skip locked
                                        limit 1)
                    returning c.stripe into v_stripe;
                    if v_stripe is null then
                        raise exception using errcode = 'PE000';  -- undo the attempt's row locks
                    end if;
                exception when sqlstate 'PE000' then
                    v_stripe := null;
                end;
            end loop;

            if v_stripe is null then
                -- Slow path, holding stripe 0: take every stripe; a new statement sees every
                -- stripe the previous rebalancer created.
                select coalesce(sum(l.used), 0), count(*)::int into v_total, v_n
                  from (select s.used from entitlements.usage_counters s
                         where s.customer_id = p_customer and s.feature_key = p_feature
                           and s.period = v_lim.period and s.window_start = v_w
                         order by s.stripe
                           for update) l;

                if v_total + p_amount > v_limit and v_lim.overage = 'block' then
                    -- Refused by this period.
                    if p_mode = 'consume' then
                        v_plan := entitlements._upgrade_plan(p_customer, p_feature, p_amount, v_windows);
                        raise exception 'quota exceeded for feature "%": limit % per %', p_feature, v_limit, replace(v_lim.period, '_', ' ')
                            using errcode = 'PT429',
                                  detail = case when v_lim.resets_at_us is null
                                                then format('%s of %s used; a lifetime quota does not reset.', v_total, v_limit)
                                                else format('%s of %s used; the count resets at %s.', v_total, v_limit,
                                                            to_char(entitlements._ts(v_lim.resets_at_us) at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')) end,
                                  hint = case when v_plan is null
                                              then 'No public plan allows more; ask for a quota boost.'
                                              else format('Upgrade to the "%s" plan to allow it.', v_plan) end;
                    end if;
                    -- try: undo what earlier periods counted (we still hold their stripes).
                    for i in 1 .. coalesce(array_length(v_done_p, 1), 0) loop
                        update entitlements.usage_counters c set used = c.used - p_amount
                         where c.customer_id = p_customer and c.feature_key = p_feature
                           and c.period = v_done_p[i] and c.window_start = v_done_w[i] and c.stripe = v_done_s[i];
                    end loop;
                    if v_keyed then
                        delete from entitlements.usage_idempotency k
                         where k.customer_id = p_customer and k.idempotency_key = p_key;
                    end if;
                    v_out.allowed := false;
                    v_out."limit" := v_limit;
                    v_out.used := v_total;
                    v_out.remaining := greatest(v_limit - v_total, 0);
                    v_out.resets_at := entitlements._ts(v_lim.resets_at_us);
                    return v_out;
                end if;

                -- Units of this request beyond the limit (overage allow/bill).
                v_over_p := greatest(0, v_total + p_amount - greatest(v_total, v_limit));
                v_over := greatest(v_over, v_over_p);
                if v_lim.overage = 'bill' and v_over_p * coalesce(v_lim.unit_price_cents::numeric, 0) >= v_cost then
                    v_cost := v_over_p * coalesce(v_lim.unit_price_cents::numeric, 0);
                    v_price := v_lim.unit_price_cents::numeric;
                end if;

                -- Contended: double the stripes (up to max_stripes) so fewer wait next time.
                if v_grow and v_n < max_stripes then
                    insert into entitlements.usage_counters
                           (customer_id, feature_key, period, window_start, window_end, stripe, used, cap, basis)
                    select p_customer, p_feature, v_lim.period, v_w, entitlements._ts(v_lim.resets_at_us), g, 0, 0, v_limit
                      from generate_series(v_n, least(v_n * 2, max_stripes) - 1) g
                    on conflict do nothing;
                    v_n := least(v_n * 2, max_stripes);
                end if;

                -- Count on stripe 0 and split what remains evenly; the caps add up to the limit
                -- (or to the usage, once over it, so every later request comes here).
                v_rem := greatest(v_limit - v_total - p_amount, 0);
                v_share := case when v_limit = 'Infinity' then 'Infinity' else floor(v_rem / v_n) end;
                update entitlements.usage_counters c
                   set used = c.used + case when c.stripe = 0 then p_amount else 0 end,
                       cap = case when v_limit = 'Infinity' then 'Infinity'
                                  when c.stripe = 0 then c.used + p_amount + v_rem - v_share * (v_n - 1)
                                  else c.used + v_share end,
                       basis = v_limit
                 where c.customer_id = p_customer and c.feature_key = p_feature
                   and c.period = v_lim.period and c.window_start = v_w;
                v_stripe := 0;
                v_total := v_total + p_amount;
            else
                select coalesce(sum(c.used), 0) into v_total
                  from entitlements.usage_counters c
                 where c.customer_id = p_customer and c.feature_key = p_feature
                   and c.period = v_lim.period and c.window_start = v_w;
            end if;

            v_done_p := v_done_p || v_lim.period::text;
            v_done_w := v_done_w || v_w;
            v_done_s := v_done_s || v_stripe;
            v_periods := v_periods || v_lim.period::text;
            if v_lim.period = 'billing_period' then
                v_billing := v_w;
            end if;
        end if;

        -- Report the limit that binds first: the least remaining.
        if v_best is null or v_limit - v_total < v_best then
            v_best := v_limit - v_total;
            v_out."limit" := nullif(v_limit, 'Infinity');
            v_out.used := v_total;
            v_out.remaining := case when v_limit = 'Infinity' then null else greatest(v_limit - v_total, 0) end;
            v_out.resets_at := entitlements._ts(v_lim.resets_at_us);
        end if;
    end loop;

    if not v_any then
        -- The feature is not part of the customer's plan at all.
        if p_mode = 'consume' then
            v_plan := entitlements._upgrade_plan(p_customer, p_feature, p_amount, v_windows);
            raise exception 'feature "%" is not included in your plan', p_feature
                using errcode = 'PT403',
                      hint = case when v_plan is null then 'No public plan includes it.'
                                  else format('Upgrade to the "%s" plan to use it.', v_plan) end;
        end if;
        if v_keyed then
            delete from entitlements.usage_idempotency k
             where k.customer_id = p_customer and k.idempotency_key = p_key;
        end if;
        return row(false, 0, 0, 0, null)::entitlements.usage;
    end if;

    v_out.allowed := coalesce(v_out.allowed, true);
    if p_mode <> 'check' and not v_replay then
        insert into entitlements.usage_ledger (at, customer_id, feature_key, amount, idempotency_key, periods,
                                               billing_window, overage, unit_price_cents, cost_cents, actor)
        values (v_now, p_customer, p_feature, p_amount, p_key, v_periods, v_billing, v_over, v_price, v_cost,
                entitlements.current_user_id());
    end if;
    return v_out;
end
$$;

-- The public wrapper is PL/pgSQL (plans cached per session; a SQL function with a SET
-- clause would be planned again on every call) and qualifies every name instead of pinning
-- search_path; _meter pins it, as SECURITY DEFINER must.
create function entitlements.check(customer uuid, feature text, amount numeric default 1)
returns entitlements.usage language plpgsql volatile
as $$ begin return entitlements._meter(customer, feature, amount, null, 'check'); end $$;
comment on function entitlements.check(uuid, text, numeric) is
    'Would consuming `amount` be allowed now? Changes nothing.';

-- consume and try_consume are in consume.sql: the common case runs in Rust
-- (src/counting.rs) on kept plans and everything else comes to _meter above.

-- Concurrency slots ---------------------------------------------------------------------

-- Slot `n` of a customer's feature is a transaction-level advisory lock: shared by every
-- session, released at commit or rollback, and by the server when a backend dies.
create function entitlements._slot_key(customer uuid, feature text, slot int)
returns bigint language sql immutable parallel safe strict
set search_path = pg_catalog, pg_temp
as $$ select hashtextextended('pg_entitlements/' || customer::text || '/' || feature, slot) $$;

create function entitlements._concurrency_limit(customer uuid, feature text)
returns float8 language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_kind text;
begin
    if customer is null or feature is null then
        raise exception 'customer and feature must not be NULL' using errcode = '22004';
    end if;
    select f.kind into v_kind from entitlements.features f where f.key = feature;
    if v_kind is null then
        perform entitlements.has_feature(customer, feature);  -- raises "unknown feature" with the known list
    elsif v_kind <> 'concurrency' then
        raise exception 'feature "%" is a % feature, not concurrency', feature, v_kind
            using errcode = '22023', hint = 'acquire() takes slots of concurrency features.';
    end if;
    -- Slots are advisory locks looked up one by one: more than 100,000 (a plan's limit plus
    -- quota boosts) is as good as unlimited, and is treated so.
    return nullif(least(entitlements._feature_limit(customer, feature), 100001), 100001);
end
$$;

create function entitlements.acquire(customer uuid, feature text)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_limit float8;
    v_held  bigint[];
    v_key   bigint;
begin
    v_limit := entitlements._concurrency_limit(customer, feature);
    if not entitlements._may_meter(customer) then
        raise exception 'permission denied: you may take slots only for yourself and your organizations'
            using errcode = '42501';
    end if;
    if v_limit is null then
        return true;  -- unlimited
    end if;
    -- Advisory locks are re-entrant within a backend, so remember the slots this
    -- transaction holds (a transaction-local setting, undone with it).
    v_held := string_to_array(nullif(current_setting('entitlements.held_slots', true), ''), ',')::bigint[];
    for n in 0 .. v_limit::int - 1 loop
        v_key := entitlements._slot_key(customer, feature, n);
        continue when v_key = any(coalesce(v_held, '{}'));
        if pg_try_advisory_xact_lock(v_key) then
            perform set_config('entitlements.held_slots', array_to_string(coalesce(v_held, '{}') || v_key, ','), true);
            return true;
        end if;
    end loop;
    return false;
end
$$;
comment on function entitlements.acquire(uuid, text) is
    'Take one concurrency slot until the end of the transaction; false when all are taken.';

create function entitlements.slots_in_use(customer uuid, feature text)
returns integer language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_limit float8;
begin
    v_limit := entitlements._concurrency_limit(customer, feature);
    if not entitlements._may_meter(customer) then
        raise exception 'permission denied' using errcode = '42501';
    end if;
    if v_limit is null then
        return null;
    end if;
    return (select count(*)::int from pg_locks l
             where l.locktype = 'advisory' and l.granted and l.database = (select oid from pg_database where datname = current_database())
               and ((l.classid::bigint << 32) | l.objid::bigint) in
                   (select entitlements._slot_key(customer, feature, n) from generate_series(0, v_limit::int - 1) n));
end
$$;

-- Reconciliation and retention ------------------------------------------------------------

-- Windows whose counters disagree with the ledger (and the rollup of dropped partitions).
-- Empty on a healthy database. Windows that began before the newest dropped partition
-- ended are left out (part of their ledger is gone); lifetime counts include the rollup.
create function entitlements.usage_drift()
returns table (customer_id uuid, feature_key text, period text, window_start timestamptz,
               counted numeric, ledger numeric)
language sql stable
set search_path = pg_catalog, pg_temp
as $$
    with counted as (
        select c.customer_id, c.feature_key, c.period, c.window_start, sum(c.used) as n
          from entitlements.usage_counters c group by 1, 2, 3, 4),
    ledger as (
        select l.customer_id, l.feature_key, p.period,
               case p.period when 'billing_period' then l.billing_window
                   else entitlements._window_start(p.period, l.at) end as window_start,
               sum(l.amount) as n
          from entitlements.usage_ledger l, unnest(l.periods) p(period)
         group by 1, 2, 3, 4
        union all
        select r.customer_id, r.feature_key, 'lifetime', timestamptz '1970-01-01 00:00:00+00', r.amount
          from entitlements.usage_rollup r),
    ledger_sum as (
        select l.customer_id, l.feature_key, l.period, l.window_start, sum(l.n) as n from ledger l group by 1, 2, 3, 4)
    select coalesce(c.customer_id, l.customer_id), coalesce(c.feature_key, l.feature_key),
           coalesce(c.period, l.period), coalesce(c.window_start, l.window_start),
           coalesce(c.n, 0), coalesce(l.n, 0)
      from counted c
      full join ledger_sum l using (customer_id, feature_key, period, window_start)
     where coalesce(c.n, 0) <> coalesce(l.n, 0)
       and (coalesce(c.period, l.period) = 'lifetime'
            or coalesce(c.window_start, l.window_start)
               >= coalesce((select max(r.through) from entitlements.usage_rollup r), '-infinity'))
$$;

-- Create the monthly ledger partitions from this month to `months_ahead` months ahead,
-- moving any rows that landed in the default partition. Returns how many it created.
-- SECURITY DEFINER: the partitions are the extension's (made by its owner), whoever asks.
create function entitlements.ensure_usage_partitions(months_ahead integer default 3)
returns integer language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_start timestamptz;
    v_end   timestamptz;
    v_name  text;
    v_made  integer := 0;
begin
    perform entitlements._require_caller_admin('ensure_usage_partitions');
    if months_ahead is null or months_ahead < 0 or months_ahead > 120 then
        raise exception 'months_ahead must be between 0 and 120' using errcode = '22023';
    end if;
    for m in 0 .. months_ahead loop
        v_start := date_trunc('month', now(), 'UTC') + make_interval(months => m);
        v_end := v_start + interval '1 month';
        v_name := 'usage_ledger_' || to_char(v_start at time zone 'UTC', 'YYYY_MM');
        continue when to_regclass('entitlements.' || v_name) is not null;
        execute format('create table entitlements.%I (like entitlements.usage_ledger including defaults including constraints)', v_name);
        execute format('alter table entitlements.%I add primary key (id, at)', v_name);
        execute format('create index on entitlements.%I (customer_id, feature_key, at)', v_name);
        -- No row may reach the default partition between the move and the ATTACH.
        lock table entitlements.usage_ledger_default in share row exclusive mode;
        execute format('with moved as (delete from entitlements.usage_ledger_default where at >= %L and at < %L returning *)
                        insert into entitlements.%I select * from moved', v_start, v_end, v_name);
        execute format('alter table entitlements.usage_ledger attach partition entitlements.%I for values from (%L) to (%L)',
                       v_name, v_start, v_end);
        execute format('alter table entitlements.%I enable row level security', v_name);
        execute format('create policy usage_ledger_read on entitlements.%I for select using (entitlements.can_see_customer(customer_id))', v_name);
        v_made := v_made + 1;
    end loop;
    return v_made;
end
$$;

-- Retention: everything of the ledger before the month boundary at or before now() - keep
-- goes: whole partitions are dropped, rows that fell into the default partition deleted;
-- their lifetime usage moves to usage_rollup so lifetime counts still reconcile. Counters
-- of windows closed by then and idempotency keys older than that go too. Returns how
-- many partitions it dropped.
create function entitlements.drop_usage_partitions(keep interval default interval '13 months')
returns integer language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_part    record;
    v_through timestamptz;
    v_dropped integer := 0;
begin
    perform entitlements._require_caller_admin('drop_usage_partitions');
    -- A month at least, as settings.usage_keep: idempotency keys younger than that must stay.
    if keep is null or keep < interval '1 month' then
        raise exception 'keep must be at least one month' using errcode = '22023';
    end if;
    v_through := date_trunc('month', now() - keep, 'UTC');
    for v_part in
        select c.oid::regclass as rel,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz as upper_bound
          from pg_inherits i join pg_class c on c.oid = i.inhrelid
         where i.inhparent = 'entitlements.usage_ledger'::regclass
    loop
        continue when v_part.upper_bound is null or v_part.upper_bound > v_through;
        execute format('insert into entitlements.usage_rollup (customer_id, feature_key, amount, through)
                        select customer_id, feature_key, sum(amount), %L from %s
                         where ''lifetime'' = any(periods) group by 1, 2
                        on conflict (customer_id, feature_key, through)
                        do update set amount = usage_rollup.amount + excluded.amount', v_through, v_part.rel);
        execute format('drop table %s', v_part.rel);
        v_dropped := v_dropped + 1;
    end loop;
    with old as (delete from entitlements.usage_ledger_default d where d.at < v_through returning d.*)
    insert into entitlements.usage_rollup (customer_id, feature_key, amount, through)
    select o.customer_id, o.feature_key, sum(o.amount), v_through from old o
     where 'lifetime' = any(o.periods) group by 1, 2
    on conflict (customer_id, feature_key, through) do update set amount = usage_rollup.amount + excluded.amount;
    delete from entitlements.usage_counters where window_end is not null and window_end <= v_through;
    delete from entitlements.usage_idempotency where created_at < v_through;
    return v_dropped;
end
$$;

-- The shape of a table as the writes without the executor see it (src/shape.rs): access
-- method, and per column in order its name, type with typmod, NOT NULL, generation,
-- identity and default. Names are qualified (search_path is pinned), so the text is the
-- same whoever asks.
create function entitlements._table_shape(rel regclass)
returns text language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce((select am.amname from pg_class c join pg_am am on am.oid = c.relam where c.oid = rel), 'partitioned')
           || ': ' || string_agg(format('%s %s%s%s%s%s', a.attname, format_type(a.atttypid, a.atttypmod),
                        case when a.attnotnull then ' not null' else '' end,
                        case when a.attgenerated <> '' then ' generated' else '' end,
                        case when a.attidentity <> '' then ' identity' else '' end,
                        coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')), ', ' order by a.attnum)
      from pg_attribute a
      left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
     where a.attrelid = rel and a.attnum > 0 and not a.attisdropped
$$;

-- May the counters or the ledger (or one of its partitions) be written without the
-- executor? Only in the shapes that code was written for.
create function entitlements._direct_writes_fit(rel oid)
returns boolean language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select entitlements._table_shape(rel) = any (array[
        -- usage_counters
        'heap: customer_id uuid not null, feature_key text not null, period text not null, '
        || 'window_start timestamp with time zone not null, window_end timestamp with time zone, '
        || 'stripe smallint not null, used numeric not null default 0, cap numeric not null, '
        || 'basis numeric not null, stamp bigint, valid_until timestamp with time zone, '
        || 'sole boolean not null default false',
        -- usage_ledger, and each of its partitions (made alike, on the heap)
        'partitioned: id bigint not null default nextval(''entitlements.usage_ledger_id_seq''::regclass), '
        || 'at timestamp with time zone not null, customer_id uuid not null, '
        || 'feature_key text not null, amount numeric not null, idempotency_key text, '
        || 'periods text[] not null, billing_window timestamp with time zone, '
        || 'overage numeric not null default 0, unit_price_cents numeric, '
        || 'cost_cents numeric not null default 0, actor uuid, '
        || 'txid bigint not null default txid_current()',
        'heap: id bigint not null default nextval(''entitlements.usage_ledger_id_seq''::regclass), '
        || 'at timestamp with time zone not null, customer_id uuid not null, '
        || 'feature_key text not null, amount numeric not null, idempotency_key text, '
        || 'periods text[] not null, billing_window timestamp with time zone, '
        || 'overage numeric not null default 0, unit_price_cents numeric, '
        || 'cost_cents numeric not null default 0, actor uuid, '
        || 'txid bigint not null default txid_current()'])
$$;
