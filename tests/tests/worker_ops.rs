//! Operating the worker binary against a real database: its commands (`run-task`,
//! `apply-catalog`, `check`), configuration (environment over the TOML file, secrets never
//! shown), /metrics and /healthz over real HTTP, SIGTERM finishing the run in flight, and slow
//! clients.
use integration_tests::*;
use serde_json::json;
use sqlx::{Connection, Executor};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn run_task_prints_the_run_and_fails_on_failure() {
    let db = TestDb::create("ops_run_task").await;
    let out =
        worker_command().env("DATABASE_URL", &db.url).args(["run-task", "health_snapshot"]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the run record is JSON on stdout");
    assert_eq!(run["task"], "health_snapshot");
    assert_eq!(run["outcome"], "ok");
    assert!(run["details"]["subscriptions_by_status"].is_object(), "{run}");
    let recorded: i64 = sqlx::query_scalar("select count(*) from entitlements.task_runs where id = $1")
        .bind(run["id"].as_i64().unwrap())
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 1, "the run is in entitlements.task_runs");

    // An unknown task: refused before anything runs, naming the tasks the extension knows
    // (entitlements.tasks()), with the configuration exit code; nothing recorded.
    let before: i64 =
        sqlx::query_scalar("select count(*) from entitlements.task_runs").fetch_one(&db.pool).await.unwrap();
    let out = worker_command().env("DATABASE_URL", &db.url).args(["run-task", "defragment"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown task \"defragment\"") && err.contains("health_snapshot"), "{err}");
    let after: i64 =
        sqlx::query_scalar("select count(*) from entitlements.task_runs").fetch_one(&db.pool).await.unwrap();
    assert_eq!(before, after);

    // A task that fails: the record (outcome error) is printed and the exit code says so.
    sqlx::raw_sql(
        "select entitlements.grant_feature('00000000-0000-0000-0000-00000000a001', 'advanced_agents',
                                           expires_at => now() + interval '1 day', reason => 'test');
         update entitlements.grants set starts_at = now() - interval '2 days', expires_at = now() - interval '1 day';
         create function public.refuse() returns trigger language plpgsql as
           $$ begin raise exception 'no updates today'; end $$;
         create trigger refuse before update on entitlements.grants
           for each row execute function public.refuse();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let out = worker_command()
        .env("DATABASE_URL", &db.url)
        .args(["run-task", "correct_entitlements"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a failed task is a failure exit");
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["outcome"], "error");
    assert_eq!(run["error"], "no updates today");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no updates today"));
}

#[tokio::test]
async fn help_documents_every_setting() {
    let out = worker_command().arg("--help").output().await.expect("entitlements-worker is installed");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let more = [
        "serve",
        "check",
        "apply-catalog",
        "run-task",
        "reconcile-stripe",
        "[scheduler.tasks]",
        "entitlements.tasks()",
        "reconcile_stripe",
    ];
    for needle in WORKER_SETTINGS.iter().chain(&more) {
        assert!(text.contains(needle), "--help mentions {needle}:\n{text}");
    }
}

#[tokio::test]
async fn apply_catalog_reports_the_changes_and_the_database_refusals() {
    let db = TestDb::create("ops_apply_catalog").await;
    let file = std::env::temp_dir().join(format!("pe-ops-catalog-{}.json", std::process::id()));
    let mut catalog = demo_catalog();
    catalog["plans"][1]["price_cents"] = json!(2900);
    std::fs::write(&file, catalog.to_string()).unwrap();
    let apply = || worker_command().env("DATABASE_URL", &db.url).arg("apply-catalog").arg(&file).output();
    let out = apply().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let changes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(changes["plans"]["updated"], json!(["pro"]));

    // A catalog the extension refuses makes the command fail with the database's message.
    std::fs::write(&file, r#"{"plans": [{"key": "x", "entitlements": {"nope": true}}]}"#).unwrap();
    let out = apply().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown feature"));
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn refuses_a_database_without_the_extension() {
    let out = worker_command().env("DATABASE_URL", admin_url()).arg("check").output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not installed"));
}

#[tokio::test]
async fn environment_wins_over_the_file_and_secrets_stay_secret() {
    let db = TestDb::create("ops_config").await;
    // The test cluster trusts local connections, so any password works: a recognisable one.
    let secret_url = db.url.replacen("postgres://postgres@", "postgres://postgres:pw-SHOULD-NOT-LEAK@", 1);
    assert_ne!(secret_url, db.url, "the test URL has the expected shape: {}", db.url);
    let file_addr = free_addr();
    let env_addr = free_addr();
    let dir = std::env::temp_dir().join(format!("pe-ops-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("worker.toml");
    std::fs::write(
        &file,
        format!(
            "database_url = \"{secret_url}\"\nlisten_addr = \"{file_addr}\"\nworker_id = \"from-file\"\n\
             [scheduler.tasks]\nhealth_snapshot = \"150ms\"\nexpire_subscriptions = \"off\"\ncorrect_entitlements = \"off\"\nprune_task_runs = \"off\"\n\
             usage_partitions = \"off\"\nretention = \"off\"\ntime_events = \"off\"\nsecurity_scan = \"off\"\n\
             [stripe]\nwebhook_secret = \"whsec_FILE-SECRET\"\n"
        ),
    )
    .unwrap();

    let mut cmd = worker_command();
    cmd.arg("serve")
        .env("ENTITLEMENTS_CONFIG", &file)
        .env("RUST_LOG", "debug")
        .env("STRIPE_SECRET_KEY", "sk_test_ENV-SECRET")
        .env("STRIPE_API_BASE", "http://127.0.0.1:9/")
        .env("ENTITLEMENTS_SCHEDULE", "reconcile_stripe=off");
    // ENTITLEMENTS_LISTEN_ADDR (set by Worker::spawn) beats the file's listen_addr.
    let mut w = Worker::spawn(cmd, &env_addr);
    w.ready().await;
    assert!(http_get(&file_addr, "/healthz").await.is_err(), "the file's address is not used");
    let health = eventually(WAIT, "a health_snapshot run", || async {
        let (_, h) = get_json(&env_addr, "/healthz").await;
        (h["tasks"]["health_snapshot"]["last_outcome"] == "ok").then_some(h)
    })
    .await;
    assert_eq!(health["worker"], "from-file", "worker_id comes from the file: {health}");
    let tasks: Vec<&String> = health["tasks"].as_object().unwrap().keys().collect();
    assert_eq!(tasks, ["health_snapshot"], "tasks set to off are not scheduled: {health}");
    let recorded: String =
        sqlx::query_scalar("select worker from entitlements.task_runs limit 1").fetch_one(&db.pool).await.unwrap();
    assert_eq!(recorded, "from-file");
    let log = w.stop().await;
    assert!(log.contains("listening"), "debug logs were written:\n{log}");
    assert!(log.contains("starting") && log.contains("stripe_api=true"), "the configuration is logged:\n{log}");
    for secret in ["pw-SHOULD-NOT-LEAK", "whsec_FILE-SECRET", "sk_test_ENV-SECRET"] {
        assert!(!log.contains(secret), "{secret} appears in the logs:\n{log}");
    }

    // A broken file: refused with exit code 2 and the key's position, never the value.
    std::fs::write(&file, format!("database_url = \"{secret_url}\"\ndatabse_url = \"{secret_url}\"\n")).unwrap();
    let out = worker_command().arg("check").arg("--config").arg(&file).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("databse_url") && !err.contains("pw-SHOULD-NOT-LEAK"), "{err}");
    // An unknown task in the schedule is refused too.
    let out = worker_command()
        .env("DATABASE_URL", &db.url)
        .env("ENTITLEMENTS_SCHEDULE", "defrag=1s")
        .arg("check")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown task \"defrag\""));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn metrics_and_health_over_http() {
    let db = TestDb::create("ops_http").await;
    subscribe(&mut db.session().await, uuid::Uuid::new_v4(), "pro").await;
    let mut cmd = worker_command();
    cmd.arg("serve").env("DATABASE_URL", &db.url).env("ENTITLEMENTS_SCHEDULE", "health_snapshot=100ms");
    let mut w = Worker::start(cmd).await;
    let (code, health) = eventually(WAIT, "every task ran once", || async {
        let (code, h) = w.get_json("/healthz").await;
        let all = ["expire_subscriptions", "correct_entitlements", "health_snapshot"]
            .iter()
            .all(|t| h["recent_runs"][t]["outcome"] == "ok");
        all.then_some((code, h))
    })
    .await;
    assert_eq!((code, &health["status"]), (200, &json!("ok")), "{health}");
    assert_eq!(health["database"], "reachable");
    assert_eq!(health["failing_tasks"], serde_json::json!([]));

    let (code, head, metrics) = w.get("/metrics").await;
    assert_eq!(code, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    assert!(metrics.contains("# TYPE entitlements_task_runs_total counter"), "{metrics}");
    assert!(metrics.contains("# TYPE entitlements_task_duration_seconds histogram"), "{metrics}");
    assert!(
        sample(&metrics, "entitlements_task_duration_seconds_count", &[("task", "health_snapshot")]).unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "entitlements_task_runs_total", &[("task", "health_snapshot"), ("outcome", "ok")])
            .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(sample(&metrics, "entitlements_database_up", &[]), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "entitlements_subscriptions", &[("status", "active")]), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "entitlements_subscriptions", &[("status", "paused")]), Some(0.0), "{metrics}");
    assert_eq!(sample(&metrics, "entitlements_webhooks_dead_letters", &[]), Some(0.0), "{metrics}");
    assert_eq!(w.get_json("/livez").await.0, 200);
    assert_eq!(w.get_json("/readyz").await.0, 200);

    // A Stripe event that failed its last attempt: degraded, and counted, until retried.
    let mut conn = db.session().await;
    sqlx::query("insert into entitlements.settings (stripe_max_attempts) values (1)").execute(&mut conn).await.unwrap();
    sqlx::query(
        "select entitlements.stripe_record_event('{\"id\": \"evt_dead\", \"type\": \"customer.updated\",
                  \"created\": 1700000000, \"data\": {\"object\": {\"id\": \"cus_x\"}}}'),
                entitlements.stripe_event_failed('evt_dead', 'boom')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let (code, health) = w.get_json("/healthz").await;
    assert_eq!(
        (code, &health["status"], &health["stripe_dead_letters"]),
        (200, &json!("degraded"), &json!(1)),
        "{health}"
    );
    let metrics = w.metrics().await;
    assert_eq!(sample(&metrics, "entitlements_webhooks_dead_letters", &[]), Some(1.0), "{metrics}");
    sqlx::query("select entitlements.stripe_retry_event('evt_dead')").execute(&mut conn).await.unwrap();
    drop(conn);

    // The database goes away: 503 and says so; the worker keeps serving.
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    db.pool.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop database {} with (force)", db.name)))
        .execute(&mut admin)
        .await
        .unwrap();
    let (code, health) = w.get_json("/healthz").await;
    assert_eq!(code, 503, "{health}");
    assert_eq!(health["database"], "unreachable");
    // Readiness follows the database; liveness does not (no restart loop during an outage).
    assert_eq!(w.get_json("/readyz").await.0, 503);
    assert_eq!(w.get_json("/livez").await.0, 200);
    let metrics = w.metrics().await;
    assert_eq!(sample(&metrics, "entitlements_database_up", &[]), Some(0.0));

    let (status, took) = w.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "SIGTERM exits 0 even without a database: {status:?}\n{}", w.log());
    assert!(took < Duration::from_secs(10));
}

#[tokio::test]
async fn sigterm_finishes_the_run_in_flight() {
    let db = TestDb::create("ops_sigterm").await;
    let sub = db.ended_trial().await;
    let mut blocker = db.session().await;
    sqlx::raw_sql("begin").execute(&mut blocker).await.unwrap();
    sqlx::query("select 1 from entitlements.subscriptions where id = $1 for update")
        .bind(sub)
        .execute(&mut blocker)
        .await
        .unwrap();

    let mut cmd = worker_command();
    cmd.arg("serve").env("DATABASE_URL", &db.url).env(
        "ENTITLEMENTS_SCHEDULE",
        "expire_subscriptions=1h,correct_entitlements=off,health_snapshot=off,prune_task_runs=off",
    );
    let mut w = Worker::start(cmd).await;
    eventually(WAIT, "the run is in flight", || async { (db.task_runs_waiting().await == 1).then_some(()) }).await;

    // SIGTERM while the run waits: the worker takes it (logs it, or stops answering) ...
    w.sigterm();
    eventually(WAIT, "the worker to take the SIGTERM", || async {
        (w.log().contains("shutdown requested") || http_get(&w.addr, "/healthz").await.is_err()).then_some(())
    })
    .await;
    // ... and keeps running as long as the run waits: watched for a second, it never exits.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(1) {
        assert!(w.child.try_wait().unwrap().is_none(), "exited with a run in flight:\n{}", w.log());
        assert_eq!(db.task_runs_waiting().await, 1, "the run is still waiting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Released, the run finishes, is recorded, and the worker exits 0.
    sqlx::raw_sql("commit").execute(&mut blocker).await.unwrap();
    let status = w.exit_within(Duration::from_secs(10)).await;
    assert!(status.success(), "exit code 0: {status:?}\n{}", w.log());
    let (outcome, rows): (String, i64) =
        sqlx::query_as("select outcome, rows_touched from entitlements.task_runs where task = 'expire_subscriptions'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((outcome.as_str(), rows), ("ok", 1), "the in-flight run finished and was recorded");
    assert!(http_get(&w.addr, "/healthz").await.is_err(), "nothing listens after exit");
}

/// Slow clients cannot tie the listener up: a connection that stops sending mid-request
/// is closed after ENTITLEMENTS_READ_TIMEOUT, and with every connection slot
/// (ENTITLEMENTS_MAX_CONNECTIONS) taken by such clients, a normal request is still answered
/// once they are cut off.
#[tokio::test]
async fn slow_clients_are_cut_off() {
    let db = TestDb::create("ops_slow").await;
    let w = Worker::serve(&db.url, &[("ENTITLEMENTS_MAX_CONNECTIONS", "2"), ("ENTITLEMENTS_READ_TIMEOUT", "1s")]).await;

    // Two clients send half a request line and then nothing.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(&w.addr).await.unwrap();
        s.write_all(b"GET /livez HT").await.unwrap();
        slow.push(s);
    }
    // A normal request waits for a free slot and is answered.
    let addr = w.addr.clone();
    let normal = tokio::spawn(async move { get_json(&addr, "/livez").await.0 });
    // Each slow client is disconnected by the worker (read gives EOF or a reset); the bound
    // is generous, the expected wait is the 1 s timeout.
    for mut s in slow {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a silent client is cut off: {read:?}");
    }
    let code = tokio::time::timeout(Duration::from_secs(20), normal).await.expect("answered").unwrap();
    assert_eq!(code, 200);

    // A handler slower than the read timeout (/healthz waits up to 2 s for task_runs, which
    // another session holds locked) still answers: the silence is the worker's, not the client's.
    let mut locker = db.session().await;
    locker.execute("begin; lock table entitlements.task_runs in access exclusive mode").await.unwrap();
    let (code, health) = w.get_json("/healthz").await;
    assert_eq!(code, 200, "{health}");
    assert!(health["recent_runs"].is_null(), "the task runs could not be read in time: {health}");
    locker.execute("rollback").await.unwrap();

    // A slow but steady request (a byte at a time, each well within the timeout) is served.
    let mut s = tokio::net::TcpStream::connect(&w.addr).await.unwrap();
    for b in format!("GET /livez HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", w.addr).bytes() {
        s.write_all(&[b]).await.unwrap();
        tokio::task::yield_now().await;
    }
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    w.stop().await;
}
