//! One claimed server against the cluster: read what is there, apply what differs, and say
//! where the server stands (phase, conditions, requeue). Level-triggered: every pass starts
//! from the cluster as it is, so a pass that died halfway is simply run again.
//!
//! Every object goes through one path: GET it; if every field the render sets is already so
//! (`subset::is_subset`), nothing is written; else server-side apply with the one field
//! manager, forced (the worker owns these objects). Objects are handled as `DynamicObject`s
//! with the `ApiResource` of their apiVersion/kind, typed and custom alike.
use super::render::{self, names, Desired, Object, Observed, Quantity, Step};
use super::store::{Claimed, Condition, Phase, Report, Target};
use super::subset::is_subset;
use crate::metrics::PROVISION_APPLIES;
use crate::{Error, Result};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::Client;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The one field manager of every apply.
pub const FIELD_MANAGER: &str = "entitlements-worker";

/// cert-manager's Certificate, made by its ingress-shim from the Ingress's TLS section.
const CERTIFICATE: (&str, &str) = ("cert-manager.io/v1", "Certificate");
/// CloudNativePG's on-demand backup, taken before a server's namespace is deleted.
const BACKUP: (&str, &str) = ("postgresql.cnpg.io/v1", "Backup");
const CNPG_CLUSTER: (&str, &str) = (render::database::API_VERSION, render::database::KIND);
const NAMESPACE: (&str, &str) = ("v1", "Namespace");
const PVC: (&str, &str) = ("v1", "PersistentVolumeClaim");
const STATEFUL_SET: (&str, &str) = ("apps/v1", "StatefulSet");
pub const FINAL_BACKUP: &str = "final-backup";

/// What every server's pass shares.
#[derive(Debug, Clone)]
pub struct Settings {
    pub platform: render::Platform,
    /// A server still converging is looked at again after this long.
    pub requeue_after: Duration,
    /// A namespace terminating for longer than this is reported.
    pub stuck_terminating_after: Duration,
}

/// The Kubernetes side of provisioning: a client and the settings.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    settings: Arc<Settings>,
}

impl Cluster {
    pub fn new(client: Client, settings: Settings) -> Cluster {
        Cluster { client, settings: Arc::new(settings) }
    }

    /// Bring one server toward what the extension wants, and say where it stands.
    pub async fn converge(&self, server: &Claimed) -> Result<Report> {
        let mut pass =
            Pass { client: &self.client, settings: &self.settings, live: HashMap::new(), new_namespace: false };
        match server.target()? {
            Target::Running => pass.serve(server, Desired::Running).await,
            Target::Suspended => pass.serve(server, Desired::Suspended).await,
            Target::Terminated => pass.terminate(server).await,
        }
    }
}

type Key = (String, String, String);

/// One server's pass: what it has read of the cluster so far (each object read at most
/// once; an apply's answer replaces what was read).
struct Pass<'a> {
    client: &'a Client,
    settings: &'a Settings,
    live: HashMap<Key, Option<DynamicObject>>,
    /// The namespace was missing when this pass read it (it is read first): nothing in it
    /// existed then, so nothing in it is read, even once this pass has created it.
    new_namespace: bool,
}

fn api_resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

