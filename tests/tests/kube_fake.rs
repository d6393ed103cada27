//! The fake Kubernetes API server itself, over real HTTP, as kube-rs would call it: apply,
//! errors as `Status`, namespace deletion, faults, and the fake controllers. No database.
use integration_tests::kube_fake::{Fault, KubeFake, Method};
use integration_tests::{eventually, WAIT};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const NS: &str = "/api/v1/namespaces";
const STS: &str = "/apis/apps/v1/namespaces/mx-a/statefulsets";
const CM: &str = "/api/v1/namespaces/mx-a/configmaps";
const APPLY: &str = "application/apply-patch+yaml";
const MERGE: &str = "application/merge-patch+json";
const JSON_PATCH: &str = "application/json-patch+json";

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(fake: &KubeFake) -> Client {
        Client { http: reqwest::Client::new(), base: fake.url().to_owned() }
    }

    async fn send(
        &self,
        method: Method,
        target: &str,
        content_type: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{target}", self.base));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        let resp = req.send().await.expect("the fake answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{target} answers JSON ({e}): {text}")))
    }

    async fn get(&self, target: &str) -> (u16, Value) {
        self.send(Method::GET, target, None, None).await
    }

    /// Server-side apply as kube-rs 5 sends it for `PatchParams::apply(manager).force()`
    /// (`?&force=true&fieldManager=..`, the stray `&` included).
    async fn apply(&self, path: &str, manager: &str, body: &Value) -> (u16, Value) {
        self.send(Method::PATCH, &format!("{path}?&force=true&fieldManager={manager}"), Some(APPLY), Some(body)).await
    }

    async fn apply_ns(&self, name: &str) -> Value {
        let (code, ns) = self.apply(&format!("{NS}/{name}"), "entitlements-worker", &namespace(name)).await;
        assert!(code == 201 || code == 200, "{ns}");
        ns
    }
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"app": "matrix"}}})
}

fn config_map(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "mx-a"}, "data": data})
}

fn statefulset(replicas: i64, labels: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "synapse", "namespace": "mx-a", "labels": labels},
        "spec": {"replicas": replicas, "serviceName": "synapse", "selector": {"matchLabels": {"app": "synapse"}},
            "template": {"metadata": {"labels": {"app": "synapse"}}, "spec": {"containers": [{"name": "synapse", "image": "synapse"}]}}}})
}

fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"].as_str().expect("resourceVersion is a string").parse().unwrap()
}

