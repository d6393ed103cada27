//! The database side of provisioning: thin calls of the contract's functions
//! (`entitlements.provision_claim`, `provision_report`, `provision_failed`, `server_specs`,
//! `provision_stats`) and the row a claim returns, turned into a [`ServerSpec`]. Every
//! decision (desired state, backoff, when a server is `failed`) is the extension's.
use super::render::{Desired, Observed, Resources, ServerSecrets, ServerSpec};
use crate::db::Failure;
use crate::{Error, Result};
use serde::Serialize;
use sqlx::PgPool;
use std::fmt;
use std::time::Duration;
use uuid::Uuid;

/// What the extension wants of a server now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Running,
    Suspended,
    /// Final backup, then the namespace is deleted (the worker's delete path; never rendered).
    Terminated,
}

/// A server's phase as the worker reports it (`provision_report`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Provisioning,
    Ready,
    Suspended,
    Terminating,
    Terminated,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Provisioning => "provisioning",
            Phase::Ready => "ready",
            Phase::Suspended => "suspended",
            Phase::Terminating => "terminating",
            Phase::Terminated => "terminated",
        }
    }
}

/// One entry of a server's `conditions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True" or "False", as Kubernetes writes conditions.
    pub status: String,
    pub reason: String,
    pub message: String,
}

impl Condition {
    pub fn new(type_: &str, status: bool, reason: &str, message: impl Into<String>) -> Condition {
        Condition {
            type_: type_.to_owned(),
            status: if status { "True" } else { "False" }.to_owned(),
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// The `secrets` column: never shown by Debug (claims are logged at debug level).
#[derive(Clone, Default)]
pub struct SecretsJson(pub Option<serde_json::Value>);

impl fmt::Debug for SecretsJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "SecretsJson(***)" } else { "SecretsJson(None)" })
    }
}

/// A row of `provision_claim` (and of `server_specs`, which has the same columns).
#[derive(Debug, Clone)]
pub struct Claimed {
    pub server_id: Uuid,
    pub customer_id: Uuid,
    pub name: String,
    pub namespace: String,
    pub domains: Vec<String>,
    /// As the extension wrote it; [`Claimed::target`] reads it.
    pub desired: String,
    pub resources: Option<serde_json::Value>,
    pub applied_resources: Option<serde_json::Value>,
    pub generation: i64,
    pub phase: String,
    pub attempts: i32,
    /// Unix seconds.
    pub created_at: f64,
    pub secrets: SecretsJson,
}

#[derive(sqlx::FromRow)]
struct Row {
    server_id: Uuid,
    customer_id: Uuid,
    name: String,
    namespace: String,
    domains: Option<Vec<String>>,
    desired: String,
    resources: Option<serde_json::Value>,
    applied_resources: Option<serde_json::Value>,
    generation: i64,
    phase: String,
    attempts: i32,
    created_at: f64,
    secrets: Option<serde_json::Value>,
}

impl From<Row> for Claimed {
    fn from(r: Row) -> Claimed {
        Claimed {
            server_id: r.server_id,
            customer_id: r.customer_id,
            name: r.name,
            namespace: r.namespace,
            domains: r.domains.unwrap_or_default(),
            desired: r.desired,
            resources: r.resources,
            applied_resources: r.applied_resources,
            generation: r.generation,
            phase: r.phase,
            attempts: r.attempts,
            created_at: r.created_at,
            secrets: SecretsJson(r.secrets),
        }
    }
}

/// The columns both functions return, `created_at` as Unix seconds (a macro: sqlx takes
/// only static query text).
macro_rules! columns {
    () => {
        "server_id, customer_id, name, namespace, domains, desired, resources, applied_resources, \
         generation, phase, attempts, extract(epoch from created_at)::float8 as created_at, secrets"
    };
}

impl Claimed {
    /// A mistake in the row: permanent until the row changes (recorded with provision_failed).
    pub fn input_error(&self, message: impl Into<String>) -> Error {
        Error::ProvisionInput { server: self.name.clone(), message: message.into() }
    }

    pub fn target(&self) -> Result<Target> {
        match self.desired.as_str() {
            "running" => Ok(Target::Running),
            "suspended" => Ok(Target::Suspended),
            "terminated" => Ok(Target::Terminated),
            other => Err(self.input_error(format!("unknown desired state {other:?}"))),
        }
    }

