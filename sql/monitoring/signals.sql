-- Security signals: what was refused, counted per kind, subject and minute (never a row per
-- call). The hot paths count in memory and a short-lived background worker writes the counts
-- in a transaction of its own (extension/src/monitoring/signals.rs), so a refusal whose
-- transaction rolls back (consume's PT429) is still counted. The worker reports what it sees
-- itself (refused Stripe webhooks) through record_signal. The rules (monitoring/rules.sql)
-- read these rows, and also the audit log, task runs and delivery attempts.
--
--   quota_refused       PT429 of consume, allowed = false of try_consume     subject: customer, detail: feature
--   feature_refused     PT403: a feature the plan does not include           subject: customer, detail: feature
--   permission_refused  42501 of an admin function or of acting for another  subject: user id or role:<name>, detail: action
--   webhook_refused     an incoming webhook the worker refused (signature)   subject: the source (stripe), detail: why
--   sign_in_refused     a console sign-in the worker refused (bad, expired or  subject: the client address, detail: why
--                       revoked token; an access token that does not verify)
--   signals_dropped     counts a backend could not keep (more than 256 keys a second)

create table entitlements.security_signals (
    kind         text not null check (kind in ('quota_refused', 'feature_refused', 'permission_refused',
                                               'webhook_refused', 'sign_in_refused', 'signals_dropped')),
    subject      text not null check (length(subject) <= 200),
    detail       text not null default '' check (length(detail) <= 200),
    -- The minute the refusals fell in, by the engine's clock (entitlements.now()).
    window_start timestamptz not null check (date_trunc('minute', window_start) = window_start),
    count        bigint not null check (count > 0),
    first_at     timestamptz not null,
    last_at      timestamptz not null,
    primary key (kind, subject, detail, window_start),
    check (first_at <= last_at)
);
create index security_signals_recent on entitlements.security_signals (kind, last_at);
comment on table entitlements.security_signals is
    'Refusals counted per kind, subject, detail and minute, for the security rules. Global admins read them.';
select pg_catalog.pg_extension_config_dump('entitlements.security_signals', '');
alter table entitlements.security_signals enable row level security;
create policy security_signals_read on entitlements.security_signals for select using (entitlements.is_admin());

-- Adds counts (the flush worker's, record_signal's): one upsert per key.
create function entitlements._add_signals(entries jsonb)
returns bigint language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_rows bigint;
begin
    insert into entitlements.security_signals as s (kind, subject, detail, window_start, count, first_at, last_at)
    select x.kind, left(coalesce(x.subject, ''), 200), left(coalesce(x.detail, ''), 200),
           timestamptz 'epoch' + x.window_us * interval '1 microsecond', sum(x.count),
           timestamptz 'epoch' + min(x.first_us) * interval '1 microsecond',
           timestamptz 'epoch' + max(x.last_us) * interval '1 microsecond'
      from jsonb_to_recordset(entries) as x(kind text, subject text, detail text, window_us bigint,
                                            first_us bigint, last_us bigint, count bigint)
     where x.count > 0
     group by 1, 2, 3, 4
    on conflict (kind, subject, detail, window_start) do update
       set count = s.count + excluded.count,
           first_at = least(s.first_at, excluded.first_at),
           last_at = greatest(s.last_at, excluded.last_at);
    get diagnostics v_rows = row_count;
    return v_rows;
end
$$;

-- What the flush worker calls (as the bootstrap superuser, with counts it made itself).
create function entitlements._record_signals(entries jsonb)
returns void language sql volatile
set search_path = pg_catalog, pg_temp
as $$ select entitlements._add_signals(entries) $$;

-- A refusal the worker saw (an incoming webhook whose signature did not verify). Global admins
-- only (the worker's role); definer, as nobody writes signals directly.
create function entitlements.record_signal(kind text, subject text, detail text default '', count integer default 1)
returns void language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_now bigint := (extract(epoch from entitlements._statement_now()) * 1000000)::bigint;
begin
    perform entitlements._require_caller_admin('record_signal');
    if kind is null or kind not in ('webhook_refused', 'sign_in_refused') then
        raise exception 'kind must be webhook_refused or sign_in_refused, not %', coalesce(kind, 'NULL')
            using errcode = '22023';
    end if;
    if subject is null or length(subject) not between 1 and 200 or length(coalesce(detail, '')) > 200 then
        raise exception 'subject must be 1 to 200 characters and detail at most 200' using errcode = '22023';
    end if;
    if count is null or count not between 1 and 1000000 then
        raise exception 'count must be between 1 and 1000000' using errcode = '22023';
    end if;
    perform entitlements._add_signals(jsonb_build_array(jsonb_build_object(
        'kind', kind, 'subject', subject, 'detail', coalesce(detail, ''),
        'window_us', v_now - v_now % 60000000, 'first_us', v_now, 'last_us', v_now, 'count', count)));
end
$$;
comment on function entitlements.record_signal(text, text, text, integer) is
    'Count a refusal seen outside the database (the worker: webhook_refused, sign_in_refused). Admins only.';
