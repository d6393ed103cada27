//! The applier against a mock API server (tower-test): the exact calls it makes.
use super::*;
use crate::provision::store::tests::claimed;
use http::{Request, Response};
use kube::client::Body;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Mutex;
use tower_test::mock;

const APPLY_QUERY: &str = "?&force=true&fieldManager=entitlements-worker";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    method: String,
    uri: String,
    content_type: Option<String>,
}

/// A tiny API server: objects by URL path; GET, server-side apply (stores the applied
/// object, keeping a status it had), DELETE (marks the object as being deleted).
#[derive(Default)]
struct Fake {
    objects: BTreeMap<String, Value>,
    calls: Vec<Call>,
    /// Answer every PATCH with this status code.
    refuse_patch: Option<u16>,
}

/// Written out here, not taken from the code under test.
fn plural(kind: &str) -> &'static str {
    match kind {
        "Namespace" => "namespaces",
        "ResourceQuota" => "resourcequotas",
        "LimitRange" => "limitranges",
        "ServiceAccount" => "serviceaccounts",
        "NetworkPolicy" => "networkpolicies",
        "Secret" => "secrets",
        "ConfigMap" => "configmaps",
        "PersistentVolumeClaim" => "persistentvolumeclaims",
        "Service" => "services",
        "StatefulSet" => "statefulsets",
        "Ingress" => "ingresses",
        "Cluster" => "clusters",
        "Certificate" => "certificates",
        "Backup" => "backups",
        other => panic!("no plural for {other}"),
    }
}

fn path_of(object: &Value) -> String {
    let api_version = object["apiVersion"].as_str().unwrap();
    let kind = object["kind"].as_str().unwrap();
    let name = object["metadata"]["name"].as_str().unwrap();
    let prefix = if api_version == "v1" { "/api/v1".to_owned() } else { format!("/apis/{api_version}") };
    match object["metadata"]["namespace"].as_str() {
        None => format!("{prefix}/{}/{name}", plural(kind)),
        Some(ns) => format!("{prefix}/namespaces/{ns}/{}/{name}", plural(kind)),
    }
}

fn status(code: u16, reason: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
                      "message": format!("the fake says {reason}")});
    Response::builder().status(code).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap()
}

fn ok(object: &Value) -> Response<Body> {
    Response::builder().status(200).body(Body::from(serde_json::to_vec(object).unwrap())).unwrap()
}

impl Fake {
    fn with(objects: impl IntoIterator<Item = Value>) -> Fake {
        Fake { objects: objects.into_iter().map(|o| (path_of(&o), o)).collect(), ..Fake::default() }
    }

    fn answer(&mut self, request: &Request<Body>, body: &[u8]) -> Response<Body> {
        let path = request.uri().path().to_owned();
        self.calls.push(Call {
            method: request.method().to_string(),
            uri: request.uri().to_string(),
            content_type: request.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()),
        });
        match request.method().as_str() {
            "GET" => match self.objects.get(&path) {
                Some(o) => ok(o),
                None => status(404, "NotFound"),
            },
            "PATCH" => {
                if let Some(code) = self.refuse_patch {
                    return status(code, "Refused");
                }
                let mut applied: Value = serde_json::from_slice(body).unwrap();
                assert_eq!(path_of(&applied), path, "the object is applied at its own URL");
                if let Some(old_status) = self.objects.get(&path).map(|o| o["status"].clone()) {
                    if !old_status.is_null() {
                        applied["status"] = old_status;
                    }
                }
                self.objects.insert(path, applied.clone());
                ok(&applied)
            }
            "DELETE" => match self.objects.get_mut(&path) {
                Some(o) => {
                    o["metadata"]["deletionTimestamp"] = json!(k8s_openapi::jiff::Timestamp::now().to_string());
                    ok(o)
                }
                None => status(404, "NotFound"),
            },
            other => panic!("unexpected {other} {path}"),
        }
    }

    fn writes(&self) -> Vec<&Call> {
        self.calls.iter().filter(|c| c.method != "GET").collect()
    }
}

fn settings() -> Settings {
    Settings {
        platform: render::Platform::default(),
        requeue_after: Duration::from_secs(2),
        stuck_terminating_after: Duration::from_secs(600),
    }
}

