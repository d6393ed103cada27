//! HTTP surface: `GET /livez` (the process serves), `GET /readyz` (and reaches the
//! database), `GET /healthz` (the details), `GET /metrics`. Other modules add their routes
//! in `router`.
use crate::metrics::{DATABASE_UP, DELIVERIES_DEAD, DELIVERIES_PENDING, SECURITY_ALERTS_OPEN, WEBHOOKS_DEAD_LETTERS};
use crate::{db, Context, Error, Result};
use axum::{extract::State, http::header, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use serde_json::json;
use std::time::Duration;

pub fn router(ctx: Context) -> Router {
    let mut router = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/healthz", get(healthz))
        .route("/metrics", get(prometheus))
        .merge(crate::stripe::router());
    if ctx.config.console.enabled {
        router = router.merge(crate::console::router());
    }
    router.with_state(ctx)
}

/// Liveness: the process accepts and answers HTTP. It never asks the database, so a
/// database outage does not get every replica restarted (readiness takes them out of
/// the Service instead).
async fn livez() -> Json<serde_json::Value> {
    Json(json!({"status": "live"}))
}

/// Readiness: 200 when the database answers, 503 when not.
async fn readyz(State(ctx): State<Context>) -> (StatusCode, Json<serde_json::Value>) {
    let reachable = tokio::time::timeout(Duration::from_secs(2), db::ping(&ctx.pool)).await.unwrap_or(false);
    metrics::gauge!(DATABASE_UP).set(if reachable { 1.0 } else { 0.0 });
    if reachable {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unavailable", "database": "unreachable"})))
    }
}

/// 200 when the database answers (status `degraded` and the failing tasks listed when a
/// task's latest run failed); 503 when the database is unreachable.
async fn healthz(State(ctx): State<Context>) -> (StatusCode, Json<serde_json::Value>) {
    let reachable = tokio::time::timeout(Duration::from_secs(2), db::ping(&ctx.pool)).await.unwrap_or(false);
    metrics::gauge!(DATABASE_UP).set(if reachable { 1.0 } else { 0.0 });
    let tasks = ctx.tasks.snapshot();
    let mut failing: Vec<String> =
        tasks.iter().filter(|(_, h)| h.last_outcome.as_deref() == Some("error")).map(|(t, _)| t.clone()).collect();
    // Runs by every replica, from the database: the latest non-skipped run per task.
    let recent = if reachable {
        tokio::time::timeout(Duration::from_secs(2), db::latest_task_runs(&ctx.pool)).await.ok().and_then(|r| r.ok())
    } else {
        None
    };
    let dead_letters = if reachable { dead_letters(&ctx).await } else { None };
    if let Some(serde_json::Value::Object(runs)) = &recent {
        for (task, run) in runs {
            if run["outcome"] == "error" && !failing.contains(task) {
                failing.push(task.clone());
            }
        }
    }
    let status = match (reachable, failing.is_empty() && dead_letters.unwrap_or(0) == 0) {
        (false, _) => "unavailable",
        (true, true) => "ok",
        (true, false) => "degraded",
    };
    let body = json!({
        "status": status,
        "database": if reachable { "reachable" } else { "unreachable" },
        "worker": ctx.config.worker_id,
        "failing_tasks": failing,
        "stripe_dead_letters": dead_letters,
        "tasks": tasks,
        "recent_runs": recent,
    });
    let code = if reachable { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body))
}

/// Dead-lettered Stripe events (also the `entitlements_webhooks_dead_letters` gauge), or None
/// when the count cannot be read in time.
async fn dead_letters(ctx: &Context) -> Option<i64> {
    let n = tokio::time::timeout(Duration::from_secs(2), db::stripe_dead_letters(&ctx.pool)).await.ok()?.ok()?;
    metrics::gauge!(WEBHOOKS_DEAD_LETTERS).set(n as f64);
    Some(n)
}

/// The notification queue's gauges, read from the database at each scrape (any replica
/// answers for all of them); left as they were when it cannot be read in time.
async fn delivery_gauges(ctx: &Context) {
    let Ok(Ok(stats)) = tokio::time::timeout(Duration::from_secs(2), db::delivery_stats(&ctx.pool)).await else {
        return;
    };
    for (state, gauge) in [("pending", DELIVERIES_PENDING), ("dead", DELIVERIES_DEAD)] {
        for channel in ["webhook", "email"] {
            if let Some(n) = stats[state][channel].as_f64() {
                metrics::gauge!(gauge, "channel" => channel).set(n);
            }
        }
    }
}

/// Open security alerts by severity, read at each scrape like the queue's gauges.
async fn alert_gauges(ctx: &Context) {
    let Ok(Ok(counts)) = tokio::time::timeout(Duration::from_secs(2), db::open_alert_counts(&ctx.pool)).await else {
        return;
    };
    for (severity, open) in counts {
        metrics::gauge!(SECURITY_ALERTS_OPEN, "severity" => severity).set(open as f64);
    }
}

async fn prometheus(State(ctx): State<Context>) -> impl IntoResponse {
    dead_letters(&ctx).await;
    delivery_gauges(&ctx).await;
    alert_gauges(&ctx).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], ctx.metrics.render())
}

pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Listen { addr: addr.to_owned(), source })
}

/// Serve until `ctx.shutdown` is cancelled, then finish in-flight requests and return.
pub async fn serve(ctx: Context, listener: tokio::net::TcpListener) -> Result<()> {
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(%addr, "listening");
    let shutdown = ctx.shutdown.clone();
    let listener = crate::listener::LimitedListener::new(listener, ctx.config.http);
    let app = router(ctx).layer(axum::middleware::from_fn(crate::listener::mark_busy));
    axum::serve(listener, app.into_make_service_with_connect_info::<crate::listener::InFlight>())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|source| Error::Listen { addr, source })?;
    tracing::info!("http stopped");
    Ok(())
}
