-- Access notices: access.suspended when a subscription stops granting, access.restored when a
-- suspended one grants again, trial.ending some days before a trial ends.
--
-- Access ends either by a write (a status change, an immediate cancel: the subscriptions
-- trigger in events.sql tells it in that transaction) or by time alone (a trial, a period or
-- past_due grace that ran out: the time_events task tells it, whether or not anything
-- tidied the row up). Each subscription has one row here with what was last told, and each
-- telling locks and moves that row, so every change is told once however many workers run
-- the task and whichever of the two paths comes first.

create table entitlements.access_notices (
    subscription_id uuid primary key references entitlements.subscriptions (id) on delete cascade,
    customer_id     uuid not null,
    -- pending: has not granted yet (incomplete); granting; suspended: access.suspended told.
    state           text not null check (state in ('pending', 'granting', 'suspended')),
    -- When it stops granting, as of its last change (entitlements._grants_until): NULL never.
    until           timestamptz,
    -- access events told: each one's dedup key carries its number.
    told            integer not null default 0,
    -- The trial end a trial.ending was told for.
    trial_told_for  timestamptz,
    updated_at      timestamptz not null default entitlements.now()
);
create index access_notices_due on entitlements.access_notices (until) where state = 'granting';
comment on table entitlements.access_notices is
    'What was last told about each subscription''s access (access.suspended / access.restored, trial.ending). Admins read.';
select pg_catalog.pg_extension_config_dump('entitlements.access_notices', '');
alter table entitlements.access_notices enable row level security;
create policy access_notices_admin on entitlements.access_notices for select using (entitlements.is_admin());

-- Why a subscription in this state stopped granting.
create function entitlements._access_lost_reason(status text, cancel_at_period_end boolean)
returns text language sql immutable parallel safe
return case when status = 'trialing' then 'trial_ended'
            when status = 'active' then 'period_ended'
            when status = 'past_due' then 'grace_ended'
            when status = 'canceled' and cancel_at_period_end then 'period_ended'
            else status end;

-- Bring a subscription's notice up to date with its row `s` (as of now), telling what
-- changed: access.suspended (`reason`, else why `s` itself stopped) or access.restored; the
-- kind told, or NULL. Runs as the owner: from the subscriptions trigger (definer) and the task.
create function entitlements._access_notice(s entitlements.subscriptions, reason text default null)
returns text language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_until timestamptz := entitlements._grants_until(
        s, (select p.grace_days from entitlements.plans p where p.key = s.plan_key));
    v_granting boolean := v_until is null or v_until > entitlements.now();
    v_n entitlements.access_notices;
    v_kind text;
begin
    select * into v_n from entitlements.access_notices n where n.subscription_id = s.id for update;
    if not found then
        insert into entitlements.access_notices (subscription_id, customer_id, state, until)
        values (s.id, s.customer_id, case when v_granting then 'granting' else 'pending' end, v_until);
        return null;
    end if;
    v_kind := case when v_granting and v_n.state = 'suspended' then 'access.restored'
                   when not v_granting and v_n.state = 'granting' then 'access.suspended' end;
    update entitlements.access_notices n
       set until = v_until,
           state = case when v_granting then 'granting' when v_kind is not null then 'suspended' else n.state end,
           told = n.told + (v_kind is not null)::int, updated_at = entitlements.now()
     where n.subscription_id = s.id
       and (n.until is distinct from v_until or v_kind is not null or (v_granting and n.state = 'pending'));
    if v_kind is not null then
        perform entitlements._outbox_record(v_kind, s.customer_id, format('%s:%s:%s', v_kind, s.id, v_n.told + 1),
            jsonb_build_object('subscription_id', s.id, 'plan', s.plan_key, 'status', s.status)
            || case when v_kind = 'access.suspended'
                    then jsonb_build_object('reason', coalesce(reason, entitlements._access_lost_reason(s.status, s.cancel_at_period_end)),
                                            -- When time ended it, the instant kept at the last
                                            -- change (told late, by the task or by the write
                                            -- that tidied the row up); else now, by this write.
                                            'access_ended_at', case when v_n.until > '-infinity' and v_n.until <= entitlements.now()
                                                                    then v_n.until else entitlements.now() end)
                    else '{}' end);
    end if;
    return v_kind;
end
$$;

-- The time_events task: trials about to end (settings.trial_ending_notice ahead) and access
-- that ended by time alone, each told once. Rows another transaction holds are skipped: it
-- is a writer of that subscription (whose trigger tells it) or another run of this task.
-- The subscription is locked too (shared), so what is told is its latest committed row,
-- never one a concurrent renewal has just replaced.
-- Definer: the notices are the extension's own bookkeeping, written by no role; the caller
-- must be an admin (run_task's check, asked again of the real caller).
create function entitlements._task_time_events()
returns jsonb language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_notice interval := (entitlements._settings()).trial_ending_notice;
    v_s entitlements.subscriptions;
    v_trials bigint := 0::bigint;
    v_ended bigint := 0::bigint;
begin
    perform entitlements._require_caller_admin('time_events');
    for v_s in
        select s.* from entitlements.subscriptions s
          join entitlements.access_notices n on n.subscription_id = s.id
         where s.status = 'trialing' and s.trial_end > entitlements.now() and s.trial_end <= entitlements.now() + v_notice
           and n.trial_told_for is distinct from s.trial_end
           for update of n skip locked for share of s skip locked
    loop
        update entitlements.access_notices n set trial_told_for = v_s.trial_end, updated_at = entitlements.now()
         where n.subscription_id = v_s.id;
        perform entitlements._outbox_record('trial.ending', v_s.customer_id,
            format('trial_ending:%s:%s', v_s.id, to_char(v_s.trial_end at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')),
            jsonb_build_object('subscription_id', v_s.id, 'plan', v_s.plan_key, 'trial_end', v_s.trial_end,
                               'days_left', ceil(extract(epoch from v_s.trial_end - entitlements.now()) / 86400)));
        v_trials := v_trials + 1;
    end loop;

    -- Due by the instant kept at the last change; past_due rows always, since their grace
    -- is the plan's now (a catalog change may have shortened it).
    for v_s in
        select s.* from entitlements.subscriptions s
          join entitlements.access_notices n on n.subscription_id = s.id
         where n.state = 'granting' and (n.until <= entitlements.now() or s.status = 'past_due')
           for update of n skip locked for share of s skip locked
    loop
        if entitlements._access_notice(v_s) is not null then
            v_ended := v_ended + 1;
        end if;
    end loop;
    return jsonb_build_object('rows_touched', v_trials + v_ended, 'trials_ending', v_trials, 'access_ended', v_ended);
end
$$;
