//! The provisioning benchmark (issue #10, "Speed"), run by bench/run.sh:
//!
//! ```sh
//! cargo test --release -p integration-tests --test provision_bench -- --ignored --nocapture
//! ```
//!
//! 1,000 subscribers of a plan with `resources` (one server each) against the fake API server
//! with a fixed latency per request, through the real worker binary with the worker's default
//! concurrency set explicitly:
//!
//! - *converge*: `entitlements-worker serve` with the provisioner on, until every server is
//!   `ready` (a new server's first attempt applies its objects and is requeued, 2 s, until the
//!   fake's controller reports the StatefulSet and the certificate ready). With
//!   PROVISION_BENCH_CONVERGE=passes: one-shot `entitlements-worker provision` passes instead
//!   (each of which also resyncs the servers already ready);
//! - *resync*: one `entitlements-worker provision` pass over the 1,000 converged servers. The
//!   promise: no write calls, and every server's namespace read.
//!
//! Side by side, in the same run, against the same fake and latency, with the same
//! concurrency: a naive loop that server-side applies every object of every server (the
//! worker's own objects as the fake holds them, server-set metadata and status stripped), on
//! every pass. Its *resync* is one such pass over the converged servers; its *converge* applies
//! copies of the same objects into fresh namespaces and repeats the pass for the servers not
//! ready yet. Only the promise is asserted (resync writes == 0), never a time.
//!
//! Knobs: PROVISION_BENCH_SERVERS (1000), PROVISION_BENCH_LATENCY_MS (2),
//! PROVISION_BENCH_CONCURRENCY (4, the worker's default `provision.concurrency`),
//! PROVISION_BENCH_CONVERGE (serve), PROVISION_BENCH_LOG (the worker's RUST_LOG for its passes).
use integration_tests::{eventually, worker_command, Calls, KubeFake, TestDb, Worker};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const FIELD_MANAGER: &str = "entitlements-worker";
/// The demo catalog's plan with `resources` for one server.
const PLAN: &str = "business";
const MAX_PASSES: usize = 200;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One scenario's figures.
struct Figure {
    scenario: &'static str,
    servers: usize,
    wall: Duration,
    calls: Calls,
    /// Worker passes (one-shot runs); None for `serve`.
    passes: Option<usize>,
}

impl Figure {
    fn reads(&self) -> usize {
        self.calls.get + self.calls.list
    }
}

