-- The SQL faces of the Rust functions that take jsonb. pgrx decodes a jsonb argument
-- before the function runs and cannot report a value it fails to decode (nested deeper
-- than serde_json goes, a number beyond f64) other than as XX000; so each is called
-- through one of these, which refuses such a value with 22023 first (_valid_json, the
-- rule every stored value follows). The Rust functions are the owner's only
-- (security/privileges.sql); these run as the owner (SECURITY DEFINER) and touch nothing but the
-- jsonb and text they are given.

create function entitlements._normalize_catalog(doc jsonb, existing_features jsonb)
returns jsonb language plpgsql immutable parallel safe security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._valid_json(doc, 'catalog');
    perform entitlements._valid_json(existing_features, 'existing_features');
    return entitlements._normalize_catalog_json(doc, existing_features);
end
$$;

create function entitlements._normalize_feature_value(kind text, value jsonb)
returns jsonb language plpgsql immutable parallel safe security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._valid_json(value, 'value');
    return entitlements._normalize_feature_value_json(kind, value);
end
$$;

-- Supabase's Custom Access Token hook (README, Deploy): supabase_auth_admin calls it.
create function entitlements.custom_access_token_hook(event jsonb)
returns jsonb language plpgsql stable parallel safe security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform entitlements._valid_json(event, 'event');
    return entitlements._access_token_claims(event);
end
$$;
comment on function entitlements.custom_access_token_hook(jsonb) is
    'Supabase Auth hook: adds an entitlements claim (plan, enabled features) to the access token.';
