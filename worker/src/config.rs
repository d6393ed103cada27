//! Configuration: flags, each with an environment variable, over an optional TOML file.
//!
//! Precedence: flag / environment > `--config FILE` (or `ENTITLEMENTS_CONFIG`) > defaults.
//! `Cli` is what clap parses (everything optional so the file can fill gaps); `Config` is
//! the resolved result the rest of the worker reads. Secrets are wrapped in `Secret`, whose
//! `Debug` and `Display` never show the value.
use crate::{Error, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "entitlements-worker",
    version,
    about = "Worker daemon for the pg_entitlements PostgreSQL extension",
    long_about = "Worker daemon for the pg_entitlements PostgreSQL extension.\n\n\
        Every option can be given as a flag, as the environment variable shown, or as a key of\n\
        the TOML file named by --config / ENTITLEMENTS_CONFIG (flags and environment win over\n\
        the file). Secrets (the password in DATABASE_URL, Stripe keys, the SMTP password, app\n\
        webhook secrets) are never logged.",
    after_long_help = CONFIG_FILE_HELP
)]
pub struct Cli {
    /// TOML configuration file (keys: see the end of --help).
    #[arg(long = "config", env = "ENTITLEMENTS_CONFIG", global = true, value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// PostgreSQL connection string of the database that has the extension installed (required).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,

    /// Address the HTTP server (health, metrics, webhooks) listens on [default: 127.0.0.1:8080].
    #[arg(long, env = "ENTITLEMENTS_LISTEN_ADDR", global = true)]
    pub listen_addr: Option<String>,

    /// Log format: `text` for people, `json` for log pipelines [default: text].
    #[arg(long, env = "ENTITLEMENTS_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,

    /// Most HTTP connections served at once; more wait to be accepted [default: 256].
    #[arg(long, env = "ENTITLEMENTS_MAX_CONNECTIONS", global = true)]
    pub max_connections: Option<usize>,

    /// An HTTP connection that sends nothing for this long is closed, mid-request or idle
    /// between requests [default: 10s].
    #[arg(long, env = "ENTITLEMENTS_READ_TIMEOUT", global = true, value_parser = parse_duration)]
    pub read_timeout: Option<Duration>,

    /// Name recorded in entitlements.task_runs for this worker [default: HOSTNAME:PID].
    #[arg(long, env = "ENTITLEMENTS_WORKER_ID", global = true)]
    pub worker_id: Option<String>,

    /// How long SIGTERM waits for in-flight work before exiting anyway [default: 8s].
    #[arg(long, env = "ENTITLEMENTS_SHUTDOWN_TIMEOUT", global = true, value_parser = parse_duration)]
    pub shutdown_timeout: Option<Duration>,

    /// Run the maintenance scheduler in `serve` (true/false) [default: true].
    #[arg(long, env = "ENTITLEMENTS_SCHEDULER", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub scheduler: Option<bool>,

    /// Task intervals, `task=interval,...` (e.g. `expire_subscriptions=30s,health_snapshot=off`);
    /// merged over the file's [scheduler.tasks].
    #[arg(long, env = "ENTITLEMENTS_SCHEDULE", global = true)]
    pub schedule: Option<String>,

    /// First retry delay after a failed task; doubles per failure [default: 5s].
    #[arg(long, env = "ENTITLEMENTS_RETRY_INITIAL", global = true, value_parser = parse_duration)]
    pub retry_initial: Option<Duration>,

    /// Longest retry delay after repeated failures [default: 5m].
    #[arg(long, env = "ENTITLEMENTS_RETRY_MAX", global = true, value_parser = parse_duration)]
    pub retry_max: Option<Duration>,

    /// Stripe webhook signing secret (`whsec_...`); several, comma-separated, are all accepted
    /// (rolling a secret); enables POST /webhooks/stripe.
    #[arg(long, env = "STRIPE_WEBHOOK_SECRET", hide_env_values = true, global = true)]
    pub stripe_webhook_secret: Option<String>,

    /// Stripe API secret key (`sk_...`); enables fetching objects and the reconcile_stripe task.
    #[arg(long, env = "STRIPE_SECRET_KEY", hide_env_values = true, global = true)]
    pub stripe_secret_key: Option<String>,

    /// Base URL of the Stripe API, for a Stripe-compatible server [default: https://api.stripe.com/].
    #[arg(long, env = "STRIPE_API_BASE", global = true)]
    pub stripe_api_base: Option<String>,

    /// Run the Kubernetes provisioner in `serve` (true/false) [default: false].
    #[arg(long, env = "ENTITLEMENTS_PROVISION", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub provision: Option<bool>,

    /// Kubernetes API URL, used without credentials (a test's fake API server, `kubectl proxy`)
    /// [default: in-cluster service account, else the kubeconfig].
    #[arg(long, env = "ENTITLEMENTS_KUBE_URL", global = true)]
    pub kube_url: Option<String>,

    /// The Synapse image every server runs [default: docker.io/matrixdotorg/synapse:v1.120.2].
    #[arg(long, env = "ENTITLEMENTS_SYNAPSE_IMAGE", global = true)]
    pub synapse_image: Option<String>,

    /// StorageClass of Synapse's data volume and the database volumes [default: ssd].
    #[arg(long, env = "ENTITLEMENTS_DATA_STORAGE_CLASS", global = true)]
    pub data_storage_class: Option<String>,