/// One `entitlements-worker provision` pass (one process, `concurrency` servers in flight):
/// the number of servers it claimed.
async fn provision_pass(db: &TestDb, fake: &KubeFake, concurrency: usize) -> usize {
    let out = worker_command()
        .arg("provision")
        .env("DATABASE_URL", &db.url)
        .env("ENTITLEMENTS_KUBE_URL", fake.url())
        .env("ENTITLEMENTS_PROVISION_CONCURRENCY", concurrency.to_string())
        .env("RUST_LOG", std::env::var("PROVISION_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
        .output()
        .await
        .expect("entitlements-worker is installed (make install) or ENTITLEMENTS_WORKER_BIN is set");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if std::env::var_os("PROVISION_BENCH_LOG").is_some() {
        eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(
        out.status.success(),
        "provision failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("provision prints JSON ({e}): {stdout}"));
    report["claimed"].as_u64().expect("claimed") as usize
}

/// Servers not ready yet, and how long until the first of them is due again (zero when due).
async fn not_ready(db: &TestDb) -> (i64, Duration) {
    let (n, wait): (i64, Option<f64>) = sqlx::query_as(
        "select count(*), extract(epoch from min(next_attempt_at) - now())::float8
           from entitlements.servers where phase <> 'ready'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    (n, Duration::from_secs_f64(wait.unwrap_or(0.0).max(0.0)))
}

/// The kube-rs plural of a kind (the ones a server is made of are all regular).
fn plural(kind: &str) -> String {
    let s = kind.to_lowercase();
    if ["s", "x", "z", "ch", "sh"].iter().any(|e| s.ends_with(e)) {
        format!("{s}es")
    } else if let Some(stem) = s.strip_suffix('y') {
        format!("{stem}ies")
    } else {
        format!("{s}s")
    }
}

/// The URL path of an object.
fn path_of(obj: &Value) -> String {
    let api_version = obj["apiVersion"].as_str().expect("apiVersion");
    let kind = obj["kind"].as_str().expect("kind");
    let name = obj["metadata"]["name"].as_str().expect("name");
    let base = if api_version.contains('/') { format!("/apis/{api_version}") } else { format!("/api/{api_version}") };
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) if kind != "Namespace" => format!("{base}/namespaces/{ns}/{}/{name}", plural(kind)),
        _ => format!("{base}/{}/{name}", plural(kind)),
    }
}

/// Written by the worker (the objects it renders, not those the fake's controllers made).
fn applied_by_worker(obj: &Value) -> bool {
    obj["metadata"]["managedFields"]
        .as_array()
        .is_some_and(|m| m.iter().any(|f| f["manager"] == FIELD_MANAGER && f["operation"] == "Apply"))
}

/// An object as a client would apply it: without server-set metadata and status.
fn strip(mut obj: Value) -> Value {
    if let Some(meta) = obj["metadata"].as_object_mut() {
        for k in ["resourceVersion", "uid", "creationTimestamp", "managedFields", "generation", "selfLink"] {
            meta.remove(k);
        }
    }
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
    obj
}

/// Everything the worker applied for one server, namespace first, as the naive loop applies it.
fn server_objects(fake: &KubeFake, ns: &str) -> Vec<Value> {
    let namespace = fake.get("v1", "namespaces", None, ns).unwrap_or_else(|| panic!("namespace {ns} exists"));
    std::iter::once(namespace).chain(fake.list_namespace(ns)).filter(applied_by_worker).map(strip).collect()
}

/// The same objects in namespace `to` (for the naive loop's own converge).
fn moved(objects: &[Value], to: &str) -> Vec<Value> {
    objects
        .iter()
        .map(|o| {
            let mut o = o.clone();
            if o["kind"] == "Namespace" {
                o["metadata"]["name"] = to.into();
            } else {
                o["metadata"]["namespace"] = to.into();
            }
            o
        })
        .collect()
}

async fn apply(http: &reqwest::Client, base: &str, obj: &Value) {
    let url = format!("{base}{}?fieldManager=naive&force=true", path_of(obj));
    let resp = http
        .patch(&url)
        .header("content-type", "application/apply-patch+yaml")
        .body(obj.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PATCH {url}: {e}"));
    let status = resp.status();
    assert!(status.is_success(), "PATCH {url}: {status} {}", resp.text().await.unwrap_or_default());
}

async fn get(http: &reqwest::Client, base: &str, path: &str) -> Option<Value> {
    let resp = http.get(format!("{base}{path}")).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
    if resp.status().as_u16() == 404 {
        return None;
    }
    assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
    Some(resp.json().await.unwrap())
}

/// Ready as the worker sees it: the StatefulSet's replicas are ready and the certificate issued.
async fn naive_ready(http: &reqwest::Client, base: &str, ns: &str) -> bool {
    let sts = get(http, base, &format!("/apis/apps/v1/namespaces/{ns}/statefulsets/synapse")).await;
    let sts_ready = sts.is_some_and(|s| {
        let wanted = s["spec"]["replicas"].as_i64().unwrap_or(1);
        wanted >= 1 && s["status"]["readyReplicas"].as_i64().unwrap_or(0) >= wanted
    });
    if !sts_ready {
        return false;
    }
    let cert = get(http, base, &format!("/apis/cert-manager.io/v1/namespaces/{ns}/certificates/synapse-tls")).await;
    cert.is_some_and(|c| {
        c["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    })
}

/// One naive pass: `concurrency` servers at once, each applying all its objects in order (and,
/// when `check`, reading its readiness as the worker does). The servers not ready after it.
async fn naive_pass(
    fake: &KubeFake,
    servers: &[(String, Vec<Value>)],
    concurrency: usize,
    check: bool,
) -> Vec<(String, Vec<Value>)> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().unwrap();
    let base = fake.url().to_owned();
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    for (ns, objects) in servers.iter().cloned() {
        let (http, base, slots) = (http.clone(), base.clone(), slots.clone());
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            for obj in &objects {
                apply(&http, &base, obj).await;
            }
            let ready = !check || naive_ready(&http, &base, &ns).await;
            (!ready).then_some((ns, objects))
        });
    }
    let mut left = Vec::new();
    while let Some(done) = tasks.join_next().await {
        left.extend(done.expect("a naive task panicked"));
    }
    left
}

fn print_table(figures: &[Figure], latency: Duration, concurrency: usize) {
    println!(
        "{:<18} {:>7} {:>6} {:>9} {:>10} {:>8} {:>10} {:>10} {:>10} {:>9}",
        "scenario",
        "servers",
        "passes",
        "wall s",
        "GETs/LISTs",
        "writes",
        "calls/srv",
        "floor s",
        "wall/floor",
        "vs naive"
    );
    for f in figures {
        let total = f.calls.total();
        let floor = total as f64 * latency.as_secs_f64() / concurrency as f64;
        let naive = figures
            .iter()
            .find(|n| n.scenario.starts_with("naive") && n.scenario.ends_with(f.scenario.rsplit(' ').next().unwrap()));
        let ratio = naive.map_or("-".to_owned(), |n| format!("{:.2}x", n.wall.as_secs_f64() / f.wall.as_secs_f64()));
        println!(
            "{:<18} {:>7} {:>6} {:>9.2} {:>10} {:>8} {:>10.1} {:>10.2} {:>10.2} {:>9}",
            f.scenario,
            f.servers,
            f.passes.map_or("serve".to_owned(), |p| p.to_string()),
            f.wall.as_secs_f64(),
            f.reads(),
            f.calls.writes(),
            total as f64 / f.servers as f64,
            floor,
            f.wall.as_secs_f64() / floor.max(f64::EPSILON),
            ratio
        );
    }
    println!(
        "floor = calls x {} ms / {concurrency} (concurrency); vs naive = naive wall / this wall",
        latency.as_secs_f64() * 1000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/run.sh runs it"]
async fn provisioning_converge_and_resync_against_a_naive_apply_everything_loop() {
    let servers = knob("PROVISION_BENCH_SERVERS", 1000) as usize;
    let latency = Duration::from_millis(knob("PROVISION_BENCH_LATENCY_MS", 2));
    let concurrency = knob("PROVISION_BENCH_CONCURRENCY", 4) as usize;

    let db = TestDb::create("provision_bench").await;
    sqlx::query("select count(entitlements.subscribe(gen_random_uuid(), $1)) from generate_series(1, $2)")
        .bind(PLAN)
        .bind(servers as i32)
        .execute(&db.pool)
        .await
        .unwrap();
    let made = db.count("select count(*) from entitlements.servers").await;
    assert_eq!(made as usize, servers, "each subscription made its first server");
    let fake = KubeFake::start().await;
    fake.set_latency(latency);
    println!(
        "== provisioning: {servers} servers (plan {PLAN}), fake API latency {} ms per request, {concurrency} servers \
         in flight (ENTITLEMENTS_PROVISION_CONCURRENCY={concurrency}; the naive loop too)",
        latency.as_secs_f64() * 1000.0
    );
    let mut figures = Vec::new();

    // Ours, converge: `serve` with the provisioner on (its passes claim only servers that are
    // not converged), or with PROVISION_BENCH_CONVERGE=passes one-shot `provision` passes (each
    // of which also resyncs the servers already ready), until every server is ready.
    fake.reset_calls();
    let started = Instant::now();
    let (passes, calls, wall) = if std::env::var("PROVISION_BENCH_CONVERGE").as_deref() == Ok("passes") {
        let mut passes = 0;
        loop {
            assert!(passes < MAX_PASSES, "not every server is ready after {MAX_PASSES} passes");
            let claimed = provision_pass(&db, &fake, concurrency).await;
            passes += 1;
            let (left, due_in) = not_ready(&db).await;
            println!(
                "   converge pass {passes}: claimed {claimed}, not ready {left} ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
            if left == 0 {
                break (Some(passes), fake.calls(), started.elapsed());
            }
            tokio::time::sleep(due_in).await;
        }
    } else {
        let concurrency = concurrency.to_string();
        let env = [
            ("ENTITLEMENTS_PROVISION", "true"),
            ("ENTITLEMENTS_KUBE_URL", fake.url()),
            ("ENTITLEMENTS_PROVISION_CONCURRENCY", concurrency.as_str()),
        ];
        let worker = Worker::serve(&db.url, &env).await;
        let (calls, wall) = eventually(Duration::from_secs(600), "every server ready", || async {
            (not_ready(&db).await.0 == 0).then(|| (fake.calls(), started.elapsed()))
        })
        .await;
        println!("   converge with serve: every server ready ({:.1} s)", wall.as_secs_f64());
        worker.stop().await;
        (None, calls, wall)
    };
    figures.push(Figure { scenario: "ours converge", servers, wall, calls, passes });
    let failed =
        db.count("select count(*) from entitlements.servers where attempts > 0 or last_error is not null").await;
    assert_eq!(failed, 0, "no server failed an attempt");

    // Ours, resync: one pass over the converged servers.
    fake.reset_calls();
    let started = Instant::now();
    let claimed = provision_pass(&db, &fake, concurrency).await;
    println!("   resync pass: claimed {claimed} ({:.1} s)", started.elapsed().as_secs_f64());
    let resync =
        Figure { scenario: "ours resync", servers, wall: started.elapsed(), calls: fake.calls(), passes: Some(1) };
    let visited: std::collections::BTreeSet<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .filter_map(|r| {
            r.target.strip_prefix("/api/v1/namespaces/").map(|ns| ns.split(['/', '?']).next().unwrap().to_owned())
        })
        .collect();
    assert_eq!(visited.len(), servers, "the resync pass read every server's namespace (claimed {claimed})");
    assert_eq!(not_ready(&db).await.0, 0, "every server is still ready");
    let writes: Vec<_> = fake.requests().into_iter().filter(|r| r.method != "GET").collect();
    assert_eq!(
        resync.calls.writes(),
        0,
        "a resync of converged servers writes nothing: {:?}",
        &writes[..writes.len().min(10)]
    );
    figures.push(resync);

    // The naive loop's input: the worker's objects as the fake holds them.
    let namespaces: Vec<String> = sqlx::query_scalar("select namespace from entitlements.servers order by namespace")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let objects: Vec<(String, Vec<Value>)> =
        namespaces.iter().map(|ns| (ns.clone(), server_objects(&fake, ns))).collect();
    let per_server = objects[0].1.len();
    println!("   naive loop: {per_server} objects per server (namespace included), fieldManager=naive, force");

    // Naive, resync: apply everything of every converged server.
    fake.reset_calls();
    let started = Instant::now();
    naive_pass(&fake, &objects, concurrency, false).await;
    figures.push(Figure {
        scenario: "naive resync",
        servers,
        wall: started.elapsed(),
        calls: fake.calls(),
        passes: Some(1),
    });

    // Naive, converge: the same objects into fresh namespaces, a pass (apply everything, read
    // readiness) repeated for the servers not ready yet.
    let mut pending: Vec<(String, Vec<Value>)> = objects
        .iter()
        .map(|(ns, objs)| {
            let to = format!("naive-{}", ns.trim_start_matches("mx-"));
            let moved = moved(objs, &to);
            (to, moved)
        })
        .collect();
    fake.reset_calls();
    let started = Instant::now();
    let mut passes = 0;
    while !pending.is_empty() {
        assert!(passes < MAX_PASSES, "naive: not every server is ready after {MAX_PASSES} passes");
        pending = naive_pass(&fake, &pending, concurrency, true).await;
        passes += 1;
    }
    let passes = Some(passes);
    figures.push(Figure { scenario: "naive converge", servers, wall: started.elapsed(), calls: fake.calls(), passes });

    let order = ["ours converge", "naive converge", "ours resync", "naive resync"];
    figures.sort_by_key(|f| order.iter().position(|o| *o == f.scenario));
    print_table(&figures, latency, concurrency);
}
