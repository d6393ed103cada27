//! Time as the rules see it: microseconds since the Unix epoch, UTC.
//!
//! "Now" is the start of the current statement, so every row of one query is judged
//! at the same instant and a long transaction still sees periods end.
//!
//! The test clock: `set entitlements.clock = '2025-01-05 00:00:00+00'` freezes "now" at
//! that instant for the session (rules, writes, history, tasks, analytics), like a Stripe
//! test clock; `reset entitlements.clock` returns to real time. It is a superuser
//! parameter: others need `grant set on parameter entitlements.clock to ...`.

use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use chrono::{DateTime, Datelike, Months, NaiveDate, NaiveTime, Timelike, Utc};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;
const US_PER_DAY: i64 = 86_400_000_000;

pub type Micros = i64;

/// 0001-01-01 and 10000-01-01 UTC, in microseconds since 1970.
const YEAR_1: Micros = -62_135_596_800_000_000;
const YEAR_10000: Micros = 253_402_300_800_000_000;

/// Real time: the clock is not set.
const REAL: Micros = Micros::MIN;

static CLOCK: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// The parsed `entitlements.clock`, or REAL; set only by the assign hook.
static FROZEN: AtomicI64 = AtomicI64::new(REAL);
/// Bumped whenever the clock is set or reset: what was cached at one instant is dropped.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Defines `entitlements.clock` (from `_PG_init`). A value a non-superuser set before the
/// library was loaded is discarded by PostgreSQL then, with a warning.
pub fn define_guc() {
    // SAFETY: the hooks below follow PostgreSQL's GUC hook contracts.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"entitlements.clock",
            c"The instant the engine takes as now (a test clock); empty for real time.",
            c"Every rule, write, history row, task and analytics default of the session behaves as if it were this instant.",
            &CLOCK,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_clock),
            Some(assign_clock),
            None,
        );
    }
}

/// Parses the value once, at SET: the instant goes to the assign hook through `extra`, and
/// the setting becomes that instant in ISO 8601 UTC (PostgreSQL's contract: a check hook may
/// replace the malloc'd string, freeing the old one). Bad input is PostgreSQL's own
/// timestamptz error (22007).
#[pg_guard]
unsafe extern "C-unwind" fn check_clock(
    newval: *mut *mut c_char,
    extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    let text = if (*newval).is_null() { "" } else { CStr::from_ptr(*newval).to_str().unwrap_or("?") };
    let instant = if text.trim().is_empty() {
        REAL
    } else {
        let args = [
            Some(pg_sys::Datum::from(*newval)),
            Some(pg_sys::Datum::from(pg_sys::InvalidOid)),
            Some(pg_sys::Datum::from(-1i32)),
        ];
        let datum = pgrx::fcinfo::direct_function_call_as_datum(pg_sys::timestamptz_in, &args);
        let t = datum.map_or(i64::MAX, |d| d.value() as pg_sys::TimestampTz);
        // Years 1 to 9999: the canonical text below must read back the same (in a parallel
        // worker, say), and a test clock has no use beyond them.
        if !(YEAR_1..YEAR_10000).contains(&from_pg(t)) {
            pg_sys::GUC_check_errcode(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as i32);
            pg_sys::GUC_check_errdetail_string =
                pg_sys::pstrdup(c"The test clock must be an instant of the years 1 to 9999.".as_ptr());
            return false;
        }
        // Kept as the instant itself, in UTC: a relative input ('now', 'tomorrow') must not be
        // read again later, by a parallel worker or after a change of TimeZone.
        let canonical = CString::new(to_iso8601(from_pg(t))).expect("no NUL in a timestamp");
        let bytes = canonical.as_bytes_with_nul();
        let copy = libc::malloc(bytes.len()) as *mut c_char;
        if copy.is_null() {
            return false;
        }
        std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, copy, bytes.len());
        libc::free(*newval as *mut c_void);
        *newval = copy;
        from_pg(t)
    };
    // PostgreSQL frees `extra` with free().
    let slot = libc::malloc(std::mem::size_of::<Micros>()) as *mut Micros;
    if slot.is_null() {
        return false;
    }
    slot.write(instant);
    *extra = slot as *mut c_void;
    true
}

#[pg_guard]
unsafe extern "C-unwind" fn assign_clock(_newval: *const c_char, extra: *mut c_void) {
    let instant = if extra.is_null() { REAL } else { *(extra as *const Micros) };
    if FROZEN.swap(instant, Relaxed) != instant {
        GENERATION.fetch_add(1, Relaxed);
    }
}

/// Changes whenever the clock is set or reset.
pub fn generation() -> u64 {
    GENERATION.load(Relaxed)
}

/// The instant of the test clock, if it is set.
fn frozen() -> Option<Micros> {
    Some(FROZEN.load(Relaxed)).filter(|&t| t != REAL)
}

/// Now as the rules see it: the test clock, else the start of the current statement.
pub fn statement_now() -> Micros {
    // SAFETY: always valid inside a transaction, which every SQL call is.
    frozen().unwrap_or_else(|| unsafe { pg_sys::GetCurrentStatementStartTimestamp() + PG_EPOCH_OFFSET_US })
}

/// `entitlements.now()`: what SQL code uses instead of `now()` (the transaction's start)
/// so that the test clock moves it. Created in sql/schema.sql, before the tables whose
/// defaults call it.
#[pg_extern(stable, parallel_safe, sql = false)]
fn clock_now() -> TimestampWithTimeZone {
    // SAFETY: always valid inside a transaction.
    let real = || unsafe { pg_sys::GetCurrentTransactionStartTimestamp() + PG_EPOCH_OFFSET_US };
    to_timestamptz(frozen().unwrap_or_else(real))
}

/// `entitlements._statement_now()`: the same for code that counts by the statement.
#[pg_extern(stable, parallel_safe, sql = false)]
fn clock_statement_now() -> TimestampWithTimeZone {
    to_timestamptz(statement_now())
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
