\set ON_ERROR_STOP 1
\set QUIET 1
-- Maintenance tasks (sql/maintenance/tasks.sql): expiry, correction, the health snapshot, run
-- tracking, failures, the per-task lock, and who may run them.
begin;
select plan(50);
\ir fixtures/catalog.sql
select count(*) as runs_before from entitlements.task_runs \gset

\set trial   '''00000000-0000-0000-0000-0000000007a1'''
\set capped  '''00000000-0000-0000-0000-0000000007a2'''
\set late    '''00000000-0000-0000-0000-0000000007a3'''
\set grace   '''00000000-0000-0000-0000-0000000007a4'''
\set striped '''00000000-0000-0000-0000-0000000007a5'''
\set lapsed  '''00000000-0000-0000-0000-0000000007a6'''
\set granted '''00000000-0000-0000-0000-0000000007a7'''
\set org     '''00000000-0000-0000-0000-0000000007b0'''
\set owner   '''00000000-0000-0000-0000-0000000007b1'''
\set m2      '''00000000-0000-0000-0000-0000000007b2'''
\set m3      '''00000000-0000-0000-0000-0000000007b3'''
\set m4      '''00000000-0000-0000-0000-0000000007b4'''
\set org2    '''00000000-0000-0000-0000-0000000007c0'''
\set org3    '''00000000-0000-0000-0000-0000000007d0'''

-- Bad input writes nothing.
select is(entitlements.task_names(), array['expire_subscriptions', 'correct_entitlements', 'health_snapshot', 'prune_task_runs', 'usage_partitions', 'retention', 'time_events', 'security_scan'],
          'the known tasks');
select throws_ok($$select entitlements.run_task('vacuum_everything')$$, '22023',
                 'unknown maintenance task "vacuum_everything"', 'an unknown task is refused with 22023');
select throws_ok($$select entitlements.run_task(NULL)$$, '22004', NULL, 'a NULL task is refused with 22004');
select is((select count(*) from entitlements.task_runs), :runs_before::bigint, 'and nothing was recorded');

-- Only admins run tasks and read runs.
set local role authenticated;
select throws_ok($$select entitlements.run_task('health_snapshot')$$, '42501', NULL, 'a user cannot run a task');
select throws_ok($$insert into entitlements.task_runs (task, started_at, finished_at, outcome) values ('x', now(), now(), 'ok')$$,
                 '42501', NULL, 'or forge a run');
reset role;
select is((select count(*) from entitlements.task_runs), :runs_before::bigint, 'still nothing recorded');

-- Expiry ---------------------------------------------------------------------------------
-- A trial that ended, a cancel-at-period-end whose period ended, past_due beyond and within
-- the grace period (pro: 3 days), and a Stripe subscription whose trial ended.
select entitlements.subscribe(:trial, 'pro', 'trialing') as sub_trial \gset
update entitlements.subscriptions set trial_end = now() - interval '1 minute' where id = :'sub_trial';
select entitlements.subscribe(:capped, 'pro', period_end => now() + interval '1 day') as sub_capped \gset
select entitlements.cancel(:'sub_capped');
update entitlements.subscriptions
   set current_period_start = now() - interval '1 month', current_period_end = now() - interval '1 minute'
 where id = :'sub_capped';
select entitlements.subscribe(:late, 'pro', 'past_due') as sub_late \gset
update entitlements.subscriptions set status_changed_at = now() - interval '4 days' where id = :'sub_late';
select entitlements.subscribe(:grace, 'pro', 'past_due') as sub_grace \gset
update entitlements.subscriptions set status_changed_at = now() - interval '2 days' where id = :'sub_grace';
select entitlements.subscribe(:striped, 'pro', 'trialing') as sub_striped \gset
update entitlements.subscriptions set trial_end = now() - interval '1 minute', source = 'stripe' where id = :'sub_striped';

select ok(not entitlements.has_feature(:trial, 'agents') and not entitlements.has_feature(:late, 'agents')
          and entitlements.has_feature(:grace, 'agents'), 'before the task runs, access is already right');

select * from entitlements.run_task('expire_subscriptions', 'pgtap') \gset run_
select is(:'run_outcome'::text, 'ok', 'expire_subscriptions runs');
select is(:run_rows_touched::bigint, 3::bigint, 'it touches the three manual subscriptions that ended');
select is(:'run_worker'::text, 'pgtap', 'the worker is recorded');
select ok(:'run_finished_at'::timestamptz >= :'run_started_at'::timestamptz, 'start and end are recorded');
select is((select status || ',' || (ended_at = trial_end) from entitlements.subscriptions where id = :'sub_trial'),
          'canceled,true', 'an ended trial is canceled as of the trial end');
