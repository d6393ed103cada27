//! `/admin/security`: open alerts and incidents, and what an admin does with them (open an
//! incident from alerts, acknowledge, assign, resolve, reopen), through the extension's
//! incident functions, which check the real caller and keep the state machine.
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

#[derive(sqlx::FromRow)]
struct Alert {
    id: i64,
    rule: String,
    subject: String,
    severity: String,
    count: i32,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    incident_id: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct Incident {
    id: i64,
    title: String,
    severity: String,
    status: String,
    assignee: Option<Uuid>,
    opened_at: DateTime<Utc>,
    resolution: Option<String>,
}

pub async fn page(State(ctx): State<Context>, viewer: Viewer, Query(done): Query<Done>) -> PageResult<Response> {
    let mut tx = viewer.begin(&ctx).await?;
    Viewer::scope(&mut tx).await?;
    let alerts: Vec<Alert> = sqlx::query_as(
        "select id, rule, subject, severity, count, first_seen, last_seen, incident_id from entitlements.security_alerts
          where status = 'open'
          order by array_position(array['critical','high','medium','low','info'], severity), last_seen desc limit 200",
    )
    .fetch_all(&mut *tx)
    .await?;
    let incidents: Vec<Incident> = sqlx::query_as(
        "select id, title, severity, status, assignee, opened_at, resolution from entitlements.security_incidents
          order by (status = 'resolved'), opened_at desc limit 100",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let csrf = viewer.csrf.as_str();
    let body = html! {
        (notice(done.done.as_deref()))
        h2 { "Open alerts" }
        form method="post" action="/admin/security" id="open-incident-form" {
            (csrf_field(csrf)) input type="hidden" name="action" value="open";
            table id="alerts" {
                thead { tr { th { span class="muted" { "Pick" } } th { "Severity" } th { "Rule" } th { "Subject" } th class="num" { "Count" } th { "First seen" } th { "Last seen" } th { "Incident" } } }
                tbody {
                    @for a in &alerts {
                        tr {
                            td { input type="checkbox" name="alert" value=(a.id) id=(format!("alert-{}", a.id)) aria-label=(format!("Alert {} ({})", a.id, a.rule)); }
                            td { span class=(format!("badge sev-{}", a.severity)) { (a.severity) } } td { (a.rule) } td { (a.subject) }
                            td class="num" { (a.count) } td { (a.first_seen.to_rfc3339()) } td { (a.last_seen.to_rfc3339()) }
                            td { (a.incident_id.map(|i| format!("#{i}")).unwrap_or_default()) }
                        }
                    }
                    @if alerts.is_empty() { tr { td colspan="8" class="muted" { "No open alerts." } } }
                }
            }
            fieldset class="action" { legend { "Open an incident from the picked alerts" }
                label for="incident-title" { "Title" input id="incident-title" name="title" required maxlength="200"; }
                button type="submit" { "Open incident" }
            }
        }
        h2 { "Incidents" }
        table id="incidents" {
            thead { tr { th { "#" } th { "Title" } th { "Severity" } th { "Status" } th { "Assignee" } th { "Opened" } th { "Act" } } }
            tbody {
                @for i in &incidents {
                    tr data-incident=(i.id) {
                        td { (i.id) } td { (i.title) } td { span class=(format!("badge sev-{}", i.severity)) { (i.severity) } }
                        td class="status" { (i.status) @if let Some(r) = &i.resolution { ": " (r) } }
                        td { (i.assignee.map(|a| a.to_string()).unwrap_or_default()) } td { (i.opened_at.to_rfc3339()) }
                        td {
                            @if i.status == "open" {
                                form method="post" action="/admin/security" class="inline" {
                                    (csrf_field(csrf)) input type="hidden" name="action" value="acknowledge"; input type="hidden" name="incident" value=(i.id);
                                    button type="submit" { "Acknowledge" }
                                }
                            }
                            @if i.status != "resolved" {
                                form method="post" action="/admin/security" class="inline" {
                                    (csrf_field(csrf)) input type="hidden" name="action" value="assign"; input type="hidden" name="incident" value=(i.id);
                                    label for=(format!("assignee-{}", i.id)) { "Assignee (user id)" input id=(format!("assignee-{}", i.id)) name="assignee" required size="36"; }
                                    button type="submit" { "Assign" }
                                }
                                form method="post" action="/admin/security" class="inline" {
                                    (csrf_field(csrf)) input type="hidden" name="action" value="resolve"; input type="hidden" name="incident" value=(i.id);
                                    label for=(format!("resolution-{}", i.id)) { "Resolution" input id=(format!("resolution-{}", i.id)) name="text" required maxlength="2000"; }
                                    button type="submit" { "Resolve" }
                                }
                            } @else {
                                form method="post" action="/admin/security" class="inline" {
                                    (csrf_field(csrf)) input type="hidden" name="action" value="reopen"; input type="hidden" name="incident" value=(i.id);
                                    label for=(format!("reopen-{}", i.id)) { "Why" input id=(format!("reopen-{}", i.id)) name="text" required maxlength="2000"; }
                                    button type="submit" { "Reopen" }
                                }
                            }
                        }
                    }
                }
                @if incidents.is_empty() { tr { td colspan="7" class="muted" { "No incidents." } } }
            }
        }
    };
    Ok(html::page(Frame { title: "Security", section: Some("/admin/security"), csrf: Some(csrf), admin: true }, body))
}

/// The form is read as pairs: `alert` repeats.
pub async fn act(
    State(ctx): State<Context>,
    viewer: Viewer,
    Form(pairs): Form<Vec<(String, String)>>,
) -> PageResult<Response> {
    let field = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.trim().to_owned()).unwrap_or_default();
    viewer.check_csrf(&ctx, &field("csrf"))?;
    let incident = field("incident");
    let mut tx = viewer.begin(&ctx).await?;
    Viewer::scope(&mut tx).await?;
    let done = match field("action").as_str() {
        "open" => {
            let alerts = pairs
                .iter()
                .filter(|(n, _)| n == "alert")
                .map(|(_, v)| v.parse::<i64>())
                .collect::<Result<Vec<i64>, _>>()
                .map_err(|_| PageError::bad_request("An alert id is not a number."))?;
            let id: i64 = sqlx::query_scalar("select entitlements.open_incident($1, $2)")
                .bind(field("title"))
                .bind(&alerts)
                .fetch_one(&mut *tx)
                .await?;
            format!("Opened incident #{id} with {} alert(s).", alerts.len())
        }
        "acknowledge" => {
            sqlx::query("select entitlements.acknowledge_incident($1::bigint)")
                .bind(&incident)
                .execute(&mut *tx)
                .await?;
            format!("Acknowledged incident #{incident}.")
        }
        "assign" => {
            sqlx::query("select entitlements.assign_incident($1::bigint, $2::uuid)")
                .bind(&incident)
                .bind(field("assignee"))
                .execute(&mut *tx)
                .await?;
            format!("Assigned incident #{incident}.")
        }
        "resolve" => {
            sqlx::query("select entitlements.resolve_incident($1::bigint, $2)")
                .bind(&incident)
                .bind(field("text"))
                .execute(&mut *tx)
                .await?;
            format!("Resolved incident #{incident}.")
        }
        "reopen" => {
            sqlx::query("select entitlements.reopen_incident($1::bigint, $2)")
                .bind(&incident)
                .bind(field("text"))
                .execute(&mut *tx)
                .await?;
            format!("Reopened incident #{incident}.")
        }
        other => return Err(PageError::bad_request(format!("Unknown action {other:?}."))),
    };
    tx.commit().await?;
    Ok(Redirect::to(&format!("/admin/security?done={}", super::viewer::url_escape(&done))).into_response())
}
