-- Alerts and incidents. The security_scan task runs every enabled rule (monitoring/rules.sql)
-- and keeps one open alert per rule and subject (its dedup key): a finding with evidence newer
-- than the alert's adds one to its count and moves last_seen, instead of a new row. High and
-- critical alerts go out through the outbox (security.alert: app webhooks, email to admins).
-- Incidents group alerts and move open -> acknowledged -> resolved (and back to open), the
-- database refusing any other move; every change is audited. An alert or incident about a
-- customer of a tenant (store) belongs to that tenant, and its admins see it; the rest are for
-- global admins. Nobody writes these tables directly (no grants): the scan and the incident
-- functions are SECURITY DEFINER, check the real caller, and set who did what themselves, so
-- an alert cannot be pre-empted, edited or closed and a note cannot be signed in another name.

create function entitlements._severity_rank(severity text)
returns integer language sql immutable parallel safe strict
return array_position(array['info', 'low', 'medium', 'high', 'critical'], severity);

create table entitlements.security_incidents (
    id              bigint generated always as identity primary key,
    tenant_id       uuid,
    title           text not null check (length(title) between 1 and 200),
    severity        text not null check (severity in ('info', 'low', 'medium', 'high', 'critical')),
    status          text not null default 'open' check (status in ('open', 'acknowledged', 'resolved')),
    assignee        uuid,
    opened_at       timestamptz not null default entitlements.now(),
    opened_by       text not null check (length(opened_by) <= 100),
    acknowledged_at timestamptz,
    acknowledged_by text check (length(acknowledged_by) <= 100),
    resolved_at     timestamptz,
    resolved_by     text check (length(resolved_by) <= 100),
    resolution      text check (length(resolution) between 1 and 10000),
    reopened        integer not null default 0 check (reopened >= 0),
    check ((status = 'resolved') = (resolved_at is not null and resolved_by is not null and resolution is not null)),
    check ((status = 'acknowledged') <= (acknowledged_at is not null and acknowledged_by is not null))
);
create index security_incidents_open on entitlements.security_incidents (tenant_id, status) where status <> 'resolved';
comment on table entitlements.security_incidents is
    'Incidents: alerts grouped, open -> acknowledged -> resolved (reopen goes back to open). Change them with the incident functions.';
select pg_catalog.pg_extension_config_dump('entitlements.security_incidents', '');
select pg_catalog.pg_extension_config_dump('entitlements.security_incidents_id_seq', '');
alter table entitlements.security_incidents enable row level security;
create policy security_incidents_admin on entitlements.security_incidents for all
    using (entitlements.is_admin(tenant_id)) with check (entitlements.is_admin(tenant_id));
select entitlements.enable_audit('entitlements.security_incidents');

create table entitlements.security_alerts (
    id             bigint generated always as identity primary key,
    rule           text not null check (length(rule) <= 63),
    subject        text not null check (length(subject) <= 200),
    -- One open alert per key: rule and subject.
    dedup_key      text not null check (dedup_key = rule || ':' || subject),
    tenant_id      uuid,
    customer_id    uuid,
    severity       text not null check (severity in ('info', 'low', 'medium', 'high', 'critical')),
    status         text not null default 'open' check (status in ('open', 'closed')),
    incident_id    bigint references entitlements.security_incidents (id),
    -- How many times the rule found it (each time with newer evidence), and the evidence of
    -- the last finding: how many events, until when.
    count          integer not null default 1 check (count >= 1),
    events         bigint not null check (events >= 0),
    first_seen     timestamptz not null default entitlements.now(),
    last_seen      timestamptz not null default entitlements.now(),
    evidence_until timestamptz not null,
    details        jsonb not null default '{}' check (jsonb_typeof(details) = 'object'),
    closed_at      timestamptz,
    check ((status = 'closed') = (closed_at is not null))
);
create unique index security_alerts_one_open on entitlements.security_alerts (dedup_key) where status = 'open';
create index security_alerts_incident on entitlements.security_alerts (incident_id) where incident_id is not null;
create index security_alerts_open on entitlements.security_alerts (tenant_id, severity) where status = 'open';
comment on table entitlements.security_alerts is
    'What the security rules found: one open alert per rule and subject, count and last_seen grow on repeats.';
