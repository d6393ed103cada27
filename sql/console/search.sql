-- Finding a customer (the console's search; also for apps' own admin screens): by exact id,
-- exact Stripe customer id, or the start of an email address or display name (any case).
-- Runs as the caller: RLS decides whom they find (a tenant admin finds their tenant's only).
create index customers_email_prefix on entitlements.customers (lower(email) text_pattern_ops) where email is not null;
create index customers_name_prefix on entitlements.customers (lower(display_name) text_pattern_ops)
    where display_name is not null;
create index customers_stripe_id on entitlements.customers (stripe_customer_id) where stripe_customer_id is not null;

create function entitlements.search_customers(query text, max_rows integer default 50)
returns table (id uuid, kind text, email text, display_name text, stripe_customer_id text, tenant_id uuid,
               plan_key text, status text, created_at timestamptz)
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_q text := btrim(coalesce(query, ''));
    v_prefix text;
begin
    if max_rows is null or max_rows not between 1 and 500 then
        raise exception 'max_rows must be between 1 and 500' using errcode = '22023';
    end if;
    if length(v_q) > 320 then
        raise exception 'query must be at most 320 characters' using errcode = '22023';
    end if;
    -- LIKE's wildcards in what was typed are matched as themselves.
    v_prefix := replace(replace(replace(lower(v_q), '\', '\\'), '%', '\%'), '_', '\_') || '%';
    return query
    select c.id, c.kind, c.email, c.display_name, c.stripe_customer_id, c.tenant_id, s.plan_key, s.status, c.created_at
      from (
        select x.* from entitlements.customers x
         where v_q ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$' and x.id = v_q::uuid
        union
        select x.* from entitlements.customers x where v_q like 'cus\_%' and x.stripe_customer_id = v_q
        union
        (select x.* from entitlements.customers x
          where v_q <> '' and x.email is not null and lower(x.email) like v_prefix
          order by lower(x.email) limit max_rows)
        union
        (select x.* from entitlements.customers x
          where v_q <> '' and x.display_name is not null and lower(x.display_name) like v_prefix
          order by lower(x.display_name) limit max_rows)
        union
        (select x.* from entitlements.customers x where v_q = '' order by x.created_at desc, x.id limit max_rows)
      ) c
      left join lateral (
        select s.plan_key, s.status from entitlements.subscriptions s
         where s.customer_id = c.id order by s.created_at desc limit 1) s on true
     order by c.email nulls last, c.id
     limit max_rows;
end
$$;
comment on function entitlements.search_customers(text, integer) is
    'Customers by exact id, exact Stripe customer id, or the start of an email or name (empty: the newest), with their latest plan; as the caller sees them.';

-- A customer's audit trail (the console's customer page): their customers row by its key, and
-- every other row that names them as customer_id, by this index rather than a scan of the log.
create index audit_log_customer on entitlements.audit_log ((coalesce(new_values ->> 'customer_id', old_values ->> 'customer_id')));
