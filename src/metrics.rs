//! The zone's counters and their Prometheus text exposition. Pure: the nginx side places a
//! [`Counters`] block in each `stale_cache_zone` and renders snapshots of it with [`render`].
//!
//! Counters are in shared memory and every worker adds to them without the zone's mutex.
//! Each worker counts in a [`Lane`] of its own (plain loads and stores, one writer, on cache
//! lines no other worker writes), claimed at its first count; the shared block's atomics
//! take the counts of a worker that found no lane free. A snapshot sums the block and every
//! lane, whoever owns it: a lane outlives its worker (a killed worker's counts stay in the
//! totals), and the next worker that finds its owner gone adopts it and goes on adding to it.
//! The block's layout is append-only (a counter keeps its slot forever; new ones take spare
//! slots), so a reload onto a build that counts more still reads the same block.

use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::hotcache::{self, HotStats};
use crate::locktable::Stats;
use crate::policy::CacheStatus;

/// Identifies a counters block and its layout version (2: the lanes follow the block).
pub const MAGIC: u64 = u64::from_le_bytes(*b"SCMETRC2");

/// Workers that count in a lane of their own; more count in the shared block's atomics.
pub const LANES: usize = 8;

/// Slots in a block; what [`Counter`] does not use yet is spare.
pub const SLOTS: usize = 120;

/// Upper bounds of the wake-up delay histogram's buckets, in milliseconds (`+Inf` follows).
pub const WAKE_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

/// How a fill ended (`collapse::FillEnd`), as exported.
pub const FILL_OUTCOMES: [&str; 3] = ["stored", "not_stored", "abandoned"];

/// Why the layer stepped aside (`stale::error::StaleError` kinds), as exported.
pub const ERROR_KINDS: [&str; 5] = ["inactive", "settings", "zone", "lookup", "redis-error"];

/// What a purge found, as exported.
pub const PURGE_RESULTS: [&str; 3] = ["removed", "not_found", "failed"];

/// Reasons a refresh was not sent although the key was stale (see [`Counter::RefreshSkipped`]).
pub const REFRESH_SKIP_REASONS: [&str; 2] = ["backoff", "limit"];
/// [`REFRESH_SKIP_REASONS`] index: the key's last refresh failed and its backoff lasts.
pub const SKIP_BACKOFF: usize = 0;
/// [`REFRESH_SKIP_REASONS`] index: `stale_cache_refresh_limit` refreshes were in flight.
pub const SKIP_LIMIT: usize = 1;
/// Slots reserved for [`REFRESH_SKIP_REASONS`].
const REFRESH_SKIP_SLOTS: usize = 4;

/// One counter of a block; the value is its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Requests that ended with this `$stale_cache_status`.
    Requests(CacheStatus),
    /// Fill locks taken (MISS, also a waiter filling in for an abandoned fill).
    FillsStarted,
    /// Fills ended, by outcome (index into [`FILL_OUTCOMES`]).
    Fills(usize),
    /// Waits for another request's fill begun (a request may wait more than once).
    Waits,
    /// Waits ended by the lock moving (release or takeover).
    Wakeups,
    /// Requests that gave up waiting (`$cache_lock_timeout`).
    WaitTimeouts,
    /// Wake-up delay histogram bucket (index into [`WAKE_BUCKETS_MS`], or its length for +Inf).
    WakeBucket(usize),
    /// Sum of the observed wake-up delays, milliseconds.
    WakeSumMs,
    /// Number of observed wake-up delays.
    WakeCount,
    /// Background refreshes sent.
    RefreshesSent,
    /// Refreshes answered 2xx.
    RefreshesSucceeded,
    /// Refreshes that failed or answered non-2xx.
    RefreshesFailed,
    /// Refreshes not sent, by reason (index into [`REFRESH_SKIP_REASONS`]).
    RefreshSkipped(usize),
    /// Failed-open requests by kind (index into [`ERROR_KINDS`]).
    Errors(usize),
    /// Pass marks set (a fill that stored nothing).
    PassMarks,
    /// Requests answered fresh by the freshness memo, without a TTL lookup.
    MemoHits,
    /// Purge requests by result (index into [`PURGE_RESULTS`]).
    Purges(usize),
}

