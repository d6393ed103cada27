-- The ledger kept honest and bounded: counters against the ledger (usage_drift), monthly
-- partitions made ahead and dropped after retention, and the shapes the direct writes
-- (metering/stamps.rs, metering/ledger.rs) were written for.

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
        v_start := date_trunc('month', entitlements.now(), 'UTC') + make_interval(months => m);
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

-- Retention: everything of the ledger before the month boundary at or before entitlements.now() - keep
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
    v_through := date_trunc('month', entitlements.now() - keep, 'UTC');
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

-- The shape of a table as the writes without the executor see it (extension/src/postgres/shape.rs): access
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
        || 'sole boolean not null default false, stripes smallint not null default 1, split bigint',
        -- usage_ledger, and each of its partitions (made alike, on the heap)
        'partitioned: id bigint not null default nextval(''entitlements.usage_ledger_id_seq''::regclass), '
        || 'at timestamp with time zone not null, customer_id uuid not null, '
        || 'feature_key text not null, amount numeric not null, idempotency_key text, '
        || 'periods text[] not null, billing_window timestamp with time zone, '
        || 'overage numeric not null default 0, unit_price_cents numeric, '
        || 'cost_cents numeric not null default 0, actor uuid, '
        || 'txid bigint not null default txid_current(), usage_cost_cents numeric, metadata jsonb',
        'heap: id bigint not null default nextval(''entitlements.usage_ledger_id_seq''::regclass), '
        || 'at timestamp with time zone not null, customer_id uuid not null, '
        || 'feature_key text not null, amount numeric not null, idempotency_key text, '
        || 'periods text[] not null, billing_window timestamp with time zone, '
        || 'overage numeric not null default 0, unit_price_cents numeric, '
        || 'cost_cents numeric not null default 0, actor uuid, '
        || 'txid bigint not null default txid_current(), usage_cost_cents numeric, metadata jsonb'])
$$;
