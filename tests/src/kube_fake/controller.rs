//! The fake controllers: what the StatefulSet controller, cert-manager (ingress-shim and
//! issuing), CloudNativePG, volume provisioning and the namespace controller would do. Each
//! pass looks only at the objects changed since the last one, so a store of thousands of
//! converged objects costs nothing per tick. Their writes bump resourceVersion like any other
//! but are not API calls.
use super::patch::merge_patch;
use super::resource::Key;
use super::store::{deleting, finalizers, now, State};
use serde_json::{json, Value};

/// Does `have` already hold every field of `want`?
fn holds(have: &Value, want: &Value) -> bool {
    match want {
        Value::Object(w) => w.iter().all(|(k, v)| holds(have.get(k).unwrap_or(&Value::Null), v)),
        _ => have == want,
    }
}

impl State {
    /// Run passes until nothing is left to look at (a pass's own writes make more: a
    /// Certificate created from an Ingress gets its status in the next).
    pub(crate) fn reconcile(&mut self) {
        for _ in 0..16 {
            let dirty = std::mem::take(&mut self.dirty);
            if dirty.is_empty() {
                break;
            }
            for key in dirty {
                let Some(obj) = self.objects.get(&key).map(|s| &s.obj) else { continue };
                let status = match (key.gv.as_str(), key.plural.as_str()) {
                    ("apps/v1", "statefulsets") => self.statefulset(obj),
                    ("cert-manager.io/v1", "certificates") => self.certificate(obj),
                    ("v1", "persistentvolumeclaims") => Some(json!({"phase": "Bound",
                        "accessModes": obj["spec"]["accessModes"],
                        "capacity": {"storage": obj["spec"]["resources"]["requests"]["storage"]}})),
                    ("postgresql.cnpg.io/v1", "clusters") => self.cnpg_cluster(obj),
                    ("postgresql.cnpg.io/v1", "backups") => self.cnpg_backup(&key, obj),
                    ("networking.k8s.io/v1", "ingresses") => {
                        self.ingress_shim(&key);
                        None
                    }
                    ("v1", "namespaces") => {
                        self.namespace(&key);
                        None
                    }
                    _ => None,
                };
                if let Some(status) = status {
                    self.set_status(&key, status);
                }
            }
        }
    }

    /// Merge `status` into the object's status through the status subresource, as the
    /// controller in charge of that kind, unless it is there already.
    fn set_status(&mut self, key: &Key, status: Value) {
        let Some(stored) = self.objects.get(key) else { return };
        if holds(&stored.obj["status"], &status) {
            return;
        }
        let manager = match key.plural.as_str() {
            "certificates" => "cert-manager-certificates-issuing",
            "clusters" | "backups" => "cloudnative-pg",
            _ => "kube-controller-manager",
        };
        let mut obj = stored.obj.clone();
        merge_patch(&mut obj["status"], &status);
        self.update(key, obj, manager, true);
    }

    fn statefulset(&self, obj: &Value) -> Option<Value> {
        let replicas = obj["spec"]["replicas"].as_i64().unwrap_or(1);
        let ready = if self.ready { replicas } else { 0 };
        Some(json!({"replicas": replicas, "readyReplicas": ready, "availableReplicas": ready,
            "currentReplicas": replicas, "updatedReplicas": replicas,
            "observedGeneration": obj["metadata"]["generation"]}))
    }

    /// cert-manager issuing: every Certificate Ready (or not, while readiness is off).
    fn certificate(&self, obj: &Value) -> Option<Value> {
        let status = if self.ready { "True" } else { "False" };
        let current = &obj["status"]["conditions"];
        if current.as_array().is_some_and(|c| c.len() == 1 && c[0]["status"] == status) {
            return None;
        }
        let (reason, message) = if self.ready {
            ("Ready", "Certificate is up to date and has not expired")
        } else {
            ("Issuing", "Issuing certificate as Secret does not exist")
        };
        Some(json!({"conditions": [{"type": "Ready", "status": status, "reason": reason, "message": message,
            "lastTransitionTime": now()}]}))
    }

