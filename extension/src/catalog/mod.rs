//! The catalog document: validation and normalization.
//!
//! `entitlements.apply_catalog` (sql/catalog/catalog.sql) calls `_normalize_catalog` first, so a
//! malformed document is refused before anything is written, with an error that names
//! the JSON path of the bad entry. The normalized per-feature spec is what
//! `plan_entitlements.spec` stores and what the resolver (rules.rs) reads back. `resources` (what a provisioned server gets) is checked in resources.rs.

mod resources;

use crate::error::{Error, OrRaise, Result};
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};

pub const KINDS: [&str; 5] = ["flag", "limit", "metered", "concurrency", "config"];
pub const PERIODS: [&str; 4] = ["day", "month", "billing_period", "lifetime"];
pub const OVERAGES: [&str; 3] = ["block", "allow", "bill"];
const INTERVALS: [&str; 5] = ["day", "week", "month", "year", "once"];

/// `resources` (what a server gets from the provisioner, resources.rs) is a config feature
/// every catalog may use without declaring it.
pub const IMPLICIT_RESOURCES: &str = "resources";

fn bad(path: &str, what: impl std::fmt::Display) -> Error {
    Error::invalid_with_hint(
        format!("invalid catalog at {path}: {what}"),
        "see the catalog format in README.md (features: key, kind, unit; plans: key, name, price_cents, ..., entitlements)",
    )
}

fn is_key(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

fn check_fields(path: &str, obj: &Map<String, Value>, allowed: &[&str]) -> Result<()> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(bad(path, format!("unknown field \"{k}\" (allowed: {})", allowed.join(", "))));
        }
    }
    Ok(())
}

fn as_object<'a>(path: &str, v: &'a Value) -> Result<&'a Map<String, Value>> {
    v.as_object().ok_or_else(|| bad(path, "expected an object"))
}

fn key_field(path: &str, obj: &Map<String, Value>) -> Result<String> {
    match obj.get("key") {
        Some(Value::String(s)) if is_key(s) => Ok(s.clone()),
        Some(Value::String(s)) => Err(bad(
            &format!("{path}.key"),
            format!("\"{s}\" is not a valid key (lowercase letters, digits and _, starting with a letter)"),
        )),
        _ => Err(bad(&format!("{path}.key"), "a string key is required")),
    }
}

fn opt_bool(path: &str, obj: &Map<String, Value>, field: &str, default: bool) -> Result<bool> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(&format!("{path}.{field}"), "expected true or false")),
    }
}

fn opt_nonneg_int(path: &str, obj: &Map<String, Value>, field: &str, default: i64, max: i64) -> Result<i64> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_i64() {
            Some(n) if (0..=max).contains(&n) => Ok(n),
            _ => Err(bad(&format!("{path}.{field}"), format!("expected an integer from 0 to {max}"))),
        },
    }
}

/// The largest number the engine keeps in a limit, price or amount: every integer up to
/// it is exact as f64, so every reader takes it (the same bound as `entitlements._valid_json`).
pub const MAX_NUMBER: f64 = 1e15;

/// A limit: a number in 0..=MAX_NUMBER, or null for unlimited.
fn limit_value(path: &str, v: &Value) -> Result<Value> {
    match v {
        Value::Null => Ok(Value::Null),
        Value::Number(n) if n.as_f64().is_some_and(|f| (0.0..=MAX_NUMBER).contains(&f)) => Ok(v.clone()),
        _ => Err(bad(path, "expected a number from 0 to 1e15, or null for unlimited")),
    }
}

/// The most concurrency slots a plan names (slots are advisory locks, looked up one by one).
pub const MAX_SLOTS: f64 = 100_000.0;

/// A number of concurrency slots: a whole number in 0..=MAX_SLOTS, or null for unlimited.
fn slot_limit(path: &str, v: &Value) -> Result<Value> {
    match limit_value(path, v)? {
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() != 0.0 || f > MAX_SLOTS) => {
            Err(bad(path, "concurrency slots are a whole number up to 100000 (null for unlimited)"))
        }
        ok => Ok(ok),
    }
}