    /// StorageClass of the media store [default: standard].
    #[arg(long, env = "ENTITLEMENTS_MEDIA_STORAGE_CLASS", global = true)]
    pub media_storage_class: Option<String>,

    /// IngressClass of every server's Ingress [default: nginx].
    #[arg(long, env = "ENTITLEMENTS_INGRESS_CLASS", global = true)]
    pub ingress_class: Option<String>,

    /// cert-manager ClusterIssuer of the servers' certificates [default: letsencrypt].
    #[arg(long, env = "ENTITLEMENTS_CLUSTER_ISSUER", global = true)]
    pub cluster_issuer: Option<String>,

    /// How often converged servers are checked against the cluster [default: 5m].
    #[arg(long, env = "ENTITLEMENTS_PROVISION_RESYNC", global = true, value_parser = parse_duration)]
    pub provision_resync: Option<Duration>,

    /// How long a claimed server is this worker's alone [default: 2m].
    #[arg(long, env = "ENTITLEMENTS_PROVISION_LEASE", global = true, value_parser = parse_duration)]
    pub provision_lease: Option<Duration>,

    /// Servers worked on at once [default: 4].
    #[arg(long, env = "ENTITLEMENTS_PROVISION_CONCURRENCY", global = true)]
    pub provision_concurrency: Option<usize>,

    /// When a server is still converging (not ready yet, namespace still terminating), look
    /// again after this long [default: 2s].
    #[arg(long, env = "ENTITLEMENTS_PROVISION_REQUEUE", global = true, value_parser = parse_duration)]
    pub provision_requeue: Option<Duration>,

    /// A namespace still terminating after this long is reported (NamespaceStuckTerminating)
    /// [default: 10m].
    #[arg(long, env = "ENTITLEMENTS_NAMESPACE_STUCK_AFTER", global = true, value_parser = parse_duration)]
    pub namespace_stuck_after: Option<Duration>,

    /// Deliver outbox events (app webhooks, and email with an SMTP server) in `serve`
    /// (true/false) [default: true].
    #[arg(long, env = "ENTITLEMENTS_DELIVERY", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub delivery: Option<bool>,

    /// SMTP server of the email channel: `smtp://host:25` (plain), `smtp://host:587?tls=required`
    /// (STARTTLS), `smtps://user:pass@host:465` (TLS); unset: no email is sent.
    #[arg(long, env = "ENTITLEMENTS_SMTP_URL", hide_env_values = true, global = true)]
    pub smtp_url: Option<String>,

    /// Sender of every email, `Name <address>` or `address` (required with ENTITLEMENTS_SMTP_URL).
    #[arg(long, env = "ENTITLEMENTS_EMAIL_FROM", global = true)]
    pub email_from: Option<String>,

    /// Deliveries sent at once [default: 8].
    #[arg(long, env = "ENTITLEMENTS_DELIVERY_CONCURRENCY", global = true)]
    pub delivery_concurrency: Option<usize>,

    /// How long a claimed delivery is this worker's alone; after a crash it is sent again (with
    /// the same message id) once this runs out [default: 1m, at least 10s].
    #[arg(long, env = "ENTITLEMENTS_DELIVERY_LEASE", global = true, value_parser = parse_duration)]
    pub delivery_lease: Option<Duration>,

    /// An app webhook that has not answered after this long has failed [default: 10s].
    #[arg(long, env = "ENTITLEMENTS_WEBHOOK_TIMEOUT", global = true, value_parser = parse_duration)]
    pub webhook_timeout: Option<Duration>,

    /// Serve the admin console (/admin) and account page (/account) in `serve` (true/false)
    /// [default: true].
    #[arg(long, env = "ENTITLEMENTS_CONSOLE", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub console: Option<bool>,

    /// Key that signs console session cookies and CSRF tokens (at least 32 characters; the
    /// same on every replica) [default: a random key per process: sessions end at restart].
    #[arg(long, env = "ENTITLEMENTS_CONSOLE_SECRET", hide_env_values = true, global = true)]
    pub console_secret: Option<String>,

    /// Database role the console's reads and actions run as, with the signed-in user's claims
    /// (the worker's role must be a member) [default: authenticated].
    #[arg(long, env = "ENTITLEMENTS_CONSOLE_ROLE", global = true)]
    pub console_role: Option<String>,

    /// Address people reach the worker at (`https://...`: session cookies are Secure); Stripe
    /// Checkout and Billing Portal come back to it [default: http://LISTEN_ADDR].
    #[arg(long, env = "ENTITLEMENTS_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,

    /// Supabase JWT secret (HS256) that access tokens are signed with.
    #[arg(long, env = "SUPABASE_JWT_SECRET", hide_env_values = true, global = true)]
    pub supabase_jwt_secret: Option<String>,

    /// Supabase JWKS address (asymmetric signing keys: RS256, ES256), e.g.
    /// https://PROJECT.supabase.co/auth/v1/.well-known/jwks.json.
    #[arg(long, env = "SUPABASE_JWKS_URL", global = true)]
    pub supabase_jwks_url: Option<String>,

