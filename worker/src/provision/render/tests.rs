use super::*;
use k8s_openapi::api::core::v1::Container;
use serde_json::{json, Value};

/// The check against the real Kubernetes schemas.
mod schema;

fn plan() -> Value {
    json!({"servers": 1, "cpu": "2", "memory": "4Gi", "data_storage": "20Gi", "media_storage": "100Gi",
           "users": 100, "domains": 2, "custom_domain": false, "federation": false,
           "bandwidth_mbps": 100, "database_instances": 1})
}

fn spec_with(resources: Value) -> ServerSpec {
    ServerSpec {
        customer: Uuid::parse_str("6f1c1d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f").unwrap(),
        name: "blue-otter".into(),
        namespace: "mx-blue-otter".into(),
        domains: vec!["blue-otter.chat.example".into()],
        resources: Resources::from_json(&resources).unwrap(),
        desired: Desired::Running,
        secrets: ServerSecrets {
            signing_key: "ed25519 a_test c2lnbmluZy1rZXktZm9yLXRlc3Rz".into(),
            registration_shared_secret: "registration-secret-for-tests".into(),
            macaroon_secret_key: "macaroon-secret-for-tests".into(),
        },
        observed: Observed::default(),
    }
}

pub(super) fn spec() -> ServerSpec {
    spec_with(plan())
}

pub(super) fn with(patch: Value) -> ServerSpec {
    let mut p = plan();
    p.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
    spec_with(p)
}

pub(super) fn rendered(spec: &ServerSpec) -> Rendered {
    render(&Platform::default(), spec).unwrap()
}

fn find<'a>(r: &'a Rendered, kind: &str, name: &str) -> &'a Object {
    r.objects.iter().find(|o| o.kind() == kind && o.name() == name).unwrap_or_else(|| {
        panic!("no {kind} {name} in {:?}", r.objects.iter().map(|o| (o.kind(), o.name())).collect::<Vec<_>>())
    })
}

fn quota(r: &Rendered) -> BTreeMap<String, String> {
    match find(r, "ResourceQuota", names::QUOTA) {
        Object::ResourceQuota(q) => {
            q.spec.as_ref().unwrap().hard.as_ref().unwrap().iter().map(|(k, v)| (k.clone(), v.0.clone())).collect()
        }
        _ => unreachable!(),
    }
}

fn stateful_set(r: &Rendered) -> &StatefulSet {
    match find(r, "StatefulSet", names::SYNAPSE) {
        Object::StatefulSet(s) => s,
        _ => unreachable!(),
    }
}

fn synapse_container(r: &Rendered) -> &Container {
    &stateful_set(r).spec.template.spec.as_ref().unwrap().containers[0]
}

fn pod_annotation(r: &Rendered, key: &str) -> String {
    stateful_set(r).spec.template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[key].clone()
}

fn cluster(r: &Rendered) -> Value {
    find(r, database::KIND, names::DATABASE).to_json()
}

