//! `entitlements-worker`: the thin daemon next to the pg_entitlements extension.
use clap::Parser;
use entitlements_worker::config::{Cli, Config};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let config = match Config::from_cli(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("entitlements-worker: {e}");
            return ExitCode::from(2);
        }
    };
    entitlements_worker::telemetry::init(config.log_format);
    match entitlements_worker::run(config, cli.command.take()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "entitlements-worker failed");
            if e.is_configuration() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