select is((select status || ',' || cancel_at_period_end from entitlements.subscriptions where id = :'sub_capped'),
          'canceled,false', 'a cancellation at period end becomes final');
select is((select status from entitlements.subscriptions where id = :'sub_late'), 'unpaid', 'past_due beyond the grace period becomes unpaid');
select is((select status from entitlements.subscriptions where id = :'sub_grace'), 'past_due', 'past_due within the grace period stays');
select is((select status from entitlements.subscriptions where id = :'sub_striped'), 'trialing', 'a Stripe subscription is left to Stripe');
select is((:'run_details'::jsonb) -> 'stripe_stale', '1'::jsonb, 'and counted as stale');
select is((select reason from entitlements.audit_log where row_key = :'sub_late' and action = 'update' order by id desc limit 1),
          'expire_subscriptions: grace period ended', 'every change is audited with the reason');
select ok(not entitlements.has_feature(:trial, 'agents') and not entitlements.has_feature(:late, 'agents')
          and entitlements.has_feature(:grace, 'agents'), 'access is the same after the tidy-up');
select is((select rows_touched from entitlements.run_task('expire_subscriptions')), 0::bigint, 'a second run finds nothing to do');
select is((select count(*) from entitlements.task_runs where task = 'expire_subscriptions' and id >= :run_id), 2::bigint, 'both runs are recorded');

-- Correction -----------------------------------------------------------------------------
-- An active manual subscription past its period end, a grant past its expiry, an
-- organization over its seats after a downgrade, and one over seats while past_due.
select entitlements.subscribe(:lapsed, 'pro', period_end => now() + interval '1 day') as sub_lapsed \gset
update entitlements.subscriptions
   set current_period_start = now() - interval '1 month', current_period_end = now() - interval '1 hour'
 where id = :'sub_lapsed';
select entitlements.grant_feature(:granted, 'agents', expires_at => now() + interval '1 day', reason => 'promo') as g \gset
update entitlements.grants set starts_at = now() - interval '2 days', expires_at = now() - interval '1 day' where id = :'g';
select entitlements.grant_feature(:granted, 'files', '7', reason => 'forever') as g_open \gset

select entitlements.subscribe(:org, 'team') as sub_org \gset
select entitlements.add_member(:org, :owner, 'owner');
select entitlements.add_member(:org, :m2, 'admin');
select entitlements.add_member(:org, :m3);
select entitlements.add_member(:org, :m4);
select entitlements.change_plan(:'sub_org', 'pro', 'downgrade');
select entitlements.subscribe(:org2, 'team') as sub_org2 \gset
select entitlements.add_member(:org2, :m3);
select entitlements.add_member(:org2, :m4);
select entitlements.subscribe(:org3, 'team') as sub_org3 \gset
select entitlements.add_member(:org3, :m2, 'owner');
select entitlements.add_member(:org3, :m3, 'owner');
select entitlements.change_plan(:'sub_org3', 'pro', 'downgrade');
update entitlements.subscriptions set status = 'past_due' where id = :'sub_org2';
update entitlements.subscriptions set status_changed_at = now() - interval '30 days' where id = :'sub_org2';

select * from entitlements.run_task('correct_entitlements') \gset fix_
select is(:'fix_outcome'::text, 'ok', 'correct_entitlements runs');
select is(:fix_rows_touched::bigint, 5::bigint, 'one subscription, one grant and three members');
select is((select status || ',' || (ended_at = current_period_end) from entitlements.subscriptions where id = :'sub_lapsed'),
          'canceled,true', 'an active subscription past its period is canceled as of its end');
select is((select revoked_at = expires_at from entitlements.grants where id = :'g'), true, 'an expired grant is closed at its expiry');
select is((select revoked_at from entitlements.grants where id = :'g_open'), NULL, 'an open-ended grant is left alone');
select is((select array_agg(user_id order by user_id) from entitlements.members where organization_id = :org),
          array[:owner::uuid], 'the organization keeps as many members as it has seats, owner first');
select is(jsonb_array_length((:'fix_details'::jsonb) -> 'members_removed'), 3, 'the removed members are listed');
select is((select count(*) from entitlements.members where organization_id = :org3), 2::bigint,
          'owners are never removed, even over seats');
select is((:'fix_details'::jsonb) -> 'over_seats_owners' -> 0 ->> 'organization', :org3, 'such an organization is listed');
select is((select count(*) from entitlements.members where organization_id = :org2), 2::bigint,
          'an organization whose subscription is past_due keeps its members');
select is((:'fix_details'::jsonb) -> 'over_seats_pending' -> 0 ->> 'organization', :org2,
          'and is listed as pending');
