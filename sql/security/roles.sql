-- Who may see and change what. RLS on every table; the predicates live in small
-- functions so policies read like the security model in README.md.
--
--   * a user sees their own customer rows and those of organizations they belong to;
--   * organization owners/admins manage their organization's members;
--   * tenant admins (entitlements.admins with a tenant_id) manage their tenant's customers;
--   * global admins, roles granted entitlements_admin (service_role is), superusers and the
--     extension owner see and do all.

-- Two roles carry the model (created here when missing; roles are cluster-wide, so a
-- second database reuses them):
--   * entitlements_api: the roles PostgREST/Supabase switch to (anon, authenticated,
--     service_role by default). Only they, superusers and the extension owner are trusted
--     to say who the user is (request.jwt.claims, entitlements.user_id); any other login
--     role is itself and nobody else (extension/src/security/identity.rs). More API roles:
--     `grant entitlements_api to my_api_role`.
--   * entitlements_admin: a database role that has its privileges administers everything
--     (service_role gets it at install). `grant entitlements_admin to ops_role`.
do $$
begin
    if not exists (select 1 from pg_catalog.pg_roles where rolname = 'entitlements_api') then
        begin
            create role entitlements_api nologin;
        exception when unique_violation or duplicate_object then
            null;  -- created at the same moment by an install into another database
        end;
    end if;
    if not exists (select 1 from pg_catalog.pg_roles where rolname = 'entitlements_admin') then
        begin
            create role entitlements_admin nologin;
        exception when unique_violation or duplicate_object then
            null;  -- created at the same moment by an install into another database
        end;
    end if;
end
$$;

-- Role-level privilege (superuser/BYPASSRLS, the extension owner, or entitlements_admin)
-- is Rust, written once: entitlements._role_is_privileged(role) and _is_privileged_role()
-- (security/access.rs). So is "may act for a customer": entitlements.can_see_customer.

-- These SECURITY DEFINER helpers read tables callers cannot read in full; each answers
-- only about the calling user, so they reveal nothing about anyone else.

-- Is the calling user listed in entitlements.admins (globally, or for `tenant`)?
create function entitlements._is_listed_admin(tenant uuid)
returns boolean language sql stable parallel safe security definer
set search_path = pg_catalog, pg_temp
as $$
    select exists (
        select 1 from entitlements.admins a
        where a.user_id = entitlements.current_user_id()
          and (a.tenant_id is null or (tenant is not null and a.tenant_id = tenant)))
$$;

-- Is the calling user a listed admin of `customer`'s tenant (or a global one)? Answers
-- about the caller only; the tenant itself stays hidden.
create function entitlements._is_listed_admin_of(customer uuid)
returns boolean language sql stable parallel safe security definer
set search_path = pg_catalog, pg_temp
as $$ select entitlements._is_listed_admin((select c.tenant_id from entitlements.customers c where c.id = customer)) $$;

-- The calling user's role in organization `org`, or NULL.
create function entitlements._my_org_role(org uuid)
returns text language sql stable parallel safe security definer
set search_path = pg_catalog, pg_temp
as $$
    select m.role from entitlements.members m
     where m.organization_id = org and m.user_id = entitlements.current_user_id()
$$;

-- Does the calling user (or one of their organizations) subscribe to `plan`?
create function entitlements._i_have_plan(plan text)
returns boolean language sql stable parallel safe security definer
set search_path = pg_catalog, pg_temp
as $$
    select exists (
        select 1 from entitlements.subscriptions s
        where s.plan_key = plan
          and (s.customer_id = entitlements.current_user_id()
               or s.customer_id in (select m.organization_id from entitlements.members m
                                     where m.user_id = entitlements.current_user_id())))
$$;

-- Global admin, or (with a tenant) admin of that tenant.
create function entitlements.is_admin(tenant uuid default null)
returns boolean language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select entitlements._is_privileged_role()
        or entitlements._is_listed_admin(tenant)
$$;
comment on function entitlements.is_admin(uuid) is
    'True for superusers, the extension owner, roles granted entitlements_admin, and users listed in entitlements.admins (for that tenant).';

-- Admin of the tenant a customer belongs to (or global admin).
create function entitlements.is_admin_of(customer uuid)
returns boolean language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$ select entitlements._is_privileged_role() or entitlements._is_listed_admin_of(customer) $$;


create function entitlements.can_manage_organization(org uuid)
returns boolean language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select coalesce(entitlements._my_org_role(org) in ('owner', 'admin'), false)
        or entitlements.is_admin_of(org)
