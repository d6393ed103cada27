//! Kubernetes provisioning (issue #10): every server of a subscriber is a Matrix homeserver
//! (Synapse plus a CloudNativePG database) in a namespace of its own, sized by the plan's
//! `resources`.
//!
//! [`render`] turns one server's desired state into the Kubernetes objects to apply: a pure
//! function, with no database and no API calls, so the applier, `provision --dry-run` and the
//! tests all see exactly the same objects. [`store`] claims servers and reports on them
//! through the extension's functions; [`apply`] converges one claimed server against the
//! cluster. This module runs it: level-triggered from the database, woken by
//! `NOTIFY entitlements_provision`, polling for servers whose requeue or retry is due, and
//! resyncing converged servers on an interval (which costs no write calls when nothing
//! drifted). Leases in the database keep two workers off one server; backoff and the
//! `failed` state are the extension's.

pub mod apply;
pub mod render;
pub mod store;
pub mod subset;

use crate::config::ProvisionConfig;
use crate::db::Failure;
use crate::metrics::{PROVISION_FAILURES, PROVISION_QUEUE_DEPTH, SERVERS, SERVER_TIME_TO_READY};
use crate::{Context, Error, Result};
use apply::Cluster;
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use store::{Claimed, Phase, Target};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Sent by every transaction that may change a server's desired state.
pub const CHANNEL: &str = "entitlements_provision";
/// Also polled: a requeued or retried server becomes due without a NOTIFY.
const POLL: Duration = Duration::from_secs(1);
/// How stale the queue and phase gauges may get while nothing happens.
const STATS_EVERY: Duration = Duration::from_secs(10);

/// A client for the configured API server: `kube_url` without credentials, else in-cluster
/// or the kubeconfig (`kube::Config::infer`).
pub async fn kube_client(config: &ProvisionConfig) -> Result<kube::Client> {
    let mut kube_config = match &config.kube_url {
        Some(url) => kube::Config::new(
            url.parse().map_err(|e| Error::KubeConfig(format!("ENTITLEMENTS_KUBE_URL {url:?}: {e}")))?,
        ),
        None => kube::Config::infer().await.map_err(|e| Error::KubeConfig(e.to_string()))?,
    };
    // No hidden retries: a 429 or 5xx is a failed attempt, retried with the server's
    // backoff in the database (and visible there).
    kube_config.default_retry = false;
    kube_config.connect_timeout = Some(Duration::from_secs(10));
    kube_config.read_timeout = Some(Duration::from_secs(30));
    kube_config.write_timeout = Some(Duration::from_secs(30));
    kube::Client::try_from(kube_config).map_err(|e| Error::KubeConfig(e.to_string()))
}

pub fn cluster(client: kube::Client, config: &ProvisionConfig) -> Cluster {
    Cluster::new(
        client,
        apply::Settings {
            platform: config.platform.clone(),
            requeue_after: config.requeue_after,
            stuck_terminating_after: config.stuck_terminating_after,
        },
    )
}

/// What a pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub claimed: usize,
    pub failed: usize,
    /// `server name: error` of each failure.
    pub errors: Vec<String>,
}

/// What a pass needs besides the cluster.
#[derive(Clone)]
pub struct Worker {
    pub pool: PgPool,
    pub cluster: Cluster,
    pub holder: String,
    pub lease: Duration,
    pub concurrency: usize,
    /// Held around each database call, so provisioning stays within the background share of
    /// the pool (context.rs).
    pub background: Arc<Semaphore>,
    /// Stop claiming (servers in flight finish).
    pub shutdown: CancellationToken,
}

