-- The statements /admin/customers?q=... runs (worker/src/console/customers.rs), for a global admin.
select exists (select 1 from entitlements.admin_tokens where user_id = entitlements.current_user_id() and revoked_at is null);
select coalesce(bool_or(tenant_id is null), false) from entitlements.admins where user_id = entitlements.current_user_id();
select * from entitlements.search_customers(:q, 50);
