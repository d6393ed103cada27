//! Changing tier and managing billing: a Stripe Checkout Session for a public plan's Stripe
//! price, and a Stripe Billing Portal session for the user's Stripe customer, created with
//! async-stripe. The account page's buttons post here (and are sent on to Stripe); apps with
//! their own UI call the JSON endpoints with the user's Supabase access token. What plan and
//! which Stripe customer is read as the user; the webhooks that follow apply the result.
use super::error::{PageError, PageResult};
use super::session;
use super::viewer::{begin_as, Viewer};
use crate::stripe::api::CheckoutRequest;
use crate::Context;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

fn client(ctx: &Context) -> PageResult<&crate::stripe::api::Client> {
    ctx.console.stripe.as_ref().ok_or_else(|| {
        PageError::new(StatusCode::NOT_IMPLEMENTED, "Billing is not set up", "This worker has no STRIPE_SECRET_KEY.")
    })
}

/// Only absolute http(s) URLs come back from Stripe.
fn return_url(given: Option<&str>, default: String) -> PageResult<String> {
    match given.map(str::trim).filter(|u| !u.is_empty()) {
        None => Ok(default),
        Some(u) if (u.starts_with("https://") || u.starts_with("http://")) && u.len() <= 2000 => Ok(u.to_owned()),
        Some(_) => Err(PageError::bad_request("Return URLs must be absolute http(s) URLs.")),
    }
}

/// Who asks: the user, and the admin token of their console session (checked again), if any.
type Asker = (Uuid, Option<Uuid>);

async fn checkout(
    ctx: &Context,
    (user, token): Asker,
    plan: &str,
    success: String,
    cancel: String,
) -> PageResult<String> {
    let stripe = client(ctx)?;
    let mut tx = begin_as(ctx, user, token).await?;
    let price: Option<Option<String>> = sqlx::query_scalar(
        "select p.stripe_price_ids[1] from entitlements.plans p
          where p.key = $1 and p.public and p.active
            -- A store's plans are for its customers; everyone else's for customers of no store.
            and p.tenant_id is not distinct from
                (select c.tenant_id from entitlements.customers c where c.id = entitlements.current_user_id())",
    )
    .bind(plan)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(Some(price)) = price else {
        return Err(PageError::bad_request(format!("No public plan {plan:?} with a Stripe price.")));
    };
    let me: Option<(Option<String>, Option<String>)> = sqlx::query_as(
        "select stripe_customer_id, email from entitlements.customers where id = entitlements.current_user_id()",
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    let (stripe_customer, email) = me.unwrap_or((None, None));
    let url = stripe
        .checkout_session(&CheckoutRequest {
            price: &price,
            entitlements_customer: user,
            stripe_customer: stripe_customer.as_deref(),
            email: email.as_deref(),
            success_url: &success,
            cancel_url: &cancel,
        })
        .await
        .map_err(stripe_failed)?;
    tracing::info!(%user, %plan, "console: checkout session opened");
    Ok(url)
}

async fn portal(ctx: &Context, (user, token): Asker, back: String) -> PageResult<String> {
    let stripe = client(ctx)?;
    let mut tx = begin_as(ctx, user, token).await?;
    let customer: Option<Option<String>> = sqlx::query_scalar(
        "select stripe_customer_id from entitlements.customers where id = entitlements.current_user_id()",
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    let Some(Some(customer)) = customer else {
        return Err(PageError::new(
            StatusCode::CONFLICT,
            "No billing account yet",
            "You have no Stripe customer yet: subscribe to a plan first.",
        ));
    };
    let url = stripe.portal_session(&customer, &back).await.map_err(stripe_failed)?;
    Ok(url)
}

fn stripe_failed(e: crate::Error) -> PageError {
    tracing::warn!(error = %e, "console: Stripe refused or could not be reached");
    PageError::new(StatusCode::BAD_GATEWAY, "Stripe did not answer", format!("{e}"))
}

#[derive(Deserialize)]
pub struct CheckoutForm {
    #[serde(default)]
    csrf: String,
    plan: String,
}

pub async fn checkout_form(
    State(ctx): State<Context>,
    viewer: Viewer,
    Form(form): Form<CheckoutForm>,
) -> PageResult<Response> {
    viewer.check_csrf(&ctx, &form.csrf)?;
    let base = &ctx.config.console.public_url;
    let url = checkout(
        &ctx,
        (viewer.user(), viewer.session.token),
        &form.plan,
        format!(
            "{base}/account?done=Thank%20you%3A%20your%20plan%20changes%20once%20Stripe%20confirms%20the%20payment."
        ),
        format!("{base}/account"),
    )
    .await?;
    Ok(Redirect::to(&url).into_response())
}

#[derive(Deserialize)]
pub struct PortalForm {
    #[serde(default)]
    csrf: String,
}

pub async fn portal_form(
    State(ctx): State<Context>,
    viewer: Viewer,
    Form(form): Form<PortalForm>,
) -> PageResult<Response> {
    viewer.check_csrf(&ctx, &form.csrf)?;
    let url = portal(&ctx, (viewer.user(), viewer.session.token), format!("{}/account", ctx.config.console.public_url))
        .await?;
    Ok(Redirect::to(&url).into_response())
}

/// The JSON endpoints' answer for a refusal: `{"error": ..., "status": ...}`.
fn json_error(e: PageError) -> Response {
    (e.status, Json(json!({"error": e.message, "status": e.status.as_u16()}))).into_response()
}

/// The user of `Authorization: Bearer <Supabase access token>`.
async fn bearer(ctx: &Context, headers: &HeaderMap) -> Result<Uuid, Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    match ctx.console.verifier.verify(token.trim()).await {
        Ok(v) if v.expires > session::now_unix() => Ok(v.user),
        _ => Err(json_error(PageError::new(
            StatusCode::UNAUTHORIZED,
            "Sign in first",
            "A valid Supabase access token is needed (Authorization: Bearer ...).",
        ))),
    }
}

#[derive(Deserialize)]
pub struct CheckoutCall {
    plan: String,
    success_url: Option<String>,
    cancel_url: Option<String>,
}

/// `POST /api/account/checkout` {plan, success_url?, cancel_url?} → {url}.
pub async fn checkout_api(State(ctx): State<Context>, headers: HeaderMap, Json(call): Json<CheckoutCall>) -> Response {
    let user = match bearer(&ctx, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let base = &ctx.config.console.public_url;
    let urls = return_url(call.success_url.as_deref(), format!("{base}/account"))
        .and_then(|s| return_url(call.cancel_url.as_deref(), format!("{base}/account")).map(|c| (s, c)));
    let result = match urls {
        Ok((success, cancel)) => checkout(&ctx, (user, None), &call.plan, success, cancel).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(url) => Json(json!({"url": url})).into_response(),
        Err(e) => json_error(e),
    }
}

#[derive(Deserialize)]
pub struct PortalCall {
    return_url: Option<String>,
}

/// `POST /api/account/portal` {return_url?} → {url}.
pub async fn portal_api(State(ctx): State<Context>, headers: HeaderMap, Json(call): Json<PortalCall>) -> Response {
    let user = match bearer(&ctx, &headers).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let result = match return_url(call.return_url.as_deref(), format!("{}/account", ctx.config.console.public_url)) {
        Ok(back) => portal(&ctx, (user, None), back).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(url) => Json(json!({"url": url})).into_response(),
        Err(e) => json_error(e),
    }
}