select pg_catalog.pg_extension_config_dump('entitlements.security_alerts', '');
select pg_catalog.pg_extension_config_dump('entitlements.security_alerts_id_seq', '');
alter table entitlements.security_alerts enable row level security;
create policy security_alerts_read on entitlements.security_alerts for select using (entitlements.is_admin(tenant_id));
-- Tenant admins file their tenant's alerts into incidents and close them (alerts.sql functions);
-- only global admins (the scan) write the rest.
create policy security_alerts_admin on entitlements.security_alerts for all
    using (entitlements.is_admin(tenant_id)) with check (entitlements.is_admin(tenant_id));

create table entitlements.incident_notes (
    id          bigint generated always as identity primary key,
    incident_id bigint not null references entitlements.security_incidents (id),
    at          timestamptz not null default entitlements.now(),
    author      text not null check (length(author) <= 100),
    body        text not null check (length(body) between 1 and 10000)
);
create index incident_notes_incident on entitlements.incident_notes (incident_id, at);
comment on table entitlements.incident_notes is 'Notes on incidents (who, when, what); never edited.';
select pg_catalog.pg_extension_config_dump('entitlements.incident_notes', '');
select pg_catalog.pg_extension_config_dump('entitlements.incident_notes_id_seq', '');
alter table entitlements.incident_notes enable row level security;
create policy incident_notes_read on entitlements.incident_notes for select
    using (exists (select 1 from entitlements.security_incidents i where i.id = incident_id));
create policy incident_notes_add on entitlements.incident_notes for insert
    with check (exists (select 1 from entitlements.security_incidents i where i.id = incident_id));
select entitlements.enable_audit('entitlements.incident_notes');

-- The state machine, for every path (the functions below, and direct writes by admins).
create function entitlements._incident_transition()
returns trigger language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_op = 'INSERT' then
        if new.status <> 'open' or new.reopened <> 0 then
            raise exception 'a new incident is open' using errcode = '55000';
        end if;
        return new;
    end if;
    if new.tenant_id is distinct from old.tenant_id or new.opened_at <> old.opened_at or new.opened_by <> old.opened_by then
        raise exception 'an incident''s tenant and opening are fixed' using errcode = '55000';
    end if;
    if new.status = old.status then
        if old.status = 'resolved' and (new.assignee, new.severity, new.title, new.resolution, new.resolved_at)
                                       is distinct from (old.assignee, old.severity, old.title, old.resolution, old.resolved_at) then
            raise exception 'incident % is resolved: reopen it first', old.id using errcode = '55000';
        end if;
        return new;
    end if;
    if (old.status, new.status) not in (('open', 'acknowledged'), ('open', 'resolved'), ('acknowledged', 'resolved'),
                                        ('resolved', 'open')) then
        raise exception 'incident % cannot go from % to %', old.id, old.status, new.status
            using errcode = '55000', hint = 'open -> acknowledged -> resolved; resolved -> open (reopen).';
    end if;
    if new.status = 'open' and old.status = 'resolved' and new.reopened <> old.reopened + 1 then
        raise exception 'reopening counts in reopened' using errcode = '55000';
    end if;
    return new;
end
$$;
create trigger security_incidents_transition before insert or update on entitlements.security_incidents
    for each row execute function entitlements._incident_transition();

-- An alert filed into an incident belongs to its tenant; a closed alert stays closed.
create function entitlements._alert_check()
returns trigger language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if new.incident_id is not null and (tg_op = 'INSERT' or new.incident_id is distinct from old.incident_id)
       and not exists (select 1 from entitlements.security_incidents i
                        where i.id = new.incident_id and i.tenant_id is not distinct from new.tenant_id) then
        raise exception 'alert % and incident % belong to different tenants', new.id, new.incident_id
            using errcode = '22023';
    end if;
    if tg_op = 'UPDATE' and old.status = 'closed' and new.status = 'open' then
        raise exception 'alert % is closed; the rule opens a new one when it finds it again', old.id
            using errcode = '55000';
    end if;
    return new;
end
$$;
create trigger security_alerts_check before insert or update on entitlements.security_alerts
    for each row execute function entitlements._alert_check();

-- Is the real caller (outside these definer functions) an admin of `tenant` (NULL: global)?
create function entitlements._caller_administers(tenant uuid)
returns boolean language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select entitlements._role_is_privileged(entitlements._outer_role()) or entitlements._is_listed_admin(tenant)
$$;

-- The scan ---------------------------------------------------------------------------------

