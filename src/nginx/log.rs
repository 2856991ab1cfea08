//! Logging: `debug!` for the story of each key (compiled in, active when nginx was built
//! `--with-debug` and the error log is at `debug`), and one rate limiter for every line a
//! request can cause, so an outage logs a line per interval, not one per request.

use core::fmt;
use std::cell::RefCell;
use std::collections::HashMap;

use ngx::ffi::ngx_log_t;

use super::util::now_ms;
use crate::policy::LogLimiter;

/// A debug line on `log` (HTTP debug mask).
macro_rules! debug {
    ($log:expr, $($arg:tt)+) => {
        ngx::ngx_log_debug!(mask: ngx::log::DebugMask::Http, $log, $($arg)+)
    };
}
pub(crate) use debug;

/// One line per this interval and kind, however many requests hit the problem.
pub const INTERVAL_MS: u64 = 10_000;

thread_local! {
    static LIMITERS: RefCell<HashMap<&'static str, LogLimiter>> = RefCell::new(HashMap::new());
}

/// How often a kind of line may appear in this worker.
#[derive(Clone, Copy)]
pub enum Every {
    /// Once per [`INTERVAL_MS`].
    Interval,
    /// Once for the worker's life (a fact about the configuration, not an event).
    Once,
}

/// Logs `args` at `level` unless a line of `kind` was logged within the interval; the next
/// line let through says how many were suppressed.
pub fn limited(
    log: *mut ngx_log_t,
    level: u32,
    kind: &'static str,
    every: Every,
    args: fmt::Arguments<'_>,
) {
    let interval = match every {
        Every::Interval => INTERVAL_MS,
        Every::Once => u64::MAX,
    };
    let allowed = LIMITERS.with(|l| {
        l.borrow_mut()
            .entry(kind)
            .or_insert_with(|| LogLimiter::new(interval))
            .allow(now_ms())
    });
    match allowed {
        Some(0) => {
            ngx::ngx_log_error!(level, log, "{}", args);
        }
        Some(suppressed) => {
            ngx::ngx_log_error!(level, log, "{} ({} similar suppressed)", args, suppressed);
        }
        None => {}
    }
}

/// A key for a log line: printable, and cut after [`Short::MAX`] bytes (keys may be 4 KiB).
pub struct Short<'a>(pub &'a [u8]);

impl Short<'_> {
    pub const MAX: usize = 64;
}

impl fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(Self::MAX)];
        write!(f, "{}", crate::resp::Escaped(shown))?;
        if self.0.len() > Self::MAX {
            write!(f, "...({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}
