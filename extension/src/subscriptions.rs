//! What the SQL side of subscriptions asks of the rules (rules.rs): until when one grants.
//! The maintenance tasks (sql/maintenance/) and the Stripe staleness counts use it, so the
//! granting rule is written once, in `rules::grants_until`.

use crate::clock;
use crate::rules::{self, Grants};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;

/// The instant a subscription stops granting in its current status: NULL while it grants
/// with no end, '-infinity' when it grants nothing. `grace_days` is its plan's.
#[pg_extern(immutable, parallel_safe, name = "_grants_until")]
fn grants_until(
    status: Option<&str>,
    trial_end: Option<TimestampWithTimeZone>,
    period_end: Option<TimestampWithTimeZone>,
    cancel_at_period_end: Option<bool>,
    status_changed_at: Option<TimestampWithTimeZone>,
    grace_days: Option<i32>,
) -> Option<TimestampWithTimeZone> {
    let until = rules::grants_until(
        status.unwrap_or_default(),
        trial_end.map(clock::from_timestamptz),
        period_end.map(clock::from_timestamptz),
        cancel_at_period_end.unwrap_or(false),
        status_changed_at.map(clock::from_timestamptz),
        grace_days.unwrap_or(0).into(),
    );
    match until {
        Grants::Never => Some(TimestampWithTimeZone::negative_infinity()),
        Grants::Until(t) => Some(clock::to_timestamptz_or_infinity(t)),
        Grants::Open => None,
    }
}
