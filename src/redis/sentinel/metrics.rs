//! The Sentinel counters, shared by all workers: one anonymous shared mapping per group, made
//! at configuration time in the master process, so every worker forked from it adds to the
//! same numbers. A failover is counted once: the worker that first sees the new master swaps
//! it into `master`; the others find it already there.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::fmt::Write;
use std::net::SocketAddr;

use super::current;

#[repr(C)]
struct Counters {
    lookups_ok: AtomicU64,
    lookups_failed: AtomicU64,
    failovers: AtomicU64,
    /// The master last seen by any worker (a fingerprint of its address; 0: none yet).
    master: AtomicU64,
}

pub struct Shared(*const Counters);

impl Shared {
    pub fn new() -> Option<Self> {
        let len = core::mem::size_of::<Counters>();
        // SAFETY: a fresh anonymous shared mapping; zero-filled, which is every counter at 0.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        (p != libc::MAP_FAILED).then_some(Shared(p as *const Counters))
    }

    fn get(&self) -> &Counters {
        // SAFETY: mapped in `new` and unmapped only when this value is dropped.
        unsafe { &*self.0 }
    }

    /// One Sentinel asked (answered or not).
    pub fn lookup(&self, ok: bool) {
        let c = self.get();
        if ok { &c.lookups_ok } else { &c.lookups_failed }.fetch_add(1, Relaxed);
    }

    /// A worker confirmed `master`: a change from the master known before is a failover.
    pub fn master_seen(&self, master: &SocketAddr) {
        let fingerprint = fingerprint(master);
        let c = self.get();
        let old = c.master.swap(fingerprint, Relaxed);
        if old != 0 && old != fingerprint {
            c.failovers.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used (its group is being freed).
        unsafe { libc::munmap(self.0 as *mut _, core::mem::size_of::<Counters>()) };
    }
}

fn fingerprint(addr: &SocketAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    addr.hash(&mut h);
    h.finish() | 1
}

/// The Prometheus lines of this cycle's Sentinel groups (nothing without any).
pub fn render(out: &mut String) {
    let groups = current();
    if groups.is_empty() {
        return;
    }
    out.push_str(
        "# HELP stale_cache_redis_sentinel_lookups_total Sentinels asked for the master, by \
         whether they answered.\n# TYPE stale_cache_redis_sentinel_lookups_total counter\n",
    );
    for s in &groups {
        let c = s.counters.get();
        for (result, n) in [("ok", &c.lookups_ok), ("failed", &c.lookups_failed)] {
            let _ = writeln!(
                out,
                "stale_cache_redis_sentinel_lookups_total{{upstream=\"{}\",result=\"{}\"}} {}",
                label(&s.upstream_name),
                result,
                n.load(Relaxed)
            );
        }
    }
    out.push_str(
        "# HELP stale_cache_redis_sentinel_failovers_total Changes of the master the workers \
         confirmed (each counted once).\n# TYPE stale_cache_redis_sentinel_failovers_total \
         counter\n",
    );
    for s in &groups {
        let _ = writeln!(
            out,
            "stale_cache_redis_sentinel_failovers_total{{upstream=\"{}\"}} {}",
            label(&s.upstream_name),
            s.counters.get().failovers.load(Relaxed)
        );
    }
}

/// A label value escaped as Prometheus's text format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
