//! Provisioning end to end (issue #10): the real worker binary, a real PostgreSQL with the
//! extension, and the fake Kubernetes API server of the test crate. The extension decides
//! what each server should be; these tests watch the worker make the cluster agree.
use base64::Engine;
use integration_tests::kube_fake::Method;
use integration_tests::*;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

/// Plans with a server: `host`, a bigger `host_plus`, and `host_lite` whose data volume is
/// smaller than host's (a downgrade must keep the larger volume).
fn hosting_catalog() -> Value {
    let resources = |cpu: &str, memory: &str, data: &str, media: &str| {
        json!({"servers": 2, "cpu": cpu, "memory": memory, "data_storage": data, "media_storage": media,
               "users": 50, "domains": 1, "database_instances": 1})
    };
    json!({
        "features": [{"key": "chat", "kind": "flag"}],
        "plans": [
            {"key": "free", "name": "Free", "default": true, "public": true, "entitlements": {"chat": true}},
            {"key": "host", "name": "Host", "public": true, "grace_days": 1,
             "entitlements": {"chat": true, "resources": resources("1", "1Gi", "10Gi", "20Gi")}},
            {"key": "host_plus", "name": "Host Plus", "public": true, "grace_days": 1,
             "entitlements": {"chat": true, "resources": resources("2", "2Gi", "20Gi", "40Gi")}},
            {"key": "host_lite", "name": "Host Lite", "public": true, "grace_days": 1,
             "entitlements": {"chat": true, "resources": resources("1", "1Gi", "5Gi", "20Gi")}}
        ]
    })
}

async fn hosting_db(name: &str) -> TestDb {
    let db = TestDb::create(name).await;
    sqlx::query("select entitlements.apply_catalog($1)").bind(hosting_catalog()).execute(&db.pool).await.unwrap();
    db
}

/// A worker that provisions against `kube`, resyncing every second.
async fn provisioner(db: &TestDb, kube: &KubeFake, id: &str, extra: &[(&str, &str)]) -> Worker {
    let mut env = vec![
        ("ENTITLEMENTS_WORKER_ID", id),
        ("ENTITLEMENTS_PROVISION", "true"),
        ("ENTITLEMENTS_KUBE_URL", kube.url()),
        ("ENTITLEMENTS_PROVISION_RESYNC", "1s"),
        ("ENTITLEMENTS_PROVISION_REQUEUE", "100ms"),
        ("ENTITLEMENTS_PROVISION_LEASE", "10s"),
    ];
    env.extend_from_slice(extra);
    Worker::serve(&db.url, &env).await
}