impl Worker {
    /// Claim and converge servers until none is due, at most `concurrency` at once. Each
    /// server is claimed when a slot is free (so no lease runs out while it waits), and at
    /// most once per pass: a server requeued soon may be due again, and seeing it again means
    /// every due server has had its turn. With `include_converged` (a resync) the resting
    /// servers come after those with work, in id order from a cursor, so every one is looked
    /// at once.
    pub async fn pass(&self, include_converged: bool) -> PassReport {
        let mut report = PassReport::default();
        let mut seen = HashSet::<Uuid>::new();
        let mut cursor: Option<Uuid> = None;
        let mut running: JoinSet<(String, Option<String>)> = JoinSet::new();
        let mut exhausted = false;
        loop {
            if !exhausted && !self.shutdown.is_cancelled() && running.len() < self.concurrency {
                let free = self.concurrency - running.len();
                let claimed = {
                    let _permit = self.background.acquire().await;
                    let after = include_converged.then(|| cursor.unwrap_or(Uuid::nil()));
                    store::claim(&self.pool, &self.holder, self.lease, free, include_converged, after).await
                };
                match claimed {
                    Ok(servers) => {
                        exhausted = servers.len() < free;
                        for server in servers {
                            if server.resting() {
                                cursor = cursor.max(Some(server.server_id));
                            }
                            // Claimed, so it is worked on (and its lease released by the report).
                            exhausted |= !seen.insert(server.server_id);
                            report.claimed += 1;
                            let worker = self.clone();
                            running.spawn(async move {
                                let name = server.name.clone();
                                (name, worker.one(server).await.err())
                            });
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not claim servers");
                        exhausted = true;
                    }
                }
                continue;
            }
            match running.join_next().await {
                None => break,
                Some(Ok((_, None))) => {}
                Some(Ok((name, Some(error)))) => {
                    report.failed += 1;
                    report.errors.push(format!("{name}: {error}"));
                }
                Some(Err(e)) => {
                    // A panic in one server's pass; its lease expires and it is claimed again.
                    report.failed += 1;
                    report.errors.push(format!("a server's pass panicked: {e}"));
                }
            }
        }
        report
    }

    /// Converge one claimed server and record the outcome; the error, if any, as recorded.
    async fn one(&self, server: Claimed) -> std::result::Result<(), String> {
        let started = Instant::now();
        // Never past the lease: after it, another worker may have the server.
        let budget = self.lease.mul_f64(0.8);
        let outcome = match tokio::time::timeout(budget, self.cluster.converge(&server)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::Kubernetes(format!("timed out after {}s", budget.as_secs()))),
        };
        match outcome {
            Ok(report) => {
                let first_ready = report.phase == Phase::Ready && server.phase != "ready" && {
                    let _permit = self.background.acquire().await;
                    store::never_ready(&self.pool, &server).await.unwrap_or(false)
                };
                let recorded = {
                    let _permit = self.background.acquire().await;
                    store::report(&self.pool, &server, &self.holder, &report).await
                };
                match recorded {
                    Ok(true) => {
                        if first_ready {
                            metrics::histogram!(SERVER_TIME_TO_READY).record((unix_now() - server.created_at).max(0.0));
                        }
                        tracing::debug!(server = %server.name, phase = report.phase.as_str(), seconds = started.elapsed().as_secs_f64(), "server reported");
                        Ok(())
                    }
                    Ok(false) => {
                        tracing::warn!(server = %server.name, "lease lost before reporting; another worker has the server");
                        Ok(())
                    }
                    Err(e) => {
                        // Not recorded: the lease expires and the server is claimed again.
                        tracing::error!(server = %server.name, error = %e, "could not report a server");
                        Err(e.to_string())
                    }
                }
            }
            Err(e) => {
                metrics::counter!(PROVISION_FAILURES).increment(1);
                let message = e.to_string();
                let permanent = matches!(e, Error::ProvisionInput { .. });
                let next = {
                    let _permit = self.background.acquire().await;
                    store::failed(&self.pool, &server, &self.holder, &message, permanent).await
                };
                match next {
                    Ok(Failure::Retry(secs)) => {
                        tracing::warn!(server = %server.name, error = %message, retry_in_seconds = secs, "provisioning failed")
                    }
                    Ok(Failure::Final) => {
                        tracing::error!(server = %server.name, error = %message, "provisioning failed for good; entitlements.retry_server brings it back")
                    }
                    Ok(Failure::LeaseLost) => {
                        tracing::warn!(server = %server.name, error = %message, "provisioning failed, but the lease had run out: not recorded (another worker may have the server)")
                    }
                    Err(db) => {
                        tracing::error!(server = %server.name, error = %message, db_error = %db, "could not record a failure")
                    }
                }
                Err(message)
            }
        }
    }
}

