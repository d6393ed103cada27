//! The entitlement rules, written once: which subscriptions grant, how sources combine,
//! how grants, boosts, overrides and denies apply. `has_feature`, `entitlements()`,
//! the seat check and the access-token hook all read their answers from here.

use crate::clock::Micros;
use serde_json::Value as Json;
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Flag,
    Limit,
    Metered,
    Concurrency,
    Config,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "flag" => Kind::Flag,
            "limit" => Kind::Limit,
            "metered" => Kind::Metered,
            "concurrency" => Kind::Concurrency,
            "config" => Kind::Config,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Flag => "flag",
            Kind::Limit => "limit",
            Kind::Metered => "metered",
            Kind::Concurrency => "concurrency",
            Kind::Config => "config",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Meter {
    pub period: String,
    /// None: unlimited in this period.
    pub limit: Option<f64>,
    pub overage: String,
    pub unit_price_cents: Option<f64>,
}

/// A feature's value from one source, or combined. `None` limits mean unlimited.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Flag(bool),
    Limit(Option<f64>),
    /// Every listed period constrains; a period not listed is unconstrained.
    Metered(Vec<Meter>),
    Concurrency(Option<f64>),
    Config(Json),
}

fn num(v: &Json) -> Option<f64> {
    v.as_f64()
}

impl Value {
    /// Read a normalized spec (catalog/) for a feature of `kind`; `quantity` multiplies
    /// per-unit limits (seats bought per subscription unit).
    pub fn from_spec(kind: Kind, spec: &Json, quantity: i64) -> Option<Value> {
        Some(match kind {
            Kind::Flag => Value::Flag(spec.get("enabled")?.as_bool()?),
            Kind::Limit => {
                let limit = num(spec.get("limit")?);
                let per_unit = spec.get("per_unit").and_then(Json::as_bool).unwrap_or(false);
                Value::Limit(limit.map(|l| if per_unit { l * quantity as f64 } else { l }))
            }
            Kind::Concurrency => Value::Concurrency(num(spec.get("limit")?)),
            Kind::Metered => Value::Metered(
                spec.get("limits")?
                    .as_array()?
                    .iter()
                    .filter_map(|m| {
                        Some(Meter {
                            period: m.get("period")?.as_str()?.to_owned(),
                            limit: m.get("limit").and_then(num),
                            overage: m.get("overage").and_then(Json::as_str).unwrap_or("block").to_owned(),
                            unit_price_cents: m.get("unit_price_cents").and_then(num),
                        })
                    })
                    .collect(),
            ),
            Kind::Config => Value::Config(spec.get("value")?.clone()),
        })
    }

    /// Does this value switch the feature on?
    pub fn enabled(&self) -> bool {
        match self {
            Value::Flag(b) => *b,
            Value::Limit(l) | Value::Concurrency(l) => l.is_none_or(|n| n > 0.0),
            Value::Metered(ms) => ms.iter().all(|m| m.limit.is_none_or(|n| n > 0.0)),
            Value::Config(v) => !(v.is_null() || *v == Json::Bool(false)),
        }
    }
}

fn max_limit(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        _ => None,
    }
}

fn overage_rank(o: &str) -> u8 {
    match o {
        "allow" => 2,
        "bill" => 1,
        _ => 0,
    }
}