async fn subscribe(db: &TestDb, customer: Uuid, plan: &str) -> Uuid {
    sqlx::query_scalar("select entitlements.subscribe($1, $2, period_end => now() + interval '30 days')")
        .bind(customer)
        .bind(plan)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// The customer's one live server: (id, namespace).
async fn server_of(db: &TestDb, customer: Uuid) -> (Uuid, String) {
    sqlx::query_as("select id, namespace from entitlements.servers where customer_id = $1 and phase <> 'terminated'")
        .bind(customer)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Wait until the server is converged in `phase` (the worker applied what the extension
/// wants now).
async fn wait_phase(db: &TestDb, worker: &Worker, server: Uuid, phase: &str) {
    let query = format!(
        "select exists (select 1 from entitlements.servers where id = '{server}' and phase = '{phase}' \
         and (observed_generation = generation or phase not in ('ready', 'suspended')))"
    );
    wait_sql(db, &[worker], &query, &format!("server {server} {phase}")).await;
}

/// Wait until `query` (a boolean) is true; on time-out panic with the servers and the
/// workers' logs.
async fn wait_sql(db: &TestDb, workers: &[&Worker], query: &str, what: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    while !sqlx::query_scalar::<_, bool>(sqlx::AssertSqlSafe(query.to_owned())).fetch_one(&db.pool).await.unwrap() {
        if std::time::Instant::now() > deadline {
            let rows: Vec<Value> = sqlx::query_scalar("select to_jsonb(s) - 'conditions' from entitlements.servers s")
                .fetch_all(&db.pool)
                .await
                .unwrap();
            let logs: Vec<String> = workers.iter().map(|w| w.log()).collect();
            panic!("timed out after {WAIT:?} waiting for: {what}\n{rows:#?}\n{}", logs.join("\n----\n"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stateful_set(kube: &KubeFake, ns: &str) -> Value {
    kube.get("apps/v1", "statefulsets", Some(ns), "synapse").unwrap_or_else(|| panic!("no StatefulSet in {ns}"))
}

fn cpu_limit(kube: &KubeFake, ns: &str) -> String {
    stateful_set(kube, ns)["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn pvc_size(kube: &KubeFake, ns: &str, name: &str) -> String {
    kube.get("v1", "persistentvolumeclaims", Some(ns), name).expect("the PVC exists")["spec"]["resources"]["requests"]
        ["storage"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Indexes in the fake's request log of the first PATCH to a path containing `needle`
/// after `from`.
fn first_patch(kube: &KubeFake, from: usize, needle: &str) -> Option<usize> {
    kube.requests()
        .iter()
        .enumerate()
        .skip(from)
        .find_map(|(i, r)| (r.method == Method::PATCH && r.target.contains(needle)).then_some(i))
}

async fn outbox(db: &TestDb, customer: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "select kind from entitlements.outbox where customer_id = $1 and kind like 'server.%' order by id",
    )
    .bind(customer)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// Subscribe → ready; upgrade (quota first); downgrade (workload first, the volume kept);
/// past_due beyond grace → suspended; paid → resumed; canceled → terminated after the
/// retention, the namespace gone after a final backup.
#[tokio::test]
async fn a_server_lives_through_its_subscription() {
    let db = hosting_db("prov_lifecycle").await;
    let kube = KubeFake::start().await;
    let worker = provisioner(&db, &kube, "w-life", &[]).await;
    let customer = Uuid::new_v4();

    // Subscribe: the first server is made, provisioned and ready.
    let sub = subscribe(&db, customer, "host").await;
    let (server, ns) = server_of(&db, customer).await;
    wait_phase(&db, &worker, server, "ready").await;
    assert!(kube.get("v1", "namespaces", None, &ns).is_some(), "the namespace exists");
    assert_eq!(stateful_set(&kube, &ns)["spec"]["replicas"], 1);
    assert_eq!(cpu_limit(&kube, &ns), "1");
    let managers = kube.field_managers("apps/v1", "statefulsets", Some(&ns), "synapse");
    assert!(
        managers.iter().any(|m| m.manager == "entitlements-worker" && m.operation == "Apply"),
        "server-side apply with the worker's one field manager: {managers:?}"
    );
    let signing_key: String =
        sqlx::query_scalar("select signing_key from entitlements.server_secrets where server_id = $1")
            .bind(server)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let secret = kube.get("v1", "secrets", Some(&ns), "synapse-secrets").expect("the Secret exists");
    let held = secret["data"].as_object().expect("the Secret has data").values().any(|v| {
        v.as_str().and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok()).as_deref()
            == Some(signing_key.as_bytes())
    });
    assert!(held, "the Secret holds the signing key made in the database: {secret}");
    assert_eq!(outbox(&db, customer).await, ["server.ready"]);

    // Upgrade: the quota is raised before the workload grows.
    let mark = kube.requests().len();
    sqlx::query("select entitlements.change_plan($1, 'host_plus', 'upgrade')")
        .bind(sub)
        .execute(&db.pool)
        .await
        .unwrap();
    let w = &worker;
    let (k, n) = (&kube, &ns);
    eventually(WAIT, "the StatefulSet has 2 CPUs", || async move { (cpu_limit(k, n) == "2").then_some(()) }).await;
    wait_phase(&db, w, server, "ready").await;
    let quota = first_patch(&kube, mark, "/resourcequotas/").expect("the quota was applied");
    let workload = first_patch(&kube, mark, "/statefulsets/").expect("the StatefulSet was applied");
    assert!(quota < workload, "upgrade: quota ({quota}) before workload ({workload})");
    assert_eq!(pvc_size(&kube, &ns, "synapse-data"), "20Gi");

    // Downgrade: the workload shrinks before the quota; the data volume keeps its 20Gi.
    let mark = kube.requests().len();
    sqlx::query("select entitlements.change_plan($1, 'host_lite', 'downgrade')")
        .bind(sub)
        .execute(&db.pool)
        .await
        .unwrap();
    eventually(WAIT, "the StatefulSet has 1 CPU", || async move { (cpu_limit(k, n) == "1").then_some(()) }).await;
    wait_phase(&db, w, server, "ready").await;
    let quota = first_patch(&kube, mark, "/resourcequotas/").expect("the quota was applied");
    let workload = first_patch(&kube, mark, "/statefulsets/").expect("the StatefulSet was applied");
    assert!(workload < quota, "downgrade: workload ({workload}) before quota ({quota})");
    assert_eq!(pvc_size(&kube, &ns, "synapse-data"), "20Gi", "a PVC never shrinks");
    let conditions: Value = sqlx::query_scalar("select conditions from entitlements.servers where id = $1")
        .bind(server)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(conditions.to_string().contains("VolumeKept"), "the kept volume is in the conditions: {conditions}");

    // past_due beyond the plan's grace (1 day): access ends at once, the server is suspended.
    sqlx::query("update entitlements.subscriptions set status = 'past_due' where id = $1")
        .bind(sub)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("update entitlements.subscriptions set status_changed_at = now() - interval '2 days' where id = $1")
        .bind(sub)
        .execute(&db.pool)
        .await
        .unwrap();
    wait_phase(&db, w, server, "suspended").await;
    assert_eq!(stateful_set(&kube, &ns)["spec"]["replicas"], 0, "suspended: scaled to 0");
    let cluster = kube.get("postgresql.cnpg.io/v1", "clusters", Some(&ns), "synapse-db").expect("the database");
    assert_eq!(cluster["metadata"]["annotations"]["cnpg.io/hibernation"], "on", "and the database hibernated");
    assert!(kube.get("v1", "persistentvolumeclaims", Some(&ns), "synapse-data").is_some(), "volumes are kept");

    // Paid again: resumed.
    sqlx::query("update entitlements.subscriptions set status = 'active' where id = $1")
        .bind(sub)
        .execute(&db.pool)
        .await
        .unwrap();
    wait_phase(&db, w, server, "ready").await;
    assert_eq!(stateful_set(&kube, &ns)["spec"]["replicas"], 1, "resumed");

    // Canceled: suspended, then after the retention (3 s here, 30 days by default) terminated
    // and the namespace gone.
    sqlx::query("insert into entitlements.settings (server_retention) values ('3 seconds')")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("select entitlements.cancel($1, false)").bind(sub).execute(&db.pool).await.unwrap();
    wait_phase(&db, w, server, "terminated").await;
    assert!(kube.get("v1", "namespaces", None, &ns).is_none(), "the namespace is gone");
    let backups = kube.requests().iter().filter(|r| r.method != Method::GET && r.target.contains("/backups")).count();
    assert!(backups >= 1, "a final backup was taken before the namespace went");
    // What the customer is told: ready once (plan changes say nothing), suspended, resumed,
    // (suspended again on cancel, unless the retention ran out first,) terminated.
    let told = outbox(&db, customer).await;
    assert_eq!(told[..3], ["server.ready", "server.suspended", "server.resumed"], "{told:?}");
    assert_eq!(told.last().map(String::as_str), Some("server.terminated"), "{told:?}");
    assert!(told.len() <= 5, "{told:?}");
    let (metrics_status, _, metrics) = worker.get("/metrics").await;
    assert_eq!(metrics_status, 200);
    for name in [
        "entitlements_provision_queue_depth",
        "entitlements_servers{phase=\"terminated\"} 1",
        "entitlements_server_time_to_ready_seconds_count",
    ] {
        assert!(metrics.contains(name), "/metrics shows {name}:\n{metrics}");
    }
}

/// A converged server costs no write call on resync; a namespace lost in the cluster is made
/// again with the same secrets.
#[tokio::test]
async fn resync_writes_nothing_and_restores_a_lost_namespace() {
    let db = hosting_db("prov_resync").await;
    let kube = KubeFake::start().await;
    let worker = provisioner(&db, &kube, "w-resync", &[]).await;
    let customer = Uuid::new_v4();
    subscribe(&db, customer, "host").await;
    let (server, ns) = server_of(&db, customer).await;
    wait_phase(&db, &worker, server, "ready").await;
    let secret_before = kube.get("v1", "secrets", Some(&ns), "synapse-secrets").unwrap()["data"].clone();

    kube.reset_calls();
    // Resyncs every second: wait for at least two full reads of the server.
    eventually(WAIT, "two resyncs", || async { (kube.calls().get >= 40).then_some(()) }).await;
    assert_eq!(kube.calls().writes(), 0, "a converged server costs no write call: {:?}", kube.requests());

    // Someone deletes the namespace: the next resync makes it all again, secrets unchanged.
    let http = reqwest::Client::new();
    let deleted = http.delete(format!("{}/api/v1/namespaces/{ns}", kube.url())).send().await.unwrap();
    assert!(deleted.status().is_success());
    let ns2 = ns.clone();
    eventually(WAIT, "the namespace is made again", || {
        let ns = ns2.clone();
        let kube = &kube;
        async move {
            kube.get("v1", "namespaces", None, &ns)
                .filter(|n| n["metadata"]["deletionTimestamp"].is_null())
                .and_then(|_| kube.get("apps/v1", "statefulsets", Some(&ns), "synapse"))
                .map(|_| ())
        }
    })
    .await;
    wait_phase(&db, &worker, server, "ready").await;
    let secret_after = kube.get("v1", "secrets", Some(&ns), "synapse-secrets").unwrap()["data"].clone();
    assert_eq!(secret_before, secret_after, "the secrets are the ones made once, never regenerated");
}

/// API failures back off in the database; after settings.server_max_attempts the server is
/// failed with the error kept, until an admin retries it.
#[tokio::test]
async fn failures_back_off_then_fail_until_retried() {
    let db = hosting_db("prov_failures").await;
    sqlx::query("insert into entitlements.settings (server_max_attempts) values (3)").execute(&db.pool).await.unwrap();
    let kube = KubeFake::start().await;
    // A transient 409 and 429 are retried and converge.
    kube.inject(Fault::status(409, "/configmaps/", 1));
    kube.inject(Fault::status(429, "/services/", 1));
    let worker = provisioner(&db, &kube, "w-fail", &[]).await;
    let first = Uuid::new_v4();
    subscribe(&db, first, "host").await;
    let (server, _) = server_of(&db, first).await;
    wait_phase(&db, &worker, server, "ready").await;
    let faulted: Vec<u16> = kube.requests().iter().map(|r| r.status).filter(|s| [409, 429].contains(s)).collect();
    assert_eq!(faulted, [409, 429], "both faults were met (and retried past)");

    // A StatefulSet the API always refuses: 3 attempts with growing waits, then failed.
    kube.inject(Fault::status(500, "/statefulsets/", 1_000_000));
    let second = Uuid::new_v4();
    subscribe(&db, second, "host").await;
    let (server, _) = server_of(&db, second).await;
    wait_phase(&db, &worker, server, "failed").await;
    let (attempts, error): (i32, String) =
        sqlx::query_as("select attempts, last_error from entitlements.servers where id = $1")
            .bind(server)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(attempts, 3);
    assert!(error.contains("500"), "the API's error is kept: {error}");
    assert!(outbox(&db, second).await.contains(&"server.failed".to_owned()));

    kube.clear_faults();
    sqlx::query("select entitlements.retry_server($1)").bind(server).execute(&db.pool).await.unwrap();
    wait_phase(&db, &worker, server, "ready").await;
}

/// Two workers share the servers (each namespace applied by one of them, once); a worker
/// killed mid-provisioning loses its leases and the other finishes its servers.
#[tokio::test]
async fn two_workers_and_a_killed_one() {
    let db = hosting_db("prov_two_workers").await;
    let kube = KubeFake::start().await;
    let a = provisioner(&db, &kube, "w-a", &[]).await;
    let b = provisioner(&db, &kube, "w-b", &[]).await;
    let customers: Vec<Uuid> = (0..12).map(|_| Uuid::new_v4()).collect();
    for c in &customers {
        subscribe(&db, *c, "host").await;
    }
    wait_sql(
        &db,
        &[&a, &b],
        "select count(*) = 12 from entitlements.servers where phase = 'ready' and observed_generation = generation",
        "12 servers ready",
    )
    .await;
    let log = format!("{}\n{}", a.log(), b.log());
    let namespaces = kube.namespaces();
    assert_eq!(namespaces.len(), 12);
    for ns in &namespaces {
        let applies = kube
            .requests()
            .iter()
            .filter(|r| r.method == Method::PATCH && r.target.starts_with(&format!("/api/v1/namespaces/{ns}?")))
            .count();
        assert_eq!(applies, 1, "namespace {ns} applied once, by one worker:\n{log}");
    }
    drop((a, b));

    // A worker killed mid-provisioning: every API call made slow, it has applied part of a
    // new server when it dies. Its leases lapse (10 s) and another worker finishes the job.
    let mut doomed = provisioner(&db, &kube, "w-doomed", &[("ENTITLEMENTS_PROVISION_RESYNC", "1h")]).await;
    let d = &doomed;
    eventually(WAIT, "the doomed worker's start-up resync", || async move {
        d.log().contains("provisioning pass").then_some(())
    })
    .await;
    kube.set_latency(Duration::from_millis(700));
    for _ in 0..3 {
        subscribe(&db, Uuid::new_v4(), "host").await;
    }
    let k = &kube;
    let pool = &db.pool;
    eventually(WAIT, "a new server half applied by the doomed worker", || async move {
        let held: Vec<String> = sqlx::query_scalar(
            "select s.namespace from entitlements.servers s join entitlements.leases l
                 on l.name = 'server:' || s.id and l.holder = 'w-doomed'
              where s.phase = 'pending'",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        held.into_iter().any(|ns| k.get("v1", "namespaces", None, &ns).is_some()).then_some(())
    })
    .await;
    doomed.child.kill().await.unwrap();
    kube.set_latency(Duration::ZERO);
    let survivor = provisioner(&db, &kube, "w-survivor", &[]).await;
    wait_sql(
        &db,
        &[&survivor],
        "select count(*) = 15 from entitlements.servers where phase = 'ready' and observed_generation = generation",
        "every server ready after the takeover",
    )
    .await;
}

/// `provision --dry-run --customer` prints exactly the customer's objects as YAML, without
/// any Kubernetes configured.
#[tokio::test]
async fn dry_run_prints_the_objects_without_kubernetes() {
    let db = hosting_db("prov_dry_run").await;
    let customer = Uuid::new_v4();
    subscribe(&db, customer, "host").await;
    let (_, ns) = server_of(&db, customer).await;
    let out = worker_command()
        .args(["provision", "--dry-run", "--customer", &customer.to_string()])
        .env("DATABASE_URL", &db.url)
        .env("KUBECONFIG", "/nonexistent")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "dry run: {}", String::from_utf8_lossy(&out.stderr));
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(yaml.starts_with("---\n"), "multi-document YAML:\n{yaml}");
    for kind in ["Namespace", "ResourceQuota", "StatefulSet", "Ingress", "Cluster", "Secret"] {
        assert!(yaml.contains(&format!("kind: {kind}")), "{kind} is printed");
    }
    assert!(yaml.contains(&format!("name: {ns}")));
    // Namespace, quota, limits, service account, 4 network policies, Secret, ConfigMap, 2 PVCs,
    // the database Cluster, Service, StatefulSet, Ingress.
    assert_eq!(yaml.matches("\n---\n").count() + 1, 16, "one document per object:\n{yaml}");

    // A customer without servers prints nothing.
    let nobody = worker_command()
        .args(["provision", "--dry-run", "--customer", &Uuid::new_v4().to_string()])
        .env("DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    assert!(nobody.status.success());
    assert!(nobody.stdout.is_empty());
}

/// A namespace that does not go away (a finalizer nobody removes) is reported, never forced:
/// the server stays `terminating` with NamespaceStuckTerminating until the namespace is gone.
#[tokio::test]
async fn a_stuck_namespace_is_reported_not_forced() {
    let db = hosting_db("prov_stuck").await;
    let kube = KubeFake::start().await;
    let worker = provisioner(&db, &kube, "w-stuck", &[("ENTITLEMENTS_NAMESPACE_STUCK_AFTER", "1s")]).await;
    let customer = Uuid::new_v4();
    let sub = subscribe(&db, customer, "host").await;
    let (server, ns) = server_of(&db, customer).await;
    wait_phase(&db, &worker, server, "ready").await;

    kube.set_stuck(&ns, true);
    sqlx::query("insert into entitlements.settings (server_retention) values ('0 seconds')")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("select entitlements.cancel($1, false)").bind(sub).execute(&db.pool).await.unwrap();
    wait_sql(
        &db,
        &[&worker],
        &format!(
            "select exists (select 1 from entitlements.servers where id = '{server}' and phase = 'terminating' \
             and conditions @> '[{{\"type\": \"NamespaceStuckTerminating\"}}]')"
        ),
        "the stuck namespace reported",
    )
    .await;
    let namespace = kube.get("v1", "namespaces", None, &ns).expect("still there");
    assert!(!namespace["metadata"]["deletionTimestamp"].is_null(), "being deleted, not forced");

    kube.set_stuck(&ns, false);
    wait_phase(&db, &worker, server, "terminated").await;
    assert!(kube.get("v1", "namespaces", None, &ns).is_none());
}