/// Queue depth and servers by phase as gauges.
pub async fn refresh_stats(pool: &PgPool, background: &Semaphore) {
    let stats = {
        let _permit = background.acquire().await;
        store::stats(pool).await
    };
    match stats {
        Ok(s) => {
            metrics::gauge!(PROVISION_QUEUE_DEPTH).set(s.queue_depth);
            for (phase, n) in s.phases {
                metrics::gauge!(SERVERS, "phase" => phase).set(n);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not read provision_stats"),
    }
}

/// Start the provisioner on the context's tracker when enabled: a LISTEN connection and the
/// loop. Fails when no Kubernetes client can be configured.
pub async fn spawn(ctx: &Context) -> Result<()> {
    let config = &ctx.config.provision;
    if !config.enabled {
        return Ok(());
    }
    let client = kube_client(config).await?;
    let worker = Worker {
        pool: ctx.pool.clone(),
        cluster: cluster(client, config),
        holder: ctx.config.worker_id.clone(),
        lease: config.lease,
        concurrency: config.concurrency,
        background: ctx.background.clone(),
        shutdown: ctx.shutdown.clone(),
    };
    let wake = Arc::new(Notify::new());
    {
        let (url, wake, shutdown) = (ctx.config.database_url.clone(), wake.clone(), ctx.shutdown.clone());
        ctx.tracker.spawn(async move { crate::db::listen(url.expose(), CHANNEL, wake, shutdown).await });
    }
    ctx.tracker.spawn(run(worker, wake, config.resync_interval));
    Ok(())
}

/// The loop: a pass on every wake-up and poll, a resync pass every `resync`.
async fn run(worker: Worker, wake: Arc<Notify>, resync: Duration) {
    tracing::info!(
        holder = %worker.holder,
        concurrency = worker.concurrency,
        resync_seconds = resync.as_secs_f64(),
        "provisioner started"
    );
    let mut next_resync = Instant::now();
    let mut stats_at = Instant::now();
    refresh_stats(&worker.pool, &worker.background).await;
    loop {
        let include_converged = Instant::now() >= next_resync;
        if include_converged {
            next_resync = Instant::now() + resync;
        }
        let report = worker.pass(include_converged).await;
        if report.claimed > 0 {
            tracing::info!(
                claimed = report.claimed,
                failed = report.failed,
                resync = include_converged,
                "provisioning pass"
            );
        }
        // The gauges read every server's desired state: after work, and otherwise at most
        // every STATS_EVERY, not on every idle poll.
        if report.claimed > 0 || stats_at.elapsed() >= STATS_EVERY {
            refresh_stats(&worker.pool, &worker.background).await;
            stats_at = Instant::now();
        }
        if worker.shutdown.is_cancelled() {
            break;
        }
        let until_resync = next_resync.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = worker.shutdown.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(POLL.min(until_resync)) => {}
        }
    }
    tracing::info!("provisioner stopped");
}

/// `entitlements-worker provision`: one pass over every due server, converged ones
/// included; an error naming the servers that failed.
/// `pool` has `connections` connections: the pass holds at most that many at once.
pub async fn run_once(pool: PgPool, connections: usize, config: &ProvisionConfig, holder: &str) -> Result<PassReport> {
    let client = kube_client(config).await?;
    let worker = Worker {
        pool: pool.clone(),
        cluster: cluster(client, config),
        holder: holder.to_owned(),
        lease: config.lease,
        concurrency: config.concurrency,
        background: Arc::new(Semaphore::new(connections.max(1))),
        shutdown: CancellationToken::new(),
    };
    let report = worker.pass(true).await;
    refresh_stats(&pool, &worker.background).await;
    Ok(report)
}

/// `provision --dry-run --customer UUID`: the objects that customer's servers would get now,
/// as multi-document YAML, from the database alone (no cluster is read, so every volume is
/// rendered at the plan's size). A server to be terminated gets nothing.
pub async fn dry_run(pool: &PgPool, platform: &render::Platform, customer: Uuid) -> Result<String> {
    let servers = store::server_specs(pool, customer).await?;
    render_servers(platform, &servers)
}

fn render_servers(platform: &render::Platform, servers: &[Claimed]) -> Result<String> {
    let mut objects = Vec::new();
    for server in servers {
        let desired = match server.target()? {
            Target::Running => render::Desired::Running,
            Target::Suspended if server.resources.is_none() => continue,
            Target::Suspended => render::Desired::Suspended,
            Target::Terminated => continue,
        };
        let spec = server.spec(desired, render::Observed::default())?;
        let rendered = render::render(platform, &spec).map_err(|e| server.input_error(e.to_string()))?;
        objects.extend(rendered.objects);
    }
    Ok(render::to_multi_document_yaml(&objects))
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_renders_running_and_suspended_servers_and_nothing_for_terminated() {
        let platform = render::Platform::default();
        let running = store::tests::claimed("running");
        let mut suspended = store::tests::claimed("suspended");
        suspended.name = "beta".into();
        suspended.namespace = "mx-beta".into();
        suspended.domains = vec!["beta.example.org".into()];
        let terminated = store::tests::claimed("terminated");
        let yaml = render_servers(&platform, &[running.clone(), suspended, terminated.clone()]).unwrap();
        assert!(yaml.starts_with("---\n"));
        assert!(yaml.contains("name: mx-alpha") && yaml.contains("name: mx-beta"), "{yaml}");
        assert!(yaml.contains("cnpg.io/hibernation: 'on'") || yaml.contains("cnpg.io/hibernation: \"on\""), "{yaml}");
        assert_eq!(render_servers(&platform, &[terminated]).unwrap(), "");
        let expected = render::to_multi_document_yaml(
            &render::render(&platform, &running.spec(render::Desired::Running, Default::default()).unwrap())
                .unwrap()
                .objects,
        );
        assert_eq!(render_servers(&platform, &[running]).unwrap(), expected, "exactly what the applier renders");
    }

    #[test]
    fn a_bad_row_in_a_dry_run_names_the_server() {
        let mut bad = store::tests::claimed("running");
        bad.resources = Some(serde_json::json!({"memory": "lots"}));
        let err = render_servers(&render::Platform::default(), &[bad]).unwrap_err().to_string();
        assert!(err.starts_with("server alpha: resources: $.resources.memory"), "{err}");
    }
}
