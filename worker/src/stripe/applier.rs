//! The background applier: reads due events from `entitlements.stripe_events` (so a restart
//! resumes where it stopped), applies each in its own transaction through
//! `entitlements.stripe_apply_event`, and records failures for a later retry with backoff
//! (`entitlements.stripe_event_failed`). With a secret key it applies the subscription as
//! Stripe has it now instead of the payload, fetched while holding the subscription's
//! lease (`entitlements.take_lease`): no transaction is open during the HTTP call.
use super::api::Client;
use crate::db::Lease;
use crate::metrics::{WEBHOOKS_APPLIED, WEBHOOKS_FAILED, WEBHOOK_APPLY_LAG};
use crate::{Context, Result};
use sqlx::PgPool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;

const BATCH: i32 = 200;
/// Events applied at once; several subscriptions' events in parallel, each one serialized
/// by its lock in the extension. Part of the pool's size (context.rs).
pub const PARALLEL: usize = 4;
/// Also polled, for events stored by another replica or due for a retry.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
struct Pending {
    id: String,
    received_at: f64,
    stripe_subscription_id: Option<String>,
}

pub async fn run(ctx: Context, client: Option<Client>) {
    tracing::info!(fetch_from_api = client.is_some(), "Stripe applier started");
    loop {
        let more = match apply_due(&ctx, client.as_ref()).await {
            Ok(n) => n == BATCH as usize,
            Err(e) => {
                tracing::error!(error = %e, "Stripe applier could not read pending events");
                false
            }
        };
        if ctx.shutdown.is_cancelled() {
            break;
        }
        if !more {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                _ = ctx.stripe_wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
    tracing::info!("Stripe applier stopped");
}

/// Apply the events that are due now; returns how many were looked at. Each event holds a
/// permit of `ctx.background` while it is applied (so the applier never holds the connections
/// kept for webhook intake). After shutdown no new event is started (those in flight finish;
/// the rest wait in the table for the next start).
pub async fn apply_due(ctx: &Context, client: Option<&Client>) -> Result<usize> {
    let rows: Vec<(String, f64, Option<String>)> = {
        let _permit = ctx.background.acquire().await;
        sqlx::query_as(
            "select id, extract(epoch from received_at)::float8, stripe_subscription_id \
               from entitlements.stripe_pending_events($1)",
        )
        .bind(BATCH)
        .fetch_all(&ctx.pool)
        .await?
    };
    let n = rows.len();
    let mut queue = rows.into_iter().map(|(id, received_at, stripe_subscription_id)| Pending {
        id,
        received_at,
        stripe_subscription_id,
    });
    let mut running = JoinSet::new();
    loop {
        while running.len() < PARALLEL && !ctx.shutdown.is_cancelled() {
            let Some(ev) = queue.next() else { break };
            // Waits while background work holds its whole share of the pool; the semaphore
            // is never closed.
            let Ok(permit) = ctx.background.clone().acquire_owned().await else { break };
            let (pool, client) = (ctx.pool.clone(), client.cloned());
            running.spawn(async move {
                let _permit = permit;
                apply_one(&pool, client.as_ref(), ev).await
            });
        }
        if running.join_next().await.is_none() {
            break;
        }
    }
    Ok(n)
}

async fn apply_one(pool: &PgPool, client: Option<&Client>, ev: Pending) {
    match try_apply(pool, client, &ev).await {
        // Another worker has it, or applied it meanwhile.
        Ok(None) => {}
        Ok(Some(outcome)) if outcome == "duplicate" => {}
        Ok(Some(outcome)) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default();
            metrics::histogram!(WEBHOOK_APPLY_LAG).record((now - ev.received_at).max(0.0));
            let label = outcome.split(',').next().unwrap_or("").to_owned();
            metrics::counter!(WEBHOOKS_APPLIED, "outcome" => label).increment(1);
            tracing::debug!(event = %ev.id, %outcome, "applied a Stripe event");
        }
        Err(e) => {
            metrics::counter!(WEBHOOKS_FAILED).increment(1);
            let message = e.to_string();
            let next = sqlx::query_scalar::<_, Option<f64>>(
                "select extract(epoch from entitlements.stripe_event_failed($1, $2) - now())::float8",
            )
            .bind(&ev.id)
            .bind(&message)
            .fetch_one(pool)
            .await;
            tracing::warn!(event = %ev.id, error = %message, retry_in_seconds = ?next.ok().flatten(), "could not apply a Stripe event");
        }
    }
}

/// How long a worker may fetch and apply one subscription before another may take over:
/// above the API client's worst case (three attempts of `api::TIMEOUT` and their backoff), and the
/// lease is taken again before applying, so a fetch that outlived it is dropped.
const LEASE_SECONDS: u32 = 120;

async fn try_apply(pool: &PgPool, client: Option<&Client>, ev: &Pending) -> Result<Option<String>> {
    let (Some(client), Some(sub)) = (client, &ev.stripe_subscription_id) else {
        return apply(pool, ev, None).await;
    };
    // One fetch-and-apply of a subscription at a time across workers, so a state fetched
    // earlier is never written after one fetched later; held as a lease (a row with an
    // expiry), not as a lock of a transaction left open while Stripe answers.
    let lease = Lease::new(format!("stripe_subscription:{sub}"), "applier", LEASE_SECONDS);
    if !lease.take(pool).await? {
        // Another worker has this subscription now; the event stays due for the next poll.
        return Ok(None);
    }
    let outcome = match client.subscription(sub).await {
        // Still ours (renewed): nobody else fetched since, so this state is the newest.
        Ok(fetched) => match lease.take(pool).await {
            Ok(true) => apply(pool, ev, fetched).await,
            // Expired and taken over: what was fetched may be older than what the other
            // worker applies; the event stays due and is fetched again.
            Ok(false) => Ok(None),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    lease.release(pool).await;
    outcome
}

/// Apply the event (with the subscription as just fetched, if any) in its own transaction.
/// NULL: another worker is applying it (the function skips locked events).
async fn apply(pool: &PgPool, ev: &Pending, fetched: Option<serde_json::Value>) -> Result<Option<String>> {
    let outcome: Option<String> = sqlx::query_scalar("select entitlements.stripe_apply_event($1, $2)")
        .bind(&ev.id)
        .bind(fetched)
        .fetch_one(pool)
        .await?;
    Ok(outcome)
}
