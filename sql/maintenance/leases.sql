-- Leases: which worker does a piece of outside work (a fetch from the Stripe API, the
-- Stripe reconcile) for a while. A row with an expiry, taken and given back in short
-- transactions of their own, instead of a lock held by a transaction left open across
-- the HTTP call: no connection sits idle in a transaction while Stripe answers, and a
-- worker that dies loses its lease when it expires. A holder renews by taking it again.

create table entitlements.leases (
    name   text primary key check (length(name) between 1 and 200),
    holder text not null check (length(holder) between 1 and 200),
    until  timestamptz not null check (entitlements._finite(until, 'until'))
);
comment on table entitlements.leases is
    'Who does a piece of outside work until when (take_lease / release_lease). Admins only.';
select pg_catalog.pg_extension_config_dump('entitlements.leases', '');
alter table entitlements.leases enable row level security;
create policy leases_admin on entitlements.leases for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());

-- True when `holder` has the lease `name` for `ttl` from now: it was free, expired, or
-- already theirs (renewed). False when someone else holds it.
create function entitlements.take_lease(name text, holder text, ttl interval)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_admin('take_lease');
    perform entitlements._require_not_null(name, 'name');
    perform entitlements._require_not_null(holder, 'holder');
    if ttl is null or ttl < interval '1 second' or ttl > interval '1 hour' then
        raise exception 'ttl must be from 1 second to 1 hour, got %', coalesce(ttl::text, 'NULL') using errcode = '22023';
    end if;
    insert into entitlements.leases as l (name, holder, until)
    values (take_lease.name, take_lease.holder, clock_timestamp() + ttl)
    on conflict on constraint leases_pkey do update set holder = excluded.holder, until = excluded.until
     where l.until < clock_timestamp() or l.holder = excluded.holder;
    return found;
end
$$;
comment on function entitlements.take_lease(text, text, interval) is
    'Take (or renew) a lease for ttl; false when another holder has it. Admins only.';

create function entitlements.release_lease(name text, holder text)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_admin('release_lease');
    delete from entitlements.leases l where l.name = release_lease.name and l.holder = release_lease.holder;
    return found;
end
$$;
comment on function entitlements.release_lease(text, text) is
    'Give a lease back (only its holder can); false when it was not theirs any more.';

-- A failed attempt of leased work (a delivery, a server), as its holder reports it:
-- 'retry' at next_attempt_at, 'final' (dead or failed: an admin brings it back), or
-- 'lease_lost' (the lease ran out and someone else may have it: nothing was recorded).
create type entitlements.failure as (outcome text, next_attempt_at timestamptz);

-- How long after the n-th failure to try again: 2^n seconds up to an hour, ±25% jitter so
-- that what failed together is not retried together.
create function entitlements._backoff(failures integer)
returns interval language sql volatile parallel safe
return least(interval '1 hour', interval '1 second' * power(2, least(failures, 12))) * (0.75 + random() * 0.5);

-- A claim's lease on one item (a delivery, a server): taken only when nobody holds it, the
-- claimer included (take_lease would renew the claimer's own), so an item is worked on once
-- at a time even within one worker. The caller checked who asks and the lease's length.
create function entitlements._take_free_lease(name text, holder text, lease interval)
returns boolean language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    insert into entitlements.leases as l (name, holder, until)
    values (_take_free_lease.name, _take_free_lease.holder, clock_timestamp() + lease)
    on conflict on constraint leases_pkey do update set holder = excluded.holder, until = excluded.until
     where l.until < clock_timestamp();
    return found;
end
$$;
