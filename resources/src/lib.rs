//! A plan's `resources`: what one provisioned server (a Matrix homeserver on Kubernetes)
//! gets, and the exact quantity arithmetic sizing needs. Written once for both sides: the
//! extension checks a catalog with [`normalize_catalog`] when it is applied, the worker reads
//! the stored value with [`Resources::from_json`] to size the objects.
//!
//! ```json
//! {"servers": 1, "cpu": "2", "memory": "4Gi", "data_storage": "20Gi", "media_storage": "100Gi",
//!  "users": 100, "domains": 1, "custom_domain": false, "federation": false,
//!  "bandwidth_mbps": 100, "database_instances": 1}
//! ```

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::fmt;

/// A field of `resources` that is not what it must be: where (a JSON path) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcesError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ResourcesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for ResourcesError {}

/// One server's share of a plan, read from the catalog's `resources` config feature.
///
/// Every field is optional in the catalog; a missing one takes the smallest sensible value
/// (the `Default`): 1 server, 1 CPU, 2Gi memory, 10Gi data, 10Gi media, 10 users, 1 domain,
/// no custom domain, no federation, 100 Mbit/s, 1 database instance. The extension validates
/// the document when the catalog is applied; [`Resources::from_json`] checks it again because
/// the worker must never send the cluster a quantity it would refuse. Unknown fields are
/// ignored so that an older worker keeps working with a newer catalog.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Resources {
    /// How many servers a subscriber may run (checked by the extension, not used here).
    pub servers: u32,
    /// Synapse's CPU, requests = limits.
    pub cpu: Quantity,
    /// Synapse's memory, requests = limits.
    pub memory: Quantity,
    /// Each volume on the SSD class: Synapse's data volume and every database instance's.
    /// `storage` is its name in 0.1.0 catalogs.
    #[serde(alias = "storage")]
    pub data_storage: Quantity,
    /// The media store, on the standard class.
    pub media_storage: Quantity,
    /// Monthly active users (`max_mau_value`).
    pub users: u32,
    /// How many domains the server may answer for.
    pub domains: u32,
    /// Whether the subscriber may bring their own domain (decided by whoever picks the domains).
    pub custom_domain: bool,
    /// Whether the server talks to the rest of the Matrix network.
    pub federation: bool,
    /// Traffic shaping of the Synapse pod, each direction.
    pub bandwidth_mbps: u32,
    /// CloudNativePG instances (3 = a primary and two standbys).
    pub database_instances: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            servers: 1,
            cpu: Quantity::parse("1").expect("valid"),
            memory: Quantity::parse("2Gi").expect("valid"),
            data_storage: Quantity::parse("10Gi").expect("valid"),
            media_storage: Quantity::parse("10Gi").expect("valid"),
            users: 10,
            domains: 1,
            custom_domain: false,
            federation: false,
            bandwidth_mbps: 100,
            database_instances: 1,
        }
    }
}

/// A CloudNativePG cluster of more instances is not a server's database.
pub const MAX_DATABASE_INSTANCES: u32 = 9;
/// The largest count any other field takes.
pub const MAX_COUNT: u32 = 1_000_000;

const QUANTITIES: [&str; 4] = ["cpu", "memory", "data_storage", "media_storage"];
const COUNTS: [&str; 5] = ["servers", "users", "domains", "bandwidth_mbps", "database_instances"];
const FLAGS: [&str; 2] = ["custom_domain", "federation"];

fn max_of(count: &str) -> u32 {
    if count == "database_instances" {
        MAX_DATABASE_INSTANCES
    } else {
        MAX_COUNT
    }
}

/// Whether `value` is what field `key` takes: None for a field the contract does not have
/// (strict callers refuse it, lenient ones skip it), else Ok or why not. The one check of a
/// field, for catalogs (`normalize_catalog`) and for the worker (`Resources::from_json`).
fn check_field(key: &str, value: &Value) -> Option<Result<(), String>> {
    let ok = |good: bool, why: String| if good { Ok(()) } else { Err(why) };
    let key = if key == "storage" { "data_storage" } else { key };
    if QUANTITIES.contains(&key) {
        Some(match value.as_str().map(Quantity::parse) {
            Some(Ok(q)) => ok(!q.is_zero(), "expected a quantity above zero".into()),
            _ => Err(format!("expected a Kubernetes quantity string such as \"2\", \"500m\" or \"4Gi\", got {value}")),
        })
    } else if COUNTS.contains(&key) {
        let max = max_of(key);
        let good = value.as_u64().is_some_and(|n| (1..=u64::from(max)).contains(&n));
        Some(ok(good, format!("expected a whole number from 1 to {max}")))
    } else if FLAGS.contains(&key) {
        Some(ok(value.is_boolean(), "expected true or false".into()))
    } else {
        None
    }
}

