//! A streaming hot standby of the test cluster: `scripts/cluster.sh replica` takes a base
//! backup of the cluster at ENTITLEMENTS_TEST_ADMIN_URL and starts it on a free port. Stopped
//! and removed on drop.
use crate::db::admin_url;
use crate::http::free_port;
use crate::wait::WAIT;
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgConnection, PgPool};
use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

pub struct Replica {
    dir: PathBuf,
    pub port: u16,
}

fn cluster_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh")
}

impl Replica {
    /// Base backup and start; returns once the standby accepts connections.
    pub fn start(name: &str) -> Replica {
        let primary = PgConnectOptions::from_str(&admin_url()).expect("admin url").get_port();
        let port = free_port();
        let dir = PathBuf::from(format!("/tmp/pg_entitlements-replica-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(cluster_script())
            .arg("replica")
            .arg(&dir)
            .arg(port.to_string())
            .arg(primary.to_string())
            .output()
            .expect("run scripts/cluster.sh replica");
        assert!(
            out.status.success(),
            "the replica did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Replica { dir, port }
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
        let _ = Command::new(cluster_script()).arg("stop").arg(&self.dir).status();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
