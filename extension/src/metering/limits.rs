//! What metering needs from the rules: the limits of a metered feature for a customer
//! right now, each with the counting window it applies to. Counting itself (atomic striped counters, the ledger,
//! idempotency, concurrency slots) is SQL in sql/metering/; this file never writes.

use crate::checks::cache;
use crate::clock::{self, Micros};
use crate::error::{Error, OrRaise, Result};
use crate::postgres::spi::Statement;
use crate::rules::{Catalog, Kind, Meter, Resolved, Value};
use pgrx::prelude::*;
use pgrx::{pg_sys, Uuid};

/// One period's limit and its current window `[start, resets_at)`; `resets_at` is None
/// for `lifetime`. A `None` limit is unlimited (the period is still counted).
pub struct Window {
    pub meter: Meter,
    pub start: Micros,
    pub resets_at: Option<Micros>,
}

/// The calendar window of `period` that holds `at`: a day or a month (UTC), the whole
/// of time for `lifetime`; `billing_period` falls back to the month.
pub fn calendar_window(period: &str, at: Micros) -> (Micros, Option<Micros>) {
    match period {
        "day" => (clock::day_start(at), Some(clock::next_day_start(at))),
        "lifetime" => (0, None),
        _ => (clock::month_start(at), Some(clock::next_month_start(at))),
    }
}

/// The window of `period` at `now`; `billing_period` follows the customer's headline
/// subscription (a renewal starts a fresh count) and falls back to the calendar month.
pub fn window(period: &str, now: Micros, r: &Resolved) -> (Micros, Option<Micros>) {
    if period == "billing_period" {
        let sub = r.primary.as_ref().and_then(|p| p.subscription.as_ref());
        if let Some((Some(start), Some(end))) = sub.map(|s| (s.period_start, s.period_end)) {
            if start <= now && now < end {
                return (start, Some(end));
            }
        }
    }
    calendar_window(period, now)
}

/// `entitlements._window_start(period, at)`: the start of `calendar_window`, for the SQL
/// that reads the ledger by window (usage_drift, the HINT of a refusal).
#[pg_extern(immutable, strict, parallel_safe, name = "_window_start")]
fn window_start(period: &str, at: pgrx::datum::TimestampWithTimeZone) -> pgrx::datum::TimestampWithTimeZone {
    if !at.is_finite() {
        return at;
    }
    clock::to_timestamptz_or_infinity(calendar_window(period, clock::from_timestamptz(at)).0)
}

/// The metered feature at index `idx` of a resolved customer: None when not granted.
pub fn windows(value: Option<&Value>, now: Micros, r: &Resolved) -> Option<Vec<Window>> {
    let Some(Value::Metered(meters)) = value else { return None };
    if !value.is_some_and(Value::enabled) {
        return None;
    }
    let meters = if meters.is_empty() {
        // Granted without any constrained period: still counted, per calendar month.
        vec![Meter { period: "month".into(), limit: None, overage: "allow".into(), unit_price_cents: None }]
    } else {
        meters.clone()
    };
    let mut windows: Vec<Window> = meters
        .into_iter()
        .map(|m| {
            let (start, resets_at) = window(&m.period, now, r);
            Window { meter: m, start, resets_at }
        })
        .collect();
    // The binding order `_meter_limits` uses too: both paths lock windows in one order, so a
    // consumer on one never waits in a cycle with a consumer on the other.
    windows.sort_by_key(|w| period_rank(&w.meter.period));
    Some(windows)
}

fn metered_index(cat: &Catalog, feature: &str) -> Result<usize> {
    let idx = cache::feature_index(cat, feature)?;
    match cat.features[idx].kind {
        Kind::Metered => Ok(idx),
        other => Err(Error::invalid_with_hint(
            format!("feature \"{feature}\" is a {} feature, not metered", other.as_str()),
            "check, consume and try_consume count metered features; use has_feature() or acquire() for the others",
        )),
    }
}

/// The limits of `feature` for `customer` now, one row per period, binding order
/// (shortest period first). No rows: the feature is not granted. Raises 22004 for a NULL
/// argument and 22023 for an unknown or non-metered feature.
#[pg_extern(stable, parallel_safe, name = "_meter_limits")]
// pgrx reads the result columns' names from this signature, so it cannot be a type alias.
#[allow(clippy::type_complexity)]
fn meter_limits(
    customer: Option<Uuid>,
    feature: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(period, String),
        name!(lim, Option<f64>),
        name!(overage, String),
        name!(unit_price_cents, Option<f64>),
        name!(window_start_us, i64),
        name!(resets_at_us, Option<i64>),
    ),
> {
    let Some(customer) = customer else { Error::NullValue("customer must not be NULL".into()).raise() };
    let Some(feature) = feature else { Error::NullValue("feature must not be NULL".into()).raise() };
    let now = clock::statement_now();
    crate::security::access::require_may_act_for(customer.as_bytes(), now).or_raise();
    let cat = cache::catalog().or_raise();
    let idx = metered_index(&cat, feature).or_raise();
    let rows = cache::with_customer(customer.as_bytes(), now, |_, _, r| windows(r.values[idx].as_ref(), now, r))
        .or_raise()
        .unwrap_or_default();
    let mut rows: Vec<_> = rows
        .into_iter()
        .map(|w| (w.meter.period, w.meter.limit, w.meter.overage, w.meter.unit_price_cents, w.start, w.resets_at))
        .collect();
    rows.sort_by_key(|r| period_rank(&r.0));
    TableIterator::new(rows)
}

/// Locks are always taken in this order, so two consumers never wait on each other in a cycle.
fn period_rank(p: &str) -> u8 {
    match p {
        "day" => 0,
        "month" => 1,
        "billing_period" => 2,
        _ => 3,
    }
}

/// Usage of one customer in the current windows, for `entitlements(customer)`:
/// (feature, period, window start) → units counted.
pub fn usage(customer: &[u8; 16]) -> Result<Vec<(String, String, Micros, f64)>> {
    const USAGE: Statement = Statement { sql: "select entitlements._usage_snapshot($1)", args: &[pg_sys::UUIDOID] };
    let doc = cache::load_as_owner(&USAGE, Some(Uuid::from_bytes(*customer)))?;
    Ok(doc
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| {
                    Some((
                        u["feature"].as_str()?.to_owned(),
                        u["period"].as_str()?.to_owned(),
                        u["window_start"].as_i64()?,
                        u["used"].as_f64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}
