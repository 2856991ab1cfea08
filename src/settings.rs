//! The per-request `$cache_*` variables that configured lua-resty-cache, parsed
//! and validated into one typed [`Settings`] value.
//!
//! The variables keep their names and defaults so existing configurations work
//! unchanged. Values can differ per request (they are variables), so parsing
//! happens per request; [`parse_duration_secs`] is public so literal values can
//! be rejected at configuration time instead.

use std::fmt;
use std::rc::Rc;

pub use crate::cache_key::Key;

/// Longest `$cache_key` accepted: keys are copied into the request and hashed
/// under the zone lock, so an unbounded key would be a cheap way to burn CPU.
pub const MAX_KEY_LEN: usize = 4096;

/// Longest zone name, location URI or header name accepted; these are config
/// values, so anything longer is a mistake, not data.
pub const MAX_NAME_LEN: usize = 1024;

/// Most entries accepted in `$cache_methods` (there are only nine standard methods).
pub const MAX_METHODS: usize = 16;

/// Longest duration accepted: anything above a year is a typo (e.g. milliseconds
/// written where seconds are meant) and would overflow timer arithmetic sooner.
pub const MAX_DURATION_MS: u64 = 365 * 24 * 60 * 60 * 1000;

/// Default of `$cache_methods`, as in lua-resty-cache.
pub const DEFAULT_METHODS: &[u8] = b"GET";
/// Default of `$cache_stale` in milliseconds (100 s).
pub const DEFAULT_STALE_MS: u64 = 100_000;
/// Default of `$cache_lock_exptime` in milliseconds (30 s).
pub const DEFAULT_LOCK_EXPTIME_MS: u64 = 30_000;
/// Default of `$cache_backend_lock_timeout` in milliseconds (0.01 s).
pub const DEFAULT_BACKEND_LOCK_TIMEOUT_MS: u64 = 10;
/// Default of `$cache_lock_timeout` in milliseconds (3 s).
pub const DEFAULT_LOCK_TIMEOUT_MS: u64 = 3_000;
/// Default of `$cache_lock_timeout_wait` in milliseconds (0.06 s).
pub const DEFAULT_LOCK_TIMEOUT_WAIT_MS: u64 = 60;
/// Default of `$cache_pass_ttl` in milliseconds (10 s): how long a key whose fill was not
/// stored goes to the backend without collapsing. Long enough that a burst of an
/// uncacheable URL does not queue behind a lock that cannot help, short enough that a URL
/// turning cacheable collapses again soon (a stored answer also ends it at once).
pub const DEFAULT_PASS_TTL_MS: u64 = 10_000;
/// Default of `$cache_skip_fetch`, as in lua-resty-cache.
pub const DEFAULT_SKIP_FETCH: &[u8] = b"X-Skip-Fetch";

/* --------------------------------------------------------------- variables */

/// One of the `$cache_*` variables; the nginx side resolves [`Var::ALL`] to
/// variable indexes once at configuration time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Var {
    /// `$cache_lock`: name of the lock zone (required).
    Lock,
    /// `$cache_ttl`: internal location answering Redis `TTL` (required).
    Ttl,
    /// `$cache_key`: the cache key (required).
    Key,
    /// `$cache_persist`: internal location answering Redis `PERSIST`, or `off`.
    Persist,
    /// `$cache_expire`: internal location answering Redis `EXPIRE` for
    /// `?key=...&ttl=N`, or `off`; lets a failed refresh give a PERSISTed
    /// key its remaining life back (new; the original had no such location).
    Expire,
    /// `$cache_methods`: request methods the module handles.
    Methods,
    /// `$cache_stale`: seconds of TTL below which an entry is stale.
    Stale,
    /// `$cache_lock_exptime`: longest life of a lock.
    LockExptime,
    /// `$cache_backend_lock_timeout`: wait for the refresh lock.
    BackendLockTimeout,
    /// `$cache_lock_timeout`: how long a miss waits for the filling request.
    LockTimeout,
    /// `$cache_lock_timeout_wait`: the old "got the lock quickly" threshold.
    LockTimeoutWait,
    /// `$cache_skip_fetch`: header marking the module's own refresh requests.
    SkipFetch,
    /// `$cache_pass_ttl`: how long a key whose fill was not stored is passed to the backend
    /// without collapsing (hit-for-miss); 0 turns pass marks off (new).
    PassTtl,
    /// `$cache_stale_if_error`: the last seconds of an entry's Redis life kept for backend
    /// errors (stale-if-error); `off` or 0 by default (new).
    StaleIfError,
    /// `$cache_purge`: internal location answering Redis `DEL` for `?key=...`, or `off`;
    /// what `stale_cache_purge` deletes the entry through (new).
    Purge,
    /// `$cache_lease`: internal location running the fleet lease script (`crate::lease`),
    /// or `off`; unset keeps every node collapsing on its own (new).
    Lease,
}

impl Var {
    /// Number of variables.
    pub const COUNT: usize = 16;

    /// Every variable, in index order.
    pub const ALL: [Var; Var::COUNT] = [
        Var::Lock,
        Var::Ttl,
        Var::Key,
        Var::Persist,
        Var::Expire,
        Var::Methods,
        Var::Stale,
        Var::LockExptime,
        Var::BackendLockTimeout,
        Var::LockTimeout,
        Var::LockTimeoutWait,
        Var::SkipFetch,
        Var::PassTtl,
        Var::StaleIfError,
        Var::Purge,
        Var::Lease,
    ];

    /// The variable's name without the `$`, as nginx looks it up.
    pub const fn name(self) -> &'static str {
        match self {
            Var::Lock => "cache_lock",
            Var::Ttl => "cache_ttl",
            Var::Key => "cache_key",
            Var::Persist => "cache_persist",
            Var::Expire => "cache_expire",
            Var::Methods => "cache_methods",
            Var::Stale => "cache_stale",
            Var::LockExptime => "cache_lock_exptime",
            Var::BackendLockTimeout => "cache_backend_lock_timeout",
            Var::LockTimeout => "cache_lock_timeout",
            Var::LockTimeoutWait => "cache_lock_timeout_wait",
            Var::SkipFetch => "cache_skip_fetch",
            Var::PassTtl => "cache_pass_ttl",
            Var::StaleIfError => "cache_stale_if_error",
            Var::Purge => "cache_purge",
            Var::Lease => "cache_lease",
        }
    }

    /// Position in [`Var::ALL`] and in [`RawVars`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}", self.name())
    }
}