/// Check every field of `resources` at `path` (an object, `storage` and `data_storage` not
/// both); `strict` refuses a field the contract does not have.
fn check<'a>(path: &str, value: &'a Value, strict: bool) -> Result<&'a Map<String, Value>, ResourcesError> {
    let err = |path: String, message: String| ResourcesError { path, message };
    let Some(o) = value.as_object() else { return Err(err(path.to_owned(), "expected an object".into())) };
    if o.contains_key("storage") && o.contains_key("data_storage") {
        return Err(err(format!("{path}.storage"), "give data_storage only (storage is its old name)".into()));
    }
    for (key, v) in o {
        match check_field(key, v) {
            Some(Ok(())) => {}
            Some(Err(message)) => return Err(err(format!("{path}.{key}"), message)),
            None if strict => {
                let known = QUANTITIES.iter().chain(&COUNTS).chain(&FLAGS).copied().collect::<Vec<_>>().join(", ");
                return Err(err(format!("{path}.{key}"), format!("unknown field (known: {known})")));
            }
            None => {}
        }
    }
    Ok(o)
}

/// Check a catalog's `resources` (at `path`) strictly and return it normalized: only the
/// fields it gives, `storage` (the 0.1.0 name) as `data_storage`, unknown fields refused.
pub fn normalize_catalog(path: &str, value: &Value) -> Result<Value, ResourcesError> {
    let o = check(path, value, true)?;
    let renamed = o.iter().map(|(k, v)| (if k == "storage" { "data_storage".into() } else { k.clone() }, v.clone()));
    Ok(Value::Object(renamed.collect()))
}

impl Resources {
    /// Read and check a plan's stored `resources`; errors name the JSON path. Unknown fields
    /// are ignored (an older worker keeps working with a newer catalog).
    pub fn from_json(value: &Value) -> Result<Resources, ResourcesError> {
        check("$.resources", value, false)?;
        // Every field is checked above, so only a mistake in this crate can fail here.
        serde_json::from_value(value.clone())
            .map_err(|e| ResourcesError { path: "$.resources".into(), message: e.to_string() })
    }

    /// Every dimension the larger of the two: the quota that holds the old and the new
    /// workload at once while a mixed plan change (more CPU, less memory) is rolled out.
    pub fn covering(&self, other: &Resources) -> Resources {
        let max = |a: &Quantity, b: &Quantity| if a >= b { a.clone() } else { b.clone() };
        Resources {
            servers: self.servers.max(other.servers),
            cpu: max(&self.cpu, &other.cpu),
            memory: max(&self.memory, &other.memory),
            data_storage: max(&self.data_storage, &other.data_storage),
            media_storage: max(&self.media_storage, &other.media_storage),
            users: self.users.max(other.users),
            domains: self.domains.max(other.domains),
            custom_domain: self.custom_domain || other.custom_domain,
            federation: self.federation || other.federation,
            bandwidth_mbps: self.bandwidth_mbps.max(other.bandwidth_mbps),
            database_instances: self.database_instances.max(other.database_instances),
        }
    }
}

/// A Kubernetes quantity, kept as written (so a converged object renders exactly as it was
/// applied) together with its exact value in thousandths of the base unit (millicores for CPU,
/// millibytes for sizes): exact, unlike floating point, so sums and comparisons never drift.
#[derive(Clone, Eq)]
pub struct Quantity {
    text: String,
    milli: u128,
}

