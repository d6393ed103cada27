//! `Context`: what every part of the daemon shares (pool, configuration, metrics, task
//! health, shutdown), cloned cheaply into HTTP handlers and background loops.
use crate::config::Config;
use crate::scheduler::TaskBoard;
use crate::{db, metrics, Result};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone)]
pub struct Context {
    pub pool: PgPool,
    pub config: Arc<Config>,
    pub metrics: PrometheusHandle,
    /// Latest outcome per scheduled task, for /healthz.
    pub tasks: TaskBoard,
    /// Cancelled on SIGTERM / Ctrl-C: stop taking new work.
    pub shutdown: CancellationToken,
    /// In-flight work that shutdown waits for (up to `config.shutdown_timeout`).
    /// Spawn background work with `ctx.tracker.spawn(...)`.
    pub tracker: TaskTracker,
}

impl Context {
    pub async fn new(config: Config) -> Result<Context> {
        let metrics = metrics::install()?;
        let pool = db::connect(config.database_url.expose()).await?;
        // What this process will do, for whoever reads the logs; never a secret's value.
        let opts = pool.connect_options();
        let tasks: Vec<String> =
            config.scheduler.tasks.iter().map(|(t, d)| format!("{t}={}s", d.as_secs_f64())).collect();
        tracing::info!(
            database = %format!("{}:{}/{}", opts.get_host(), opts.get_port(), opts.get_database().unwrap_or("")),
            worker_id = %config.worker_id,
            scheduler = config.scheduler.enabled,
            tasks = %tasks.join(","),
            stripe_webhooks = config.stripe.webhook_secret.is_some(),
            stripe_api = config.stripe.secret_key.is_some(),
            "starting"
        );
        Ok(Context {
            pool,
            config: Arc::new(config),
            metrics,
            tasks: TaskBoard::default(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        })
    }
}
