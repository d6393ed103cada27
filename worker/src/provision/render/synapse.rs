//! Synapse itself: its secrets, its homeserver.yaml, its volumes and the StatefulSet that
//! runs it.

use super::resources::{Quantity, Resources, ToK8s};
use super::{database, meta, names, server_labels, synapse_selector, Desired, Note, Observed, Platform, ServerSpec};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The client API (and, behind the ingress, `.well-known`).
pub const CLIENT_PORT: i32 = 8008;
/// Server-to-server traffic; only listened on when the plan federates.
pub const FEDERATION_PORT: i32 = 8448;
/// The pod-template annotation that rolls Synapse when its config changes.
pub const CONFIG_CHECKSUM: &str = "checksum/config";
pub const INGRESS_BANDWIDTH: &str = "kubernetes.io/ingress-bandwidth";
pub const EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";
/// The `synapse` user of the official image.
const SYNAPSE_UID: i64 = 991;
const CONFIG_FILE: &str = "homeserver.yaml";
const CONFIG_DIR: &str = "/config";
const SECRETS_DIR: &str = "/secrets";
const DATA_DIR: &str = "/data";
const MEDIA_DIR: &str = "/media";
/// Keys of the server's Secret (file names under /secrets).
pub const SIGNING_KEY: &str = "signing.key";
pub const REGISTRATION_SHARED_SECRET: &str = "registration_shared_secret";
pub const MACAROON_SECRET_KEY: &str = "macaroon_secret_key";

/// The size of each volume: the plan's, or the existing one when that is larger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Volumes {
    pub data: Quantity,
    pub media: Quantity,
    /// Each database instance's.
    pub database: Quantity,
}

impl Volumes {
    /// Volumes never shrink (Kubernetes refuses it, and it would lose data): a plan that asks
    /// for less keeps the existing size and says so.
    pub fn kept(resources: &Resources, observed: &Observed) -> (Volumes, Vec<Note>) {
        let mut notes = Vec::new();
        let mut keep = |volume: &str, wanted: &Quantity, existing: &Option<Quantity>| match existing {
            Some(existing) if existing > wanted => {
                notes.push(Note::VolumeKept { volume: volume.into(), kept: existing.clone(), wanted: wanted.clone() });
                existing.clone()
            }
            _ => wanted.clone(),
        };
        let volumes = Volumes {
            data: keep(names::DATA_VOLUME, &resources.data_storage, &observed.data_storage),
            media: keep(names::MEDIA_VOLUME, &resources.media_storage, &observed.media_storage),
            database: keep(names::DATABASE, &resources.data_storage, &observed.database_storage),
        };
        (volumes, notes)
    }
}

/// The secrets as files for Synapse's `*_path` settings, so that they never appear in the
/// ConfigMap. Stored as `data` (not `stringData`, which the API server rewrites) so that the
/// applied object reads back as rendered.
pub(super) fn secret(spec: &ServerSpec) -> Secret {
    let s = &spec.secrets;
    let data = BTreeMap::from([
        (SIGNING_KEY.to_owned(), ByteString(s.signing_key.as_bytes().to_vec())),
        (REGISTRATION_SHARED_SECRET.to_owned(), ByteString(s.registration_shared_secret.as_bytes().to_vec())),
        (MACAROON_SECRET_KEY.to_owned(), ByteString(s.macaroon_secret_key.as_bytes().to_vec())),
    ]);
    Secret {
        metadata: meta(spec, names::SECRET),
        data: Some(data),
        type_: Some("Opaque".into()),
        immutable: Some(true),
        ..Secret::default()
    }
}

/// homeserver.yaml. Without federation the server is private: no federation listener, an
/// empty federation whitelist, no key servers and no public room directory over federation.
pub(super) fn homeserver_config(spec: &ServerSpec) -> serde_json::Value {
    let r = &spec.resources;
    let server_name = &spec.domains[0];
    let mut listeners = vec![json!({
        "port": CLIENT_PORT, "type": "http", "tls": false, "x_forwarded": true,
        "bind_addresses": ["0.0.0.0"],
        "resources": [{"names": ["client"], "compress": false}],
    })];
    if r.federation {
        listeners.push(json!({
            "port": FEDERATION_PORT, "type": "http", "tls": false, "x_forwarded": true,
            "bind_addresses": ["0.0.0.0"],
            "resources": [{"names": ["federation"], "compress": false}],
        }));
    }
    let mut config = json!({
        "server_name": server_name,
        "public_baseurl": format!("https://{server_name}/"),
        "report_stats": false,
        "pid_file": format!("{DATA_DIR}/homeserver.pid"),
        "listeners": listeners,
        // The password comes from PGPASSWORD (the CloudNativePG app secret), read by libpq.
        "database": {
            "name": "psycopg2",
            "args": {
                "host": database::read_write_service(),
                "port": database::PORT,
                "user": database::OWNER,
                "dbname": database::DATABASE_NAME,
                "sslmode": "require",
                "cp_min": 5,
                "cp_max": 10,
            },
        },
        "media_store_path": format!("{MEDIA_DIR}/store"),
        "signing_key_path": format!("{SECRETS_DIR}/{SIGNING_KEY}"),
        "registration_shared_secret_path": format!("{SECRETS_DIR}/{REGISTRATION_SHARED_SECRET}"),
        "macaroon_secret_key_path": format!("{SECRETS_DIR}/{MACAROON_SECRET_KEY}"),
        "enable_registration": false,
        "limit_usage_by_mau": true,
        "max_mau_value": r.users,
        "serve_server_wellknown": r.federation,
    });
    if !r.federation {
        let private = json!({
            "federation_domain_whitelist": [],
            "trusted_key_servers": [],
            "allow_public_rooms_over_federation": false,
        });
        config.as_object_mut().expect("an object").extend(private.as_object().expect("an object").clone());
    }
    config
}