    /// The plan's resources the server should have now. None only when the extension gives
    /// none (suspended or terminated before anything was applied).
    pub fn resources(&self) -> Result<Option<Resources>> {
        let Some(value) = &self.resources else { return Ok(None) };
        Resources::from_json(value).map(Some).map_err(|e| self.input_error(format!("resources: {e}")))
    }

    /// What the cluster was last sized for, when it reads; a stored value this worker cannot
    /// read only means no ordered plan change (the render is still complete).
    pub fn applied(&self) -> Option<Resources> {
        self.applied_resources.as_ref().and_then(|v| Resources::from_json(v).ok())
    }

    pub fn server_secrets(&self) -> Result<ServerSecrets> {
        let Some(value) = &self.secrets.0 else { return Err(self.input_error("the server has no secrets")) };
        // Never quote the value: only which key is wrong.
        let field = |key: &str| {
            value[key]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| self.input_error(format!("secrets.{key} is missing or not a string")))
        };
        Ok(ServerSecrets {
            signing_key: field("signing_key")?,
            registration_shared_secret: field("registration_shared_secret")?,
            macaroon_secret_key: field("macaroon_secret_key")?,
        })
    }

    /// The rendering input for `desired`, with what the cluster has (`observed`). Fails on
    /// input the renderer cannot take (no resources, unreadable resources, no secrets).
    pub fn spec(&self, desired: Desired, observed: Observed) -> Result<ServerSpec> {
        let resources = self.resources()?.ok_or_else(|| self.input_error("the server has no resources"))?;
        Ok(ServerSpec {
            customer: self.customer_id,
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            domains: self.domains.clone(),
            resources,
            desired,
            secrets: self.server_secrets()?,
            observed,
        })
    }
}

/// Lease up to `max` due servers to `holder` (`entitlements.provision_claim`).
pub async fn claim(
    pool: &PgPool,
    holder: &str,
    lease: Duration,
    max: usize,
    include_converged: bool,
    resync_after: Option<Uuid>,
) -> Result<Vec<Claimed>> {
    let rows: Vec<Row> = sqlx::query_as(concat!(
        "select ",
        columns!(),
        " from entitlements.provision_claim($1, make_interval(secs => $2), $3, $4, $5)"
    ))
    .bind(holder)
    .bind(lease.as_secs_f64())
    .bind(i32::try_from(max).unwrap_or(i32::MAX))
    .bind(include_converged)
    .bind(resync_after)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Claimed::from).collect())
}

impl Claimed {
    /// Resting (ready or suspended) when claimed: a resync visits these in id order.
    pub fn resting(&self) -> bool {
        matches!(self.phase.as_str(), "ready" | "suspended")
    }
}

/// A customer's servers that are not terminated, without leasing (`provision --dry-run`).
pub async fn server_specs(pool: &PgPool, customer: Uuid) -> Result<Vec<Claimed>> {
    let rows: Vec<Row> = sqlx::query_as(concat!("select ", columns!(), " from entitlements.server_specs($1)"))
        .bind(customer)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(Claimed::from).collect())
}

/// The outcome of an attempt that did not fail.
#[derive(Debug, Clone)]
pub struct Report {
    pub phase: Phase,
    pub conditions: Vec<Condition>,
    /// The resources the cluster now has; None keeps the stored value.
    pub applied_resources: Option<serde_json::Value>,
    /// Look again after this long (still converging); None: when the extension says.
    pub requeue_after: Option<Duration>,
}

/// Record `report` (`entitlements.provision_report`); false when `holder` lost the lease
/// (nothing was recorded).
pub async fn report(pool: &PgPool, server: &Claimed, holder: &str, report: &Report) -> Result<bool> {
    let conditions = serde_json::to_value(&report.conditions).unwrap_or_else(|_| serde_json::json!([]));
    let recorded: Option<bool> =
        sqlx::query_scalar("select entitlements.provision_report($1, $2, $3, $4, $5, $6, make_interval(secs => $7))")
            .bind(server.server_id)
            .bind(holder)
            .bind(server.generation)
            .bind(report.phase.as_str())
            .bind(conditions)
            .bind(&report.applied_resources)
            .bind(report.requeue_after.map(|d| d.as_secs_f64()))
            .fetch_one(pool)
            .await?;
    Ok(recorded.unwrap_or(false))
}