/// The raw values of the variables for one request, borrowed from nginx.
/// An empty value counts as unset, as `set $x "";` does in the Lua original.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawVars<'a> {
    values: [Option<&'a [u8]>; Var::COUNT],
}

impl<'a> RawVars<'a> {
    /// All variables unset.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the value of `var`; `None` or empty means unset.
    pub fn set(&mut self, var: Var, value: Option<&'a [u8]>) {
        self.values[var.index()] = value.filter(|v| !v.is_empty());
    }

    /// Builder form of [`RawVars::set`], handy for literals and tests.
    pub fn with(mut self, var: Var, value: &'a [u8]) -> Self {
        self.set(var, Some(value));
        self
    }

    /// The value of `var`, `None` when unset or empty.
    pub fn get(&self, var: Var) -> Option<&'a [u8]> {
        self.values[var.index()]
    }
}

/* ------------------------------------------------------------------ errors */

/// Why a number of seconds was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurationError {
    /// Not a plain decimal number (empty, junk, exponent, sign, ...).
    NotANumber,
    /// A negative number.
    Negative,
    /// More than [`MAX_DURATION_MS`].
    TooLarge,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotANumber => f.write_str("is not a number of seconds"),
            Self::Negative => f.write_str("is a negative number of seconds"),
            Self::TooLarge => write!(
                f,
                "is more than a year ({} seconds)",
                MAX_DURATION_MS / 1000
            ),
        }
    }
}

impl std::error::Error for DurationError {}

/// What is wrong with a variable's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A required variable is unset while another required one is set; the
    /// named one is set, to point at the half-done configuration.
    Missing {
        /// A required variable that is set.
        while_set: Var,
    },
    /// A duration that does not parse.
    Duration(DurationError),
    /// A duration that must not be zero (a lock that expires at once).
    Zero,
    /// Longer than the limit, in bytes.
    TooLong {
        /// The limit.
        max: usize,
    },
    /// Contains bytes that cannot appear in the value (controls, spaces).
    BadByte,
    /// Not a location URI (does not start with `/`).
    NotUri {
        /// Whether `off` would also have been accepted.
        off_allowed: bool,
    },
    /// An entry of `$cache_methods` that is not an HTTP token.
    BadMethod(Vec<u8>),
    /// `$cache_methods` holds separators only, or too many entries.
    BadMethodList,
    /// `$cache_skip_fetch` is not an HTTP header name.
    BadHeaderName,
}

/// A variable with an unusable value; Display fits an error log line, e.g.
/// `$cache_stale: "abc" is not a number of seconds`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingsError {
    /// The variable at fault.
    pub var: Var,
    /// Its value, `None` when unset.
    pub value: Option<Vec<u8>>,
    /// What is wrong with it.
    pub problem: Problem,
}

impl SettingsError {
    fn new(var: Var, value: &[u8], problem: Problem) -> Self {
        Self {
            var,
            value: Some(value.to_vec()),
            problem,
        }
    }
}

/// Shows a value quoted, escaped and cut short, because values may come from
/// client headers and keys can be kilobytes long.
struct Quoted<'a>(&'a [u8]);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 64;
        let shown = &self.0[..self.0.len().min(SHOWN)];
        write!(f, "\"{}", shown.escape_ascii())?;
        if self.0.len() > SHOWN {
            f.write_str("...")?;
        }
        f.write_str("\"")
    }
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.var)?;
        let value = match (&self.problem, &self.value) {
            (Problem::Missing { while_set }, _) => {
                return write!(f, "not set, but {while_set} is");
            }
            (_, Some(value)) => Quoted(value),
            (_, None) => Quoted(b""),
        };
        match &self.problem {
            Problem::Missing { .. } => Ok(()),
            Problem::Duration(err) => write!(f, "{value} {err}"),
            Problem::Zero => write!(f, "{value} must be more than zero seconds"),
            Problem::TooLong { max } => write!(f, "{value} is longer than {max} bytes"),
            Problem::BadByte => write!(f, "{value} contains spaces or control characters"),
            Problem::NotUri { off_allowed: false } => {
                write!(f, "{value} is not a location URI (must start with \"/\")")
            }
            Problem::NotUri { off_allowed: true } => write!(
                f,
                "{value} is not a location URI (must start with \"/\") or \"off\""
            ),
            Problem::BadMethod(method) => write!(
                f,
                "{value}: {} is not an HTTP method name",
                Quoted(method)
            ),
            Problem::BadMethodList => write!(
                f,
                "{value} must list 1 to {MAX_METHODS} method names separated by spaces, \",\" or \"|\""
            ),
            Problem::BadHeaderName => write!(f, "{value} is not an HTTP header name"),
        }
    }
}

impl std::error::Error for SettingsError {}

/* --------------------------------------------------------------- durations */