$$;

-- The refusal of every admin check below: 42501 naming the action and who may do it.
-- Each refusal is counted for the security rules (refusal_burst; monitoring/signals.sql).
create function entitlements._require(allowed boolean, action text, who text default 'an entitlements admin')
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    if not coalesce(allowed, false) then
        perform entitlements._note_permission_refused(action);
        raise exception 'permission denied: % requires %', action, who
            using errcode = '42501',
                  hint = 'Call it as a role granted entitlements_admin, or add the user to entitlements.admins.';
    end if;
end
$$;

-- Raise 42501 unless the caller is an admin (of `tenant`, when given).
create function entitlements._require_admin(action text, tenant uuid default null)
returns void language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$ begin perform entitlements._require(entitlements.is_admin(tenant), action); end $$;

-- Raise 42501 unless the real caller is an admin: for SECURITY DEFINER functions, where
-- current_user is the owner and _require_admin would always pass. The role asked about is
-- the one outside definer functions (SET ROLE's), its user id as identity.rs trusts it.
create function entitlements._require_caller_admin(action text)
returns void language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require(
        entitlements._role_is_privileged(entitlements._outer_role()) or entitlements._is_listed_admin(null), action);
end
$$;

-- Raise 42501 unless the caller administers `customer` (globally or through its tenant).
create function entitlements._require_admin_of(action text, customer uuid)
returns void language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require(entitlements.is_admin_of(customer), action,
                                  'an entitlements admin of this customer');
end
$$;

-- Row level security ---------------------------------------------------------------

alter table entitlements.features enable row level security;
create policy features_read on entitlements.features for select using (true);
create policy features_admin on entitlements.features for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());

alter table entitlements.plans enable row level security;
create policy plans_read on entitlements.plans for select
    using (public or entitlements.is_admin(tenant_id) or entitlements._i_have_plan(key));
-- A store's plans are also its admins'.
create policy plans_admin on entitlements.plans for all
    using (entitlements.is_admin(tenant_id)) with check (entitlements.is_admin(tenant_id));

alter table entitlements.plan_entitlements enable row level security;
create policy plan_entitlements_read on entitlements.plan_entitlements for select
    using (exists (select 1 from entitlements.plans p where p.key = plan_key));
create policy plan_entitlements_admin on entitlements.plan_entitlements for all
    using (exists (select 1 from entitlements.plans p where p.key = plan_key and entitlements.is_admin(p.tenant_id)))
    with check (exists (select 1 from entitlements.plans p where p.key = plan_key and entitlements.is_admin(p.tenant_id)));

alter table entitlements.customers enable row level security;
create policy customers_read on entitlements.customers for select
    using (entitlements.can_see_customer(id));
create policy customers_insert on entitlements.customers for insert
    with check (entitlements.is_admin(tenant_id));
create policy customers_update on entitlements.customers for update
    using (entitlements.is_admin(tenant_id)) with check (entitlements.is_admin(tenant_id));
create policy customers_delete on entitlements.customers for delete
    using (entitlements.is_admin(tenant_id));

alter table entitlements.subscriptions enable row level security;
create policy subscriptions_read on entitlements.subscriptions for select
    using (entitlements.can_see_customer(customer_id));
create policy subscriptions_admin on entitlements.subscriptions for all
    using (entitlements.is_admin_of(customer_id)) with check (entitlements.is_admin_of(customer_id));

alter table entitlements.members enable row level security;
create policy members_read on entitlements.members for select
    using (user_id = entitlements.current_user_id() or entitlements.can_see_customer(organization_id));
create policy members_manage on entitlements.members for all
    using (entitlements.can_manage_organization(organization_id))
    with check (entitlements.can_manage_organization(organization_id));

alter table entitlements.grants enable row level security;
create policy grants_read on entitlements.grants for select
    using (entitlements.can_see_customer(customer_id));
create policy grants_admin on entitlements.grants for all
    using (entitlements.is_admin_of(customer_id)) with check (entitlements.is_admin_of(customer_id));

alter table entitlements.admins enable row level security;
create policy admins_read on entitlements.admins for select
    using (user_id = entitlements.current_user_id() or entitlements.is_admin());
create policy admins_manage on entitlements.admins for all
    using (entitlements.is_admin()) with check (entitlements.is_admin());

-- Only admins read the audit log; nobody but the audit trigger (owner) writes it.
alter table entitlements.audit_log enable row level security;
create policy audit_log_read on entitlements.audit_log for select using (entitlements.is_admin());
