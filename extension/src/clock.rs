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

/// The Gregorian calendar repeats every 400 years, which are exactly 146,097 days.
const CYCLE_US: i64 = 146_097 * US_PER_DAY;

/// `t` as a UTC date and time within one 400-year cycle from 1970 (chrono holds years up to
/// 262142, PostgreSQL goes on to 294276), and the whole cycles taken off: `t` is the date
/// and time returned plus `cycles` times 400 years.
fn utc(t: Micros) -> (DateTime<Utc>, i64) {
    let cycles = t.div_euclid(CYCLE_US);
    let within = DateTime::from_timestamp_micros(t.rem_euclid(CYCLE_US)).expect("1970 to 2370 is in chrono's range");
    (within, cycles)
}

fn micros_of(date: NaiveDate, cycles: i64) -> Micros {
    date.and_time(NaiveTime::MIN).and_utc().timestamp_micros().saturating_add(cycles.saturating_mul(CYCLE_US))
}

/// The next 00:00 UTC strictly after `t`.
pub fn next_day_start(t: Micros) -> Micros {
    day_start(t).saturating_add(US_PER_DAY)
}

/// 00:00 UTC of the day holding `t`.
pub fn day_start(t: Micros) -> Micros {
    t.div_euclid(US_PER_DAY) * US_PER_DAY
}

/// The first instant of the calendar month (UTC) holding `t`.
pub fn month_start(t: Micros) -> Micros {
    let (d, cycles) = utc(t);
    micros_of(d.date_naive().with_day(1).expect("every month has a first day"), cycles)
}

/// The first instant of the next calendar month (UTC) after `t` (saturating: "never").
pub fn next_month_start(t: Micros) -> Micros {
    let (d, cycles) = utc(t);
    let first = d.date_naive().with_day(1).expect("every month has a first day");
    micros_of(first.checked_add_months(Months::new(1)).expect("2370 is in chrono's range"), cycles)
}

/// As a SQL timestamptz (PostgreSQL counts from 2000-01-01).
pub fn to_timestamptz(t: Micros) -> pgrx::datum::TimestampWithTimeZone {
    pgrx::datum::TimestampWithTimeZone::try_from(t - PG_EPOCH_OFFSET_US).expect("a timestamp PostgreSQL can hold")
}

/// As a SQL timestamptz, +/-infinity beyond what PostgreSQL can hold (no horizon).
pub fn to_timestamptz_or_infinity(t: Micros) -> pgrx::datum::TimestampWithTimeZone {
    pgrx::datum::TimestampWithTimeZone::try_from(t.saturating_sub(PG_EPOCH_OFFSET_US)).unwrap_or_else(|_| {
        if t > 0 {
            pgrx::datum::TimestampWithTimeZone::positive_infinity()
        } else {
            pgrx::datum::TimestampWithTimeZone::negative_infinity()
        }
    })
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
/// when there are any). `Micros::MAX` and `MIN`, where +/-infinity saturate, are infinity.
pub fn to_iso8601(t: Micros) -> String {
    match t {
        Micros::MAX => return "infinity".into(),
        Micros::MIN => return "-infinity".into(),
        _ => {}
    }
    let (d, cycles) = utc(t);
    let y = i64::from(d.year()) + 400 * cycles;
    let (mo, day, h, mi, s) = (d.month(), d.day(), d.hour(), d.minute(), d.second());
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
        let days_from_civil = |y, m, d| micros_of(NaiveDate::from_ymd_opt(y, m, d).unwrap(), 0) / US_PER_DAY;
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
        assert_eq!(to_iso8601(Micros::MIN), "-infinity");
        assert_eq!(next_month_start(Micros::MAX - 1), Micros::MAX);
        // Beyond chrono's years (262142), as far as PostgreSQL goes: the 400-year cycle.
        let far = days_from_civil(2270, 3, 15) * US_PER_DAY + 100 * 146_097 * US_PER_DAY;
        assert_eq!(to_iso8601(far), "42270-03-15T00:00:00+00:00");
        assert_eq!(to_iso8601(month_start(far + 5)), "42270-03-01T00:00:00+00:00");
        assert_eq!(to_iso8601(next_month_start(far)), "42270-04-01T00:00:00+00:00");
        let pg_far = days_from_civil(2270, 12, 31) * US_PER_DAY + 729 * 146_097 * US_PER_DAY;
        assert_eq!(to_iso8601(pg_far), "293870-12-31T00:00:00+00:00");
        assert_eq!(to_iso8601(next_month_start(pg_far)), "293871-01-01T00:00:00+00:00");
        assert_eq!(to_iso8601(month_start(-1)), "1969-12-01T00:00:00+00:00");
    }

    #[pgrx::pg_test]
    fn statement_clock_matches_postgres() {
        let sql = "select (extract(epoch from statement_timestamp()) * 1000000)::bigint";
        let pg: i64 = pgrx::Spi::get_one(sql).unwrap().unwrap();
        assert_eq!(pg, statement_now());
    }
}
