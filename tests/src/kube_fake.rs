//! A fake Kubernetes API server for the provisioning tests: real HTTP on 127.0.0.1 (no auth),
//! so the worker process and kube-rs talk to it as to a cluster. Objects are JSON, stored by
//! (group/version, plural, namespace, name) with resourceVersion, uid, creationTimestamp,
//! generation and managedFields.
//!
//! Emulated: GET, LIST (label selectors), POST, PUT, server-side apply (create if missing,
//! field managers, conflicts without `force`, fields a manager stops applying removed), merge
//! patch, JSON patch, DELETE with finalizers and namespace cascade, the `status` subresource,
//! `Status` error bodies, 404/403 for objects in a missing/terminating namespace. A controller
//! task makes StatefulSets, PVCs and CNPG Clusters ready, creates cert-manager Certificates from
//! annotated Ingresses and marks them Ready, completes CNPG Backups and finishes namespace
//! deletion. Tests can count calls, read the request log, inject faults and latency.
//!
//! Not emulated: watches, dryRun (both 400), pagination (LIST returns everything), strategic
//! merge patch (415), deletecollection (405), list merge keys in apply (lists are atomic),
//! schema validation and defaulting, garbage collection by ownerReferences (only a namespace
//! delete removes what is in it), discovery (`/api`, `/apis`; `/version` answers), auth.
mod controller;
mod patch;
mod resource;
mod server;
mod store;

pub use axum::http::Method;

use resource::Key;
use serde_json::Value;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use store::State;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// API calls received, by verb (faulted ones included: the client made them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    pub get: usize,
    pub list: usize,
    pub create: usize,
    /// PATCH as server-side apply.
    pub apply: usize,
    /// PATCH as merge or JSON patch.
    pub patch: usize,
    /// PUT.
    pub replace: usize,
    pub delete: usize,
    /// Anything else (unknown paths, `/version`).
    pub other: usize,
}

impl Calls {
    /// Every call that may change something: create, apply, patch, replace, delete.
    pub fn writes(&self) -> usize {
        self.create + self.apply + self.patch + self.replace + self.delete
    }

    pub fn total(&self) -> usize {
        self.writes() + self.get + self.list + self.other
    }

    fn count(&mut self, verb: server::Verb) {
        use server::Verb::*;
        *match verb {
            Get => &mut self.get,
            List => &mut self.list,
            Create => &mut self.create,
            Apply => &mut self.apply,
            Patch => &mut self.patch,
            Replace => &mut self.replace,
            Delete => &mut self.delete,
            Other => &mut self.other,
        } += 1;
    }
}

/// One request as received, with the status it was answered with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: Method,
    /// Path and query, as sent.
    pub target: String,
    pub content_type: Option<String>,
    pub status: u16,
}

/// The next `times` requests whose method matches (any when None) and whose path and query
/// contain `path_contains` get `kind` instead of being served.
#[derive(Clone, Debug)]
pub struct Fault {
    pub method: Option<Method>,
    pub path_contains: String,
    pub kind: FaultKind,
    pub times: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer with this code and a `Status` body (429 also carries `Retry-After: 1`).
    Status(u16),
    /// Hang this long, then answer 504.
    Timeout(Duration),
}

impl Fault {
    pub fn status(code: u16, path_contains: &str, times: usize) -> Fault {
        Fault { method: None, path_contains: path_contains.into(), kind: FaultKind::Status(code), times }
    }

    pub fn timeout(after: Duration, path_contains: &str, times: usize) -> Fault {
        Fault { method: None, path_contains: path_contains.into(), kind: FaultKind::Timeout(after), times }
    }

    pub fn on(mut self, method: Method) -> Fault {
        self.method = Some(method);
        self
    }
}

/// One entry of an object's managedFields: who wrote which fields (dotted paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldManager {
    pub manager: String,
    /// "Apply" or "Update".
    pub operation: String,
    pub subresource: Option<String>,
    pub fields: Vec<String>,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    wake: Notify,
}