/// Record a failed attempt (`entitlements.provision_failed`): retried after the backoff,
/// final (the server is `failed`; an admin's `retry_server` brings it back), or not recorded
/// because the lease ran out. `permanent`: a mistake in the row that retrying cannot mend;
/// the server is failed at once.
pub async fn failed(pool: &PgPool, server: &Claimed, holder: &str, error: &str, permanent: bool) -> Result<Failure> {
    let (outcome, retry_in): (String, Option<f64>) = sqlx::query_as(
        "select f.outcome, extract(epoch from f.next_attempt_at - now())::float8
           from entitlements.provision_failed($1, $2, $3, $4) f",
    )
    .bind(server.server_id)
    .bind(holder)
    .bind(error)
    .bind(permanent)
    .fetch_one(pool)
    .await?;
    Failure::from_row(&outcome, retry_in)
}

/// Whether the server has never been ready (`servers.ready_at` is NULL): only then does its
/// readiness count for time to ready.
pub async fn never_ready(pool: &PgPool, server: &Claimed) -> Result<bool> {
    let ready_at_is_null: Option<bool> =
        sqlx::query_scalar("select ready_at is null from entitlements.servers where id = $1")
            .bind(server.server_id)
            .fetch_optional(pool)
            .await?;
    Ok(ready_at_is_null.unwrap_or(false))
}

/// Queue depth and servers by phase (`entitlements.provision_stats`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub queue_depth: f64,
    pub phases: Vec<(String, f64)>,
}

pub async fn stats(pool: &PgPool) -> Result<Stats> {
    let v: serde_json::Value = sqlx::query_scalar("select entitlements.provision_stats()").fetch_one(pool).await?;
    Ok(parse_stats(&v))
}

fn parse_stats(v: &serde_json::Value) -> Stats {
    let mut phases: Vec<(String, f64)> = v["phases"]
        .as_object()
        .map(|o| o.iter().map(|(k, n)| (k.clone(), n.as_f64().unwrap_or(0.0))).collect())
        .unwrap_or_default();
    // `failed` is also given on its own; a phases object without it still shows it.
    if let Some(n) = v["failed"].as_f64() {
        if !phases.iter().any(|(k, _)| k == "failed") {
            phases.push(("failed".into(), n));
        }
    }
    Stats { queue_depth: v["queue_depth"].as_f64().unwrap_or(0.0), phases }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn claimed(desired: &str) -> Claimed {
        Claimed {
            server_id: Uuid::nil(),
            customer_id: Uuid::from_u128(7),
            name: "alpha".into(),
            namespace: "mx-alpha".into(),
            domains: vec!["alpha.example.org".into()],
            desired: desired.into(),
            resources: Some(json!({"cpu": "2", "memory": "4Gi", "data_storage": "20Gi", "media_storage": "100Gi"})),
            applied_resources: None,
            generation: 3,
            phase: "pending".into(),
            attempts: 0,
            created_at: 0.0,
            secrets: SecretsJson(Some(json!({
                "signing_key": "ed25519 a_test c2VjcmV0",
                "registration_shared_secret": "hunter2-registration",
                "macaroon_secret_key": "hunter2-macaroon",
            }))),
        }
    }

    #[test]
    fn a_row_becomes_a_spec_and_bad_rows_are_input_errors() {
        let c = claimed("running");
        assert_eq!(c.target().unwrap(), Target::Running);
        let spec = c.spec(Desired::Running, Observed::default()).unwrap();
        assert_eq!(spec.resources.cpu.as_str(), "2");
        assert_eq!(spec.secrets.macaroon_secret_key, "hunter2-macaroon");

        let mut bad = claimed("running");
        bad.resources = Some(json!({"cpu": "two"}));
        let err = bad.spec(Desired::Running, Observed::default()).unwrap_err();
        assert!(matches!(err, Error::ProvisionInput { .. }), "{err}");
        assert!(err.to_string().contains("$.resources.cpu"), "{err}");

        let mut bad = claimed("running");
        bad.secrets = SecretsJson(Some(json!({"signing_key": "x"})));
        let err = bad.spec(Desired::Running, Observed::default()).unwrap_err().to_string();
        assert!(err.contains("registration_shared_secret") && !err.contains("\"x\""), "{err}");

        assert!(claimed("exploded").target().is_err());
        let shown = format!("{:?}", claimed("running"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn stats_give_every_phase_and_failed() {
        let s = parse_stats(&json!({"queue_depth": 3, "phases": {"ready": 5, "pending": 1}, "failed": 2}));
        assert_eq!(s.queue_depth, 3.0);
        assert!(s.phases.contains(&("ready".into(), 5.0)));
        assert!(s.phases.contains(&("failed".into(), 2.0)));
    }
}
