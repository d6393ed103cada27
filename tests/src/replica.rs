//! A streaming hot standby of the test cluster: `scripts/cluster.sh replica` takes a base
//! backup of the cluster at ENTITLEMENTS_TEST_ADMIN_URL (on this machine, as the `postgres`
//! user) and starts it on a free port. Stopped and removed on drop; after a failure its data
//! is kept to look at, until a later run removes it.
//!
//! The base backup copies every database of the cluster, so no other test may drop a database
//! while it runs: cargo runs test binaries one at a time, and tests/read_replica.rs holds one test.
use crate::db::admin_url;
use crate::http::free_port;
use crate::wait::WAIT;
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgConnection, PgPool};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

pub struct Replica {
    dir: PathBuf,
    pub port: u16,
}

fn cluster(args: &[&str]) -> std::process::Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh");
    Command::new(script).args(args).output().expect("run scripts/cluster.sh")
}

const PREFIX: &str = "/tmp/pg_entitlements-replica-";

/// Replicas left by earlier runs whose process is gone.
fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir("/tmp") else { return };
    for e in entries.flatten() {
        let path = e.path();
        let name = path.to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|rest| rest.rsplit('-').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            cluster(&["stop", &name]);
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

impl Replica {
    /// Base backup and start; returns once the standby accepts connections.
    pub fn start(name: &str) -> Replica {
        remove_leftovers();
        let primary = PgConnectOptions::from_str(&admin_url()).expect("admin url").get_port().to_string();
        let dir = PathBuf::from(format!("{PREFIX}{name}-{}", std::process::id()));
        cluster(&["stop", &dir.to_string_lossy()]);
        let _ = std::fs::remove_dir_all(&dir);
        // A free port can be taken between asking and binding: try a few.
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let out = cluster(&["replica", &dir.to_string_lossy(), &port.to_string(), &primary]);
            if out.status.success() {
                return Replica { dir, port };
            }
            last = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        panic!("the replica did not start: {last}");
    }

    /// The same database on the replica.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Wait until the replica has replayed everything the primary had written when this was
    /// called (every commit before it included).
    pub async fn catch_up(&self, primary: &PgPool, replica: &mut PgConnection) {
        let lsn: String = sqlx::query_scalar("select pg_current_wal_lsn()::text").fetch_one(primary).await.unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            let done: bool = sqlx::query_scalar("select pg_last_wal_replay_lsn() >= $1::text::pg_lsn")
                .bind(&lsn)
                .fetch_one(&mut *replica)
                .await
                .unwrap();
            if done {
                return;
            }
            assert!(Instant::now() < deadline, "the replica did not replay {lsn} within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        cluster(&["stop", &self.dir.to_string_lossy()]);
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
