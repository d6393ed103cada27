-- consume and try_consume: the common case in Rust (_consume_fast, src/counting.rs),
-- everything else in _meter (metering.sql). Standard SQL bodies: bound when created (no
-- search_path to pin) and inlined into the caller's query, so the wrapper costs nothing.
-- _meter runs only when _consume_fast answers NULL.

create function entitlements.consume(customer uuid, feature text, amount numeric default 1,
                                     idempotency_key text default null)
returns entitlements.usage language sql volatile
return coalesce(entitlements._consume_fast(customer, feature, amount, idempotency_key),
                entitlements._meter(customer, feature, amount, idempotency_key, 'consume'));
comment on function entitlements.consume(uuid, text, numeric, text) is
    'Count `amount` in the caller''s transaction; over a blocking limit raises PT429 (HTTP 429 in PostgREST).';

create function entitlements.try_consume(customer uuid, feature text, amount numeric default 1,
                                         idempotency_key text default null)
returns entitlements.usage language sql volatile
return coalesce(entitlements._consume_fast(customer, feature, amount, idempotency_key),
                entitlements._meter(customer, feature, amount, idempotency_key, 'try'));
comment on function entitlements.try_consume(uuid, text, numeric, text) is
    'Like consume, but answers allowed = false instead of raising.';
