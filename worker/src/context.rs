//! `Context`: what every part of the daemon shares (pool, configuration, metrics, task
//! health, shutdown), cloned cheaply into HTTP handlers and background loops. All of the
//! daemon's state lives here, none in statics, so each part can be reasoned about (and
//! tested) from what it is handed.
use crate::config::Config;
use crate::scheduler::TaskBoard;
use crate::{db, metrics, scheduler, Result};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Pool connections only HTTP (webhook intake, health, metrics) can have: background work
/// holds at most the rest, so a busy applier or scheduler never makes Stripe wait for its
/// 2xx.
pub const INTAKE_CONNECTIONS: usize = 4;
/// Connections background work may hold at once: the Stripe applier's slots
/// (`stripe::applier::PARALLEL`) and scheduled runs share them; past that they wait.
pub const BACKGROUND_CONNECTIONS: usize = 8;

#[derive(Clone)]
pub struct Context {
    /// The one pool of the process; see `background` for how it is shared.
    pub pool: PgPool,
    pub config: Arc<Config>,
    pub metrics: PrometheusHandle,
    /// The scheduled tasks and their intervals, checked against the extension's task names.
    pub schedule: Arc<BTreeMap<String, Duration>>,
    /// Latest outcome per scheduled task, for /healthz.
    pub tasks: TaskBoard,
    /// Cancelled on SIGTERM / Ctrl-C: stop taking new work.
    pub shutdown: CancellationToken,
    /// In-flight work that shutdown waits for (up to `config.shutdown_timeout`).
    /// Spawn background work with `ctx.tracker.spawn(...)`.
    pub tracker: TaskTracker,
    /// One permit per unit of background work (a scheduled run, an event the Stripe applier
    /// applies), each of which uses at most one connection at a time: together they hold at
    /// most the pool's size less `INTAKE_CONNECTIONS`.
    pub background: Arc<Semaphore>,
    /// Wakes the Stripe applier when the webhook stored a new event (it also polls, for
    /// events stored by another replica or due for a retry).
    pub stripe_wake: Arc<Notify>,
    /// The console's sign-in limits and access token keys.
    pub console: Arc<crate::console::State>,
}

impl Context {
    pub async fn new(config: Config) -> Result<Context> {
        let pool =
            db::connect(config.database_url.expose(), (INTAKE_CONNECTIONS + BACKGROUND_CONNECTIONS) as u32).await?;
        let schedule = scheduler::schedule(&config, &scheduler::known_tasks(&pool).await?)?;
        let metrics = metrics::install()?;
        // What this process will do, for whoever reads the logs; never a secret's value.
        let opts = pool.connect_options();
        let tasks: Vec<String> = schedule.iter().map(|(t, d)| format!("{t}={}s", d.as_secs_f64())).collect();
        tracing::info!(
            database = %format!("{}:{}/{}", opts.get_host(), opts.get_port(), opts.get_database().unwrap_or("")),
            worker_id = %config.worker_id,
            scheduler = config.scheduler.enabled,
            tasks = %tasks.join(","),
            stripe_webhooks = config.stripe.webhook_secret.is_some(),
            stripe_api = config.stripe.secret_key.is_some(),
            provisioning = config.provision.enabled,
            console = config.console.enabled,
            "starting"
        );
        if config.console.enabled && config.console.secret_generated {
            tracing::warn!(
                "ENTITLEMENTS_CONSOLE_SECRET is not set: console sessions are signed with a key drawn at start, \
                 so they end when the worker restarts and do not carry over to other replicas"
            );
        }
        let console = Arc::new(crate::console::State::new(&config)?);
        Ok(Context {
            pool,
            config: Arc::new(config),
            metrics,
            schedule: Arc::new(schedule),
            tasks: TaskBoard::default(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            background: Arc::new(Semaphore::new(BACKGROUND_CONNECTIONS)),
            stripe_wake: Arc::new(Notify::new()),
            console,
        })
    }
}
