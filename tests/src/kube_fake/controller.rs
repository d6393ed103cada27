//! The fake controllers: what the StatefulSet controller, cert-manager (ingress-shim and
//! issuing), CloudNativePG and the namespace controller would do, as one idempotent pass over
//! the store. Their writes bump resourceVersion like any other but are not API calls.
use super::patch::merge_patch;
use super::store::{deleting, finalizers, Key, State};
use serde_json::{json, Value};

impl State {
    /// Run passes until one changes nothing (each pass can enable the next: a namespace
    /// emptied in one is removed in the next).
    pub(crate) fn reconcile(&mut self) {
        for _ in 0..16 {
            let rv = self.rv;
            self.statefulsets();
            self.ingress_shim();
            self.certificates();
            self.claims();
            self.cnpg();
            self.namespaces();
            if self.rv == rv {
                break;
            }
        }
    }

    /// Merge `status` into the object's status as `manager`, through the status subresource.
    fn set_status(&mut self, key: &Key, manager: &str, status: Value) {
        let Ok(mut obj) = self.get(key) else { return };
        merge_patch(&mut obj["status"], &status);
        self.update(key, obj, manager, true);
    }

    fn statefulsets(&mut self) {
        for key in self.keys("apps/v1", "statefulsets") {
            let obj = self.get(&key).expect("listed above");
            let replicas = obj["spec"]["replicas"].as_i64().unwrap_or(1);
            let ready = if self.ready { replicas } else { 0 };
            let status = json!({"replicas": replicas, "readyReplicas": ready, "availableReplicas": ready,
                "currentReplicas": replicas, "updatedReplicas": replicas,
                "observedGeneration": obj["metadata"]["generation"]});
            self.set_status(&key, "kube-controller-manager", status);
        }
    }

    /// cert-manager's ingress-shim: a Certificate per `spec.tls[]` entry of an Ingress annotated
    /// with an issuer, named after its secretName, owned by the Ingress.
    fn ingress_shim(&mut self) {
        for key in self.keys("networking.k8s.io/v1", "ingresses") {
            let ing = self.get(&key).expect("listed above");
            let ann = &ing["metadata"]["annotations"];
            let issuer = match (ann["cert-manager.io/cluster-issuer"].as_str(), ann["cert-manager.io/issuer"].as_str())
            {
                (Some(name), _) => json!({"name": name, "kind": "ClusterIssuer", "group": "cert-manager.io"}),
                (None, Some(name)) => json!({"name": name, "kind": "Issuer", "group": "cert-manager.io"}),
                _ => continue,
            };
            if deleting(&ing) || !self.namespace_open(&key.ns) {
                continue;
            }
            for tls in ing["spec"]["tls"].as_array().cloned().unwrap_or_default() {
                let Some(secret) = tls["secretName"].as_str() else { continue };
                let cert = Key::new("cert-manager.io/v1", "certificates", Some(&key.ns), secret);
                let mut obj = self.get(&cert).unwrap_or_else(|_| {
                    json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                        "metadata": {"name": secret, "namespace": key.ns, "ownerReferences": [{
                            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": key.name,
                            "uid": ing["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}]}})
                });
                let hosts = tls["hosts"].as_array().cloned().unwrap_or_default();
                merge_patch(&mut obj["spec"], &json!({"secretName": secret, "dnsNames": hosts, "issuerRef": issuer}));
                self.update(&cert, obj, "cert-manager-ingress-shim", false);
            }
        }
    }

    /// cert-manager issuing: every Certificate is Ready (or not, when readiness is off).
    fn certificates(&mut self) {
        for key in self.keys("cert-manager.io/v1", "certificates") {
            let cond = if self.ready {
                json!({"type": "Ready", "status": "True", "reason": "Ready", "message": "Certificate is up to date and has not expired"})
            } else {
                json!({"type": "Ready", "status": "False", "reason": "Issuing", "message": "Issuing certificate as Secret does not exist"})
            };
            let current = self.get(&key).map(|c| c["status"]["conditions"].clone()).unwrap_or_default();
            let same = current.as_array().is_some_and(|c| c.len() == 1 && c[0]["status"] == cond["status"]);
            if !same {
                let mut cond = cond;
                cond["lastTransitionTime"] = json!(super::store::now());
                self.set_status(&key, "cert-manager-certificates-issuing", json!({"conditions": [cond]}));
            }
        }
    }

    /// Storage provisioning: every PVC Bound at the size it asks for.
    fn claims(&mut self) {
        for key in self.keys("v1", "persistentvolumeclaims") {
            let pvc = self.get(&key).expect("listed above");
            let status = json!({"phase": "Bound", "accessModes": pvc["spec"]["accessModes"],
                "capacity": {"storage": pvc["spec"]["resources"]["requests"]["storage"]}});
            self.set_status(&key, "kube-controller-manager", status);
        }
    }

    /// CloudNativePG: clusters report their instances; a Backup completes once, if its cluster
    /// exists (else it fails, as the operator's would).
    fn cnpg(&mut self) {
        for key in self.keys("postgresql.cnpg.io/v1", "clusters") {
            let c = self.get(&key).expect("listed above");
            let instances = c["spec"]["instances"].as_i64().unwrap_or(1);
            let ready = if self.ready { instances } else { 0 };
            let phase = if self.ready { "Cluster in healthy state" } else { "Setting up primary" };
            self.set_status(
                &key,
                "cloudnative-pg",
                json!({"instances": instances, "readyInstances": ready, "phase": phase}),
            );
        }
        for key in self.keys("postgresql.cnpg.io/v1", "backups") {
            let b = self.get(&key).expect("listed above");
            if !b["status"]["phase"].is_null() {
                continue;
            }
            let cluster = b["spec"]["cluster"]["name"].as_str().unwrap_or_default();
            let status =
                if self.objects.contains_key(&Key::new("postgresql.cnpg.io/v1", "clusters", Some(&key.ns), cluster)) {
                    let t = super::store::now();
                    json!({"phase": "completed", "method": b["spec"]["method"], "startedAt": t, "stoppedAt": t})
                } else {
                    json!({"phase": "failed", "error": format!("cluster \"{cluster}\" not found")})
                };
            self.set_status(&key, "cloudnative-pg", status);
        }
    }

    /// The namespace controller: a Terminating namespace has its objects deleted (those with
    /// finalizers only marked), and goes once it is empty and has no finalizers of its own,
    /// unless the test made it stuck.
    fn namespaces(&mut self) {
        for key in self.keys("v1", "namespaces") {
            let ns = self.get(&key).expect("listed above");
            if !deleting(&ns) {
                continue;
            }
            for obj in self.in_namespace(&key.name) {
                match self.objects.get(&obj) {
                    Some(s) if finalizers(&s.obj) => drop(self.mark_deleted(&obj)),
                    Some(_) => self.remove(&obj),
                    None => {}
                }
            }
            if self.in_namespace(&key.name).is_empty() && !finalizers(&ns) && !self.stuck.contains(&key.name) {
                self.remove(&key);
            }
        }
    }
}