/// Parses non-negative decimal seconds (`3`, `0.01`, `.5`, `100.`) into
/// milliseconds, rounding up so that a tiny non-zero value never becomes zero
/// (zero often means "do not wait at all"). Surrounding blanks are ignored, as
/// Lua's `tonumber` did; signs, exponents, `inf` and `nan` are rejected.
pub fn parse_duration_secs(text: &[u8]) -> Result<u64, DurationError> {
    let text = text.trim_ascii();
    let text = match text.strip_prefix(b"-") {
        Some(rest) if is_decimal(rest) && rest.iter().any(|&b| b != b'0' && b != b'.') => {
            return Err(DurationError::Negative)
        }
        // "-0" is zero, not negative; a sign is still not accepted syntax.
        Some(_) => return Err(DurationError::NotANumber),
        None => text,
    };
    if !is_decimal(text) {
        return Err(DurationError::NotANumber);
    }
    let (whole, frac) = match text.iter().position(|&b| b == b'.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (text, &text[..0]),
    };

    let too_large = DurationError::TooLarge;
    let mut secs: u64 = 0;
    for &digit in whole {
        secs = secs
            .checked_mul(10)
            .and_then(|s| s.checked_add(u64::from(digit - b'0')))
            .ok_or(too_large)?;
    }
    let mut ms = secs.checked_mul(1000).ok_or(too_large)?;
    let mut scale = 100;
    for (i, &digit) in frac.iter().enumerate() {
        let digit = u64::from(digit - b'0');
        if i < 3 {
            ms += digit * scale;
            scale /= 10;
        } else if digit != 0 {
            // Sub-millisecond remainder: round up.
            ms = ms.checked_add(1).ok_or(too_large)?;
            break;
        }
    }
    if ms > MAX_DURATION_MS {
        return Err(too_large);
    }
    Ok(ms)
}

/// Digits with at most one dot and at least one digit.
fn is_decimal(text: &[u8]) -> bool {
    let mut digits = 0;
    let mut dots = 0;
    for &b in text {
        match b {
            b'0'..=b'9' => digits += 1,
            b'.' => dots += 1,
            _ => return false,
        }
    }
    digits > 0 && dots <= 1
}

/* ----------------------------------------------------------------- methods */

/// The request methods the module handles (`$cache_methods`), upper-cased.
#[derive(Clone, Default)]
pub struct Methods {
    /// The listed names, shared by the settings of every request that lists them; `None` for
    /// the default, [`DEFAULT_METHODS`].
    names: Option<Rc<[Vec<u8>]>>,
}

impl Methods {
    /// Parses a list separated by spaces, tabs, commas or `|` (all forms seen in
    /// existing configurations), matching case-insensitively.
    pub fn parse(text: &[u8]) -> Result<Methods, Problem> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        let separators = |b: &u8| matches!(b, b' ' | b'\t' | b',' | b'|');
        for name in text.split(separators).filter(|n| !n.is_empty()) {
            if !is_token(name) {
                return Err(Problem::BadMethod(name.to_vec()));
            }
            let name = name.to_ascii_uppercase();
            if !names.contains(&name) {
                if names.len() == MAX_METHODS {
                    return Err(Problem::BadMethodList);
                }
                names.push(name);
            }
        }
        if names.is_empty() {
            return Err(Problem::BadMethodList);
        }
        Ok(Methods {
            names: Some(names.into()),
        })
    }

    /// Whether requests with this method are handled.
    pub fn allows(&self, method: &[u8]) -> bool {
        match &self.names {
            // The default, asked on every request: nginx spells methods in capitals.
            None => method == DEFAULT_METHODS || method.eq_ignore_ascii_case(DEFAULT_METHODS),
            Some(names) => names.iter().any(|n| n.eq_ignore_ascii_case(method)),
        }
    }

    /// The listed methods, upper-cased, without duplicates.
    pub fn names(&self) -> impl Iterator<Item = &[u8]> {
        let listed = self.names.as_deref().unwrap_or_default();
        let default = self.names.is_none().then_some(DEFAULT_METHODS);
        default.into_iter().chain(listed.iter().map(Vec::as_slice))
    }
}

/// The same methods, however they were given (the default, or listed).
impl PartialEq for Methods {
    fn eq(&self, other: &Self) -> bool {
        self.names().eq(other.names())
    }
}

impl Eq for Methods {}

impl fmt::Debug for Methods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.names().map(|n| n.escape_ascii().to_string()))
            .finish()
    }
}

/// RFC 9110 `token`: what method and header names are made of.
fn is_token(text: &[u8]) -> bool {
    !text.is_empty() && text.len() <= MAX_NAME_LEN && text.iter().all(|&b| TOKEN_BYTES[b as usize])
}

/// The bytes of a `token` (`$cache_skip_fetch` is checked on every request): letters, digits
/// and ``!#$%&'*+-.^_`|~``.
const TOKEN_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let symbols = b"!#$%&'*+-.^_`|~";
    let mut i = 0;
    while i < symbols.len() {
        table[symbols[i] as usize] = true;
        i += 1;
    }
    table
};

/* ---------------------------------------------------------------- settings */

/// A location URI or header name of the settings: shared, not copied, by the settings of
/// every request that names it (see [`Settings::parse`]'s memo).
pub type Shared = Rc<[u8]>;

/// Everything the module needs from the variables for one request: its key, and the other
/// values, which read through this value (`settings.ttl_uri`) and are shared, not copied, by
/// the settings of every request with the same values ([`Settings::parse`]'s memo, a
/// location's preset): a request's settings are two words and a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The cache key (`$cache_key`), at most [`MAX_KEY_LEN`] bytes.
    pub key: Key,
    values: Rc<Values>,
}

impl core::ops::Deref for Settings {
    type Target = Values;

    fn deref(&self) -> &Values {
        &self.values
    }
}

