//! One server's desired state → the Kubernetes objects that make it, in apply order.
//!
//! Pure and deterministic: no clock, no randomness, no API calls, and every map sorted, so a
//! converged server renders byte-identical on every resync (and server-side apply then has
//! nothing to change). Secrets are inputs, never generated here: they are made once, stored,
//! and reused on every render, including after a lost namespace.
//!
//! ```text
//! Namespace, ResourceQuota, LimitRange, ServiceAccount, NetworkPolicy ×4, Secret, ConfigMap,
//! PVC data, PVC media, CloudNativePG Cluster, Service, StatefulSet, Ingress
//! ```
//! Names inside the namespace are fixed (`synapse`, `synapse-data`, `synapse-db`, ...): the
//! namespace is the server's identity.

pub mod database;
mod namespace;
mod network;
mod resources;
mod synapse;
#[cfg(test)]
mod tests;

pub use resources::{Quantity, Resources, ResourcesError, MAX_DATABASE_INSTANCES};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, PersistentVolumeClaim, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::DynamicObject;
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use uuid::Uuid;

/// Names of the objects inside a server's namespace.
pub mod names {
    pub const SYNAPSE: &str = "synapse";
    pub const SERVICE_ACCOUNT: &str = "synapse";
    pub const SECRET: &str = "synapse-secrets";
    pub const CONFIG: &str = "synapse-config";
    pub const DATA_VOLUME: &str = "synapse-data";
    pub const MEDIA_VOLUME: &str = "synapse-media";
    pub const TLS_SECRET: &str = "synapse-tls";
    pub const DATABASE: &str = "synapse-db";
    pub const QUOTA: &str = "server-quota";
    pub const LIMITS: &str = "server-limits";
}

/// Label keys every object carries, so an operator (and the applier) can find a server's
/// objects from the customer or the server name.
pub mod labels {
    pub const PART_OF: &str = "app.kubernetes.io/part-of";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const CUSTOMER: &str = "pg-entitlements/customer";
    pub const SERVER: &str = "pg-entitlements/server";
    /// Selects the Synapse pods (NetworkPolicy, Service, StatefulSet).
    pub const NAME: &str = "app.kubernetes.io/name";
    pub const PART_OF_VALUE: &str = "matrix-server";
    pub const MANAGED_BY_VALUE: &str = "entitlements-worker";
}

/// What the whole platform shares: comes from the worker's configuration, not from a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// The Synapse image, pinned by tag or digest.
    pub image: String,
    /// StorageClass of the data volume and the database volumes (SSD).
    pub data_storage_class: String,
    /// StorageClass of the media store (standard disks).
    pub media_storage_class: String,
    /// `spec.ingressClassName` of every Ingress.
    pub ingress_class: String,
    /// The cert-manager ClusterIssuer that signs the servers' certificates.
    pub cluster_issuer: String,
    /// Labels of the namespace the ingress controller runs in (traffic is let in from there).
    pub ingress_controller_namespace: BTreeMap<String, String>,
    /// Labels of the namespace the CloudNativePG operator runs in (it probes the instances).
    pub database_operator_namespace: BTreeMap<String, String>,
}

impl Default for Platform {
    /// The names a stock cluster uses (ingress-nginx, cert-manager, CloudNativePG's own
    /// namespace); every one of them is configurable.
    fn default() -> Self {
        let ns = |name: &str| BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), name.to_owned())]);
        Platform {
            image: "docker.io/matrixdotorg/synapse:v1.120.2".into(),
            data_storage_class: "ssd".into(),
            media_storage_class: "standard".into(),
            ingress_class: "nginx".into(),
            cluster_issuer: "letsencrypt".into(),
            ingress_controller_namespace: ns("ingress-nginx"),
            database_operator_namespace: ns("cnpg-system"),
        }
    }
}

/// Whether the server should serve (the extension decides; the renderer only obeys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    Running,
    /// Access lost: Synapse scaled to 0 and the database hibernated; every volume is kept.
    Suspended,
}

/// The server's secrets, generated once elsewhere and passed to every render. Debug never
/// shows them (secrets are never logged).
#[derive(Clone, PartialEq, Eq)]
pub struct ServerSecrets {
    /// Synapse's signing key file content (`ed25519 a_xxxx <base64>`).
    pub signing_key: String,
    pub registration_shared_secret: String,
    pub macaroon_secret_key: String,
}

impl fmt::Debug for ServerSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerSecrets { .. }")
    }
}

/// What the cluster holds now, as far as rendering cares: the size each volume requests
/// (`spec.resources.requests.storage` of the PVC, `spec.storage.size` of the Cluster).
/// `None` when the object does not exist yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub data_storage: Option<Quantity>,
    pub media_storage: Option<Quantity>,
    pub database_storage: Option<Quantity>,
}

