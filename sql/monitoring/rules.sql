-- Security rules: each looks at a window of signals or of the audit log and names the
-- subjects over its threshold; the security_scan task (monitoring/alerts.sql) turns what they
-- find into alerts. The rules ship with defaults (security_rule_defaults()); admins change
-- any of enabled, threshold, window, severity and config with configure_security_rule, kept
-- in entitlements.security_rules (only what differs from the defaults, so a dump restores
-- into a new install without colliding with shipped rows).
--
-- Signals are dated by the engine's clock (entitlements.now()); the audit log, task runs and
-- delivery attempts by real time, and their rules measure their window in real time.

create function entitlements.security_rule_defaults()
returns table (rule text, enabled boolean, threshold integer, window_length interval, severity text,
               config jsonb, description text)
language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select r.rule, r.enabled, r.threshold, r.window_length, r.severity, r.config, r.description
      from (values
        (1, 'refusal_burst', true, 5, interval '5 minutes', 'medium', '{}'::jsonb,
         'One principal (user or role) refused admin functions or acting for others (42501) this many times.'),
        (2, 'privilege_change', true, 1, interval '1 hour', 'high', '{}'::jsonb,
         'An admin was added or widened to every tenant; critical when by a non-admin path (a database role, no admin user) or to oneself.'),
        (3, 'mass_grants', true, 10, interval '10 minutes', 'medium', '{}'::jsonb,
         'One actor gave this many grants (quota boosts, feature grants, denies, discounts).'),
        (4, 'quota_abuse', true, 50, interval '10 minutes', 'medium', '{}'::jsonb,
         'One customer got this many over-limit answers (PT429, try_consume refused).'),
        (5, 'feature_probing', true, 20, interval '10 minutes', 'low', '{}'::jsonb,
         'One customer asked this many times for features its plan does not include (PT403).'),
        (6, 'webhook_signature', true, 5, interval '10 minutes', 'high', '{}'::jsonb,
         'Incoming webhooks refused (signature, timestamp) this many times from one source.'),
        (7, 'delivery_failures', true, 5, interval '30 minutes', 'medium', '{}'::jsonb,
         'Deliveries to one webhook endpoint (or email) failed this many times.'),
        (8, 'task_failures', true, 3, interval '30 minutes', 'medium', '{}'::jsonb,
         'One maintenance task failed this many times.'),
        (9, 'off_hours_admin', false, 1, interval '1 hour', 'low',
         '{"timezone": "UTC", "from": "07:00", "to": "20:00", "days": [1, 2, 3, 4, 5]}'::jsonb,
         'Admin changes (catalog, grants, admins, endpoints, templates) outside the configured hours and days (ISO: 1 is Monday); off until configured.'),
        (10, 'customer_many_admins', true, 3, interval '30 minutes', 'medium', '{}'::jsonb,
         'A customer''s grants or subscriptions were changed by this many different actors.'),
        (11, 'sign_in_failures', true, 10, interval '10 minutes', 'high', '{}'::jsonb,
         'Console sign-ins refused (unknown, expired or revoked admin tokens, access tokens that do not verify) this many times from one client address.')
      ) r(n, rule, enabled, threshold, window_length, severity, config, description)
     order by r.n
$$;
comment on function entitlements.security_rule_defaults() is
    'The security rules shipped with the extension and their default settings.';

create table entitlements.security_rules (
    rule          text primary key check (length(rule) <= 63),
    enabled       boolean,
    threshold     integer check (threshold between 1 and 1000000),
    window_length interval check (window_length between interval '1 minute' and interval '7 days'),
    severity      text check (severity in ('info', 'low', 'medium', 'high', 'critical')),
    config        jsonb check (jsonb_typeof(config) = 'object' and entitlements._valid_json(config, 'security_rules.config')),
    updated_at    timestamptz not null default entitlements.now()
);
comment on table entitlements.security_rules is
    'What admins changed of the security rules'' defaults (NULL: the default). Read them with security_rules().';
select pg_catalog.pg_extension_config_dump('entitlements.security_rules', '');
alter table entitlements.security_rules enable row level security;
create policy security_rules_read on entitlements.security_rules for select using (entitlements.is_admin());
create policy security_rules_admin on entitlements.security_rules for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());
select entitlements.enable_audit('entitlements.security_rules');