const REQUESTS: usize = 0;
/// Room for statuses to come, so a new one does not move the slots after it.
const REQUEST_SLOTS: usize = 16;
const _: () = assert!(CacheStatus::COUNT <= REQUEST_SLOTS);
const FILLS_STARTED: usize = REQUESTS + REQUEST_SLOTS;
const FILLS: usize = FILLS_STARTED + 1;
const WAITS: usize = FILLS + FILL_OUTCOMES.len();
const WAKEUPS: usize = WAITS + 1;
const WAIT_TIMEOUTS: usize = WAKEUPS + 1;
const WAKE_BUCKET: usize = WAIT_TIMEOUTS + 1;
const WAKE_SUM: usize = WAKE_BUCKET + WAKE_BUCKETS_MS.len() + 1;
const WAKE_COUNT: usize = WAKE_SUM + 1;
const REFRESHES_SENT: usize = WAKE_COUNT + 1;
const REFRESHES_OK: usize = REFRESHES_SENT + 1;
const REFRESHES_FAILED: usize = REFRESHES_OK + 1;
const REFRESH_SKIPPED: usize = REFRESHES_FAILED + 1;
const ERRORS: usize = REFRESH_SKIPPED + REFRESH_SKIP_SLOTS;
const PASS_MARKS: usize = ERRORS + ERROR_KINDS.len();
const MEMO_HITS: usize = PASS_MARKS + 1;
const PURGES: usize = MEMO_HITS + 1;
const USED: usize = PURGES + PURGE_RESULTS.len();
const _: () = assert!(USED <= SLOTS);

impl Counter {
    /// The counter's slot in a block.
    pub const fn slot(self) -> usize {
        match self {
            Counter::Requests(s) => REQUESTS + s.index(),
            Counter::FillsStarted => FILLS_STARTED,
            Counter::Fills(i) => FILLS + clamp(i, FILL_OUTCOMES.len()),
            Counter::Waits => WAITS,
            Counter::Wakeups => WAKEUPS,
            Counter::WaitTimeouts => WAIT_TIMEOUTS,
            Counter::WakeBucket(i) => WAKE_BUCKET + clamp(i, WAKE_BUCKETS_MS.len() + 1),
            Counter::WakeSumMs => WAKE_SUM,
            Counter::WakeCount => WAKE_COUNT,
            Counter::RefreshesSent => REFRESHES_SENT,
            Counter::RefreshesSucceeded => REFRESHES_OK,
            Counter::RefreshesFailed => REFRESHES_FAILED,
            Counter::RefreshSkipped(i) => REFRESH_SKIPPED + clamp(i, REFRESH_SKIP_SLOTS),
            Counter::Errors(i) => ERRORS + clamp(i, ERROR_KINDS.len()),
            Counter::PassMarks => PASS_MARKS,
            Counter::MemoHits => MEMO_HITS,
            Counter::Purges(i) => PURGES + clamp(i, PURGE_RESULTS.len()),
        }
    }
}

/// An index kept inside its group (the last slot), so a bad index never spills into another
/// counter's slot.
const fn clamp(i: usize, len: usize) -> usize {
    if i < len {
        i
    } else {
        len - 1
    }
}

/// The bucket a wake-up delay falls in (its length for +Inf).
pub fn wake_bucket(delay_ms: u64) -> usize {
    WAKE_BUCKETS_MS
        .iter()
        .position(|&le| delay_ms <= le)
        .unwrap_or(WAKE_BUCKETS_MS.len())
}

/// The block kept in shared memory: a header, then the counters. Integers only, so any bit
/// pattern is a valid value and the block can be used in place.
#[repr(C)]
pub struct Counters {
    magic: AtomicU64,
    slots: AtomicU64,
    values: [AtomicU64; SLOTS],
}

/// Bytes a block takes in the zone.
pub const BLOCK_SIZE: usize = size_of::<Counters>();
const _: () = assert!(BLOCK_SIZE.is_multiple_of(8));

impl Counters {
    /// Lays out a zeroed block.
    pub fn init(&self) {
        for v in &self.values {
            v.store(0, Ordering::Relaxed);
        }
        self.slots.store(SLOTS as u64, Ordering::Relaxed);
        self.magic.store(MAGIC, Ordering::Release);
    }

    /// Whether the block was laid out by a build with this layout.
    pub fn is_valid(&self) -> bool {
        self.magic.load(Ordering::Acquire) == MAGIC
            && self.slots.load(Ordering::Relaxed) == SLOTS as u64
    }

