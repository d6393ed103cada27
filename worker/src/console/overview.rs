//! `/admin`: MRR and ARR over the last 12 months, this month's movements, subscriptions by
//! status and plan, open alerts, failing tasks and provisioning phases. Every figure comes
//! from the extension's own functions (mrr, revenue_movements) as the signed-in admin.
use super::charts;
use super::error::PageResult;
use super::html::{self, money, Frame};
use super::viewer::{Scope, Viewer};
use crate::Context;
use axum::extract::{Query, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use maud::html;
use serde::Deserialize;
use uuid::Uuid;

#[derive(Deserialize, Default)]
pub struct Filter {
    pub currency: Option<String>,
    pub tenant: Option<Uuid>,
    /// What the action that led here did (shown as a notice).
    pub done: Option<String>,
}

impl Filter {
    pub fn currency(&self) -> String {
        self.currency
            .clone()
            .filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()))
            .unwrap_or_else(|| "usd".into())
            .to_lowercase()
    }
}

#[derive(sqlx::FromRow)]
struct Month {
    bucket_start: DateTime<Utc>,
    end_mrr: i64,
    arr: i64,
    new_mrr: i64,
    expansion_mrr: i64,
    contraction_mrr: i64,
    churned_mrr: i64,
    reactivation_mrr: i64,
}

/// The tenant picker of global admins and multi-tenant admins (a GET form: works without JS).
pub fn tenant_picker(action: &str, scope: &Scope, tenant: Option<Uuid>, currency: &str) -> maud::Markup {
    html! {
        form method="get" action=(action) class="inline" {
            label for="tenant" { "Tenant"
                @match scope {
                    Scope::Global => {
                        input id="tenant" name="tenant" placeholder="every tenant (or a tenant id)" value=(tenant.map(|t| t.to_string()).unwrap_or_default()) size="38";
                    }
                    Scope::Tenants(ts) => {
                        select id="tenant" name="tenant" {
                            @for t in ts { option value=(t) selected[Some(*t) == tenant] { (t) } }
                        }
                    }
                }
            }
            label for="currency" { "Currency" input id="currency" name="currency" value=(currency) size="4"; }
            button type="submit" { "Show" }
        }
    }
}

