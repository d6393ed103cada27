-- The statements /admin/customers/ID runs (worker/src/console/customers.rs), for a global admin.
select exists (select 1 from entitlements.admin_tokens where user_id = entitlements.current_user_id() and revoked_at is null);
select coalesce(bool_or(tenant_id is null), false) from entitlements.admins where user_id = entitlements.current_user_id();
select kind, email, display_name, stripe_customer_id, tenant_id, erased_at from entitlements.customers where id = :q;
select entitlements.entitlements(:q);
select id, plan_key, status, quantity, current_period_end, trial_end, cancel_at_period_end, source
  from entitlements.subscriptions where customer_id = :q order by created_at desc;
select id, kind, feature_key, value, expires_at, reason from entitlements.grants
 where customer_id = :q and revoked_at is null and (expires_at is null or expires_at > entitlements.now()) order by created_at desc;
select name, phase, last_error from entitlements.server_records where customer_id = :q order by created_at;
select o.kind, o.created_at, (select string_agg(d.channel || ': ' || d.status, ', ' order by d.id) from entitlements.deliveries d
  where d.event_id = o.id) from entitlements.outbox o where o.customer_id = :q order by o.id desc limit 20;
select at, actor, actor_role, action, table_name, reason from (
    select id, at, actor, actor_role, action, table_name, reason from entitlements.audit_log
     where (table_name = 'entitlements.customers' and row_key = :q::text)
        or coalesce(new_values ->> 'customer_id', old_values ->> 'customer_id') = :q::text
    offset 0) trail
 order by id desc limit 50;
select key, name from entitlements.plans where active order by position, key;
select key, kind from entitlements.features order by key;
