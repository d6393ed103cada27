//! Delivery of outbox events (issue #11): every event the extension writes in the caller's
//! transaction fans out into deliveries, one per destination (an app's webhook endpoint, the
//! customer's email). This module sends them (the SQL side: sql/outbox/delivery.sql):
//!
//! - [`store`] claims due deliveries with a lease (`entitlements.delivery_claim`, FOR UPDATE
//!   SKIP LOCKED, so two workers never send one delivery at once) and reports each attempt
//!   (`delivery_done`, `delivery_failed`). Backoff, dead letters and `retry_delivery` are the
//!   extension's.
//! - [`webhook`] POSTs the body signed the Standard Webhooks way; [`email`] sends the rendered
//!   email over SMTP (only when `ENTITLEMENTS_SMTP_URL` is set; otherwise the email channel is
//!   not claimed at all and waits for a worker that has it).
//!
//! At least once, never lost: a worker that dies mid-delivery reports nothing, its lease runs
//! out, and another claims the delivery and sends it again with the same message id (the
//! `webhook-id`, the email's Message-ID), by which the receiver drops the duplicate.
//!
//! The loop: a pass on every `NOTIFY entitlements_outbox` and every second (retries come due
//! without a NOTIFY). A pass claims while it has free slots (at most `concurrency` deliveries
//! in flight, each claimed only when a slot is free so no lease runs out while it waits) until
//! nothing is due.

pub mod email;
pub mod store;
pub mod webhook;

use crate::config::DeliveryConfig;
use crate::db::Failure;
use crate::metrics::{DELIVERIES, DELIVERY_LATENCY};
use crate::{Context, Error, Result};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{Channel, Delivery};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Sent by every transaction that makes deliveries.
pub const CHANNEL: &str = "entitlements_outbox";
/// Also polled: a retry comes due without a NOTIFY.
const POLL: Duration = Duration::from_secs(1);
/// A claim that keeps failing the same way (say, an extension without the delivery functions)
/// is logged again after this long, not on every poll.
const REPEAT_ERROR_AFTER: Duration = Duration::from_secs(60);

/// The outcome of one attempt, as recorded: `error` None is a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The HTTP status, or the SMTP reply code; None when there was no answer.
    pub status: Option<i32>,
    pub error: Option<String>,
    /// A refusal that retrying cannot change (an SMTP 5xx): the delivery is dead at once.
    pub permanent: bool,
}

impl Attempt {
    pub fn done(status: Option<i32>) -> Attempt {
        Attempt { status, error: None, permanent: false }
    }

    pub fn failed(status: Option<i32>, error: impl Into<String>) -> Attempt {
        Attempt { status, error: Some(error.into()), permanent: false }
    }

    pub fn refused(status: Option<i32>, error: impl Into<String>) -> Attempt {
        Attempt { status, error: Some(error.into()), permanent: true }
    }
}

/// What became of one claimed delivery (the `outcome` label of DELIVERIES).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Sent and recorded.
    Delivered,
    /// Failed and recorded; retried after the extension's backoff.
    Failed(String),
    /// Failed for the last time: dead until `entitlements.retry_delivery`.
    Dead(String),
    /// Sent, but the lease was lost before the report (another worker may send it again).
    LeaseLost,
    /// The attempt could not be recorded: the lease runs out and it is sent again.
    Unrecorded(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed(_) => "failed",
            Outcome::Dead(_) => "dead",
            Outcome::LeaseLost => "lease_lost",
            Outcome::Unrecorded(_) => "unrecorded",
        }
    }
}

/// What a pass did (printed as JSON by `entitlements-worker deliver`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct PassReport {
    pub claimed: usize,
    pub delivered: usize,
    /// Attempts that failed (dead and unrecorded ones included).
    pub failed: usize,
    /// Of `failed`, those now dead.
    pub dead: usize,
    /// Sent, but reported after the lease was lost.
    pub lease_lost: usize,
    /// `delivery <id> (<channel>): <error>` of each failure.
    pub errors: Vec<String>,
    /// Why claiming stopped early, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_error: Option<String>,
}

