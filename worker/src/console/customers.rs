//! `/admin/customers`: search, one customer's whole picture, and the actions an admin takes on
//! it, each with a reason, each run as the admin through the extension's own functions (so
//! the checks, the tenant scoping and the audit row are the database's).
use super::error::{PageError, PageResult};
use super::html::{self, csrf_field, notice, Frame};
use super::viewer::Viewer;
use crate::Context;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

#[derive(Deserialize, Default)]
pub struct Search {
    q: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Found {
    id: Uuid,
    kind: String,
    email: Option<String>,
    display_name: Option<String>,
    stripe_customer_id: Option<String>,
    tenant_id: Option<Uuid>,
    plan_key: Option<String>,
    status: Option<String>,
}

pub async fn search(State(ctx): State<Context>, viewer: Viewer, Query(q): Query<Search>) -> PageResult<Response> {
    let mut tx = viewer.begin(&ctx).await?;
    Viewer::scope(&mut tx).await?;
    let query = q.q.unwrap_or_default();
    let found: Vec<Found> =
        sqlx::query_as("select * from entitlements.search_customers($1, 50)").bind(&query).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let body = html! {
        form method="get" action="/admin/customers" role="search" {
            label for="q" { "Find a customer by id, email, name or Stripe customer id"
                input type="search" id="q" name="q" value=(query) size="50" autofocus;
            }
            button type="submit" { "Search" }
        }
        table id="customers" {
            caption class="muted" { (found.len()) " found" @if query.is_empty() { " (the newest)" } }
            thead { tr { th { "Customer" } th { "Email" } th { "Name" } th { "Plan" } th { "Stripe" } th { "Tenant" } } }
            tbody {
                @for c in &found {
                    tr {
                        td { a href=(format!("/admin/customers/{}", c.id)) { (c.id) } " " span class="badge" { (c.kind) } }
                        td { (c.email.as_deref().unwrap_or("")) }
                        td { (c.display_name.as_deref().unwrap_or("")) }
                        td { (c.plan_key.as_deref().unwrap_or("")) @if let Some(s) = &c.status { " (" (s) ")" } }
                        td { (c.stripe_customer_id.as_deref().unwrap_or("")) }
                        td { (c.tenant_id.map(|t| t.to_string()).unwrap_or_default()) }
                    }
                }
            }
        }
    };
    Ok(html::page(
        Frame { title: "Customers", section: Some("/admin/customers"), csrf: Some(&viewer.csrf), admin: true },
        body,
    ))
}

#[derive(Deserialize, Default)]
pub struct Done {
    done: Option<String>,
}

/// kind, email, name, Stripe customer, tenant, erased at.
type Profile = (String, Option<String>, Option<String>, Option<String>, Option<Uuid>, Option<DateTime<Utc>>);

#[derive(sqlx::FromRow)]
struct Subscription {
    id: Uuid,
    plan_key: String,
    status: String,
    quantity: i32,
    current_period_end: Option<DateTime<Utc>>,
    trial_end: Option<DateTime<Utc>>,
    cancel_at_period_end: bool,
    source: String,
}

#[derive(sqlx::FromRow)]
struct Grant {
    id: Uuid,
    kind: String,
    feature_key: Option<String>,
    value: Option<Value>,
    expires_at: Option<DateTime<Utc>>,
    reason: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Audit {
    at: DateTime<Utc>,
    actor: Option<Uuid>,
    actor_role: String,
    action: String,
    table_name: String,
    reason: Option<String>,
}

fn when(t: &Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339()).unwrap_or_default()
}

pub async fn detail(
    State(ctx): State<Context>,
    viewer: Viewer,
    Path(id): Path<Uuid>,
    Query(done): Query<Done>,
) -> PageResult<Response> {
    let mut tx = viewer.begin(&ctx).await?;
    Viewer::scope(&mut tx).await?;
    // As the admin: a customer of another tenant is not visible, so it is "not found".
    let profile: Option<Profile> = sqlx::query_as(
        "select kind, email, display_name, stripe_customer_id, tenant_id, erased_at
               from entitlements.customers where id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((kind, email, name, stripe_id, tenant, erased_at)) = profile else {
        return Err(PageError::not_found(format!("No customer {id} that you administer.")));
    };
    let resolved: Value =
        sqlx::query_scalar("select entitlements.entitlements($1)").bind(id).fetch_one(&mut *tx).await?;
    let subscriptions: Vec<Subscription> = sqlx::query_as(
        "select id, plan_key, status, quantity, current_period_end, trial_end, cancel_at_period_end, source
           from entitlements.subscriptions where customer_id = $1 order by created_at desc",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let grants: Vec<Grant> = sqlx::query_as(
        "select id, kind, feature_key, value, expires_at, reason from entitlements.grants
          where customer_id = $1 and revoked_at is null and (expires_at is null or expires_at > entitlements.now())
          order by created_at desc",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let servers: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "select name, phase, last_error from entitlements.server_records where customer_id = $1 order by created_at",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let notifications: Vec<(String, DateTime<Utc>, Option<String>)> = sqlx::query_as(
        "select o.kind, o.created_at,
                (select string_agg(d.channel || ': ' || d.status, ', ' order by d.id) from entitlements.deliveries d
                  where d.event_id = o.id)
           from entitlements.outbox o where o.customer_id = $1 order by o.id desc limit 20",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let audit: Vec<Audit> = sqlx::query_as(
        // The customer's rows first, by their indexes (offset 0 keeps the planner from walking
        // the whole log backwards by id to find the newest 50), then the newest of those.
        "select at, actor, actor_role, action, table_name, reason from (
            select id, at, actor, actor_role, action, table_name, reason from entitlements.audit_log
             where (table_name = 'entitlements.customers' and row_key = $1::text)
                or coalesce(new_values ->> 'customer_id', old_values ->> 'customer_id') = $1::text
            offset 0) trail
          order by id desc limit 50",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let plans: Vec<(String, String)> = sqlx::query_as(
        "select key, name from entitlements.plans where active and ($1::uuid is null or tenant_id is null or tenant_id = $1)
          order by position, key",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    let features: Vec<(String, String)> =
        sqlx::query_as("select key, kind from entitlements.features order by key").fetch_all(&mut *tx).await?;
    tx.commit().await?;

    let csrf = viewer.csrf.as_str();
    let action_url = format!("/admin/customers/{id}/actions");
    let feature_select = |name: &str, kinds: &[&str]| -> Markup {
        html! {
            select id=(name) name="feature" required {
                @for (key, kind) in &features { @if kinds.is_empty() || kinds.contains(&kind.as_str()) { option value=(key) { (key) " (" (kind) ")" } } }
            }
        }
    };
    let reason = |form: &str| -> Markup {
        html! { label for=(format!("{form}-reason")) { "Reason" input id=(format!("{form}-reason")) name="reason" required maxlength="500"; } }
    };
    let body = html! {
        (notice(done.done.as_deref()))
        dl class="cards" id="profile" {
            div class="card" { dt class="label" { "Customer" } dd { (id) " " span class="badge" { (kind) } } }
            div class="card" { dt class="label" { "Email" } dd { (email.as_deref().unwrap_or("—")) } }
            div class="card" { dt class="label" { "Name" } dd { (name.as_deref().unwrap_or("—")) } }
            div class="card" { dt class="label" { "Stripe" } dd { (stripe_id.as_deref().unwrap_or("—")) } }
            div class="card" { dt class="label" { "Tenant" } dd { (tenant.map(|t| t.to_string()).unwrap_or_else(|| "—".into())) } }
            div class="card" { dt class="label" { "Plan" } dd id="plan" { (resolved["plan"].as_str().unwrap_or("none")) " (" (resolved["status"].as_str().unwrap_or("")) ")" } }
        }
        @if let Some(at) = erased_at { p class="error" { "Erased at " (at.to_rfc3339()) "." } }
        h2 { "Usage and features" }
        (features_table(&resolved))
        h2 { "Subscriptions" }
        table id="subscriptions" {
            thead { tr { th { "Plan" } th { "Status" } th { "Seats" } th { "Period ends" } th { "Trial ends" } th { "Source" } th { "Actions" } } }
            tbody {
                @for s in &subscriptions {
                    tr {
                        td { (s.plan_key) } td { (s.status) @if s.cancel_at_period_end { " (cancels at period end)" } }
                        td class="num" { (s.quantity) } td { (when(&s.current_period_end)) } td { (when(&s.trial_end)) } td { (s.source) }
                        td {
                            form method="post" action=(action_url) class="inline" {
                                (csrf_field(csrf)) input type="hidden" name="action" value="change_plan"; input type="hidden" name="subscription" value=(s.id);
                                label for=(format!("plan-{}", s.id)) { "New plan"
                                    select id=(format!("plan-{}", s.id)) name="plan" { @for (k, n) in &plans { option value=(k) selected[*k == s.plan_key] { (n) " (" (k) ")" } } }
                                }
                                label for=(format!("reason-{}", s.id)) { "Reason" input id=(format!("reason-{}", s.id)) name="reason" required maxlength="500"; }
                                button type="submit" { "Change plan" }
                            }
                            form method="post" action=(action_url) class="inline" {
                                (csrf_field(csrf)) input type="hidden" name="action" value="cancel"; input type="hidden" name="subscription" value=(s.id);
                                label for=(format!("now-{}", s.id)) { input type="checkbox" id=(format!("now-{}", s.id)) name="immediately" value="true"; "Cancel now (not at period end)" }
                                label for=(format!("creason-{}", s.id)) { "Reason" input id=(format!("creason-{}", s.id)) name="reason" required maxlength="500"; }
                                button type="submit" class="danger" { "Cancel" }
                            }
                        }
                    }
                }
                @if subscriptions.is_empty() { tr { td colspan="7" class="muted" { "No subscriptions." } } }
            }
        }
        h2 { "Grants" }
        table id="grants" {
            thead { tr { th { "Kind" } th { "Feature" } th { "Value" } th { "Expires" } th { "Reason" } th {} } }
            tbody {
                @for g in &grants {
                    tr {
                        td { (g.kind) } td { (g.feature_key.as_deref().unwrap_or("")) }
                        td { (g.value.as_ref().map(|v| v.to_string()).unwrap_or_default()) } td { (when(&g.expires_at)) }
                        td { (g.reason.as_deref().unwrap_or("")) }
                        td { form method="post" action=(action_url) class="inline" {
                            (csrf_field(csrf)) input type="hidden" name="action" value="revoke"; input type="hidden" name="grant" value=(g.id);
                            label for=(format!("rreason-{}", g.id)) { "Reason" input id=(format!("rreason-{}", g.id)) name="reason" required maxlength="500"; }
                            button type="submit" class="danger" { "Revoke" }
                        } }
                    }
                }
                @if grants.is_empty() { tr { td colspan="6" class="muted" { "No active grants." } } }
            }
        }
        h2 { "Actions" }
        form method="post" action=(action_url) class="action" id="boost-form" {
            (csrf_field(csrf)) input type="hidden" name="action" value="boost";
            fieldset { legend { "Boost a quota" }
                label for="boost-feature" { "Feature" (feature_select("boost-feature", &["metered"])) }
                label for="boost-amount" { "Extra amount" input id="boost-amount" name="amount" inputmode="decimal" required; }
                label for="boost-period" { "Period (blank: every)" select id="boost-period" name="period" { option value="" { "every period" } option { "day" } option { "month" } option { "billing_period" } option { "lifetime" } } }
                label for="boost-expires" { "Expires (UTC, blank: never)" input type="datetime-local" id="boost-expires" name="expires_at"; }
                (reason("boost"))
                button type="submit" { "Boost" }
            }
        }
        form method="post" action=(action_url) class="action" id="grant-form" {
            (csrf_field(csrf)) input type="hidden" name="action" value="grant";
            fieldset { legend { "Grant a feature" }
                label for="grant-feature" { "Feature" (feature_select("grant-feature", &[])) }
                label for="grant-value" { "Value (JSON, blank: on)" input id="grant-value" name="value"; }
                label for="grant-expires" { "Expires (UTC, blank: never)" input type="datetime-local" id="grant-expires" name="expires_at"; }
                (reason("grant"))
                button type="submit" { "Grant" }
            }
        }
        form method="post" action=(action_url) class="action" id="deny-form" {
            (csrf_field(csrf)) input type="hidden" name="action" value="deny";
            fieldset { legend { "Deny a feature" }
                label for="deny-feature" { "Feature" (feature_select("deny-feature", &[])) }
                label for="deny-expires" { "Expires (UTC, blank: never)" input type="datetime-local" id="deny-expires" name="expires_at"; }
                (reason("deny"))
                button type="submit" class="danger" { "Deny" }
            }
        }
        form method="post" action=(action_url) class="action" id="discount-form" {
            (csrf_field(csrf)) input type="hidden" name="action" value="discount";
            fieldset { legend { "Give a discount" }
                label for="discount-percent" { "Percent off" input id="discount-percent" name="percent_off" inputmode="decimal" required; }
                label for="discount-expires" { "Ends (UTC, blank: forever)" input type="datetime-local" id="discount-expires" name="expires_at"; }
                (reason("discount"))
                button type="submit" { "Give discount" }
            }
        }
        h2 { "Personal data" }
        p {
            form method="get" action=(format!("/admin/customers/{id}/export")) class="inline" data-busy="Preparing the export…" {
                button type="submit" { "Export (JSON download)" }
            }
            " "
            a href=(format!("/admin/customers/{id}/erase")) { "Erase this customer…" }
        }
        h2 { "Servers" }
        @if servers.is_empty() { p class="muted" { "None." } } @else {
            table id="servers" { thead { tr { th { "Server" } th { "Phase" } th { "Last error" } } }
                tbody { @for (n, p, e) in &servers { tr { td { (n) } td { (p) } td { (e.as_deref().unwrap_or("")) } } } } }
        }
        h2 { "Notifications" }
        @if notifications.is_empty() { p class="muted" { "None." } } @else {
            table id="notifications" { thead { tr { th { "Event" } th { "At" } th { "Deliveries" } } }
                tbody { @for (k, at, d) in &notifications { tr { td { (k) } td { (at.to_rfc3339()) } td { (d.as_deref().unwrap_or("")) } } } } }
        }
        h2 { "Audit trail" }
        table id="audit" {
            thead { tr { th { "At" } th { "Actor" } th { "Change" } th { "Reason" } } }
            tbody {
                @for a in &audit {
                    tr { td { (a.at.to_rfc3339()) } td class="actor" { (a.actor.map(|u| u.to_string()).unwrap_or_else(|| format!("role {}", a.actor_role))) }
                         td { (a.action) " " (a.table_name) } td { (a.reason.as_deref().unwrap_or("")) } }
                }
                @if audit.is_empty() { tr { td colspan="4" class="muted" { "Nothing you may read." } } }
            }
        }
    };
    let title = format!("Customer {}", email.as_deref().or(name.as_deref()).unwrap_or("(no email)"));
    Ok(html::page(Frame { title: &title, section: Some("/admin/customers"), csrf: Some(csrf), admin: true }, body))
}

/// The resolved features of `entitlements(customer)`: value, and for limited ones a usage bar.
pub fn features_table(resolved: &Value) -> Markup {
    let empty = serde_json::Map::new();
    let features = resolved["features"].as_object().unwrap_or(&empty);
    html! {
        table id="features" {
            thead { tr { th { "Feature" } th { "Value" } th { "Usage" } } }
            tbody {
                @for (key, f) in features {
                    tr data-feature=(key) {
                        td { (key) }
                        td { @if f.get("value").is_some() { (html::number(&f["value"])) } }
                        td {
                            @if let Some(used) = f.get("used").and_then(Value::as_f64) {
                                (html::usage_bar(key, used, f.get("limit").and_then(Value::as_f64), f.get("resets_at").and_then(Value::as_str)))
                            }
                        }
                    }
                }
                @if features.is_empty() { tr { td colspan="3" class="muted" { "No features." } } }
            }
        }
    }
}

/// The longest reason an action takes (the forms say so too).
const MAX_REASON: usize = 500;

#[derive(Deserialize)]
pub struct Action {
    #[serde(default)]
    csrf: String,
    action: String,
    #[serde(default)]
    reason: String,
    feature: Option<String>,
    amount: Option<String>,
    period: Option<String>,
    expires_at: Option<String>,
    value: Option<String>,
    subscription: Option<String>,
    plan: Option<String>,
    immediately: Option<String>,
    grant: Option<String>,
    percent_off: Option<String>,
    confirm: Option<String>,
}

fn text(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

pub async fn act(
    State(ctx): State<Context>,
    viewer: Viewer,
    Path(id): Path<Uuid>,
    Form(form): Form<Action>,
) -> PageResult<Response> {
    viewer.check_csrf(&ctx, &form.csrf)?;
    let reason = form.reason.trim();
    if reason.is_empty() {
        return Err(PageError::bad_request("Every action needs a reason: it goes into the audit log."));
    }
    if reason.chars().count() > MAX_REASON {
        return Err(PageError::bad_request(format!("A reason is at most {MAX_REASON} characters.")));
    }
    let mut tx = viewer.begin(&ctx).await?;
    Viewer::scope(&mut tx).await?;
    // Values go to the database as text and are read there (numbers, JSON, instants), so bad
    // input is refused with the extension's own message and SQLSTATE, and nothing is written.
    let done = match form.action.as_str() {
        "boost" => {
            sqlx::query(
                "select entitlements.boost_quota($1, $2, $3::numeric, nullif($4, ''), nullif($5, '')::timestamp at time zone 'UTC', $6)",
            )
            .bind(id)
            .bind(text(&form.feature))
            .bind(text(&form.amount))
            .bind(text(&form.period).unwrap_or(""))
            .bind(text(&form.expires_at).unwrap_or(""))
            .bind(reason)
            .execute(&mut *tx)
            .await?;
            format!("Boosted {} by {}.", text(&form.feature).unwrap_or(""), text(&form.amount).unwrap_or(""))
        }
        "grant" => {
            sqlx::query(
                "select entitlements.grant_feature($1, $2, nullif($3, '')::jsonb, nullif($4, '')::timestamp at time zone 'UTC', $5)",
            )
            .bind(id)
            .bind(text(&form.feature))
            .bind(text(&form.value).unwrap_or(""))
            .bind(text(&form.expires_at).unwrap_or(""))
            .bind(reason)
            .execute(&mut *tx)
            .await?;
            format!("Granted {}.", text(&form.feature).unwrap_or(""))
        }
        "deny" => {
            sqlx::query("select entitlements.deny_feature($1, $2, nullif($3, '')::timestamp at time zone 'UTC', $4)")
                .bind(id)
                .bind(text(&form.feature))
                .bind(text(&form.expires_at).unwrap_or(""))
                .bind(reason)
                .execute(&mut *tx)
                .await?;
            format!("Denied {}.", text(&form.feature).unwrap_or(""))
        }
        "revoke" => {
            let grant = own_row(&mut tx, Table::Grants, text(&form.grant), id).await?;
            sqlx::query("select entitlements.revoke_grant($1, $2)").bind(grant).bind(reason).execute(&mut *tx).await?;
            "Revoked the grant.".to_owned()
        }
        "discount" => {
            sqlx::query(
                "select entitlements.grant_discount($1, $2::numeric, nullif($3, '')::timestamp at time zone 'UTC', $4)",
            )
            .bind(id)
            .bind(text(&form.percent_off))
            .bind(text(&form.expires_at).unwrap_or(""))
            .bind(reason)
            .execute(&mut *tx)
            .await?;
            format!("Gave {}% off.", text(&form.percent_off).unwrap_or(""))
        }
        "change_plan" => {
            let sub = own_row(&mut tx, Table::Subscriptions, text(&form.subscription), id).await?;
            sqlx::query("select entitlements.change_plan($1, $2, $3)")
                .bind(sub)
                .bind(text(&form.plan))
                .bind(reason)
                .execute(&mut *tx)
                .await?;
            format!("Changed the plan to {}.", text(&form.plan).unwrap_or(""))
        }
        "cancel" => {
            let sub = own_row(&mut tx, Table::Subscriptions, text(&form.subscription), id).await?;
            let now = form.immediately.as_deref() == Some("true");
            // cancel() takes no reason: it rides on the transaction for the audit row.
            sqlx::query("select set_config('entitlements.reason', $1, true)").bind(reason).execute(&mut *tx).await?;
            sqlx::query("select entitlements.cancel($1, $2)").bind(sub).bind(!now).execute(&mut *tx).await?;
            if now {
                "Canceled now.".to_owned()
            } else {
                "Cancels at the end of the period.".to_owned()
            }
        }
        "erase" => {
            if text(&form.confirm) != Some(id.to_string().as_str()) {
                return Err(PageError::bad_request("To erase, type the customer's id exactly as shown."));
            }
            sqlx::query("select entitlements.erase_customer($1, $2)").bind(id).bind(reason).execute(&mut *tx).await?;
            "Erased: personal data removed, financial records kept.".to_owned()
        }
        other => return Err(PageError::bad_request(format!("Unknown action {other:?}."))),
    };
    tx.commit().await?;
    tracing::info!(user = %viewer.user(), customer = %id, action = %form.action, "console: action");
    Ok(Redirect::to(&format!("/admin/customers/{id}?done={}", super::viewer::url_escape(&done))).into_response())
}

enum Table {
    Grants,
    Subscriptions,
}

/// The id of a row of `table` (grants, subscriptions) that belongs to `customer`: a form of
/// one customer's page cannot act on another's row.
async fn own_row(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    table: Table,
    id: Option<&str>,
    customer: Uuid,
) -> PageResult<Uuid> {
    let id = id.and_then(|s| Uuid::parse_str(s).ok()).ok_or_else(|| PageError::bad_request("No such row."))?;
    let sql = match table {
        Table::Grants => "select exists (select 1 from entitlements.grants where id = $1 and customer_id = $2)",
        Table::Subscriptions => {
            "select exists (select 1 from entitlements.subscriptions where id = $1 and customer_id = $2)"
        }
    };
    let belongs: bool = sqlx::query_scalar(sql).bind(id).bind(customer).fetch_one(&mut **tx).await?;
    if !belongs {
        return Err(PageError::not_found("That row is not this customer's."));
    }
    Ok(id)
}

pub async fn export(State(ctx): State<Context>, viewer: Viewer, Path(id): Path<Uuid>) -> PageResult<Response> {
    let mut tx = viewer.begin(&ctx).await?;
    let doc: Value = sqlx::query_scalar("select entitlements.export_customer($1)").bind(id).fetch_one(&mut *tx).await?;
    tx.commit().await?;
    let body = serde_json::to_string_pretty(&doc).unwrap_or_default();
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"customer-{id}.json\"")),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        body,
    )
        .into_response())
}

