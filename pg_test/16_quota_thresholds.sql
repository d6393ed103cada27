\set ON_ERROR_STOP 1
\set QUIET 1
-- quota.threshold (issue #11): each limit's thresholds (80% and 100% unless the catalog
-- says otherwise) send one event per window and threshold, written only by the call that
-- crosses it, in its transaction; the stripes stop at the next threshold so that the
-- crossing is always seen exactly (sql/metering/meter.sql, _quota_bound).
begin;
select plan(26);
\ir fixtures/catalog.sql

\set c1 '''00000000-0000-0000-0000-0000000a0001'''
\set c2 '''00000000-0000-0000-0000-0000000a0002'''
\set c3 '''00000000-0000-0000-0000-0000000a0003'''
\set c4 '''00000000-0000-0000-0000-0000000a0004'''
\set c5 '''00000000-0000-0000-0000-0000000a0005'''
\set c6 '''00000000-0000-0000-0000-0000000a0006'''
\set c7 '''00000000-0000-0000-0000-0000000a0007'''
\set c8 '''00000000-0000-0000-0000-0000000a0008'''

create function pg_temp.crossed(c uuid) returns numeric[] language sql as $$
    select coalesce(array_agg((payload ->> 'threshold')::numeric order by id), '{}')
      from entitlements.outbox where kind = 'quota.threshold' and customer_id = c
$$;

-- The defaults, one unit at a time (the common case, counted in Rust) ---------------------------
-- c1 is on the default plan (free: 60 minutes a month) and has no customers row.
select is((select thresholds from entitlements.features where key = 'minutes'), '{80,100}'::numeric[],
          'a metered feature that names no thresholds gets 80% and 100%');
select is((select thresholds from entitlements.features where key = 'agents'), null, 'other kinds have none');
select count(entitlements.consume(:c1, 'minutes')) from generate_series(1, 47) \gset
select is(pg_temp.crossed(:c1), '{}', '47 of 60: below 80%, no event');
select entitlements.consume(:c1, 'minutes') is not null as x \gset
select is(pg_temp.crossed(:c1), '{80}', '48 of 60: the call that reaches 80% sends it');
select count(entitlements.consume(:c1, 'minutes')) from generate_series(1, 11) \gset
select is(pg_temp.crossed(:c1), '{80}', 'once: not on every call above it');
select entitlements.consume(:c1, 'minutes') is not null as x \gset
select is(pg_temp.crossed(:c1), '{80,100}', '60 of 60: 100%');
select is((entitlements.try_consume(:c1, 'minutes')).allowed, false, 'over the limit is refused');
select is(pg_temp.crossed(:c1), '{80,100}', 'and a refusal sends nothing');
select is((select payload - 'window_start' - 'resets_at' from entitlements.outbox
            where kind = 'quota.threshold' and customer_id = :c1 and (payload ->> 'threshold')::numeric = 80),
          '{"feature": "minutes", "period": "month", "threshold": 80, "limit": 60, "used": 48}'::jsonb,
          'the payload: feature, period, threshold, limit, usage after the call');
select is((select (payload ->> 'resets_at')::timestamptz from entitlements.outbox
            where kind = 'quota.threshold' and customer_id = :c1 limit 1),
          (entitlements.check(:c1, 'minutes')).resets_at, 'and when the window resets');
select is((select dedup_key from entitlements.outbox
            where kind = 'quota.threshold' and customer_id = :c1 and (payload ->> 'threshold')::numeric = 100),
          format('quota:%s:minutes:month:%s:60:100', :c1,
                 to_char(date_trunc('month', now() at time zone 'UTC'), 'YYYY-MM-DD"T"HH24:MI:SS"Z"')),
          'one event per customer, feature, window, limit and threshold');
select is((select sum(used) from entitlements.usage_counters where customer_id = :c1), 60::numeric,
          'and the count is the count');

-- One call over both thresholds sends both; a rollback sends none ---------------------------------
savepoint s;
select entitlements.consume(:c2, 'minutes', 59) is not null as x \gset
select is(pg_temp.crossed(:c2), '{80}', 'one call from 0 to 59 of 60 sends 80% (not yet 100%)');
rollback to savepoint s;
select is(pg_temp.crossed(:c2), '{}', 'a rolled-back consume leaves no event');
select entitlements.consume(:c2, 'minutes', 60) is not null as x \gset
select is(pg_temp.crossed(:c2), '{80,100}', 'from 0 to 60 of 60: 80% and 100% together');

