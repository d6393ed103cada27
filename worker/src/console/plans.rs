//! `/admin/plans`: the catalog as the admin may change it. The editor starts from
//! `entitlements.catalog_document()`; a change is first previewed (the line diff of the two
//! documents, and what `apply_catalog` would create, update and retire, found by running it in a
//! transaction that is rolled back), then applied through `apply_catalog` itself.
use super::error::{PageError, PageResult};
use super::html::{self, csrf_field, money, notice, Frame};
use super::overview::{tenant_picker, Filter};
use super::viewer::Viewer;
use crate::Context;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

/// Largest document the editor takes (the extension refuses deeper or larger JSON itself).
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

type Plan = (String, String, i64, String, String, bool, bool, Vec<String>, Option<Uuid>, i64);

pub async fn page(State(ctx): State<Context>, viewer: Viewer, Query(filter): Query<Filter>) -> PageResult<Response> {
    let mut tx = viewer.begin(&ctx).await?;
    let scope = Viewer::scope(&mut tx).await?;
    let tenant = scope.tenant(filter.tenant);
    let plans: Vec<Plan> = sqlx::query_as(
        "select p.key, p.name, p.price_cents, p.currency, p.interval, p.public, p.active, p.stripe_price_ids, p.tenant_id,
                (select count(*) from entitlements.subscriptions s where s.plan_key = p.key)
           from entitlements.plans p where p.tenant_id is not distinct from $1 order by p.active desc, p.position, p.key",
    )
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    let document: Value =
        sqlx::query_scalar("select entitlements.catalog_document($1)").bind(tenant).fetch_one(&mut *tx).await?;
    tx.commit().await?;
    let pretty = serde_json::to_string_pretty(&document).unwrap_or_default();
    let body = html! {
        (notice(filter.done.as_deref()))
        (tenant_picker("/admin/plans", &scope, tenant, &filter.currency()))
        table id="plans" {
            thead { tr { th { "Plan" } th { "Name" } th class="num" { "Price" } th { "Visibility" } th { "Stripe prices" } th class="num" { "Subscriptions" } } }
            tbody { @for (key, name, price, currency, interval, public, active, prices, _, subs) in &plans {
                tr data-plan=(key) { td { (key) } td { (name) }
                    td class="num" { (money(*price, currency)) " / " (interval) }
                    td { (if *public { "public" } else { "private" }) @if !active { " · " span class="badge" { "inactive" } } }
                    td { (prices.join(", ")) } td class="num" { (subs) } }
            } }
        }
        h2 { "Edit the catalog" }
        p class="muted" { "Features, limits, prices, visibility and Stripe prices, as the document apply_catalog takes. "
            "A plan left out becomes inactive (its subscribers keep it). You see the change before it is applied." }
        (editor(&viewer.csrf, tenant, &pretty, "/admin/plans/preview", "Preview the change"))
    };
    Ok(html::page(Frame { title: "Plans", section: Some("/admin/plans"), csrf: Some(&viewer.csrf), admin: true }, body))
}

fn editor(csrf: &str, tenant: Option<Uuid>, text: &str, action: &str, button: &str) -> Markup {
    html! {
        form method="post" action=(action) id="catalog-form" {
            (csrf_field(csrf))
            @if let Some(t) = tenant { input type="hidden" name="tenant" value=(t); }
            label for="catalog" { "Catalog (JSON)" textarea id="catalog" name="catalog" spellcheck="false" { (text) } }
            button type="submit" { (button) }
        }
    }
}

#[derive(Deserialize)]
pub struct Change {
    #[serde(default)]
    csrf: String,
    tenant: Option<Uuid>,
    catalog: String,
}

fn parse(change: &Change) -> PageResult<Value> {
    if change.catalog.len() > MAX_DOCUMENT_BYTES {
        return Err(PageError::bad_request("The catalog is larger than 1 MiB."));
    }
    serde_json::from_str(&change.catalog)
        .map_err(|e| PageError::bad_request(format!("The catalog is not valid JSON: {e}.")))
}