-- High and critical alerts, once per alert and severity, through the outbox: app webhooks
-- that want security.alert, and email to the admins (outbox/delivery.sql). No customer id on
-- the event: the customer it is about must not read it.
create function entitlements._alert_event(a entitlements.security_alerts)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    if entitlements._severity_rank(a.severity) >= entitlements._severity_rank('high') then
        perform entitlements._outbox_record('security.alert', null, format('security.alert:%s:%s', a.id, a.severity),
            jsonb_build_object('alert_id', a.id, 'rule', a.rule, 'subject', a.subject, 'severity', a.severity,
                               'tenant_id', a.tenant_id, 'customer_id', a.customer_id, 'count', a.count,
                               'events', a.events, 'first_seen', a.first_seen, 'last_seen', a.last_seen,
                               'details', a.details));
    end if;
end
$$;

-- Runs every enabled rule; each finding opens an alert or repeats the open one. Definer: it
-- reads the whole audit log and signals and writes alerts; global admins only.
create function entitlements._task_security_scan()
returns jsonb language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    r record;
    f entitlements.security_finding;
    a entitlements.security_alerts;
    v_opened bigint := 0::bigint;
    v_repeated bigint := 0::bigint;
    v_pruned bigint;
    v_severity text;
begin
    perform entitlements._require_caller_admin('security_scan');
    for r in select * from entitlements.security_rules() x where x.enabled order by x.rule loop
        for f in select * from entitlements._rule_findings(r.rule, r.threshold, r.window_length, r.severity, r.config) loop
            v_severity := coalesce(f.severity, r.severity);
            select * into a from entitlements.security_alerts x
             where x.dedup_key = r.rule || ':' || f.subject and x.status = 'open'
             for update;
            if a.id is null then
                insert into entitlements.security_alerts (rule, subject, dedup_key, tenant_id, customer_id, severity,
                                                          events, evidence_until, details)
                -- A store's alert only when it is about one of the store's customers; one about
                -- an actor (an admin's grants, refusals, hours) is global: a tenant admin must
                -- not close what an admin of another scope did.
                values (r.rule, f.subject, r.rule || ':' || f.subject,
                        case when r.rule in ('quota_abuse', 'feature_probing', 'customer_many_admins')
                             then (select c.tenant_id from entitlements.customers c where c.id = f.customer_id) end,
                        f.customer_id, v_severity, f.events, f.last_at, coalesce(f.details, '{}'))
                returning * into a;
                v_opened := v_opened + 1;
                perform entitlements._alert_event(a);
            elsif f.last_at > a.evidence_until then
                update entitlements.security_alerts x
                   set count = x.count + 1, last_seen = entitlements.now(), events = f.events,
                       evidence_until = f.last_at, details = coalesce(f.details, '{}'),
                       severity = case when entitlements._severity_rank(v_severity) > entitlements._severity_rank(x.severity)
                                       then v_severity else x.severity end
                 where x.id = a.id
                returning * into a;
                v_repeated := v_repeated + 1;
                perform entitlements._alert_event(a);
            end if;
        end loop;
    end loop;
    -- The admin roles seen now are the ones the next scan compares with.
    if exists (select 1 from entitlements.security_rules() x where x.rule = 'privilege_change' and x.enabled) then
        delete from entitlements.security_admin_roles k
         where not exists (select 1 from entitlements._admin_roles() x where x.role_name = k.role_name);
        insert into entitlements.security_admin_roles as k (role_name, superuser)
        select x.role_name, x.superuser from entitlements._admin_roles() x
        on conflict (role_name) do update set superuser = excluded.superuser, seen_at = entitlements.now()
         where k.superuser is distinct from excluded.superuser;
    end if;
    -- Signals older than a week serve no rule (a window is at most 7 days).
    delete from entitlements.security_signals s where s.last_at < entitlements.now() - interval '7 days';
    get diagnostics v_pruned = row_count;
    return jsonb_build_object('rows_touched', v_opened + v_repeated + v_pruned, 'alerts_opened', v_opened,
                              'alerts_repeated', v_repeated, 'signals_pruned', v_pruned);
end
$$;

-- Incidents ------------------------------------------------------------------------------------

-- The incident, locked, if the real caller administers its tenant; 22023 when there is none
-- or it is another tenant's (the same answer: nothing is revealed).
create function entitlements._incident_for_update(p_incident bigint)
returns entitlements.security_incidents language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v entitlements.security_incidents;
begin
    if p_incident is null then
        raise exception 'incident must not be NULL' using errcode = '22004';
    end if;
    select * into v from entitlements.security_incidents i where i.id = p_incident for update;
    if v.id is null or not entitlements._caller_administers(v.tenant_id) then
        raise exception 'no incident %', p_incident using errcode = '22023';
    end if;
    return v;
end
$$;

-- Open an incident for alerts (all of one tenant, none in another incident). Its tenant is
-- theirs; with no alerts, `tenant` (NULL: global admins').
create function entitlements.open_incident(title text, alerts bigint[] default '{}', severity text default null,
                                           assignee uuid default null, tenant uuid default null)
returns bigint language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_tenants uuid[];
    v_tenant uuid := tenant;
    v_id bigint;
    v_severity text := severity;
begin
    if array_position(alerts, null) is not null then
        raise exception 'alerts must not contain NULL' using errcode = '22004';
    end if;
    if coalesce(cardinality(alerts), 0) > 0 then
        select array_agg(distinct a.tenant_id),
               (array_agg(a.severity order by entitlements._severity_rank(a.severity) desc))[1]
          into v_tenants, v_severity
          from entitlements.security_alerts a where a.id = any (alerts) and entitlements._caller_administers(a.tenant_id);
        v_severity := coalesce(severity, v_severity);
        if (select count(*) from entitlements.security_alerts a
             where a.id = any (alerts) and entitlements._caller_administers(a.tenant_id))
           <> (select count(distinct x) from unnest(alerts) x) then
            raise exception 'no alert with some of the ids %', alerts using errcode = '22023';
        end if;
        if cardinality(v_tenants) > 1 then
            raise exception 'the alerts belong to different tenants' using errcode = '22023';
        end if;
        v_tenant := v_tenants[1];
        if tenant is not null and tenant is distinct from v_tenant then
            raise exception 'the alerts belong to another tenant than %', tenant using errcode = '22023';
        end if;
    end if;
    perform entitlements._require(entitlements._caller_administers(v_tenant), 'open_incident');
    insert into entitlements.security_incidents (tenant_id, title, severity, assignee, opened_by)
    values (v_tenant, title, coalesce(v_severity, 'medium'), assignee, entitlements._principal())
    returning id into v_id;
    if coalesce(cardinality(alerts), 0) > 0 then
        perform entitlements.attach_alerts(v_id, alerts);
    end if;
    return v_id;
end
$$;
comment on function entitlements.open_incident(text, bigint[], text, uuid, uuid) is
    'Open an incident for alerts (of one tenant); its severity is the highest of theirs unless given. Admins of that tenant.';

-- File alerts into an incident (open, of its tenant, in no other incident).
create function entitlements.attach_alerts(incident bigint, alerts bigint[])
returns integer language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v entitlements.security_incidents := entitlements._incident_for_update(incident);
    v_n integer;
begin
    perform entitlements._require(entitlements._caller_administers(v.tenant_id), 'attach_alerts');
    if alerts is null or cardinality(alerts) = 0 or array_position(alerts, null) is not null then
        raise exception 'alerts must be a non-empty array of ids' using errcode = '22023';
    end if;
    if v.status = 'resolved' then
        raise exception 'incident % is resolved: reopen it first', v.id using errcode = '55000';
    end if;
    if exists (select 1 from entitlements.security_alerts a
                where a.id = any (alerts) and a.tenant_id is not distinct from v.tenant_id
                  and a.incident_id is not null and a.incident_id <> v.id) then
        raise exception 'an alert of % is in another incident', alerts using errcode = '22023';
    end if;
    update entitlements.security_alerts a set incident_id = v.id
     where a.id = any (alerts) and a.tenant_id is not distinct from v.tenant_id;
    get diagnostics v_n = row_count;
    if v_n <> (select count(distinct x) from unnest(alerts) x) then
        raise exception 'no alert with some of the ids %', alerts using errcode = '22023';
    end if;
    return v_n;
end
$$;
comment on function entitlements.attach_alerts(bigint, bigint[]) is 'File alerts into an incident of their tenant.';

create function entitlements._incident_note(p_incident bigint, p_body text)
returns void language sql volatile
set search_path = pg_catalog, pg_temp
as $$
    insert into entitlements.incident_notes (incident_id, author, body)
    select p_incident, entitlements._principal(), p_body where nullif(btrim(p_body), '') is not null
$$;

create function entitlements.add_incident_note(incident bigint, body text)
returns void language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v entitlements.security_incidents := entitlements._incident_for_update(incident);
begin
    perform entitlements._require(entitlements._caller_administers(v.tenant_id), 'add_incident_note');
    if nullif(btrim(body), '') is null then
        raise exception 'body must not be empty' using errcode = '22023';
    end if;
    perform entitlements._incident_note(v.id, body);
end
$$;
comment on function entitlements.add_incident_note(bigint, text) is 'Add a note to an incident.';

create function entitlements.acknowledge_incident(incident bigint, note text default null)
returns entitlements.security_incidents language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v entitlements.security_incidents := entitlements._incident_for_update(incident);
begin
    perform entitlements._require(entitlements._caller_administers(v.tenant_id), 'acknowledge_incident');
    if v.status <> 'open' then
        raise exception 'incident % is %, not open', v.id, v.status using errcode = '55000';
    end if;
    update entitlements.security_incidents i
       set status = 'acknowledged', acknowledged_at = entitlements.now(), acknowledged_by = entitlements._principal()
     where i.id = v.id
    returning * into v;
    perform entitlements._incident_note(v.id, note);
    return v;
end
$$;
comment on function entitlements.acknowledge_incident(bigint, text) is 'open -> acknowledged.';

-- The assignee is an admin who can see the incident (a global one, or of its tenant).
create function entitlements.assign_incident(incident bigint, assignee uuid, note text default null)
returns entitlements.security_incidents language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v entitlements.security_incidents := entitlements._incident_for_update(incident);
begin
    perform entitlements._require(entitlements._caller_administers(v.tenant_id), 'assign_incident');
    if assignee is not null and not entitlements._user_administers(assignee, v.tenant_id) then
        raise exception 'user % is not an admin of this incident''s tenant', assignee using errcode = '22023';
    end if;
    update entitlements.security_incidents i set assignee = assign_incident.assignee where i.id = v.id
    returning * into v;
    perform entitlements._incident_note(v.id, note);
    return v;
end
$$;
comment on function entitlements.assign_incident(bigint, uuid, text) is
    'Assign an incident (NULL: nobody) to an admin of its tenant or a global admin.';

-- Is `user_id` listed as an admin of `tenant` (or globally)? Answers only to that tenant's
-- admins, who may assign its incidents.
create function entitlements._user_administers(user_id uuid, tenant uuid)
returns boolean language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if not entitlements._caller_administers(tenant) then
        return false;
    end if;
    return exists (select 1 from entitlements.admins a
                    where a.user_id = _user_administers.user_id and (a.tenant_id is null or a.tenant_id = tenant));
end
$$;

-- Resolving closes the incident's open alerts: the rule opens a new one if it finds it again.
create function entitlements.resolve_incident(incident bigint, resolution text)
returns entitlements.security_incidents language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v entitlements.security_incidents := entitlements._incident_for_update(incident);
begin
    perform entitlements._require(entitlements._caller_administers(v.tenant_id), 'resolve_incident');
    if nullif(btrim(resolution), '') is null then
        raise exception 'resolution must say what was found and done' using errcode = '22023';
    end if;
    update entitlements.security_incidents i
       set status = 'resolved', resolved_at = entitlements.now(), resolved_by = entitlements._principal(),
           resolution = resolve_incident.resolution
     where i.id = v.id
    returning * into v;
    update entitlements.security_alerts a set status = 'closed', closed_at = entitlements.now()
     where a.incident_id = v.id and a.status = 'open';
    return v;
end
$$;
comment on function entitlements.resolve_incident(bigint, text) is
    '-> resolved, with who and when; its open alerts close.';

create function entitlements.reopen_incident(incident bigint, reason text)
returns entitlements.security_incidents language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v entitlements.security_incidents := entitlements._incident_for_update(incident);
begin
    perform entitlements._require(entitlements._caller_administers(v.tenant_id), 'reopen_incident');
    if nullif(btrim(reason), '') is null then
        raise exception 'reason must not be empty' using errcode = '22023';
    end if;
    if v.status <> 'resolved' then
        raise exception 'incident % is %, not resolved', v.id, v.status using errcode = '55000';
    end if;
    update entitlements.security_incidents i
       set status = 'open', reopened = i.reopened + 1, resolved_at = null, resolved_by = null, resolution = null,
           acknowledged_at = null, acknowledged_by = null
     where i.id = v.id
    returning * into v;
    perform entitlements._incident_note(v.id, 'reopened: ' || reason);
    return v;
end
$$;
comment on function entitlements.reopen_incident(bigint, text) is 'resolved -> open, with why.';

-- Open alerts by severity, for /metrics and the console.
create function entitlements.open_alert_counts()
returns table (severity text, open bigint) language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select s.severity, count(a.id)
      from unnest(array['info', 'low', 'medium', 'high', 'critical']) with ordinality s(severity, n)
      left join entitlements.security_alerts a on a.severity = s.severity and a.status = 'open'
     group by s.severity, s.n
     order by s.n
$$;
comment on function entitlements.open_alert_counts() is 'Open alerts per severity (the ones the caller may see).';