select ok(exists (select 1 from entitlements.audit_log where table_name = 'entitlements.members' and action = 'delete'
                   and reason like 'correct_entitlements: organization over seats%'), 'removals are audited with the reason');
select is((select rows_touched from entitlements.run_task('correct_entitlements')), 0::bigint, 'a second run finds nothing to do');

-- Failure ---------------------------------------------------------------------------------
-- A task that fails is rolled back, recorded with its error, and reported without raising.
select entitlements.subscribe(:trial, 'pro', 'trialing') as sub_trial2 \gset
update entitlements.subscriptions set trial_end = now() - interval '1 minute' where id = :'sub_trial2';
create function pg_temp.refuse() returns trigger language plpgsql as $$
begin raise exception 'refused by test' using errcode = 'P0001'; end $$;
create trigger refuse before update on entitlements.subscriptions for each row execute function pg_temp.refuse();

set local client_min_messages = error; -- (run_task also raises a WARNING)
select * from entitlements.run_task('expire_subscriptions') \gset bad_
reset client_min_messages;
select is(:'bad_outcome'::text, 'error', 'a failing task is recorded as an error');
select is(:'bad_error'::text, 'refused by test', 'with the error message');
select is((:'bad_details'::jsonb) ->> 'sqlstate', 'P0001', 'and its SQLSTATE');
select is((select status from entitlements.subscriptions where id = :'sub_trial2'), 'trialing', 'its changes are rolled back');
select is((select outcome from entitlements.task_runs where id = :bad_id), 'error', 'the record itself is kept');
drop trigger refuse on entitlements.subscriptions;

-- Snapshot --------------------------------------------------------------------------------
select * from entitlements.run_task('health_snapshot') \gset snap_
select is(:'snap_outcome'::text, 'ok', 'health_snapshot runs');
select is((:'snap_details'::jsonb) -> 'subscriptions_by_status' -> 'unpaid', '1'::jsonb, 'it counts subscriptions by status');
select is((:'snap_details'::jsonb) -> 'task_runs_failed_24h' -> 'expire_subscriptions', '1'::jsonb, 'and failed runs per task');
select is((:'snap_details'::jsonb) -> 'subscriptions_to_tidy', '3'::jsonb,
          'and what is left to tidy (the Stripe trial, the failed expiry, the past_due organization)');

-- Users do not see runs (their details name customers).
set local role authenticated;
select is((select count(*) from entitlements.task_runs), 0::bigint, 'a user sees no task runs');
reset role;

-- The service role (not superuser, RLS applies) runs every task.
set local role service_role;
select is((select array_agg(outcome) from (select (entitlements.run_task(t)).outcome
                                             from unnest(entitlements.task_names()) t) x),
          array['ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok', 'ok'], 'service_role runs every task');
reset role;

-- Retention -------------------------------------------------------------------------------
-- Old runs go after entitlements.task_runs_keep, skipped ones after a day; the latest run of
-- each task stays however old.
insert into entitlements.task_runs (task, started_at, finished_at, outcome, worker)
values ('health_snapshot', now() - interval '200 days', now() - interval '200 days', 'ok', 'old'),
       ('expire_subscriptions', now() - interval '2 days', now() - interval '2 days', 'skipped', 'old'),
       ('expire_subscriptions', now() - interval '12 hours', now() - interval '12 hours', 'skipped', 'recent'),
       ('archaic_task', now() - interval '300 days', now() - interval '300 days', 'ok', 'old');
select * from entitlements.run_task('prune_task_runs') \gset prune_
select is(:prune_rows_touched::bigint, 2::bigint, 'prune_task_runs deletes the old run and the old skipped run');
select is((select array_agg(task || ':' || worker order by id) from entitlements.task_runs where worker in ('old', 'recent')),
          array['expire_subscriptions:recent', 'archaic_task:old'], 'recent skips and the latest run of a task stay');
set local entitlements.task_runs_keep = '1 hour';
select is((select details ->> 'keep' from entitlements.run_task('prune_task_runs')), '01:00:00', 'the retention is a setting');
reset entitlements.task_runs_keep;

-- One run at a time -----------------------------------------------------------------------
-- Another session runs the task while this one holds its lock: that run is skipped.
create extension if not exists dblink;
select entitlements.try_lock_task('health_snapshot') as locked \gset
select is((select outcome from dblink(format('host=127.0.0.1 port=%s dbname=%s user=postgres',
                                              current_setting('port'), current_database()),
                                       $$select outcome from entitlements.run_task('health_snapshot', 'other')$$) as t(outcome text)),
          'skipped', 'a second caller of a running task records a skipped run');

select * from finish();
rollback;