/// Converge `server` against `fake`; the outcome and the fake afterwards.
async fn converge(fake: Fake, server: &Claimed) -> (Result<Report>, Fake) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let state = Arc::new(Mutex::new(fake));
    let api = {
        let state = state.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap();
                let request = Request::from_parts(parts, Body::empty());
                let response = state.lock().unwrap().answer(&request, &bytes);
                send.send_response(response);
            }
        })
    };
    let cluster = Cluster::new(Client::new(service, "default"), settings());
    let outcome = cluster.converge(server).await;
    drop(cluster);
    api.await.unwrap();
    let fake = Arc::try_unwrap(state).ok().unwrap().into_inner().unwrap();
    (outcome, fake)
}

/// The objects the render gives `server` as JSON, as a converged cluster holds them.
fn rendered(server: &Claimed, desired: Desired) -> Vec<Value> {
    let spec = server.spec(desired, Observed::default()).unwrap();
    render::render(&settings().platform, &spec).unwrap().objects.iter().map(Object::to_json).collect()
}

fn ready_status(mut objects: Vec<Value>) -> Vec<Value> {
    for o in &mut objects {
        if o["kind"] == "StatefulSet" {
            o["status"] = json!({"replicas": 1, "readyReplicas": 1});
        }
    }
    objects.push(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": "synapse-tls", "namespace": "mx-alpha"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }));
    objects
}

fn condition<'a>(report: &'a Report, type_: &str) -> Option<&'a Condition> {
    report.conditions.iter().find(|c| c.type_ == type_)
}

#[tokio::test]
async fn a_new_server_is_applied_object_by_object_with_one_field_manager() {
    let server = claimed("running");
    let (outcome, fake) = converge(Fake::default(), &server).await;
    let report = outcome.unwrap();
    assert_eq!(report.phase, Phase::Provisioning);
    assert_eq!(report.requeue_after, Some(Duration::from_secs(2)));
    assert_eq!(condition(&report, "Ready").unwrap().reason, "StatefulSetNotReady");
    assert_eq!(report.applied_resources, server.resources);

    // One GET (the namespace is missing, so nothing in it is read), then one apply per object.
    let expected = rendered(&server, Desired::Running);
    assert_eq!(
        fake.calls[0],
        Call { method: "GET".into(), uri: "/api/v1/namespaces/mx-alpha".into(), content_type: None }
    );
    let writes = fake.writes();
    assert_eq!(writes.len(), expected.len(), "{writes:#?}");
    for (call, object) in writes.iter().zip(&expected) {
        assert_eq!(call.method, "PATCH");
        assert_eq!(call.uri, format!("{}{APPLY_QUERY}", path_of(object)));
        assert_eq!(call.content_type.as_deref(), Some("application/apply-patch+yaml"));
    }
    assert_eq!(writes[0].uri, "/api/v1/namespaces/mx-alpha?&force=true&fieldManager=entitlements-worker");
    let uris: Vec<&str> = writes.iter().map(|c| c.uri.as_str()).collect();
    for uri in [
        "/api/v1/namespaces/mx-alpha/resourcequotas/server-quota?&force=true&fieldManager=entitlements-worker",
        "/apis/networking.k8s.io/v1/namespaces/mx-alpha/networkpolicies/default-deny?&force=true&fieldManager=entitlements-worker",
        "/apis/apps/v1/namespaces/mx-alpha/statefulsets/synapse?&force=true&fieldManager=entitlements-worker",
        "/apis/postgresql.cnpg.io/v1/namespaces/mx-alpha/clusters/synapse-db?&force=true&fieldManager=entitlements-worker",
        "/apis/networking.k8s.io/v1/namespaces/mx-alpha/ingresses/synapse?&force=true&fieldManager=entitlements-worker",
    ] {
        assert!(uris.contains(&uri), "{uri} not in {uris:#?}");
    }
    assert_eq!(fake.calls.len(), 1 + expected.len(), "no other call: {:#?}", fake.calls);
}

#[tokio::test]
async fn a_converged_server_costs_no_write_call() {
    let server = claimed("running");
    let objects = rendered(&server, Desired::Running);
    let n = objects.len();
    let (outcome, fake) = converge(Fake::with(ready_status(objects)), &server).await;
    let report = outcome.unwrap();
    assert_eq!(report.phase, Phase::Ready, "{report:?}");
    assert_eq!(report.requeue_after, None);
    assert_eq!(condition(&report, "Ready").unwrap().status, "True");
    assert!(fake.writes().is_empty(), "{:#?}", fake.writes());
    // Each object read once, and the certificate.
    assert_eq!(fake.calls.len(), n + 1, "{:#?}", fake.calls);
}