fn normalize_meter(path: &str, v: &Value) -> Result<Value> {
    let obj = match v {
        Value::Object(o) => o,
        // A bare number is a monthly quota.
        Value::Number(_) | Value::Null => {
            return Ok(json!({"period": "month", "limit": limit_value(path, v)?, "overage": "block"}))
        }
        _ => return Err(bad(path, "expected {\"limit\": n, \"period\": ...} or a number")),
    };
    check_fields(path, obj, &["limit", "period", "overage", "unit_price_cents"])?;
    let limit = limit_value(&format!("{path}.limit"), obj.get("limit").unwrap_or(&Value::Null))?;
    let period = match obj.get("period") {
        None | Some(Value::Null) => "month",
        Some(Value::String(p)) if PERIODS.contains(&p.as_str()) => p.as_str(),
        Some(_) => return Err(bad(&format!("{path}.period"), format!("expected one of {}", PERIODS.join(", ")))),
    };
    let overage = match obj.get("overage") {
        None | Some(Value::Null) => "block",
        Some(Value::String(o)) if OVERAGES.contains(&o.as_str()) => o.as_str(),
        Some(_) => return Err(bad(&format!("{path}.overage"), format!("expected one of {}", OVERAGES.join(", ")))),
    };
    let mut out = json!({"period": period, "limit": limit, "overage": overage});
    match obj.get("unit_price_cents") {
        None | Some(Value::Null) if overage == "bill" => {
            return Err(bad(&format!("{path}.unit_price_cents"), "overage \"bill\" needs a unit price"))
        }
        None | Some(Value::Null) => {}
        Some(p) => {
            if !p.as_f64().is_some_and(|f| (0.0..=MAX_NUMBER).contains(&f)) {
                return Err(bad(&format!("{path}.unit_price_cents"), "expected a number from 0 to 1e15"));
            }
            out["unit_price_cents"] = p.clone();
        }
    }
    Ok(out)
}

/// Normalize one plan's value for one feature to its stored spec.
pub fn normalize_spec(path: &str, kind: &str, v: &Value) -> Result<Value> {
    match kind {
        "flag" => match v {
            Value::Bool(b) => Ok(json!({"enabled": b})),
            Value::Object(o) => {
                check_fields(path, o, &["enabled"])?;
                Ok(json!({"enabled": opt_bool(path, o, "enabled", false)?}))
            }
            _ => Err(bad(path, "a flag takes true or false")),
        },
        "limit" => match v {
            Value::Object(o) => {
                check_fields(path, o, &["limit", "per_unit"])?;
                let limit = limit_value(&format!("{path}.limit"), o.get("limit").unwrap_or(&Value::Null))?;
                Ok(json!({"limit": limit, "per_unit": opt_bool(path, o, "per_unit", false)?}))
            }
            _ => Ok(json!({"limit": limit_value(path, v)?, "per_unit": false})),
        },
        "concurrency" => match v {
            Value::Object(o) => {
                check_fields(path, o, &["limit"])?;
                Ok(json!({"limit": slot_limit(&format!("{path}.limit"), o.get("limit").unwrap_or(&Value::Null))?}))
            }
            _ => Ok(json!({"limit": slot_limit(path, v)?})),
        },
        "metered" => {
            let items: Vec<Value> = match v {
                Value::Array(a) => a
                    .iter()
                    .enumerate()
                    .map(|(i, m)| normalize_meter(&format!("{path}[{i}]"), m))
                    .collect::<Result<_>>()?,
                _ => vec![normalize_meter(path, v)?],
            };
            let mut seen = HashSet::new();
            for (i, m) in items.iter().enumerate() {
                let p = m["period"].as_str().unwrap_or_default().to_owned();
                if !seen.insert(p.clone()) {
                    return Err(bad(&format!("{path}[{i}].period"), format!("period \"{p}\" appears twice")));
                }
            }
            Ok(json!({"limits": items}))
        }
        "config" => {
            if v.is_null() {
                return Err(bad(path, "a config value cannot be null (leave the feature out instead)"));
            }
            Ok(json!({"value": v}))
        }
        other => Err(bad(path, format!("unknown kind \"{other}\""))),
    }
}

