//! The `resources` config feature: what one server of a plan gets from the provisioner
//! (issue #10). Checked here when a catalog is applied, so a plan can never promise a
//! server the cluster cannot be asked for; the contract itself (fields, Kubernetes
//! quantities, bounds, `storage` as the old name of `data_storage`) lives in the
//! `entitlements-resources` crate, which the worker sizes servers with.

use super::bad;
use crate::error::Result;
use serde_json::Value;

/// Validate a plan's `resources` and return it normalized; errors name the JSON path.
pub fn normalize(path: &str, v: &Value) -> Result<Value> {
    entitlements_resources::normalize_catalog(path, v).map_err(|e| bad(&e.path, e.message))
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::*;
    use serde_json::json;

    #[pgrx::pg_test]
    fn resources_errors_are_22023_at_their_path() {
        let n = normalize("$.r", &json!({"storage": "20Gi", "servers": 2})).unwrap();
        assert_eq!(n, json!({"data_storage": "20Gi", "servers": 2}));
        match normalize("$.r", &json!({"memory": "4GB"})) {
            Err(crate::error::Error::InvalidParameter { message, .. }) => {
                assert!(
                    message.starts_with("invalid catalog at $.r.memory: expected a Kubernetes quantity"),
                    "{message}"
                )
            }
            other => panic!("expected 22023, got {other:?}"),
        }
    }
}
