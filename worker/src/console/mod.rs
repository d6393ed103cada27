//! The admin console (`/admin`) and the account page (`/account`), served by the worker on its
//! listener: HTML rendered here (maud), one stylesheet and one small script served here too,
//! forms that post normally. Who may see and do what is the database's decision: every page
//! runs in a transaction as the signed-in user (viewer.rs), never with the worker's rights.
//!
//!   sign_in.rs    signing in (admin token or Supabase access token), out, rate limits
//!   session.rs    the signed session cookie and CSRF tokens
//!   viewer.rs     the signed-in request and its transaction as the user
//!   overview.rs, customers.rs, plans.rs, revenue.rs, security.rs, operations.rs   admin pages
//!   account.rs    the user's own page; billing.rs: Stripe Checkout and Billing Portal
//!   html.rs, charts.rs, error.rs   the frame, SVG charts, error pages
pub mod access_token;
pub mod account;
pub mod billing;
pub mod charts;
pub mod customers;
pub mod error;
pub mod html;
pub mod operations;
pub mod overview;
pub mod plans;
pub mod revenue;
pub mod security;
pub mod session;
pub mod sign_in;
pub mod viewer;

use crate::config::Config;
use crate::{Context, Result};
use axum::response::Redirect;
use axum::routing::{get, post};
use axum::Router;

/// What the console keeps between requests: the sign-in limits, the access token keys and the
/// Stripe client of the account page (with STRIPE_SECRET_KEY).
pub struct State {
    pub limiter: sign_in::Limiter,
    pub verifier: access_token::Verifier,
    pub stripe: Option<crate::stripe::api::Client>,
}

impl State {
    pub fn new(config: &Config) -> Result<State> {
        let stripe = match &config.stripe.secret_key {
            Some(key) => Some(crate::stripe::api::Client::new(key, config.stripe.api_base.as_deref())?),
            None => None,
        };
        Ok(State {
            limiter: sign_in::Limiter::new(config.console.sign_in_per_minute),
            verifier: access_token::Verifier::new(&config.console),
            stripe,
        })
    }
}

/// What every console answer says to the browser: load nothing from elsewhere, run no inline
/// script, never be framed (clickjacking), never sniff a type, send no referrer elsewhere.
/// (Form posts that redirect to Stripe are left free: `form-action` would stop them.)
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    use axum::http::{header, HeaderValue};
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; \
             base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

/// The console's routes, merged into the HTTP router by http.rs when it is enabled.
pub fn router() -> Router<Context> {
    Router::new()
        .route("/console/console.css", get(html::style))
        .route("/console/console.js", get(html::script))
        .route("/sign-in", get(sign_in::show).post(sign_in::submit))
        .route("/sign-out", post(sign_in::sign_out))
        .route("/admin", get(overview::page))
        .route("/admin/", get(|| async { Redirect::permanent("/admin") }))
        .route("/admin/customers", get(customers::search))
        .route("/admin/customers/{id}", get(customers::detail))
        .route("/admin/customers/{id}/actions", post(customers::act))
        .route("/admin/customers/{id}/export", get(customers::export))
        .route("/admin/customers/{id}/erase", get(customers::confirm_erase))
        .route("/admin/plans", get(plans::page))
        .route("/admin/plans/preview", post(plans::preview))
        .route("/admin/plans/apply", post(plans::apply))
        .route("/admin/revenue", get(revenue::page))
        .route("/admin/security", get(security::page).post(security::act))
        .route("/admin/operations", get(operations::page).post(operations::act))
        .route("/account", get(account::page))
        .route("/account/checkout", post(billing::checkout_form))
        .route("/account/portal", post(billing::portal_form))
        .route("/api/account/checkout", post(billing::checkout_api))
        .route("/api/account/portal", post(billing::portal_api))
        .layer(axum::middleware::map_response(security_headers))
}
