//! `/admin/revenue`: MRR movements month by month, trial conversion, and usage, cost and margin
//! by plan, from `revenue_movements`, `conversions` and `usage_report`; a tenant filter for
//! global admins (a tenant admin sees their tenant).
use super::charts;
use super::error::PageResult;
use super::html::{self, money, Frame};
use super::overview::{tenant_picker, Filter};
use super::viewer::Viewer;
use crate::Context;
use axum::extract::{Query, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use maud::html;

type Movement = (DateTime<Utc>, i64, i64, i64, i64, i64, i64, i64, i32, i32, Option<f64>, Option<f64>);
type Conversion = (DateTime<Utc>, String, i32, i32, Option<f64>);
type Usage = (String, String, i32, f64, f64, f64, f64);

pub async fn page(State(ctx): State<Context>, viewer: Viewer, Query(filter): Query<Filter>) -> PageResult<Response> {
    let mut tx = viewer.begin(&ctx).await?;
    let scope = Viewer::scope(&mut tx).await?;
    let tenant = scope.tenant(filter.tenant);
    let currency = filter.currency();
    let months: Vec<Movement> = sqlx::query_as(
        "select bucket_start, coalesce(start_mrr, 0), coalesce(new_mrr, 0), coalesce(expansion_mrr, 0),
                coalesce(contraction_mrr, 0), coalesce(churned_mrr, 0), coalesce(reactivation_mrr, 0), coalesce(end_mrr, 0),
                coalesce(customers_end, 0), coalesce(new_customers, 0), arpa::float8, net_mrr_churn::float8
           from entitlements.revenue_movements(date_trunc('month', entitlements.now()) - interval '11 months',
                                               entitlements.now(), 'month', $1, $2) order by bucket_start",
    )
    .bind(&currency)
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    let conversions: Vec<Conversion> = sqlx::query_as(
        "select cohort_start, kind, coalesce(started, 0), coalesce(converted, 0), rate::float8
           from entitlements.conversions(date_trunc('month', entitlements.now()) - interval '5 months',
                                         entitlements.now(), 'month', $1) order by cohort_start, kind",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    let usage: Vec<Usage> = sqlx::query_as(
        "select plan_key, coalesce(feature_key, '(subscription)'), coalesce(customers, 0), coalesce(units, 0)::float8, coalesce(revenue_cents, 0)::float8,
                coalesce(cost_cents, 0)::float8, coalesce(margin_cents, 0)::float8
           from entitlements.usage_report(date_trunc('month', entitlements.now()), entitlements.now(), $1, $2)
          order by plan_key, feature_key",
    )
    .bind(&currency)
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let fmt = |c: f64| money(c as i64, &currency);
    let net: Vec<(String, f64)> = months
        .iter()
        .map(|m| (m.0.format("%b %y").to_string(), (m.2 + m.3 + m.6 - m.4.abs() - m.5.abs()) as f64))
        .collect();
    let net_bars: Vec<(&str, f64)> = net.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    let cents = |v: f64| money(v.round() as i64, &currency);
    let body = html! {
        (tenant_picker("/admin/revenue", &scope, tenant, &currency))
        h2 { "Net new MRR by month" }
        (charts::bars("net-mrr-chart", "Net new MRR by month", &net_bars, fmt))
        table id="movements" {
            thead { tr { th { "Month" } th class="num" { "Start" } th class="num" { "New" } th class="num" { "Expansion" } th class="num" { "Contraction" }
                         th class="num" { "Churn" } th class="num" { "Reactivation" } th class="num" { "End" } th class="num" { "Customers" } th class="num" { "ARPA" } th class="num" { "Net churn" } } }
            tbody { @for m in &months {
                tr { td { (m.0.format("%Y-%m")) } td class="num" { (fmt(m.1 as f64)) } td class="num" { (fmt(m.2 as f64)) } td class="num" { (fmt(m.3 as f64)) }
                     td class="num" { (fmt(m.4 as f64)) } td class="num" { (fmt(m.5 as f64)) } td class="num" { (fmt(m.6 as f64)) } td class="num" { (fmt(m.7 as f64)) }
                     td class="num" { (m.8) } td class="num" { (m.10.map(cents).unwrap_or_default()) }
                     td class="num" { (m.11.map(|v| format!("{:.1}%", v * 100.0)).unwrap_or_default()) } }
            } }
        }
        h2 { "Trial conversion" }
        table id="conversions" {
            thead { tr { th { "Cohort" } th { "Kind" } th class="num" { "Started" } th class="num" { "Converted" } th class="num" { "Rate" } } }
            tbody { @for c in &conversions {
                tr { td { (c.0.format("%Y-%m")) } td { (c.1) } td class="num" { (c.2) } td class="num" { (c.3) }
                     td class="num" { (c.4.map(|r| format!("{:.1}%", r * 100.0)).unwrap_or_default()) } }
            } @if conversions.is_empty() { tr { td colspan="5" class="muted" { "No trials in these months." } } } }
        }
        h2 { "Usage, cost and margin this month" }
        table id="usage" {
            thead { tr { th { "Plan" } th { "Feature" } th class="num" { "Customers" } th class="num" { "Units" } th class="num" { "Revenue" } th class="num" { "Cost" } th class="num" { "Margin" } } }
            tbody { @for u in &usage {
                tr { td { (u.0) } td { (u.1) } td class="num" { (u.2) } td class="num" { (html::trim_float(u.3)) }
                     td class="num" { (cents(u.4)) } td class="num" { (cents(u.5)) } td class="num" { (cents(u.6)) } }
            } @if usage.is_empty() { tr { td colspan="7" class="muted" { "No usage this month." } } } }
        }
    };
    Ok(html::page(
        Frame { title: "Revenue", section: Some("/admin/revenue"), csrf: Some(&viewer.csrf), admin: true },
        body,
    ))
}
