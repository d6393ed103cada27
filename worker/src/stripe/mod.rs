//! Stripe: the webhook endpoint, the applier that applies stored events, the API client and
//! the reconcile. Every rule (price to plan, customer links, which state is newer) is in the
//! extension's `sql/stripe.sql`; this module only moves bytes and keeps time.
pub mod api;
pub mod applier;
pub mod reconcile;
pub mod signature;
pub mod webhook;

pub use reconcile::{reconcile, Report};

use crate::{Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use axum::Router;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::Notify;

/// Wakes the applier when the webhook stored a new event (one applier per process).
static WAKE: Notify = Notify::const_new();

fn wake_applier() {
    WAKE.notify_one();
}

/// `POST /webhooks/stripe`, merged into the HTTP router by http.rs.
pub fn router() -> Router<Context> {
    describe_metrics();
    Router::new()
        .route("/webhooks/stripe", post(webhook::receive))
        // The handler bounds what it reads itself (webhook::read_body), so it can count refusals
        // and drain an oversized body before answering 413.
        .layer(DefaultBodyLimit::disable())
}

/// Start the applier when Stripe is configured (a webhook secret or an API key).
pub fn spawn(ctx: &Context) -> Result<()> {
    let stripe = &ctx.config.stripe;
    if stripe.webhook_secret.is_none() && stripe.secret_key.is_none() {
        return Ok(());
    }
    let client = match &stripe.secret_key {
        Some(key) => Some(api::Client::new(key, stripe.api_base.as_deref())?),
        None => None,
    };
    // Its own connections: however busy applying gets, webhook intake keeps the shared pool.
    let options =
        PgConnectOptions::from_str(ctx.config.database_url.expose())?.application_name("entitlements-worker-stripe");
    let pool = PgPoolOptions::new()
        .max_connections(applier::PARALLEL as u32 + 1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options);
    ctx.tracker.spawn(applier::run(ctx.clone(), pool, client));
    Ok(())
}

fn describe_metrics() {
    metrics::describe_counter!(
        "entitlements_webhooks_received_total",
        "Stripe deliveries verified and stored (duplicate=true: already stored)."
    );
    metrics::describe_counter!(
        "entitlements_webhooks_refused_total",
        "Stripe deliveries refused, by reason; nothing was stored."
    );
    metrics::describe_counter!("entitlements_webhooks_applied_total", "Stripe events applied, by outcome.");
    metrics::describe_counter!(
        "entitlements_webhooks_failed_total",
        "Attempts to apply a Stripe event that failed (retried with backoff)."
    );
    metrics::describe_histogram!(
        "entitlements_webhook_apply_lag_seconds",
        metrics::Unit::Seconds,
        "From storing a Stripe event to applying it."
    );
}
