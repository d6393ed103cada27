//! Refusal signals: PT429/PT403 answers and 42501 refusals, counted per kind, subject, detail
//! and minute, never a row per call.
//!
//! A refusal usually ends its transaction (consume raises PT429, PostgREST rolls back), so
//! nothing written in it survives. The counts therefore live in a dynamic shared memory
//! segment that this backend fills and a short-lived background worker empties: the worker
//! waits `FLUSH_DELAY`, closes the segment, and writes what it holds through
//! `entitlements._record_signals` in a transaction of its own. While a segment is open the
//! hot path only adds to it (an atomic flag and a hash lookup); a backend starts at most one
//! worker per `FLUSH_DELAY`. No `shared_preload_libraries` needed: dynamic workers and
//! segments are made at run time. When no worker slot is free (max_worker_processes), the
//! counts are carried in this backend and handed to the next worker it starts.

use crate::clock;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a worker collects before it writes, and so the least time between two workers
/// of one backend.
const FLUSH_DELAY: Duration = Duration::from_millis(1000);
/// After no worker could be started (every slot taken), the next refusal tries again this soon.
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// A backend exiting with counts no worker could take waits this long for a slot.
const EXIT_WAIT: Duration = Duration::from_secs(2);
/// A segment no worker closed after this long lost its worker (it never started, or died):
/// the backend takes its counts back.
const RECLAIM_AFTER: Duration = Duration::from_secs(30);
/// Distinct (kind, subject, detail, minute) counts one segment holds; more are counted as dropped.
const CAPACITY: usize = 256;
/// Distinct details one subject keeps in a segment; more are counted under `*`.
const DETAILS_PER_SUBJECT: usize = 16;
/// Subjects (a customer id, a role) and details (a feature key, an action) are kept to this
/// many bytes.
const TEXT_MAX: usize = 63;
const MINUTE_US: i64 = 60_000_000;

/// What was refused. The names are `security_signals.kind`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum Kind {
    /// PT429: over a blocking limit (consume), or try_consume's `allowed = false`.
    Quota = 1,
    /// PT403: a feature the plan does not include.
    Feature = 2,
    /// 42501: an admin function, or acting for a customer one may not.
    Permission = 3,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Quota => "quota_refused",
            Kind::Feature => "feature_refused",
            Kind::Permission => "permission_refused",
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        [Kind::Quota, Kind::Feature, Kind::Permission].into_iter().find(|k| *k as u8 == code)
    }

    fn parse(name: &str) -> Option<Kind> {
        [Kind::Quota, Kind::Feature, Kind::Permission].into_iter().find(|k| k.name() == name)
    }
}

/// One count, as it sits in shared memory (plain bytes: both processes run this library).
#[repr(C)]
#[derive(Clone, Copy)]
struct Entry {
    kind: u8,
    subject_len: u8,
    detail_len: u8,
    subject: [u8; TEXT_MAX],
    detail: [u8; TEXT_MAX],
    /// Start of the minute, first and last refusal: microseconds since 1970 (the test clock's).
    window: i64,
    first: i64,
    last: i64,
    count: u64,
}

type Key = (u8, i64, Vec<u8>, Vec<u8>);

impl Entry {
    fn new(kind: Kind, subject: &str, detail: &str, now: clock::Micros) -> Entry {
        let mut e = Entry {
            kind: kind as u8,
            subject_len: 0,
            detail_len: 0,
            subject: [0; TEXT_MAX],
            detail: [0; TEXT_MAX],
            window: now - now.rem_euclid(MINUTE_US),
            first: now,
            last: now,
            count: 1,
        };
        e.subject_len = copy_prefix(&mut e.subject, subject);
        e.detail_len = copy_prefix(&mut e.detail, detail);
        e
    }

    fn key(&self) -> Key {
        (
            self.kind,
            self.window,
            self.subject[..self.subject_len as usize].to_vec(),
            self.detail[..self.detail_len as usize].to_vec(),
        )
    }

    fn merge(&mut self, other: &Entry) {
        self.count = self.count.saturating_add(other.count);
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
    }

    fn to_json(self) -> Option<serde_json::Value> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Some(serde_json::json!({
            "kind": Kind::from_code(self.kind)?.name(),
            "subject": text(&self.subject[..self.subject_len as usize]),
            "detail": text(&self.detail[..self.detail_len as usize]),
            "window_us": self.window,
            "first_us": self.first,
            "last_us": self.last,
            "count": self.count,
        }))
    }
}