/// The most generous of two values. Config is not ordered: the first (higher priority) wins.
pub fn combine(acc: &mut Option<Value>, other: Value) {
    let Some(cur) = acc else {
        *acc = Some(other);
        return;
    };
    match (cur, other) {
        (Value::Flag(a), Value::Flag(b)) => *a = *a || b,
        (Value::Limit(a), Value::Limit(b)) => *a = max_limit(*a, b),
        (Value::Concurrency(a), Value::Concurrency(b)) => *a = max_limit(*a, b),
        (Value::Metered(a), Value::Metered(b)) => {
            // Only periods that both constrain stay constrained.
            a.retain(|m| b.iter().any(|n| n.period == m.period));
            for m in a.iter_mut() {
                let n = b.iter().find(|n| n.period == m.period).expect("retained above");
                let n_wins = match (m.limit, n.limit) {
                    (Some(x), Some(y)) => y > x || (y == x && overage_rank(&n.overage) > overage_rank(&m.overage)),
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if n_wins {
                    *m = n.clone();
                }
            }
        }
        (Value::Config(_), _) => {}
        // Kinds never mix: every source reads the same feature definition.
        _ => {}
    }
}

/// Add a quota boost: a number, or {"amount": n, "period": p} for one metered period.
pub fn boost(acc: &mut Option<Value>, kind: Kind, value: &Json) {
    let (amount, period) = match value {
        Json::Object(o) => (o.get("amount").and_then(num), o.get("period").and_then(Json::as_str)),
        v => (num(v), None),
    };
    let Some(amount) = amount else { return };
    match (acc.as_mut(), kind) {
        (Some(Value::Limit(l)), _) | (Some(Value::Concurrency(l)), _) => *l = l.map(|n| n + amount),
        (Some(Value::Metered(ms)), _) => {
            // A period the feature does not constrain is already unlimited.
            for m in ms.iter_mut().filter(|m| period.is_none_or(|p| p == m.period)) {
                m.limit = m.limit.map(|n| n + amount);
            }
        }
        (None, Kind::Limit) => *acc = Some(Value::Limit(Some(amount))),
        (None, Kind::Concurrency) => *acc = Some(Value::Concurrency(Some(amount))),
        (None, Kind::Metered) => {
            *acc = Some(Value::Metered(vec![Meter {
                period: period.unwrap_or("month").to_owned(),
                limit: Some(amount),
                overage: "block".into(),
                unit_price_cents: None,
            }]))
        }
        _ => {}
    }
}

// --- Catalog as the rules need it ------------------------------------------------

pub struct Feature {
    pub key: String,
    pub kind: Kind,
    pub unit: Option<String>,
    /// Usage thresholds of a metered feature (percent, as decimal text): where its stripes
    /// stop so that `_meter` sees each crossing (sql/metering/meter.sql, `_quota_bound`).
    pub thresholds: Vec<String>,
    /// Which thresholds these are (`_thresholds_key`): a window's stripes count only when
    /// they were split under the same. None: SQL older than this library (before ALTER
    /// EXTENSION ... UPDATE), whose counters have no `split`; `_meter` counts then.
    pub thresholds_key: Option<i64>,
}

pub struct Plan {
    pub key: String,
    pub name: String,
    pub price_cents: i64,
    pub grace_days: i64,
    /// Normalized spec per feature index; None where the plan does not name the feature.
    pub specs: Vec<Option<Json>>,
}

pub struct Catalog {
    pub version: i64,
    pub features: Vec<Feature>,
    pub feature_index: HashMap<String, usize>,
    pub plans: HashMap<String, Plan>,
    pub default_plan: Option<String>,
}

impl Catalog {
    /// The plan's value of every feature, for a subscription of `quantity` units.
    fn plan_values(&self, plan: &Plan, quantity: i64) -> Vec<Option<Value>> {
        self.features
            .iter()
            .zip(&plan.specs)
            .map(|(f, spec)| spec.as_ref().and_then(|s| Value::from_spec(f.kind, s, quantity)))
            .collect()
    }
}

// --- A customer's sources ----------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Subscription {
    pub id: String,
    pub plan: String,
    pub status: String,
    pub quantity: i64,
    pub period_start: Option<Micros>,
    pub period_end: Option<Micros>,
    pub trial_end: Option<Micros>,
    pub cancel_at_period_end: bool,
    pub status_changed_at: Micros,
}

#[derive(Clone, Debug)]
pub struct Grant {
    pub kind: String,
    pub feature: Option<String>,
    pub value: Json,
    pub starts_at: Micros,
    pub expires_at: Option<Micros>,
}

#[derive(Clone, Debug, Default)]
pub struct Party {
    pub id: [u8; 16],
    pub subscriptions: Vec<Subscription>,
    pub grants: Vec<Grant>,
}

#[derive(Clone, Debug, Default)]
pub struct CustomerData {
    pub exists: bool,
    pub own: Party,
    /// Organizations this customer is a member of, with the member's role.
    pub organizations: Vec<(Party, String)>,
}

/// Tracks the earliest future instant at which some answer changes.
struct Horizon {
    now: Micros,
    until: Micros,
}

impl Horizon {
    fn see(&mut self, t: Micros) {
        if t > self.now && t < self.until {
            self.until = t;
        }
    }
    fn before(&mut self, t: Micros) -> bool {
        self.see(t);
        self.now < t
    }
}