#[tokio::test]
async fn apply_creates_then_updates() {
    let fake = KubeFake::start().await;
    let api = Client::new(&fake);
    let ns = api.apply_ns("mx-a").await;
    assert_eq!(ns["status"]["phase"], "Active");
    assert!(ns["metadata"]["uid"].is_string() && ns["metadata"]["creationTimestamp"].is_string());

    let (code, first) =
        api.apply(&format!("{STS}/synapse"), "entitlements-worker", &statefulset(1, json!({"a": "1"}))).await;
    assert_eq!(code, 201, "{first}");
    assert_eq!(first["metadata"]["generation"], 1);
    let uid = first["metadata"]["uid"].clone();

    // A label is metadata: a new resourceVersion, the same generation.
    let (code, relabeled) =
        api.apply(&format!("{STS}/synapse"), "entitlements-worker", &statefulset(1, json!({"a": "2"}))).await;
    assert_eq!(code, 200, "{relabeled}");
    assert!(rv(&relabeled) > rv(&first));
    assert_eq!(relabeled["metadata"]["generation"], 1);
    assert_eq!(relabeled["metadata"]["uid"], uid);
    assert_eq!(relabeled["metadata"]["labels"], json!({"a": "2"}));

    let (_, resized) =
        api.apply(&format!("{STS}/synapse"), "entitlements-worker", &statefulset(2, json!({"a": "2"}))).await;
    assert_eq!(resized["metadata"]["generation"], 2);
    assert_eq!(resized["spec"]["replicas"], 2);

    // A no-op apply changes nothing (ConfigMaps: no controller writes to them in between).
    let cm = config_map("conf", json!({"k": "v", "gone": "soon"}));
    let (code, c1) = api.apply(&format!("{CM}/conf"), "entitlements-worker", &cm).await;
    assert_eq!(code, 201, "{c1}");
    let (code, c2) = api.apply(&format!("{CM}/conf"), "entitlements-worker", &cm).await;
    assert_eq!((code, rv(&c2)), (200, rv(&c1)));

    // A field the manager stops applying goes.
    let (_, c3) = api.apply(&format!("{CM}/conf"), "entitlements-worker", &config_map("conf", json!({"k": "v"}))).await;
    assert_eq!(c3["data"], json!({"k": "v"}));
    let managers = fake.field_managers("v1", "configmaps", Some("mx-a"), "conf");
    assert_eq!(managers.len(), 1, "{managers:?}");
    assert_eq!((managers[0].manager.as_str(), managers[0].operation.as_str()), ("entitlements-worker", "Apply"));
    assert_eq!(managers[0].fields, vec!["data.k".to_owned()]);
    assert_eq!(c3["metadata"]["managedFields"][0]["fieldsV1"], json!({"f:data": {"f:k": {}}}));

    // Another manager's different value: a conflict unless forced, then it owns the field.
    let other = config_map("conf", json!({"k": "other"}));
    let (code, err) =
        api.send(Method::PATCH, &format!("{CM}/conf?fieldManager=other"), Some(APPLY), Some(&other)).await;
    assert_eq!((code, err["reason"].as_str()), (409, Some("Conflict")), "{err}");
    let (code, forced) = api.apply(&format!("{CM}/conf"), "other", &other).await;
    assert_eq!((code, &forced["data"]["k"]), (200, &json!("other")));
    let owners: Vec<_> =
        fake.field_managers("v1", "configmaps", Some("mx-a"), "conf").into_iter().map(|m| m.manager).collect();
    assert_eq!(owners, vec!["other".to_owned()]);

    // Apply needs a field manager, apiVersion and kind, and the URL's name.
    let (code, err) = api.send(Method::PATCH, &format!("{CM}/conf"), Some(APPLY), Some(&cm)).await;
    assert_eq!((code, err["kind"].as_str(), err["reason"].as_str()), (400, Some("Status"), Some("BadRequest")));
    let (code, _) = api.apply(&format!("{CM}/other-name"), "entitlements-worker", &cm).await;
    assert_eq!(code, 400);
    let (code, _) =
        api.apply(&format!("{CM}/conf"), "entitlements-worker", &json!({"metadata": {"name": "conf"}})).await;
    assert_eq!(code, 400);

    // The log pins the exact URL, field manager and content type.
    let applies: Vec<_> = fake.requests().into_iter().filter(|r| r.target.starts_with(STS)).collect();
    assert_eq!(applies.len(), 3);
    assert_eq!(applies[0].method, Method::PATCH);
    assert_eq!(applies[0].target, format!("{STS}/synapse?&force=true&fieldManager=entitlements-worker"));
    assert_eq!(applies[0].content_type.as_deref(), Some(APPLY));
    assert_eq!(applies[0].status, 201);
}