impl Pass<'_> {
    fn api(&self, (api_version, kind): (&str, &str), namespace: &str) -> Api<DynamicObject> {
        let resource = api_resource(api_version, kind);
        if kind == NAMESPACE.1 && api_version == NAMESPACE.0 {
            Api::all_with(self.client.clone(), &resource)
        } else {
            Api::namespaced_with(self.client.clone(), namespace, &resource)
        }
    }

    /// The live object, or None when it does not exist.
    async fn get(&mut self, type_: (&str, &str), namespace: &str, name: &str) -> Result<Option<DynamicObject>> {
        let key = (format!("{}/{}", type_.0, type_.1), namespace.to_owned(), name.to_owned());
        if let Some(known) = self.live.get(&key) {
            return Ok(known.clone());
        }
        let is_namespace = type_ == NAMESPACE;
        if !is_namespace && self.new_namespace {
            return Ok(None);
        }
        let found = self.api(type_, namespace).get_opt(name).await.map_err(|e| kube_error(e, type_.1))?;
        if is_namespace && found.is_none() {
            self.new_namespace = true;
        }
        self.live.insert(key, found.clone());
        Ok(found)
    }

    /// Apply `object` unless the cluster already has every field of it. True when written.
    async fn ensure(&mut self, object: &Object) -> Result<bool> {
        let type_ = (object.api_version(), object.kind());
        let namespace = object.namespace().unwrap_or(object.name()).to_owned();
        let desired = object.to_json();
        if let Some(live) = self.get(type_, &namespace, object.name()).await? {
            let live = serde_json::to_value(&live).unwrap_or(Value::Null);
            if is_subset(&desired, &live) {
                return Ok(false);
            }
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let applied = self
            .api(type_, &namespace)
            .patch(object.name(), &params, &Patch::Apply(&desired))
            .await
            .map_err(|e| kube_error(e, type_.1))?;
        metrics::counter!(PROVISION_APPLIES, "verb" => "apply", "kind" => type_.1.to_owned()).increment(1);
        let key = (format!("{}/{}", type_.0, type_.1), namespace, object.name().to_owned());
        self.live.insert(key, Some(applied));
        Ok(true)
    }

    /// The sizes of the volumes that exist (so the render never shrinks one).
    async fn observe(&mut self, namespace: &str) -> Result<Observed> {
        let pvc_size = |o: Option<DynamicObject>| {
            o.and_then(|o| o.data["spec"]["resources"]["requests"]["storage"].as_str().map(str::to_owned))
                .and_then(|s| Quantity::parse(&s).ok())
        };
        let data = self.get(PVC, namespace, names::DATA_VOLUME).await?;
        let media = self.get(PVC, namespace, names::MEDIA_VOLUME).await?;
        let database = self.get(CNPG_CLUSTER, namespace, names::DATABASE).await?;
        Ok(Observed {
            data_storage: pvc_size(data),
            media_storage: pvc_size(media),
            database_storage: database
                .and_then(|o| o.data["spec"]["storage"]["size"].as_str().map(str::to_owned))
                .and_then(|s| Quantity::parse(&s).ok()),
        })
    }

    /// Running or suspended: render, apply what differs (in plan-change order when the plan
    /// changed), then report readiness.
    async fn serve(&mut self, server: &Claimed, desired: Desired) -> Result<Report> {
        let ns = server.namespace.clone();
        let Some(resources_json) = server.resources.clone() else {
            if desired == Desired::Running {
                return Err(server.input_error("the server has no resources"));
            }
            // Suspended before anything was applied: nothing to scale down.
            let none = Condition::new("Applied", false, "NoResources", "nothing was ever applied for this server");
            return Ok(Report {
                phase: Phase::Suspended,
                conditions: vec![none],
                applied_resources: None,
                requeue_after: None,
            });
        };
        // Checked before any API call: a bad row is the row's problem, not the cluster's.
        let unobserved = server.spec(desired, Observed::default())?;
        render::render(&self.settings.platform, &unobserved).map_err(|e| server.input_error(e.to_string()))?;
        let existing = self.get(NAMESPACE, &ns, &ns).await?;
        if let Some(since) = existing.as_ref().and_then(terminating_for) {
            // Deleted but not gone yet (a server terminated and wanted back): wait until it is
            // gone, then create it anew.
            let message = format!("namespace {ns} is still being deleted ({}s)", since.as_secs());
            return Ok(self
                .requeue(Phase::Provisioning, vec![Condition::new("Ready", false, "NamespaceTerminating", message)]));
        }
        let observed = if existing.is_some() { self.observe(&ns).await? } else { Observed::default() };
        let spec = server.spec(desired, observed)?;
        let rendered = render::render(&self.settings.platform, &spec).map_err(|e| server.input_error(e.to_string()))?;

        // A plan change follows the quota order; a new or unchanged server is applied in
        // render order (the namespace first).
        let steps = match server.applied() {
            Some(old) if existing.is_some() && old != spec.resources => render::apply_order(&old, &spec.resources),
            _ => Vec::new(),
        };
        if steps.is_empty() {
            for object in &rendered.objects {
                self.ensure(object).await?;
            }
        } else {
            for step in steps {
                match step {
                    Step::Quota(r) => {
                        self.ensure(&render::render_quota(&self.settings.platform, &spec, &r)).await?;
                    }
                    Step::Workload => {
                        for object in rendered.workload() {
                            self.ensure(object).await?;
                        }
                    }
                }
            }
        }

        let mut conditions = vec![Condition::new("Applied", true, "Applied", "every object matches the plan")];
        if let Some(kept) = volume_kept(&rendered.notes) {
            conditions.push(kept);
        }
        if desired == Desired::Suspended {
            conditions.insert(
                0,
                Condition::new("Ready", false, "Suspended", "scaled to 0, database hibernated, volumes kept"),
            );
            return Ok(Report {
                phase: Phase::Suspended,
                conditions,
                applied_resources: Some(resources_json),
                requeue_after: None,
            });
        }
        let (ready, reason, message) = self.readiness(&ns).await?;
        conditions.insert(0, Condition::new("Ready", ready, reason, message));
        Ok(if ready {
            Report { phase: Phase::Ready, conditions, applied_resources: Some(resources_json), requeue_after: None }
        } else {
            Report {
                phase: Phase::Provisioning,
                conditions,
                applied_resources: Some(resources_json),
                requeue_after: Some(self.settings.requeue_after),
            }
        })
    }

    /// Ready: Synapse's StatefulSet has all its replicas ready, and cert-manager's
    /// certificate for the Ingress is issued.
    async fn readiness(&mut self, ns: &str) -> Result<(bool, &'static str, String)> {
        let stateful_set = self.get(STATEFUL_SET, ns, names::SYNAPSE).await?;
        if !stateful_set.as_ref().is_some_and(stateful_set_ready) {
            return Ok((
                false,
                "StatefulSetNotReady",
                format!("StatefulSet {} has no ready replica yet", names::SYNAPSE),
            ));
        }
        let certificate = self.get(CERTIFICATE, ns, names::TLS_SECRET).await?;
        if !certificate.as_ref().is_some_and(certificate_ready) {
            return Ok((false, "CertificateNotReady", format!("Certificate {} is not issued yet", names::TLS_SECRET)));
        }
        Ok((true, "Ready", "Synapse and its certificate are ready".into()))
    }

    /// Terminated: final backup of the database, then the namespace is deleted; done when
    /// it is gone. Finalizers are never touched: a namespace that does not go is reported.
    async fn terminate(&mut self, server: &Claimed) -> Result<Report> {
        let ns = server.namespace.clone();
        let Some(namespace) = self.get(NAMESPACE, &ns, &ns).await? else {
            let gone = Condition::new("Ready", false, "Terminated", format!("namespace {ns} is deleted"));
            return Ok(Report {
                phase: Phase::Terminated,
                conditions: vec![gone],
                applied_resources: None,
                requeue_after: None,
            });
        };
        if let Some(since) = terminating_for(&namespace) {
            let mut conditions =
                vec![Condition::new("Ready", false, "Terminating", format!("namespace {ns} is being deleted"))];
            if since > self.settings.stuck_terminating_after {
                let finalizers = namespace.data["spec"]["finalizers"].clone();
                conditions.push(Condition::new(
                    "NamespaceStuckTerminating",
                    true,
                    "NamespaceStuckTerminating",
                    format!(
                        "namespace {ns} has been terminating for {}s (finalizers: {}, and those of its objects); \
                         the worker never removes finalizers",
                        since.as_secs(),
                        if finalizers.is_null() { "none".into() } else { finalizers.to_string() }
                    ),
                ));
            }
            return Ok(self.requeue(Phase::Terminating, conditions));
        }
        if let Some(waiting) = self.final_backup(server).await? {
            return Ok(self.requeue(Phase::Terminating, vec![waiting]));
        }
        let deleted = self.api(NAMESPACE, &ns).delete(&ns, &DeleteParams::default()).await;
        match deleted {
            Ok(_) => {
                metrics::counter!(PROVISION_APPLIES, "verb" => "delete", "kind" => NAMESPACE.1).increment(1);
            }
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(e) => return Err(kube_error(e, NAMESPACE.1)),
        }
        let backed_up =
            Condition::new("FinalBackup", true, "Completed", "the database was backed up (or there was none)");
        let deleting = Condition::new("Ready", false, "Terminating", format!("namespace {ns} is being deleted"));
        Ok(self.requeue(Phase::Terminating, vec![deleting, backed_up]))
    }

    /// The CloudNativePG backup taken before deleting: None when done (or there is no
    /// database), else the condition to report while it runs. A hibernated database is woken
    /// first (a backup needs a running instance).
    async fn final_backup(&mut self, server: &Claimed) -> Result<Option<Condition>> {
        let ns = server.namespace.clone();
        let Some(database) = self.get(CNPG_CLUSTER, &ns, names::DATABASE).await? else { return Ok(None) };
        let backup = self.get(BACKUP, &ns, FINAL_BACKUP).await?;
        if let Some(backup) = &backup {
            match backup.data["status"]["phase"].as_str() {
                Some("completed") => return Ok(None),
                Some("failed") => {
                    let why = backup.data["status"]["error"].as_str().unwrap_or("no reason given");
                    return Err(Error::Kubernetes(format!(
                        "final backup of {ns} failed ({why}); the namespace is kept: delete Backup {FINAL_BACKUP} \
                         to try again"
                    )));
                }
                _ => {}
            }
        }
        let hibernated = database.metadata.annotations.as_ref().and_then(|a| a.get(render::database::HIBERNATION))
            == Some(&"on".to_owned());
        if hibernated {
            // The render as running, so the one field manager keeps owning the whole Cluster.
            let observed = self.observe(&ns).await?;
            let spec = server.spec(Desired::Running, observed).map_err(|e| {
                server.input_error(format!("the database is hibernated and cannot be woken for its final backup: {e}"))
            })?;
            let rendered =
                render::render(&self.settings.platform, &spec).map_err(|e| server.input_error(e.to_string()))?;
            if let Some(cluster) = rendered.objects.iter().find(|o| o.kind() == CNPG_CLUSTER.1) {
                self.ensure(cluster).await?;
            }
        }
        if backup.is_none() {
            self.ensure(&Object::Custom(final_backup_object(server))).await?;
        }
        Ok(Some(Condition::new(
            "FinalBackup",
            false,
            "BackupRunning",
            format!("waiting for Backup {FINAL_BACKUP} to complete"),
        )))
    }

    fn requeue(&self, phase: Phase, conditions: Vec<Condition>) -> Report {
        Report { phase, conditions, applied_resources: None, requeue_after: Some(self.settings.requeue_after) }
    }
}

