use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// Database errors keep PostgreSQL's SQLSTATE and message; sqlx never includes the password.
    #[error("database: {}", describe_database(.0))]
    Database(#[from] sqlx::Error),
    #[error("the pg_entitlements extension is not installed in this database")]
    ExtensionMissing,
    /// The database has an older extension than this worker calls: update it first.
    #[error(
        "pg_entitlements {installed} is installed; this worker needs {needed} or later: run \
         ALTER EXTENSION pg_entitlements UPDATE"
    )]
    ExtensionOutdated { installed: String, needed: &'static str },
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not valid JSON: {source}")]
    Json { path: String, source: serde_json::Error },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    /// Bad configuration (flags, environment or the TOML file); never quotes a secret.
    #[error("configuration: {0}")]
    Config(String),
    /// A task name that is neither the extension's (`entitlements.tasks()`) nor the
    /// worker's own; `place` says where it was given.
    #[error("unknown task {task:?}{place} (known: {known})")]
    UnknownTask { task: String, place: &'static str, known: String },
    /// The extension answered in a shape this worker does not know (a version mismatch).
    #[error("unexpected answer from the extension: {0}")]
    Unexpected(String),
    #[error("metrics recorder: {0}")]
    Metrics(String),
    /// A maintenance task ran and failed; its run is recorded in entitlements.task_runs.
    #[error("task {task} failed: {message}")]
    TaskFailed { task: String, message: String },
    /// The Stripe API answered with an error (never quotes the key).
    #[error("Stripe API ({status}): {message}")]
    Stripe { status: u16, message: String },
    /// The Stripe API could not be reached (transport error or timeout; no URL query, no key).
    #[error("Stripe API unreachable: {0}")]
    StripeHttp(String),
    /// An answer that is not Stripe's (an error page of a proxy, a wrong STRIPE_API_BASE).
    #[error("Stripe API answer not understood: {0}")]
    StripeAnswer(String),
    /// The Kubernetes API refused a call or could not be reached (status, reason and the API
    /// server's message; never an object's content, so never a server's secret). Retried with
    /// the server's backoff in the database.
    #[error("Kubernetes API: {0}")]
    Kubernetes(String),
    /// No Kubernetes client could be configured (no in-cluster account, no kubeconfig, a bad
    /// ENTITLEMENTS_KUBE_URL).
    #[error("Kubernetes configuration: {0}")]
    KubeConfig(String),
    /// A server's row cannot be provisioned as it is (unparseable resources, an invalid name,
    /// no secrets): recorded on the server through provision_failed, never a panic.
    #[error("server {server}: {message}")]
    ProvisionInput { server: String, message: String },
    /// A provisioning pass in which some servers failed (`entitlements-worker provision`).
    #[error("provisioning: {0}")]
    ProvisionFailed(String),
    /// A delivery pass in which some deliveries failed (`entitlements-worker deliver`); each
    /// failure is recorded with its delivery (entitlements.delivery_failed).
    #[error("delivery: {0}")]
    DeliveryFailed(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Exit code 2 (as for a bad flag): the configuration must change, retrying will not help.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            Error::Config(_) | Error::UnknownTask { .. } | Error::ExtensionOutdated { .. } | Error::KubeConfig(_)
        )
    }
}

impl Error {
    /// A Kubernetes client error in words safe to log and store: for an API answer its code,
    /// reason and message (cut short), for anything else kube's own text (transport errors
    /// name no object content).
    pub fn kube(e: kube::Error) -> Error {
        match e {
            kube::Error::Api(status) => {
                let mut message = status.message.clone();
                if message.len() > 300 {
                    let cut = (0..=300).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
                    message.truncate(cut);
                    message.push('…');
                }
                Error::Kubernetes(format!("{} {}: {message}", status.code, status.reason))
            }
            other => Error::Kubernetes(other.to_string()),
        }
    }
}

/// PostgreSQL's message with its SQLSTATE and hint, so an operator can tell a refused input
/// (22023) from a permission problem (42501).
fn describe_database(e: &sqlx::Error) -> String {
    let Some(db) = e.as_database_error() else { return e.to_string() };
    let mut text = db.message().to_owned();
    if let Some(code) = db.code() {
        text.push_str(&format!(" (SQLSTATE {code})"));
    }
    if let Some(hint) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().and_then(|p| p.hint()) {
        text.push_str(&format!("; hint: {hint}"));
    }
    text
}
