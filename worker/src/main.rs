//! `entitlements-worker`: the thin daemon next to the pg_entitlements extension.
use clap::Parser;
use entitlements_worker::{config::Cli, run};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    entitlements_worker::telemetry::init(&cli.log_format);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "entitlements-worker failed");
            std::process::ExitCode::FAILURE
        }
    }
}
