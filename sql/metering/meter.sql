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
                 where customer_id = customer and (window_end is null or window_end > entitlements._statement_now())
                 group by 1, 2, 3) u);
end
$$;

-- The cheapest public, active plan (of the customer's store or for everyone) that would allow `amount` more of `feature` given
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
       -- A store's plan only for that store's customers.
       and (p.tenant_id is null or p.tenant_id = (select c.tenant_id from entitlements.customers c where c.id = customer))
       and not exists (
           select 1 from jsonb_array_elements(e.spec -> 'limits') m
            where jsonb_typeof(m -> 'limit') = 'number'
              and (m ->> 'limit')::numeric < amount + coalesce((
                  select sum(l.amount) from entitlements.usage_ledger l
                   where l.customer_id = customer and l.feature_key = feature
                     and l.at >= coalesce((windows ->> (m ->> 'period'))::timestamptz,
                                          entitlements._window_start(m ->> 'period', entitlements._statement_now()))), 0))
     order by p.price_cents, p.key
     limit 1
$$;

-- The steps of _meter, each its own function. They run only inside _meter (SECURITY
-- DEFINER, search_path pinned), as its owner: EXECUTE is the owner's alone
-- (security/privileges.sql), so they pin nothing themselves and cost no SET per call.

-- Bad input and who may meter, before anything is touched.
create function entitlements._meter_check_input(p_customer uuid, p_feature text, p_amount numeric, p_mode text)
returns void language plpgsql stable
as $$
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
        perform entitlements._note_permission_refused('meter ' || p_feature);
        raise exception 'permission denied: you may meter only your own usage and that of your organizations'
            using errcode = '42501';
    end if;
end
$$;

-- The same idempotency key twice counts once: true when this call holds the key now (it
-- counts), false when an earlier call with the same parameters counted (a replay). The
-- second caller waits for the first transaction on the unique key, then sees its row (or
-- takes over if it rolled back).
create function entitlements._meter_claim_key(p_customer uuid, p_key text, p_feature text, p_amount numeric)
returns boolean language plpgsql volatile
as $$
declare
    v_prev record;
begin
    insert into entitlements.usage_idempotency (customer_id, idempotency_key, feature_key, amount)
    values (p_customer, p_key, p_feature, p_amount)
    on conflict do nothing;
    if found then
        return true;
    end if;
    select k.feature_key, k.amount into v_prev
      from entitlements.usage_idempotency k
     where k.customer_id = p_customer and k.idempotency_key = p_key;
    if v_prev.feature_key <> p_feature or v_prev.amount <> p_amount then
        raise exception 'idempotency key "%" was already used with different parameters (% × %)',
            p_key, v_prev.feature_key, v_prev.amount
            using errcode = '22023';
    end if;
    return false;
end
$$;

-- How far a window's stripes may count before the slow path must look: the limit, or the
-- first threshold above `used` when that comes sooner. A count on a stripe needs room
-- strictly below its cap and the caps add up to this bound, so no count on a stripe can
-- reach a threshold: every crossing happens on the slow path, which holds every stripe of
-- the window and so sees its exact total (_meter_limit).
create function entitlements._quota_bound(p_limit numeric, p_thresholds numeric[], p_used numeric)
returns numeric language sql immutable parallel safe
return least(p_limit, (select min(t * p_limit / 100) from unnest(p_thresholds) t where t * p_limit / 100 > p_used));

-- Which thresholds a window's caps were split under (usage_counters.split).
create function entitlements._thresholds_key(p_thresholds numeric[])
returns bigint language sql immutable parallel safe
return hashtextextended(coalesce(p_thresholds::text, ''), 0);

-- What a window has counted so far, over all its stripes.
create function entitlements._meter_window_total(p_customer uuid, p_feature text, p_period text, p_window timestamptz)
returns numeric language sql stable
as $$
    select coalesce(sum(c.used), 0) from entitlements.usage_counters c
     where c.customer_id = p_customer and c.feature_key = p_feature
       and c.period = p_period and c.window_start = p_window
$$;

-- The fast path: count `p_amount` on a stripe with room that nobody holds, opening the
-- window on its first use. Returns the stripe counted on (NULL: none, take the slow path)
-- and whether the window is contended (others held every stripe with room: add stripes).
--
-- Each attempt is a subtransaction: a stripe that FOR UPDATE locked but then skipped (it
-- ran out of room after our snapshot) stays locked until the subtransaction ends, and no
-- stray lock may be held while the slow path waits, or two consumers could deadlock. A
-- second attempt comes after queueing for stripe 0 (one rebalancer at a time): the
-- rebalancer ahead holds every stripe until it commits, so without looking again each
-- consumer queued behind it would rebalance in turn and keep the next ones off the fast
-- path, a convoy that lasts as long as the load.
create function entitlements._meter_take_stripe(p_customer uuid, p_feature text, p_amount numeric, p_period text,
                                                p_window timestamptz, p_window_end timestamptz, p_limit numeric,
                                                p_thresholds numeric[], out stripe smallint, out grow boolean)
language plpgsql volatile
as $$
declare
    max_stripes constant int := 16;
    v_bound numeric := entitlements._quota_bound(p_limit, p_thresholds, 0);
    v_split bigint := entitlements._thresholds_key(p_thresholds);
begin
    grow := false;
    if p_amount < v_bound then
        -- First use of this window: stripe 0 takes the whole quota (up to the first
        -- threshold) in one statement.
        insert into entitlements.usage_counters
               (customer_id, feature_key, period, window_start, window_end, stripe, used, cap, basis, split)
        values (p_customer, p_feature, p_period, p_window, p_window_end, 0, p_amount, v_bound, p_limit, v_split)
        on conflict do nothing
        returning usage_counters.stripe into stripe;
    end if;
    for v_attempt in 1 .. 2 loop
        exit when stripe is not null;
        if v_attempt = 2 then
            grow := exists (select 1 from entitlements.usage_counters s
                             where s.customer_id = p_customer and s.feature_key = p_feature
                               and s.period = p_period and s.window_start = p_window
                               and s.basis = p_limit and s.split = v_split and s.used + p_amount < s.cap);
            insert into entitlements.usage_counters
                   (customer_id, feature_key, period, window_start, window_end, stripe, used, cap, basis)
            values (p_customer, p_feature, p_period, p_window, p_window_end, 0, 0, 0, p_limit)
            on conflict do nothing;
            perform 1 from entitlements.usage_counters s
              where s.customer_id = p_customer and s.feature_key = p_feature
                and s.period = p_period and s.window_start = p_window and s.stripe = 0
                for update;
            -- Adding stripes takes the slow path; at the most stripes, look again.
            exit when grow and (select count(*) from entitlements.usage_counters s
                                 where s.customer_id = p_customer and s.feature_key = p_feature
                                   and s.period = p_period and s.window_start = p_window) < max_stripes;
        end if;
        begin
            update entitlements.usage_counters c set used = c.used + p_amount
             where c.customer_id = p_customer and c.feature_key = p_feature
               and c.period = p_period and c.window_start = p_window
               and c.stripe = (select s.stripe from entitlements.usage_counters s
                                where s.customer_id = p_customer and s.feature_key = p_feature
                                  and s.period = p_period and s.window_start = p_window
                                  and s.basis = p_limit and s.split = v_split and s.used + p_amount < s.cap
                                order by s.stripe
                                for update skip locked
                                limit 1)
            returning c.stripe into stripe;
            if stripe is null then
                raise exception using errcode = 'PE000';  -- undo the attempt's row locks
            end if;
        exception when sqlstate 'PE000' then
            stripe := null;
        end;
    end loop;
end
$$;

-- The slow path, after a refusal-free check, holding every stripe: count on stripe 0 and
-- split what remains evenly; the caps add up to the limit or the next threshold before it
-- (_quota_bound), or to the usage once over it, so every later request comes here.
-- Contended (`p_grow`): double the stripes first, up to 16, so fewer wait next time.
create function entitlements._meter_rebalance(p_customer uuid, p_feature text, p_amount numeric, p_period text,
                                              p_window timestamptz, p_window_end timestamptz, p_limit numeric,
                                              p_thresholds numeric[], p_total numeric, p_stripes int, p_grow boolean)
returns void language plpgsql volatile
as $$
declare
    max_stripes constant int := 16;
    v_n     int := p_stripes;
    v_rem   numeric;
    v_share numeric;
begin
    if p_grow and v_n < max_stripes then
        insert into entitlements.usage_counters
               (customer_id, feature_key, period, window_start, window_end, stripe, used, cap, basis)
        select p_customer, p_feature, p_period, p_window, p_window_end, g, 0, 0, p_limit
          from generate_series(v_n, least(v_n * 2, max_stripes) - 1) g
        on conflict do nothing;
        v_n := least(v_n * 2, max_stripes);
    end if;
    v_rem := greatest(entitlements._quota_bound(p_limit, p_thresholds, p_total + p_amount) - p_total - p_amount, 0);
    v_share := case when p_limit = 'Infinity' then 'Infinity' else floor(v_rem / v_n) end;
    update entitlements.usage_counters c
       set used = c.used + case when c.stripe = 0 then p_amount else 0 end,
           cap = case when p_limit = 'Infinity' then 'Infinity'
                      when c.stripe = 0 then c.used + p_amount + v_rem - v_share * (v_n - 1)
                      else c.used + v_share end,
           basis = p_limit, stripes = v_n, split = entitlements._thresholds_key(p_thresholds)
     where c.customer_id = p_customer and c.feature_key = p_feature
       and c.period = p_period and c.window_start = p_window;
end
$$;

-- PT429 for consume over a blocking limit: the feature and limit, when the count resets,
-- and the cheapest public plan that would allow it.
create function entitlements._meter_raise_quota(p_customer uuid, p_feature text, p_amount numeric, p_limit numeric,
                                                p_period text, p_total numeric, p_resets_at timestamptz,
                                                p_windows jsonb)
returns void language plpgsql stable
as $$
declare
    v_plan text := entitlements._upgrade_plan(p_customer, p_feature, p_amount, p_windows);
begin
    -- Counted for the security rules (monitoring/signals.sql) before the error ends the transaction.
    perform entitlements._note_refusal('quota_refused', p_customer::text, p_feature);
    raise exception 'quota exceeded for feature "%": limit % per %', p_feature, p_limit, replace(p_period, '_', ' ')
        using errcode = 'PT429',
              detail = case when p_resets_at is null
                            then format('%s of %s used; a lifetime quota does not reset.', p_total, p_limit)
                            else format('%s of %s used; the count resets at %s.', p_total, p_limit,
                                        to_char(p_resets_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')) end,
              hint = case when v_plan is null
                          then 'No public plan allows more; ask for a quota boost.'
                          else format('Upgrade to the "%s" plan to allow it.', v_plan) end;
end
$$;

-- PT403 for consume of a feature the customer's plan does not include.
create function entitlements._meter_raise_not_included(p_customer uuid, p_feature text, p_amount numeric,
                                                       p_windows jsonb)
returns void language plpgsql stable
as $$
declare
    v_plan text := entitlements._upgrade_plan(p_customer, p_feature, p_amount, p_windows);
begin
    perform entitlements._note_refusal('feature_refused', p_customer::text, p_feature);
    raise exception 'feature "%" is not included in your plan', p_feature
        using errcode = 'PT403',
              hint = case when v_plan is null then 'No public plan includes it.'
                          else format('Upgrade to the "%s" plan to use it.', v_plan) end;
end
$$;

-- try_consume refused: take back what earlier periods of this call counted (their stripes
-- are still ours) and give the idempotency key back, so nothing is left written. A window
-- this call split again (`p_resplit`: the slow path, which holds all its stripes) had its
-- caps set for the usage with this call's amount, which may be past a threshold the usage
-- without it has not reached: its caps are closed, so its next count splits it again.
create function entitlements._meter_undo(p_customer uuid, p_feature text, p_amount numeric, p_periods text[],
                                         p_windows timestamptz[], p_stripes smallint[], p_resplit boolean[],
                                         p_key text)
returns void language plpgsql volatile
as $$
begin
    for i in 1 .. coalesce(array_length(p_periods, 1), 0) loop
        update entitlements.usage_counters c
           set used = c.used - case when c.stripe = p_stripes[i] then p_amount else 0 end,
               cap = case when p_resplit[i] then c.used - case when c.stripe = p_stripes[i] then p_amount else 0 end
                          else c.cap end
         where c.customer_id = p_customer and c.feature_key = p_feature
           and c.period = p_periods[i] and c.window_start = p_windows[i]
           and (c.stripe = p_stripes[i] or p_resplit[i]);
    end loop;
    if p_key is not null then
        delete from entitlements.usage_idempotency k
         where k.customer_id = p_customer and k.idempotency_key = p_key;
    end if;
end
$$;

-- One limit of one call: count `p_amount` in the window (or, for check and a replayed key,
-- only read it). Fast path: a stripe with room (_meter_take_stripe). Slow path: lock every
-- stripe of the window, then refuse (consume raises PT429; try answers `refused`, and
-- _meter undoes what earlier limits counted) or count with the units beyond a non-blocking
-- limit as `over` (NULL when the fast path counted), and rebalance. `total` is the
-- window's count after this call; `crossed`, the thresholds (percent) this call crossed,
-- exactly, since only the slow path can cross one (_quota_bound).
create function entitlements._meter_limit(p_customer uuid, p_feature text, p_amount numeric, p_mode text,
                                          p_replay boolean, p_period text, p_window timestamptz,
                                          p_window_end timestamptz, p_limit numeric, p_overage text,
                                          p_windows jsonb, p_thresholds numeric[],
                                          out stripe smallint, out total numeric, out refused boolean,
                                          out over numeric, out crossed numeric[])
language plpgsql volatile
as $$
declare
    v_take record;
    v_n int;
begin
    refused := false;
    if p_mode = 'check' or p_replay then
        total := entitlements._meter_window_total(p_customer, p_feature, p_period, p_window);
        refused := p_overage = 'block' and total + p_amount > p_limit and not p_replay;
        return;
    end if;
    v_take := entitlements._meter_take_stripe(p_customer, p_feature, p_amount, p_period, p_window, p_window_end, p_limit,
                                              p_thresholds);
    stripe := v_take.stripe;
    if stripe is not null then
        total := entitlements._meter_window_total(p_customer, p_feature, p_period, p_window);
        return;
    end if;
    -- Slow path, holding stripe 0: take every stripe; a new statement sees every stripe the
    -- previous rebalancer created.
    select coalesce(sum(l.used), 0), count(*)::int into total, v_n
      from (select s.used from entitlements.usage_counters s
             where s.customer_id = p_customer and s.feature_key = p_feature
               and s.period = p_period and s.window_start = p_window
             order by s.stripe
               for update) l;
    if total + p_amount > p_limit and p_overage = 'block' then
        if p_mode = 'consume' then
            perform entitlements._meter_raise_quota(p_customer, p_feature, p_amount, p_limit, p_period, total,
                                                    p_window_end, p_windows);
        end if;
        refused := true;
        return;
    end if;
    over := greatest(0, total + p_amount - greatest(total, p_limit));
    perform entitlements._meter_rebalance(p_customer, p_feature, p_amount, p_period, p_window, p_window_end, p_limit,
                                          p_thresholds, total, v_n, v_take.grow);
    crossed := array(select t from unnest(p_thresholds) t
                      where total < t * p_limit / 100 and t * p_limit / 100 <= total + p_amount order by t);
    stripe := 0;
    total := total + p_amount;
end
$$;

-- quota.threshold, once per limit, window and threshold (the dedup key; a new limit in the
-- same window, after a plan change, is told again), for the crossings _meter_limit found:
-- `crossed` holds, per limit, its window and thresholds.
create function entitlements._quota_events(p_customer uuid, p_feature text, p_crossed jsonb)
returns void language plpgsql volatile
as $$
declare
    v_limit jsonb;
    v_t numeric;
begin
    for v_limit in select * from jsonb_array_elements(p_crossed) loop
        for v_t in select t::numeric from jsonb_array_elements_text(v_limit -> 'thresholds') t loop
            perform entitlements._outbox_record(
                'quota.threshold', p_customer,
                format('quota:%s:%s:%s:%s:%s:%s', p_customer, p_feature, v_limit ->> 'period',
                       to_char((v_limit ->> 'window_start')::timestamptz at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                       v_limit ->> 'limit', v_t),
                jsonb_build_object('feature', p_feature, 'period', v_limit -> 'period', 'threshold', v_t,
                                   'limit', v_limit -> 'limit', 'used', v_limit -> 'used',
                                   'window_start', v_limit -> 'window_start', 'resets_at', v_limit -> 'resets_at'));
        end loop;
    end loop;
end
$$;

-- The metering engine behind check, consume and try_consume.
--   mode 'check':   report, change nothing;
--   mode 'consume': count, or raise PT429 / PT403;
--   mode 'try':     count, or return allowed = false having changed nothing.
-- Every limit of the feature (binding order) through _meter_limit, then one ledger row for
-- the call with its overage and what it costs.
create function entitlements._meter(p_customer uuid, p_feature text, p_amount numeric, p_key text, p_mode text)
returns entitlements.usage
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_lim      record;
    v_limit    numeric;
    v_w        timestamptz;
    v_end      timestamptz;
    v_one      record;
    v_over     numeric := 0::numeric;
    v_price    numeric;
    v_cost     numeric := 0::numeric;
    v_any      boolean := false;
    v_replay   boolean := false;
    v_keyed    boolean := false;
    v_periods  text[] := '{}'::text[];
    v_billing  timestamptz;
    v_done_w   timestamptz[] := '{}'::timestamptz[];
    v_done_s   smallint[] := '{}'::smallint[];
    v_done_slow boolean[] := '{}'::boolean[];
    v_out      entitlements.usage;
    v_best     numeric;
    v_windows  jsonb := '{}'::jsonb;
    v_thresholds numeric[];
    v_crossed  jsonb := '[]'::jsonb;
begin
    if p_mode <> 'check' then
        perform entitlements._require_primary(case p_mode when 'try' then 'try_consume' else 'consume' end);
    end if;
    perform entitlements._meter_check_input(p_customer, p_feature, p_amount, p_mode);
    select f.thresholds into v_thresholds from entitlements.features f where f.key = p_feature;
    if p_key is not null and p_mode <> 'check' then
        v_keyed := entitlements._meter_claim_key(p_customer, p_key, p_feature, p_amount);
        v_replay := not v_keyed;
    end if;

    for v_lim in select * from entitlements._meter_limits(p_customer, p_feature) loop
        v_any := true;
        v_limit := coalesce(v_lim.lim::numeric, 'Infinity');
        v_w := entitlements._ts(v_lim.window_start_us);
        v_end := entitlements._ts(v_lim.resets_at_us);
        v_windows := v_windows || jsonb_build_object(v_lim.period, v_w);
        v_one := entitlements._meter_limit(p_customer, p_feature, p_amount, p_mode, v_replay, v_lim.period, v_w, v_end,
                                           v_limit, v_lim.overage, v_windows, v_thresholds);
        if cardinality(v_one.crossed) > 0 then
            v_crossed := v_crossed || jsonb_build_object('period', v_lim.period, 'window_start', v_w,
                                                         'resets_at', v_end, 'limit', v_limit,
                                                         'used', v_one.total, 'thresholds', to_jsonb(v_one.crossed));
        end if;
        if v_one.refused and p_mode = 'check' then
            v_out.allowed := false;
        elsif v_one.refused then
            perform entitlements._note_refusal('quota_refused', p_customer::text, p_feature);
            perform entitlements._meter_undo(p_customer, p_feature, p_amount, v_periods, v_done_w, v_done_s, v_done_slow,
                                             case when v_keyed then p_key end);
            return row(false, v_limit, v_one.total, greatest(v_limit - v_one.total, 0), v_end)::entitlements.usage;
        elsif v_one.stripe is not null then
            -- Counted: remember where (for an undo) and what it costs beyond the limit.
            v_periods := v_periods || v_lim.period::text;
            v_done_w := v_done_w || v_w;
            v_done_s := v_done_s || v_one.stripe;
            v_done_slow := v_done_slow || (v_one.over is not null);
            v_billing := case when v_lim.period = 'billing_period' then v_w else v_billing end;
            if v_one.over is not null then
                v_over := greatest(v_over, v_one.over);
                if v_lim.overage = 'bill' and v_one.over * coalesce(v_lim.unit_price_cents::numeric, 0) >= v_cost then
                    v_cost := v_one.over * coalesce(v_lim.unit_price_cents::numeric, 0);
                    v_price := v_lim.unit_price_cents::numeric;
                end if;
            end if;
        end if;
        -- Report the limit that binds first: the least remaining.
        if v_best is null or v_limit - v_one.total < v_best then
            v_best := v_limit - v_one.total;
            v_out."limit" := nullif(v_limit, 'Infinity');
            v_out.used := v_one.total;
            v_out.remaining := case when v_limit = 'Infinity' then null else greatest(v_limit - v_one.total, 0) end;
            v_out.resets_at := v_end;
        end if;
    end loop;

    if not v_any then
        -- The feature is not part of the customer's plan at all.
        if p_mode = 'consume' then
            perform entitlements._meter_raise_not_included(p_customer, p_feature, p_amount, v_windows);
        elsif p_mode = 'try' then
            perform entitlements._note_refusal('feature_refused', p_customer::text, p_feature);
        end if;
        perform entitlements._meter_undo(p_customer, p_feature, p_amount, '{}', '{}', '{}', '{}',
                                         case when v_keyed then p_key end);
        return row(false, 0, 0, 0, null)::entitlements.usage;
    end if;

    v_out.allowed := coalesce(v_out.allowed, true);
    if p_mode <> 'check' and not v_replay then
        insert into entitlements.usage_ledger (at, customer_id, feature_key, amount, idempotency_key, periods,
                                               billing_window, overage, unit_price_cents, cost_cents, actor)
        values (entitlements._statement_now(), p_customer, p_feature, p_amount, p_key, v_periods, v_billing, v_over, v_price,
                v_cost, entitlements.current_user_id());
        -- Only now, with every limit counted: a refusal by a later limit writes no event.
        perform entitlements._quota_events(p_customer, p_feature, v_crossed);
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