impl PassReport {
    fn add(&mut self, delivery: &str, outcome: Outcome) {
        match outcome {
            Outcome::Delivered => self.delivered += 1,
            Outcome::LeaseLost => self.lease_lost += 1,
            Outcome::Failed(e) | Outcome::Unrecorded(e) => {
                self.failed += 1;
                self.errors.push(format!("{delivery}: {e}"));
            }
            Outcome::Dead(e) => {
                self.failed += 1;
                self.dead += 1;
                self.errors.push(format!("{delivery}: {e} (dead)"));
            }
        }
    }
}

/// What a pass needs.
#[derive(Clone)]
pub struct Deliverer {
    pub pool: PgPool,
    pub holder: String,
    pub lease: Duration,
    pub concurrency: usize,
    pub webhooks: webhook::Webhooks,
    /// The email channel; None: email deliveries are not claimed.
    pub mailer: Option<email::Mailer>,
    /// Held around each database call, so delivery stays within the background share of the
    /// pool (context.rs); never while a request is in flight.
    pub background: Arc<Semaphore>,
    /// Stop claiming (deliveries in flight finish).
    pub shutdown: CancellationToken,
}

impl Deliverer {
    pub fn new(
        pool: PgPool,
        config: &DeliveryConfig,
        holder: &str,
        background: Arc<Semaphore>,
        shutdown: CancellationToken,
    ) -> Result<Deliverer> {
        let mailer = match (&config.smtp_url, &config.email_from) {
            (Some(url), Some(from)) => Some(email::Mailer::new(url, from)?),
            (Some(_), None) => return Err(Error::Config("ENTITLEMENTS_SMTP_URL needs ENTITLEMENTS_EMAIL_FROM".into())),
            (None, _) => None,
        };
        Ok(Deliverer {
            pool,
            holder: holder.to_owned(),
            lease: config.lease,
            concurrency: config.concurrency,
            webhooks: webhook::Webhooks::new(config.webhook_timeout)?,
            mailer,
            background,
            shutdown,
        })
    }

    /// The channels this worker can send.
    pub fn channels(&self) -> Vec<Channel> {
        let mut channels = vec![Channel::Webhook];
        if self.mailer.is_some() {
            channels.push(Channel::Email);
        }
        channels
    }

    /// Claim and send deliveries until none is due, at most `concurrency` at once; each
    /// delivery at most once per pass (one that failed is due again only after its backoff,
    /// and seeing it again means every due delivery has had its turn).
    pub async fn pass(&self) -> PassReport {
        let channels = self.channels();
        let mut report = PassReport::default();
        let mut seen = HashSet::<i64>::new();
        let mut running: JoinSet<(String, Outcome)> = JoinSet::new();
        let mut exhausted = false;
        loop {
            if !exhausted && !self.shutdown.is_cancelled() && running.len() < self.concurrency {
                let free = self.concurrency - running.len();
                let claimed = {
                    let _permit = self.background.acquire().await;
                    store::claim(&self.pool, &self.holder, self.lease, free, &channels).await
                };
                match claimed {
                    Ok(deliveries) => {
                        exhausted = deliveries.len() < free;
                        for delivery in deliveries {
                            exhausted |= !seen.insert(delivery.delivery_id);
                            report.claimed += 1;
                            let deliverer = self.clone();
                            running.spawn(async move {
                                let name = format!("delivery {} ({})", delivery.delivery_id, delivery.channel.as_str());
                                (name, deliverer.one(delivery).await)
                            });
                        }
                    }
                    Err(e) => {
                        report.claim_error = Some(e.to_string());
                        exhausted = true;
                    }
                }
                continue;
            }
            match running.join_next().await {
                None => break,
                Some(Ok((name, outcome))) => report.add(&name, outcome),
                Some(Err(e)) => {
                    // A panic while sending: nothing was recorded, the lease runs out and the
                    // delivery is sent again.
                    report.add("a delivery", Outcome::Unrecorded(format!("panicked: {e}")));
                }
            }
        }
        report
    }

