-- check, and the metering engine behind check, consume and try_consume (entitlements._meter):
-- the slow path of consume, refusals with their HINT and DETAIL, overage, idempotency keys.
-- The limits come from the rules (entitlements._meter_limits, metering/limits.rs).

create function entitlements._ts(us bigint)
returns timestamptz language sql immutable parallel safe strict
return timestamptz '1970-01-01 00:00:00+00' + us * interval '1 microsecond';

-- Usage in the windows that are open now, for entitlements(customer) (extension/src/metering/limits.rs).
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

-- consume and try_consume are in metering/consume.sql: the common case runs in Rust
-- (extension/src/metering/counting.rs) on kept plans and everything else comes to _meter above.