/// One server of a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub customer: Uuid,
    /// The server's name: a DNS label, unique and never reused.
    pub name: String,
    /// Its namespace, `mx-...` (a DNS label).
    pub namespace: String,
    /// The domains it answers for; the first is the Matrix `server_name`. At most
    /// `resources.domains` of them.
    pub domains: Vec<String>,
    pub resources: Resources,
    pub desired: Desired,
    pub secrets: ServerSecrets,
    pub observed: Observed,
}

/// Why a server cannot be rendered. Each is a mistake in the input, never in the cluster:
/// the caller records it on the server and does not retry until the input changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("invalid resources at {path}: {message}")]
    InvalidResources { path: String, message: String },
    #[error("invalid {what} {value:?}: expected a DNS label (a-z, 0-9 and '-', at most 63, starting and ending with a letter or digit){extra}")]
    InvalidName { what: &'static str, value: String, extra: &'static str },
    #[error("invalid domain {0:?}: expected a lower-case DNS name")]
    InvalidDomain(String),
    #[error("domain {0:?} is given twice")]
    DuplicateDomain(String),
    #[error("a server needs at least one domain (its Matrix server_name)")]
    NoDomain,
    #[error("{given} domains given but the plan allows {allowed}")]
    TooManyDomains { given: usize, allowed: u32 },
}

/// Something the caller should record in the server's conditions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum Note {
    /// The plan asks for a smaller volume than exists; volumes never shrink, so the larger
    /// one is kept (and counted in the quota).
    VolumeKept { volume: String, kept: Quantity, wanted: Quantity },
}

/// A rendered Kubernetes object. Serializes as the object itself, `apiVersion` and `kind`
/// included.
// A server is a dozen objects rendered once per pass: boxing the big variants would cost
// every caller a deref and save nothing that matters.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    ResourceQuota(ResourceQuota),
    LimitRange(LimitRange),
    ServiceAccount(ServiceAccount),
    NetworkPolicy(NetworkPolicy),
    Secret(Secret),
    ConfigMap(ConfigMap),
    PersistentVolumeClaim(PersistentVolumeClaim),
    Service(Service),
    StatefulSet(StatefulSet),
    Ingress(Ingress),
    /// A custom resource k8s-openapi has no type for (the CloudNativePG `Cluster`); its
    /// `types` are always set.
    Custom(DynamicObject),
}

macro_rules! each_typed {
    ($self:expr, $o:ident => $typed:expr, $custom:ident => $dynamic:expr) => {
        match $self {
            Object::Namespace($o) => $typed,
            Object::ResourceQuota($o) => $typed,
            Object::LimitRange($o) => $typed,
            Object::ServiceAccount($o) => $typed,
            Object::NetworkPolicy($o) => $typed,
            Object::Secret($o) => $typed,
            Object::ConfigMap($o) => $typed,
            Object::PersistentVolumeClaim($o) => $typed,
            Object::Service($o) => $typed,
            Object::StatefulSet($o) => $typed,
            Object::Ingress($o) => $typed,
            Object::Custom($custom) => $dynamic,
        }
    };
}

fn kind_of<T: k8s_openapi::Resource>(_: &T) -> (&'static str, &'static str) {
    (T::API_VERSION, T::KIND)
}

impl Object {
    pub fn api_version(&self) -> &str {
        each_typed!(self, o => kind_of(o).0, d => d.types.as_ref().map_or("", |t| t.api_version.as_str()))
    }

    pub fn kind(&self) -> &str {
        each_typed!(self, o => kind_of(o).1, d => d.types.as_ref().map_or("", |t| t.kind.as_str()))
    }

    pub fn metadata(&self) -> &ObjectMeta {
        each_typed!(self, o => &o.metadata, d => &d.metadata)
    }

    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    /// None for the Namespace itself (cluster-scoped).
    pub fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }

    /// The object as JSON, as it would be sent to the API server.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("Kubernetes objects always serialize")
    }
}

impl Serialize for Object {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        each_typed!(self, o => o.serialize(s), d => d.serialize(s))
    }
}

/// A server's objects in apply order, and what the caller should know about them.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub objects: Vec<Object>,
    pub notes: Vec<Note>,
}

impl Rendered {
    /// Every object but the ResourceQuota: what [`Step::Workload`] applies.
    pub fn workload(&self) -> impl Iterator<Item = &Object> {
        self.objects.iter().filter(|o| !matches!(o, Object::ResourceQuota(_)))
    }
}

/// Render one server.
pub fn render(platform: &Platform, spec: &ServerSpec) -> Result<Rendered, RenderError> {
    check(spec)?;
    let (volumes, notes) = synapse::Volumes::kept(&spec.resources, &spec.observed);
    let config = synapse::config_map(spec);
    let mut objects = vec![
        Object::Namespace(namespace::namespace(spec)),
        Object::ResourceQuota(namespace::quota(platform, spec, &spec.resources)),
        Object::LimitRange(namespace::limit_range(spec)),
        Object::ServiceAccount(namespace::service_account(spec)),
    ];
    objects.extend(network::policies(platform, spec).into_iter().map(Object::NetworkPolicy));
    objects.push(Object::Secret(synapse::secret(spec)));
    // Built before the ConfigMap is moved: it carries the config's checksum.
    let stateful_set = synapse::stateful_set(platform, spec, &config);
    objects.push(Object::ConfigMap(config));
    objects.extend(synapse::volume_claims(platform, spec, &volumes).into_iter().map(Object::PersistentVolumeClaim));
    objects.push(Object::Custom(database::cluster(platform, spec, &volumes)));
    objects.push(Object::Service(network::service(spec)));
    // After everything it mounts or talks to.
    objects.push(Object::StatefulSet(stateful_set));
    objects.push(Object::Ingress(network::ingress(platform, spec)));
    Ok(Rendered { objects, notes })
}