/// The CloudNativePG Backup of the server's database (spec as the contract gives it).
pub fn final_backup_object(server: &Claimed) -> DynamicObject {
    let value = json!({
        "apiVersion": BACKUP.0,
        "kind": BACKUP.1,
        "metadata": {
            "name": FINAL_BACKUP,
            "namespace": server.namespace,
            "labels": {
                render::labels::PART_OF: render::labels::PART_OF_VALUE,
                render::labels::MANAGED_BY: render::labels::MANAGED_BY_VALUE,
                render::labels::CUSTOMER: server.customer_id.to_string(),
                render::labels::SERVER: server.name,
            },
        },
        "spec": {"cluster": {"name": names::DATABASE}, "method": "barmanObjectStore"},
    });
    serde_json::from_value(value).expect("a DynamicObject reads any object with metadata")
}

/// How long the object has had a deletionTimestamp, if it has one.
fn terminating_for(object: &DynamicObject) -> Option<Duration> {
    let since = object.metadata.deletion_timestamp.as_ref()?;
    let now = k8s_openapi::jiff::Timestamp::now();
    Some(Duration::from_secs(now.as_second().saturating_sub(since.0.as_second()).max(0) as u64))
}

fn stateful_set_ready(o: &DynamicObject) -> bool {
    let (spec, status) = (&o.data["spec"], &o.data["status"]);
    let wanted = spec["replicas"].as_i64().unwrap_or(1);
    let ready = status["readyReplicas"].as_i64().unwrap_or(0);
    // A status of an older spec (a rollout just started) says nothing about this one.
    let current = match (status["observedGeneration"].as_i64(), o.metadata.generation) {
        (Some(seen), Some(generation)) => seen >= generation,
        _ => true,
    };
    wanted >= 1 && ready >= wanted && current
}

fn certificate_ready(o: &DynamicObject) -> bool {
    o.data["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// The render's notes as one condition (a type appears once in a conditions list).
fn volume_kept(notes: &[render::Note]) -> Option<Condition> {
    let kept: Vec<String> = notes
        .iter()
        .map(|render::Note::VolumeKept { volume, kept, wanted }| {
            format!("{volume} kept at {kept} (the plan asks for {wanted}; volumes never shrink)")
        })
        .collect();
    (!kept.is_empty()).then(|| Condition::new("VolumeKept", true, "VolumesNeverShrink", kept.join("; ")))
}

/// A kube error as this worker reports it. The API server's message for a refused Secret
/// may quote its data, so for Secrets only the code and reason are kept.
fn kube_error(e: kube::Error, kind: &str) -> Error {
    match e {
        kube::Error::Api(status) if kind == "Secret" => {
            Error::Kubernetes(format!("{} {} (Secret; message withheld)", status.code, status.reason))
        }
        other => Error::kube(other),
    }
}

#[cfg(test)]
mod tests;
