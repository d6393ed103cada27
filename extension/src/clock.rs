//! Time as the rules see it: microseconds since the Unix epoch, UTC.
//!
//! "Now" is the start of the current statement, so every row of one query is judged
//! at the same instant and a long transaction still sees periods end.

use chrono::{DateTime, Datelike, Months, NaiveDate, NaiveTime, Timelike, Utc};
use pgrx::pg_sys;

/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;
const US_PER_DAY: i64 = 86_400_000_000;

pub type Micros = i64;

pub fn statement_now() -> Micros {
    // SAFETY: always valid inside a transaction, which every SQL call is.
    unsafe { pg_sys::GetCurrentStatementStartTimestamp() + PG_EPOCH_OFFSET_US }
}

/// `t` as a UTC date and time, when chrono can hold it (years up to 262142; PostgreSQL
/// goes on to 294276).
fn utc(t: Micros) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(t)
}

fn micros_of(date: NaiveDate) -> Micros {
    date.and_time(NaiveTime::MIN).and_utc().timestamp_micros()
}

/// The next 00:00 UTC strictly after `t`.
pub fn next_day_start(t: Micros) -> Micros {
    day_start(t).saturating_add(US_PER_DAY)
}

/// 00:00 UTC of the day holding `t`.
pub fn day_start(t: Micros) -> Micros {
    t.div_euclid(US_PER_DAY) * US_PER_DAY
}

/// The first instant of the calendar month (UTC) holding `t`; `t` itself beyond chrono's
/// range (no month boundary is ever that far).
pub fn month_start(t: Micros) -> Micros {
    utc(t).and_then(|d| d.date_naive().with_day(1)).map_or(t, micros_of)
}

/// The first instant of the next calendar month (UTC) after `t`; never, beyond chrono's
/// range.
pub fn next_month_start(t: Micros) -> Micros {
    utc(t)
        .and_then(|d| d.date_naive().with_day(1))
        .and_then(|first| first.checked_add_months(Months::new(1)))
        .map_or(Micros::MAX, micros_of)
}

/// As a SQL timestamptz (PostgreSQL counts from 2000-01-01).
pub fn to_timestamptz(t: Micros) -> pgrx::datum::TimestampWithTimeZone {
    pgrx::datum::TimestampWithTimeZone::try_from(t - PG_EPOCH_OFFSET_US).expect("a timestamp PostgreSQL can hold")
}

/// As a SQL timestamptz, 'infinity' when beyond what PostgreSQL can hold (no horizon).
pub fn to_timestamptz_or_infinity(t: Micros) -> pgrx::datum::TimestampWithTimeZone {
    pgrx::datum::TimestampWithTimeZone::try_from(t.saturating_sub(PG_EPOCH_OFFSET_US))
        .unwrap_or_else(|_| pgrx::datum::TimestampWithTimeZone::positive_infinity())
}

/// From PostgreSQL's raw TimestampTz (microseconds since 2000-01-01).
pub fn from_pg(t: pg_sys::TimestampTz) -> Micros {
    t.saturating_add(PG_EPOCH_OFFSET_US)
}

/// To PostgreSQL's raw TimestampTz.
pub fn to_pg(t: Micros) -> pg_sys::TimestampTz {
    t.saturating_sub(PG_EPOCH_OFFSET_US)
}

/// From a SQL timestamptz; +/-infinity saturate.
pub fn from_timestamptz(t: pgrx::datum::TimestampWithTimeZone) -> Micros {
    pg_sys::TimestampTz::from(t).saturating_add(PG_EPOCH_OFFSET_US)
}

/// ISO 8601 in UTC, the way PostgreSQL renders timestamptz in JSON (microseconds only
/// when there are any); beyond chrono's range, PostgreSQL's word for it.
pub fn to_iso8601(t: Micros) -> String {
    let Some(d) = utc(t) else { return if t > 0 { "infinity".into() } else { "-infinity".into() } };
    let (y, mo, day) = (d.year(), d.month(), d.day());
    let (h, mi, s) = (d.hour(), d.minute(), d.second());
    match d.timestamp_subsec_micros() {
        0 => format!("{y:04}-{mo:02}-{day:02}T{h:02}:{mi:02}:{s:02}+00:00"),
        us => format!("{y:04}-{mo:02}-{day:02}T{h:02}:{mi:02}:{s:02}.{us:06}+00:00"),
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::*;

    #[pgrx::pg_test]
    fn month_and_day_boundaries() {
        let days_from_civil = |y, m, d| micros_of(NaiveDate::from_ymd_opt(y, m, d).unwrap()) / US_PER_DAY;
        // 2026-01-31T10:00:00Z
        let t = days_from_civil(2026, 1, 31) * US_PER_DAY + 10 * 3_600_000_000;
        assert_eq!(to_iso8601(next_day_start(t)), "2026-02-01T00:00:00+00:00");
        assert_eq!(to_iso8601(next_month_start(t)), "2026-02-01T00:00:00+00:00");
        let dec = days_from_civil(2024, 12, 15) * US_PER_DAY;
        assert_eq!(to_iso8601(next_month_start(dec)), "2025-01-01T00:00:00+00:00");
        assert_eq!(to_iso8601(month_start(dec + 5)), "2024-12-01T00:00:00+00:00");
        assert_eq!(to_iso8601(day_start(t)), "2026-01-31T00:00:00+00:00");
        let leap = days_from_civil(2024, 2, 29) * US_PER_DAY + 1;
        assert_eq!(to_iso8601(leap), "2024-02-29T00:00:00.000001+00:00");
        assert_eq!(to_iso8601(-1), "1969-12-31T23:59:59.999999+00:00");
        assert_eq!(to_iso8601(Micros::MAX), "infinity");
        assert_eq!(next_month_start(Micros::MAX - 1), Micros::MAX);
    }

    #[pgrx::pg_test]
    fn statement_clock_matches_postgres() {
        let sql = "select (extract(epoch from statement_timestamp()) * 1000000)::bigint";
        let pg: i64 = pgrx::Spi::get_one(sql).unwrap().unwrap();
        assert_eq!(pg, statement_now());
    }
}