    /// Longest console session [default: 8h; never past the token or access token it came from].
    #[arg(long, env = "ENTITLEMENTS_CONSOLE_SESSION", global = true, value_parser = parse_duration)]
    pub console_session: Option<Duration>,

    /// Sign-in attempts one client address may make per minute [default: 10].
    #[arg(long, env = "ENTITLEMENTS_SIGN_IN_PER_MINUTE", global = true)]
    pub sign_in_per_minute: Option<u32>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

pub(crate) const CONFIG_FILE_HELP: &str = "\
Configuration file (TOML), every key optional:
  database_url = \"postgres://user:pass@host/db\"
  listen_addr = \"127.0.0.1:8080\"
  log_format = \"text\"            # or \"json\"
  max_connections = 256
  read_timeout = \"10s\"
  worker_id = \"worker-a\"
  shutdown_timeout = \"8s\"
  [scheduler]
  enabled = true
  retry_initial = \"5s\"
  retry_max = \"5m\"
  [scheduler.tasks]               # interval per task; \"off\" or 0 disables. Every task of
                                  # entitlements.tasks() runs, by default at the interval it
                                  # names there (select * from entitlements.tasks())
  expire_subscriptions = \"1m\"
  reconcile_stripe = \"1h\"        # the worker's own (default 1h); only with a Stripe secret key
  [stripe]
  webhook_secret = \"whsec_...\"
  secret_key = \"sk_...\"
  api_base = \"https://api.stripe.com/\"
  [provision]
  enabled = false                 # run the Kubernetes provisioner in `serve`
  kube_url = \"http://127.0.0.1:8001\"  # no credentials; unset: in-cluster, else kubeconfig
  image = \"docker.io/matrixdotorg/synapse:v1.120.2\"
  data_storage_class = \"ssd\"
  media_storage_class = \"standard\"
  ingress_class = \"nginx\"
  cluster_issuer = \"letsencrypt\"
  resync_interval = \"5m\"
  lease = \"2m\"
  concurrency = 4
  requeue_after = \"2s\"
  stuck_terminating_after = \"10m\"
  [provision.ingress_controller_namespace]   # labels of the ingress controller's namespace
  \"kubernetes.io/metadata.name\" = \"ingress-nginx\"
  [provision.database_operator_namespace]    # labels of CloudNativePG's namespace
  \"kubernetes.io/metadata.name\" = \"cnpg-system\"
  [delivery]                      # outbox events: app webhooks, and email
  enabled = true                  # deliver in `serve`
  smtp_url = \"smtp://127.0.0.1:25\" # unset: no email; smtps://user:pass@host:465,
                                  # smtp://host:587?tls=required
  email_from = \"Example <billing@example.org>\"
  concurrency = 8
  lease = \"1m\"
  webhook_timeout = \"10s\"
  [console]                       # /admin and /account
  enabled = true
  secret = \"...\"                 # signs sessions; the same on every replica
  role = \"authenticated\"         # what pages run as, with the user's claims
  public_url = \"https://billing.example.org\"
  supabase_jwt_secret = \"...\"    # HS256 access tokens
  supabase_jwks_url = \"https://PROJECT.supabase.co/auth/v1/.well-known/jwks.json\"
  session = \"8h\"
  sign_in_per_minute = 10
Durations: a number of seconds, or a number with ms, s, m or h.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default): HTTP (/healthz, /metrics) and the task scheduler.
    Serve,
    /// Apply a catalog document (JSON) through entitlements.apply_catalog and print what changed.
    ApplyCatalog {
        /// Path of the catalog JSON file.
        file: PathBuf,
    },
    /// Run one maintenance task now (entitlements.run_task), print its run record as JSON;
    /// exits non-zero when the task failed.
    RunTask {
        /// A task of `entitlements.tasks()`, or reconcile_stripe (with STRIPE_SECRET_KEY).
        name: String,
    },
    /// List every subscription through the Stripe API (STRIPE_SECRET_KEY, STRIPE_API_BASE) and
    /// apply each, repairing drift; prints what changed as JSON.
    ReconcileStripe,
    /// Connect, check the extension is installed and the schedule names only tasks it knows,
    /// and exit.
    Check,
    /// One provisioning pass: every server that is due, and a resync of the converged ones;
    /// exits non-zero when any server failed. With --dry-run --customer UUID: print the
    /// objects that customer's servers would get now, as multi-document YAML, without
    /// contacting Kubernetes.
    Provision {
        /// Print instead of applying (needs --customer); Kubernetes is not contacted.
        #[arg(long, requires = "customer")]
        dry_run: bool,
        /// The customer whose servers --dry-run prints.
        #[arg(long, requires = "dry_run", value_name = "UUID")]
        customer: Option<uuid::Uuid>,
    },
    /// One delivery pass: send every outbox delivery that is due (app webhooks, and email when
    /// ENTITLEMENTS_SMTP_URL is set), print what happened as JSON; exits non-zero when any
    /// delivery failed.
    Deliver,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A value that must never reach a log line or an error message.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: Secret,
    pub listen_addr: String,
    pub log_format: LogFormat,
    pub worker_id: String,
    pub shutdown_timeout: Duration,
    pub http: HttpLimits,
    pub scheduler: SchedulerConfig,
    pub stripe: StripeConfig,
    pub provision: ProvisionConfig,
    pub delivery: DeliveryConfig,
    pub console: ConsoleConfig,
}