-- Unknown rules and bad hours are refused where they are written, so the scan never meets one.
create function entitlements._check_security_rule()
returns trigger language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_config jsonb;
begin
    if not exists (select 1 from entitlements.security_rule_defaults() d where d.rule = new.rule) then
        raise exception 'unknown security rule "%"', new.rule
            using errcode = '22023',
                  hint = 'known rules: ' || (select string_agg(d.rule, ', ') from entitlements.security_rule_defaults() d);
    end if;
    if new.rule = 'off_hours_admin' and new.config is not null then
        v_config := (select d.config from entitlements.security_rule_defaults() d where d.rule = new.rule) || new.config;
        perform entitlements._office_hours_check(v_config);
    end if;
    new.updated_at := entitlements.now();
    return new;
end
$$;
create trigger security_rules_check before insert or update on entitlements.security_rules
    for each row execute function entitlements._check_security_rule();

-- off_hours_admin's config: {"timezone", "from", "to" (HH:MM, to after from), "days" (1..7)}.
create function entitlements._office_hours_check(config jsonb)
returns void language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    if not exists (select 1 from pg_timezone_names z where z.name = config ->> 'timezone') then
        raise exception 'config.timezone must be a time zone name, not %', coalesce(config ->> 'timezone', 'NULL')
            using errcode = '22023';
    end if;
    if coalesce(config ->> 'from', '') !~ '^([01][0-9]|2[0-3]):[0-5][0-9]$'
       or coalesce(config ->> 'to', '') !~ '^([01][0-9]|2[0-4]):[0-5][0-9]$'
       or (config ->> 'to') <= (config ->> 'from') then
        raise exception 'config.from and config.to must be HH:MM with from before to' using errcode = '22023';
    end if;
    if jsonb_typeof(config -> 'days') is distinct from 'array'
       or exists (select 1 from jsonb_array_elements(config -> 'days') d
                   where jsonb_typeof(d) <> 'number' or d::text not in ('1', '2', '3', '4', '5', '6', '7')) then
        raise exception 'config.days must be an array of ISO weekdays 1 (Monday) to 7' using errcode = '22023';
    end if;
end
$$;

-- The rules in force: the defaults with what admins changed.
create function entitlements.security_rules()
returns table (rule text, enabled boolean, threshold integer, window_length interval, severity text,
               config jsonb, description text, changed boolean)
language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select d.rule, coalesce(r.enabled, d.enabled), coalesce(r.threshold, d.threshold),
           coalesce(r.window_length, d.window_length), coalesce(r.severity, d.severity),
           d.config || coalesce(r.config, '{}'), d.description, r.rule is not null
      from entitlements.security_rule_defaults() d
      left join entitlements.security_rules r on r.rule = d.rule
$$;
comment on function entitlements.security_rules() is
    'The security rules with the settings in force (defaults, and what admins changed). Admins see their changes.';

-- Change a rule's settings (NULL keeps the current one). Global admins only.
create function entitlements.configure_security_rule(rule text, enabled boolean default null, threshold integer default null,
                                                     window_length interval default null, severity text default null,
                                                     config jsonb default null)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_admin('configure_security_rule');
    if rule is null then
        raise exception 'rule must not be NULL' using errcode = '22004';
    end if;
    insert into entitlements.security_rules as r (rule, enabled, threshold, window_length, severity, config)
    values (rule, enabled, threshold, window_length, severity, config)
    on conflict on constraint security_rules_pkey do update
       set enabled = coalesce(excluded.enabled, r.enabled),
           threshold = coalesce(excluded.threshold, r.threshold),
           window_length = coalesce(excluded.window_length, r.window_length),
           severity = coalesce(excluded.severity, r.severity),
           config = coalesce(r.config, '{}') || coalesce(excluded.config, '{}');
end
$$;
comment on function entitlements.configure_security_rule(text, boolean, integer, interval, text, jsonb) is
    'Change a security rule''s settings (NULL keeps what is set). Global admins only.';

-- What a rule found: one row per subject over the threshold.
create type entitlements.security_finding as (
    subject     text,
    customer_id uuid,
    events      bigint,
    first_at    timestamptz,
    last_at     timestamptz,
    severity    text,
    details     jsonb
);

-- A subject that is a customer id: the customer (and through it the tenant).
create function entitlements._subject_customer(subject text)
returns uuid language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select case when subject ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then subject::uuid end
$$;

-- Signals of one kind per subject over the threshold in the window (by the engine clock).
-- The details listed are the 20 most counted (a caller chooses some of them).
create function entitlements._signal_findings(p_kind text, p_threshold integer, p_window interval, p_severity text)
returns setof entitlements.security_finding language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select s.subject, entitlements._subject_customer(s.subject), s.total, s.first_at, s.last_at, p_severity,
           jsonb_build_object('by_detail', (
               select jsonb_object_agg(d.detail, d.count)
                 from (select x.detail, sum(x.count) as count from entitlements.security_signals x
                        where x.kind = p_kind and x.subject = s.subject and x.last_at > entitlements.now() - p_window
                        group by x.detail order by 2 desc, 1 limit 20) d))
      from (select x.subject, sum(x.count)::bigint as total, min(x.first_at) as first_at, max(x.last_at) as last_at
              from entitlements.security_signals x
             where x.kind = p_kind and x.last_at > entitlements.now() - p_window
             group by x.subject
            having sum(x.count) >= p_threshold) s
