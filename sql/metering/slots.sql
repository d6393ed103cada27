-- Concurrency slots (entitlements.acquire).

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
    perform entitlements._require_primary('acquire');
    v_limit := entitlements._concurrency_limit(customer, feature);
    if not entitlements._may_meter(customer) then
        perform entitlements._note_permission_refused('acquire ' || feature);
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
    perform entitlements._require_primary('slots_in_use');
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
