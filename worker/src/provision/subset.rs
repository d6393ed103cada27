//! Is every field the render sets already so in the live object? Then server-side apply would
//! change nothing, and the applier skips the write (a converged server costs no write calls).
//!
//! Fields the live object has beyond the render (status, uid, managedFields, defaults the API
//! server filled in) do not matter. Where the API server writes what the render set in
//! another form, the comparison follows it: quantities are canonicalized ("1024Mi" reads back
//! as "1Gi"), and empty lists, empty maps and nulls are dropped (Go's `omitempty`).
use entitlements_resources::Quantity;
use serde_json::Value;

/// True when `live` has every field of `desired` with an equal value.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(key, dv)| match l.get(key) {
            Some(lv) => is_subset(dv, lv),
            None => is_empty(dv),
        }),
        // Same length and order: a list the render sets is the whole list (containers, ports,
        // rules); the API server keeps its order and only fills in defaults inside the items.
        (Value::Array(d), Value::Array(l)) => d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| is_subset(dv, lv)),
        (Value::String(d), Value::String(l)) => d == l || same_quantity(d, l),
        (Value::Number(d), Value::Number(l)) => d == l || d.as_f64() == l.as_f64(),
        (d, Value::Null) => is_empty(d),
        (d, l) => d == l,
    }
}

/// What the API server drops when writing an object back.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Two spellings of one quantity. Only strings that start with a digit are read as
/// quantities, so names and labels compare as written.
fn same_quantity(a: &str, b: &str) -> bool {
    let numeric = |s: &str| s.starts_with(|c: char| c.is_ascii_digit());
    numeric(a) && numeric(b) && matches!((Quantity::parse(a), Quantity::parse(b)), (Ok(x), Ok(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::is_subset;
    use serde_json::json;

    #[test]
    fn extra_live_fields_do_not_matter() {
        let desired = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"replicas": 1}});
        let live = json!({
            "metadata": {"name": "a", "labels": {"x": "1", "added": "by-someone"}, "uid": "u", "resourceVersion": "9"},
            "spec": {"replicas": 1, "revisionHistoryLimit": 10},
            "status": {"readyReplicas": 1},
        });
        assert!(is_subset(&desired, &live));
    }

    #[test]
    fn a_changed_or_missing_field_is_a_difference() {
        let desired = json!({"spec": {"replicas": 0, "template": {"metadata": {"annotations": {"c": "abc"}}}}});
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"replicas": 1, "template": {"metadata": {"annotations": {"c": "abc"}}}}})
        ));
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"replicas": 0, "template": {"metadata": {"annotations": {"c": "abd"}}}}})
        ));
        assert!(!is_subset(&desired, &json!({"spec": {"replicas": 0, "template": {"metadata": {}}}})));
        assert!(!is_subset(&json!({"a": true}), &json!({"a": false})));
        assert!(!is_subset(&json!({"a": "1"}), &json!({"a": 1})), "types differ");
    }

    #[test]
    fn lists_compare_item_by_item_in_order() {
        let desired = json!({"ports": [{"name": "http", "port": 8008}]});
        assert!(is_subset(&desired, &json!({"ports": [{"name": "http", "port": 8008, "targetPort": 8008}]})));
        assert!(!is_subset(&desired, &json!({"ports": [{"name": "http", "port": 8008}, {"name": "f", "port": 8448}]})));
        assert!(!is_subset(&json!({"a": ["x", "y"]}), &json!({"a": ["y", "x"]})));
    }

    #[test]
    fn quantities_and_dropped_empties_read_back_equal() {
        assert!(is_subset(&json!({"storage": "1024Mi"}), &json!({"storage": "1Gi"})));
        assert!(is_subset(&json!({"cpu": "1000m"}), &json!({"cpu": "1"})));
        assert!(!is_subset(&json!({"storage": "20Gi"}), &json!({"storage": "10Gi"})));
        assert!(!is_subset(&json!({"name": "1a"}), &json!({"name": "1A"})));
        assert!(is_subset(&json!({"emptyDir": {}, "ingress": [], "x": null}), &json!({"emptyDir": {}})));
        assert!(is_subset(&json!({"emptyDir": {}}), &json!({"emptyDir": null})));
        assert!(!is_subset(&json!({"emptyDir": {"medium": "Memory"}}), &json!({})));
    }
}