const US_PER_DAY: i64 = 86_400_000_000;

/// Until when a subscription grants, by its own fields. Statuses follow Stripe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grants {
    /// Not in this status (canceled for good, unpaid, paused, incomplete, ...).
    Never,
    /// Until this instant (a trial's end, a period's end, the end of past_due's grace).
    Until(Micros),
    /// With no end while nothing changes (an active subscription without a period end).
    Open,
}

/// The granting rule, written once: `has_feature` and `entitlements()` ask it through
/// `resolve`, the maintenance tasks through `entitlements._grants_until` (subscriptions.rs).
pub fn grants_until(
    status: &str,
    trial_end: Option<Micros>,
    period_end: Option<Micros>,
    cancel_at_period_end: bool,
    status_changed_at: Option<Micros>,
    grace_days: i64,
) -> Grants {
    match status {
        "trialing" => trial_end.or(period_end).map_or(Grants::Open, Grants::Until),
        "active" => period_end.map_or(Grants::Open, Grants::Until),
        "past_due" => status_changed_at
            .map_or(Grants::Never, |t| Grants::Until(t.saturating_add(grace_days.saturating_mul(US_PER_DAY)))),
        "canceled" if cancel_at_period_end => period_end.map_or(Grants::Never, Grants::Until),
        _ => Grants::Never,
    }
}

/// Does this subscription grant at `now`?
fn grants_now(sub: &Subscription, plan: &Plan, h: &mut Horizon) -> bool {
    let until = grants_until(
        &sub.status,
        sub.trial_end,
        sub.period_end,
        sub.cancel_at_period_end,
        Some(sub.status_changed_at),
        plan.grace_days,
    );
    match until {
        Grants::Never => false,
        Grants::Until(t) => h.before(t),
        Grants::Open => true,
    }
}

fn grant_live(g: &Grant, h: &mut Horizon) -> bool {
    if g.starts_at > h.now {
        h.see(g.starts_at);
        return false;
    }
    g.expires_at.is_none_or(|t| h.before(t))
}

/// Where the headline plan came from.
#[derive(Clone, Debug)]
pub struct Primary {
    pub plan: String,
    pub origin: &'static str,
    pub organization: Option<[u8; 16]>,
    pub subscription: Option<Subscription>,
}

pub struct Resolved {
    pub values: Vec<Option<Value>>,
    pub enabled: Vec<bool>,
    pub primary: Option<Primary>,
    pub valid_from: Micros,
    pub valid_until: Micros,
}

impl Resolved {
    pub fn valid_at(&self, now: Micros) -> bool {
        now >= self.valid_from && now < self.valid_until
    }
}

/// Granting subscriptions of one party, best (most expensive) first.
fn granting<'a>(cat: &'a Catalog, party: &'a Party, h: &mut Horizon) -> Vec<(&'a Subscription, &'a Plan)> {
    let mut subs: Vec<_> = party
        .subscriptions
        .iter()
        .filter_map(|s| cat.plans.get(&s.plan).map(|p| (s, p)))
        .filter(|(s, p)| grants_now(s, p, h))
        .collect();
    subs.sort_by(|a, b| b.1.price_cents.cmp(&a.1.price_cents).then_with(|| a.0.id.cmp(&b.0.id)));
    subs
}

fn apply_grants(cat: &Catalog, values: &mut [Option<Value>], grants: &[Grant], h: &mut Horizon) {
    let live: Vec<&Grant> = grants.iter().filter(|g| grant_live(g, h)).collect();
    let index = |g: &Grant| g.feature.as_ref().and_then(|f| cat.feature_index.get(f).copied());
    // Grants first so a granted config value takes priority over a plan's.
    for g in live.iter().filter(|g| g.kind == "feature") {
        if let Some(i) = index(g) {
            let mut granted = Value::from_spec(cat.features[i].kind, &g.value, 1);
            if let Some(v) = values[i].take() {
                combine(&mut granted, v);
            }
            values[i] = granted;
        }
    }
    for g in live.iter().filter(|g| g.kind == "quota_boost") {
        if let Some(i) = index(g) {
            boost(&mut values[i], cat.features[i].kind, &g.value);
        }
    }
    for g in live.iter().filter(|g| g.kind == "override") {
        if let Some(i) = index(g) {
            values[i] = Value::from_spec(cat.features[i].kind, &g.value, 1);
        }
    }
    // An explicit deny beats everything.
    for g in live.iter().filter(|g| g.kind == "deny") {
        if let Some(i) = index(g) {
            values[i] = None;
        }
    }
}

