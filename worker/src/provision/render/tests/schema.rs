use super::{rendered, spec, with};
use crate::provision::render::{to_multi_document_yaml, Desired, Object, ServerSpec};
use serde_json::json;

/// Every rendered object against the real Kubernetes 1.32 schemas (`kubernetes-validate`,
/// PyPI, also run by `make test`'s environment). The CloudNativePG Cluster is left out: the
/// tool only knows the built-in kinds and no copy of the CRD's schema is available offline,
/// so its fields (instances, storage, resources, bootstrap.initdb, affinity, the hibernation
/// annotation) are checked by the unit tests above only.
#[test]
fn kubernetes_validate_accepts_every_object() {
    let which = std::process::Command::new("kubernetes-validate").arg("--version").output();
    let Ok(version) = which else {
        panic!("kubernetes-validate is not on PATH: `pip install kubernetes-validate` (the schema check must not pass silently)");
    };
    assert!(version.status.success(), "kubernetes-validate --version failed: {version:?}");
    let dir = std::env::temp_dir().join(format!("render-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (label, s) in [
        ("private", spec()),
        (
            "federated",
            ServerSpec { desired: Desired::Suspended, ..with(json!({"federation": true, "database_instances": 3})) },
        ),
    ] {
        let built_in: Vec<Object> =
            rendered(&s).objects.into_iter().filter(|o| !matches!(o, Object::Custom(_))).collect();
        assert_eq!(built_in.len(), 15);
        let file = dir.join(format!("{label}.yaml"));
        std::fs::write(&file, to_multi_document_yaml(&built_in)).unwrap();
        if std::env::var_os("RENDER_DUMP").is_some() {
            std::fs::copy(&file, format!("/tmp/render-{label}.yaml")).unwrap();
        }
        let out = std::process::Command::new("kubernetes-validate")
            .args(["--strict", "-k", "1.32"])
            .arg(&file)
            .output()
            .unwrap();
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{label}: kubernetes-validate refused {}:\n{report}", file.display());
        assert!(!report.contains("ERROR"), "{label}: {report}");
        // Each object was checked against its schema, none skipped as unknown.
        assert_eq!(report.matches("passed for resource").count(), built_in.len(), "{label}: {report}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