/// Copies at most TEXT_MAX bytes of `s`, cut at a character boundary.
fn copy_prefix(to: &mut [u8; TEXT_MAX], s: &str) -> u8 {
    let mut n = s.len().min(TEXT_MAX);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    to[..n].copy_from_slice(&s.as_bytes()[..n]);
    n as u8
}

/// The segment: a spin flag guards everything after it. Whoever sets `closed` owns the
/// counts and unpins the segment.
#[repr(C)]
struct Shared {
    lock: AtomicBool,
    closed: bool,
    len: u32,
    dropped: u64,
    entries: [Entry; CAPACITY],
}

impl Shared {
    fn with_lock<R>(&mut self, f: impl FnOnce(&mut Shared) -> R) -> R {
        while self.lock.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::hint::spin_loop();
        }
        let r = f(self);
        self.lock.store(false, Ordering::Release);
        r
    }

    /// Closes the segment and takes its counts, unless someone closed it first.
    fn take(&mut self) -> Option<(Vec<Entry>, u64)> {
        self.with_lock(|s| {
            if s.closed {
                return None;
            }
            s.closed = true;
            Some((s.entries[..s.len as usize].to_vec(), s.dropped))
        })
    }
}

/// The segment this backend is filling.
struct Open {
    seg: *mut pg_sys::dsm_segment,
    shared: *mut Shared,
    handle: pg_sys::dsm_handle,
    opened: Instant,
    slots: HashMap<Key, usize>,
}

#[derive(Default)]
struct Tally {
    /// The exit hook is registered (on the first refusal).
    hooked: bool,
    open: Option<Open>,
    /// Counts no worker has yet (no slot was free, or a worker was lost).
    carried: Vec<Entry>,
    carried_dropped: u64,
    /// When the next worker may start (FLUSH_DELAY after one started, RETRY_AFTER after none could).
    next_launch: Option<Instant>,
}

thread_local! {
    static TALLY: RefCell<Tally> = RefCell::new(Tally::default());
}

/// `entitlements.refusal_signals`: counting is on unless a superuser turns it off (the
/// benchmark compares both in one run).
static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);

pub fn define_guc() {
    GucRegistry::define_bool_guc(
        c"entitlements.refusal_signals",
        c"Count refusals (PT429, PT403, 42501) for the security rules.",
        c"Off: refusals are not counted and the rules that read them find nothing.",
        &ENABLED,
        GucContext::Suset,
        GucFlags::default(),
    );
}

/// Counts one refusal.
pub fn note(kind: Kind, subject: &str, detail: &str) {
    // A hot standby cannot write the counts (its primary counts what reaches it).
    // SAFETY: a plain read of shared state, cached by PostgreSQL once recovery is over.
    if !ENABLED.get() || unsafe { pg_sys::RecoveryInProgress() } {
        return;
    }
    let entry = Entry::new(kind, subject, detail, clock::statement_now());
    TALLY.with_borrow_mut(|t| t.note(entry));
}

impl Tally {
    fn note(&mut self, entry: Entry) {
        if !self.hooked {
            self.hooked = true;
            // SAFETY: registering a plain callback; it runs once, as this backend exits.
            unsafe { pg_sys::before_shmem_exit(Some(hand_over_at_exit), pg_sys::Datum::from(0)) };
        }
        if self.open.as_ref().is_some_and(|o| o.opened.elapsed() > RECLAIM_AFTER) {
            self.reclaim();
        }
        if let Some(open) = self.open.as_mut() {
            // SAFETY: the mapping is pinned to this backend until we detach it.
            let shared = unsafe { &mut *open.shared };
            let slots = &mut open.slots;
            let added = shared.with_lock(|s| {
                if s.closed {
                    return false;
                }
                add(&mut s.entries, &mut s.len, &mut s.dropped, slots, &entry);
                true
            });
            if added {
                return;
            }
            self.close_open();
        }
        let key = entry.key();
        if let Some(e) = self.carried.iter_mut().find(|e| e.key() == key) {
            e.merge(&entry);
        } else if self.carried.len() < CAPACITY {
            self.carried.push(entry);
        } else {
            self.carried_dropped = self.carried_dropped.saturating_add(entry.count);
        }
        if self.next_launch.is_none_or(|t| Instant::now() >= t) {
            self.launch();
        }
    }

    /// The worker closed the segment: let go of it.
    fn close_open(&mut self) {
        if let Some(open) = self.open.take() {
            // SAFETY: our own mapping; the worker unpinned the segment when it closed it.
            unsafe { pg_sys::dsm_detach(open.seg) };
        }
    }