    /// Send one claimed delivery and record the attempt.
    async fn one(&self, delivery: Delivery) -> Outcome {
        let channel = delivery.channel.as_str();
        let started = Instant::now();
        // Never past the lease: after it, another worker may be sending the same delivery.
        let budget = self.lease.mul_f64(0.8);
        let send = async {
            match delivery.channel {
                Channel::Webhook => self.webhooks.send(&delivery).await,
                Channel::Email => match &self.mailer {
                    Some(mailer) => mailer.send(&delivery).await,
                    // Not claimed without a mailer; an extension that hands one anyway gets it back.
                    None => Attempt::failed(None, "this worker has no SMTP server (ENTITLEMENTS_SMTP_URL)"),
                },
            }
        };
        let attempt = tokio::time::timeout(budget, send).await.unwrap_or_else(|_| {
            Attempt::failed(None, format!("timed out after {}s (the lease's budget)", budget.as_secs_f64()))
        });
        let elapsed = started.elapsed();
        let latency_ms = i32::try_from(elapsed.as_millis()).unwrap_or(i32::MAX);
        metrics::histogram!(DELIVERY_LATENCY, "channel" => channel).record(elapsed.as_secs_f64());
        let outcome = self.record(&delivery, &attempt, latency_ms).await;
        metrics::counter!(DELIVERIES, "channel" => channel, "outcome" => outcome.label()).increment(1);
        outcome
    }

    async fn record(&self, delivery: &Delivery, attempt: &Attempt, latency_ms: i32) -> Outcome {
        let (id, channel) = (delivery.delivery_id, delivery.channel.as_str());
        let target = match delivery.channel {
            Channel::Webhook => webhook::shown_url(&delivery.target),
            // The address is the customer's: not logged.
            Channel::Email => "the customer's email".to_owned(),
        };
        let _permit = self.background.acquire().await;
        match &attempt.error {
            None => {
                match store::done(&self.pool, id, &self.holder, attempt.status, latency_ms).await {
                    Ok(true) => {
                        tracing::debug!(delivery = id, event = delivery.event_id, kind = %delivery.kind, channel, %target, status = attempt.status, latency_ms, "delivered");
                        Outcome::Delivered
                    }
                    Ok(false) => {
                        tracing::warn!(delivery = id, channel, "delivered, but the lease was lost before reporting; it may be sent again (same message id)");
                        Outcome::LeaseLost
                    }
                    Err(e) => {
                        tracing::error!(delivery = id, channel, error = %e, "delivered, but could not record it; it will be sent again (same message id)");
                        Outcome::Unrecorded(format!("delivered, not recorded: {e}"))
                    }
                }
            }
            Some(error) => {
                let failed = store::FailedAttempt { error, status: attempt.status, permanent: attempt.permanent };
                // An SMTP server's reply may quote the address: the full text is recorded for
                // admins (delivery_attempts), the log gets the code only.
                let shown = match delivery.channel {
                    Channel::Webhook => error.clone(),
                    Channel::Email => {
                        attempt.status.map_or("SMTP: no answer".to_owned(), |c| format!("SMTP reply {c}"))
                    }
                };
                match store::failed(&self.pool, id, &self.holder, &failed, latency_ms).await {
                    Ok(Failure::Retry(retry_in)) => {
                        tracing::warn!(delivery = id, event = delivery.event_id, kind = %delivery.kind, channel, %target, status = attempt.status, attempt = delivery.attempts + 1, error = %shown, retry_in_seconds = retry_in.max(0.0), "delivery failed");
                        Outcome::Failed(shown)
                    }
                    Ok(Failure::Final) => {
                        tracing::error!(delivery = id, event = delivery.event_id, kind = %delivery.kind, channel, %target, status = attempt.status, attempt = delivery.attempts + 1, error = %shown, permanent = attempt.permanent, "delivery failed for good; entitlements.retry_delivery brings it back");
                        Outcome::Dead(shown)
                    }
                    Ok(Failure::LeaseLost) => {
                        tracing::warn!(delivery = id, channel, error = %shown, "delivery failed, but the lease had run out: not recorded (another worker may send it)");
                        Outcome::LeaseLost
                    }
                    Err(e) => {
                        tracing::error!(delivery = id, channel, error = %shown, db_error = %e, "could not record a failed delivery");
                        Outcome::Unrecorded(format!("{shown}; not recorded: {e}"))
                    }
                }
            }
        }
    }
}