#[tokio::test]
async fn errors_are_status_objects() {
    let fake = KubeFake::start().await;
    let api = Client::new(&fake);
    let (code, body) = api.get(&format!("{NS}/nope")).await;
    assert_eq!(code, 404);
    assert_eq!(
        body,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "namespaces \"nope\" not found", "reason": "NotFound", "code": 404})
    );
    let (code, body) = api.get(&format!("{STS}/synapse")).await;
    assert_eq!((code, body["message"].as_str()), (404, Some("statefulsets.apps \"synapse\" not found")));

    // Nothing is created in a namespace that does not exist.
    let (code, body) = api.send(Method::POST, CM, Some("application/json"), Some(&config_map("c", json!({})))).await;
    assert_eq!((code, body["message"].as_str()), (404, Some("namespaces \"mx-a\" not found")));

    api.apply_ns("mx-a").await;
    let (code, created) = api.send(Method::POST, CM, Some("application/json"), Some(&config_map("c", json!({})))).await;
    assert_eq!(code, 201, "{created}");
    let (code, body) = api.send(Method::POST, CM, Some("application/json"), Some(&config_map("c", json!({})))).await;
    assert_eq!((code, body["reason"].as_str()), (409, Some("AlreadyExists")));

    // A stale resourceVersion on replace is a Conflict.
    let mut stale = created.clone();
    stale["data"] = json!({"x": "1"});
    let (code, _) = api.send(Method::PUT, &format!("{CM}/c"), Some("application/json"), Some(&stale)).await;
    assert_eq!(code, 200);
    let (code, body) = api.send(Method::PUT, &format!("{CM}/c"), Some("application/json"), Some(&stale)).await;
    assert_eq!((code, body["reason"].as_str()), (409, Some("Conflict")));

    let (code, body) = api.get("/apis/unknown.example/v1/namespaces/mx-a/widgets/w").await;
    assert_eq!((code, body["reason"].as_str()), (404, Some("NotFound")));
    let (code, _) = api.get("/healthz").await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn list_filters_by_label() {
    let fake = KubeFake::start().await;
    let api = Client::new(&fake);
    api.apply_ns("mx-a").await;
    for (name, app) in [("a", "x"), ("b", "y"), ("c", "x")] {
        let mut cm = config_map(name, json!({}));
        cm["metadata"]["labels"] = json!({"app": app});
        api.apply(&format!("{CM}/{name}"), "m", &cm).await;
    }
    let (code, list) = api.get(&format!("{CM}?labelSelector=app%3Dx")).await;
    assert_eq!(code, 200);
    assert_eq!((list["kind"].as_str(), list["apiVersion"].as_str()), (Some("ConfigMapList"), Some("v1")));
    assert!(list["metadata"]["resourceVersion"].is_string());
    let names: Vec<_> = list["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].clone()).collect();
    assert_eq!(names, vec![json!("a"), json!("c")]);
    let (_, list) = api.get(&format!("{CM}?labelSelector=app%21%3Dx")).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (_, list) = api.get("/api/v1/configmaps?labelSelector=app+in+%28x%2Cy%29").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    let (_, list) = api.get(&format!("{NS}?labelSelector=app%3Dmatrix")).await;
    assert_eq!((list["kind"].as_str(), list["items"].as_array().unwrap().len()), (Some("NamespaceList"), 1));
}

#[tokio::test]
async fn merge_patch_json_patch_and_status() {
    let fake = KubeFake::start().await;
    let api = Client::new(&fake);
    api.apply_ns("mx-a").await;
    api.apply(&format!("{CM}/c"), "w", &config_map("c", json!({"a": "1", "b": "2"}))).await;
    let (code, p) =
        api.send(Method::PATCH, &format!("{CM}/c"), Some(MERGE), Some(&json!({"data": {"a": null, "c": "3"}}))).await;
    assert_eq!((code, &p["data"]), (200, &json!({"b": "2", "c": "3"})));
    let ops = json!([{"op": "add", "path": "/data/d", "value": "4"}, {"op": "replace", "path": "/data/b", "value": "20"},
                     {"op": "remove", "path": "/data/c"}, {"op": "add", "path": "/metadata/labels", "value": {"x/y": "1"}}]);
    let (code, p) = api.send(Method::PATCH, &format!("{CM}/c"), Some(JSON_PATCH), Some(&ops)).await;
    assert_eq!(
        (code, &p["data"], &p["metadata"]["labels"]),
        (200, &json!({"b": "20", "d": "4"}), &json!({"x/y": "1"}))
    );
    let (code, _) = api
        .send(
            Method::PATCH,
            &format!("{CM}/c"),
            Some(JSON_PATCH),
            Some(&json!([{"op": "test", "path": "/data/b", "value": "2"}])),
        )
        .await;
    assert_eq!(code, 422);
    let (code, body) = api
        .send(Method::PATCH, &format!("{CM}/c"), Some("application/strategic-merge-patch+json"), Some(&json!({})))
        .await;
    assert_eq!((code, body["reason"].as_str()), (415, Some("UnsupportedMediaType")));
    let (code, _) = api.send(Method::PATCH, &format!("{CM}/missing"), Some(MERGE), Some(&json!({}))).await;
    assert_eq!(code, 404);

    // The main resource ignores status; the status subresource changes only status.
    fake.set_ready(false);
    api.apply(&format!("{STS}/synapse"), "w", &statefulset(1, json!({}))).await;
    let (_, s) =
        api.send(Method::PATCH, &format!("{STS}/synapse"), Some(MERGE), Some(&json!({"status": {"x": 1}}))).await;
    assert!(s["status"]["x"].is_null());
    let patch = json!({"spec": {"replicas": 5}, "status": {"x": 1}});
    let (code, s) = api.send(Method::PATCH, &format!("{STS}/synapse/status"), Some(MERGE), Some(&patch)).await;
    assert_eq!((code, &s["status"]["x"], &s["spec"]["replicas"]), (200, &json!(1), &json!(1)));
    let (code, s) = api.get(&format!("{STS}/synapse/status")).await;
    assert_eq!((code, &s["status"]["x"]), (200, &json!(1)));
}

#[tokio::test]
async fn namespace_delete_cascades_and_finishes() {
    let fake = KubeFake::start().await;
    let api = Client::new(&fake);
    api.apply_ns("mx-a").await;
    api.apply(&format!("{CM}/plain"), "w", &config_map("plain", json!({}))).await;
    let mut held = config_map("held", json!({}));
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    api.apply(&format!("{CM}/held"), "w", &held).await;

    let (code, ns) = api.send(Method::DELETE, &format!("{NS}/mx-a"), Some("application/json"), Some(&json!({}))).await;
    assert_eq!((code, &ns["status"]["phase"]), (202, &json!("Terminating")));
    assert!(ns["metadata"]["deletionTimestamp"].is_string());
    let (code, body) = api.apply(&format!("{CM}/new"), "w", &config_map("new", json!({}))).await;
    assert_eq!((code, body["reason"].as_str()), (403, Some("Forbidden")), "{body}");

    // The plain object goes, the finalized one waits for its finalizer, and so does the namespace.
    let f = &fake;
    let held_now = eventually(WAIT, "only the finalized object is left", || async move {
        let left = f.list_namespace("mx-a");
        (left.len() == 1).then(|| left[0].clone())
    })
    .await;
    assert_eq!(held_now["metadata"]["name"], "held");
    assert!(held_now["metadata"]["deletionTimestamp"].is_string());
    fake.reconcile();
    assert_eq!(fake.namespaces(), vec!["mx-a".to_owned()]);

    let (code, _) = api
        .send(Method::PATCH, &format!("{CM}/held"), Some(MERGE), Some(&json!({"metadata": {"finalizers": null}})))
        .await;
    assert_eq!(code, 200);
    assert!(fake.get("v1", "configmaps", Some("mx-a"), "held").is_none());
    eventually(WAIT, "the namespace is gone", || async move { f.namespaces().is_empty().then_some(()) }).await;
    let (code, _) = api.get(&format!("{NS}/mx-a")).await;
    assert_eq!(code, 404);

    // An object without finalizers goes at once (200), one with finalizers is marked (202).
    api.apply_ns("mx-b").await;
    let path = "/api/v1/namespaces/mx-b/secrets/s";
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "finalizers": ["x/y"]}});
    api.apply(path, "w", &secret).await;
    let (code, s) = api.send(Method::DELETE, path, None, None).await;
    assert_eq!((code, s["metadata"]["deletionTimestamp"].is_string()), (202, true));
    api.send(Method::PATCH, path, Some(MERGE), Some(&json!({"metadata": {"finalizers": []}}))).await;
    assert_eq!(api.get(path).await.0, 404);
}

