//! `/admin/operations`: the worker's and the tasks' recent work: task runs, Stripe events
//! (dead letters, with retry), notification deliveries (failed and dead, with retry), and
//! servers that are not ready (with retry). Retries are the extension's admin functions.
use super::error::{PageError, PageResult};
use super::html::{self, csrf_field, notice, Frame};
use super::viewer::Viewer;
use crate::Context;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{DateTime, Utc};
use maud::html;
use serde::Deserialize;
use uuid::Uuid;

#[derive(Deserialize, Default)]
pub struct Done {
    done: Option<String>,
}

type TaskRun = (String, DateTime<Utc>, Option<DateTime<Utc>>, String, Option<i64>, Option<String>, Option<String>);
type StripeEvent = (String, String, DateTime<Utc>, Option<String>, i32, Option<String>, Option<DateTime<Utc>>);
type Delivery = (i64, String, String, String, i32, Option<String>, DateTime<Utc>);
type Server = (Uuid, String, String, i32, Option<String>);

pub async fn page(State(ctx): State<Context>, viewer: Viewer, Query(done): Query<Done>) -> PageResult<Response> {
    let mut tx = viewer.begin(&ctx).await?;
    Viewer::scope(&mut tx).await?;
    let runs: Vec<TaskRun> = sqlx::query_as(
        "select task, started_at, finished_at, outcome, rows_touched, error, worker from entitlements.task_runs
          order by started_at desc limit 50",
    )
    .fetch_all(&mut *tx)
    .await?;
    let events: Vec<StripeEvent> = sqlx::query_as(
        "select id, type, received_at, outcome, attempts, last_error, dead_at from entitlements.stripe_events
          order by (dead_at is null), received_at desc limit 50",
    )
    .fetch_all(&mut *tx)
    .await?;
    let deliveries: Vec<Delivery> = sqlx::query_as(
        "select id, channel, target, status, attempts, last_error, created_at from entitlements.deliveries
          order by (status in ('dead', 'failed')) desc, id desc limit 50",
    )
    .fetch_all(&mut *tx)
    .await?;
    let servers: Vec<Server> = sqlx::query_as(
        "select id, name, phase, attempts, last_error from entitlements.server_records
          where phase not in ('ready', 'terminated') order by updated_at desc limit 50",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let csrf = viewer.csrf.as_str();
    let retry = |kind: &str, id: &str| {
        html! {
            form method="post" action="/admin/operations" class="inline" {
                (csrf_field(csrf)) input type="hidden" name="action" value=(kind); input type="hidden" name="id" value=(id);
                button type="submit" { "Retry" }
            }
        }
    };
    let when = |t: &Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
    let body = html! {
        (notice(done.done.as_deref()))
        h2 { "Task runs" }
        table id="task-runs" {
            thead { tr { th { "Task" } th { "Started" } th { "Finished" } th { "Outcome" } th class="num" { "Rows" } th { "Error" } th { "Worker" } } }
            tbody { @for (task, s, f, o, rows, e, w) in &runs {
                tr { td { (task) } td { (s.to_rfc3339()) } td { (when(f)) } td { (o) } td class="num" { (rows.unwrap_or(0)) }
                     td { (e.as_deref().unwrap_or("")) } td { (w.as_deref().unwrap_or("")) } }
            } @if runs.is_empty() { tr { td colspan="7" class="muted" { "No runs you may read." } } } }
        }
        h2 { "Stripe events" }
        table id="stripe-events" {
            thead { tr { th { "Event" } th { "Type" } th { "Received" } th { "Outcome" } th class="num" { "Attempts" } th { "Last error" } th {} } }
            tbody { @for (id, ty, at, outcome, attempts, err, dead) in &events {
                tr { td { (id) } td { (ty) } td { (at.to_rfc3339()) }
                     td { @if dead.is_some() { span class="badge sev-high" { "dead letter" } " " } (outcome.as_deref().unwrap_or("pending")) }
                     td class="num" { (attempts) } td { (err.as_deref().unwrap_or("")) }
                     td { @if dead.is_some() { (retry("stripe", id)) } } }
            } @if events.is_empty() { tr { td colspan="7" class="muted" { "No events." } } } }
        }
        h2 { "Notification deliveries" }
        table id="deliveries" {
            thead { tr { th { "#" } th { "Channel" } th { "To" } th { "Status" } th class="num" { "Attempts" } th { "Last error" } th {} } }
            tbody { @for (id, channel, target, status, attempts, err, _) in &deliveries {
                tr { td { (id) } td { (channel) } td { (target) } td { (status) } td class="num" { (attempts) } td { (err.as_deref().unwrap_or("")) }
                     td { @if status == "dead" || status == "failed" { (retry("delivery", &id.to_string())) } } }
            } @if deliveries.is_empty() { tr { td colspan="7" class="muted" { "No deliveries." } } } }
        }
        h2 { "Servers not ready" }
        table id="servers" {
            thead { tr { th { "Server" } th { "Phase" } th class="num" { "Attempts" } th { "Last error" } th {} } }
            tbody { @for (id, name, phase, attempts, err) in &servers {
                tr { td { (name) } td { (phase) } td class="num" { (attempts) } td { (err.as_deref().unwrap_or("")) }
                     td { @if phase == "failed" { (retry("server", &id.to_string())) } } }
            } @if servers.is_empty() { tr { td colspan="5" class="muted" { "Every server is ready." } } } }
        }
    };
    Ok(html::page(
        Frame { title: "Operations", section: Some("/admin/operations"), csrf: Some(csrf), admin: true },
        body,
    ))
}

#[derive(Deserialize)]
pub struct Retry {
    #[serde(default)]
    csrf: String,
    action: String,
    id: String,
}

pub async fn act(State(ctx): State<Context>, viewer: Viewer, Form(form): Form<Retry>) -> PageResult<Response> {
    viewer.check_csrf(&ctx, &form.csrf)?;
    let mut tx = viewer.begin(&ctx).await?;
    Viewer::scope(&mut tx).await?;
    let sql = match form.action.as_str() {
        "stripe" => "select entitlements.stripe_retry_event($1)",
        "delivery" => "select entitlements.retry_delivery($1::bigint)",
        "server" => "select entitlements.retry_server($1::uuid)",
        other => return Err(PageError::bad_request(format!("Unknown action {other:?}."))),
    };
    let retried: bool = sqlx::query_scalar(sql).bind(&form.id).fetch_one(&mut *tx).await?;
    tx.commit().await?;
    let done =
        if retried { format!("{} will be retried.", form.id) } else { format!("{} had nothing to retry.", form.id) };
    Ok(Redirect::to(&format!("/admin/operations?done={}", super::viewer::url_escape(&done))).into_response())
}