/// Start delivery on the context's tracker when enabled: a LISTEN connection and the loop.
/// Fails on an unusable SMTP setting.
pub fn spawn(ctx: &Context) -> Result<()> {
    let config = &ctx.config.delivery;
    if !config.enabled {
        return Ok(());
    }
    let deliverer =
        Deliverer::new(ctx.pool.clone(), config, &ctx.config.worker_id, ctx.background.clone(), ctx.shutdown.clone())?;
    let wake = Arc::new(Notify::new());
    {
        let (url, wake, shutdown) = (ctx.config.database_url.clone(), wake.clone(), ctx.shutdown.clone());
        ctx.tracker.spawn(async move { crate::db::listen(url.expose(), CHANNEL, wake, shutdown).await });
    }
    ctx.tracker.spawn(run(deliverer, wake));
    Ok(())
}

/// The loop: a pass on every wake-up and poll.
async fn run(deliverer: Deliverer, wake: Arc<Notify>) {
    let channels: Vec<&str> = deliverer.channels().iter().map(|c| c.as_str()).collect();
    tracing::info!(
        holder = %deliverer.holder,
        concurrency = deliverer.concurrency,
        channels = %channels.join(","),
        "delivery started"
    );
    let mut failing: Option<(String, Instant)> = None;
    loop {
        let report = deliverer.pass().await;
        if report.claimed > 0 {
            tracing::info!(
                claimed = report.claimed,
                delivered = report.delivered,
                failed = report.failed,
                dead = report.dead,
                "delivery pass"
            );
        }
        match report.claim_error {
            Some(error) => {
                let repeat = matches!(&failing, Some((e, at)) if *e == error && at.elapsed() < REPEAT_ERROR_AFTER);
                if !repeat {
                    tracing::error!(%error, "could not claim deliveries; trying again every second");
                    failing = Some((error, Instant::now()));
                }
            }
            None if failing.take().is_some() => tracing::info!("claiming deliveries works again"),
            None => {}
        }
        if deliverer.shutdown.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = deliverer.shutdown.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    tracing::info!("delivery stopped");
}

/// `entitlements-worker deliver`: one pass over every due delivery. `pool` has `connections`
/// connections: the pass holds at most that many at once.
pub async fn run_once(pool: PgPool, connections: usize, config: &DeliveryConfig, holder: &str) -> Result<PassReport> {
    let deliverer =
        Deliverer::new(pool, config, holder, Arc::new(Semaphore::new(connections.max(1))), CancellationToken::new())?;
    Ok(deliverer.pass().await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_counts_each_outcome_and_names_each_failure() {
        let mut r = PassReport { claimed: 5, ..PassReport::default() };
        r.add("delivery 1 (webhook)", Outcome::Delivered);
        r.add("delivery 2 (webhook)", Outcome::Failed("HTTP 500".into()));
        r.add("delivery 3 (email)", Outcome::Dead("SMTP: 550".into()));
        r.add("delivery 4 (webhook)", Outcome::LeaseLost);
        r.add("delivery 5 (webhook)", Outcome::Unrecorded("db down".into()));
        assert_eq!((r.delivered, r.failed, r.dead, r.lease_lost), (1, 3, 1, 1));
        assert_eq!(
            r.errors,
            ["delivery 2 (webhook): HTTP 500", "delivery 3 (email): SMTP: 550 (dead)", "delivery 5 (webhook): db down"]
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["failed"], 3);
        assert!(json.get("claim_error").is_none());
    }
}