#[tokio::test]
async fn stuck_namespace_stays_terminating() {
    let fake = KubeFake::start().await;
    let api = Client::new(&fake);
    api.apply_ns("mx-a").await;
    api.apply(&format!("{CM}/c"), "w", &config_map("c", json!({}))).await;
    fake.set_stuck("mx-a", true);
    api.send(Method::DELETE, &format!("{NS}/mx-a"), None, None).await;
    let f = &fake;
    eventually(WAIT, "the namespace's objects are gone", || async move {
        f.list_namespace("mx-a").is_empty().then_some(())
    })
    .await;
    fake.reconcile();
    let (code, ns) = api.get(&format!("{NS}/mx-a")).await;
    assert_eq!((code, &ns["status"]["phase"]), (200, &json!("Terminating")));
    fake.set_stuck("mx-a", false);
    eventually(WAIT, "the namespace is gone", || async move { f.namespaces().is_empty().then_some(()) }).await;
}

#[tokio::test]
async fn faults_are_served_then_service_resumes() {
    let fake = KubeFake::start().await;
    let api = Client::new(&fake);
    api.apply_ns("mx-a").await;
    api.apply(&format!("{CM}/c"), "w", &config_map("c", json!({}))).await;
    fake.reset_calls();

    fake.inject(Fault::status(500, "configmaps/c", 2).on(Method::GET));
    let (code, body) = api.get(&format!("{CM}/c")).await;
    assert_eq!((code, body["reason"].as_str(), body["kind"].as_str()), (500, Some("InternalError"), Some("Status")));
    // The method filter: an apply to the same path is served.
    assert_eq!(api.apply(&format!("{CM}/c"), "w", &config_map("c", json!({}))).await.0, 200);
    assert_eq!(api.get(&format!("{CM}/c")).await.0, 500);
    assert_eq!(api.get(&format!("{CM}/c")).await.0, 200);

    fake.inject(Fault::status(429, "/configmaps", 1));
    let resp = reqwest::get(format!("{}{CM}", fake.url())).await.unwrap();
    assert_eq!((resp.status().as_u16(), resp.headers()["retry-after"].to_str().unwrap()), (429, "1"));
    assert_eq!(api.get(CM).await.0, 200);

    fake.inject(Fault::status(409, "fieldManager=w", 1));
    let (code, body) = api.apply(&format!("{CM}/c"), "w", &config_map("c", json!({}))).await;
    assert_eq!((code, body["reason"].as_str()), (409, Some("Conflict")));

    let started = Instant::now();
    fake.inject(Fault::timeout(Duration::from_millis(200), "configmaps/c", 1));
    let (code, body) = api.get(&format!("{CM}/c")).await;
    assert_eq!((code, body["reason"].as_str()), (504, Some("Timeout")));
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(api.get(&format!("{CM}/c")).await.0, 200);

    // Faulted calls count: the client made them.
    let calls = fake.calls();
    assert_eq!((calls.get, calls.list, calls.apply, calls.writes()), (5, 2, 2, 2));
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![500, 200, 500, 200, 429, 200, 409, 504, 200]);
}

