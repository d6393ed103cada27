-- Bounded growth: the operational settings (retention periods, how far ahead the ledger's
-- partitions are made, how often a Stripe event is retried), and the two tasks the worker
-- schedules to keep every growing table bounded:
--   * usage_partitions: the ledger's monthly partitions made ahead, old months retired
--     (rolled into usage_rollup), closed counters and old idempotency keys deleted;
--   * retention: applied and dead Stripe events, and (only when configured) audit rows,
--     older than their retention. The audit log records each purge.
-- task_runs has its own task (prune_task_runs, maintenance/tasks.sql).

-- One row, written by admins (RLS) and audited. Without the row every setting has its
-- default (_settings()), so a fresh install and a restored dump agree.
create table entitlements.settings (
    singleton           boolean primary key default true check (singleton),
    -- NULL: keep the audit log forever (the default).
    audit_log_keep      interval check (audit_log_keep >= interval '30 days'),
    stripe_events_keep  interval not null default interval '90 days' check (stripe_events_keep >= interval '1 day'),
    usage_keep          interval not null default interval '13 months' check (usage_keep >= interval '1 month'),
    usage_months_ahead  integer not null default 3 check (usage_months_ahead between 1 and 24),
    stripe_max_attempts integer not null default 20 check (stripe_max_attempts between 1 and 1000),
    updated_at          timestamptz not null default entitlements.now(),
    -- Provisioning (provisioning/): how long a server stays suspended without access before
    -- it is terminated, failures before it is 'failed', the domain suffix of default domains.
    server_retention    interval not null default interval '30 days' check (server_retention >= interval '0'),
    server_max_attempts integer not null default 8 check (server_max_attempts between 1 and 1000),
    server_domain       text not null default 'matrix.example.com' check (entitlements._valid_domain(server_domain)),
    -- Notifications (outbox/): failed sends before a delivery is dead; how long events whose
    -- deliveries all ended are kept.
    delivery_max_attempts integer not null default 10 check (delivery_max_attempts between 1 and 1000),
    outbox_keep         interval not null default interval '30 days' check (outbox_keep >= interval '1 day'),
    -- How long before a trial ends trial.ending is sent (outbox/access.sql).
    trial_ending_notice interval not null default interval '3 days'
                        check (trial_ending_notice between interval '0' and interval '60 days')
);
comment on table entitlements.settings is
    'Retention periods and queue limits (one row; absent = defaults). Admins only; every change is audited.';
select pg_catalog.pg_extension_config_dump('entitlements.settings', '');
alter table entitlements.settings enable row level security;
create policy settings_admin on entitlements.settings for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());
select entitlements.enable_audit('entitlements.settings');

-- The settings row, or the columns' defaults (in column order) when there is none.
create function entitlements._settings()
returns entitlements.settings language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce((select s from entitlements.settings s),
                    row(true, null, interval '90 days', interval '13 months', 3, 20, entitlements.now(),
                        interval '30 days', 8, 'matrix.example.com', 10, interval '30 days',
                        interval '3 days')::entitlements.settings)
$$;

create function entitlements._task_usage_partitions()
returns jsonb language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_settings entitlements.settings := entitlements._settings();
    v_made integer;
    v_dropped integer;
begin
    v_made := entitlements.ensure_usage_partitions(v_settings.usage_months_ahead);
    v_dropped := entitlements.drop_usage_partitions(v_settings.usage_keep);
    return jsonb_build_object('rows_touched', v_made + v_dropped, 'created', v_made, 'dropped', v_dropped,
                              'months_ahead', v_settings.usage_months_ahead, 'keep', v_settings.usage_keep::text);
end
$$;

-- Definer: admins may not delete audit rows themselves (nobody may, but this task), and the
-- append-only trigger lets this function's deletes through (audit/audit.sql).
create function entitlements._task_retention()
returns jsonb language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_settings entitlements.settings := entitlements._settings();
    v_events bigint;
    v_outbox bigint;
    v_audit bigint := 0::bigint;
    v_cutoff timestamptz;
begin
    perform entitlements._require_caller_admin('retention');
    delete from entitlements.stripe_events e
     where coalesce(e.applied_at, e.dead_at) < entitlements.now() - v_settings.stripe_events_keep;
    get diagnostics v_events = row_count;
    -- A delivery nobody sent within the retention (no SMTP configured, say) ends dead, so that
    -- its event can go too; then events whose deliveries all ended (theirs go with them).
    update entitlements.deliveries d set status = 'dead', last_error = 'not delivered within settings.outbox_keep'
     where d.status = 'pending' and d.created_at < entitlements.now() - v_settings.outbox_keep;
    delete from entitlements.outbox o
     where o.created_at < entitlements.now() - v_settings.outbox_keep
       and not exists (select 1 from entitlements.deliveries d where d.event_id = o.id and d.status = 'pending');
    get diagnostics v_outbox = row_count;
    if v_settings.audit_log_keep is not null then
        v_cutoff := entitlements.now() - v_settings.audit_log_keep;
        perform set_config('entitlements.audit_retention', 'on', true);
        delete from entitlements.audit_log a where a.at < v_cutoff;
        get diagnostics v_audit = row_count;
        perform set_config('entitlements.audit_retention', '', true);
        if v_audit > 0 then
            insert into entitlements.audit_log (actor, actor_role, action, table_name, new_values, reason)
            values (entitlements.current_user_id(), entitlements._actor_role(), 'retention', 'entitlements.audit_log',
                    jsonb_build_object('deleted', v_audit, 'before', v_cutoff), 'retention');
        end if;
    end if;
    return jsonb_build_object('rows_touched', v_events + v_outbox + v_audit, 'stripe_events_deleted', v_events,
                              'outbox_events_deleted', v_outbox,
                              'audit_rows_deleted', v_audit, 'stripe_events_keep', v_settings.stripe_events_keep::text,
                              'audit_log_keep', coalesce(v_settings.audit_log_keep::text, 'forever'));
end
$$;