/// The ResourceQuota of `spec`'s server sized for `resources` (see [`Step::Quota`]); volumes
/// are counted at their kept size, as in [`render`].
pub fn render_quota(platform: &Platform, spec: &ServerSpec, resources: &Resources) -> Object {
    Object::ResourceQuota(namespace::quota(platform, spec, resources))
}

/// One step of a plan change.
// Plans change rarely and a change has at most three steps: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Apply the ResourceQuota rendered for these resources ([`render_quota`]).
    Quota(Resources),
    /// Apply every other object of the new render ([`Rendered::workload`]).
    Workload,
}

/// The order of a plan change from `old` to `new`. The quota must admit the workload at every
/// moment: an upgrade raises the quota before the workload grows; a downgrade shrinks the
/// workload before the quota is lowered (a lowered quota would refuse the old pods'
/// replacements until they shrink). A mixed change (more CPU, less memory) raises the quota to
/// cover both, changes the workload, then lowers it to the new plan.
pub fn apply_order(old: &Resources, new: &Resources) -> Vec<Step> {
    let sized = |r: &Resources| {
        [r.cpu.milli(), r.memory.milli(), r.data_storage.milli(), r.media_storage.milli(), r.database_instances.into()]
    };
    let (before, after) = (sized(old), sized(new));
    let grows = before.iter().zip(&after).any(|(b, a)| a > b);
    let shrinks = before.iter().zip(&after).any(|(b, a)| a < b);
    match (grows, shrinks) {
        (true, true) => vec![Step::Quota(old.covering(new)), Step::Workload, Step::Quota(new.clone())],
        (false, true) => vec![Step::Workload, Step::Quota(new.clone())],
        // An upgrade, or no change in size (the quota is then a no-op).
        _ => vec![Step::Quota(new.clone()), Step::Workload],
    }
}

/// The objects as multi-document YAML, each starting with `---` (what `kubectl apply -f -`
/// reads).
pub fn to_multi_document_yaml(objects: &[Object]) -> String {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&yaml(object));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// YAML of any rendered value. The serializer only fails on maps with non-string keys,
/// which no Kubernetes object has.
pub(crate) fn yaml<T: Serialize>(value: &T) -> String {
    serde_saphyr::to_string(value).expect("Kubernetes objects always serialize to YAML")
}

/// Labels on every object of a server.
fn server_labels(spec: &ServerSpec) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::PART_OF.to_owned(), labels::PART_OF_VALUE.to_owned()),
        (labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned()),
        (labels::CUSTOMER.to_owned(), spec.customer.to_string()),
        (labels::SERVER.to_owned(), spec.name.clone()),
    ])
}

/// Metadata of an object in the server's namespace.
fn meta(spec: &ServerSpec, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(spec.namespace.clone()),
        labels: Some(server_labels(spec)),
        ..ObjectMeta::default()
    }
}

/// The labels that select Synapse's pods.
fn synapse_selector() -> BTreeMap<String, String> {
    BTreeMap::from([(labels::NAME.to_owned(), names::SYNAPSE.to_owned())])
}

fn check(spec: &ServerSpec) -> Result<(), RenderError> {
    if !is_dns_label(&spec.name) {
        return Err(RenderError::InvalidName { what: "server name", value: spec.name.clone(), extra: "" });
    }
    if !is_dns_label(&spec.namespace) || !spec.namespace.starts_with("mx-") {
        return Err(RenderError::InvalidName {
            what: "namespace",
            value: spec.namespace.clone(),
            extra: " and starting with \"mx-\"",
        });
    }
    if spec.domains.is_empty() {
        return Err(RenderError::NoDomain);
    }
    if spec.domains.len() > spec.resources.domains as usize {
        return Err(RenderError::TooManyDomains { given: spec.domains.len(), allowed: spec.resources.domains });
    }
    for (i, domain) in spec.domains.iter().enumerate() {
        if domain.len() > 253 || !domain.contains('.') || !domain.split('.').all(is_dns_label) {
            return Err(RenderError::InvalidDomain(domain.clone()));
        }
        if spec.domains[..i].contains(domain) {
            return Err(RenderError::DuplicateDomain(domain.clone()));
        }
    }
    Ok(())
}

/// RFC 1123 label, as Kubernetes checks names and namespaces.
fn is_dns_label(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| alnum(c) || c == '-')
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}