/// The settings but the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Values {
    /// Name of the lock zone (`$cache_lock`).
    pub lock_zone: Shared,
    /// Location answering Redis `TTL` (`$cache_ttl`); `?key=...` is appended.
    pub ttl_uri: Shared,
    /// Location answering Redis `PERSIST`, `None` when off (`$cache_persist`).
    pub persist_uri: Option<Shared>,
    /// Location answering Redis `EXPIRE`, `None` when off (`$cache_expire`).
    pub expire_uri: Option<Shared>,
    /// Methods handled (`$cache_methods`).
    pub methods: Methods,
    /// The stale window (`$cache_stale`) in milliseconds.
    pub stale_ms: u64,
    /// The stale window in whole seconds, rounded up: Redis `TTL` answers
    /// integers, and `ttl < 2.5` holds for the same integers as `ttl < 3`.
    pub stale_secs: u64,
    /// Longest life of a lock (`$cache_lock_exptime`), never zero.
    pub lock_exptime_ms: u64,
    /// How long a stale hit may wait for the refresh lock
    /// (`$cache_backend_lock_timeout`).
    pub backend_lock_timeout_ms: u64,
    /// How long a miss waits for the filling request (`$cache_lock_timeout`).
    pub lock_timeout_ms: u64,
    /// `$cache_lock_timeout_wait`. It no longer picks the filler (the request
    /// that takes the lock fills, and waiters are woken when it is released),
    /// so it is only validated and kept, for the nginx side to use at most as
    /// the interval at which waiters re-check the lock.
    pub lock_timeout_wait_ms: u64,
    /// Header marking the module's own refresh requests (`$cache_skip_fetch`).
    pub skip_fetch: Shared,
    /// How long a key whose fill was not stored skips collapsing (`$cache_pass_ttl`); 0: never.
    pub pass_ttl_ms: u64,
    /// The error grace band at the end of an entry's life, in whole seconds rounded up
    /// (`$cache_stale_if_error`); 0: none.
    pub grace_secs: u64,
    /// Location answering Redis `DEL`, `None` when off (`$cache_purge`).
    pub purge_uri: Option<Shared>,
    /// Location running the fleet lease script, `None` when off (`$cache_lease`).
    pub lease_uri: Option<Shared>,
}

impl Settings {
    /// Validates the variables of one request. `Ok(None)` means the module is
    /// inactive for it: `$cache_lock`, `$cache_ttl` and `$cache_key` are all
    /// unset, where the Lua original silently did nothing.
    ///
    /// The values change little from one request to the next (most are literals of the
    /// location; the key is the exception), so the last few valid sets of values are kept
    /// per thread with what they parsed to: the same values again skip the validation.
    pub fn parse(vars: &RawVars<'_>) -> Result<Option<Settings>, SettingsError> {
        if let Some(settings) = RECENT.with(|r| r.borrow().find(vars)) {
            return Ok(Some(settings));
        }
        let parsed = Self::parse_uncached(vars)?;
        if let Some(settings) = &parsed {
            RECENT.with(|r| r.borrow_mut().insert(vars, settings));
        }
        Ok(parsed)
    }

    /// [`Settings::parse`] without the memo.
    pub fn parse_uncached(vars: &RawVars<'_>) -> Result<Option<Settings>, SettingsError> {
        let required = [Var::Lock, Var::Ttl, Var::Key];
        let Some(while_set) = required.into_iter().find(|&v| vars.get(v).is_some()) else {
            return Ok(None);
        };
        let need = |var: Var| {
            vars.get(var).ok_or(SettingsError {
                var,
                value: None,
                problem: Problem::Missing { while_set },
            })
        };
        let (lock, ttl, key) = (need(Var::Lock)?, need(Var::Ttl)?, need(Var::Key)?);

        let lock_zone = parse_name(Var::Lock, lock)?;
        let ttl_uri = Shared::from(parse_uri(Var::Ttl, ttl, false)?);
        if key.len() > MAX_KEY_LEN {
            return Err(SettingsError::new(
                Var::Key,
                key,
                Problem::TooLong { max: MAX_KEY_LEN },
            ));
        }
        let persist_uri = match vars.get(Var::Persist) {
            None => None,
            Some(v) if v.eq_ignore_ascii_case(b"off") => None,
            Some(v) => Some(Shared::from(parse_uri(Var::Persist, v, true)?)),
        };
        let expire_uri = match vars.get(Var::Expire) {
            None => None,
            Some(v) if v.eq_ignore_ascii_case(b"off") => None,
            Some(v) => Some(Shared::from(parse_uri(Var::Expire, v, true)?)),
        };
        let purge_uri = match vars.get(Var::Purge) {
            None => None,
            Some(v) if v.eq_ignore_ascii_case(b"off") => None,
            Some(v) => Some(Shared::from(parse_uri(Var::Purge, v, true)?)),
        };
        let lease_uri = match vars.get(Var::Lease) {
            None => None,
            Some(v) if v.eq_ignore_ascii_case(b"off") => None,
            Some(v) => Some(Shared::from(parse_uri(Var::Lease, v, true)?)),
        };
        let methods = match vars.get(Var::Methods) {
            None => Methods::default(),
            Some(v) => Methods::parse(v).map_err(|p| SettingsError::new(Var::Methods, v, p))?,
        };
        let duration = |var: Var, default: u64| match vars.get(var) {
            None => Ok(default),
            Some(v) => {
                parse_duration_secs(v).map_err(|e| SettingsError::new(var, v, Problem::Duration(e)))
            }
        };
        let stale_ms = duration(Var::Stale, DEFAULT_STALE_MS)?;
        let lock_exptime_ms = duration(Var::LockExptime, DEFAULT_LOCK_EXPTIME_MS)?;
        if lock_exptime_ms == 0 {
            let value = vars.get(Var::LockExptime).unwrap_or_default();
            return Err(SettingsError::new(Var::LockExptime, value, Problem::Zero));
        }
        let skip_fetch = match vars.get(Var::SkipFetch) {
            None => Shared::from(DEFAULT_SKIP_FETCH),
            Some(v) if is_token(v) => Shared::from(v),
            Some(v) => {
                return Err(SettingsError::new(
                    Var::SkipFetch,
                    v,
                    Problem::BadHeaderName,
                ))
            }
        };

        let values = Values {
            lock_zone,
            ttl_uri,
            persist_uri,
            expire_uri,
            methods,
            stale_ms,
            stale_secs: stale_ms.div_ceil(1000),
            lock_exptime_ms,
            backend_lock_timeout_ms: duration(
                Var::BackendLockTimeout,
                DEFAULT_BACKEND_LOCK_TIMEOUT_MS,
            )?,
            lock_timeout_ms: duration(Var::LockTimeout, DEFAULT_LOCK_TIMEOUT_MS)?,
            lock_timeout_wait_ms: duration(Var::LockTimeoutWait, DEFAULT_LOCK_TIMEOUT_WAIT_MS)?,
            skip_fetch,
            pass_ttl_ms: duration(Var::PassTtl, DEFAULT_PASS_TTL_MS)?,
            grace_secs: match vars.get(Var::StaleIfError) {
                Some(v) if v.eq_ignore_ascii_case(b"off") => 0,
                _ => duration(Var::StaleIfError, 0)?.div_ceil(1000),
            },
            purge_uri,
            lease_uri,
        };
        Ok(Some(Settings {
            key: Key::new(key),
            values: Rc::new(values),
        }))
    }

