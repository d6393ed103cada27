//! Configuration: command-line flags, each with an environment variable.
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "entitlements-worker",
    version,
    about = "Worker daemon for the pg_entitlements PostgreSQL extension",
    long_about = "Worker daemon for the pg_entitlements PostgreSQL extension.\n\n\
        Every option can be given as a flag or as the environment variable shown.\n\
        Secrets (database password in DATABASE_URL) are never logged."
)]
pub struct Cli {
    /// PostgreSQL connection string of the database that has the extension installed.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Address the HTTP server (health, metrics, webhooks) listens on.
    #[arg(long, env = "ENTITLEMENTS_LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: String,

    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(long, env = "ENTITLEMENTS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default): HTTP server with /healthz.
    Serve,
    /// Apply a catalog document (JSON) through entitlements.apply_catalog and print what changed.
    ApplyCatalog {
        /// Path of the catalog JSON file.
        file: PathBuf,
    },
    /// Connect, check the extension is installed, and exit.
    Check,
}
