//! The worker moves bytes between the outside world and the extension's SQL functions;
//! it never re-implements an entitlement rule.

pub mod config;
pub mod db;
pub mod error;
pub mod http;
pub mod telemetry;

use config::{Cli, Command};
pub use error::{Error, Result};

pub async fn run(cli: Cli) -> Result<()> {
    let pool = db::connect(&cli.database_url).await?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => http::serve(pool, &cli.listen_addr).await,
        Command::ApplyCatalog { file } => {
            let changes = db::apply_catalog_file(&pool, &file).await?;
            println!("{changes}");
            Ok(())
        }
        Command::Check => {
            let version = db::extension_version(&pool).await?;
            println!("connected; pg_entitlements {version}");
            Ok(())
        }
    }
}
