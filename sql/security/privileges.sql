-- Privileges, last. Nothing is granted to PUBLIC but the checks app policies call for any
-- role and what an audited app table's writers need; the API and admin roles
-- (sql/security/roles.sql) get the rest explicitly, and RLS (roles.sql) decides row by row.
-- tests/privileges.allow lists every function with its SECURITY DEFINER flag and
-- grantees; `make test` holds the database to it, so a new function needs an entry.

revoke all on schema entitlements from public;
grant usage on schema entitlements to public;
revoke all on all tables in schema entitlements from public;
revoke all on all sequences in schema entitlements from public;
revoke all on all functions in schema entitlements from public;

-- Any role: the checks (an app's RLS policy calls them as whoever queries its table) and
-- the version has_feature reads as its caller (a number, nothing else), and the clock.
grant execute on function entitlements.current_user_id(), entitlements.has_feature(text),
    entitlements.has_feature(uuid, text), entitlements.now() to public;
grant select on entitlements.cache_version to public;
-- Auditing any app table: its owner attaches the trigger, its writers run it.
grant execute on function entitlements.enable_audit(regclass), entitlements._is_extension_table(oid),
    entitlements._audit_app_row(), entitlements._audit_append(oid, text, text, jsonb, jsonb) to public;

-- API roles and admins: every table to read (RLS filters rows), the write paths' tables to
-- write (the functions run as the caller, RLS refuses what they may not do), every function
-- but the owner-only ones below.
grant select on all tables in schema entitlements to entitlements_api, entitlements_admin;
grant insert, update, delete on entitlements.features, entitlements.plans, entitlements.plan_entitlements,
    entitlements.customers, entitlements.subscriptions, entitlements.members, entitlements.grants,
    entitlements.admins, entitlements.stripe_events, entitlements.stripe_subscriptions, entitlements.settings,
    entitlements.leases, entitlements.coupons, entitlements.discounts
    to entitlements_api, entitlements_admin;
-- Servers: added through create_server (the rest of a row is the worker's, through the admin
-- functions), never deleted (a name is never reused); the secrets are for global admins.
-- Updates and events: global admins only (RLS), the worker's role or a listed admin.
grant insert (customer_id, name, domains), update on entitlements.server_records to entitlements_api, entitlements_admin;
grant insert on entitlements.outbox to entitlements_api, entitlements_admin;
-- A task run is recorded and pruned, never rewritten.
grant insert, delete on entitlements.task_runs to entitlements_api, entitlements_admin;
grant usage on all sequences in schema entitlements to entitlements_api, entitlements_admin;
grant execute on all functions in schema entitlements to entitlements_api, entitlements_admin;
revoke select on entitlements.server_secrets from entitlements_api;
revoke select on entitlements.server_domains, entitlements.server_counts from entitlements_api, entitlements_admin;
-- Notifications: endpoints (their secrets), templates and attempts are for admins (RLS); a
-- customer reads its own events and emails.
grant insert, update on entitlements.webhook_endpoints, entitlements.email_templates to entitlements_api, entitlements_admin;
grant delete on entitlements.email_templates to entitlements_api, entitlements_admin;
grant insert, update on entitlements.deliveries to entitlements_api, entitlements_admin;
grant insert on entitlements.delivery_attempts to entitlements_api, entitlements_admin;
-- Security monitoring: global admins configure the rules (RLS); signals, alerts, incidents
-- and notes are written only by the definer functions (monitoring/), which check the caller.
grant insert, update, delete on entitlements.security_rules to entitlements_api, entitlements_admin;

-- Owner only: SECURITY DEFINER triggers (nobody may attach them elsewhere; a trigger that
-- fires needs no EXECUTE), and what reads around RLS without asking who calls.
revoke execute on function entitlements._audit_row(), entitlements._cache_bump(), entitlements._enforce_seats(),
    entitlements._touch_subscription(), entitlements._cache_touch_trigger(), entitlements._audit_log_is_append_only(),
    entitlements._require_own_table(oid, text), entitlements._catalog_snapshot(),
    entitlements._normalize_catalog_json(jsonb, jsonb), entitlements._normalize_feature_value_json(text, jsonb),
    entitlements._access_token_claims(jsonb), entitlements._server_made(), entitlements._server_changed(),
    entitlements._server_check_insert(), entitlements._server_first(), entitlements._outbox_fan_out(),
    entitlements._subscription_events(), entitlements._grant_events(), entitlements._member_events(),
    entitlements._record_subscription_history(), entitlements._record_unit_cost(),
    entitlements._plan_stripe_prices_unique(),
    -- The steps of _meter, which pin no search_path: only _meter (pinned) calls them.
    entitlements._meter_check_input(uuid, text, numeric, text), entitlements._meter_claim_key(uuid, text, text, numeric),
    entitlements._meter_window_total(uuid, text, text, timestamptz),
    entitlements._meter_limit(uuid, text, numeric, text, boolean, text, timestamptz, timestamptz, numeric, text, jsonb,
                              numeric[]),
    entitlements._meter_take_stripe(uuid, text, numeric, text, timestamptz, timestamptz, numeric, numeric[]),
    entitlements._meter_rebalance(uuid, text, numeric, text, timestamptz, timestamptz, numeric, numeric[], numeric,
                                  integer, boolean),
    entitlements._quota_bound(numeric, numeric[], numeric), entitlements._quota_events(uuid, text, jsonb),
    entitlements._thresholds_key(numeric[]),
    -- Access notices run as the owner, from the subscriptions trigger and the time_events task.
    entitlements._access_notice(entitlements.subscriptions, text), entitlements._customer_email(uuid),
    -- Attached to auth.users by the operator; anyone else attaching it could redirect emails.
    entitlements.sync_auth_email(),
    entitlements._meter_raise_quota(uuid, text, numeric, numeric, text, numeric, timestamptz, jsonb),
    entitlements._meter_raise_not_included(uuid, text, numeric, jsonb),
    entitlements._meter_undo(uuid, text, numeric, text[], timestamptz[], smallint[], boolean[], text),
    -- Refusal counts: _meter (definer) names the customer; the flush worker writes them.
    entitlements._note_refusal(text, text, text), entitlements._record_signals(jsonb),
    entitlements._check_security_rule(), entitlements._incident_transition(), entitlements._alert_check(),
    entitlements._add_signals(jsonb), entitlements._incident_for_update(bigint), entitlements._incident_note(bigint, text),
    entitlements._alert_event(entitlements.security_alerts),
    -- Erasure: the guard trigger, and the readers export and erasure use around RLS.
    entitlements._customer_erasure_guard(), entitlements._privacy_known(uuid), entitlements._privacy_json_emails(uuid)
    from entitlements_api, entitlements_admin;

-- The console's sign-in check runs with the worker's own role (an admin), before anyone is
-- signed in; the API roles never need it.
revoke execute on function entitlements.admin_token_sign_in(text) from entitlements_api;

-- The Supabase Auth hook runs as supabase_auth_admin; nobody else needs it.
revoke execute on function entitlements.custom_access_token_hook(jsonb) from entitlements_api;

-- Supabase's roles, when they exist: the API roles speak for signed-in users, service_role
-- administers, supabase_auth_admin runs the access-token hook. Other deployments grant
-- entitlements_api / entitlements_admin to their own roles (README, Security).
do $$
declare
    r text;
begin
    foreach r in array array['anon', 'authenticated', 'service_role'] loop
        if exists (select 1 from pg_roles where rolname = r) then
            execute format('grant entitlements_api to %I', r);
        end if;
    end loop;
    if exists (select 1 from pg_roles where rolname = 'service_role') then
        execute 'grant entitlements_admin to service_role';
    end if;
    if exists (select 1 from pg_roles where rolname = 'supabase_auth_admin') then
        execute 'grant execute on function entitlements.custom_access_token_hook(jsonb) to supabase_auth_admin';
    end if;
end
$$;