/// The array at `root[field]`; empty when absent.
fn array_field<'a>(root: &'a Map<String, Value>, field: &str) -> Result<&'a [Value]> {
    match root.get(field) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(bad(&format!("$.{field}"), "expected an array")),
    }
}

/// An optional string field: NULL when absent or null.
fn opt_string(path: &str, obj: &Map<String, Value>, field: &str) -> Result<Value> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(Value::String(s)) => Ok(Value::String(s.clone())),
        Some(_) => Err(bad(&format!("{path}.{field}"), "expected a string")),
    }
}

/// What the plans of one document must agree on as they are read in order.
struct Plans {
    /// Kind of every feature a plan may name: the database's, then the document's.
    kinds: BTreeMap<String, String>,
    keys: HashSet<String>,
    /// Stripe price id → the plan it maps to.
    price_ids: BTreeMap<String, String>,
    default: Option<String>,
    uses_resources: bool,
}

/// Validate and normalize a whole catalog document. `existing` maps feature keys already
/// in the database to their kinds, so a document may reference them without redeclaring.
pub fn normalize(doc: &Value, existing: &Map<String, Value>) -> Result<Value> {
    let root = as_object("$", doc)?;
    check_fields("$", root, &["features", "plans"])?;

    let mut plans = Plans {
        kinds: existing.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned()))).collect(),
        keys: HashSet::new(),
        price_ids: BTreeMap::new(),
        default: None,
        uses_resources: false,
    };
    let mut features = Vec::new();
    let mut declared = HashSet::new();
    for (i, f) in array_field(root, "features")?.iter().enumerate() {
        let feature = normalize_feature(&format!("$.features[{i}]"), f, &mut declared)?;
        plans.kinds.insert(
            feature["key"].as_str().unwrap_or_default().to_owned(),
            feature["kind"].as_str().unwrap_or_default().to_owned(),
        );
        features.push(feature);
    }
    let normalized = array_field(root, "plans")?
        .iter()
        .enumerate()
        .map(|(i, p)| normalize_plan(i, p, &mut plans))
        .collect::<Result<Vec<_>>>()?;
    if plans.uses_resources && !plans.kinds.contains_key(IMPLICIT_RESOURCES) {
        features.push(json!({"key": IMPLICIT_RESOURCES, "kind": "config", "unit": null, "thresholds": null, "unit_cost_cents": null}));
    }
    Ok(json!({"features": features, "plans": normalized}))
}

/// Usage alerts of a metered feature when nothing else is said: 80% and 100% of each limit.
pub const DEFAULT_THRESHOLDS: [u32; 2] = [80, 100];
/// At most this many thresholds per feature, each a percentage of the limit up to MAX_THRESHOLD
/// (above 100 only overage `allow` or `bill` can reach).
const MAX_THRESHOLDS: usize = 10;
const MAX_THRESHOLD: f64 = 1000.0;

/// A metered feature's `thresholds` (percentages of each limit that send `quota.threshold`
/// once per window), sorted and without repeats; `[]` sends none. Other kinds have none.
fn thresholds(path: &str, kind: &str, obj: &Map<String, Value>) -> Result<Value> {
    let field = format!("{path}.thresholds");
    let given = match obj.get("thresholds") {
        None | Some(Value::Null) if kind == "metered" => return Ok(json!(DEFAULT_THRESHOLDS)),
        None | Some(Value::Null) => return Ok(Value::Null),
        Some(_) if kind != "metered" => return Err(bad(&field, "only metered features have thresholds")),
        Some(Value::Array(a)) if a.len() <= MAX_THRESHOLDS => a,
        Some(_) => return Err(bad(&field, format!("expected an array of at most {MAX_THRESHOLDS} percentages"))),
    };
    let mut out: Vec<f64> = Vec::with_capacity(given.len());
    for (i, t) in given.iter().enumerate() {
        match t.as_f64() {
            Some(p) if p > 0.0 && p <= MAX_THRESHOLD => out.push(p),
            _ => return Err(bad(&format!("{field}[{i}]"), "expected a percentage above 0 and at most 1000")),
        }
    }
    out.sort_by(f64::total_cmp);
    out.dedup();
    // Whole percentages stay integers (80, not 80.0), as they were written.
    Ok(out.into_iter().map(|p| if p.fract() == 0.0 { json!(p as i64) } else { json!(p) }).collect())
}