    /// No worker closed the segment in time: take its counts back (if it is still open).
    fn reclaim(&mut self) {
        let Some(open) = self.open.take() else { return };
        // SAFETY: our mapping is valid until detached.
        if let Some((entries, dropped)) = unsafe { (*open.shared).take() } {
            self.carried.extend(entries);
            self.carried.truncate(CAPACITY);
            self.carried_dropped += dropped;
            // SAFETY: we closed it, so the pin is ours to drop.
            unsafe { pg_sys::dsm_unpin_segment(open.handle) };
        }
        // SAFETY: as above.
        unsafe { pg_sys::dsm_detach(open.seg) };
    }

    /// A new segment with the carried counts, and a worker to write it; false when no worker
    /// could be started (the counts stay carried).
    fn launch(&mut self) -> bool {
        self.next_launch = Some(Instant::now() + RETRY_AFTER);
        // SAFETY: dsm_create returns NULL (with this flag) rather than raising when no segment is left.
        let seg =
            unsafe { pg_sys::dsm_create(std::mem::size_of::<Shared>(), pg_sys::DSM_CREATE_NULL_IF_MAXSEGMENTS as i32) };
        if seg.is_null() {
            return false;
        }
        // SAFETY: a fresh segment of the right size; we write every field before sharing it.
        let (shared, handle) = unsafe {
            let shared = pg_sys::dsm_segment_address(seg) as *mut Shared;
            std::ptr::addr_of_mut!((*shared).lock).write(AtomicBool::new(false));
            std::ptr::addr_of_mut!((*shared).closed).write(false);
            std::ptr::addr_of_mut!((*shared).len).write(self.carried.len() as u32);
            std::ptr::addr_of_mut!((*shared).dropped).write(self.carried_dropped);
            let entries = std::ptr::addr_of_mut!((*shared).entries) as *mut Entry;
            std::ptr::copy_nonoverlapping(self.carried.as_ptr(), entries, self.carried.len());
            // Kept past this transaction (pin_mapping) and past this backend (pin_segment):
            // the worker unpins it.
            pg_sys::dsm_pin_mapping(seg);
            pg_sys::dsm_pin_segment(seg);
            (shared, pg_sys::dsm_segment_handle(seg))
        };
        // SAFETY: MyDatabaseId is set in every backend that runs SQL.
        let database = unsafe { pg_sys::MyDatabaseId };
        let started = BackgroundWorkerBuilder::new("pg_entitlements signal flush")
            .set_type("pg_entitlements signals")
            .set_library("pg_entitlements")
            .set_function("pg_entitlements_signal_flush")
            .set_argument(Some(pg_sys::Datum::from(handle)))
            .set_extra(&database.to_u32().to_string())
            .enable_spi_access()
            .set_restart_time(None)
            .load_dynamic();
        if started.is_err() {
            // SAFETY: nobody else knows the handle; the segment goes with these two calls.
            unsafe {
                pg_sys::dsm_unpin_segment(handle);
                pg_sys::dsm_detach(seg);
            }
            return false;
        }
        self.next_launch = Some(Instant::now() + FLUSH_DELAY);
        let slots = self.carried.iter().enumerate().map(|(i, e)| (e.key(), i)).collect();
        self.carried.clear();
        self.carried_dropped = 0;
        self.open = Some(Open { seg, shared, handle, opened: Instant::now(), slots });
        true
    }
}