impl Shared {
    /// Never held across an await; a panicking test thread does not poison the others' view.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fake API server and its controller; both stop when it is dropped.
pub struct KubeFake {
    url: String,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeFake {
    /// Listen on 127.0.0.1 on a free port and start the controller (on every write and every
    /// 50 ms).
    pub async fn start() -> KubeFake {
        let shared = Arc::new(Shared { state: Mutex::new(State::new()), wake: Notify::new() });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("a bound address"));
        let app = axum::Router::new().fallback(server::handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the fake API server");
        });
        let s = shared.clone();
        let controller = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = s.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                s.lock().reconcile();
            }
        });
        KubeFake { url, shared, tasks: vec![server, controller] }
    }

    /// `http://127.0.0.1:PORT`, for `kube::Config::new` or `KUBERNETES_SERVICE_HOST`-less setups.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// One object, e.g. `get("apps/v1", "statefulsets", Some("mx-a"), "synapse")`.
    pub fn get(&self, api_version: &str, plural: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.shared.lock().get(&Key::new(api_version, plural, namespace, name)).ok()
    }

    /// Objects of one kind; `namespace` None: all namespaces (or the cluster-scoped ones).
    pub fn list(&self, api_version: &str, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        let list = self.shared.lock().list(api_version, plural, namespace, None);
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// Every object in a namespace, whatever its kind.
    pub fn list_namespace(&self, ns: &str) -> Vec<Value> {
        let st = self.shared.lock();
        st.in_namespace(ns).iter().filter_map(|k| st.get(k).ok()).collect()
    }

    /// The namespaces that exist (Terminating ones included).
    pub fn namespaces(&self) -> Vec<String> {
        self.shared.lock().keys("v1", "namespaces").into_iter().map(|k| k.name).collect()
    }

    pub fn calls(&self) -> Calls {
        self.shared.lock().calls
    }

    /// Zero the counters and clear the request log.
    pub fn reset_calls(&self) {
        let mut st = self.shared.lock();
        st.calls = Calls::default();
        st.requests.clear();
    }

    /// Every request since the start or the last `reset_calls`, in the order they finished.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// Faults are tried in the order they were injected; the first that matches is used.
    pub fn inject(&self, fault: Fault) {
        self.shared.lock().faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Delay every request by `latency` (before it is served or faulted).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// A stuck namespace stays Terminating (its objects still go) until unstuck.
    pub fn set_stuck(&self, ns: &str, stuck: bool) {
        let mut st = self.shared.lock();
        if stuck {
            st.stuck.insert(ns.into());
        } else {
            st.stuck.remove(ns);
        }
        st.touch_all();
        drop(st);
        self.shared.wake.notify_one();
    }

    /// Off: StatefulSets report 0 ready replicas, Certificates Ready=False, CNPG Clusters 0
    /// ready instances (until it is on again).
    pub fn set_ready(&self, ready: bool) {
        let mut st = self.shared.lock();
        st.ready = ready;
        st.touch_all();
        drop(st);
        self.shared.wake.notify_one();
    }

    /// Run the controller now over what changed (it also runs by itself after writes and every
    /// 50 ms).
    pub fn reconcile(&self) {
        self.shared.lock().reconcile();
    }

    /// The global resourceVersion counter (bumped by every change).
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// An object's field managers; empty when it does not exist.
    pub fn field_managers(
        &self,
        api_version: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Vec<FieldManager> {
        let st = self.shared.lock();
        let Some(stored) = st.objects.get(&Key::new(api_version, plural, namespace, name)) else { return vec![] };
        stored
            .owners
            .iter()
            .map(|(k, o)| FieldManager {
                manager: k.manager.clone(),
                operation: if k.apply { "Apply" } else { "Update" }.into(),
                subresource: k.status.then(|| "status".into()),
                fields: o.fields.iter().map(|p| p.join(".")).collect(),
            })
            .collect()
    }
}

impl Drop for KubeFake {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