/// What a unit of a metered feature costs the business (not what overage is charged), in
/// cents, at most 1e12; null when unknown. Other kinds have none.
fn unit_cost(path: &str, kind: &str, obj: &Map<String, Value>) -> Result<Value> {
    match obj.get("unit_cost_cents") {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(_) if kind != "metered" => {
            Err(bad(&format!("{path}.unit_cost_cents"), "only metered features have a unit cost"))
        }
        Some(v @ Value::Number(n)) if n.as_f64().is_some_and(|f| (0.0..=1e12).contains(&f)) => Ok(v.clone()),
        Some(_) => Err(bad(&format!("{path}.unit_cost_cents"), "expected a number of cents from 0 to 1e12")),
    }
}

/// One entry of `features`: key (declared once), kind, unit, thresholds.
fn normalize_feature(path: &str, f: &Value, declared: &mut HashSet<String>) -> Result<Value> {
    let o = as_object(path, f)?;
    check_fields(path, o, &["key", "kind", "unit", "description", "thresholds", "unit_cost_cents"])?;
    let key = key_field(path, o)?;
    if !declared.insert(key.clone()) {
        return Err(bad(path, format!("feature \"{key}\" is declared twice")));
    }
    let kind = match o.get("kind") {
        Some(Value::String(k)) if KINDS.contains(&k.as_str()) => k.clone(),
        _ => return Err(bad(&format!("{path}.kind"), format!("expected one of {}", KINDS.join(", ")))),
    };
    let thresholds = thresholds(path, &kind, o)?;
    let unit_cost_cents = unit_cost(path, &kind, o)?;
    Ok(json!({"key": key, "kind": kind, "unit": opt_string(path, o, "unit")?, "thresholds": thresholds,
              "unit_cost_cents": unit_cost_cents}))
}

const PLAN_FIELDS: [&str; 13] = [
    "key",
    "name",
    "description",
    "price_cents",
    "currency",
    "interval",
    "default",
    "public",
    "trial_days",
    "grace_days",
    "stripe_price_ids",
    "metadata",
    "entitlements",
];

/// One entry of `plans`, the `i`th: its fields, Stripe prices and entitlements.
fn normalize_plan(i: usize, p: &Value, plans: &mut Plans) -> Result<Value> {
    let path = format!("$.plans[{i}]");
    let o = as_object(&path, p)?;
    check_fields(&path, o, &PLAN_FIELDS)?;
    let key = key_field(&path, o)?;
    if !plans.keys.insert(key.clone()) {
        return Err(bad(&path, format!("plan \"{key}\" appears twice")));
    }
    let name = match o.get("name") {
        None | Some(Value::Null) => key.clone(),
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(_) => return Err(bad(&format!("{path}.name"), "expected a non-empty string")),
    };
    let description = opt_string(&path, o, "description")?;
    let price_cents = opt_nonneg_int(&path, o, "price_cents", 0, i32::MAX as i64)?;
    let currency = match o.get("currency") {
        None | Some(Value::Null) => "usd".to_owned(),
        Some(Value::String(c)) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()) => c.to_ascii_lowercase(),
        Some(_) => return Err(bad(&format!("{path}.currency"), "expected a 3-letter ISO currency code")),
    };
    let interval = match o.get("interval") {
        None | Some(Value::Null) => "month",
        Some(Value::String(s)) if INTERVALS.contains(&s.as_str()) => s.as_str(),
        Some(_) => return Err(bad(&format!("{path}.interval"), format!("expected one of {}", INTERVALS.join(", ")))),
    };
    let is_default = opt_bool(&path, o, "default", false)?;
    if is_default {
        if let Some(other) = &plans.default {
            return Err(bad(
                &format!("{path}.default"),
                format!("plan \"{other}\" is already the default; only one plan can be"),
            ));
        }
        plans.default = Some(key.clone());
    }
    let stripe_price_ids = stripe_price_ids(&path, o, &key, plans)?;
    let metadata = match o.get("metadata") {
        None | Some(Value::Null) => json!({}),
        Some(m @ Value::Object(_)) => m.clone(),
        Some(_) => return Err(bad(&format!("{path}.metadata"), "expected an object")),
    };
    let entitlements = plan_entitlements(&path, o, plans)?;
    Ok(json!({
        "key": key, "name": name, "description": description, "price_cents": price_cents,
        "currency": currency, "interval": interval, "is_default": is_default,
        "public": opt_bool(&path, o, "public", false)?,
        "trial_days": opt_nonneg_int(&path, o, "trial_days", 0, 730)?,
        "grace_days": opt_nonneg_int(&path, o, "grace_days", 7, 365)?,
        "position": i, "stripe_price_ids": stripe_price_ids, "metadata": metadata, "entitlements": entitlements,
    }))
}

