//! The Stripe API through async-stripe: only what the worker reads (one subscription, the list
//! of subscriptions) and the two sessions the account page opens (Checkout, Billing Portal). async-stripe-billing's typed requests name the endpoint and its
//! parameters; the client retries with backoff and sends every call with an
//! `Idempotency-Key` that its retries reuse. The key travels in the `Authorization` header
//! only (marked sensitive) and is never logged or put in an error.
//!
//! Answers are kept as raw JSON, not as async-stripe's typed `Subscription`: that struct is the
//! newest API version's shape, so it has no subscription-level `current_period_*`, `plan` or
//! `quantity` (older versions and localstripe put them there, and the extension reads them as
//! a fallback), and it requires fields (`billing_mode`, items' periods, ...) that those
//! answers lack, so decoding them would fail. The extension's
//! `entitlements.stripe_apply_subscription` takes the object as Stripe sent it and reads both
//! shapes; the worker only carries it there. miniserde's `Value` is async-stripe's way to
//! receive an answer undecoded.
use crate::config::Secret;
use crate::{Error, Result};
use serde_json::Value;
use std::time::Duration;
use stripe::{ClientBuilder, RequestStrategy, StripeError, StripeRequest};
use stripe_billing::billing_portal_session::CreateBillingPortalSession;
use stripe_billing::subscription::{ListSubscription, ListSubscriptionStatus, RetrieveSubscription};
use stripe_checkout::checkout_session::{
    CreateCheckoutSession, CreateCheckoutSessionLineItems, CreateCheckoutSessionSubscriptionData,
};
use stripe_checkout::CheckoutSessionMode;

pub const DEFAULT_API_BASE: &str = "https://api.stripe.com/";
/// Attempts per call (on 409, 424, 429, 5xx, timeouts and connection errors, or when Stripe
/// says `Stripe-Should-Retry`), 1 s then 2 s apart.
const ATTEMPTS: u32 = 3;
/// Per attempt. The applier's lease (applier.rs) outlasts all attempts of one call.
pub const TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone)]
pub struct Client {
    inner: stripe::Client,
}

impl Client {
    pub fn new(key: &Secret, base: Option<&str>) -> Result<Client> {
        // async-stripe appends `v1/...` to the base as given, so it must end with one slash.
        let base = format!("{}/", base.unwrap_or(DEFAULT_API_BASE).trim_end_matches('/'));
        let inner = ClientBuilder::new(key.expose())
            .url(base)
            .timeout(TIMEOUT)
            .request_strategy(RequestStrategy::ExponentialBackoff(ATTEMPTS))
            .app_info("entitlements-worker", Some(env!("CARGO_PKG_VERSION").to_owned()), None)
            .build()
            // Its messages name the setting at fault, never the key's value.
            .map_err(|e| Error::Config(format!("Stripe client: {e}")))?;
        Ok(Client { inner })
    }