/// A backend that exits with counts no worker has (no slot was free when it tried) starts one
/// for them, waiting up to EXIT_WAIT for a slot (flush workers free theirs within a second):
/// the segment is pinned, so it outlives the backend.
#[pg_guard]
unsafe extern "C-unwind" fn hand_over_at_exit(_code: i32, _arg: pg_sys::Datum) {
    TALLY.with_borrow_mut(|t| {
        let until = Instant::now() + EXIT_WAIT;
        while (!t.carried.is_empty() || t.carried_dropped > 0) && !t.launch() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

/// Adds `entry` to a table of `len` counts, merging with the same key. A subject's details
/// beyond DETAILS_PER_SUBJECT (a caller chooses some: action names) and any count the table
/// has no room for go under detail `*` of the same subject, so the rules, which count per
/// subject, still see them; only when even that does not fit is the count dropped.
fn add(entries: &mut [Entry], len: &mut u32, dropped: &mut u64, slots: &mut HashMap<Key, usize>, entry: &Entry) {
    let key = entry.key();
    if let Some(&i) = slots.get(&key) {
        entries[i].merge(entry);
        return;
    }
    let room = (*len as usize) < entries.len().min(CAPACITY);
    let details = slots.keys().filter(|k| k.0 == key.0 && k.1 == key.1 && k.2 == key.2).count();
    if room && details < DETAILS_PER_SUBJECT {
        entries[*len as usize] = *entry;
        slots.insert(key, *len as usize);
        *len += 1;
        return;
    }
    let mut rest = *entry;
    rest.detail = [0; TEXT_MAX];
    rest.detail[0] = b'*';
    rest.detail_len = 1;
    let rest_key = rest.key();
    if let Some(&i) = slots.get(&rest_key) {
        entries[i].merge(&rest);
    } else if room {
        entries[*len as usize] = rest;
        slots.insert(rest_key, *len as usize);
        *len += 1;
    } else {
        *dropped = dropped.saturating_add(entry.count);
    }
}

/// The flush worker: collect for FLUSH_DELAY, close the segment, write its counts.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_entitlements_signal_flush(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    let handle = arg.value() as pg_sys::dsm_handle;
    // SAFETY: attaching by handle; NULL when the segment is already gone (the backend reclaimed it).
    let seg = unsafe { pg_sys::dsm_attach(handle) };
    if seg.is_null() {
        return;
    }
    // The latch may be set already (signals at start): wait out the whole delay.
    let started = Instant::now();
    while let Some(left) = FLUSH_DELAY.checked_sub(started.elapsed()) {
        if left.is_zero() || BackgroundWorker::sigterm_received() || !BackgroundWorker::wait_latch(Some(left)) {
            break;
        }
    }
    // SAFETY: attached above; the layout is this library's.
    let taken = unsafe { (*(pg_sys::dsm_segment_address(seg) as *mut Shared)).take() };
    // SAFETY: closing it made the pin ours; then our own mapping goes.
    unsafe {
        if taken.is_some() {
            pg_sys::dsm_unpin_segment(handle);
        }
        pg_sys::dsm_detach(seg);
    }
    let Some((entries, dropped)) = taken else { return };
    let mut rows: Vec<serde_json::Value> = entries.into_iter().filter_map(Entry::to_json).collect();
    if dropped > 0 {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
        rows.push(serde_json::json!({"kind": "signals_dropped", "subject": "", "detail": "", "window_us": now - now.rem_euclid(MINUTE_US),
                                      "first_us": now, "last_us": now, "count": dropped}));
    }
    let database = BackgroundWorker::get_extra().parse::<u32>().map(pg_sys::Oid::from).ok();
    BackgroundWorker::connect_worker_to_spi_by_oid(database, None);
    BackgroundWorker::transaction(move || {
        let installed = Spi::get_one::<bool>(
            "select pg_catalog.to_regprocedure('entitlements._record_signals(jsonb)') is not null",
        );
        if installed == Ok(Some(true)) {
            // A session holding a lock on the table must not keep this worker (and its slot).
            let _ = Spi::run("set local lock_timeout = '2s'; set local statement_timeout = '30s'");
            let _ = Spi::run_with_args(
                "select entitlements._record_signals($1)",
                &[pgrx::JsonB(serde_json::Value::Array(rows)).into()],
            );
        }
    });
}

/// `entitlements._note_refusal(kind, subject, detail)`: counts a refusal the extension's own
/// (definer) code is about to answer. Only the owner executes it (security/privileges.sql).
#[pg_extern(volatile, parallel_unsafe, name = "_note_refusal", requires = ["schema"])]
fn note_refusal(kind: &str, subject: Option<&str>, detail: Option<&str>) {
    if let Some(kind) = Kind::parse(kind) {
        note(kind, subject.unwrap_or(""), detail.unwrap_or(""));
    }
}

/// `entitlements._note_permission_refused(action)`: counts a 42501 against whoever is
/// calling (their user id when the role may say it, else the role), so anyone may call it:
/// it only ever counts the caller.
#[pg_extern(volatile, parallel_unsafe, name = "_note_permission_refused", requires = ["schema"])]
fn note_permission_refused(action: Option<&str>) {
    note(Kind::Permission, &principal(), action.unwrap_or(""));
}

/// Who is refused: the user id the caller may speak for, else `role:<name>` of the role
/// outside any definer function.
pub fn principal() -> String {
    if let Ok(Some(id)) = crate::security::identity::current() {
        return pgrx::Uuid::from_bytes(id).to_string();
    }
    // SAFETY: a syscache lookup inside a transaction; NULL for a dropped role (noerr).
    let name = unsafe {
        let p = pg_sys::GetUserNameFromId(pg_sys::GetOuterUserId(), true);
        if p.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    format!("role:{name}")
}

/// `entitlements._principal()`: who is calling, as incidents and notes record it.
#[pg_extern(stable, parallel_safe, name = "_principal", requires = ["security"])]
fn principal_sql() -> String {
    principal()
}