    /// The current values (each read atomically; the set is not one instant, which counters
    /// scraped while traffic runs never are).
    pub fn snapshot(&self) -> Snapshot {
        let mut values = [0; SLOTS];
        for (out, v) in values.iter_mut().zip(&self.values) {
            *out = v.load(Ordering::Relaxed);
        }
        Snapshot(values)
    }
}

/// One worker's counters: its process id (0: free) and a value per slot, which only the
/// owner writes. Aligned to cache lines, so a worker's counting never writes a line another
/// worker writes.
#[repr(C, align(64))]
pub struct Lane {
    owner: AtomicU64,
    values: [AtomicU64; SLOTS],
}

impl Lane {
    /// Adds `n` to `counter`: a load and a store, not a locked add (this worker is the
    /// lane's only writer; a reader sees the value before or after).
    #[inline]
    fn add(&self, counter: Counter, n: u64) {
        let v = &self.values[counter.slot()];
        v.store(v.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }
}

/// The lanes, kept in shared memory after a block. All zero bits: every lane free.
#[repr(C)]
pub struct Lanes([Lane; LANES]);

/// Bytes the lanes take in the zone (a multiple of 64: placed at the end of a page-aligned
/// block, they start on a cache line).
pub const LANES_SIZE: usize = size_of::<Lanes>();
const _: () = assert!(LANES_SIZE.is_multiple_of(64));

impl Lanes {
    /// A lane for the process `pid`: the one it already owns, a free one, or one whose owner
    /// `alive` says is gone (adopted with its counts, which stay in the totals); `None` when
    /// every lane belongs to a live process.
    pub fn claim(&self, pid: u64, alive: impl Fn(u64) -> bool) -> Option<&Lane> {
        if pid == 0 {
            return None;
        }
        let take = |lane: &Lane, from: u64| {
            lane.owner
                .compare_exchange(from, pid, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        };
        if let Some(own) = self
            .0
            .iter()
            .find(|l| l.owner.load(Ordering::Acquire) == pid)
        {
            return Some(own);
        }
        if let Some(free) = self.0.iter().find(|l| take(l, 0)) {
            return Some(free);
        }
        self.0.iter().find(|l| {
            let owner = l.owner.load(Ordering::Acquire);
            owner != 0 && !alive(owner) && take(l, owner)
        })
    }
}

/// Where one worker's counts go: its lane, else the shared block.
#[derive(Clone, Copy)]
pub struct Tally<'a> {
    pub shared: &'a Counters,
    pub lane: Option<&'a Lane>,
}

/// Somewhere counts go: the shared block itself, or a worker's [`Tally`].
pub trait Count {
    /// Adds `n` to `counter`.
    fn add(&self, counter: Counter, n: u64);

    /// Adds one to `counter`.
    #[inline]
    fn incr(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Records one wake-up delay in the histogram.
    fn observe_wake_delay(&self, delay_ms: u64) {
        self.incr(Counter::WakeBucket(wake_bucket(delay_ms)));
        self.add(Counter::WakeSumMs, delay_ms);
        self.incr(Counter::WakeCount);
    }
}

impl Count for Counters {
    #[inline]
    fn add(&self, counter: Counter, n: u64) {
        self.values[counter.slot()].fetch_add(n, Ordering::Relaxed);
    }
}

impl Count for Tally<'_> {
    #[inline]
    fn add(&self, counter: Counter, n: u64) {
        match self.lane {
            Some(lane) => lane.add(counter, n),
            None => self.shared.add(counter, n),
        }
    }
}

impl Counters {
    /// The block's values plus every lane's, owned or not.
    pub fn snapshot_with(&self, lanes: &Lanes) -> Snapshot {
        let mut total = self.snapshot();
        for lane in &lanes.0 {
            for (out, v) in total.0.iter_mut().zip(&lane.values) {
                *out = out.wrapping_add(v.load(Ordering::Relaxed));
            }
        }
        total
    }
}

/// Counter values read from a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot(pub [u64; SLOTS]);

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot([0; SLOTS])
    }
}

impl Snapshot {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter.slot()]
    }
}

/// One zone's data for an exposition.
pub struct ZoneMetrics<'a> {
    pub name: &'a str,
    pub counters: Snapshot,
    /// The lock table's counters; `None` when the table could not be read.
    pub table: Option<Stats>,
}