/// The admin console and account page (console/).
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub enabled: bool,
    /// Signs session cookies and CSRF tokens.
    pub secret: Secret,
    /// True when no secret was configured and one was drawn for this process.
    pub secret_generated: bool,
    /// The role pages run as (SET LOCAL ROLE), a plain identifier.
    pub role: String,
    /// Where people reach the worker, without a trailing slash.
    pub public_url: String,
    pub jwt_secret: Option<Secret>,
    pub jwks_url: Option<String>,
    pub session: Duration,
    pub sign_in_per_minute: u32,
}

impl ConsoleConfig {
    /// Session cookies get `Secure` when people reach the worker over TLS.
    pub fn secure_cookies(&self) -> bool {
        self.public_url.starts_with("https://")
    }
}

/// What one client may hold of the HTTP listener (listener.rs).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub read_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub enabled: bool,
    /// Intervals set in the file or ENTITLEMENTS_SCHEDULE (None: "off"). The names are only
    /// known to be tasks once connected: `scheduler::schedule` checks them against the
    /// extension's and fills in the defaults.
    pub intervals: BTreeMap<String, Option<Duration>>,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct StripeConfig {
    pub webhook_secret: Option<Secret>,
    pub secret_key: Option<Secret>,
    pub api_base: Option<String>,
}

/// Kubernetes provisioning (provision/).
#[derive(Debug, Clone)]
pub struct ProvisionConfig {
    /// Whether `serve` runs the provisioner (`provision` runs a pass regardless).
    pub enabled: bool,
    /// An API server to use without credentials; None: in-cluster, else the kubeconfig.
    pub kube_url: Option<String>,
    /// What every server shares: image, storage classes, ingress class, issuer.
    pub platform: crate::provision::render::Platform,
    pub resync_interval: Duration,
    pub lease: Duration,
    pub concurrency: usize,
    pub requeue_after: Duration,
    pub stuck_terminating_after: Duration,
}

/// Delivery of outbox events (notify/).
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Whether `serve` delivers (`deliver` runs a pass regardless).
    pub enabled: bool,
    /// The email channel: None, no email is claimed. May hold a password.
    pub smtp_url: Option<Secret>,
    /// The sender, checked to be a mailbox; set whenever `smtp_url` is.
    pub email_from: Option<String>,
    pub concurrency: usize,
    pub lease: Duration,
    pub webhook_timeout: Duration,
}

/// The Stripe reconcile, the one task the worker runs itself (every other task is the
/// extension's, named by `entitlements.tasks()`); scheduled only with a Stripe secret key.
pub const RECONCILE_STRIPE: &str = "reconcile_stripe";