$$;

-- Who made an audited change: the user id, else the role.
create function entitlements._audit_actor(a entitlements.audit_log)
returns text language sql immutable parallel safe
as $$ select coalesce(a.actor::text, 'role:' || a.actor_role) $$;

-- Database roles that administer the engine (superusers and members of entitlements_admin)
-- as the last scan saw them, so one granted since is found. Filled at install, not dumped: a
-- restored database starts from the roles of its own cluster.
create table entitlements.security_admin_roles (
    role_name text primary key,
    superuser boolean not null,
    seen_at   timestamptz not null default entitlements.now()
);
comment on table entitlements.security_admin_roles is
    'Database roles with admin powers over the engine as the security scan last saw them (privilege_change).';
alter table entitlements.security_admin_roles enable row level security;
create policy security_admin_roles_read on entitlements.security_admin_roles for select using (entitlements.is_admin());

create function entitlements._admin_roles()
returns table (role_name text, superuser boolean) language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select r.rolname::text, r.rolsuper from pg_roles r
     where r.rolsuper or pg_has_role(r.oid, 'entitlements_admin', 'MEMBER')
$$;
insert into entitlements.security_admin_roles (role_name, superuser) select * from entitlements._admin_roles();

-- privilege_change: every new admin row, and a tenant admin made global. Critical when the
-- actor is the new admin, or no admin user made it (a database role by direct SQL), or
-- the actor user was not an admin at all. And, always critical, a database role that became
-- a superuser or got entitlements_admin since the last scan (nothing audits a GRANT).
create function entitlements._rule_privilege_change(p_threshold integer, p_window interval, p_severity text)
returns setof entitlements.security_finding language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select 'role:' || r.role_name, null::uuid, 1::bigint, entitlements.now(), entitlements.now(), 'critical',
           jsonb_build_object('role', r.role_name, 'superuser', r.superuser,
                              'change', case when r.superuser then 'superuser' else 'granted entitlements_admin' end)
      from entitlements._admin_roles() r
     where not exists (select 1 from entitlements.security_admin_roles k
                        where k.role_name = r.role_name and k.superuser >= r.superuser)
    union all
    select a.new_values ->> 'user_id', null::uuid, count(*), min(a.at), max(a.at),
           case when bool_or(a.actor is null or a.actor::text = a.new_values ->> 'user_id'
                             or not exists (select 1 from entitlements.admins x
                                             where x.user_id = a.actor and x.user_id::text <> a.new_values ->> 'user_id'))
                then 'critical' else p_severity end,
           jsonb_build_object('changes', jsonb_agg(jsonb_build_object(
               'at', a.at, 'action', a.action, 'by', entitlements._audit_actor(a),
               'tenant_id', a.new_values -> 'tenant_id') order by a.id))
      from entitlements.audit_log a
     where a.table_name = 'entitlements.admins' and a.at > statement_timestamp() - p_window
       and (a.action = 'insert'
            or (a.action = 'update' and a.new_values -> 'tenant_id' = 'null'::jsonb
                and a.old_values -> 'tenant_id' <> 'null'::jsonb))
     group by a.new_values ->> 'user_id'
    having count(*) >= p_threshold
$$;

create function entitlements._rule_mass_grants(p_threshold integer, p_window interval, p_severity text)
returns setof entitlements.security_finding language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select entitlements._audit_actor(a), a.actor, count(*), min(a.at), max(a.at), p_severity,
           jsonb_build_object('customers', count(distinct a.new_values ->> 'customer_id'),
                              'kinds', jsonb_agg(distinct a.new_values ->> 'kind'))
      from entitlements.audit_log a
     where a.table_name in ('entitlements.grants', 'entitlements.discounts') and a.action = 'insert'
       and a.at > statement_timestamp() - p_window
     group by entitlements._audit_actor(a), a.actor
    having count(*) >= p_threshold
$$;

create function entitlements._rule_delivery_failures(p_threshold integer, p_window interval, p_severity text)
returns setof entitlements.security_finding language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce('endpoint:' || d.endpoint_id::text, 'email'), null::uuid, count(*), min(t.at), max(t.at), p_severity,
           jsonb_build_object('last_error', (array_agg(t.error order by t.at desc))[1],
                              'deliveries', count(distinct d.id))
      from entitlements.delivery_attempts t
      join entitlements.deliveries d on d.id = t.delivery_id
     where not t.ok and t.at > statement_timestamp() - p_window
     group by coalesce('endpoint:' || d.endpoint_id::text, 'email')
    having count(*) >= p_threshold
