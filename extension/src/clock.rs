//! Time as the rules see it: microseconds since the Unix epoch, UTC.
//!
//! "Now" is the start of the current statement, so every row of one query is judged
//! at the same instant and a long transaction still sees periods end.

use pgrx::pg_sys;

/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;
const US_PER_DAY: i64 = 86_400_000_000;

pub type Micros = i64;

pub fn statement_now() -> Micros {
    // SAFETY: always valid inside a transaction, which every SQL call is.
    unsafe { pg_sys::GetCurrentStatementStartTimestamp() + PG_EPOCH_OFFSET_US }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The next 00:00 UTC strictly after `t`.
pub fn next_day_start(t: Micros) -> Micros {
    (t.div_euclid(US_PER_DAY) + 1) * US_PER_DAY
}

/// 00:00 UTC of the day holding `t`.
pub fn day_start(t: Micros) -> Micros {
    t.div_euclid(US_PER_DAY) * US_PER_DAY
}

/// The first instant of the calendar month (UTC) holding `t`.
pub fn month_start(t: Micros) -> Micros {
    let (y, m, _) = civil_from_days(t.div_euclid(US_PER_DAY));
    days_from_civil(y, m, 1) * US_PER_DAY
}

/// The first instant of the next calendar month (UTC) after `t`.
pub fn next_month_start(t: Micros) -> Micros {
    let (y, m, _) = civil_from_days(t.div_euclid(US_PER_DAY));
    let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    days_from_civil(y, m, 1) * US_PER_DAY
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

/// ISO 8601 in UTC, the way PostgreSQL renders timestamptz in JSON.
pub fn to_iso8601(t: Micros) -> String {
    let days = t.div_euclid(US_PER_DAY);
    let rem = t.rem_euclid(US_PER_DAY);
    let (y, mo, d) = civil_from_days(days);
    let secs = rem / 1_000_000;
    let micros = rem % 1_000_000;
    let (h, mi, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if micros == 0 {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}+00:00")
    } else {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{micros:06}+00:00")
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::*;

    #[pgrx::pg_test]
    fn month_and_day_boundaries() {
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
    }

    #[pgrx::pg_test]
    fn statement_clock_matches_postgres() {
        let sql = "select (extract(epoch from statement_timestamp()) * 1000000)::bigint";
        let pg: i64 = pgrx::Spi::get_one(sql).unwrap().unwrap();
        assert_eq!(pg, statement_now());
    }
}