impl Quantity {
    /// Parse `<number><suffix>` as Kubernetes writes it: binary Ki..Ei, decimal m, k, M..E,
    /// or an exponent `e<n>`. Negative values and more than 3 decimals below the unit are refused.
    pub fn parse(text: &str) -> Result<Quantity, String> {
        let bad = || format!("{text:?} is not a Kubernetes quantity such as \"2\", \"500m\" or \"4Gi\"");
        let end = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
        let (number, suffix) = text.split_at(end);
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && frac.is_empty() || frac.contains('.') {
            return Err(bad());
        }
        // The number as an integer count of 10^-scale.
        let digits = format!("{whole}{frac}");
        let mantissa: u128 = digits.parse().map_err(|_| bad())?;
        let scale = frac.len() as i32;
        let (mul, exp10): (u128, i32) = match suffix {
            "" => (1, 0),
            "m" => (1, -3),
            "k" => (1, 3),
            "M" => (1, 6),
            "G" => (1, 9),
            "T" => (1, 12),
            "P" => (1, 15),
            "E" => (1, 18),
            "Ki" => (1 << 10, 0),
            "Mi" => (1 << 20, 0),
            "Gi" => (1 << 30, 0),
            "Ti" => (1 << 40, 0),
            "Pi" => (1 << 50, 0),
            "Ei" => (1 << 60, 0),
            e if e.starts_with(['e', 'E']) => (1, e[1..].parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        };
        // value in milli = mantissa * mul * 10^(exp10 + 3 - scale)
        let power = exp10 + 3 - scale;
        let base = mantissa.checked_mul(mul).ok_or_else(bad)?;
        let milli = if power >= 0 {
            10u128.checked_pow(power as u32).and_then(|p| base.checked_mul(p)).ok_or_else(bad)?
        } else {
            let p = 10u128.checked_pow((-power) as u32).ok_or_else(bad)?;
            if base % p != 0 {
                return Err(format!("{text:?} is finer than a thousandth of a unit"));
            }
            base / p
        };
        Ok(Quantity { text: text.to_owned(), milli })
    }

    /// CPU from millicores, written as Kubernetes does: whole cores, else millicores.
    pub fn cpu_from_milli(milli: u128) -> Quantity {
        let text = if milli.is_multiple_of(1000) { (milli / 1000).to_string() } else { format!("{milli}m") };
        Quantity { text, milli }
    }

    /// A size from bytes, rounded up to a whole MiB (no volume or memory limit needs finer)
    /// and written with the largest binary suffix that divides it.
    pub fn bytes_from_milli(milli: u128) -> Quantity {
        const MI: u128 = 1 << 20;
        let bytes = milli.div_ceil(1000).div_ceil(MI) * MI;
        let (n, suffix) = [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20)]
            .into_iter()
            .find(|&(_, shift)| bytes.is_multiple_of(1u128 << shift))
            .map(|(s, shift)| (bytes >> shift, s))
            .unwrap_or((bytes, ""));
        Quantity { text: format!("{n}{suffix}"), milli: bytes * 1000 }
    }

    /// The exact value in thousandths of the base unit.
    pub fn milli(&self) -> u128 {
        self.milli
    }

    pub fn is_zero(&self) -> bool {
        self.milli == 0
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Equal when they are the same amount ("1Gi" = "1024Mi"), whatever the spelling.
impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.milli == other.milli
    }
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.milli.cmp(&other.milli)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

/// As Kubernetes writes it: the text it was given.
impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Quantity::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Quantity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Quantity::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_catalog_is_checked_strictly_and_normalized() {
        let ok = json!({"servers": 2, "cpu": "2", "memory": "4Gi", "storage": "20Gi", "media_storage": "100Gi",
                        "users": 100, "domains": 1, "custom_domain": false, "federation": true,
                        "bandwidth_mbps": 100, "database_instances": 3});
        let n = normalize_catalog("$.r", &ok).unwrap();
        assert_eq!(n["data_storage"], "20Gi");
        assert!(n.get("storage").is_none());
        assert_eq!(normalize_catalog("$.r", &n).unwrap(), n, "normalizing twice changes nothing");
        assert_eq!(Resources::from_json(&n).unwrap().database_instances, 3, "what the catalog takes, the worker reads");
        let path = |v: Value| normalize_catalog("$.r", &v).unwrap_err().path;
        assert_eq!(path(json!({"cpu": "0"})), "$.r.cpu");
        assert_eq!(path(json!({"memory": "4GB"})), "$.r.memory");
        assert_eq!(path(json!({"servers": 0})), "$.r.servers");
        assert_eq!(path(json!({"users": 1.5})), "$.r.users");
        assert_eq!(path(json!({"users": 2_000_000})), "$.r.users");
        assert_eq!(path(json!({"database_instances": 10})), "$.r.database_instances");
        assert_eq!(path(json!({"federation": "yes"})), "$.r.federation");
        assert_eq!(path(json!({"gpu": 1})), "$.r.gpu");
        assert_eq!(path(json!({"storage": "1Gi", "data_storage": "1Gi"})), "$.r.storage");
        assert_eq!(path(json!([1])), "$.r");
    }

    #[test]
    fn quantities_as_kubernetes_writes_them() {
        let milli = |s: &str| Quantity::parse(s).map(|q| q.milli());
        assert_eq!(milli("2"), Ok(2000));
        assert_eq!(milli("500m"), Ok(500));
        assert_eq!(milli("0.5"), Ok(500));
        assert_eq!(milli("4Gi"), Ok(4 * 1024 * 1024 * 1024 * 1000));
        assert_eq!(milli("1e3"), Ok(1_000_000));
        assert_eq!(Quantity::parse("1Gi"), Quantity::parse("1024Mi"));
        for bad in ["", "Gi", "4 Gi", "4GB", "4gi", "1.2.3", "two", "4Gi ", "-1", ".", "1e", "0.0001"] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?}");
        }
    }
}