    /// The same settings with another key (the other values shared, not copied).
    pub fn with_key(&self, key: &[u8]) -> Settings {
        self.keyed(Key::new(key))
    }

    /// The same settings with `key`.
    pub fn keyed(&self, key: Key) -> Settings {
        Settings {
            key,
            values: Rc::clone(&self.values),
        }
    }
}

impl Values {
    /// Whether requests with this method are handled.
    pub fn allows(&self, method: &[u8]) -> bool {
        self.methods.allows(method)
    }

    /// Whether `uri` is one of the module's own lookup locations; the original
    /// skipped those so the TTL/PERSIST subrequests do not recurse.
    pub fn is_lookup_uri(&self, uri: &[u8]) -> bool {
        uri == &*self.ttl_uri
            || self.persist_uri.as_deref() == Some(uri)
            || self.expire_uri.as_deref() == Some(uri)
            || self.purge_uri.as_deref() == Some(uri)
            || self.lease_uri.as_deref() == Some(uri)
    }
}

/* -------------------------------------------------------------------- memo */

thread_local! {
    static RECENT: core::cell::RefCell<Recent> = core::cell::RefCell::new(Recent::default());
}

/// How many sets of values [`Recent`] keeps: a worker's locations with different literals.
const RECENT_SETS: usize = 4;

/// The last valid sets of values [`Settings::parse`] saw, but the key, and their settings
/// (with an empty key).
#[derive(Default)]
struct Recent {
    sets: Vec<ParsedSet>,
    /// The set the next insertion replaces once all are taken.
    next: usize,
}

struct ParsedSet {
    /// Each variable's value length (`u32::MAX`: unset); the key's is not kept.
    lens: [u32; Var::COUNT],
    /// The values, one after the other.
    bytes: Vec<u8>,
    settings: Settings,
}

impl ParsedSet {
    fn new(vars: &RawVars<'_>, settings: &Settings) -> Option<ParsedSet> {
        let mut lens = [u32::MAX; Var::COUNT];
        let mut bytes = Vec::new();
        for var in Var::ALL.into_iter().filter(|&v| v != Var::Key) {
            if let Some(value) = vars.get(var) {
                lens[var.index()] = u32::try_from(value.len()).ok().filter(|&l| l != u32::MAX)?;
                bytes.extend_from_slice(value);
            }
        }
        Some(ParsedSet {
            lens,
            bytes,
            settings: settings.with_key(b""),
        })
    }

    /// Whether `vars` holds the same values, the key aside.
    fn matches(&self, vars: &RawVars<'_>) -> bool {
        let mut at = 0;
        for var in Var::ALL {
            let len = self.lens[var.index()];
            match vars.get(var) {
                _ if var == Var::Key => {}
                None if len == u32::MAX => {}
                Some(value) if len != u32::MAX && value.len() == len as usize => {
                    if self.bytes.get(at..at + value.len()) != Some(value) {
                        return false;
                    }
                    at += value.len();
                }
                _ => return false,
            }
        }
        true
    }
}

impl Recent {
    /// The settings of `vars` if the same values (the key aside) parsed before, and the key
    /// is valid: the key is the only value whose check depends on nothing else.
    fn find(&self, vars: &RawVars<'_>) -> Option<Settings> {
        let key = vars.get(Var::Key).filter(|k| k.len() <= MAX_KEY_LEN)?;
        let set = self.sets.iter().find(|set| set.matches(vars))?;
        Some(set.settings.with_key(key))
    }

    fn insert(&mut self, vars: &RawVars<'_>, settings: &Settings) {
        let Some(set) = ParsedSet::new(vars, settings) else {
            return;
        };
        if self.sets.len() < RECENT_SETS {
            self.sets.push(set);
        } else {
            self.sets[self.next] = set;
            self.next = (self.next + 1) % RECENT_SETS;
        }
    }
}

/// Checks one `$cache_*` value written as a literal in the configuration (`set $cache_stale
/// abc;`), so the mistake fails `nginx -t` instead of being logged at run time. The other
/// variables get valid stand-ins, so only an error about `var` itself is reported.
pub fn check_literal(var: Var, value: &[u8]) -> Result<(), SettingsError> {
    let mut raw = RawVars::new()
        .with(Var::Lock, b"zone")
        .with(Var::Ttl, b"/ttl")
        .with(Var::Key, b"key");
    raw.set(var, Some(value));
    match Settings::parse_uncached(&raw) {
        Err(e) if e.var == var => Err(e),
        _ => Ok(()),
    }
}

fn check_name(var: Var, value: &[u8]) -> Result<(), SettingsError> {
    if value.len() > MAX_NAME_LEN {
        return Err(SettingsError::new(
            var,
            value,
            Problem::TooLong { max: MAX_NAME_LEN },
        ));
    }
    if value.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(SettingsError::new(var, value, Problem::BadByte));
    }
    Ok(())
}

fn parse_name(var: Var, value: &[u8]) -> Result<Shared, SettingsError> {
    check_name(var, value)?;
    Ok(Shared::from(value))
}

fn parse_uri(var: Var, value: &[u8], off_allowed: bool) -> Result<&[u8], SettingsError> {
    check_name(var, value)?;
    if !value.starts_with(b"/") {
        return Err(SettingsError::new(
            var,
            value,
            Problem::NotUri { off_allowed },
        ));
    }
    Ok(value)
}