pub async fn preview(State(ctx): State<Context>, viewer: Viewer, Form(change): Form<Change>) -> PageResult<Response> {
    viewer.check_csrf(&ctx, &change.csrf)?;
    let doc = parse(&change)?;
    let mut tx = viewer.begin(&ctx).await?;
    let scope = Viewer::scope(&mut tx).await?;
    let tenant = scope.acting_tenant(change.tenant)?;
    let current: Value =
        sqlx::query_scalar("select entitlements.catalog_document($1)").bind(tenant).fetch_one(&mut *tx).await?;
    // What apply_catalog would do, and whether it accepts the document at all; then undone.
    let outcome: Value = sqlx::query_scalar("select entitlements.apply_catalog($1, $2)")
        .bind(&doc)
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await?;
    tx.rollback().await?;
    let before = serde_json::to_string_pretty(&current).unwrap_or_default();
    let after = serde_json::to_string_pretty(&doc).unwrap_or_default();
    let list = |v: &Value| -> String {
        v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()
    };
    let changed = outcome["changed"].as_bool().unwrap_or(false);
    let body = html! {
        @if changed {
            table id="catalog-outcome" {
                thead { tr { th {} th { "Created" } th { "Updated" } th { "Made inactive" } } }
                tbody {
                    tr { th { "Features" } td { (list(&outcome["features"]["created"])) } td { (list(&outcome["features"]["updated"])) } td {} }
                    tr { th { "Plans" } td { (list(&outcome["plans"]["created"])) } td { (list(&outcome["plans"]["updated"])) } td { (list(&outcome["plans"]["deactivated"])) } }
                }
            }
        } @else {
            p role="status" class="notice" { "This document changes nothing." }
        }
        h2 { "Difference" }
        (diff(&before, &after))
        @if changed {
            (editor(&viewer.csrf, tenant, &after, "/admin/plans/apply", "Apply this change"))
        }
        p { a href="/admin/plans" { "Back to the plans" } }
    };
    Ok(html::page(
        Frame { title: "Catalog change", section: Some("/admin/plans"), csrf: Some(&viewer.csrf), admin: true },
        body,
    ))
}

pub async fn apply(State(ctx): State<Context>, viewer: Viewer, Form(change): Form<Change>) -> PageResult<Response> {
    viewer.check_csrf(&ctx, &change.csrf)?;
    let doc = parse(&change)?;
    let mut tx = viewer.begin(&ctx).await?;
    let scope = Viewer::scope(&mut tx).await?;
    let tenant = scope.acting_tenant(change.tenant)?;
    let _: Value = sqlx::query_scalar("select entitlements.apply_catalog($1, $2)")
        .bind(&doc)
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(user = %viewer.user(), tenant = ?tenant, "console: catalog applied");
    let back = match tenant {
        Some(t) => format!("/admin/plans?tenant={t}&done=Applied."),
        None => "/admin/plans?done=Applied.".into(),
    };
    Ok(Redirect::to(&back).into_response())
}

/// A line diff (longest common subsequence) of two documents; long ones are shown whole.
pub fn diff(before: &str, after: &str) -> Markup {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    if a.len() * b.len() > 4_000_000 {
        return html! { p class="muted" { "Too long to compare line by line; the new document:" } pre { (after) } };
    }
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut lines: Vec<(char, &str)> = Vec::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            lines.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // What went out before what came in, as diff(1) shows a changed line.
            lines.push(('-', a[i]));
            i += 1;
        } else {
            lines.push(('+', b[j]));
            j += 1;
        }
    }
    html! {
        pre id="catalog-diff" {
            @for (mark, line) in &lines {
                @match mark {
                    '+' => { ins class="diff-add" { "+ " (line) } "\n" }
                    '-' => { del class="diff-del" { "- " (line) } "\n" }
                    _ => { "  " (line) "\n" }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_marks_what_changed_only() {
        let d = diff("a\nb\nc", "a\nB\nc\nd").into_string();
        assert!(d.contains("- b") && d.contains("+ B") && d.contains("+ d") && d.contains("  a"), "{d}");
        assert!(!d.contains("- a") && !d.contains("+ c"), "{d}");
        assert!(d.find("- b").unwrap() < d.find("+ B").unwrap(), "out before in: {d}");
    }
}