/// A plan's Stripe price ids; each maps to one plan of the document.
fn stripe_price_ids(path: &str, o: &Map<String, Value>, key: &str, plans: &mut Plans) -> Result<Vec<Value>> {
    let ids = match o.get("stripe_price_ids") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad(&format!("{path}.stripe_price_ids"), "expected an array of strings")),
    };
    let mut out = Vec::with_capacity(ids.len());
    for (j, id) in ids.iter().enumerate() {
        let ipath = format!("{path}.stripe_price_ids[{j}]");
        let s = id.as_str().filter(|s| !s.is_empty()).ok_or_else(|| bad(&ipath, "expected a Stripe price id"))?;
        if let Some(owner) = plans.price_ids.insert(s.to_owned(), key.to_owned()) {
            return Err(bad(&ipath, format!("price \"{s}\" already maps to plan \"{owner}\"")));
        }
        out.push(Value::String(s.to_owned()));
    }
    Ok(out)
}

/// A plan's entitlements, each normalized for its feature's kind (`resources` needs no
/// declaration).
fn plan_entitlements(path: &str, o: &Map<String, Value>, plans: &mut Plans) -> Result<Map<String, Value>> {
    let mut ents = Map::new();
    let Some(e) = o.get("entitlements") else { return Ok(ents) };
    let epath = format!("{path}.entitlements");
    for (fkey, fval) in as_object(&epath, e)? {
        let fpath = format!("{epath}.{fkey}");
        if fkey == IMPLICIT_RESOURCES {
            // Declared or not, `resources` is a config value the provisioner must understand.
            if plans.kinds.get(fkey).is_some_and(|k| k != "config") {
                return Err(bad(
                    &fpath,
                    "\"resources\" is the provisioner's config feature; declare it as kind config",
                ));
            }
            plans.uses_resources = true;
            ents.insert(fkey.clone(), normalize_spec(&fpath, "config", &resources::normalize(&fpath, fval)?)?);
            continue;
        }
        let kind = match plans.kinds.get(fkey) {
            Some(k) => k.clone(),
            None => {
                return Err(Error::invalid_with_hint(
                    format!("invalid catalog at {fpath}: unknown feature \"{fkey}\""),
                    "declare it in \"features\" with its kind",
                ))
            }
        };
        ents.insert(fkey.clone(), normalize_spec(&fpath, &kind, fval)?);
    }
    Ok(ents)
}

/// Validate and normalize a catalog document; raises 22023 naming the bad entry. Called
/// through `entitlements._normalize_catalog` (sql/security/checked_json.sql), which first refuses a
/// value this function could not even decode (too deep, a number out of range).
#[pg_extern(immutable, parallel_safe, name = "_normalize_catalog_json")]
fn normalize_catalog(doc: Option<JsonB>, existing_features: Option<JsonB>) -> JsonB {
    let Some(JsonB(doc)) = doc else { Error::NullValue("catalog must not be NULL".into()).raise() };
    let existing = match existing_features {
        Some(JsonB(Value::Object(m))) => m,
        _ => Map::new(),
    };
    JsonB(normalize(&doc, &existing).or_raise())
}

