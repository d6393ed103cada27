//! Who may talk to whom: NetworkPolicies (default deny, then exactly what a homeserver
//! needs), the Service and the TLS Ingress.

use super::synapse::{CLIENT_PORT, FEDERATION_PORT};
use super::{database, meta, names, synapse_selector, Platform, ServerSpec};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, IPBlock, Ingress, IngressBackend, IngressRule, IngressServiceBackend,
    IngressSpec, IngressTLS, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

pub const CLUSTER_ISSUER: &str = "cert-manager.io/cluster-issuer";
/// The label CloudNativePG puts on every pod of a cluster.
const CNPG_CLUSTER_LABEL: &str = "cnpg.io/cluster";
/// CloudNativePG's instance manager: the operator polls its status on this port.
const CNPG_STATUS_PORT: i32 = 8000;
/// Where the Kubernetes API answers (the CloudNativePG instance manager watches its Cluster).
const API_SERVER_PORTS: [i32; 2] = [443, 6443];
/// Private ranges: federation traffic goes to the internet, never into the cluster's network.
const PRIVATE_RANGES: [&str; 3] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];

pub(super) fn policies(platform: &Platform, spec: &ServerSpec) -> Vec<NetworkPolicy> {
    let federation = spec.resources.federation;
    let all_pods = LabelSelector::default();
    let kube_system = BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), "kube-system".to_owned())]);
    let database_pods = BTreeMap::from([(CNPG_CLUSTER_LABEL.to_owned(), names::DATABASE.to_owned())]);

    let synapse_in = vec![NetworkPolicyIngressRule {
        from: Some(vec![namespace_peer(&platform.ingress_controller_namespace)]),
        ports: Some(tcp(&if federation { vec![CLIENT_PORT, FEDERATION_PORT] } else { vec![CLIENT_PORT] })),
    }];
    let mut synapse_out = vec![NetworkPolicyEgressRule {
        to: Some(vec![pod_peer(&database_pods)]),
        ports: Some(tcp(&[database::PORT.into()])),
    }];
    if federation {
        // Inbound federation arrives through the ingress controller (above); outbound goes to
        // other homeservers on 8448, or on 443 where their .well-known delegates to it.
        synapse_out.push(NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: "0.0.0.0/0".into(),
                    except: Some(PRIVATE_RANGES.map(String::from).to_vec()),
                }),
                ..NetworkPolicyPeer::default()
            }]),
            ports: Some(tcp(&[FEDERATION_PORT, 443])),
        });
    }

    vec![
        policy(spec, "default-deny", all_pods.clone(), vec![], vec![]),
        policy(
            spec,
            "allow-dns",
            all_pods,
            vec![],
            vec![NetworkPolicyEgressRule {
                to: Some(vec![namespace_peer(&kube_system)]),
                ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
            }],
        ),
        policy(spec, "synapse", selector(synapse_selector()), synapse_in, synapse_out),
        policy(
            spec,
            "database",
            selector(database_pods.clone()),
            vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![pod_peer(&synapse_selector())]),
                    ports: Some(tcp(&[database::PORT.into()])),
                },
                // Replication between instances, and the operator's status checks.
                NetworkPolicyIngressRule {
                    from: Some(vec![pod_peer(&database_pods), namespace_peer(&platform.database_operator_namespace)]),
                    ports: Some(tcp(&[database::PORT.into(), CNPG_STATUS_PORT])),
                },
            ],
            vec![
                NetworkPolicyEgressRule {
                    to: Some(vec![pod_peer(&database_pods)]),
                    ports: Some(tcp(&[database::PORT.into(), CNPG_STATUS_PORT])),
                },
                // The API server's address cannot be selected by label: any address, its ports.
                NetworkPolicyEgressRule { to: None, ports: Some(tcp(&API_SERVER_PORTS)) },
            ],
        ),
    ]
}

/// A policy for `pods`. Both directions are always listed so that what is not allowed here or
/// in another policy is denied.
fn policy(
    spec: &ServerSpec,
    name: &str,
    pods: LabelSelector,
    ingress: Vec<NetworkPolicyIngressRule>,
    egress: Vec<NetworkPolicyEgressRule>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(spec, name),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: (!ingress.is_empty()).then_some(ingress),
            egress: (!egress.is_empty()).then_some(egress),
        }),
    }
}

fn selector(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector { match_labels: Some(labels), ..LabelSelector::default() }
}

fn namespace_peer(labels: &BTreeMap<String, String>) -> NetworkPolicyPeer {
    NetworkPolicyPeer { namespace_selector: Some(selector(labels.clone())), ..NetworkPolicyPeer::default() }
}

/// Pods of this namespace.
fn pod_peer(labels: &BTreeMap<String, String>) -> NetworkPolicyPeer {
    NetworkPolicyPeer { pod_selector: Some(selector(labels.clone())), ..NetworkPolicyPeer::default() }
}

fn port(protocol: &str, port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort { protocol: Some(protocol.into()), port: Some(IntOrString::Int(port)), end_port: None }
}

fn tcp(ports: &[i32]) -> Vec<NetworkPolicyPort> {
    ports.iter().map(|&p| port("TCP", p)).collect()
}

pub(super) fn service(spec: &ServerSpec) -> Service {
    let mut ports = vec![service_port("http", CLIENT_PORT)];
    if spec.resources.federation {
        ports.push(service_port("federation", FEDERATION_PORT));
    }
    Service {
        metadata: meta(spec, names::SYNAPSE),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(synapse_selector()),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// HTTPS for every domain of the server, certificates from cert-manager. With federation,
/// server-to-server paths go to the federation listener (other servers reach it on 443
/// through `.well-known` delegation, which Synapse then serves).
pub(super) fn ingress(platform: &Platform, spec: &ServerSpec) -> Ingress {
    let backend = |port: i32| IngressBackend {
        service: Some(IngressServiceBackend {
            name: names::SYNAPSE.into(),
            port: Some(ServiceBackendPort { number: Some(port), name: None }),
        }),
        resource: None,
    };
    let path = |path: &str, port: i32| HTTPIngressPath {
        path: Some(path.into()),
        path_type: "Prefix".into(),
        backend: backend(port),
    };
    let mut paths = Vec::new();
    if spec.resources.federation {
        paths.push(path("/_matrix/federation", FEDERATION_PORT));
        paths.push(path("/_matrix/key", FEDERATION_PORT));
    }
    paths.push(path("/", CLIENT_PORT));
    let rules = spec
        .domains
        .iter()
        .map(|host| IngressRule { host: Some(host.clone()), http: Some(HTTPIngressRuleValue { paths: paths.clone() }) })
        .collect();
    let mut metadata = meta(spec, names::SYNAPSE);
    metadata.annotations = Some(BTreeMap::from([(CLUSTER_ISSUER.to_owned(), platform.cluster_issuer.clone())]));
    Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: Some(platform.ingress_class.clone()),
            tls: Some(vec![IngressTLS {
                hosts: Some(spec.domains.clone()),
                secret_name: Some(names::TLS_SECRET.into()),
            }]),
            rules: Some(rules),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    }
}
