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
            or display_name ~ ('[[:cntrl:]\u0080-\u009f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u180e\u200b-\u200f'
                               '\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\U000110bd\U0001d173-\U0001d17a'
                               '\U000e0000-\U000e007f]')) then
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
       set email = excluded.email, display_name = excluded.display_name, locale = excluded.locale, updated_at = entitlements.now()
     where (c.email, c.display_name, c.locale) is distinct from (excluded.email, excluded.display_name, excluded.locale);
end
$$;
comment on function entitlements.set_profile(uuid, text, text, text) is
    'Set the email, display name and locale notifications use (NULL clears). The customer themself, an owner or admin of the organization, or an admin.';

-- On Supabase, a user's address is auth.users.email. It is copied here by a trigger the
-- operator attaches to auth.users (README, Notifications), never read from there by the
-- extension: planning a query on another role's table can run that role's code (an index
-- predicate, a policy), and the fan-out runs as the extension owner.
create table entitlements.auth_emails (
    user_id    uuid primary key,
    email      text check (length(email) <= 320),
    updated_at timestamptz not null default entitlements.now()
);
comment on table entitlements.auth_emails is
    'Supabase auth.users emails, copied by entitlements.sync_auth_email(); notifications prefer them. A user reads their own.';
select pg_catalog.pg_extension_config_dump('entitlements.auth_emails', '');
alter table entitlements.auth_emails enable row level security;
create policy auth_emails_read on entitlements.auth_emails for select
    using (user_id = entitlements.current_user_id() or entitlements.is_admin());

-- The trigger for auth.users: `create trigger entitlements_email after insert or update of email
-- on auth.users for each row execute function entitlements.sync_auth_email();`. It reads
-- only `id` and `email`, and only when they are uuid and text or varchar (no type someone
-- wrote), and refuses to run on any other table.
create function entitlements.sync_auth_email()
returns trigger language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_table_schema <> 'auth' or tg_table_name <> 'users' or tg_level <> 'ROW' or tg_op not in ('INSERT', 'UPDATE')
       or (select a.atttypid from pg_attribute a
            where a.attrelid = tg_relid and a.attname = 'id' and not a.attisdropped) is distinct from 'uuid'::regtype
       or (select a.atttypid from pg_attribute a
            where a.attrelid = tg_relid and a.attname = 'email' and not a.attisdropped)
          not in ('text'::regtype, 'varchar'::regtype) then
        raise exception 'entitlements.sync_auth_email is an insert or update row trigger for auth.users (id uuid, email text)'
            using errcode = '39P01';
    end if;
    if exists (select 1 from entitlements.customers c where c.id = new.id and c.erased_at is not null) then
        delete from entitlements.auth_emails e where e.user_id = new.id;
        return null;
    end if;
    insert into entitlements.auth_emails as e (user_id, email)
    values (new.id, nullif(left(new.email::text, 320), ''))
    on conflict (user_id) do update set email = excluded.email, updated_at = entitlements.now()
     where e.email is distinct from excluded.email;
    return null;
end
$$;
comment on function entitlements.sync_auth_email() is
    'A trigger for auth.users (Supabase): keeps entitlements.auth_emails, which notifications prefer to customers.email.';

-- Where a customer's email goes: the Supabase address when one was copied, else customers.email.
create function entitlements._customer_email(customer uuid)
returns text language sql stable
set search_path = pg_catalog, pg_temp
as $$
    select coalesce((select a.email from entitlements.auth_emails a where a.user_id = customer),
                    (select c.email from entitlements.customers c where c.id = customer))
$$;
