-- Maintenance tasks with run tracking. Access is always correct at read time
-- (extension/src/rules.rs); these tasks only tidy stored state up, fix rows that disagree
-- with the rules, and take a snapshot an operator wants to see. The worker's scheduler calls
-- entitlements.run_task on intervals; anyone with admin rights can call it from SQL too.
--
--   * Every run is a row of entitlements.task_runs: start, end, rows touched, outcome
--     (ok, error, skipped), the error, the worker, and details (what was changed).
--   * A failing task is rolled back to before it started (a subtransaction), recorded as
--     an error, and reported: run_task returns the row instead of raising, so the record
--     survives.
--   * At most one run of a task at a time across every caller and worker replica: a
--     transaction-level advisory lock keyed by (task_runs' oid, hashtext(task)). Whoever
--     does not get it records a `skipped` run and returns at once; the lock is held until
--     the caller's transaction ends, so runs of one task never overlap.
--   * Subscriptions synced from Stripe are not changed here: Stripe is their source of
--     truth (the worker's reconcile repairs them); stale ones are counted in details.

create table entitlements.task_runs (
    id           bigint generated always as identity primary key,
    task         text not null,
    started_at   timestamptz not null,
    finished_at  timestamptz not null,
    rows_touched bigint not null default 0 check (rows_touched >= 0),
    outcome      text not null check (outcome in ('ok', 'error', 'skipped')),
    error        text,
    -- Which worker (or session) ran it: ENTITLEMENTS_WORKER_ID, else application_name and pid.
    worker       text,
    details      jsonb not null default '{}',
    check (finished_at >= started_at),
    check ((outcome = 'error') = (error is not null))
);
comment on table entitlements.task_runs is
    'One row per maintenance task run (entitlements.run_task): timing, rows touched, outcome, error.';
create index task_runs_task_started on entitlements.task_runs (task, started_at desc);
create index task_runs_started on entitlements.task_runs using brin (started_at);
select pg_catalog.pg_extension_config_dump('entitlements.task_runs', '');
select pg_catalog.pg_extension_config_dump('entitlements.task_runs_id_seq', '');

-- Admins read and record runs, and prune old ones (prune_task_runs); nobody rewrites one.
-- The table is a record itself, so it is not audited row by row (like the usage ledger).
alter table entitlements.task_runs enable row level security;
create policy task_runs_read on entitlements.task_runs for select using (entitlements.is_admin());
create policy task_runs_record on entitlements.task_runs for insert with check (entitlements.is_admin());
create policy task_runs_prune on entitlements.task_runs for delete using (entitlements.is_admin());

-- The maintenance tasks, in one place: each runs entitlements._task_<name>() and the worker
-- schedules it every `every` unless configured otherwise (worker/src/scheduler.rs asks here).
create function entitlements.tasks()
returns table (name text, every interval, description text)
language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select t.name, t.every, t.description
      from (values
        (1, 'expire_subscriptions', interval '1 minute', 'Trials, cancellations and past_due grace that ended get the status the rules give them.'),
        (2, 'correct_entitlements', interval '5 minutes', 'Active subscriptions past their period, organizations over their seats, grants past expiry.'),
        (3, 'health_snapshot', interval '1 minute', 'Counts an operator wants on one page; touches nothing.'),
        (4, 'prune_task_runs', interval '1 hour', 'Task runs older than entitlements.task_runs_keep go.'),
        (5, 'usage_partitions', interval '6 hours', 'Ledger partitions made ahead and old months rolled up; closed counters and old idempotency keys deleted.'),
        (6, 'retention', interval '1 hour', 'Applied and dead Stripe events, delivered notifications, and (when configured) audit rows, past their retention go.'),
        (7, 'time_events', interval '1 minute', 'Trials about to end (trial.ending) and access that ended by time alone (access.suspended), told once each.'),
        (8, 'security_scan', interval '1 minute', 'The security rules: alerts opened or repeated (high and critical go out through the outbox); week-old signals pruned.')
      ) t(n, name, every, description)
     order by t.n
$$;
comment on function entitlements.tasks() is
    'The maintenance tasks entitlements.run_task knows, with the interval the worker runs each at by default.';

create function entitlements.task_names()
returns text[] language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$ select array_agg(t.name) from entitlements.tasks() t $$;
comment on function entitlements.task_names() is 'The maintenance tasks entitlements.run_task knows.';

-- The advisory lock key of a task (two int4 halves). Also used by the worker for tasks it
-- runs itself (the Stripe reconcile), so the same one-at-a-time rule holds for those.
create function entitlements.try_lock_task(task text)
returns boolean language sql volatile
set search_path = pg_catalog, pg_temp
as $$ select pg_try_advisory_xact_lock('entitlements.task_runs'::regclass::oid::integer, hashtext(task)) $$;
comment on function entitlements.try_lock_task(text) is
    'Take the task''s lock until the end of the transaction; false when another session holds it.';

-- When a subscription stops granting, by the one granting rule (rules::grants_until, in
-- Rust): NULL while it grants with no end, -infinity when it grants nothing. Every task
-- below asks this instead of restating the rule.
create function entitlements._grants_until(s entitlements.subscriptions, grace_days integer)
returns timestamptz language sql immutable parallel safe
as $$
    select entitlements._grants_until(s.status, s.trial_end, s.current_period_end, s.cancel_at_period_end,
                                      s.status_changed_at, grace_days)
$$;

-- Does the subscription's status say it grants while the rule says its access has ended?
-- What the tasks tidy up (and count, for subscriptions Stripe owns).
create function entitlements._lapsed(s entitlements.subscriptions, grace_days integer)
returns boolean language sql stable parallel safe
as $$ select g > '-infinity' and g <= entitlements.now() from entitlements._grants_until(s, grace_days) g $$;

-- Expiry --------------------------------------------------------------------------------

-- Manual subscriptions whose trial, cancel-at-period-end period or past_due grace ended
-- move to the status they are in by the rules; each change is audited with a reason.
create function entitlements._task_expire_subscriptions()
returns jsonb language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_trials bigint;
    v_cancels bigint;
    v_grace bigint;
    v_stale_stripe bigint;
begin
    -- A trial that ended without becoming a paid subscription.
    perform set_config('entitlements.reason', 'expire_subscriptions: trial ended', true);
    update entitlements.subscriptions s
       set status = 'canceled', cancel_at_period_end = false,
           canceled_at = coalesce(s.canceled_at, coalesce(s.trial_end, s.current_period_end)),
           ended_at = coalesce(s.trial_end, s.current_period_end)
      from entitlements.plans p
     where p.key = s.plan_key and s.source = 'manual' and s.status = 'trialing'
       and entitlements._grants_until(s, p.grace_days) <= entitlements.now();
    get diagnostics v_trials = row_count;

    -- Canceled at period end, and the period is over: the cancellation is final.
    perform set_config('entitlements.reason', 'expire_subscriptions: canceled period ended', true);
    update entitlements.subscriptions s
       set cancel_at_period_end = false, ended_at = coalesce(s.ended_at, s.current_period_end)
      from entitlements.plans p
     where p.key = s.plan_key and s.source = 'manual' and s.status = 'canceled' and s.cancel_at_period_end
       and entitlements._grants_until(s, p.grace_days) <= entitlements.now();
    get diagnostics v_cancels = row_count;

    -- past_due beyond the plan's grace period: unpaid, as Stripe does when retries run out.
    perform set_config('entitlements.reason', 'expire_subscriptions: grace period ended', true);
    update entitlements.subscriptions s
       set status = 'unpaid'
      from entitlements.plans p
     where p.key = s.plan_key and s.source = 'manual' and s.status = 'past_due'
       and entitlements._grants_until(s, p.grace_days) <= entitlements.now();
    get diagnostics v_grace = row_count;
    perform set_config('entitlements.reason', '', true);

    select count(*) into v_stale_stripe from entitlements.subscriptions s
      join entitlements.plans p on p.key = s.plan_key
     where s.source = 'stripe' and s.status <> 'active' and entitlements._lapsed(s, p.grace_days);

    return jsonb_build_object(
        'rows_touched', v_trials + v_cancels + v_grace,
        'trials_ended', v_trials,
        'cancellations_final', v_cancels,
        'grace_ended', v_grace,
        'stripe_stale', v_stale_stripe);
end
$$;

-- Correction ----------------------------------------------------------------------------

-- Rows that disagree with the rules:
--   * manual `active` subscriptions past their period end (nothing renewed them): canceled
--     as of the period end;
--   * organizations with more members than their seats allow (after a downgrade or a lapse):
--     the newest members beyond the limit are removed, plain members before admins, owners
--     never (an organization keeps someone who can manage it); the removed members are
--     listed in details (and the audit log keeps their rows). Organizations whose
--     subscription is in a recoverable state (past_due, unpaid, paused, incomplete) are
--     left alone and listed, so a late payment does not cost them their members;
--   * grants past their expiry that are still open: closed (revoked_at = expires_at).
create function entitlements._task_correct_entitlements()
returns jsonb language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_lapsed bigint;
    v_grants bigint;
    v_removed jsonb := '[]'::jsonb;
    v_pending jsonb := '[]'::jsonb;
    v_owners_over jsonb := '[]'::jsonb;
    v_stale_stripe bigint;
    r record;
    v_limit double precision;
    v_excess bigint;
    v_gone jsonb;
begin
    perform set_config('entitlements.reason', 'correct_entitlements: active past its period end', true);
    update entitlements.subscriptions s
       set status = 'canceled', cancel_at_period_end = false,
           canceled_at = coalesce(s.canceled_at, s.current_period_end), ended_at = s.current_period_end
      from entitlements.plans p
     where p.key = s.plan_key and s.source = 'manual' and s.status = 'active'
       and entitlements._grants_until(s, p.grace_days) <= entitlements.now();
    get diagnostics v_lapsed = row_count;

    select count(*) into v_stale_stripe from entitlements.subscriptions s
      join entitlements.plans p on p.key = s.plan_key
     where s.source = 'stripe' and s.status = 'active' and entitlements._lapsed(s, p.grace_days);

    perform set_config('entitlements.reason', 'correct_entitlements: grant expired', true);
    update entitlements.grants g set revoked_at = g.expires_at
     where g.revoked_at is null and g.expires_at <= entitlements.now();
    get diagnostics v_grants = row_count;

    if exists (select 1 from entitlements.features f where f.key = 'seats') then
        for r in
            select m.organization_id as org, count(*) as used
              from entitlements.members m group by m.organization_id order by m.organization_id
        loop
            -- The same serialization as entitlements._enforce_seats: no add_member races us.
            perform pg_advisory_xact_lock('entitlements.members'::regclass::oid::integer, hashtext(r.org::text));
            v_limit := entitlements._feature_limit(r.org, 'seats');
            continue when v_limit is null or r.used <= v_limit;
            if exists (select 1 from entitlements.subscriptions s
                        where s.customer_id = r.org and s.status in ('past_due', 'unpaid', 'paused', 'incomplete')) then
                v_pending := v_pending || jsonb_build_object('organization', r.org, 'members', r.used, 'seats', v_limit);
                continue;
            end if;
            v_excess := r.used - floor(v_limit)::bigint;
            perform set_config('entitlements.reason',
                format('correct_entitlements: organization over seats (%s members, %s seats)', r.used, v_limit), true);
            with gone as (
                delete from entitlements.members m
                 where m.organization_id = r.org
                   and m.user_id in (select x.user_id from entitlements.members x
                                      where x.organization_id = r.org and x.role <> 'owner'
                                      order by x.role = 'admin', x.created_at desc, x.user_id
                                      limit v_excess)
                returning m.user_id, m.role)
            select coalesce(jsonb_agg(jsonb_build_object('organization', r.org, 'user_id', g.user_id, 'role', g.role)), '[]')
              into v_gone from gone g;
            v_removed := v_removed || v_gone;
            if jsonb_array_length(v_gone) < v_excess then
                v_owners_over := v_owners_over || jsonb_build_object(
                    'organization', r.org, 'members', r.used - jsonb_array_length(v_gone), 'seats', v_limit);
            end if;
        end loop;
    end if;
    perform set_config('entitlements.reason', '', true);

    return jsonb_build_object(
        'rows_touched', v_lapsed + v_grants + jsonb_array_length(v_removed),
        'lapsed_subscriptions', v_lapsed,
        'expired_grants', v_grants,
        'members_removed', v_removed,
        'over_seats_pending', v_pending,
        'over_seats_owners', v_owners_over,
        'stripe_stale', v_stale_stripe);
end
$$;

-- Snapshot ------------------------------------------------------------------------------

-- Counts an operator wants on one page; touches nothing.
create function entitlements._task_health_snapshot()
returns jsonb language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select jsonb_build_object(
        'rows_touched', 0,
        -- Every status, so one that drops to zero reads 0 rather than vanishing.
        'subscriptions_by_status', (select jsonb_object_agg(st.status, (select count(*) from entitlements.subscriptions s
                                                                         where s.status = st.status))
                                      from unnest(entitlements.subscription_statuses()) st(status)),
        'subscriptions_by_plan', (select coalesce(jsonb_object_agg(plan_key, n), '{}')
                                    from (select s.plan_key, count(*) as n from entitlements.subscriptions s
                                           where s.status in ('trialing', 'active', 'past_due')
                                           group by s.plan_key) x),
        'subscriptions_from_stripe', (select count(*) from entitlements.subscriptions s where s.source = 'stripe'),
        -- Status says it grants, the rules say it no longer does: what expiry/correction will tidy.
        'subscriptions_to_tidy', (select count(*) from entitlements.subscriptions s
                                    join entitlements.plans p on p.key = s.plan_key
                                   where entitlements._lapsed(s, p.grace_days)),
        'customers', (select count(*) from entitlements.customers c where c.kind = 'user'),
        'organizations', (select count(*) from entitlements.customers c where c.kind = 'organization'),
        'members', (select count(*) from entitlements.members),
        'grants_open', (select count(*) from entitlements.grants g
                         where g.revoked_at is null and (g.expires_at is null or g.expires_at > entitlements.now())),
        'grants_expired_open', (select count(*) from entitlements.grants g
                                 where g.revoked_at is null and g.expires_at <= entitlements.now()),
        'plans_active', (select count(*) from entitlements.plans p where p.active),
        'audit_rows_24h', (select count(*) from entitlements.audit_log a where a.at > entitlements.now() - interval '24 hours'),
        'task_runs_failed_24h', (select coalesce(jsonb_object_agg(task, n), '{}')
                                   from (select t.task, count(*) as n from entitlements.task_runs t
                                          where t.outcome = 'error' and t.started_at > entitlements.now() - interval '24 hours'
                                          group by t.task) x),
        'task_last_ok', (select coalesce(jsonb_object_agg(task, at), '{}')
                           from (select t.task, max(t.finished_at) as at from entitlements.task_runs t
                                  where t.outcome = 'ok' group by t.task) x))
$$;

-- Retention -----------------------------------------------------------------------------

-- Runs older than the GUC entitlements.task_runs_keep (default 90 days) go; skipped runs
-- (one per replica and interval) after a day. The latest run of each task always stays.
create function entitlements._task_prune_task_runs()
returns jsonb language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_keep interval := coalesce(nullif(current_setting('entitlements.task_runs_keep', true), '')::interval,
                                interval '90 days');
    v_skipped bigint;
    v_old bigint;
begin
    delete from entitlements.task_runs t
     where t.outcome = 'skipped' and t.started_at < entitlements.now() - least(v_keep, interval '1 day');
    get diagnostics v_skipped = row_count;
    delete from entitlements.task_runs t
     where t.started_at < entitlements.now() - v_keep
       and t.started_at < (select max(l.started_at) from entitlements.task_runs l where l.task = t.task);
    get diagnostics v_old = row_count;
    return jsonb_build_object('rows_touched', v_skipped + v_old, 'skipped_deleted', v_skipped,
                              'older_deleted', v_old, 'keep', v_keep::text);
end
$$;

-- Running -------------------------------------------------------------------------------

create function entitlements.run_task(task text, worker text default null)
returns entitlements.task_runs language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_run entitlements.task_runs;
    v_result jsonb;
    v_state text;
    v_message text;
    v_detail text;
begin
    if task is null then
        raise exception 'task must not be NULL' using errcode = '22004';
    end if;
    if not task = any (entitlements.task_names()) then
        raise exception 'unknown maintenance task "%"', task
            using errcode = '22023', hint = 'known tasks: ' || array_to_string(entitlements.task_names(), ', ');
    end if;
    perform entitlements._require_admin('run_task');

    v_run.task := task;
    v_run.worker := coalesce(nullif(btrim(worker), ''),
                             nullif(current_setting('application_name', true), '') || ':' || pg_backend_pid(),
                             'backend:' || pg_backend_pid());
    if not entitlements.try_lock_task(task) then
        v_run.started_at := clock_timestamp();
        v_run.finished_at := v_run.started_at;
        v_run.outcome := 'skipped';
        v_run.details := jsonb_build_object('reason', 'another run of this task is in progress');
    else
        -- After the lock: a run's start never precedes the end of the previous one.
        v_run.started_at := clock_timestamp();
        begin
            -- Every task of entitlements.tasks() is the function _task_<name>; the name was
            -- checked against that list above, so this runs nothing else.
            execute format('select entitlements.%I()', '_task_' || task) into v_result;
            v_run.outcome := 'ok';
            v_run.rows_touched := coalesce((v_result ->> 'rows_touched')::bigint, 0);
            v_run.details := v_result - 'rows_touched';
        exception when others then
            -- The task's changes are rolled back with the subtransaction; the record is not.
            get stacked diagnostics v_state = returned_sqlstate, v_message = message_text, v_detail = pg_exception_detail;
            perform set_config('entitlements.reason', '', true);
            v_run.outcome := 'error';
            v_run.rows_touched := 0;
            v_run.error := v_message;
            v_run.details := jsonb_strip_nulls(jsonb_build_object('sqlstate', v_state, 'detail', nullif(v_detail, '')));
            raise warning 'maintenance task % failed: % (SQLSTATE %)', task, v_message, v_state;
        end;
        v_run.finished_at := clock_timestamp();
    end if;

    insert into entitlements.task_runs (task, started_at, finished_at, rows_touched, outcome, error, worker, details)
    values (v_run.task, v_run.started_at, v_run.finished_at, coalesce(v_run.rows_touched, 0), v_run.outcome,
            v_run.error, v_run.worker, coalesce(v_run.details, '{}'))
    returning * into v_run;
    return v_run;
end
$$;
comment on function entitlements.run_task(text, text) is
    'Run a maintenance task (see entitlements.task_names()) and return its recorded run; '
    'a failure is recorded and returned (outcome error), a run while another is in progress is skipped. Admins only.';
