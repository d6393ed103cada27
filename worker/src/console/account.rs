//! `/account`: what a signed-in user has (plan, status, every feature with its usage and
//! reset time), their organizations and seats, the public plans with prices, and the way to
//! change tier (Stripe Checkout) or manage billing (the Stripe Billing Portal). Read as the
//! user, so they see exactly what RLS lets them see.
use super::customers::features_table;
use super::error::PageResult;
use super::html::{self, csrf_field, money, notice, Frame};
use super::viewer::Viewer;
use crate::Context;
use axum::extract::{Query, State};
use axum::response::Response;
use maud::html;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

#[derive(Deserialize, Default)]
pub struct Done {
    done: Option<String>,
}

type Organization = (Uuid, String, Option<String>, i64, Option<Value>);
type PublicPlan = (String, String, i64, String, String, Vec<String>);

pub async fn page(State(ctx): State<Context>, viewer: Viewer, Query(done): Query<Done>) -> PageResult<Response> {
    let mut tx = viewer.begin(&ctx).await?;
    let resolved: Value = sqlx::query_scalar("select entitlements.entitlements(entitlements.current_user_id())")
        .fetch_one(&mut *tx)
        .await?;
    let organizations: Vec<Organization> = sqlx::query_as(
        "select m.organization_id, m.role, c.display_name,
                (select count(*) from entitlements.members x where x.organization_id = m.organization_id),
                entitlements.entitlements(m.organization_id) -> 'features' -> 'seats' -> 'value'
           from entitlements.members m left join entitlements.customers c on c.id = m.organization_id
          where m.user_id = entitlements.current_user_id() order by m.created_at",
    )
    .fetch_all(&mut *tx)
    .await?;
    let plans: Vec<PublicPlan> = sqlx::query_as(
        "select p.key, p.name, p.price_cents, p.currency, p.interval, p.stripe_price_ids from entitlements.plans p
          where p.public and p.active and p.tenant_id is not distinct from
                (select c.tenant_id from entitlements.customers c where c.id = entitlements.current_user_id())
          order by p.position, p.price_cents, p.key",
    )
    .fetch_all(&mut *tx)
    .await?;
    let is_admin: bool = sqlx::query_scalar(
        "select exists (select 1 from entitlements.admins where user_id = entitlements.current_user_id())",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let current = resolved["plan"].as_str().unwrap_or("");
    let stripe = ctx.config.stripe.secret_key.is_some();
    let csrf = viewer.csrf.as_str();
    let body = html! {
        (notice(done.done.as_deref()))
        dl class="cards" id="my-plan" {
            div class="card" { dt class="label" { "Plan" } dd class="figure" id="plan" { (if current.is_empty() { "none" } else { current }) } }
            div class="card" { dt class="label" { "Status" } dd id="status" { (resolved["status"].as_str().unwrap_or("—")) } }
            div class="card" { dt class="label" { "Period ends" } dd id="period-end" { (resolved["period_end"].as_str().unwrap_or("—")) } }
        }
        h2 { "Features and usage" }
        (features_table(&resolved))
        h2 { "Organizations" }
        @if organizations.is_empty() { p class="muted" { "You belong to no organization." } } @else {
            table id="organizations" {
                thead { tr { th { "Organization" } th { "Role" } th class="num" { "Members" } th class="num" { "Seats" } } }
                tbody { @for (id, role, name, members, seats) in &organizations {
                    tr { td { (name.clone().unwrap_or_else(|| id.to_string())) } td { (role) } td class="num" { (members) }
                         td class="num" { (seats.as_ref().map(html::number).unwrap_or_else(|| "—".into())) } }
                } }
            }
        }
        h2 { "Plans" }
        table id="plans" {
            thead { tr { th { "Plan" } th class="num" { "Price" } th {} } }
            tbody { @for (key, name, price, currency, interval, prices) in &plans {
                tr data-plan=(key) {
                    td { (name) @if key == current { " " span class="badge" { "current" } } }
                    td class="num" { (money(*price, currency)) " / " (interval) }
                    td { @if key != current && stripe && !prices.is_empty() {
                        form method="post" action="/account/checkout" class="inline" data-busy="Opening Stripe Checkout…" {
                            (csrf_field(csrf)) input type="hidden" name="plan" value=(key);
                            button type="submit" { "Change to " (name) }
                        }
                    } }
                }
            } }
        }
        @if stripe {
            form method="post" action="/account/portal" id="portal-form" data-busy="Opening the billing portal…" {
                (csrf_field(csrf)) button type="submit" { "Manage billing" }
            }
        }
    };
    Ok(html::page(Frame { title: "My account", section: None, csrf: Some(csrf), admin: is_admin }, body))
}
