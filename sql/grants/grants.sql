-- Grants and overrides: admin-only, each with a reason and an optional expiry, each
-- leaving an audit row (the reason is carried into it).

create function entitlements._add_grant(
    customer uuid, kind text, feature text, value jsonb, expires_at timestamptz, reason text,
    starts_at timestamptz default entitlements.now())
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_id uuid;
begin
    perform entitlements._require_not_null(customer, 'customer');
    if reason is null or btrim(reason) = '' then
        raise exception 'a reason is required' using errcode = '22023';
    end if;
    if starts_at is null then
        raise exception 'starts_at must not be NULL' using errcode = '22004';
    end if;
    perform entitlements._finite(expires_at, 'expires_at');
    perform entitlements._finite(starts_at, 'starts_at');
    if expires_at is not null and expires_at <= greatest(starts_at, entitlements.now()) then
        raise exception 'expires_at (%) must be in the future and after starts_at', expires_at using errcode = '22023';
    end if;
    perform entitlements._require_admin_of(kind || ' grant', customer);
    if kind <> 'discount' then
        perform entitlements._require_not_null(feature, 'feature');
        if not exists (select 1 from entitlements.features f where f.key = feature) then
            raise exception 'unknown feature "%"', feature
                using errcode = '22023',
                      hint = 'known features: ' || coalesce((select string_agg(f.key, ', ' order by f.key) from entitlements.features f), 'none');
        end if;
    end if;
    perform set_config('entitlements.reason', reason, true);
    -- Only when missing: a tenant admin (who may grant only to its tenant's customers, which
    -- exist) would fail RLS's check on the proposed tenantless row even with DO NOTHING.
    if not exists (select 1 from entitlements.customers c where c.id = customer) then
        insert into entitlements.customers (id) values (customer) on conflict (id) do nothing;
    end if;
    insert into entitlements.grants (customer_id, kind, feature_key, value, starts_at, expires_at, reason, created_by)
    values (customer, kind, feature, value, starts_at, expires_at, reason, entitlements.current_user_id())
    returning id into v_id;
    perform set_config('entitlements.reason', '', true);
    return v_id;
end
$$;

create function entitlements._feature_kind(feature text)
returns text language sql stable
set search_path = pg_catalog, pg_temp
as $$ select f.kind from entitlements.features f where f.key = feature $$;

-- Grant a feature: a flag (value omitted = on), or a limit/quota/config value that
-- combines with the plan's (most generous wins).
create function entitlements.grant_feature(
    customer uuid, feature text, value jsonb default null,
    expires_at timestamptz default null, reason text default null)
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_kind text := entitlements._feature_kind(feature);
begin
    if v_kind is not null and value is null and v_kind <> 'flag' then
        raise exception 'a % feature needs a value to grant', v_kind using errcode = '22023';
    end if;
    perform entitlements._valid_json(value, 'value');
    return entitlements._add_grant(customer, 'feature', feature,
        case when v_kind is null then null
             else entitlements._normalize_feature_value(v_kind, coalesce(value, 'true')) end,
        expires_at, reason);
end
$$;

-- Replace the feature's value whatever plans say (e.g. lower a limit after abuse).
create function entitlements.override_feature(
    customer uuid, feature text, value jsonb, expires_at timestamptz default null, reason text default null)
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_kind text := entitlements._feature_kind(feature);
begin
    perform entitlements._require_not_null(value, 'value');
    perform entitlements._valid_json(value, 'value');
    return entitlements._add_grant(customer, 'override', feature,
        case when v_kind is null then null else entitlements._normalize_feature_value(v_kind, value) end,
        expires_at, reason);
end
$$;

-- Add `amount` to a limit, a concurrency limit or a metered quota (one period or all).
create function entitlements.boost_quota(
    customer uuid, feature text, amount numeric, period text default null,
    expires_at timestamptz default null, reason text default null)
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_kind text := entitlements._feature_kind(feature);
begin
    if amount is null or amount <= 0 or amount > 1e15 then
        raise exception 'a quota boost needs an amount from 0 (exclusive) to 1e15, got %', coalesce(amount::text, 'NULL')
            using errcode = '22023';
    end if;
    if v_kind is not null and v_kind not in ('limit', 'metered', 'concurrency') then
        raise exception 'feature "%" is a % feature; only limit, metered and concurrency features take a quota boost', feature, v_kind
            using errcode = '22023';
    end if;
    if period is not null and period not in ('day', 'month', 'billing_period', 'lifetime') then
        raise exception 'unknown period "%"', period using errcode = '22023', hint = 'one of: day, month, billing_period, lifetime';
    end if;
    return entitlements._add_grant(customer, 'quota_boost', feature,
        jsonb_build_object('amount', amount, 'period', period), expires_at, reason);
end
$$;

-- Remove the feature whatever else grants it.
create function entitlements.deny_feature(
    customer uuid, feature text, expires_at timestamptz default null, reason text default null)
returns uuid language sql volatile
set search_path = pg_catalog, pg_temp
as $$ select entitlements._add_grant(customer, 'deny', feature, null, expires_at, reason) $$;

-- A discount for billing (analytics and invoicing read it; it grants no feature).
create function entitlements.grant_discount(
    customer uuid, percent_off numeric, expires_at timestamptz default null, reason text default null)
returns uuid language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    if percent_off is null or percent_off <= 0 or percent_off > 100 then
        raise exception 'percent_off must be in (0, 100]' using errcode = '22023';
    end if;
    return entitlements._add_grant(customer, 'discount', null,
        jsonb_build_object('percent_off', percent_off), expires_at, reason);
end
$$;

create function entitlements.revoke_grant(grant_id uuid, reason text)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
    v_customer uuid;
begin
    perform entitlements._require_not_null(grant_id, 'grant_id');
    if reason is null or btrim(reason) = '' then
        raise exception 'a reason is required' using errcode = '22023';
    end if;
    select g.customer_id into v_customer from entitlements.grants g where g.id = grant_id for update;
    if not found then
        raise exception 'grant % does not exist', grant_id using errcode = 'P0002';
    end if;
    perform entitlements._require_admin_of('revoke_grant', v_customer);
    perform set_config('entitlements.reason', reason, true);
    update entitlements.grants g set revoked_at = entitlements.now() where g.id = grant_id and g.revoked_at is null;
    perform set_config('entitlements.reason', '', true);
end
$$;

create function entitlements.add_admin(user_id uuid, tenant uuid default null)
returns void language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._require_not_null(user_id, 'user_id');
    perform entitlements._require_admin('add_admin');
    insert into entitlements.admins (user_id, tenant_id) values (user_id, tenant) on conflict do nothing;
end
$$;
