//! The namespace and its fences: the quota the plan buys, default container limits, and a
//! service account with no API token.

use super::resources::{Quantity, Resources, ToK8s};
use super::{database, meta, names, server_labels, synapse, Platform, ServerSpec};
use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, ResourceQuota, ResourceQuotaSpec, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

/// Pod Security Admission: nothing in a customer's namespace may run privileged.
pub const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// Limits of a container that names none (a sidecar someone adds by hand, an operator's
/// helper): small, so that it cannot eat the quota.
const DEFAULT_CONTAINER_CPU_MILLI: u128 = 100;
const DEFAULT_CONTAINER_MEMORY: &str = "128Mi";

pub(super) fn namespace(spec: &ServerSpec) -> Namespace {
    let mut labels = server_labels(spec);
    labels.insert(POD_SECURITY_ENFORCE.to_owned(), "restricted".to_owned());
    Namespace {
        metadata: ObjectMeta { name: Some(spec.namespace.clone()), labels: Some(labels), ..ObjectMeta::default() },
        ..Namespace::default()
    }
}

/// What the server may use in all: Synapse (requests = limits), the database instances plus
/// one more for CloudNativePG's initdb/join job, the volumes at their kept size (a volume kept
/// after a downgrade still counts), and no LoadBalancer or NodePort (traffic comes through
/// the shared ingress only).
pub(super) fn quota(platform: &Platform, spec: &ServerSpec, resources: &Resources) -> ResourceQuota {
    let (volumes, _) = synapse::Volumes::kept(resources, &spec.observed);
    let instances = u128::from(resources.database_instances);
    let (db_cpu, db_memory) = database::instance_share(resources);
    let pod_slots = instances + 1;
    let cpu = Quantity::cpu_from_milli(resources.cpu.milli() + db_cpu.milli() * pod_slots);
    let memory = Quantity::bytes_from_milli(resources.memory.milli() + db_memory.milli() * pod_slots);

    let mut per_class: BTreeMap<&str, u128> = BTreeMap::new();
    *per_class.entry(&platform.data_storage_class).or_default() +=
        volumes.data.milli() + volumes.database.milli() * instances;
    *per_class.entry(&platform.media_storage_class).or_default() += volumes.media.milli();
    let total_storage: u128 = per_class.values().sum();

    let q = |s: String| K8sQuantity(s);
    let mut hard = BTreeMap::from([
        ("requests.cpu".to_owned(), cpu.k8s()),
        ("limits.cpu".to_owned(), cpu.k8s()),
        ("requests.memory".to_owned(), memory.k8s()),
        ("limits.memory".to_owned(), memory.k8s()),
        ("requests.storage".to_owned(), Quantity::bytes_from_milli(total_storage).k8s()),
        // Synapse's two volumes and one per database instance.
        ("persistentvolumeclaims".to_owned(), q((2 + instances).to_string())),
        ("services.loadbalancers".to_owned(), q("0".into())),
        ("services.nodeports".to_owned(), q("0".into())),
    ]);
    for (class, milli) in per_class {
        hard.insert(
            format!("{class}.storageclass.storage.k8s.io/requests.storage"),
            Quantity::bytes_from_milli(milli).k8s(),
        );
    }
    ResourceQuota {
        metadata: meta(spec, names::QUOTA),
        spec: Some(ResourceQuotaSpec { hard: Some(hard), ..ResourceQuotaSpec::default() }),
        ..ResourceQuota::default()
    }
}

/// Defaults for containers that name no resources (a quota on requests and limits refuses
/// such pods otherwise), and no single container larger than the plan's Synapse.
pub(super) fn limit_range(spec: &ServerSpec) -> LimitRange {
    let r = &spec.resources;
    let default_memory = Quantity::parse(DEFAULT_CONTAINER_MEMORY).expect("valid");
    let defaults = BTreeMap::from([
        ("cpu".to_owned(), Quantity::cpu_from_milli(DEFAULT_CONTAINER_CPU_MILLI.min(r.cpu.milli())).k8s()),
        ("memory".to_owned(), default_memory.min(r.memory.clone()).k8s()),
    ]);
    let max = BTreeMap::from([("cpu".to_owned(), r.cpu.k8s()), ("memory".to_owned(), r.memory.k8s())]);
    LimitRange {
        metadata: meta(spec, names::LIMITS),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".into(),
                default: Some(defaults.clone()),
                default_request: Some(defaults),
                max: Some(max),
                ..LimitRangeItem::default()
            }],
        }),
    }
}

/// Synapse needs no Kubernetes API access: no token is mounted.
pub(super) fn service_account(spec: &ServerSpec) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(spec, names::SERVICE_ACCOUNT),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}
