\set ON_ERROR_STOP 1
\set QUIET 1
-- Each rule written once (README, "Where each rule lives"): the SQL side asks the Rust
-- rules instead of restating them. These tests hold the two sides to one answer.
begin;
select plan(22);
\ir fixtures/catalog.sql

-- 1. The granting rule. Every combination of status, trial end, period end, cancel at
--    period end and time in past_due, on the Pro plan (grace 3 days): has_feature (the
--    Rust resolver) grants exactly when entitlements._grants_until (what the maintenance
--    tasks ask) says the subscription still grants.
create temp table cases as
select row_number() over () as n, st, te, pe, cape, changed
  from unnest(entitlements.subscription_statuses()) st,
       unnest(array[null, now() - interval '1 day', now() + interval '1 day']::timestamptz[]) te,
       unnest(array[null, now() - interval '2 days', now() + interval '2 days']::timestamptz[]) pe,
       unnest(array[false, true]) cape,
       unnest(array[now(), now() - interval '10 days']::timestamptz[]) changed;
alter table cases add column customer uuid, add column sub uuid;
update cases set customer = ('00000000-0000-0000-0000-' || lpad(to_hex(n::int), 12, '0'))::uuid;
update cases set sub = entitlements.subscribe(customer, 'pro', period_end => now() + interval '30 days');
-- Straight into the table (as the owner), so every combination exists, even those no
-- lifecycle function would make; status first, then the instant its trigger stamped.
update entitlements.subscriptions s
   set status = c.st, trial_end = c.te, current_period_start = now() - interval '5 days',
       current_period_end = c.pe, cancel_at_period_end = c.cape
  from cases c where s.id = c.sub;
update entitlements.subscriptions s set status_changed_at = c.changed from cases c where s.id = c.sub;

select is((select count(*) from cases), 288::bigint, '288 combinations of the fields the granting rule reads');
select is((select count(*) from cases c join entitlements.subscriptions s on s.id = c.sub
            join entitlements.plans p on p.key = s.plan_key
           where entitlements.has_feature(c.customer, 'agents')
                 is distinct from coalesce(entitlements._grants_until(s, p.grace_days) > now(), true)),
          0::bigint, 'has_feature grants exactly when _grants_until says the subscription grants');
select cmp_ok((select count(*) from cases c where entitlements.has_feature(c.customer, 'agents')), '>', 40::bigint,
              'many combinations grant');
select cmp_ok((select count(*) from cases c where not entitlements.has_feature(c.customer, 'agents')), '>', 100::bigint,
              'many do not');
select is(entitlements._grants_until('past_due', null, null, false, '2026-01-01 00:00+00', 3),
          '2026-01-04 00:00+00'::timestamptz, 'past_due grants for the grace days from its status change');
select is(entitlements._grants_until('unpaid', null, now() + interval '1 day', false, now(), 3),
          '-infinity'::timestamptz, 'unpaid grants nothing');
select is(entitlements._grants_until('active', null, null, false, now(), 3), null,
          'active without a period end grants with no end');

-- 2. The calendar window of a period: one Rust function for check() and the SQL that reads
--    the ledger by window.
select is(entitlements._window_start('day', '2026-03-15 13:45+00'), '2026-03-15 00:00+00'::timestamptz, 'a day starts at 00:00 UTC');
select is(entitlements._window_start('month', '2024-02-29 23:59:59.999999+00'), '2024-02-01 00:00+00'::timestamptz,
          'a month starts on its first day (leap year)');
select is(entitlements._window_start('lifetime', now()), '1970-01-01 00:00+00'::timestamptz, 'lifetime counts from the epoch');
select is(entitlements._window_start('month', 'infinity'), 'infinity'::timestamptz, 'infinity stays infinity');
select is((select count(*) from (select t from generate_series(timestamptz '1890-01-01 00:00+00', timestamptz '2410-01-01 00:00+00',
                                                               interval '6 days 7 hours 13 minutes 1.5 seconds') t
                                  union all
                                  select unnest(array['200000-02-29 23:59:59.999999+00', '294000-02-29 12:00+00',
                                                      '1000-03-01 00:00+00 BC']::timestamptz[])) x
            where entitlements._window_start('month', x.t) <> date_trunc('month', x.t, 'UTC')
               or entitlements._window_start('day', x.t) <> date_trunc('day', x.t, 'UTC')),
          0::bigint, '_window_start agrees with date_trunc(..., ''UTC'') from 1890 to 2410 and far beyond');
select is(entitlements._window_start('month', '4713-11-24 12:00+00 BC'), '4713-11-01 00:00+00 BC'::timestamptz,
          'and near the earliest instant PostgreSQL holds');
select entitlements.subscribe('00000000-0000-0000-0000-00000000a002', 'pro', period_end => now() + interval '40 days') is not null as subscribed \gset
select is((select resets_at from entitlements.check('00000000-0000-0000-0000-00000000a002', 'minutes')),
          entitlements._window_start('month', now()) + interval '1 month',
          'check() resets the month window where _window_start''s next month begins');

-- 3. The statuses: one list for the column, subscribe's validation and the snapshot.
select is((select array_agg(st order by st) from unnest(entitlements.subscription_statuses()) st
            where entitlements._stripe_status_rank(st) is not null),
          (select array_agg(st order by st) from unnest(entitlements.subscription_statuses()) st),
          'the Stripe sync ranks every status');
select is(entitlements._stripe_status_rank('frozen'), null, 'and nothing else');
select throws_ok($$insert into entitlements.subscriptions (customer_id, plan_key, status)
                   values ('00000000-0000-0000-0000-00000000a002', 'pro', 'frozen')$$,
                 '23514', NULL, 'the column refuses a status not in subscription_statuses()');
select throws_like($$select entitlements.subscribe('00000000-0000-0000-0000-00000000a003', 'pro', 'frozen')$$,
                   '%unknown subscription status "frozen"%', 'subscribe refuses it with the list');
select is((select array_agg(k order by k) from jsonb_object_keys(entitlements._task_health_snapshot() -> 'subscriptions_by_status') k),
          (select array_agg(s order by s) from unnest(entitlements.subscription_statuses()) s),
          'the health snapshot counts every status, zeros too');

-- 4. The tasks: one list, with the intervals the worker schedules them at by default.
select is(entitlements.task_names(), (select array_agg(t.name) from entitlements.tasks() t),
          'task_names() is the names of tasks()');
select is((select count(*) from entitlements.tasks() t
            where to_regprocedure('entitlements._task_' || t.name || '()') is null), 0::bigint,
          'every task is the function _task_<name>()');
select is((select count(*) from entitlements.tasks() t where t.every is null or t.every <= interval '0'), 0::bigint,
          'every task has a default interval');

select * from finish();
rollback;