#[tokio::test]
async fn drift_is_applied_and_only_there() {
    let server = claimed("running");
    let mut objects = ready_status(rendered(&server, Desired::Running));
    let sts = objects.iter_mut().find(|o| o["kind"] == "StatefulSet").unwrap();
    sts["spec"]["replicas"] = json!(0);
    let (outcome, fake) = converge(Fake::with(objects), &server).await;
    outcome.unwrap();
    let writes = fake.writes();
    assert_eq!(writes.len(), 1, "{writes:#?}");
    assert_eq!(writes[0].uri, format!("/apis/apps/v1/namespaces/mx-alpha/statefulsets/synapse{APPLY_QUERY}"));
}

#[tokio::test]
async fn suspending_scales_down_and_hibernates_the_database() {
    let server = claimed("suspended");
    let running = ready_status(rendered(&claimed("running"), Desired::Running));
    let (outcome, fake) = converge(Fake::with(running), &server).await;
    let report = outcome.unwrap();
    assert_eq!(report.phase, Phase::Suspended);
    let written: Vec<&str> = fake.writes().iter().map(|c| c.uri.split('?').next().unwrap()).collect();
    assert_eq!(
        written,
        [
            "/apis/postgresql.cnpg.io/v1/namespaces/mx-alpha/clusters/synapse-db",
            "/apis/apps/v1/namespaces/mx-alpha/statefulsets/synapse",
        ],
        "only what suspending changes"
    );
    let sts = &fake.objects["/apis/apps/v1/namespaces/mx-alpha/statefulsets/synapse"];
    assert_eq!(sts["spec"]["replicas"], 0);
    let db = &fake.objects["/apis/postgresql.cnpg.io/v1/namespaces/mx-alpha/clusters/synapse-db"];
    assert_eq!(db["metadata"]["annotations"]["cnpg.io/hibernation"], "on");
}

fn with_plan(desired: &str, resources: Value, applied: Value) -> Claimed {
    let mut server = claimed(desired);
    server.resources = Some(resources);
    server.applied_resources = Some(applied);
    server
}

fn position(fake: &Fake, part: &str) -> usize {
    fake.writes().iter().position(|c| c.uri.contains(part)).unwrap_or_else(|| panic!("no write to {part}"))
}

#[tokio::test]
async fn an_upgrade_raises_the_quota_before_the_workload() {
    let small = json!({"cpu": "1", "memory": "2Gi", "data_storage": "20Gi", "media_storage": "100Gi"});
    let large = json!({"cpu": "2", "memory": "4Gi", "data_storage": "20Gi", "media_storage": "100Gi"});
    let before = with_plan("running", small.clone(), small.clone());
    let (outcome, fake) =
        converge(Fake::with(rendered(&before, Desired::Running)), &with_plan("running", large, small)).await;
    outcome.unwrap();
    assert!(position(&fake, "resourcequotas/server-quota") < position(&fake, "statefulsets/synapse"));
}

#[tokio::test]
async fn a_downgrade_shrinks_the_workload_first_and_keeps_the_larger_volume() {
    let large = json!({"cpu": "2", "memory": "4Gi", "data_storage": "50Gi", "media_storage": "100Gi"});
    let small = json!({"cpu": "1", "memory": "2Gi", "data_storage": "20Gi", "media_storage": "100Gi"});
    let before = with_plan("running", large.clone(), large.clone());
    let (outcome, fake) =
        converge(Fake::with(rendered(&before, Desired::Running)), &with_plan("running", small, large)).await;
    let report = outcome.unwrap();
    assert!(position(&fake, "statefulsets/synapse") < position(&fake, "resourcequotas/server-quota"));
    assert!(!fake.writes().iter().any(|c| c.uri.contains("persistentvolumeclaims")), "no PVC shrinks");
    let pvc = &fake.objects["/api/v1/namespaces/mx-alpha/persistentvolumeclaims/synapse-data"];
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "50Gi");
    let kept = condition(&report, "VolumeKept").expect("the kept volume is reported");
    assert!(kept.message.contains("synapse-data kept at 50Gi"), "{kept:?}");
}

#[tokio::test]
async fn refused_calls_are_errors_for_the_database_to_retry() {
    let fake = Fake { refuse_patch: Some(429), ..Fake::default() };
    let (outcome, _) = converge(fake, &claimed("running")).await;
    let err = outcome.unwrap_err();
    assert!(matches!(err, Error::Kubernetes(_)), "{err:?}");
    assert!(err.to_string().contains("429"), "{err}");
}

