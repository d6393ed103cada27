-- Admin tokens: how an admin without a Supabase session signs in to the worker's console
-- (/admin). A token is shown once, when created; only its SHA-256 is kept, so a dump or a
-- reader of this table cannot sign in with it. Revoking or expiring it ends the console
-- sessions made with it at their next request (the worker checks the row, as the user,
-- on every page).

create table entitlements.admin_tokens (
    id          uuid primary key default gen_random_uuid(),
    user_id     uuid not null,
    label       text not null check (length(label) between 1 and 200),
    token_hash  bytea not null unique check (length(token_hash) = 32),
    created_at  timestamptz not null default entitlements.now(),
    -- Who made it: the admin user, or NULL for a database role (then created_role says which).
    created_by  uuid,
    created_role text not null default current_user,
    expires_at  timestamptz not null check (expires_at > created_at and expires_at < 'infinity'),
    revoked_at  timestamptz,
    last_used_at timestamptz
);
create index admin_tokens_user on entitlements.admin_tokens (user_id);
comment on table entitlements.admin_tokens is
    'Console sign-in tokens (SHA-256 only). Made by create_admin_token, ended by revoke_admin_token.';
select pg_catalog.pg_extension_config_dump('entitlements.admin_tokens', '');

-- A user reads their own tokens (the console checks its session this way, as the user);
-- global admins read all. Nobody writes them but the functions below.
alter table entitlements.admin_tokens enable row level security;
create policy admin_tokens_read on entitlements.admin_tokens for select
    using (user_id = entitlements.current_user_id() or entitlements.is_admin());

-- A new token for `user_id`, an admin (entitlements.admins, globally or of a tenant): the
-- token itself, returned this once. Global admins only (the real caller: definer).
create function entitlements.create_admin_token(user_id uuid, label text, expires_at timestamptz)
returns text language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_now timestamptz := entitlements.now();
    -- 244 random bits (two version-4 uuids, from the server's strong random source).
    v_token text := 'eat_' || replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '');
begin
    perform entitlements._require_caller_admin('create_admin_token');
    if user_id is null then
        raise exception 'user_id must not be NULL' using errcode = '22023';
    end if;
    if not exists (select 1 from entitlements.admins a where a.user_id = create_admin_token.user_id) then
        raise exception 'user % is not an admin', user_id using errcode = '22023',
            hint = 'Make them one first: select entitlements.add_admin(user_id[, tenant]).';
    end if;
    if label is null or length(btrim(label)) not between 1 and 200 then
        raise exception 'label must be 1 to 200 characters' using errcode = '22023';
    end if;
    if expires_at is null or expires_at <= v_now or expires_at > v_now + interval '1 year' then
        raise exception 'expires_at must be in the future and at most a year away, not %',
            coalesce(expires_at::text, 'NULL') using errcode = '22023';
    end if;
    insert into entitlements.admin_tokens (user_id, label, token_hash, created_at, created_by, created_role, expires_at)
    values (user_id, btrim(label), sha256(convert_to(v_token, 'UTF8')), v_now,
            entitlements.current_user_id(), pg_catalog.pg_get_userbyid(entitlements._outer_role()), expires_at);
    return v_token;
end
$$;
comment on function entitlements.create_admin_token(uuid, text, timestamptz) is
    'A console sign-in token for an admin user, shown this once (only its hash is kept); at most a year. Global admins only.';

-- End a token: the user it belongs to, or a global admin. True when it was active.
create function entitlements.revoke_admin_token(token_id uuid)
returns boolean language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_owner uuid;
begin
    select t.user_id into v_owner from entitlements.admin_tokens t where t.id = token_id;
    -- Someone else's token (or none) reads as a refusal either way: no existence oracle.
    perform entitlements._require(
        (v_owner is not null and v_owner = entitlements.current_user_id())
        or entitlements._role_is_privileged(entitlements._outer_role())
        or entitlements._is_listed_admin(null),
        'revoke_admin_token', 'the token''s user or an entitlements admin');
    update entitlements.admin_tokens t set revoked_at = entitlements.now()
     where t.id = token_id and t.revoked_at is null;
    return found;
end
$$;
comment on function entitlements.revoke_admin_token(uuid) is
    'End a console sign-in token (its sessions end at their next request). Its user or a global admin.';

-- The console's sign-in: the token's id, user and end when `token` is active and its user
-- still an admin; no row otherwise (the worker counts that as sign_in_refused). Run with
-- the worker's own role before anyone is signed in, as PostgREST's authenticator checks a
-- JWT: executable by entitlements_admin only.
create function entitlements.admin_token_sign_in(token text)
returns table (token_id uuid, user_id uuid, expires_at timestamptz)
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_caller_admin('admin_token_sign_in');
    if token is null or length(token) > 200 then
        return;
    end if;
    return query
    update entitlements.admin_tokens t set last_used_at = entitlements.now()
     where t.token_hash = sha256(convert_to(token, 'UTF8'))
       and t.revoked_at is null and t.expires_at > entitlements.now()
       and exists (select 1 from entitlements.admins a where a.user_id = t.user_id)
    returning t.id, t.user_id, t.expires_at;
end
$$;
comment on function entitlements.admin_token_sign_in(text) is
    'The console''s sign-in check of an admin token: its id, user and expiry when active. The worker''s role only.';
