//! HTTP surface. For now: `GET /healthz`.
use crate::{db, Error, Result};
use axum::{extract::State, http::StatusCode, routing::get, Json, Router};
use serde_json::json;
use sqlx::PgPool;

pub fn router(pool: PgPool) -> Router {
    Router::new().route("/healthz", get(healthz)).with_state(pool)
}

async fn healthz(State(pool): State<PgPool>) -> (StatusCode, Json<serde_json::Value>) {
    if db::ping(&pool).await {
        (StatusCode::OK, Json(json!({"status": "ok", "database": "reachable"})))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "degraded", "database": "unreachable"})))
    }
}

/// Serve until SIGTERM or Ctrl-C, then finish in-flight requests and return.
pub async fn serve(pool: PgPool, addr: &str) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr: addr.to_owned(), source })?;
    tracing::info!(%addr, "listening");
    axum::serve(listener, router(pool))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|source| Error::Listen { addr: addr.to_owned(), source })?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown requested");
}