$$;

create function entitlements._rule_task_failures(p_threshold integer, p_window interval, p_severity text)
returns setof entitlements.security_finding language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select 'task:' || r.task, null::uuid, count(*), min(r.started_at), max(r.finished_at), p_severity,
           jsonb_build_object('last_error', (array_agg(r.error order by r.started_at desc))[1])
      from entitlements.task_runs r
     where r.outcome = 'error' and r.started_at > statement_timestamp() - p_window
     group by r.task
    having count(*) >= p_threshold
$$;

create function entitlements._rule_off_hours_admin(p_threshold integer, p_window interval, p_severity text, p_config jsonb)
returns setof entitlements.security_finding language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select entitlements._audit_actor(a), a.actor, count(*), min(a.at), max(a.at), p_severity,
           jsonb_build_object('tables', jsonb_agg(distinct a.table_name), 'timezone', p_config ->> 'timezone')
      from entitlements.audit_log a
      cross join lateral (select a.at at time zone (p_config ->> 'timezone') as local) l
     where a.table_name in ('entitlements.features', 'entitlements.plans', 'entitlements.plan_entitlements',
                            'entitlements.grants', 'entitlements.admins', 'entitlements.webhook_endpoints',
                            'entitlements.email_templates', 'entitlements.security_rules', 'entitlements.coupons',
                            'entitlements.discounts')
       and a.at > statement_timestamp() - p_window
       and (not (p_config -> 'days') @> to_jsonb(extract(isodow from l.local)::integer)
            or l.local::time < (p_config ->> 'from')::time
            or l.local::time >= case when p_config ->> 'to' = '24:00' then time '24:00' else (p_config ->> 'to')::time end)
     group by entitlements._audit_actor(a), a.actor
    having count(*) >= p_threshold
$$;

create function entitlements._rule_customer_many_admins(p_threshold integer, p_window interval, p_severity text)
returns setof entitlements.security_finding language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select c.customer::text, c.customer, count(*), min(c.at), max(c.at), p_severity,
           jsonb_build_object('actors', jsonb_agg(distinct c.actor))
      from (select coalesce(a.new_values ->> 'customer_id', a.old_values ->> 'customer_id')::uuid as customer,
                   a.at, entitlements._audit_actor(a) as actor
              from entitlements.audit_log a
             where a.table_name in ('entitlements.grants', 'entitlements.subscriptions', 'entitlements.discounts')
               and a.at > statement_timestamp() - p_window) c
     where c.customer is not null
     group by c.customer
    having count(distinct c.actor) >= p_threshold
$$;

-- Every finding of one rule with its settings.
create function entitlements._rule_findings(p_rule text, p_threshold integer, p_window interval, p_severity text,
                                            p_config jsonb)
returns setof entitlements.security_finding language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    case p_rule
        when 'refusal_burst' then
            return query select * from entitlements._signal_findings('permission_refused', p_threshold, p_window, p_severity);
        when 'quota_abuse' then
            return query select * from entitlements._signal_findings('quota_refused', p_threshold, p_window, p_severity);
        when 'feature_probing' then
            return query select * from entitlements._signal_findings('feature_refused', p_threshold, p_window, p_severity);
        when 'webhook_signature' then
            return query select * from entitlements._signal_findings('webhook_refused', p_threshold, p_window, p_severity);
        when 'sign_in_failures' then
            return query select * from entitlements._signal_findings('sign_in_refused', p_threshold, p_window, p_severity);
        when 'privilege_change' then
            return query select * from entitlements._rule_privilege_change(p_threshold, p_window, p_severity);
        when 'mass_grants' then
            return query select * from entitlements._rule_mass_grants(p_threshold, p_window, p_severity);
        when 'delivery_failures' then
            return query select * from entitlements._rule_delivery_failures(p_threshold, p_window, p_severity);
        when 'task_failures' then
            return query select * from entitlements._rule_task_failures(p_threshold, p_window, p_severity);
        when 'off_hours_admin' then
            return query select * from entitlements._rule_off_hours_admin(p_threshold, p_window, p_severity, p_config);
        when 'customer_many_admins' then
            return query select * from entitlements._rule_customer_many_admins(p_threshold, p_window, p_severity);
        else
            raise exception 'security rule "%" has no evaluation', p_rule using errcode = '55000';
    end case;
end
$$;