-- Limits that refuse together: a crossing counted by one limit and refused by another -----------
select entitlements.override_feature(:c3, 'minutes', '[{"limit": 10, "period": "day"}, {"limit": 100, "period": "month"}]',
                                  reason => 'two limits') is not null as g \gset
select entitlements.consume(:c3, 'minutes', 9, 'first') is not null as x \gset
select is(pg_temp.crossed(:c3), '{80}', 'the day''s 80% (9 of 10); the month is at 9%');
select entitlements.override_feature(:c4, 'minutes', '[{"limit": 100, "period": "day"}, {"limit": 10, "period": "month"}]',
                                  reason => 'month binds') is not null as g \gset
select is((entitlements.try_consume(:c4, 'minutes', 90)).allowed, false, 'the month refuses 90 of 10 ...');
select is(pg_temp.crossed(:c4), '{}', '... so the day''s 80% it would have crossed is not sent');

-- A refusal by a later limit takes back what an earlier one counted, and its split: the day's
-- 80% (8 of 10) is still told when it is reached.
select entitlements.override_feature(:c7, 'minutes', '[{"limit": 10, "period": "day"}, {"limit": 8, "period": "month"}]',
                                     reason => 'refused after a split') is not null as g \gset
select entitlements.consume(:c7, 'minutes', 7) is not null as x \gset
select is((entitlements.try_consume(:c7, 'minutes', 2)).allowed, false, 'the month refuses 9 of 8');
select entitlements.try_consume(:c7, 'minutes', 1) is not null as x \gset
select is((select array_agg(x order by x) from (select (payload ->> 'period') || ' ' || (payload ->> 'threshold') as x
                                                    from entitlements.outbox
                                                   where kind = 'quota.threshold' and customer_id = :c7) e),
          array['day 80', 'month 100', 'month 80'], 'the day''s 80% is told when 8 of 10 are used');

-- A plan change in the window: the new limit's thresholds are told too ------------------------------
select entitlements.consume(:c8, 'minutes', 48) is not null as x \gset
select entitlements.subscribe(:c8, 'pro') is not null as s \gset
select entitlements.consume(:c8, 'minutes', 200) is not null as x \gset
select is((select array_agg((payload ->> 'limit') || ' ' || (payload ->> 'threshold') order by id) from entitlements.outbox
            where kind = 'quota.threshold' and customer_id = :c8),
          array['60 80', '300 80'], 'free''s 80% (48 of 60), then pro''s (248 of 300)');

-- The catalog decides: other thresholds, none, above 100% with overage ---------------------------
update pg_temp.fixture_catalog set doc = jsonb_set(doc, '{features,1}',
    '{"key": "minutes", "kind": "metered", "unit": "minute", "thresholds": [50, 150]}');
update pg_temp.fixture_catalog set doc = jsonb_set(doc, '{plans,1,entitlements,minutes}',
    '{"limit": 300, "period": "month", "overage": "allow"}');
select entitlements.subscribe(:c5, 'pro') is not null as s \gset
select entitlements.consume(:c5, 'minutes', 100) is not null as x \gset
select entitlements.apply_catalog((select doc from pg_temp.fixture_catalog)) ->> 'features' as changed \gset
select is((select thresholds from entitlements.features where key = 'minutes'), '{50,150}'::numeric[],
          'the catalog sets a feature''s thresholds');
select is((select count(*)::int from entitlements.usage_counters
            where feature_key = 'minutes' and split = entitlements._thresholds_key('{50,150}') and window_end > now()), 0,
          'the open windows were split under the old thresholds ...');
select entitlements.consume(:c5, 'minutes', 60) is not null as x \gset
select is(pg_temp.crossed(:c5), '{50}', '... and the new threshold applies to them (160 of 300)');
select count(entitlements.consume(:c5, 'minutes')) from generate_series(1, 300) \gset
select is(pg_temp.crossed(:c5), '{50,150}', 'above the limit with overage allowed: 150% (460 of 300)');
update pg_temp.fixture_catalog set doc = jsonb_set(doc, '{features,1,thresholds}', '[]');
select entitlements.apply_catalog((select doc from pg_temp.fixture_catalog)) is not null as x \gset
select entitlements.consume(:c6, 'minutes', 30) is not null as x \gset
select entitlements.consume(:c6, 'minutes', 30) is not null as x \gset
select is((select count(*)::int from entitlements.outbox where kind = 'quota.threshold' and customer_id = :c6), 0,
          'thresholds []: none sent, even at 100%');

select * from finish();
rollback;