    /// The subscription as Stripe has it now, its customer expanded (so the customer's
    /// metadata.entitlements_customer_id can link it); None when Stripe does not know it.
    pub async fn subscription(&self, id: &str) -> Result<Option<Value>> {
        // The id goes into the path: refuse anything that could change which URL is asked.
        if !id.starts_with("sub_") || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(Error::Stripe { status: 0, message: format!("not a subscription id: {id:?}") });
        }
        let request = RetrieveSubscription::new(id).expand(vec!["customer".to_owned()]);
        match self.call(&request).await {
            Ok(subscription) => Ok(Some(subscription)),
            Err(Error::Stripe { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One page of all subscriptions (every status), the page after `starting_after`. Pages
    /// are asked one by one (not async-stripe's paginator) so the caller can renew its lease
    /// and apply each page as observed when it was asked.
    pub async fn list_subscriptions(&self, starting_after: Option<&str>) -> Result<Value> {
        let mut request = ListSubscription::new()
            .status(ListSubscriptionStatus::All)
            .limit(100)
            .expand(vec!["data.customer".to_owned()]);
        if let Some(after) = starting_after {
            request = request.starting_after(after);
        }
        self.call(&request).await
    }

    /// A Checkout Session that subscribes to `price`: for the Stripe customer already linked, else
    /// one Checkout makes with `email`. The entitlements customer id rides along in the
    /// session's and the subscription's metadata (and as client_reference_id), so the webhooks
    /// link what it creates. Its `url` is where the buyer goes.
    pub async fn checkout_session(&self, session: &CheckoutRequest<'_>) -> Result<String> {
        let metadata = std::collections::HashMap::from([(
            "entitlements_customer_id".to_owned(),
            session.entitlements_customer.to_string(),
        )]);
        let mut item = CreateCheckoutSessionLineItems::new();
        item.price = Some(session.price.to_owned());
        item.quantity = Some(1);
        let mut subscription = CreateCheckoutSessionSubscriptionData::new();
        subscription.metadata = Some(metadata.clone());
        let mut request = CreateCheckoutSession::new()
            .mode(CheckoutSessionMode::Subscription)
            .line_items(vec![item])
            .success_url(session.success_url)
            .cancel_url(session.cancel_url)
            .client_reference_id(session.entitlements_customer.to_string())
            .metadata(metadata)
            .subscription_data(subscription);
        request = match (session.stripe_customer, session.email) {
            (Some(customer), _) => request.customer(customer),
            (None, Some(email)) => request.customer_email(email),
            (None, None) => request,
        };
        url_of(self.call(&request).await?, "Checkout Session")
    }

    /// A Billing Portal session for the Stripe customer; its `url` is where they manage billing.
    pub async fn portal_session(&self, stripe_customer: &str, return_url: &str) -> Result<String> {
        let request = CreateBillingPortalSession::new().customer(stripe_customer).return_url(return_url);
        url_of(self.call(&request).await?, "Billing Portal session")
    }

    async fn call(&self, request: &impl StripeRequest) -> Result<Value> {
        let request = request.build();
        // StripeMethod's Debug is its name (Get, Post, Delete).
        let path = format!("{} /v1{}", format!("{:?}", request.method).to_uppercase(), request.path);
        let raw: miniserde::json::Value =
            request.customize().send(&self.inner).await.map_err(|e| describe(&path, e))?;
        // Numbers and strings come through unchanged; only key order may differ (jsonb sorts anyway).
        serde_json::from_str(&miniserde::json::to_string(&raw)).map_err(|e| Error::StripeAnswer(format!("{path}: {e}")))
    }
}

/// What a Checkout Session is opened for.
pub struct CheckoutRequest<'a> {
    pub price: &'a str,
    pub entitlements_customer: uuid::Uuid,
    pub stripe_customer: Option<&'a str>,
    pub email: Option<&'a str>,
    pub success_url: &'a str,
    pub cancel_url: &'a str,
}

fn url_of(answer: Value, what: &str) -> Result<String> {
    answer["url"].as_str().map(str::to_owned).ok_or_else(|| Error::StripeAnswer(format!("the {what} has no url")))
}

/// Our error for async-stripe's: the status and Stripe's own message, on one line (its
/// `Display` prints the whole error object).
fn describe(path: &str, e: StripeError) -> Error {
    match e {
        StripeError::Stripe(api, status) => {
            Error::Stripe { status, message: format!("{path}: {}", api.message.as_deref().unwrap_or("no message")) }
        }
        StripeError::Timeout => Error::StripeHttp(format!("{path}: no answer within {} s", TIMEOUT.as_secs())),
        StripeError::ClientError(m) => Error::StripeHttp(format!("{path}: {m}")),
        // Also an error status whose body is not a Stripe error: its status is not kept.
        StripeError::JSONDeserialize(m) => Error::StripeAnswer(format!("{path}: {m}")),
        StripeError::ConfigError(m) => Error::Config(format!("Stripe client: {m}")),
    }
}
