-- The baseline: the same rule hand-written in PL/pgSQL the way an app developer would,
-- over the same tables (subscription status and period, organization membership,
-- expiring grants and denies, default plan). Covers flags, which is what is measured.
-- SECURITY DEFINER, as such a helper must be when policies call it: the caller's own RLS
-- on the subscription tables would otherwise run for every row it reads.
\set ON_ERROR_STOP 1
create function bench.has_feature_plpgsql(p_customer uuid, p_feature text)
returns boolean language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_kind text;
    v_plans text[];
begin
    select kind into v_kind from entitlements.features where key = p_feature;
    if not found then
        raise exception 'unknown feature %', p_feature;
    end if;
    if exists (select 1 from entitlements.grants g
                where g.customer_id = p_customer and g.feature_key = p_feature and g.kind = 'deny'
                  and g.revoked_at is null and g.starts_at <= now()
                  and (g.expires_at is null or g.expires_at > now())) then
        return false;
    end if;
    if exists (select 1 from entitlements.grants g
                where g.customer_id = p_customer and g.feature_key = p_feature and g.kind = 'feature'
                  and g.revoked_at is null and g.starts_at <= now()
                  and (g.expires_at is null or g.expires_at > now())) then
        return true;
    end if;
    select array_agg(s.plan_key) into v_plans
      from entitlements.subscriptions s
      join entitlements.plans p on p.key = s.plan_key
     where s.customer_id = any (array(select p_customer
                                      union all
                                      select m.organization_id from entitlements.members m where m.user_id = p_customer))
       and (s.ended_at is null or s.ended_at > now())
       and ((s.status = 'active' and (s.current_period_end is null or s.current_period_end > now()))
         or (s.status = 'trialing' and coalesce(s.trial_end, s.current_period_end, 'infinity') > now())
         or (s.status = 'past_due' and s.status_changed_at + make_interval(days => p.grace_days) > now())
         or (s.status = 'canceled' and s.cancel_at_period_end and s.current_period_end > now()));
    if v_plans is null then
        select array[p.key] into v_plans from entitlements.plans p where p.is_default;
    end if;
    return coalesce((select bool_or((e.spec ->> 'enabled')::boolean)
                       from entitlements.plan_entitlements e
                      where e.plan_key = any (v_plans) and e.feature_key = p_feature), false);
end
$$;
