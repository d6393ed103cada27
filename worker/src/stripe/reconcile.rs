//! `reconcile-stripe` (and the scheduler's `reconcile_stripe` task): list every subscription
//! through the Stripe API and apply each, repairing drift such as a subscription created
//! while no worker was listening or a webhook that never arrived.
use super::api::Client;
use crate::config::StripeConfig;
use crate::db::Lease;
use crate::{Error, Result};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub seen: i64,
    pub created: i64,
    pub updated: i64,
    pub unchanged: i64,
    /// A newer state (from a webhook applied meanwhile) was already there.
    pub stale: i64,
    pub failed: i64,
    /// The first few failures, for the log and the task record.
    pub errors: Vec<String>,
}

impl Report {
    pub fn rows_touched(&self) -> i64 {
        self.created + self.updated
    }
}

/// `lease`: held by the scheduled task, renewed before each page (a page's request takes at
/// most about a minute: three attempts of `api::TIMEOUT` and their backoff); losing it stops
/// the run.
pub async fn reconcile(pool: &PgPool, stripe: &StripeConfig, lease: Option<&Lease>) -> Result<Report> {
    let key =
        stripe.secret_key.as_ref().ok_or_else(|| Error::Config("reconcile-stripe needs STRIPE_SECRET_KEY".into()))?;
    let client = Client::new(key, stripe.api_base.as_deref())?;
    let mut report = Report::default();
    let mut after: Option<String> = None;
    loop {
        if let Some(lease) = lease {
            if !lease.take(pool).await? {
                return Err(Error::TaskFailed {
                    task: crate::config::RECONCILE_STRIPE.into(),
                    message: "another worker took over the reconcile (its lease expired)".into(),
                });
            }
        }
        // Each page is applied as observed when its request left: a state a webhook applied
        // after that instant is newer and stays (the extension compares).
        let observed: f64 =
            sqlx::query_scalar("select extract(epoch from clock_timestamp())::float8").fetch_one(pool).await?;
        let page = client.list_subscriptions(after.as_deref()).await?;
        let items = page["data"].as_array().cloned().unwrap_or_default();
        for sub in &items {
            report.seen += 1;
            let id = sub["id"].as_str().unwrap_or("?").to_owned();
            let applied = sqlx::query_scalar::<_, String>(
                "select entitlements.stripe_apply_subscription($1, to_timestamp($2), 'stripe reconcile')",
            )
            .bind(sub)
            .bind(observed)
            .fetch_one(pool)
            .await;
            match applied.as_deref() {
                Ok("created") => report.created += 1,
                Ok("updated") => report.updated += 1,
                Ok("stale") => report.stale += 1,
                Ok(_) => report.unchanged += 1,
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(subscription = %id, error = %e, "reconcile could not apply a subscription");
                    if report.errors.len() < 10 {
                        report.errors.push(format!("{id}: {e}"));
                    }
                }
            }
        }
        after = items.last().and_then(|s| s["id"].as_str()).map(str::to_owned);
        if page["has_more"] != Value::Bool(true) || after.is_none() {
            break;
        }
    }
    tracing::info!(
        seen = report.seen,
        created = report.created,
        updated = report.updated,
        failed = report.failed,
        "reconciled Stripe subscriptions"
    );
    Ok(report)
}
