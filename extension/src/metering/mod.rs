//! Metering: quotas counted per period window.
//!
//! * `limits`: what the rules allow now, per period, with each window (`_meter_limits`).
//! * `counting`: `consume`/`try_consume`'s common case on kept plans and striped counters.
//! * `stamps`: counting on a stamped window without the executor.
//! * `ledger`: the ledger row of such a count, written without the executor.
//!
//! Refusals, idempotency, overage and rebalancing are SQL (`sql/metering/`).

pub mod counting;
pub mod ledger;
pub mod limits;
pub mod stamps;
