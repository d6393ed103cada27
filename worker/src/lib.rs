//! The worker moves bytes between the outside world and the extension's SQL functions;
//! it never re-implements an entitlement rule.

pub mod config;
pub mod console;
pub mod context;
pub mod db;
pub mod error;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod provision;
pub mod scheduler;
pub mod stripe;
pub mod telemetry;

use config::{Command, Config};
pub use context::Context;
pub use error::{Error, Result};

/// Connections of a one-shot command's pool: its calls are sequential.
const COMMAND_CONNECTIONS: u32 = 2;

pub async fn run(config: Config, command: Option<Command>) -> Result<()> {
    match command.unwrap_or(Command::Serve) {
        Command::Serve => serve(Context::new(config).await?).await,
        Command::ApplyCatalog { file } => {
            let pool = db::connect(config.database_url.expose(), COMMAND_CONNECTIONS).await?;
            let changes = db::apply_catalog_file(&pool, &file).await?;
            println!("{changes}");
            Ok(())
        }
        Command::RunTask { name } => {
            let pool = db::connect(config.database_url.expose(), COMMAND_CONNECTIONS).await?;
            scheduler::check_task(&name, &scheduler::known_tasks(&pool).await?, "")?;
            if name == config::RECONCILE_STRIPE && config.stripe.secret_key.is_none() {
                return Err(Error::Config(format!("{name} needs STRIPE_SECRET_KEY")));
            }
            let run = scheduler::run_task(&pool, &config, &name).await?;
            println!("{}", serde_json::to_string(&run).unwrap_or_default());
            if run.outcome == "error" {
                return Err(Error::TaskFailed { task: name, message: run.error.unwrap_or_default() });
            }
            Ok(())
        }
        Command::ReconcileStripe => {
            let pool = db::connect(config.database_url.expose(), COMMAND_CONNECTIONS).await?;
            let report = stripe::reconcile(&pool, &config.stripe, None).await?;
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            if report.failed > 0 {
                let message = format!("{} subscription(s) not applied: {}", report.failed, report.errors.join("; "));
                return Err(Error::TaskFailed { task: config::RECONCILE_STRIPE.into(), message });
            }
            Ok(())
        }
        Command::Provision { dry_run: true, customer: Some(customer) } => {
            // The database only: no Kubernetes configuration is read.
            let pool = db::connect(config.database_url.expose(), COMMAND_CONNECTIONS).await?;
            print!("{}", provision::dry_run(&pool, &config.provision.platform, customer).await?);
            Ok(())
        }
        Command::Provision { .. } => {
            let connections = (config.provision.concurrency as u32).clamp(COMMAND_CONNECTIONS, 16);
            let pool = db::connect(config.database_url.expose(), connections).await?;
            let report = provision::run_once(pool, connections as usize, &config.provision, &config.worker_id).await?;
            println!(
                "{}",
                serde_json::json!({"claimed": report.claimed, "failed": report.failed, "errors": report.errors})
            );
            if report.failed > 0 {
                return Err(Error::ProvisionFailed(format!(
                    "{} of {} server(s) failed: {}",
                    report.failed,
                    report.claimed,
                    report.errors.join("; ")
                )));
            }
            Ok(())
        }
        Command::Deliver => {
            let connections = (config.delivery.concurrency as u32).clamp(COMMAND_CONNECTIONS, 16);
            let pool = db::connect(config.database_url.expose(), connections).await?;
            let report = notify::run_once(pool, connections as usize, &config.delivery, &config.worker_id).await?;
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            if let Some(error) = report.claim_error {
                return Err(Error::DeliveryFailed(format!("could not claim deliveries: {error}")));
            }
            if report.failed > 0 {
                return Err(Error::DeliveryFailed(format!(
                    "{} of {} deliveries failed: {}",
                    report.failed,
                    report.claimed,
                    report.errors.join("; ")
                )));
            }
            Ok(())
        }
        Command::Check => {
            let pool = db::connect(config.database_url.expose(), COMMAND_CONNECTIONS).await?;
            let version = db::extension_version(&pool).await?;
            scheduler::schedule(&config, &scheduler::known_tasks(&pool).await?)?;
            println!("connected; pg_entitlements {version}");
            Ok(())
        }
    }
}

/// The daemon: HTTP, the scheduler, delivery of outbox events (and any other background
/// loop, spawned on `ctx.tracker`) until SIGTERM / Ctrl-C; then stop intake, let in-flight
/// work finish for up to `shutdown_timeout`, and return.
pub async fn serve(ctx: Context) -> Result<()> {
    let listener = http::bind(&ctx.config.listen_addr).await?;
    tokio::spawn(cancel_on_signal(ctx.shutdown.clone()));
    ctx.tracker.spawn(metrics::upkeep(ctx.metrics.clone(), ctx.shutdown.clone()));
    if ctx.config.scheduler.enabled {
        scheduler::spawn(&ctx);
    }
    stripe::spawn(&ctx)?;
    provision::spawn(&ctx).await?;
    notify::spawn(&ctx)?;
    let http = {
        let ctx = ctx.clone();
        ctx.tracker.clone().spawn(async move {
            let served = http::serve(ctx.clone(), listener).await;
            // Without its HTTP server the daemon is of no use: stop the rest too.
            ctx.shutdown.cancel();
            served
        })
    };
    ctx.shutdown.cancelled().await;
    ctx.tracker.close();
    if tokio::time::timeout(ctx.config.shutdown_timeout, ctx.tracker.wait()).await.is_err() {
        tracing::warn!(
            timeout_seconds = ctx.config.shutdown_timeout.as_secs_f64(),
            "in-flight work did not finish in time; exiting"
        );
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), ctx.pool.close()).await;
    tracing::info!("stopped");
    match http.is_finished() {
        true => http.await.unwrap_or(Ok(())),
        false => Ok(()),
    }
}

async fn cancel_on_signal(shutdown: tokio_util::sync::CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
        _ = shutdown.cancelled() => return,
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}
