//! The server's PostgreSQL: a CloudNativePG `Cluster` (postgresql.cnpg.io/v1). k8s-openapi
//! has no type for it, so it is a DynamicObject with the fields this project sets.

use super::resources::{Quantity, Resources};
use super::synapse::Volumes;
use super::{meta, names, Desired, Platform, ServerSpec};
use kube::core::{DynamicObject, TypeMeta};
use serde_json::json;
use std::collections::BTreeMap;

pub const API_VERSION: &str = "postgresql.cnpg.io/v1";
pub const KIND: &str = "Cluster";
/// CloudNativePG's declarative hibernation: "on" stops every instance and keeps the volumes.
pub const HIBERNATION: &str = "cnpg.io/hibernation";
pub const PORT: u16 = 5432;
pub const DATABASE_NAME: &str = "synapse";
pub const OWNER: &str = "synapse";

/// The service that always points at the primary.
pub fn read_write_service() -> String {
    format!("{}-rw", names::DATABASE)
}

/// The Secret CloudNativePG creates with the owner's credentials (`username`, `password`).
pub fn app_secret() -> String {
    format!("{}-app", names::DATABASE)
}

/// Each instance's CPU and memory (requests = limits): half of Synapse's, rounded up. The
/// plan sizes Synapse; its database scales with it.
pub(super) fn instance_share(r: &Resources) -> (Quantity, Quantity) {
    (Quantity::cpu_from_milli(r.cpu.milli().div_ceil(2)), Quantity::bytes_from_milli(r.memory.milli().div_ceil(2)))
}

pub(super) fn cluster(platform: &Platform, spec: &ServerSpec, volumes: &Volumes) -> DynamicObject {
    let r = &spec.resources;
    let (cpu, memory) = instance_share(r);
    let compute = json!({"cpu": cpu.as_str(), "memory": memory.as_str()});
    let mut metadata = meta(spec, names::DATABASE);
    // Written both ways (not omitted when running) so that a dry-run piped to a client-side
    // `kubectl apply` resumes a hibernated cluster too.
    let hibernation = match spec.desired {
        Desired::Running => "off",
        Desired::Suspended => "on",
    };
    metadata.annotations = Some(BTreeMap::from([(HIBERNATION.to_owned(), hibernation.to_owned())]));
    DynamicObject {
        types: Some(TypeMeta { api_version: API_VERSION.into(), kind: KIND.into() }),
        metadata,
        data: json!({
            "spec": {
                "instances": r.database_instances,
                // Failover and rolling updates without an operator at hand.
                "primaryUpdateStrategy": "unsupervised",
                "enableSuperuserAccess": false,
                "bootstrap": {
                    // Synapse refuses a database whose collation is not C.
                    "initdb": {
                        "database": DATABASE_NAME,
                        "owner": OWNER,
                        "encoding": "UTF8",
                        "localeCollate": "C",
                        "localeCType": "C",
                    },
                },
                "storage": {"size": volumes.database.as_str(), "storageClass": platform.data_storage_class},
                "resources": {"requests": compute, "limits": compute},
                // Standbys on other nodes, or HA protects against nothing.
                "affinity": {"enablePodAntiAffinity": true, "topologyKey": "kubernetes.io/hostname"},
            },
        }),
    }
}