#[tokio::test]
async fn termination_backs_up_then_deletes_then_waits_for_the_namespace() {
    let server = claimed("terminated");
    let objects = rendered(&claimed("running"), Desired::Running);

    // 1. The database exists: the final backup is applied and waited for.
    let (outcome, fake) = converge(Fake::with(objects.clone()), &server).await;
    let report = outcome.unwrap();
    assert_eq!(report.phase, Phase::Terminating);
    assert_eq!(condition(&report, "FinalBackup").unwrap().reason, "BackupRunning");
    let writes = fake.writes();
    assert_eq!(writes.len(), 1, "{writes:#?}");
    assert_eq!(
        writes[0].uri,
        format!("/apis/postgresql.cnpg.io/v1/namespaces/mx-alpha/backups/final-backup{APPLY_QUERY}")
    );
    let backup = &fake.objects["/apis/postgresql.cnpg.io/v1/namespaces/mx-alpha/backups/final-backup"];
    assert_eq!(backup["spec"], json!({"cluster": {"name": "synapse-db"}, "method": "barmanObjectStore"}));

    // 2. Completed: the namespace is deleted.
    let mut objects = fake.objects;
    objects.get_mut("/apis/postgresql.cnpg.io/v1/namespaces/mx-alpha/backups/final-backup").unwrap()["status"] =
        json!({"phase": "completed"});
    let (outcome, fake) = converge(Fake { objects, ..Fake::default() }, &server).await;
    assert_eq!(outcome.unwrap().phase, Phase::Terminating);
    let writes = fake.writes();
    assert_eq!(writes.len(), 1, "{writes:#?}");
    assert_eq!((writes[0].method.as_str(), writes[0].uri.as_str()), ("DELETE", "/api/v1/namespaces/mx-alpha?"));

    // 3. Still there (deleting, recently): terminating, nothing written.
    let (outcome, again) = converge(Fake { objects: fake.objects.clone(), ..Fake::default() }, &server).await;
    let report = outcome.unwrap();
    assert_eq!(report.phase, Phase::Terminating);
    assert!(condition(&report, "NamespaceStuckTerminating").is_none());
    assert!(again.writes().is_empty());

    // 4. Deleting for too long: reported, and finalizers are left alone.
    let mut objects = fake.objects;
    let ns = objects.get_mut("/api/v1/namespaces/mx-alpha").unwrap();
    ns["metadata"]["deletionTimestamp"] = json!("2020-01-01T00:00:00Z");
    ns["spec"] = json!({"finalizers": ["kubernetes"]});
    let (outcome, stuck) = converge(Fake { objects, ..Fake::default() }, &server).await;
    let report = outcome.unwrap();
    assert_eq!(report.phase, Phase::Terminating);
    assert_eq!(condition(&report, "NamespaceStuckTerminating").unwrap().status, "True");
    assert!(stuck.writes().is_empty());

    // 5. Gone: terminated.
    let (outcome, gone) = converge(Fake::default(), &server).await;
    assert_eq!(outcome.unwrap().phase, Phase::Terminated);
    assert_eq!(gone.calls.len(), 1);
}

#[tokio::test]
async fn a_hibernated_database_is_woken_for_its_final_backup() {
    let server = claimed("terminated");
    let objects = rendered(&claimed("suspended"), Desired::Suspended);
    let (outcome, fake) = converge(Fake::with(objects), &server).await;
    assert_eq!(outcome.unwrap().phase, Phase::Terminating);
    let db = &fake.objects["/apis/postgresql.cnpg.io/v1/namespaces/mx-alpha/clusters/synapse-db"];
    assert_eq!(db["metadata"]["annotations"]["cnpg.io/hibernation"], "off");
    assert!(position(&fake, "clusters/synapse-db") < position(&fake, "backups/final-backup"));
}

#[tokio::test]
async fn bad_rows_fail_before_any_api_call() {
    let mut bad_resources = claimed("running");
    bad_resources.resources = Some(json!({"cpu": "-1"}));
    let mut bad_name = claimed("running");
    bad_name.namespace = "Not_A_Namespace".into();
    let mut no_secrets = claimed("suspended");
    no_secrets.secrets = crate::provision::store::SecretsJson(None);
    for server in [bad_resources, bad_name, no_secrets] {
        let (outcome, fake) = converge(Fake::default(), &server).await;
        assert!(matches!(outcome.unwrap_err(), Error::ProvisionInput { .. }));
        assert!(fake.calls.is_empty());
    }
}

#[test]
fn every_rendered_kind_maps_to_its_api_path() {
    for object in rendered(&claimed("running"), Desired::Running) {
        let r = api_resource(object["apiVersion"].as_str().unwrap(), object["kind"].as_str().unwrap());
        assert_eq!(r.plural, plural(object["kind"].as_str().unwrap()));
    }
}