// The TOML file, as written. Unknown keys are refused so that a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database_url: Option<String>,
    listen_addr: Option<String>,
    log_format: Option<LogFormat>,
    worker_id: Option<String>,
    shutdown_timeout: Option<FileDuration>,
    max_connections: Option<usize>,
    read_timeout: Option<FileDuration>,
    #[serde(default)]
    scheduler: FileScheduler,
    #[serde(default)]
    stripe: FileStripe,
    #[serde(default)]
    provision: FileProvision,
    #[serde(default)]
    delivery: FileDelivery,
    #[serde(default)]
    console: FileConsole,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConsole {
    enabled: Option<bool>,
    secret: Option<String>,
    role: Option<String>,
    public_url: Option<String>,
    supabase_jwt_secret: Option<String>,
    supabase_jwks_url: Option<String>,
    session: Option<FileDuration>,
    sign_in_per_minute: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDelivery {
    enabled: Option<bool>,
    smtp_url: Option<String>,
    email_from: Option<String>,
    concurrency: Option<usize>,
    lease: Option<FileDuration>,
    webhook_timeout: Option<FileDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProvision {
    enabled: Option<bool>,
    kube_url: Option<String>,
    image: Option<String>,
    data_storage_class: Option<String>,
    media_storage_class: Option<String>,
    ingress_class: Option<String>,
    cluster_issuer: Option<String>,
    resync_interval: Option<FileDuration>,
    lease: Option<FileDuration>,
    concurrency: Option<usize>,
    requeue_after: Option<FileDuration>,
    stuck_terminating_after: Option<FileDuration>,
    ingress_controller_namespace: Option<BTreeMap<String, String>>,
    database_operator_namespace: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileScheduler {
    enabled: Option<bool>,
    retry_initial: Option<FileDuration>,
    retry_max: Option<FileDuration>,
    #[serde(default)]
    tasks: BTreeMap<String, FileDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStripe {
    webhook_secret: Option<String>,
    secret_key: Option<String>,
    api_base: Option<String>,
}

/// `30` (seconds) or `"30s"`, `"500ms"`, `"5m"`, `"1h"`, `"off"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileDuration {
    Seconds(u64),
    Text(String),
}

impl FileDuration {
    fn resolve(&self, key: &str) -> Result<Option<Duration>> {
        match self {
            FileDuration::Seconds(0) => Ok(None),
            FileDuration::Seconds(s) => Ok(Some(Duration::from_secs(*s))),
            FileDuration::Text(t) => parse_interval(t).map_err(|e| Error::Config(format!("{key}: {e}"))),
        }
    }
}

/// A duration; "off" and 0 mean disabled (None).
fn parse_interval(text: &str) -> std::result::Result<Option<Duration>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let d = parse_duration(t)?;
    Ok(if d.is_zero() { None } else { Some(d) })
}

pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {text:?} (try 30s, 500ms, 5m, 1h)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit in {text:?} (ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("not a duration: {text:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl Config {
    /// Resolve flags and environment (already in `cli`) over the file over the defaults.
    pub fn from_cli(cli: &Cli) -> Result<Config> {
        let file = match &cli.config_file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let database_url = cli.database_url.clone().or(file.database_url).ok_or_else(|| {
            Error::Config(
                "DATABASE_URL is not set (flag --database-url, environment, or database_url in the file)".into(),
            )
        })?;
        let shutdown_timeout = match (&cli.shutdown_timeout, &file.shutdown_timeout) {
            (Some(d), _) => *d,
            (None, Some(f)) => f.resolve("shutdown_timeout")?.unwrap_or_default(),
            (None, None) => Duration::from_secs(8),
        };

        let mut intervals = BTreeMap::new();
        for (name, interval) in &file.scheduler.tasks {
            intervals.insert(name.clone(), interval.resolve(&format!("scheduler.tasks.{name}"))?);
        }
        if let Some(spec) = &cli.schedule {
            for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (name, interval) = item.split_once('=').ok_or_else(|| {
                    Error::Config(format!("ENTITLEMENTS_SCHEDULE: expected task=interval, got {item:?}"))
                })?;
                let interval =
                    parse_interval(interval).map_err(|e| Error::Config(format!("ENTITLEMENTS_SCHEDULE: {e}")))?;
                intervals.insert(name.trim().to_owned(), interval);
            }
        }
        let stripe = StripeConfig {
            webhook_secret: cli.stripe_webhook_secret.clone().or(file.stripe.webhook_secret).map(Secret::new),
            secret_key: cli.stripe_secret_key.clone().or(file.stripe.secret_key).map(Secret::new),
            api_base: cli.stripe_api_base.clone().or(file.stripe.api_base),
        };
        let retry_initial = match (cli.retry_initial, &file.scheduler.retry_initial) {
            (Some(d), _) => d,
            (None, Some(f)) => f.resolve("scheduler.retry_initial")?.unwrap_or(Duration::from_secs(5)),
            (None, None) => Duration::from_secs(5),
        };
        let retry_max = match (cli.retry_max, &file.scheduler.retry_max) {
            (Some(d), _) => d,
            (None, Some(f)) => f.resolve("scheduler.retry_max")?.unwrap_or(Duration::from_secs(300)),
            (None, None) => Duration::from_secs(300),
        };
        let max_connections = cli.max_connections.or(file.max_connections).unwrap_or(256);
        if max_connections == 0 {
            return Err(Error::Config("max_connections must be at least 1".into()));
        }
        let read_timeout = match (cli.read_timeout, &file.read_timeout) {
            (Some(d), _) => d,
            (None, Some(f)) => f.resolve("read_timeout")?.unwrap_or(Duration::from_secs(10)),
            (None, None) => Duration::from_secs(10),
        };
        if read_timeout.is_zero() {
            return Err(Error::Config("read_timeout must be more than 0".into()));
        }
        let provision = provision_config(cli, file.provision)?;
        let delivery = delivery_config(cli, file.delivery)?;
        let listen_addr = cli.listen_addr.clone().or(file.listen_addr).unwrap_or_else(|| "127.0.0.1:8080".into());
        let console = console_config(cli, file.console, &listen_addr)?;
        Ok(Config {
            database_url: Secret::new(database_url),
            listen_addr,
            log_format: cli.log_format.or(file.log_format).unwrap_or(LogFormat::Text),
            worker_id: cli.worker_id.clone().or(file.worker_id).unwrap_or_else(default_worker_id),
            shutdown_timeout,
            http: HttpLimits { max_connections, read_timeout },
            scheduler: SchedulerConfig {
                enabled: cli.scheduler.or(file.scheduler.enabled).unwrap_or(true),
                intervals,
                retry_initial,
                retry_max: retry_max.max(retry_initial),
            },
            stripe,
            provision,
            delivery,
            console,
        })
    }
}

/// A duration from the flag, else the file, else `default`; zero (or "off") is refused where
/// the worker needs a positive one.
fn duration(flag: Option<Duration>, file: Option<&FileDuration>, key: &str, default: Duration) -> Result<Duration> {
    let d = match (flag, file) {
        (Some(d), _) => d,
        (None, Some(f)) => f.resolve(key)?.unwrap_or_default(),
        (None, None) => default,
    };
    if d.is_zero() {
        return Err(Error::Config(format!("{key} must be more than 0")));
    }
    Ok(d)
}

fn provision_config(cli: &Cli, file: FileProvision) -> Result<ProvisionConfig> {
    let defaults = crate::provision::render::Platform::default();
    let platform = crate::provision::render::Platform {
        image: cli.synapse_image.clone().or(file.image).unwrap_or(defaults.image),
        data_storage_class: cli
            .data_storage_class
            .clone()
            .or(file.data_storage_class)
            .unwrap_or(defaults.data_storage_class),
        media_storage_class: cli
            .media_storage_class
            .clone()
            .or(file.media_storage_class)
            .unwrap_or(defaults.media_storage_class),
        ingress_class: cli.ingress_class.clone().or(file.ingress_class).unwrap_or(defaults.ingress_class),
        cluster_issuer: cli.cluster_issuer.clone().or(file.cluster_issuer).unwrap_or(defaults.cluster_issuer),
        ingress_controller_namespace: file
            .ingress_controller_namespace
            .unwrap_or(defaults.ingress_controller_namespace),
        database_operator_namespace: file.database_operator_namespace.unwrap_or(defaults.database_operator_namespace),
    };
    let concurrency = cli.provision_concurrency.or(file.concurrency).unwrap_or(4);
    if concurrency == 0 {
        return Err(Error::Config("provision concurrency must be at least 1".into()));
    }
    let lease = duration(cli.provision_lease, file.lease.as_ref(), "provision.lease", Duration::from_secs(120))?;
    if lease < Duration::from_secs(10) {
        // A server's pass is a few dozen API calls: a shorter lease would be lost mid-pass.
        return Err(Error::Config("provision.lease must be at least 10s".into()));
    }
    Ok(ProvisionConfig {
        enabled: cli.provision.or(file.enabled).unwrap_or(false),
        kube_url: cli.kube_url.clone().or(file.kube_url).filter(|u| !u.trim().is_empty()),
        platform,
        resync_interval: duration(
            cli.provision_resync,
            file.resync_interval.as_ref(),
            "provision.resync_interval",
            Duration::from_secs(300),
        )?,
        lease,
        concurrency,
        requeue_after: duration(
            cli.provision_requeue,
            file.requeue_after.as_ref(),
            "provision.requeue_after",
            Duration::from_secs(2),
        )?,
        stuck_terminating_after: duration(
            cli.namespace_stuck_after,
            file.stuck_terminating_after.as_ref(),
            "provision.stuck_terminating_after",
            Duration::from_secs(600),
        )?,
    })
}

fn delivery_config(cli: &Cli, file: FileDelivery) -> Result<DeliveryConfig> {
    let concurrency = cli.delivery_concurrency.or(file.concurrency).unwrap_or(8);
    if concurrency == 0 {
        return Err(Error::Config("delivery concurrency must be at least 1".into()));
    }
    let lease = duration(cli.delivery_lease, file.lease.as_ref(), "delivery.lease", Duration::from_secs(60))?;
    if lease < Duration::from_secs(10) {
        // A delivery is one HTTP request or one SMTP dialogue, and must be reported before the
        // lease runs out (or it is sent again).
        return Err(Error::Config("delivery.lease must be at least 10s".into()));
    }
    let webhook_timeout = duration(
        cli.webhook_timeout,
        file.webhook_timeout.as_ref(),
        "delivery.webhook_timeout",
        Duration::from_secs(10),
    )?;
    let smtp_url = cli.smtp_url.clone().or(file.smtp_url).filter(|u| !u.trim().is_empty()).map(Secret::new);
    let email_from = cli.email_from.clone().or(file.email_from).filter(|f| !f.trim().is_empty());
    if let Some(url) = &smtp_url {
        let Some(from) = &email_from else {
            return Err(Error::Config("ENTITLEMENTS_SMTP_URL needs ENTITLEMENTS_EMAIL_FROM (the sender)".into()));
        };
        // Both are checked now, so a mistake stops the worker at start, not at the first email.
        crate::notify::email::Mailer::new(url, from)?;
    }
    Ok(DeliveryConfig {
        enabled: cli.delivery.or(file.enabled).unwrap_or(true),
        smtp_url,
        email_from,
        concurrency,
        lease,
        webhook_timeout,
    })
}

fn console_config(cli: &Cli, file: FileConsole, listen_addr: &str) -> Result<ConsoleConfig> {
    let (secret, secret_generated) = match cli.console_secret.clone().or(file.secret).filter(|s| !s.is_empty()) {
        Some(s) if s.len() < 32 => {
            return Err(Error::Config("ENTITLEMENTS_CONSOLE_SECRET must be at least 32 characters".into()))
        }
        Some(s) => (s, false),
        // 244 random bits from the operating system (uuid v4 draws from getrandom).
        None => (format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple()), true),
    };
    let role = cli.console_role.clone().or(file.role).unwrap_or_else(|| "authenticated".into());
    // It is put in a SET ROLE by name: a plain identifier only.
    if role.is_empty()
        || role.len() > 63
        || !role.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        || role.as_bytes()[0].is_ascii_digit()
    {
        return Err(Error::Config(format!(
            "ENTITLEMENTS_CONSOLE_ROLE must be a plain role name (a-z, 0-9, _), not {role:?}"
        )));
    }
    let public_url = cli
        .public_url
        .clone()
        .or(file.public_url)
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| format!("http://{listen_addr}"));
    if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
        return Err(Error::Config(format!(
            "ENTITLEMENTS_PUBLIC_URL must start with http:// or https://, not {public_url:?}"
        )));
    }
    let session =
        duration(cli.console_session, file.session.as_ref(), "console.session", Duration::from_secs(8 * 3600))?;
    let sign_in_per_minute = cli.sign_in_per_minute.or(file.sign_in_per_minute).unwrap_or(10);
    if sign_in_per_minute == 0 {
        return Err(Error::Config("sign_in_per_minute must be at least 1".into()));
    }
    Ok(ConsoleConfig {
        enabled: cli.console.or(file.enabled).unwrap_or(true),
        secret: Secret::new(secret),
        secret_generated,
        role,
        public_url: public_url.trim_end_matches('/').to_owned(),
        jwt_secret: cli
            .supabase_jwt_secret
            .clone()
            .or(file.supabase_jwt_secret)
            .filter(|s| !s.is_empty())
            .map(Secret::new),
        jwks_url: cli.supabase_jwks_url.clone().or(file.supabase_jwks_url).filter(|s| !s.is_empty()),
        session,
        sign_in_per_minute,
    })
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: shown.clone(), source })?;
    // toml's message quotes the offending line, which may hold a secret: report only the
    // position and the reason.
    toml::from_str(&text).map_err(|e| {
        let at = e.span().map(|s| format!(" at byte {}", s.start)).unwrap_or_default();
        Error::Config(format!("{shown}{at}: {}", e.message()))
    })
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_owned()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}:{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("entitlements-worker").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn provisioning_from_flags_over_the_file_with_defaults() {
        let dir = std::env::temp_dir().join(format!("ew-provision-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("worker.toml");
        std::fs::write(
            &file,
            "database_url = \"x\"\n[provision]\nenabled = true\nimage = \"synapse:file\"\nlease = \"1m\"\n\
             concurrency = 2\n[provision.ingress_controller_namespace]\nteam = \"edge\"\n",
        )
        .unwrap();
        let c = Config::from_cli(&cli(&[
            "--config",
            file.to_str().unwrap(),
            "--synapse-image",
            "synapse:flag",
            "--provision-requeue",
            "500ms",
        ]))
        .unwrap();
        let p = &c.provision;
        if std::env::var_os("ENTITLEMENTS_PROVISION").is_none() {
            assert!(p.enabled);
        }
        if std::env::var_os("ENTITLEMENTS_PROVISION_LEASE").is_none() {
            assert_eq!(p.lease, Duration::from_secs(60));
        }
        assert_eq!(p.platform.image, "synapse:flag", "the flag wins");
        assert_eq!(p.requeue_after, Duration::from_millis(500));
        assert_eq!(p.platform.ingress_controller_namespace.get("team").map(String::as_str), Some("edge"));
        if std::env::var_os("ENTITLEMENTS_DATA_STORAGE_CLASS").is_none() {
            assert_eq!(p.platform.data_storage_class, "ssd", "a default");
        }
        if std::env::var_os("ENTITLEMENTS_KUBE_URL").is_none() {
            assert_eq!(p.kube_url, None);
        }

        std::fs::write(&file, "database_url = \"x\"\n[provision]\nconcurrency = 0\n").unwrap();
        assert!(Config::from_cli(&cli(&["--config", file.to_str().unwrap()])).is_err());
        std::fs::write(&file, "database_url = \"x\"\n[provision]\nresync = \"1m\"\n").unwrap();
        assert!(Config::from_cli(&cli(&["--config", file.to_str().unwrap()])).is_err(), "unknown key");
        let _ = std::fs::remove_dir_all(&dir);

        // --dry-run needs a customer, and a customer only goes with --dry-run.
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("entitlements-worker").chain(args.iter().copied())).map(|c| c.command)
        };
        assert!(parse(&["provision", "--dry-run"]).is_err());
        assert!(parse(&["provision", "--customer", "00000000-0000-0000-0000-000000000007"]).is_err());
        assert!(matches!(
            parse(&["provision", "--dry-run", "--customer", "00000000-0000-0000-0000-000000000007"]),
            Ok(Some(Command::Provision { dry_run: true, customer: Some(_) }))
        ));
        assert!(matches!(parse(&["provision"]), Ok(Some(Command::Provision { dry_run: false, customer: None }))));
    }

    #[test]
    fn delivery_from_flags_over_the_file_with_defaults_and_the_smtp_password_hidden() {
        let dir = std::env::temp_dir().join(format!("ew-delivery-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("worker.toml");
        std::fs::write(
            &file,
            "database_url = \"x\"\n[delivery]\nsmtp_url = \"smtps://mailer:hunter2@mail.example.org:465\"\n\
             email_from = \"Billing <billing@example.org>\"\nconcurrency = 3\nlease = \"30s\"\n",
        )
        .unwrap();
        let c = Config::from_cli(&cli(&["--config", file.to_str().unwrap(), "--webhook-timeout", "2s"])).unwrap();
        let d = &c.delivery;
        let unset = |var: &str| std::env::var_os(var).is_none();
        if unset("ENTITLEMENTS_DELIVERY") {
            assert!(d.enabled, "on by default");
        }
        if unset("ENTITLEMENTS_DELIVERY_CONCURRENCY") {
            assert_eq!(d.concurrency, 3);
        }
        if unset("ENTITLEMENTS_DELIVERY_LEASE") {
            assert_eq!(d.lease, Duration::from_secs(30));
        }
        assert_eq!(d.webhook_timeout, Duration::from_secs(2), "the flag");
        if unset("ENTITLEMENTS_SMTP_URL") && unset("ENTITLEMENTS_EMAIL_FROM") {
            assert_eq!(d.smtp_url.as_ref().map(Secret::expose), Some("smtps://mailer:hunter2@mail.example.org:465"));
            assert_eq!(d.email_from.as_deref(), Some("Billing <billing@example.org>"));
        }
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");

        if unset("ENTITLEMENTS_DELIVERY_CONCURRENCY")
            && unset("ENTITLEMENTS_DELIVERY_LEASE")
            && unset("ENTITLEMENTS_WEBHOOK_TIMEOUT")
            && unset("ENTITLEMENTS_SMTP_URL")
            && unset("ENTITLEMENTS_EMAIL_FROM")
        {
            std::fs::write(&file, "database_url = \"x\"\n").unwrap();
            let d = Config::from_cli(&cli(&["--config", file.to_str().unwrap()])).unwrap().delivery;
            assert_eq!(
                (d.concurrency, d.lease, d.webhook_timeout),
                (8, Duration::from_secs(60), Duration::from_secs(10))
            );
            assert!(d.smtp_url.is_none() && d.email_from.is_none());

            let refused = |toml: &str| {
                std::fs::write(&file, format!("database_url = \"x\"\n[delivery]\n{toml}\n")).unwrap();
                Config::from_cli(&cli(&["--config", file.to_str().unwrap()])).unwrap_err().to_string()
            };
            refused("lease = \"5s\"");
            refused("concurrency = 0");
            refused("webhook_timeout = \"off\"");
            refused("timeout = \"1s\"");
            let err = refused("smtp_url = \"smtp://u:hunter2@127.0.0.1:2525\"");
            assert!(err.contains("ENTITLEMENTS_EMAIL_FROM") && !err.contains("hunter2"), "{err}");
            let err = refused("smtp_url = \"ftp://u:hunter2@127.0.0.1\"\nemail_from = \"a@example.org\"");
            assert!(err.contains("ENTITLEMENTS_SMTP_URL") && !err.contains("hunter2"), "{err}");
            let err = refused("smtp_url = \"smtp://127.0.0.1:2525\"\nemail_from = \"not an address\"");
            assert!(err.contains("ENTITLEMENTS_EMAIL_FROM"), "{err}");
        }
        let _ = std::fs::remove_dir_all(&dir);

        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("entitlements-worker").chain(args.iter().copied())).map(|c| c.command)
        };
        assert!(matches!(parse(&["deliver"]), Ok(Some(Command::Deliver))));

        let help = <Cli as clap::CommandFactory>::command().render_long_help().to_string();
        for needle in [
            "env: ENTITLEMENTS_DELIVERY=",
            "ENTITLEMENTS_SMTP_URL",
            "ENTITLEMENTS_EMAIL_FROM",
            "ENTITLEMENTS_DELIVERY_CONCURRENCY",
            "ENTITLEMENTS_DELIVERY_LEASE",
            "ENTITLEMENTS_WEBHOOK_TIMEOUT",
            "[delivery]",
            "deliver ",
        ] {
            assert!(help.contains(needle), "--help mentions {needle}:\n{help}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("5 days").is_err());
        assert_eq!(parse_interval("off").unwrap(), None);
    }

    #[test]
    fn flags_win_over_the_file_and_secrets_do_not_print() {
        let dir = std::env::temp_dir().join(format!("ew-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("worker.toml");
        std::fs::write(
            &file,
            "database_url = \"postgres://u:hunter2@db/x\"\nlisten_addr = \"0.0.0.0:9\"\n\
             [scheduler.tasks]\nhealth_snapshot = \"off\"\nexpire_subscriptions = 10\n\
             [stripe]\nsecret_key = \"sk_test_file\"\n",
        )
        .unwrap();
        let c = Config::from_cli(&cli(&[
            "--config",
            file.to_str().unwrap(),
            "--listen-addr",
            "127.0.0.1:1",
            "--schedule",
            "correct_entitlements=2s",
        ]))
        .unwrap();
        assert_eq!(c.listen_addr, "127.0.0.1:1");
        if std::env::var_os("DATABASE_URL").is_none() {
            assert_eq!(c.database_url.expose(), "postgres://u:hunter2@db/x");
        }
        let intervals = &c.scheduler.intervals;
        assert_eq!(intervals.get("expire_subscriptions"), Some(&Some(Duration::from_secs(10))));
        assert_eq!(intervals.get("correct_entitlements"), Some(&Some(Duration::from_secs(2))));
        assert_eq!(intervals.get("health_snapshot"), Some(&None), "off");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("sk_test_file"), "{shown}");

        // Task names are checked once connected (scheduler::schedule), not here.
        std::fs::write(&file, "database_url = \"x\"\n[scheduler.tasks]\nnope = 1\n").unwrap();
        let c = Config::from_cli(&cli(&["--config", file.to_str().unwrap()])).unwrap();
        assert_eq!(c.scheduler.intervals.get("nope"), Some(&Some(Duration::from_secs(1))));
        std::fs::write(&file, "database_url = \"x\"\n[scheduler.tasks]\nnope = \"soon\"\n").unwrap();
        assert!(Config::from_cli(&cli(&["--config", file.to_str().unwrap()])).is_err());
        std::fs::write(&file, "databse_url = \"postgres://u:hunter2@db/x\"\n").unwrap();
        let err = Config::from_cli(&cli(&["--config", file.to_str().unwrap()])).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