/// Normalize a grant's value for a feature of `kind`, as plan values are normalized.
/// Called through `entitlements._normalize_feature_value` (sql/security/checked_json.sql).
#[pg_extern(immutable, parallel_safe, name = "_normalize_feature_value_json")]
fn normalize_feature_value(kind: &str, value: Option<JsonB>) -> JsonB {
    let v = value.map(|j| j.0).unwrap_or(Value::Null);
    JsonB(normalize_spec("value", kind, &v).or_raise())
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::*;

    fn err(doc: Value) -> String {
        match normalize(&doc, &Map::new()) {
            Err(Error::InvalidParameter { message, .. }) => message,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[pgrx::pg_test]
    fn errors_name_the_path() {
        let m = err(json!({"features": [{"key": "a", "kind": "flag"}],
                           "plans": [{"key": "p", "entitlements": {"b": true}}]}));
        assert!(m.contains("$.plans[0].entitlements.b") && m.contains("unknown feature"), "{m}");
        let m = err(json!({"features": [{"key": "q", "kind": "metered"}],
                           "plans": [{"key": "p", "entitlements": {"q": [{"limit": 1, "period": "week"}]}}]}));
        assert!(m.contains("$.plans[0].entitlements.q[0].period"), "{m}");
        let m = err(json!({"plans": [{"key": "a", "default": true}, {"key": "b", "default": true}]}));
        assert!(m.contains("$.plans[1].default"), "{m}");
        let m = err(json!({"plans": [{"key": "Bad Key"}]}));
        assert!(m.contains("$.plans[0].key"), "{m}");
        let m = err(json!({"features": [{"key": "q", "kind": "metered", "thresholds": [80, 0]}]}));
        assert!(m.contains("$.features[0].thresholds[1]"), "{m}");
        let m = err(json!({"features": [{"key": "f", "kind": "flag", "unit_cost_cents": 1}]}));
        assert!(m.contains("only metered features have a unit cost"), "{m}");
        let m = err(json!({"features": [{"key": "q", "kind": "metered", "unit_cost_cents": -2}]}));
        assert!(m.contains("expected a number of cents"), "{m}");
        let m = err(json!({"features": [{"key": "f", "kind": "flag", "thresholds": [80]}]}));
        assert!(m.contains("only metered"), "{m}");
    }

    #[pgrx::pg_test]
    fn normalization_is_canonical() {
        let doc = json!({"features": [{"key": "m", "kind": "metered"}, {"key": "s", "kind": "limit"}],
                         "plans": [{"key": "p", "entitlements": {"m": 10, "s": null, "resources": {"cpu": "1"}}}]});
        let n = normalize(&doc, &Map::new()).unwrap();
        assert_eq!(
            n["plans"][0]["entitlements"]["m"],
            json!({"limits": [{"period": "month", "limit": 10, "overage": "block"}]})
        );
        assert_eq!(n["plans"][0]["entitlements"]["s"], json!({"limit": null, "per_unit": false}));
        assert_eq!(n["features"][2]["key"], "resources");
        assert_eq!(n["features"][0]["thresholds"], json!([80, 100]), "metered: 80% and 100% by default");
        assert_eq!(n["features"][1]["thresholds"], Value::Null);
        assert_eq!(n["features"][0]["unit_cost_cents"], Value::Null, "no unit cost unless given");
        let t = json!({"features": [{"key": "m", "kind": "metered", "thresholds": [100, 50.5, 100]}]});
        assert_eq!(normalize(&t, &Map::new()).unwrap()["features"][0]["thresholds"], json!([50.5, 100]));
        // Normalizing the normalized spec again gives the same spec: apply_catalog relies on it.
        let again =
            normalize_spec("$", "metered", &json!([{"period": "month", "limit": 10, "overage": "block"}])).unwrap();
        assert_eq!(again, n["plans"][0]["entitlements"]["m"]);
    }
}