/// A metric family: its name, type and help line.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
}

const fn family(name: &'static str, kind: &'static str, help: &'static str) -> Family {
    Family { name, kind, help }
}

fn header(out: &mut String, f: &Family) {
    let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
    let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
}

/// A label value escaped as the text format requires.
fn escaped(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A family with one sample per zone.
fn per_zone(
    out: &mut String,
    zones: &[ZoneMetrics<'_>],
    f: Family,
    value: impl Fn(&ZoneMetrics<'_>) -> Option<u64>,
) {
    header(out, &f);
    for z in zones {
        if let Some(v) = value(z) {
            let _ = writeln!(out, "{}{{zone=\"{}\"}} {}", f.name, escaped(z.name), v);
        }
    }
}

/// A family with one sample per zone and value of `label`.
fn labelled(
    out: &mut String,
    zones: &[ZoneMetrics<'_>],
    f: Family,
    label: &str,
    values: &[&str],
    counter: impl Fn(usize) -> Counter,
) {
    header(out, &f);
    for z in zones {
        for (i, v) in values.iter().enumerate() {
            let _ = writeln!(
                out,
                "{}{{zone=\"{}\",{}=\"{}\"}} {}",
                f.name,
                escaped(z.name),
                label,
                v,
                z.counters.get(counter(i))
            );
        }
    }
}

/// Milliseconds as Prometheus seconds.
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The Prometheus text exposition (format 0.0.4) of `zones`.
pub fn render(zones: &[ZoneMetrics<'_>]) -> String {
    let mut out = String::with_capacity(8192 + zones.len() * 4096);
    let statuses: Vec<String> = CacheStatus::ALL
        .iter()
        .map(|s| s.as_str().to_ascii_lowercase())
        .collect();
    let statuses: Vec<&str> = statuses.iter().map(String::as_str).collect();
    labelled(
        &mut out,
        zones,
        family(
            "stale_cache_requests_total",
            "counter",
            "Requests by final $stale_cache_status (lowercase).",
        ),
        "status",
        &statuses,
        |i| Counter::Requests(CacheStatus::ALL[i]),
    );
    per_zone(
        &mut out,
        zones,
        family(
            "stale_cache_fills_started_total",
            "counter",
            "Fill locks taken: requests sent to the backend for a missing key.",
        ),
        |z| Some(z.counters.get(Counter::FillsStarted)),
    );
    labelled(
        &mut out,
        zones,
        family(
            "stale_cache_fills_total",
            "counter",
            "Fills ended, by outcome: stored, not_stored (pass mark), abandoned (filler gone).",
        ),
        "outcome",
        &FILL_OUTCOMES,
        Counter::Fills,
    );
    per_zone(
        &mut out,
        zones,
        family(
            "stale_cache_waits_total",
            "counter",
            "Waits for another request's fill begun.",
        ),
        |z| Some(z.counters.get(Counter::Waits)),
    );
    per_zone(
        &mut out,
        zones,
        family(
            "stale_cache_wakeups_total",
            "counter",
            "Waits ended because the fill lock was released or taken over.",
        ),
        |z| Some(z.counters.get(Counter::Wakeups)),
    );
    per_zone(
        &mut out,
        zones,
        family(
            "stale_cache_wait_timeouts_total",
            "counter",
            "Requests that gave up waiting after $cache_lock_timeout.",
        ),
        |z| Some(z.counters.get(Counter::WaitTimeouts)),
    );
    wake_histogram(&mut out, zones);
    per_zone(
        &mut out,
        zones,
        family(
            "stale_cache_refreshes_sent_total",
            "counter",
            "Background refreshes sent for stale keys.",
        ),
        |z| Some(z.counters.get(Counter::RefreshesSent)),
    );
    labelled(
        &mut out,
        zones,
        family(
            "stale_cache_refreshes_total",
            "counter",
            "Background refreshes ended, by outcome: succeeded (2xx) or failed.",
        ),
        "outcome",
        &["succeeded", "failed"],
        |i| {
            if i == 0 {
                Counter::RefreshesSucceeded
            } else {
                Counter::RefreshesFailed
            }
        },
    );
    if !REFRESH_SKIP_REASONS.is_empty() {
        labelled(
            &mut out,
            zones,
            family(
                "stale_cache_refreshes_skipped_total",
                "counter",
                "Refreshes not sent for a stale key, by reason.",
            ),
            "reason",
            &REFRESH_SKIP_REASONS,
            Counter::RefreshSkipped,
        );
    }
    labelled(
        &mut out,
        zones,
        family(
            "stale_cache_errors_total",
            "counter",
            "Requests the layer failed open for, by kind (lookup: Redis or the TTL location \
             failed; redis-error: Redis answered an error).",
        ),
        "kind",
        &ERROR_KINDS,
        Counter::Errors,
    );
    per_zone(
        &mut out,
        zones,
        family(
            "stale_cache_pass_marks_total",
            "counter",
            "Pass marks set: fills that completed without storing anything.",
        ),
        |z| Some(z.counters.get(Counter::PassMarks)),
    );
    per_zone(
        &mut out,
        zones,
        family(
            "stale_cache_memo_hits_total",
            "counter",
            "Fresh hits answered by the freshness memo, without a TTL lookup.",
        ),
        |z| Some(z.counters.get(Counter::MemoHits)),
    );
    labelled(
        &mut out,
        zones,
        family(
            "stale_cache_purges_total",
            "counter",
            "Purge requests, by result: removed, not_found, failed (Redis or the purge \
             location failed).",
        ),
        "result",
        &PURGE_RESULTS,
        Counter::Purges,
    );
    table_families(&mut out, zones);
    out
}

fn wake_histogram(out: &mut String, zones: &[ZoneMetrics<'_>]) {
    let name = "stale_cache_wake_delay_seconds";
    header(
        out,
        &family(
            name,
            "histogram",
            "Collapsed requests: time from the fill's store (its lock release) to the waiter \
             resuming.",
        ),
    );
    for z in zones {
        let zone = escaped(z.name);
        let mut cumulative = 0;
        for (i, le) in WAKE_BUCKETS_MS.iter().enumerate() {
            cumulative += z.counters.get(Counter::WakeBucket(i));
            let le = seconds(*le);
            let _ = writeln!(
                out,
                "{name}_bucket{{zone=\"{zone}\",le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += z.counters.get(Counter::WakeBucket(WAKE_BUCKETS_MS.len()));
        let _ = writeln!(
            out,
            "{name}_bucket{{zone=\"{zone}\",le=\"+Inf\"}} {cumulative}"
        );
        let sum = seconds(z.counters.get(Counter::WakeSumMs));
        let _ = writeln!(out, "{name}_sum{{zone=\"{zone}\"}} {sum}");
        // The count is the +Inf bucket, read from the same snapshot, so they always agree.
        let _ = writeln!(out, "{name}_count{{zone=\"{zone}\"}} {cumulative}");
    }
}

/// A family read from the lock table: name, help, value.
type TableFamily = (&'static str, &'static str, fn(&Stats) -> u64);

fn table_families(out: &mut String, zones: &[ZoneMetrics<'_>]) {
    let gauges: [TableFamily; 2] = [
        (
            "stale_cache_zone_entries",
            "Zone entries in use (locks, freshness memos, pass marks, fill memories).",
            |s| s.entries as u64,
        ),
        (
            "stale_cache_zone_capacity",
            "Entries the zone holds at its load limit.",
            |s| s.capacity as u64,
        ),
    ];
    for (name, help, value) in gauges {
        per_zone(out, zones, family(name, "gauge", help), |z| {
            z.table.as_ref().map(value)
        });
    }
    let counters: [TableFamily; 6] = [
        (
            "stale_cache_zone_evictions_total",
            "Live entries (memos, marks) evicted, least recently used first, to make room.",
            |s| s.evictions,
        ),
        (
            "stale_cache_zone_reclaimed_total",
            "Expired entries reclaimed.",
            |s| s.reclaimed,
        ),
        (
            "stale_cache_zone_expired_lock_takeovers_total",
            "Locks taken over after their $cache_lock_exptime ran out.",
            |s| s.takeovers,
        ),
        (
            "stale_cache_zone_dead_owner_takeovers_total",
            "Locks released or taken over because the worker holding them was gone.",
            |s| s.dead_owners,
        ),
        (
            "stale_cache_zone_full_total",
            "Lock attempts that found every entry locked (the zone is too small).",
            |s| s.full,
        ),
        (
            "stale_cache_zone_rebuilds_total",
            "Times the zone was found damaged and emptied.",
            |s| s.rebuilds,
        ),
    ];
    for (name, help, value) in counters {
        per_zone(out, zones, family(name, "counter", help), |z| {
            z.table.as_ref().map(value)
        });
    }
}

/// The hot zone's families (`stale_cache_hot_zone`), appended to an exposition.
pub fn render_hot(out: &mut String, zone: &str, stats: &HotStats) {
    let zone = escaped(zone);
    let mut one = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (label, value) in samples {
            let _ = writeln!(out, "{name}{{zone=\"{zone}\"{label}}} {value}");
        }
    };
    one(
        "stale_cache_hot_responses_total",
        "counter",
        "Fresh hits answered from the hot zone: sent in place (pinned) or copied out.",
        &[
            (",how=\"in_place\"", stats.served_in_place),
            (",how=\"copied\"", stats.served_copied),
        ],
    );
    one(
        "stale_cache_hot_stored_total",
        "counter",
        "Responses copied into the hot zone.",
        &[("", stats.stored)],
    );
    one(
        "stale_cache_hot_evictions_total",
        "counter",
        "Stored hot responses evicted, least recently used first, to make room.",
        &[("", stats.evictions)],
    );
    one(
        "stale_cache_hot_candidate_evictions_total",
        "counter",
        "Candidates evicted to make room: hit counts of keys seen once and not stored (no \
         response is lost; a high rate next to few stores means the table is too small to \
         tell hot keys).",
        &[("", stats.candidate_evictions)],
    );
    one(
        "stale_cache_hot_rebuilds_total",
        "counter",
        "Times the hot zone was found damaged and emptied.",
        &[("", stats.rebuilds)],
    );
    let used = u64::from(stats.blocks.saturating_sub(stats.free_blocks));
    one(
        "stale_cache_hot_bytes",
        "gauge",
        "The hot zone's response space in bytes: used (including retired) and free.",
        &[
            (",state=\"used\"", used * hotcache::BLOCK_SIZE as u64),
            (
                ",state=\"free\"",
                u64::from(stats.free_blocks) * hotcache::BLOCK_SIZE as u64,
            ),
        ],
    );
    one(
        "stale_cache_hot_entries",
        "gauge",
        "Hot zone entries: in the table (hot responses and counted candidates), and retired \
         (out of it, kept until the responses sending them end).",
        &[
            (",state=\"table\"", u64::from(stats.entries_used)),
            (",state=\"retired\"", u64::from(stats.retired)),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block() -> Box<Counters> {
        // SAFETY (test): all-zero bits are a valid Counters (atomics of 0).
        let b: Box<Counters> = Box::new(unsafe { core::mem::zeroed() });
        b.init();
        b
    }

    #[test]
    fn slots_are_distinct_and_in_range() {
        let mut all = vec![];
        for s in CacheStatus::ALL {
            all.push(Counter::Requests(s));
        }
        all.push(Counter::FillsStarted);
        all.extend((0..3).map(Counter::Fills));
        all.extend([Counter::Waits, Counter::Wakeups, Counter::WaitTimeouts]);
        all.extend((0..=WAKE_BUCKETS_MS.len()).map(Counter::WakeBucket));
        all.extend([
            Counter::WakeSumMs,
            Counter::WakeCount,
            Counter::RefreshesSent,
            Counter::RefreshesSucceeded,
            Counter::RefreshesFailed,
        ]);
        all.extend((0..REFRESH_SKIP_SLOTS).map(Counter::RefreshSkipped));
        all.extend((0..ERROR_KINDS.len()).map(Counter::Errors));
        all.extend([Counter::PassMarks, Counter::MemoHits]);
        all.extend((0..PURGE_RESULTS.len()).map(Counter::Purges));
        let mut slots: Vec<usize> = all.iter().map(|c| c.slot()).collect();
        assert!(slots.iter().all(|&s| s < SLOTS));
        slots.sort();
        slots.dedup();
        assert_eq!(slots.len(), all.len());
        // Every slot up to USED is a counter, but for the room kept for future statuses.
        assert_eq!(all.len() + (REQUEST_SLOTS - CacheStatus::COUNT), USED);
        // An index out of its group stays in the group.
        assert_eq!(Counter::Fills(9).slot(), Counter::Fills(2).slot());
    }

    #[test]
    fn the_layout_is_pinned() {
        // Slots are append-only: moving one would mix counters up across a reload.
        assert_eq!(Counter::Requests(CacheStatus::Fresh).slot(), 0);
        assert_eq!(Counter::Requests(CacheStatus::Gone).slot(), 9);
        assert_eq!(Counter::Requests(CacheStatus::StaleError).slot(), 10);
        assert_eq!(Counter::FillsStarted.slot(), 16);
        assert_eq!(Counter::Waits.slot(), 20);
        assert_eq!(Counter::WakeBucket(0).slot(), 23);
        assert_eq!(Counter::WakeSumMs.slot(), 36);
        assert_eq!(Counter::RefreshesSent.slot(), 38);
        assert_eq!(Counter::Errors(0).slot(), 45);
        assert_eq!(Counter::Purges(0).slot(), 52);
        assert_eq!(BLOCK_SIZE, 16 + 8 * SLOTS);
    }

    #[test]
    fn buckets() {
        assert_eq!(wake_bucket(0), 0);
        assert_eq!(wake_bucket(1), 0);
        assert_eq!(wake_bucket(2), 1);
        assert_eq!(wake_bucket(3), 2);
        assert_eq!(wake_bucket(5000), 11);
        assert_eq!(wake_bucket(5001), 12);
    }

    #[test]
    fn a_block_counts_and_validates() {
        let b = block();
        assert!(b.is_valid());
        b.incr(Counter::Requests(CacheStatus::Miss));
        b.add(Counter::Requests(CacheStatus::Collapsed), 99);
        b.observe_wake_delay(3);
        b.observe_wake_delay(7000);
        let s = b.snapshot();
        assert_eq!(s.get(Counter::Requests(CacheStatus::Miss)), 1);
        assert_eq!(s.get(Counter::Requests(CacheStatus::Collapsed)), 99);
        assert_eq!(s.get(Counter::WakeBucket(2)), 1);
        assert_eq!(s.get(Counter::WakeBucket(12)), 1);
        assert_eq!(s.get(Counter::WakeSumMs), 7003);
        assert_eq!(s.get(Counter::WakeCount), 2);
        // SAFETY (test): a zeroed block is a valid value that was never laid out.
        let never: Box<Counters> = Box::new(unsafe { core::mem::zeroed() });
        assert!(!never.is_valid());
    }

    fn lanes() -> Box<Lanes> {
        // SAFETY (test): all-zero bits are valid lanes (free, counts of 0).
        Box::new(unsafe { core::mem::zeroed() })
    }

    #[test]
    fn each_worker_counts_in_its_lane_and_snapshots_sum_them() {
        let (b, l) = (block(), lanes());
        let alive = |_| true;
        let one = l.claim(10, alive).unwrap();
        let two = l.claim(20, alive).unwrap();
        assert!(!core::ptr::eq(one, two));
        // A worker asking again gets its own lane back.
        assert!(core::ptr::eq(l.claim(10, alive).unwrap(), one));
        let fresh = Counter::Requests(CacheStatus::Fresh);
        Tally {
            shared: &b,
            lane: Some(one),
        }
        .incr(fresh);
        Tally {
            shared: &b,
            lane: Some(two),
        }
        .add(fresh, 5);
        Tally {
            shared: &b,
            lane: None,
        }
        .incr(fresh);
        Tally {
            shared: &b,
            lane: Some(two),
        }
        .observe_wake_delay(3);
        let s = b.snapshot_with(&l);
        assert_eq!(s.get(fresh), 7);
        assert_eq!(s.get(Counter::WakeSumMs), 3);
        assert_eq!(
            b.snapshot().get(fresh),
            1,
            "the block holds only its own counts"
        );
    }

    #[test]
    fn a_dead_workers_lane_is_adopted_with_its_counts() {
        let (b, l) = (block(), lanes());
        let fresh = Counter::Requests(CacheStatus::Fresh);
        for pid in 1..=LANES as u64 {
            let lane = l.claim(pid, |_| true).unwrap();
            Tally {
                shared: &b,
                lane: Some(lane),
            }
            .add(fresh, pid);
        }
        // Every lane taken by a live worker: the next counts in the block.
        assert!(l.claim(100, |_| true).is_none());
        let total: u64 = (1..=LANES as u64).sum();
        assert_eq!(b.snapshot_with(&l).get(fresh), total);
        // Worker 3 was killed: its counts stay in the totals, and its lane goes on.
        let dead = |pid| pid != 3;
        let adopted = l.claim(100, dead).unwrap();
        assert_eq!(b.snapshot_with(&l).get(fresh), total);
        Tally {
            shared: &b,
            lane: Some(adopted),
        }
        .incr(fresh);
        assert_eq!(b.snapshot_with(&l).get(fresh), total + 1);
        assert!(core::ptr::eq(l.claim(100, dead).unwrap(), adopted));
        assert!(l.claim(101, dead).is_none());
    }

    #[test]
    fn hot_exposition() {
        let mut out = String::new();
        let stats = HotStats {
            blocks: 10,
            free_blocks: 4,
            entries_used: 3,
            retired: 1,
            served_in_place: 7,
            served_copied: 2,
            evictions: 5,
            candidate_evictions: 11,
            ..HotStats::default()
        };
        render_hot(&mut out, "hot", &stats);
        assert!(out.contains("stale_cache_hot_responses_total{zone=\"hot\",how=\"in_place\"} 7\n"));
        assert!(out.contains("stale_cache_hot_bytes{zone=\"hot\",state=\"used\"} 24576\n"));
        assert!(out.contains("stale_cache_hot_entries{zone=\"hot\",state=\"retired\"} 1\n"));
        assert!(out.contains("stale_cache_hot_stored_total{zone=\"hot\"} 0\n"));
        assert!(out.contains("stale_cache_hot_evictions_total{zone=\"hot\"} 5\n"));
        assert!(out.contains("stale_cache_hot_candidate_evictions_total{zone=\"hot\"} 11\n"));
    }

    #[test]
    fn exposition() {
        let b = block();
        b.incr(Counter::Requests(CacheStatus::Miss));
        b.add(Counter::Requests(CacheStatus::Collapsed), 99);
        b.observe_wake_delay(1);
        b.observe_wake_delay(30);
        b.incr(Counter::Errors(4));
        let stats = Stats {
            slots: 100,
            capacity: 85,
            entries: 3,
            evictions: 4,
            ..Stats::default()
        };
        let text = render(&[
            ZoneMetrics {
                name: "a",
                counters: b.snapshot(),
                table: Some(stats),
            },
            ZoneMetrics {
                name: "b\"q",
                counters: Snapshot::default(),
                table: None,
            },
        ]);
        assert!(text.contains("# TYPE stale_cache_requests_total counter\n"));
        assert!(text.contains("stale_cache_requests_total{zone=\"a\",status=\"miss\"} 1\n"));
        assert!(text.contains("stale_cache_requests_total{zone=\"a\",status=\"collapsed\"} 99\n"));
        assert!(text.contains("stale_cache_requests_total{zone=\"b\\\"q\",status=\"fresh\"} 0\n"));
        assert!(text.contains("stale_cache_errors_total{zone=\"a\",kind=\"redis-error\"} 1\n"));
        let h = "stale_cache_wake_delay_seconds";
        assert!(text.contains(&format!("{h}_bucket{{zone=\"a\",le=\"0.001\"}} 1\n")));
        assert!(text.contains(&format!("{h}_bucket{{zone=\"a\",le=\"0.025\"}} 1\n")));
        assert!(text.contains(&format!("{h}_bucket{{zone=\"a\",le=\"0.050\"}} 2\n")));
        assert!(text.contains(&format!("{h}_bucket{{zone=\"a\",le=\"+Inf\"}} 2\n")));
        assert!(text.contains(&format!("{h}_sum{{zone=\"a\"}} 0.031\n")));
        assert!(text.contains(&format!("{h}_count{{zone=\"a\"}} 2\n")));
        assert!(text.contains("stale_cache_zone_entries{zone=\"a\"} 3\n"));
        assert!(text.contains("stale_cache_zone_evictions_total{zone=\"a\"} 4\n"));
        // No table, no table samples (but the family is still described once).
        assert!(!text.contains("stale_cache_zone_entries{zone=\"b"));
        // Each family is described once, before its samples, and every sample has a family.
        let mut described = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(described.insert(name.to_string()), "{name} described twice");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| b.ends_with("_seconds")))
                    .unwrap_or(name);
                assert!(described.contains(base), "{name} before its TYPE line");
            }
        }
    }
}