pub async fn page(State(ctx): State<Context>, viewer: Viewer, Query(filter): Query<Filter>) -> PageResult<Response> {
    let mut tx = viewer.begin(&ctx).await?;
    let scope = Viewer::scope(&mut tx).await?;
    let tenant = scope.tenant(filter.tenant);
    let currency = filter.currency();
    let mrr: i64 = sqlx::query_scalar("select entitlements.mrr(entitlements.now(), $1, $2)")
        .bind(&currency)
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await?;
    let months: Vec<Month> = sqlx::query_as(
        "select bucket_start, coalesce(end_mrr, 0) as end_mrr, coalesce(arr, 0) as arr, coalesce(new_mrr, 0) as new_mrr,
                coalesce(expansion_mrr, 0) as expansion_mrr, coalesce(contraction_mrr, 0) as contraction_mrr,
                coalesce(churned_mrr, 0) as churned_mrr, coalesce(reactivation_mrr, 0) as reactivation_mrr
           from entitlements.revenue_movements(date_trunc('month', entitlements.now()) - interval '11 months',
                                               entitlements.now(), 'month', $1, $2)
          order by bucket_start",
    )
    .bind(&currency)
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    let by_status: Vec<(String, String, i64)> = sqlx::query_as(
        "select s.plan_key, s.status, count(*) from entitlements.subscriptions s
          where $1::uuid is null
             or exists (select 1 from entitlements.customers c where c.id = s.customer_id and c.tenant_id = $1)
          group by 1, 2 order by 1, 2",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    let alerts: Vec<(String, i64)> = sqlx::query_as(
        "select severity, count(*) from entitlements.security_alerts
          where status = 'open' and ($1::uuid is null or tenant_id = $1)
          group by 1 order by array_position(array['critical','high','medium','low','info'], severity)",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    let failing: Vec<(String, DateTime<Utc>, Option<String>)> = sqlx::query_as(
        "select task, started_at, error from (
            select distinct on (task) task, started_at, outcome, error from entitlements.task_runs
             where outcome <> 'skipped' order by task, started_at desc) latest
          where outcome = 'error' order by task",
    )
    .fetch_all(&mut *tx)
    .await?;
    let phases: Vec<(String, i64)> = sqlx::query_as(
        "select r.phase, count(*) from entitlements.server_records r
          where $1::uuid is null
             or exists (select 1 from entitlements.customers c where c.id = r.customer_id and c.tenant_id = $1)
          group by 1 order by 1",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;

    let fmt = |c: f64| money(c as i64, &currency);
    let points: Vec<(String, f64)> =
        months.iter().map(|m| (m.bucket_start.format("%b %y").to_string(), m.end_mrr as f64)).collect();
    let arr_points: Vec<(String, f64)> =
        months.iter().map(|m| (m.bucket_start.format("%b %y").to_string(), m.arr as f64)).collect();
    let this_month = months.last();
    let movement_bars: Vec<(&str, f64)> = this_month
        .map(|m| {
            vec![
                ("New", m.new_mrr as f64),
                ("Expansion", m.expansion_mrr as f64),
                ("Reactivation", m.reactivation_mrr as f64),
                ("Contraction", -(m.contraction_mrr.abs() as f64)),
                ("Churn", -(m.churned_mrr.abs() as f64)),
            ]
        })
        .unwrap_or_default();
    let body = html! {
        (tenant_picker("/admin", &scope, tenant, &currency))
        div class="cards" {
            div class="card" { div class="label" { "MRR now" } div class="figure" id="mrr" data-cents=(mrr) { (money(mrr, &currency)) } }
            div class="card" { div class="label" { "ARR now" } div class="figure" id="arr" data-cents=(mrr * 12) { (money(mrr * 12, &currency)) } }
            div class="card" { div class="label" { "Open alerts" } div class="figure" id="open-alerts" { (alerts.iter().map(|a| a.1).sum::<i64>()) } }
            div class="card" { div class="label" { "Failing tasks" } div class="figure" id="failing-tasks" { (failing.len()) } }
        }
        h2 { "MRR, last 12 months" }
        (charts::line("mrr-chart", "MRR at the end of each month", &points, fmt))
        h2 { "ARR, last 12 months" }
        (charts::line("arr-chart", "ARR at the end of each month", &arr_points, fmt))
        h2 { "This month's movements" }
        (charts::bars("movements-chart", "MRR movements this month", &movement_bars, fmt))
        table id="movements" {
            caption class="muted" { "MRR movements this month" }
            thead { tr { th { "Movement" } th class="num" { "Amount" } } }
            tbody { @for (label, v) in &movement_bars { tr { td { (label) } td class="num" { (money(*v as i64, &currency)) } } } }
        }
        h2 { "Subscriptions by plan and status" }
        table id="subscriptions-by-status" {
            thead { tr { th { "Plan" } th { "Status" } th class="num" { "Subscriptions" } } }
            tbody {
                @for (plan, status, n) in &by_status { tr { td { (plan) } td { (status) } td class="num" { (n) } } }
                @if by_status.is_empty() { tr { td colspan="3" class="muted" { "No subscriptions yet." } } }
            }
        }
        h2 { "Open security alerts" }
        @if alerts.is_empty() { p class="muted" { "None open." } } @else {
            ul { @for (sev, n) in &alerts { li { span class=(format!("badge sev-{sev}")) { (sev) } " " (n) } } }
            p { a href="/admin/security" { "See the alerts" } }
        }
        h2 { "Failing tasks" }
        @if failing.is_empty() { p class="muted" { "Every task's latest run succeeded." } } @else {
            table { thead { tr { th { "Task" } th { "Last run" } th { "Error" } } }
                tbody { @for (task, at, err) in &failing { tr { td { (task) } td { (at.to_rfc3339()) } td { (err.as_deref().unwrap_or("")) } } } } }
        }
        h2 { "Provisioning" }
        @if phases.is_empty() { p class="muted" { "No servers." } } @else {
            table id="provisioning-phases" { thead { tr { th { "Phase" } th class="num" { "Servers" } } }
                tbody { @for (phase, n) in &phases { tr { td { (phase) } td class="num" { (n) } } } } }
        }
    };
    Ok(html::page(Frame { title: "Overview", section: Some("/admin"), csrf: Some(&viewer.csrf), admin: true }, body))
}