pub(super) fn config_map(spec: &ServerSpec) -> ConfigMap {
    let data = BTreeMap::from([(CONFIG_FILE.to_owned(), super::yaml(&homeserver_config(spec)))]);
    ConfigMap { metadata: meta(spec, names::CONFIG), data: Some(data), ..ConfigMap::default() }
}

/// sha256 of the ConfigMap's data (sorted keys, so the same config always gives the same sum).
pub fn config_checksum(config: &ConfigMap) -> String {
    let data = serde_json::to_vec(&config.data).expect("a map of strings serializes");
    hex::encode(Sha256::digest(&data))
}

/// The data and media volumes, standalone so that scaling to 0 or deleting the StatefulSet
/// never touches them.
pub(super) fn volume_claims(platform: &Platform, spec: &ServerSpec, volumes: &Volumes) -> Vec<PersistentVolumeClaim> {
    let claim = |name: &str, class: &str, size: &Quantity| PersistentVolumeClaim {
        metadata: meta(spec, name),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: Some(class.to_owned()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), size.k8s())])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    vec![
        claim(names::DATA_VOLUME, &platform.data_storage_class, &volumes.data),
        claim(names::MEDIA_VOLUME, &platform.media_storage_class, &volumes.media),
    ]
}

pub(super) fn stateful_set(platform: &Platform, spec: &ServerSpec, config: &ConfigMap) -> StatefulSet {
    let r = &spec.resources;
    let mut pod_labels = server_labels(spec);
    pod_labels.extend(synapse_selector());
    let bandwidth = format!("{}M", r.bandwidth_mbps);
    let annotations = BTreeMap::from([
        (CONFIG_CHECKSUM.to_owned(), config_checksum(config)),
        (INGRESS_BANDWIDTH.to_owned(), bandwidth.clone()),
        (EGRESS_BANDWIDTH.to_owned(), bandwidth),
    ]);
    let compute = BTreeMap::from([("cpu".to_owned(), r.cpu.k8s()), ("memory".to_owned(), r.memory.k8s())]);
    let mut ports = vec![port("http", CLIENT_PORT)];
    if r.federation {
        ports.push(port("federation", FEDERATION_PORT));
    }
    let health = Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/health".into()),
            port: IntOrString::Int(CLIENT_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        ..Probe::default()
    };
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    };
    let container = Container {
        name: names::SYNAPSE.into(),
        image: Some(platform.image.clone()),
        // Straight to the homeserver: the image's start script wants to chown as root.
        command: Some(
            ["python", "-m", "synapse.app.homeserver", "--config-path", &format!("{CONFIG_DIR}/{CONFIG_FILE}")]
                .map(String::from)
                .to_vec(),
        ),
        env: Some(vec![EnvVar {
            name: "PGPASSWORD".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: database::app_secret(),
                    key: "password".into(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(ports),
        // requests = limits: Guaranteed QoS, the customer gets exactly what the plan says.
        resources: Some(ResourceRequirements {
            requests: Some(compute.clone()),
            limits: Some(compute),
            ..ResourceRequirements::default()
        }),
        security_context: Some(restricted_container()),
        readiness_probe: Some(health.clone()),
        liveness_probe: Some(Probe { initial_delay_seconds: Some(30), failure_threshold: Some(6), ..health }),
        volume_mounts: Some(vec![
            mount("config", CONFIG_DIR, true),
            mount("secrets", SECRETS_DIR, true),
            mount("data", DATA_DIR, false),
            mount("media", MEDIA_DIR, false),
            // The root filesystem is read-only; Python and Synapse still want a scratch space.
            mount("tmp", "/tmp", false),
        ]),
        ..Container::default()
    };
    let claim = |name: &str, claim: &str| Volume {
        name: name.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource { claim_name: claim.into(), read_only: None }),
        ..Volume::default()
    };
    let volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource { name: names::CONFIG.into(), ..ConfigMapVolumeSource::default() }),
            ..Volume::default()
        },
        Volume {
            name: "secrets".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(names::SECRET.into()),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        claim("data", names::DATA_VOLUME),
        claim("media", names::MEDIA_VOLUME),
        Volume { name: "tmp".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() },
    ];
    let pod = PodSpec {
        service_account_name: Some(names::SERVICE_ACCOUNT.into()),
        automount_service_account_token: Some(false),
        // No Kubernetes service addresses leak into the environment.
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(SYNAPSE_UID),
            run_as_group: Some(SYNAPSE_UID),
            fs_group: Some(SYNAPSE_UID),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
            ..PodSecurityContext::default()
        }),
        containers: vec![container],
        volumes: Some(volumes),
        ..PodSpec::default()
    };
    StatefulSet {
        metadata: meta(spec, names::SYNAPSE),
        spec: StatefulSetSpec {
            replicas: Some(match spec.desired {
                Desired::Running => 1,
                Desired::Suspended => 0,
            }),
            selector: LabelSelector { match_labels: Some(synapse_selector()), ..LabelSelector::default() },
            service_name: Some(names::SYNAPSE.into()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    }
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

/// What the `restricted` Pod Security Standard asks of every container.
fn restricted_container() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
        ..SecurityContext::default()
    }
}
