//! Stripe: the webhook endpoint, the applier that applies stored events, the API client and
//! the reconcile. Every rule (price to plan, customer links, which state is newer) is in the
//! extension's `sql/stripe/`; this module only moves bytes and keeps time.
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

/// `POST /webhooks/stripe`, merged into the HTTP router by http.rs.
pub fn router() -> Router<Context> {
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
    ctx.tracker.spawn(applier::run(ctx.clone(), client));
    Ok(())
}