fn pvc_size(r: &Rendered, name: &str) -> String {
    find(r, "PersistentVolumeClaim", name).to_json()["spec"]["resources"]["requests"]["storage"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn homeserver_yaml(r: &Rendered) -> String {
    match find(r, "ConfigMap", names::CONFIG) {
        Object::ConfigMap(c) => c.data.as_ref().unwrap()["homeserver.yaml"].clone(),
        _ => unreachable!(),
    }
}

/// Every NetworkPolicy port, as JSON text, to look for a number in.
fn policy_ports(r: &Rendered) -> Vec<i64> {
    let mut ports = Vec::new();
    for o in r.objects.iter().filter(|o| o.kind() == "NetworkPolicy") {
        let spec = &o.to_json()["spec"];
        for rule in spec["ingress"].as_array().into_iter().chain(spec["egress"].as_array()).flatten() {
            for p in rule["ports"].as_array().into_iter().flatten() {
                ports.push(p["port"].as_i64().unwrap());
            }
        }
    }
    ports
}

#[test]
fn a_plan_renders_every_object_in_apply_order() {
    let r = rendered(&spec());
    let order: Vec<_> = r.objects.iter().map(|o| (o.kind(), o.name())).collect();
    assert_eq!(
        order,
        [
            ("Namespace", "mx-blue-otter"),
            ("ResourceQuota", "server-quota"),
            ("LimitRange", "server-limits"),
            ("ServiceAccount", "synapse"),
            ("NetworkPolicy", "default-deny"),
            ("NetworkPolicy", "allow-dns"),
            ("NetworkPolicy", "synapse"),
            ("NetworkPolicy", "database"),
            ("Secret", "synapse-secrets"),
            ("ConfigMap", "synapse-config"),
            ("PersistentVolumeClaim", "synapse-data"),
            ("PersistentVolumeClaim", "synapse-media"),
            ("Cluster", "synapse-db"),
            ("Service", "synapse"),
            ("StatefulSet", "synapse"),
            ("Ingress", "synapse"),
        ]
    );
    assert!(r.notes.is_empty());
    for o in &r.objects {
        let j = o.to_json();
        assert_eq!(j["apiVersion"], o.api_version(), "{}", o.kind());
        assert_eq!(j["kind"], o.kind());
        assert!(!o.api_version().is_empty());
        let labels = &j["metadata"]["labels"];
        assert_eq!(labels[labels::CUSTOMER], "6f1c1d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f", "{}", o.kind());
        assert_eq!(labels[labels::SERVER], "blue-otter");
        match o {
            Object::Namespace(_) => assert_eq!(o.namespace(), None),
            _ => assert_eq!(o.namespace(), Some("mx-blue-otter"), "{} {}", o.kind(), o.name()),
        }
    }
    assert_eq!(cluster(&r)["apiVersion"], "postgresql.cnpg.io/v1");
    let ns = find(&r, "Namespace", "mx-blue-otter").to_json();
    assert_eq!(ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");
    assert_eq!(ns["metadata"]["labels"][labels::PART_OF], labels::PART_OF_VALUE);
    let sa = find(&r, "ServiceAccount", "synapse").to_json();
    assert_eq!(sa["automountServiceAccountToken"], false);
}

#[test]
fn the_quota_is_the_plan_plus_the_database() {
    let r = rendered(&spec());
    // Synapse 2 CPU / 4Gi; each database instance half of that, for 1 instance plus the
    // CloudNativePG job slot; the data class holds Synapse's data volume and the instance's.
    let expected = BTreeMap::from(
        [
            ("requests.cpu", "4"),
            ("limits.cpu", "4"),
            ("requests.memory", "8Gi"),
            ("limits.memory", "8Gi"),
            ("requests.storage", "140Gi"),
            ("ssd.storageclass.storage.k8s.io/requests.storage", "40Gi"),
            ("standard.storageclass.storage.k8s.io/requests.storage", "100Gi"),
            ("persistentvolumeclaims", "3"),
            ("services.loadbalancers", "0"),
            ("services.nodeports", "0"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    assert_eq!(quota(&r), expected);

    // HA: three instances, and odd sizes stay exact.
    let r = rendered(&with(json!({"cpu": "1500m", "memory": "3Gi", "database_instances": 3})));
    let q = quota(&r);
    assert_eq!(q["requests.cpu"], "4500m", "1500m + 4 × 750m");
    assert_eq!(q["limits.memory"], "9Gi", "3Gi + 4 × 1536Mi");
    assert_eq!(q["ssd.storageclass.storage.k8s.io/requests.storage"], "80Gi");
    assert_eq!(q["persistentvolumeclaims"], "5");
    assert_eq!(cluster(&r)["spec"]["instances"], 3);

    // One class for both: its quota is the sum.
    let platform = Platform { media_storage_class: "ssd".into(), ..Platform::default() };
    let q = quota(&render(&platform, &spec()).unwrap());
    assert_eq!(q["ssd.storageclass.storage.k8s.io/requests.storage"], "140Gi");
    assert!(!q.contains_key("standard.storageclass.storage.k8s.io/requests.storage"));
}

#[test]
fn requests_equal_limits_from_the_plan() {
    let r = rendered(&spec());
    let res = synapse_container(&r).resources.as_ref().unwrap();
    assert_eq!(res.requests, res.limits);
    let requests = res.requests.as_ref().unwrap();
    assert_eq!(requests["cpu"].0, "2");
    assert_eq!(requests["memory"].0, "4Gi");
    let db = &cluster(&r)["spec"]["resources"];
    assert_eq!(db["requests"], db["limits"]);
    assert_eq!(db["requests"], json!({"cpu": "1", "memory": "2Gi"}));
    assert_eq!(pvc_size(&r, names::DATA_VOLUME), "20Gi");
    assert_eq!(pvc_size(&r, names::MEDIA_VOLUME), "100Gi");
    assert_eq!(cluster(&r)["spec"]["storage"], json!({"size": "20Gi", "storageClass": "ssd"}));
    let lr = find(&r, "LimitRange", names::LIMITS).to_json();
    assert_eq!(lr["spec"]["limits"][0]["max"], json!({"cpu": "2", "memory": "4Gi"}));
}

#[test]
fn a_restricted_pod_with_bandwidth_and_no_token() {
    let r = rendered(&with(json!({"bandwidth_mbps": 250})));
    let sts = stateful_set(&r);
    let pod = sts.spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let sc = synapse_container(&r).security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.as_ref().unwrap().drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(synapse_container(&r).image.as_deref(), Some(Platform::default().image.as_str()));
    assert_eq!(pod_annotation(&r, synapse::INGRESS_BANDWIDTH), "250M");
    assert_eq!(pod_annotation(&r, synapse::EGRESS_BANDWIDTH), "250M");
    assert_eq!(sts.spec.replicas, Some(1));
    // Volumes are the standalone claims, not templates the StatefulSet would own.
    assert!(sts.spec.volume_claim_templates.is_none());
    let claims: Vec<_> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()))
        .collect();
    assert_eq!(claims, [names::DATA_VOLUME, names::MEDIA_VOLUME]);
}

#[test]
fn a_volume_never_shrinks() {
    // Running on a bigger plan before: the downgrade keeps the larger volumes and says so.
    let mut s = with(json!({"data_storage": "10Gi", "media_storage": "50Gi"}));
    s.observed = Observed {
        data_storage: Some(Quantity::parse("20Gi").unwrap()),
        media_storage: Some(Quantity::parse("102400Mi").unwrap()),
        database_storage: Some(Quantity::parse("20Gi").unwrap()),
    };
    let r = rendered(&s);
    assert_eq!(pvc_size(&r, names::DATA_VOLUME), "20Gi");
    assert_eq!(pvc_size(&r, names::MEDIA_VOLUME), "102400Mi", "kept as the cluster spells it");
    assert_eq!(cluster(&r)["spec"]["storage"]["size"], "20Gi");
    let q = Quantity::parse;
    assert_eq!(
        r.notes,
        [
            Note::VolumeKept { volume: "synapse-data".into(), kept: q("20Gi").unwrap(), wanted: q("10Gi").unwrap() },
            Note::VolumeKept { volume: "synapse-media".into(), kept: q("100Gi").unwrap(), wanted: q("50Gi").unwrap() },
            Note::VolumeKept { volume: "synapse-db".into(), kept: q("20Gi").unwrap(), wanted: q("10Gi").unwrap() },
        ]
    );
    assert_eq!(
        serde_json::to_value(&r.notes[0]).unwrap(),
        json!({"type": "VolumeKept", "volume": "synapse-data", "kept": "20Gi", "wanted": "10Gi"})
    );
    // The quota counts the volumes that exist.
    assert_eq!(quota(&r)["ssd.storageclass.storage.k8s.io/requests.storage"], "40Gi");
    assert_eq!(quota(&r)["standard.storageclass.storage.k8s.io/requests.storage"], "100Gi");

    // Growing is the plan's size; equal says nothing.
    s.resources = Resources::from_json(&json!({"data_storage": "30Gi", "media_storage": "100Gi"})).unwrap();
    let r = rendered(&s);
    assert_eq!(pvc_size(&r, names::DATA_VOLUME), "30Gi");
    assert_eq!(pvc_size(&r, names::MEDIA_VOLUME), "100Gi");
    assert!(r.notes.is_empty(), "{:?}", r.notes);
}

#[test]
fn an_upgrade_raises_the_quota_first_and_a_downgrade_lowers_it_last() {
    let small = Resources::from_json(&json!({"cpu": "1", "memory": "2Gi", "data_storage": "10Gi"})).unwrap();
    let big = Resources::from_json(&json!({"cpu": "4", "memory": "8Gi", "data_storage": "50Gi"})).unwrap();
    assert_eq!(apply_order(&small, &big), [Step::Quota(big.clone()), Step::Workload]);
    assert_eq!(apply_order(&big, &small), [Step::Workload, Step::Quota(small.clone())]);
    // A larger database is an upgrade too.
    let ha = Resources { database_instances: 3, ..small.clone() };
    assert_eq!(apply_order(&small, &ha), [Step::Quota(ha.clone()), Step::Workload]);
    // Unchanged sizes (more users is config only): the quota apply is a no-op.
    let more_users = Resources { users: 1000, ..small.clone() };
    assert_eq!(apply_order(&small, &more_users), [Step::Quota(more_users.clone()), Step::Workload]);
    // Mixed: a quota that admits both while the workload changes, then the new one.
    let cpu_up_memory_down =
        Resources { cpu: Quantity::parse("2").unwrap(), memory: Quantity::parse("1Gi").unwrap(), ..small.clone() };
    let steps = apply_order(&small, &cpu_up_memory_down);
    let Step::Quota(covering) = &steps[0] else { panic!("{steps:?}") };
    assert_eq!((covering.cpu.as_str(), covering.memory.as_str()), ("2", "2Gi"));
    assert_eq!(steps[1..], [Step::Workload, Step::Quota(cpu_up_memory_down.clone())]);

    // The steps render: the covering quota is larger than either plan's.
    let s = spec();
    let Object::ResourceQuota(q) = render_quota(&Platform::default(), &s, covering) else { unreachable!() };
    assert_eq!(q.spec.unwrap().hard.unwrap()["limits.cpu"].0, "4");
    let r = rendered(&s);
    assert_eq!(r.workload().count(), r.objects.len() - 1);
    assert!(r.workload().all(|o| o.kind() != "ResourceQuota"));
}

#[test]
fn federation_opens_8448_and_only_then() {
    let private = rendered(&spec());
    assert!(!policy_ports(&private).contains(&8448));
    let synapse_policy = find(&private, "NetworkPolicy", "synapse").to_json().to_string();
    assert!(!synapse_policy.contains("0.0.0.0/0"), "no way out to the internet: {synapse_policy}");
    let config = homeserver_yaml(&private);
    assert!(config.contains("federation_domain_whitelist: []"), "{config}");
    assert!(config.contains("trusted_key_servers: []"), "{config}");
    assert!(!config.contains("8448"));
    assert!(!find(&private, "Service", "synapse").to_json().to_string().contains("8448"));
    assert!(!find(&private, "Ingress", "synapse").to_json().to_string().contains("_matrix/federation"));

    let public = rendered(&with(json!({"federation": true})));
    let ports = policy_ports(&public);
    assert_eq!(ports.iter().filter(|&&p| p == 8448).count(), 2, "in from the ingress controller, out to the world");
    let synapse_policy = find(&public, "NetworkPolicy", "synapse").to_json();
    let out = &synapse_policy["spec"]["egress"][1];
    assert_eq!(out["to"][0]["ipBlock"]["cidr"], "0.0.0.0/0");
    assert_eq!(out["ports"], json!([{"port": 8448, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}]));
    let config = homeserver_yaml(&public);
    assert!(!config.contains("federation_domain_whitelist"), "{config}");
    assert!(config.contains("8448"));
    assert!(find(&public, "Service", "synapse").to_json().to_string().contains("8448"));
    let ingress = find(&public, "Ingress", "synapse").to_json();
    assert_eq!(ingress["spec"]["rules"][0]["http"]["paths"][0]["path"], "/_matrix/federation");
    assert_eq!(ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["number"], 8448);
    // DNS is always allowed, and the default deny is always there.
    assert!(ports.contains(&53));
    assert_eq!(find(&public, "NetworkPolicy", "default-deny").to_json()["spec"]["podSelector"], json!({}));
}

#[test]
fn the_homeserver_config_follows_the_plan() {
    let r = rendered(&spec());
    let config = homeserver_yaml(&r);
    for line in [
        "server_name: blue-otter.chat.example",
        "max_mau_value: 100",
        "limit_usage_by_mau: true",
        "host: synapse-db-rw",
        "media_store_path: /media/store",
        "signing_key_path: /secrets/signing.key",
        "enable_registration: false",
    ] {
        assert!(config.contains(line), "{line:?} missing in\n{config}");
    }
    // Secrets live in the Secret only.
    assert!(!config.contains("registration-secret-for-tests"));
    let secret = find(&r, "Secret", names::SECRET).to_json();
    let decoded = |k: &str| {
        let Object::Secret(s) = find(&r, "Secret", names::SECRET) else { unreachable!() };
        String::from_utf8(s.data.as_ref().unwrap()[k].0.clone()).unwrap()
    };
    assert_eq!(decoded(synapse::REGISTRATION_SHARED_SECRET), "registration-secret-for-tests");
    assert_eq!(decoded(synapse::MACAROON_SECRET_KEY), "macaroon-secret-for-tests");
    assert_eq!(decoded(synapse::SIGNING_KEY), "ed25519 a_test c2lnbmluZy1rZXktZm9yLXRlc3Rz");
    assert_eq!(secret["immutable"], true);
    // Debug output (logs) never shows them.
    let debug = format!("{:?}", spec());
    assert!(!debug.contains("secret-for-tests") && !debug.contains("c2lnbmluZy"), "{debug}");
}

#[test]
fn suspended_scales_to_zero_and_hibernates_the_database() {
    let running = rendered(&spec());
    assert_eq!(stateful_set(&running).spec.replicas, Some(1));
    assert_eq!(cluster(&running)["metadata"]["annotations"][database::HIBERNATION], "off");

    let suspended = rendered(&ServerSpec { desired: Desired::Suspended, ..spec() });
    assert_eq!(stateful_set(&suspended).spec.replicas, Some(0));
    assert_eq!(cluster(&suspended)["metadata"]["annotations"][database::HIBERNATION], "on");
    // Volumes stay: same claims, same sizes.
    assert_eq!(pvc_size(&suspended, names::DATA_VOLUME), pvc_size(&running, names::DATA_VOLUME));
    // "on" must stay a string for YAML 1.1 readers (kubectl, PyYAML), not become true.
    let yaml = to_multi_document_yaml(&suspended.objects);
    assert!(yaml.contains("cnpg.io/hibernation: \"on\"") || yaml.contains("cnpg.io/hibernation: 'on'"), "{yaml}");
}

#[test]
fn the_checksum_changes_with_the_config_and_only_then() {
    let checksum = |s: &ServerSpec| pod_annotation(&rendered(s), synapse::CONFIG_CHECKSUM);
    let base = checksum(&spec());
    assert_eq!(base.len(), 64);
    assert_eq!(checksum(&spec()), base);
    // Not config: sizes, bandwidth, suspension, the observed volumes.
    assert_eq!(checksum(&with(json!({"cpu": "3", "memory": "6Gi", "bandwidth_mbps": 10}))), base);
    assert_eq!(checksum(&ServerSpec { desired: Desired::Suspended, ..spec() }), base);
    // Config: users, federation, the server name.
    assert_ne!(checksum(&with(json!({"users": 101}))), base);
    assert_ne!(checksum(&with(json!({"federation": true}))), base);
    assert_ne!(checksum(&ServerSpec { domains: vec!["other.chat.example".into()], ..spec() }), base);
    // It is the sum of what the ConfigMap holds.
    let r = rendered(&spec());
    let Object::ConfigMap(config) = find(&r, "ConfigMap", names::CONFIG) else { unreachable!() };
    assert_eq!(synapse::config_checksum(config), base);
}

#[test]
fn domains_are_limited_by_the_plan_and_checked() {
    let two = || vec!["a.chat.example".to_owned(), "b.chat.example".to_owned()];
    let r = rendered(&ServerSpec { domains: two(), ..spec() });
    let ingress = find(&r, "Ingress", "synapse").to_json();
    assert_eq!(ingress["spec"]["tls"], json!([{"hosts": two(), "secretName": "synapse-tls"}]));
    assert_eq!(ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"], "letsencrypt");
    assert_eq!(ingress["spec"]["rules"][1]["host"], "b.chat.example");
    assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
    assert!(homeserver_yaml(&r).contains("server_name: a.chat.example"));

    let refused = |s: ServerSpec| render(&Platform::default(), &s).unwrap_err();
    let mut three = two();
    three.push("c.chat.example".into());
    assert_eq!(refused(ServerSpec { domains: three, ..spec() }), RenderError::TooManyDomains { given: 3, allowed: 2 });
    assert_eq!(
        refused(ServerSpec { domains: two(), ..with(json!({"domains": 1})) }),
        RenderError::TooManyDomains { given: 2, allowed: 1 }
    );
    assert_eq!(refused(ServerSpec { domains: vec![], ..spec() }), RenderError::NoDomain);
    for bad in ["Upper.example", "no_underscore.example", "localhost", "-a.example", "a..example"] {
        assert_eq!(refused(ServerSpec { domains: vec![bad.into()], ..spec() }), RenderError::InvalidDomain(bad.into()));
    }
    let dup = vec!["a.chat.example".to_owned(), "a.chat.example".to_owned()];
    assert_eq!(refused(ServerSpec { domains: dup, ..spec() }), RenderError::DuplicateDomain("a.chat.example".into()));
    assert!(matches!(refused(ServerSpec { name: "Blue".into(), ..spec() }), RenderError::InvalidName { .. }));
    assert!(matches!(
        refused(ServerSpec { namespace: "blue-otter".into(), ..spec() }),
        RenderError::InvalidName { .. }
    ));
}

#[test]
fn resources_are_read_with_defaults_and_checked() {
    let defaults = Resources::from_json(&json!({})).unwrap();
    assert_eq!(defaults, Resources::default());
    assert_eq!((defaults.cpu.as_str(), defaults.memory.as_str(), defaults.database_instances), ("1", "2Gi", 1));
    // 0.1.0 catalogs called the data volume `storage`; unknown fields are a newer catalog's.
    let old = Resources::from_json(&json!({"storage": "100Gi", "gpu": 1})).unwrap();
    assert_eq!(old.data_storage.as_str(), "100Gi");

    let path = |v: Value| match Resources::from_json(&v) {
        Err(ResourcesError { path, message }) => format!("{path}: {message}"),
        other => panic!("{v} gave {other:?}"),
    };
    assert!(path(json!({"cpu": "0"})).starts_with("$.resources.cpu"));
    assert!(path(json!({"database_instances": 10})).starts_with("$.resources.database_instances"));
    assert!(path(json!({"users": 0})).starts_with("$.resources.users"));
    assert!(path(json!({"memory": "4GB"})).contains("4GB"));
    assert!(
        path(json!({"federation": "yes"})).contains("federation")
            || path(json!({"federation": "yes"})).contains("bool")
    );
}

#[test]
fn quantities_are_exact() {
    let q = |s: &str| Quantity::parse(s).unwrap();
    assert_eq!(q("1Gi"), q("1024Mi"));
    assert_eq!(q("0.5"), q("500m"));
    assert_eq!(q("1e3").milli(), 1_000_000);
    assert_eq!(q("1.5Gi").milli(), 1536 * 1024 * 1024 * 1000);
    assert!(q("20Gi") > q("20G"));
    assert_eq!(Quantity::cpu_from_milli(2500).as_str(), "2500m");
    assert_eq!(Quantity::cpu_from_milli(3000).as_str(), "3");
    assert_eq!(Quantity::bytes_from_milli(q("1536Mi").milli()).as_str(), "1536Mi");
    assert_eq!(Quantity::bytes_from_milli(q("2Ti").milli()).as_str(), "2Ti");
    assert_eq!(Quantity::bytes_from_milli(q("1G").milli()).as_str(), "954Mi", "rounded up to a MiB");
    for bad in ["", "Gi", "4 Gi", "4GB", "4gi", "1.2.3", "-1", ".", "1e", "0.0001", "1m5"] {
        assert!(Quantity::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn rendering_is_deterministic() {
    let a = to_multi_document_yaml(&rendered(&spec()).objects);
    let b = to_multi_document_yaml(&rendered(&spec()).objects);
    assert_eq!(a, b);
    // The plan's key order does not matter either.
    let reordered: Value =
        serde_json::from_str(&serde_json::to_string(&plan()).unwrap().replace("\"cpu\"", "\"zzz\"")).unwrap();
    let mut reordered = reordered.as_object().unwrap().clone();
    let cpu = reordered.remove("zzz").unwrap();
    reordered.insert("cpu".into(), cpu);
    assert_eq!(to_multi_document_yaml(&rendered(&spec_with(Value::Object(reordered))).objects), a);
    assert_eq!(a.matches("\n---\n").count() + 1, rendered(&spec()).objects.len());
    assert!(a.starts_with("---\napiVersion: v1\nkind: Namespace\n"), "{}", &a[..200]);
}
