-- consume and try_consume: the common case in Rust (_consume_fast, extension/src/metering/counting.rs),
-- everything else in _meter (metering/meter.sql). Standard SQL bodies: bound when created (no
-- search_path to pin) and inlined into the caller's query, so the wrapper costs nothing.
-- Each argument is named once: PostgreSQL does not inline a body that would evaluate an
-- argument twice when the caller passes an expression (`auth.uid()`, a subquery), and a
-- SQL function that is not inlined is planned again on every call. So when _consume_fast
-- answers NULL it keeps its arguments, and _meter_pending, next in the same COALESCE,
-- hands them to _meter. _meter is called from SQL, never from Rust, so its PT429 and
-- PT403 keep their SQLSTATE.

create function entitlements._meter_pending(p_mode text)
returns entitlements.usage language plpgsql volatile as $$
declare
    p record;
begin
    select * into strict p from entitlements._take_pending();
    return entitlements._meter(p.customer, p.feature, p.amount, p.idempotency_key, p_mode);
end
$$;

create function entitlements.consume(customer uuid, feature text, amount numeric default 1,
                                     idempotency_key text default null)
returns entitlements.usage language sql volatile
return coalesce(entitlements._consume_fast(customer, feature, amount, idempotency_key),
                entitlements._meter_pending('consume'));
comment on function entitlements.consume(uuid, text, numeric, text) is
    'Count `amount` in the caller''s transaction; over a blocking limit raises PT429 (HTTP 429 in PostgREST).';

create function entitlements.try_consume(customer uuid, feature text, amount numeric default 1,
                                         idempotency_key text default null)
returns entitlements.usage language sql volatile
return coalesce(entitlements._consume_fast(customer, feature, amount, idempotency_key),
                entitlements._meter_pending('try'));
comment on function entitlements.try_consume(uuid, text, numeric, text) is
    'Like consume, but answers allowed = false instead of raising.';