/// Resolve a customer at `now`: own subscriptions, organizations (each with its own
/// grants and denies), the default plan when nothing else grants, then own grants.
pub fn resolve(cat: &Catalog, data: &CustomerData, now: Micros) -> Resolved {
    let mut h = Horizon { now, until: i64::MAX };
    let n = cat.features.len();
    let mut values: Vec<Option<Value>> = vec![None; n];
    let mut primary = None;

    let own = granting(cat, &data.own, &mut h);
    for (sub, plan) in &own {
        if primary.is_none() {
            primary = Some(Primary {
                plan: plan.key.clone(),
                origin: "subscription",
                organization: None,
                subscription: Some((*sub).clone()),
            });
        }
        for (acc, v) in values.iter_mut().zip(cat.plan_values(plan, sub.quantity)) {
            if let Some(v) = v {
                combine(acc, v);
            }
        }
    }

    let mut any_org_grants = false;
    for (org, _role) in &data.organizations {
        let subs = granting(cat, org, &mut h);
        let mut org_values: Vec<Option<Value>> = vec![None; n];
        for (sub, plan) in &subs {
            if primary.is_none() {
                primary = Some(Primary {
                    plan: plan.key.clone(),
                    origin: "organization",
                    organization: Some(org.id),
                    subscription: Some((*sub).clone()),
                });
            }
            for (acc, v) in org_values.iter_mut().zip(cat.plan_values(plan, sub.quantity)) {
                if let Some(v) = v {
                    combine(acc, v);
                }
            }
        }
        any_org_grants |= !subs.is_empty();
        apply_grants(cat, &mut org_values, &org.grants, &mut h);
        for (acc, v) in values.iter_mut().zip(org_values) {
            if let Some(v) = v {
                combine(acc, v);
            }
        }
    }

    if own.is_empty() && !any_org_grants {
        if let Some(plan) = cat.default_plan.as_ref().and_then(|k| cat.plans.get(k)) {
            primary =
                Some(Primary { plan: plan.key.clone(), origin: "default", organization: None, subscription: None });
            for (acc, v) in values.iter_mut().zip(cat.plan_values(plan, 1)) {
                if let Some(v) = v {
                    combine(acc, v);
                }
            }
        }
    }

    apply_grants(cat, &mut values, &data.own.grants, &mut h);
    let enabled = values.iter().map(|v| v.as_ref().is_some_and(Value::enabled)).collect();
    Resolved { values, enabled, primary, valid_from: now, valid_until: h.until }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::*;
    use serde_json::json;

    fn meter(period: &str, limit: Option<f64>) -> Meter {
        Meter { period: period.into(), limit, overage: "block".into(), unit_price_cents: None }
    }

    #[pgrx::pg_test]
    fn most_generous_wins() {
        let mut acc = Some(Value::Limit(Some(3.0)));
        combine(&mut acc, Value::Limit(Some(15.0)));
        assert_eq!(acc, Some(Value::Limit(Some(15.0))));
        combine(&mut acc, Value::Limit(None));
        assert_eq!(acc, Some(Value::Limit(None)));
        let mut f = Some(Value::Flag(false));
        combine(&mut f, Value::Flag(true));
        assert_eq!(f, Some(Value::Flag(true)));
    }

    #[pgrx::pg_test]
    fn metered_periods_combine_per_period() {
        let mut acc = Some(Value::Metered(vec![meter("day", Some(500.0)), meter("month", Some(5000.0))]));
        combine(&mut acc, Value::Metered(vec![meter("month", Some(10000.0))]));
        assert_eq!(acc, Some(Value::Metered(vec![meter("month", Some(10000.0))])));
    }

    #[pgrx::pg_test]
    fn boost_adds_to_a_period() {
        let mut acc = Some(Value::Metered(vec![meter("day", Some(500.0)), meter("month", Some(5000.0))]));
        boost(&mut acc, Kind::Metered, &json!({"amount": 100, "period": "month"}));
        assert_eq!(acc, Some(Value::Metered(vec![meter("day", Some(500.0)), meter("month", Some(5100.0))])));
    }
}
