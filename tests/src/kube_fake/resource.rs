//! What the fake knows about resources: where an object lives, kind <-> plural, and API
//! errors as `Status` objects.
use serde_json::{json, Value};

/// Where an object lives: (namespace or "" when cluster-scoped, group/version, plural, name).
/// Ordered namespace first, so a namespace's objects are one range.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    pub ns: String,
    pub gv: String,
    pub plural: String,
    pub name: String,
}

impl Key {
    pub(crate) fn new(gv: &str, plural: &str, ns: Option<&str>, name: &str) -> Key {
        Key { gv: gv.into(), plural: plural.into(), ns: ns.unwrap_or_default().into(), name: name.into() }
    }

    pub(crate) fn namespace(ns: &str) -> Key {
        Key::new("v1", "namespaces", None, ns)
    }

    pub(crate) fn is_namespace(&self) -> bool {
        self.gv == "v1" && self.plural == "namespaces"
    }

    /// `statefulsets.apps`, `configmaps`: how the API server names a resource in messages.
    pub(crate) fn resource(&self) -> String {
        match self.gv.split_once('/') {
            Some((group, _)) => format!("{}.{group}", self.plural),
            None => self.plural.clone(),
        }
    }
}

/// The kinds the worker's objects use, with plural and scope; other kinds get kube-rs's
/// plural rule (`to_plural`) and either scope.
const KINDS: &[(&str, &str, bool)] = &[
    ("Namespace", "namespaces", false),
    ("ResourceQuota", "resourcequotas", true),
    ("LimitRange", "limitranges", true),
    ("ServiceAccount", "serviceaccounts", true),
    ("NetworkPolicy", "networkpolicies", true),
    ("Secret", "secrets", true),
    ("ConfigMap", "configmaps", true),
    ("PersistentVolumeClaim", "persistentvolumeclaims", true),
    ("Service", "services", true),
    ("Pod", "pods", true),
    ("StatefulSet", "statefulsets", true),
    ("Deployment", "deployments", true),
    ("Ingress", "ingresses", true),
    ("Certificate", "certificates", true),
    ("Issuer", "issuers", true),
    ("ClusterIssuer", "clusterissuers", false),
    ("Cluster", "clusters", true),
    ("Backup", "backups", true),
    ("StorageClass", "storageclasses", false),
];

pub(crate) fn plural_of(kind: &str) -> String {
    if let Some(k) = KINDS.iter().find(|k| k.0 == kind) {
        return k.1.to_owned();
    }
    let s = kind.to_lowercase();
    if ["s", "x", "z", "ch", "sh"].iter().any(|e| s.ends_with(e)) {
        format!("{s}es")
    } else if s.ends_with('y') && !s.ends_with("ay") && !s.ends_with("ey") && !s.ends_with("oy") && !s.ends_with("uy") {
        format!("{}ies", &s[..s.len() - 1])
    } else {
        format!("{s}s")
    }
}

/// The kind a plural names (for list kinds and skeletons); unknown plurals: singular,
/// capitalized.
pub(crate) fn kind_of(plural: &str) -> String {
    if let Some(k) = KINDS.iter().find(|k| k.1 == plural) {
        return k.0.to_owned();
    }
    let s = match plural.strip_suffix("ies") {
        Some(stem) => format!("{stem}y"),
        None => plural.strip_suffix('s').unwrap_or(plural).to_owned(),
    };
    let mut c = s.chars();
    c.next().map_or_else(String::new, |f| f.to_uppercase().chain(c).collect())
}

/// Namespaced or cluster-scoped; None for kinds the table does not know.
pub(crate) fn namespaced(plural: &str) -> Option<bool> {
    KINDS.iter().find(|k| k.1 == plural).map(|k| k.2)
}

/// An API error, answered as a `Status` object (kube-rs reads it into `Error::Api`).
#[derive(Debug)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into() }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }
    pub(crate) fn not_found(key: &Key) -> ApiError {
        ApiError::new(404, "NotFound", format!("{} \"{}\" not found", key.resource(), key.name))
    }
    pub(crate) fn conflict(key: &Key) -> ApiError {
        let msg = format!(
            "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
            key.resource(),
            key.name
        );
        ApiError::new(409, "Conflict", msg)
    }
    pub(crate) fn status(&self) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code})
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;
