-- Organizations and their members.

-- Membership rules, enforced by trigger so a direct INSERT/UPDATE/DELETE by an
-- organization admin is held to them too:
--   * a member is a user, never an organization;
--   * only an owner of the organization (or an entitlements admin) makes, demotes or
--     removes an owner;
--   * seats: the organization's `seats` limit. Whoever takes a seat (an insert, or an
--     update that moves a member to another organization) rewrites the organization's
--     customer row: under READ COMMITTED the second of two concurrent writers waits for
--     the first to commit and counts with a fresh snapshot; under REPEATABLE READ and
--     SERIALIZABLE it gets 40001 and retries, so nobody counts on a stale snapshot.
-- Is the real caller (this runs inside the definer trigger below, so not current_user) an
-- owner of `org`, or an entitlements admin of it?
create function entitlements._caller_owns_organization(org uuid)
returns boolean language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select entitlements._role_is_privileged(entitlements._outer_role())
        or entitlements._is_listed_admin_of(org)
        or coalesce(entitlements._my_org_role(org) = 'owner', false)
$$;

create function entitlements._enforce_seats()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_limit double precision;
    v_used bigint;
begin
    perform entitlements._require_own_table(tg_relid, 'entitlements._enforce_seats');
    if entitlements._bulk_loading() then
        return coalesce(new, old); -- pg_restore: the restored members were within their seats
    end if;
    -- A membership's user never changes (that would hand someone else's seat, or an
    -- owner's, to the writer): remove the member and add the other instead.
    if tg_op = 'UPDATE' and new.user_id <> old.user_id then
        raise exception 'a membership''s user cannot change; remove the member and add the other'
            using errcode = '22023';
    end if;
    -- Taking an owner out of an organization (delete, demote, move away) and making one
    -- (insert, promote, move in) are each for an owner of that organization.
    if tg_op <> 'INSERT' and old.role = 'owner'
       and (tg_op = 'DELETE' or new.role <> 'owner' or new.organization_id <> old.organization_id)
       and not entitlements._caller_owns_organization(old.organization_id) then
        raise exception 'permission denied: only an owner of the organization demotes or removes an owner'
            using errcode = '42501';
    end if;
    if tg_op <> 'DELETE' and new.role = 'owner'
       and (tg_op = 'INSERT' or old.role <> 'owner' or new.organization_id <> old.organization_id)
       and not entitlements._caller_owns_organization(new.organization_id) then
        raise exception 'permission denied: only an owner of the organization makes an owner'
            using errcode = '42501';
    end if;
    if tg_op = 'DELETE' then
        return old;
    end if;
    if exists (select 1 from entitlements.customers c where c.id = new.user_id and c.kind = 'organization') then
        raise exception 'customer % is an organization and cannot be a member', new.user_id using errcode = '22023';
    end if;
    -- Takes no seat: a role change, or a member of this organization already.
    if tg_op = 'UPDATE' and new.organization_id = old.organization_id then
        return new;
    end if;
    if not exists (select 1 from entitlements.features f where f.key = 'seats') then
        return new; -- a catalog without seats does not limit members
    end if;
    -- The row first, then the advisory lock (which correct_entitlements takes too): add_member
    -- may have locked the row already when it made the customer an organization, and taking
    -- them the other way round would deadlock with it.
    update entitlements.customers c set updated_at = c.updated_at where c.id = new.organization_id;
    perform pg_advisory_xact_lock('entitlements.members'::regclass::oid::integer, hashtext(new.organization_id::text));
    if exists (select 1 from entitlements.members m
                where m.organization_id = new.organization_id and m.user_id = new.user_id) then
        return new;
    end if;
    -- A new statement, so (under READ COMMITTED) a new snapshot: members committed while
    -- we waited are counted.
    select count(*) into v_used from entitlements.members m where m.organization_id = new.organization_id;
    v_limit := entitlements._feature_limit(new.organization_id, 'seats');
    if v_limit is not null and v_used + 1 > v_limit then
        raise exception 'no free seat: organization % uses % of % seats', new.organization_id, v_used, v_limit
            using errcode = 'PT403',
                  detail = 'feature: seats',
                  hint = 'Upgrade the plan or buy more seats, or remove a member first.';
    end if;
    return new;
end
$$;
create trigger members_enforce_seats before insert or update or delete on entitlements.members
    for each row execute function entitlements._enforce_seats();

-- Adds a member, or changes an existing member's role (which takes no seat).
create function entitlements.add_member(organization uuid, user_id uuid, role text default 'member')
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_not_null(organization, 'organization');
    perform entitlements._require_not_null(user_id, 'user_id');
    if role is null or role not in ('owner', 'admin', 'member') then
        raise exception 'unknown member role "%"', role using errcode = '22023', hint = 'one of: owner, admin, member';
    end if;
    if organization = user_id then
        raise exception 'an organization cannot be its own member' using errcode = '22023';
    end if;
    if not entitlements.can_manage_organization(organization) then
        raise exception 'permission denied: only organization owners/admins and entitlements admins manage members'
            using errcode = '42501';
    end if;
    -- Creating an organization (or turning a customer into one) is for admins (RLS); that a
    -- user id is not an organization is checked by the trigger above.
    if not exists (select 1 from entitlements.customers c where c.id = organization and c.kind = 'organization') then
        insert into entitlements.customers as c (id, kind) values (organization, 'organization')
        on conflict (id) do update set kind = 'organization', updated_at = entitlements.now();
    end if;
    insert into entitlements.members as m (organization_id, user_id, role) values (organization, user_id, role)
    on conflict on constraint members_pkey do update set role = excluded.role where m.role <> excluded.role;
end
$$;

create function entitlements.remove_member(organization uuid, user_id uuid)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_not_null(organization, 'organization');
    perform entitlements._require_not_null(user_id, 'user_id');
    if not entitlements.can_manage_organization(organization) then
        raise exception 'permission denied: only organization owners/admins and entitlements admins manage members'
            using errcode = '42501';
    end if;
    delete from entitlements.members m where m.organization_id = organization and m.user_id = remove_member.user_id;
    if not found then
        raise exception 'user % is not a member of organization %', user_id, organization using errcode = 'P0002';
    end if;
end
$$;