    fn cnpg_cluster(&self, obj: &Value) -> Option<Value> {
        let instances = obj["spec"]["instances"].as_i64().unwrap_or(1);
        let ready = if self.ready { instances } else { 0 };
        let phase = if self.ready { "Cluster in healthy state" } else { "Setting up primary" };
        Some(json!({"instances": instances, "readyInstances": ready, "phase": phase}))
    }

    /// A Backup completes once if its cluster exists, else fails (as the operator's would).
    fn cnpg_backup(&self, key: &Key, obj: &Value) -> Option<Value> {
        if !obj["status"]["phase"].is_null() {
            return None;
        }
        let cluster = obj["spec"]["cluster"]["name"].as_str().unwrap_or_default();
        let exists = self.objects.contains_key(&Key::new("postgresql.cnpg.io/v1", "clusters", Some(&key.ns), cluster));
        Some(if exists {
            let t = now();
            json!({"phase": "completed", "method": obj["spec"]["method"], "startedAt": t, "stoppedAt": t})
        } else {
            json!({"phase": "failed", "error": format!("cluster \"{cluster}\" not found")})
        })
    }

    /// cert-manager's ingress-shim: a Certificate per `spec.tls[]` entry of an Ingress annotated
    /// with an issuer, named after its secretName, owned by the Ingress.
    fn ingress_shim(&mut self, key: &Key) {
        let Some(ing) = self.objects.get(key).map(|s| s.obj.clone()) else { return };
        let ann = &ing["metadata"]["annotations"];
        let issuer = match (ann["cert-manager.io/cluster-issuer"].as_str(), ann["cert-manager.io/issuer"].as_str()) {
            (Some(name), _) => json!({"name": name, "kind": "ClusterIssuer", "group": "cert-manager.io"}),
            (None, Some(name)) => json!({"name": name, "kind": "Issuer", "group": "cert-manager.io"}),
            _ => return,
        };
        if deleting(&ing) || !self.namespace_open(&key.ns) {
            return;
        }
        for tls in ing["spec"]["tls"].as_array().into_iter().flatten() {
            let Some(secret) = tls["secretName"].as_str() else { continue };
            let cert = Key::new("cert-manager.io/v1", "certificates", Some(&key.ns), secret);
            let spec = json!({"secretName": secret, "dnsNames": tls["hosts"].as_array().cloned().unwrap_or_default(),
                "issuerRef": issuer});
            let mut obj = match self.objects.get(&cert) {
                Some(c) if holds(&c.obj["spec"], &spec) => continue,
                Some(c) => c.obj.clone(),
                None => json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                    "metadata": {"name": secret, "namespace": key.ns, "ownerReferences": [{
                        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": key.name,
                        "uid": ing["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]}}),
            };
            merge_patch(&mut obj["spec"], &spec);
            self.update(&cert, obj, "cert-manager-ingress-shim", false);
        }
    }

    /// The namespace controller: a Terminating namespace has its objects deleted (those with
    /// finalizers only marked), and goes once it is empty and has no finalizers of its own,
    /// unless the test made it stuck.
    fn namespace(&mut self, key: &Key) {
        let Some(ns) = self.objects.get(key).map(|s| s.obj.clone()) else { return };
        if !deleting(&ns) {
            return;
        }
        for obj in self.in_namespace(&key.name) {
            match self.objects.get(&obj) {
                Some(s) if finalizers(&s.obj) => drop(self.mark_deleted(&obj)),
                Some(_) => self.remove(&obj),
                None => {}
            }
        }
        if self.in_namespace(&key.name).is_empty() && !finalizers(&ns) && !self.stuck.contains(&key.name) {
            self.remove(key);
        }
    }
}