/* ------------------------------------------------------------------- tests */

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RawVars<'static> {
        RawVars::new()
            .with(Var::Lock, b"srcache_locks")
            .with(Var::Ttl, b"/redisttl")
            .with(Var::Key, b"Mozilla|/api/x")
    }

    fn parse(vars: RawVars<'_>) -> Settings {
        Settings::parse(&vars).unwrap().unwrap()
    }

    fn err(vars: RawVars<'_>) -> SettingsError {
        Settings::parse(&vars).unwrap_err()
    }

    #[test]
    fn durations_accept_decimal_seconds() {
        let cases: &[(&[u8], u64)] = &[
            (b"3", 3000),
            (b"0.01", 10),
            (b".5", 500),
            (b"100", 100_000),
            (b"100.", 100_000),
            (b"0", 0),
            (b"0.000", 0),
            (b"00012", 12_000),
            (b"0.06", 60),
            (b"1.2345", 1235),
            (b"0.0001", 1),
            (b"0.0000000000000000000001", 1),
            (b"2.5000000", 2500),
            (b" 30\t", 30_000),
            (b"31536000", MAX_DURATION_MS),
        ];
        for &(text, ms) in cases {
            assert_eq!(parse_duration_secs(text), Ok(ms), "{}", text.escape_ascii());
        }
    }

    #[test]
    fn durations_reject_junk() {
        use DurationError::*;
        let cases: &[(&[u8], DurationError)] = &[
            (b"", NotANumber),
            (b"   ", NotANumber),
            (b".", NotANumber),
            (b"abc", NotANumber),
            (b"3s", NotANumber),
            (b"1.2.3", NotANumber),
            (b"1e3", NotANumber),
            (b"+3", NotANumber),
            (b"nan", NotANumber),
            (b"NaN", NotANumber),
            (b"inf", NotANumber),
            (b"0x10", NotANumber),
            (b"1 2", NotANumber),
            (b"-", NotANumber),
            (b"-0", NotANumber),
            (b"-abc", NotANumber),
            (b"-1", Negative),
            (b"-0.5", Negative),
            (b"31536000.001", TooLarge),
            (b"99999999999", TooLarge),
            (b"99999999999999999999999999999", TooLarge),
        ];
        for &(text, expected) in cases {
            assert_eq!(
                parse_duration_secs(text),
                Err(expected),
                "{}",
                text.escape_ascii()
            );
        }
    }

    #[test]
    fn defaults_match_the_lua_original() {
        let s = parse(base());
        assert_eq!(&*s.lock_zone, b"srcache_locks");
        assert_eq!(&*s.ttl_uri, b"/redisttl");
        assert_eq!(s.key, b"Mozilla|/api/x");
        assert_eq!(s.persist_uri, None);
        assert!(s.allows(b"GET"));
        assert!(!s.allows(b"HEAD"));
        assert!(!s.allows(b"POST"));
        assert_eq!(s.stale_ms, 100_000);
        assert_eq!(s.stale_secs, 100);
        assert_eq!(s.lock_exptime_ms, 30_000);
        assert_eq!(s.backend_lock_timeout_ms, 10);
        assert_eq!(s.lock_timeout_ms, 3_000);
        assert_eq!(s.lock_timeout_wait_ms, 60);
        assert_eq!(&*s.skip_fetch, b"X-Skip-Fetch");
        assert_eq!(s.pass_ttl_ms, 10_000);
    }

    #[test]
    fn lease_is_an_optional_location() {
        assert_eq!(parse(base()).lease_uri, None);
        assert_eq!(parse(base().with(Var::Lease, b"off")).lease_uri, None);
        let s = parse(base().with(Var::Lease, b"/redislease"));
        assert_eq!(s.lease_uri.as_deref(), Some(&b"/redislease"[..]));
        // The lease location itself is left alone, like the TTL location.
        assert!(s.is_lookup_uri(b"/redislease"));
        assert!(check_literal(Var::Lease, b"redislease").is_err());
    }

    #[test]
    fn pass_ttl_is_a_duration_and_zero_turns_it_off() {
        assert_eq!(parse(base().with(Var::PassTtl, b"2.5")).pass_ttl_ms, 2_500);
        assert_eq!(parse(base().with(Var::PassTtl, b"0")).pass_ttl_ms, 0);
        let e = err(base().with(Var::PassTtl, b"soon"));
        assert_eq!(e.var, Var::PassTtl);
        assert!(check_literal(Var::PassTtl, b"soon").is_err());
        assert!(check_literal(Var::PassTtl, b"3").is_ok());
    }

    #[test]
    fn stale_if_error_is_off_by_default_and_rounds_up() {
        assert_eq!(parse(base()).grace_secs, 0);
        assert_eq!(parse(base().with(Var::StaleIfError, b"off")).grace_secs, 0);
        assert_eq!(parse(base().with(Var::StaleIfError, b"60")).grace_secs, 60);
        assert_eq!(parse(base().with(Var::StaleIfError, b"0.5")).grace_secs, 1);
        assert_eq!(
            err(base().with(Var::StaleIfError, b"-1")).var,
            Var::StaleIfError
        );
    }

    #[test]
    fn documented_configuration_parses() {
        let vars = base()
            .with(Var::Persist, b"/redispersist")
            .with(Var::Stale, b"100")
            .with(Var::LockExptime, b"30")
            .with(Var::BackendLockTimeout, b"0.01")
            .with(Var::LockTimeout, b"3")
            .with(Var::LockTimeoutWait, b"0.06")
            .with(Var::SkipFetch, b"X-Skip-Fetch");
        let s = parse(vars);
        assert_eq!(s.persist_uri.as_deref(), Some(&b"/redispersist"[..]));
        assert_eq!(s, {
            let mut d = parse(base());
            Rc::make_mut(&mut d.values).persist_uri = Some(Shared::from(&b"/redispersist"[..]));
            d
        });
        assert!(s.is_lookup_uri(b"/redisttl"));
        assert!(s.is_lookup_uri(b"/redispersist"));
        assert!(!s.is_lookup_uri(b"/api"));
        assert!(!s.is_lookup_uri(b"/redisttl/"));
    }

    #[test]
    fn settings_with_another_key_share_the_other_values() {
        let s = parse(base());
        let t = s.with_key(b"other");
        assert_eq!(t.key, b"other");
        assert!(Rc::ptr_eq(&s.values, &t.values));
        assert_eq!(t, parse(base().with(Var::Key, b"other")));
    }

    #[test]
    fn inactive_when_required_all_unset() {
        assert_eq!(Settings::parse(&RawVars::new()), Ok(None));
        let only_optional = RawVars::new()
            .with(Var::Stale, b"abc")
            .with(Var::Persist, b"/p");
        assert_eq!(Settings::parse(&only_optional), Ok(None));
        let mut empty = RawVars::new();
        empty.set(Var::Lock, Some(b""));
        empty.set(Var::Key, None);
        assert_eq!(Settings::parse(&empty), Ok(None));
    }

    #[test]
    fn partial_required_names_the_missing_one() {
        let e = err(RawVars::new().with(Var::Key, b"k"));
        assert_eq!(e.var, Var::Lock);
        assert_eq!(
            e.problem,
            Problem::Missing {
                while_set: Var::Key
            }
        );
        assert_eq!(e.to_string(), "$cache_lock: not set, but $cache_key is");

        let e = err(RawVars::new().with(Var::Lock, b"z").with(Var::Key, b"k"));
        assert_eq!(e.var, Var::Ttl);
        assert_eq!(e.to_string(), "$cache_ttl: not set, but $cache_lock is");

        let e = err(RawVars::new().with(Var::Lock, b"z").with(Var::Ttl, b"/t"));
        assert_eq!(e.var, Var::Key);
        assert_eq!(e.value, None);
    }

    #[test]
    fn error_messages_name_variable_and_value() {
        let e = err(base().with(Var::Stale, b"abc"));
        assert_eq!(
            e.to_string(),
            "$cache_stale: \"abc\" is not a number of seconds"
        );
        let e = err(base().with(Var::LockTimeout, b"-1"));
        assert_eq!(
            e.to_string(),
            "$cache_lock_timeout: \"-1\" is a negative number of seconds"
        );
        let e = err(base().with(Var::BackendLockTimeout, b"1e9"));
        assert_eq!(e.var, Var::BackendLockTimeout);
        let e = err(base().with(Var::LockTimeoutWait, b"99999999"));
        assert_eq!(
            e.to_string(),
            "$cache_lock_timeout_wait: \"99999999\" is more than a year (31536000 seconds)"
        );
        let e = err(base().with(Var::LockExptime, b"0"));
        assert_eq!(
            e.to_string(),
            "$cache_lock_exptime: \"0\" must be more than zero seconds"
        );
        let e = err(base().with(Var::Stale, b"\x01\"x"));
        assert_eq!(
            e.to_string(),
            "$cache_stale: \"\\x01\\\"x\" is not a number of seconds"
        );
    }

    #[test]
    fn stale_whole_seconds_round_up() {
        let s = parse(base().with(Var::Stale, b"2.5"));
        assert_eq!((s.stale_ms, s.stale_secs), (2500, 3));
        let s = parse(base().with(Var::Stale, b"0"));
        assert_eq!((s.stale_ms, s.stale_secs), (0, 0));
        let s = parse(base().with(Var::Stale, b"0.001"));
        assert_eq!((s.stale_ms, s.stale_secs), (1, 1));
        let s = parse(base().with(Var::Stale, b"7"));
        assert_eq!((s.stale_ms, s.stale_secs), (7000, 7));
    }

    #[test]
    fn uris_must_be_absolute() {
        let e = err(base().with(Var::Ttl, b"redisttl"));
        assert_eq!(
            e.to_string(),
            "$cache_ttl: \"redisttl\" is not a location URI (must start with \"/\")"
        );
        let e = err(base().with(Var::Persist, b"persist"));
        assert_eq!(e.var, Var::Persist);
        assert_eq!(e.problem, Problem::NotUri { off_allowed: true });
        assert_eq!(
            err(base().with(Var::Ttl, b"/a b")).problem,
            Problem::BadByte
        );
        assert_eq!(
            err(base().with(Var::Ttl, b"/a\nb")).problem,
            Problem::BadByte
        );
        let long = [b'/'; MAX_NAME_LEN + 1];
        assert_eq!(
            err(base().with(Var::Ttl, &long)).problem,
            Problem::TooLong { max: MAX_NAME_LEN }
        );
    }

    #[test]
    fn persist_off_forms() {
        for off in [&b"off"[..], b"OFF", b"Off"] {
            assert_eq!(parse(base().with(Var::Persist, off)).persist_uri, None);
        }
        let mut vars = base();
        vars.set(Var::Persist, Some(b""));
        assert_eq!(parse(vars).persist_uri, None);
    }

    #[test]
    fn lock_zone_checked() {
        assert_eq!(
            err(base().with(Var::Lock, b"a zone")).problem,
            Problem::BadByte
        );
        assert_eq!(&*parse(base().with(Var::Lock, b"z")).lock_zone, b"z");
    }

    #[test]
    fn key_length_limit() {
        let key = vec![b'k'; MAX_KEY_LEN];
        assert_eq!(parse(base().with(Var::Key, &key)).key.len(), MAX_KEY_LEN);
        let key = vec![b'k'; MAX_KEY_LEN + 1];
        let e = err(base().with(Var::Key, &key));
        assert_eq!(e.problem, Problem::TooLong { max: MAX_KEY_LEN });
        let text = e.to_string();
        assert!(text.starts_with("$cache_key: \"kkkk"), "{text}");
        assert!(text.ends_with("...\" is longer than 4096 bytes"), "{text}");
        assert!(text.len() < 200);
        // Keys may hold any byte, spaces included.
        assert!(Settings::parse(&base().with(Var::Key, b"a b\x00c")).is_ok());
    }

    #[test]
    fn method_lists() {
        let s = parse(base().with(Var::Methods, b"get, HEAD|post  Options"));
        for m in [
            &b"GET"[..],
            b"get",
            b"HEAD",
            b"POST",
            b"OPTIONS",
            b"oPtIoNs",
        ] {
            assert!(s.allows(m), "{}", m.escape_ascii());
        }
        assert!(!s.allows(b"PUT"));
        assert!(!s.allows(b""));
        assert!(!s.allows(b"GE"));
        let names: Vec<&[u8]> = s.methods.names().collect();
        assert_eq!(names, [&b"GET"[..], b"HEAD", b"POST", b"OPTIONS"]);

        let default = parse(base()).methods.clone();
        assert_eq!(default.names().collect::<Vec<_>>(), [DEFAULT_METHODS]);
        assert!(default.allows(b"GET") && default.allows(b"get") && default.allows(b"gEt"));
        assert!(!default.allows(b"HEAD") && !default.allows(b"GETX") && !default.allows(b""));
        assert_eq!(default, Methods::parse(b"get").unwrap());
        assert_ne!(default, Methods::parse(b"GET HEAD").unwrap());
        assert!(default.allows(b"get") && !default.allows(b"HEAD"));
        assert_eq!(format!("{default:?}"), "[\"GET\"]");

        let dup = Methods::parse(b"GET get GET").unwrap();
        assert_eq!(dup.names().count(), 1);
        let custom = Methods::parse(b"PROPFIND,M-SEARCH").unwrap();
        assert!(custom.allows(b"m-search"));
    }

    #[test]
    fn bad_method_lists() {
        let e = err(base().with(Var::Methods, b"GET, P(OST"));
        assert_eq!(e.problem, Problem::BadMethod(b"P(OST".to_vec()));
        assert_eq!(
            e.to_string(),
            "$cache_methods: \"GET, P(OST\": \"P(OST\" is not an HTTP method name"
        );
        assert_eq!(
            err(base().with(Var::Methods, b" ,| ")).problem,
            Problem::BadMethodList
        );
        let many: Vec<u8> = (0..=MAX_METHODS)
            .flat_map(|i| format!("M{i} ").into_bytes())
            .collect();
        assert_eq!(
            err(base().with(Var::Methods, &many)).problem,
            Problem::BadMethodList
        );
        assert_eq!(
            Methods::parse(b"GET\x7f").unwrap_err(),
            Problem::BadMethod(b"GET\x7f".to_vec())
        );
    }

    #[test]
    fn recent_values_parse_as_before() {
        let sets = [
            base(),
            base().with(Var::Stale, b"10"),
            base().with(Var::Stale, b"20"),
            base().with(Var::Persist, b"/p"),
            base().with(Var::Expire, b"/p"),
            base().with(Var::Persist, b"/p").with(Var::Expire, b"/q"),
            base().with(Var::Persist, b"/q").with(Var::Expire, b"/p"),
            base().with(Var::Methods, b"GET HEAD"),
            base().with(Var::Lock, b"other"),
        ];
        // More sets than the memo keeps, twice over, with the key changing each time.
        for round in 0..3 {
            for (i, vars) in sets.iter().enumerate() {
                let key = format!("key {round} {i}");
                let vars = vars.with(Var::Key, key.as_bytes());
                let expected = Settings::parse_uncached(&vars);
                assert_eq!(Settings::parse(&vars), expected);
                assert_eq!(Settings::parse(&vars), expected, "again");
                assert_eq!(expected.unwrap().unwrap().key, key.as_bytes());
            }
        }
        // The key is checked on every request, memo or not.
        let long = vec![b'k'; MAX_KEY_LEN + 1];
        let e = Settings::parse(&base().with(Var::Key, &long)).unwrap_err();
        assert_eq!(e.problem, Problem::TooLong { max: MAX_KEY_LEN });
        let mut no_key = base();
        no_key.set(Var::Key, None);
        assert_eq!(
            Settings::parse(&no_key).unwrap_err().problem,
            Problem::Missing {
                while_set: Var::Lock
            }
        );
        // A value that became invalid is not answered from the memo.
        let bad = base().with(Var::Stale, b"1O");
        assert!(Settings::parse(&bad).is_err());
    }

    #[test]
    fn token_table_is_rfc9110_tchar() {
        for b in 0..=255u8 {
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(TOKEN_BYTES[usize::from(b)], tchar, "{b}");
        }
    }

    #[test]
    fn skip_fetch_must_be_header_name() {
        assert_eq!(
            &*parse(base().with(Var::SkipFetch, b"X-Refresh")).skip_fetch,
            b"X-Refresh"
        );
        for bad in [&b"X Skip"[..], b"X-Skip:", b"X\xffSkip", b"(x)"] {
            let e = err(base().with(Var::SkipFetch, bad));
            assert_eq!(e.problem, Problem::BadHeaderName);
        }
        assert_eq!(
            err(base().with(Var::SkipFetch, b"a:b")).to_string(),
            "$cache_skip_fetch: \"a:b\" is not an HTTP header name"
        );
    }

    #[test]
    fn vars_table_is_consistent() {
        for (i, var) in Var::ALL.iter().enumerate() {
            assert_eq!(var.index(), i);
            assert!(var.name().starts_with("cache_"));
        }
        assert_eq!(Var::Stale.to_string(), "$cache_stale");
        let mut vars = RawVars::new();
        vars.set(Var::Key, Some(b"k"));
        assert_eq!(vars.get(Var::Key), Some(&b"k"[..]));
        vars.set(Var::Key, Some(b""));
        assert_eq!(vars.get(Var::Key), None);
    }

    #[test]
    fn literal_checks_report_only_the_literal_variable() {
        assert!(check_literal(Var::Stale, b"100").is_ok());
        assert!(check_literal(Var::Methods, b"GET HEAD").is_ok());
        let e = check_literal(Var::Stale, b"abc").unwrap_err();
        assert_eq!(e.var, Var::Stale);
        assert!(e.to_string().contains("abc"), "{e}");
        assert_eq!(
            check_literal(Var::Ttl, b"redisttl").unwrap_err().var,
            Var::Ttl
        );
        assert_eq!(
            check_literal(Var::Methods, b"G(T").unwrap_err().var,
            Var::Methods
        );
        assert!(check_literal(Var::Persist, b"off").is_ok());
    }
}