/// The erasure's confirmation page (no JavaScript needed): the id must be typed again.
pub async fn confirm_erase(State(ctx): State<Context>, viewer: Viewer, Path(id): Path<Uuid>) -> PageResult<Response> {
    let mut tx = viewer.begin(&ctx).await?;
    Viewer::scope(&mut tx).await?;
    tx.commit().await?;
    let body = html! {
        p { "Erasing removes this customer's email, name, locale, metadata and their copies from every table. "
            "Subscriptions, invoices' amounts and revenue history stay (they are financial records). It cannot be undone." }
        form method="post" action=(format!("/admin/customers/{id}/actions")) class="action" id="erase-form" data-busy="Erasing…" {
            (csrf_field(&viewer.csrf)) input type="hidden" name="action" value="erase";
            fieldset { legend { "Erase customer " (id) }
                label for="confirm" { "Type the customer's id to confirm" input id="confirm" name="confirm" required autocomplete="off" size="40"; }
                label for="erase-reason" { "Reason (no personal data)" input id="erase-reason" name="reason" required maxlength="500"; }
                button type="submit" class="danger" { "Erase" }
            }
        }
        p { a href=(format!("/admin/customers/{id}")) { "Back to the customer" } }
    };
    Ok(html::page(
        Frame { title: "Erase a customer", section: Some("/admin/customers"), csrf: Some(&viewer.csrf), admin: true },
        body,
    ))
}
