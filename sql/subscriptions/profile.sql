-- How notifications address a customer: email, display name, locale. Admins write customers
-- directly; a user sets their own (and an organization's owners and admins the
-- organization's) through set_profile, which touches those three columns and nothing else.

-- SECURITY DEFINER: customers' RLS lets only admins write. Its arguments are text and uuid,
-- and every check asks about the real caller (the outer role, the trusted user id).
create function entitlements.set_profile(customer uuid, email text, display_name text default null,
                                         locale text default null)
returns void language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if customer is null then
        raise exception 'customer must not be NULL' using errcode = '22004';
    end if;
    perform entitlements._require(
        customer = entitlements.current_user_id()
        or entitlements._role_is_privileged(entitlements._outer_role())
        or entitlements._is_listed_admin_of(customer)
        or coalesce(entitlements._my_org_role(customer) in ('owner', 'admin'), false),
        'set_profile', 'the customer themself, an owner or admin of the organization, or an entitlements admin of it');
    -- A plain address (RFC 5322 atext, dots, an ASCII domain): what an SMTP server takes.
    if email is not null and (length(email) > 254
                              or email !~ '^[A-Za-z0-9!#$%&''*+/=?^_`{|}~.-]+@[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?\.[A-Za-z]{2,}$') then
        raise exception 'invalid email address "%"', left(email, 80) using errcode = '22023';
    end if;
    -- No control, format or line-separator characters (a right-to-left override, say): the
    -- name goes into an email's To: header.
    if display_name is not null
       and (length(display_name) > 200
            or display_name ~ '[[:cntrl:]\u0080-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]') then
        raise exception 'a display name is at most 200 characters, without control or formatting characters'
            using errcode = '22023';
    end if;
    if locale is not null and locale !~ '^[a-z]{2}(-[A-Z]{2})?$' then
        raise exception 'invalid locale "%": expected a language code such as "en" or "pt-BR"', left(locale, 20)
            using errcode = '22023';
    end if;
    insert into entitlements.customers as c (id, email, display_name, locale)
    values (customer, nullif(email, ''), nullif(display_name, ''), locale)
    on conflict (id) do update
       set email = excluded.email, display_name = excluded.display_name, locale = excluded.locale, updated_at = now()
     where (c.email, c.display_name, c.locale) is distinct from (excluded.email, excluded.display_name, excluded.locale);
end
$$;
comment on function entitlements.set_profile(uuid, text, text, text) is
    'Set the email, display name and locale notifications use (NULL clears). The customer themself, an owner or admin of the organization, or an admin.';

-- Where a customer's email goes: on Supabase, the auth.users email when the user has one,
-- else customers.email. This runs as the owner (in the outbox's fan-out), and planning or
-- running a query on a table can run code its owner wrote: a view's, a policy's, a column
-- type's, and an index's predicate or expression, which the planner evaluates. So auth.users
-- is read only when it is a plain table without row security, `id uuid` and `email` text or
-- varchar, owned by supabase_auth_admin or a superuser, whose indexes, constraints and
-- statistics use no function or operator outside pg_catalog (Supabase's own use none).
create function entitlements._customer_email(customer uuid)
returns text language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_email text;
begin
    if exists (select 1 from pg_class c
                 join pg_namespace n on n.oid = c.relnamespace
                 join pg_roles r on r.oid = c.relowner
                where n.nspname = 'auth' and c.relname = 'users' and c.relkind = 'r' and not c.relrowsecurity
                  and (r.rolname = 'supabase_auth_admin' or r.rolsuper)
                  and (select a.atttypid from pg_attribute a
                        where a.attrelid = c.oid and a.attname = 'id' and not a.attisdropped) = 'uuid'::regtype
                  and (select a.atttypid from pg_attribute a
                        where a.attrelid = c.oid and a.attname = 'email' and not a.attisdropped)
                      in ('text'::regtype, 'varchar'::regtype)
                  and not c.relhassubclass
                  and not exists (
                      select 1 from pg_depend d
                       where ((d.classid = 'pg_class'::regclass
                               and d.objid in (select i.indexrelid from pg_index i where i.indrelid = c.oid))
                           or (d.classid = 'pg_constraint'::regclass
                               and d.objid in (select k.oid from pg_constraint k where k.conrelid = c.oid))
                           or (d.classid = 'pg_statistic_ext'::regclass
                               and d.objid in (select x.oid from pg_statistic_ext x where x.stxrelid = c.oid)))
                         and ((d.refclassid = 'pg_proc'::regclass
                               and (select p.pronamespace from pg_proc p where p.oid = d.refobjid) <> 'pg_catalog'::regnamespace)
                           or (d.refclassid = 'pg_operator'::regclass
                               and (select o.oprnamespace from pg_operator o where o.oid = d.refobjid) <> 'pg_catalog'::regnamespace)))) then
        execute 'select u.email::text from auth.users u where u.id = $1' into v_email using customer;
    end if;
    return coalesce(nullif(v_email, ''), (select c.email from entitlements.customers c where c.id = customer));
end
$$;