#[tokio::test]
async fn calls_by_verb_and_latency() {
    let fake = KubeFake::start().await;
    let api = Client::new(&fake);
    api.apply_ns("mx-a").await;
    api.send(Method::POST, CM, Some("application/json"), Some(&config_map("c", json!({})))).await;
    api.get(&format!("{CM}/c")).await;
    api.get(CM).await;
    api.send(Method::PATCH, &format!("{CM}/c"), Some(MERGE), Some(&json!({"data": {"a": "b"}}))).await;
    api.send(Method::DELETE, &format!("{CM}/c"), None, None).await;
    let c = fake.calls();
    assert_eq!((c.apply, c.create, c.get, c.list, c.patch, c.delete, c.writes()), (1, 1, 1, 1, 1, 1, 4));
    fake.reset_calls();
    assert_eq!((fake.calls().total(), fake.requests().len()), (0, 0));

    fake.set_latency(Duration::from_millis(100));
    let started = Instant::now();
    api.get(CM).await;
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn controller_makes_workloads_and_certificates_ready() {
    let fake = KubeFake::start().await;
    let api = Client::new(&fake);
    api.apply_ns("mx-a").await;
    api.apply(&format!("{STS}/synapse"), "w", &statefulset(2, json!({}))).await;
    let ingress = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "synapse", "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"}},
        "spec": {"tls": [{"hosts": ["a.example"], "secretName": "synapse-tls"}], "rules": []}});
    api.apply("/apis/networking.k8s.io/v1/namespaces/mx-a/ingresses/synapse", "w", &ingress).await;
    let f = &fake;
    eventually(WAIT, "the StatefulSet is ready", || async move {
        let s = f.get("apps/v1", "statefulsets", Some("mx-a"), "synapse")?;
        let st = &s["status"];
        (st["readyReplicas"] == 2
            && st["availableReplicas"] == 2
            && st["observedGeneration"] == s["metadata"]["generation"])
            .then_some(())
    })
    .await;
    let cert = eventually(WAIT, "the Certificate is ready", || async move {
        let c = f.get("cert-manager.io/v1", "certificates", Some("mx-a"), "synapse-tls")?;
        (c["status"]["conditions"][0]["status"] == "True").then_some(c)
    })
    .await;
    assert_eq!(cert["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(cert["spec"]["dnsNames"], json!(["a.example"]));
    assert_eq!(cert["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    // Through the API too, as the worker reads it.
    let (code, c) = api.get("/apis/cert-manager.io/v1/namespaces/mx-a/certificates/synapse-tls").await;
    assert_eq!((code, &c["status"]["conditions"][0]["status"]), (200, &json!("True")));

    // CNPG: a Backup of an existing cluster completes.
    let cluster = json!({"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster", "metadata": {"name": "synapse-db"},
        "spec": {"instances": 1}});
    api.apply("/apis/postgresql.cnpg.io/v1/namespaces/mx-a/clusters/synapse-db", "w", &cluster).await;
    let backup = json!({"apiVersion": "postgresql.cnpg.io/v1", "kind": "Backup", "metadata": {"name": "final-backup"},
        "spec": {"cluster": {"name": "synapse-db"}, "method": "barmanObjectStore"}});
    api.send(
        Method::POST,
        "/apis/postgresql.cnpg.io/v1/namespaces/mx-a/backups",
        Some("application/json"),
        Some(&backup),
    )
    .await;
    eventually(WAIT, "the Backup completes", || async move {
        let b = f.get("postgresql.cnpg.io/v1", "backups", Some("mx-a"), "final-backup")?;
        (b["status"]["phase"] == "completed").then_some(())
    })
    .await;

    // Readiness off: a scaled StatefulSet reports its replicas but none ready; the certificate
    // is not Ready.
    fake.set_ready(false);
    api.apply(&format!("{STS}/synapse"), "w", &statefulset(3, json!({}))).await;
    eventually(WAIT, "the StatefulSet reports 3 replicas, none ready", || async move {
        let s = f.get("apps/v1", "statefulsets", Some("mx-a"), "synapse")?;
        (s["status"]["replicas"] == 3 && s["status"]["readyReplicas"] == 0 && s["status"]["observedGeneration"] == 2)
            .then_some(())
    })
    .await;
    fake.reconcile();
    let c = fake.get("cert-manager.io/v1", "certificates", Some("mx-a"), "synapse-tls").unwrap();
    assert_eq!(c["status"]["conditions"][0]["status"], "False");
    let sts = fake.field_managers("apps/v1", "statefulsets", Some("mx-a"), "synapse");
    assert!(
        sts.iter().any(|m| m.manager == "kube-controller-manager" && m.subresource.as_deref() == Some("status")),
        "{sts:?}"
    );
}

/// The calls the worker makes, through kube-rs 5 as it builds its client: typed and dynamic
/// objects, apply, get_opt, list by label, delete, and API errors.
#[tokio::test]
async fn kube_rs_client_against_the_fake() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};

    let fake = KubeFake::start().await;
    let mut config = kube::Config::new(fake.url().parse().unwrap());
    config.default_retry = false;
    let client = kube::Client::try_from(config).unwrap();
    let ns_type = ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "Namespace"));
    let namespaces: Api<DynamicObject> = Api::all_with(client.clone(), &ns_type);
    let apply = PatchParams::apply("entitlements-worker").force();

    assert!(namespaces.get_opt("mx-k").await.unwrap().is_none());
    let ns = namespaces.patch("mx-k", &apply, &Patch::Apply(namespace("mx-k"))).await.unwrap();
    assert_eq!(ns.data["status"]["phase"], "Active");
    assert_eq!(ns.metadata.generation, Some(1));

    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "mx-k");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("conf".into());
    cm.metadata.labels = Some([("app".to_owned(), "synapse".to_owned())].into());
    cm.data = Some([("homeserver.yaml".to_owned(), "server_name: a".to_owned())].into());
    let applied = maps.patch("conf", &apply, &Patch::Apply(&cm)).await.unwrap();
    assert_eq!(applied.data, cm.data);
    let listed = maps.list(&ListParams::default().labels("app=synapse")).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].metadata.resource_version, applied.metadata.resource_version);
    let managers = applied.metadata.managed_fields.unwrap();
    assert_eq!(
        (managers[0].manager.as_deref(), managers[0].operation.as_deref()),
        (Some("entitlements-worker"), Some("Apply"))
    );
    let target = &fake.requests().last().unwrap().target.clone();
    assert!(target.starts_with("/api/v1/namespaces/mx-k/configmaps?"), "{target}");
    let apply_req =
        fake.requests().into_iter().find(|r| r.method == Method::PATCH && r.target.contains("/conf")).unwrap();
    assert_eq!(
        apply_req.target,
        "/api/v1/namespaces/mx-k/configmaps/conf?&force=true&fieldManager=entitlements-worker"
    );

    // Errors arrive as kube::Error::Api with the code and reason.
    fake.inject(Fault::status(429, "configmaps/conf", 1));
    match maps.get("conf").await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (429, "TooManyRequests")),
        other => panic!("expected a 429, got {other:?}"),
    }
    let sts_type = ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", "StatefulSet"));
    let sts: Api<DynamicObject> = Api::namespaced_with(client.clone(), "mx-k", &sts_type);
    match sts.get("missing").await {
        Err(kube::Error::Api(s)) => assert!(s.is_not_found(), "{s:?}"),
        other => panic!("expected a 404, got {other:?}"),
    }

    // Deleting the namespace: the object back, being deleted; then it is gone.
    let deleted = namespaces.delete("mx-k", &DeleteParams::default()).await.unwrap();
    let ns = deleted.left().expect("the namespace, being deleted");
    assert!(ns.metadata.deletion_timestamp.is_some());
    let api = &namespaces;
    eventually(
        WAIT,
        "the namespace is gone",
        || async move { api.get_opt("mx-k").await.unwrap().is_none().then_some(()) },
    )
    .await;
}
