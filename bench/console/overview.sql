-- The statements /admin runs (worker/src/console/overview.rs and viewer.rs), for a global admin.
select exists (select 1 from entitlements.admin_tokens where user_id = entitlements.current_user_id() and revoked_at is null);
select coalesce(bool_or(tenant_id is null), false), coalesce(array_agg(tenant_id) filter (where tenant_id is not null), '{}')
  from entitlements.admins where user_id = entitlements.current_user_id();
select entitlements.mrr(entitlements.now(), 'usd', null);
select bucket_start, end_mrr, arr, new_mrr, expansion_mrr, contraction_mrr, churned_mrr, reactivation_mrr
  from entitlements.revenue_movements(date_trunc('month', entitlements.now()) - interval '11 months', entitlements.now(), 'month', 'usd', null);
select s.plan_key, s.status, count(*) from entitlements.subscriptions s group by 1, 2 order by 1, 2;
select severity, count(*) from entitlements.security_alerts where status = 'open' group by 1;
select task, started_at, error from (select distinct on (task) task, started_at, outcome, error from entitlements.task_runs
  where outcome <> 'skipped' order by task, started_at desc) latest where outcome = 'error' order by task;
select r.phase, count(*) from entitlements.server_records r group by 1 order by 1;
