//! A location's settings of the stale-cache layer, their defaults and merge.

use ngx::ffi::{ngx_conf_t, ngx_http_request_t, ngx_msec_t};
use ngx::http::{HttpModuleLocationConf, Merge, MergeConfigError};

use crate::collapse::{UseStale, BACKOFF_BASE_MS, BACKOFF_CAP_MS};
use crate::nginx::conf::{inherit, merge, Marker, Unset};
use crate::settings::DEFAULT_SKIP_FETCH;
use crate::stale::sender::RefreshTarget;
use crate::stale::StaleCacheModule;

/// Settings of the stale-cache layer of a location (`stale_cache*`).
pub struct StaleCacheConf {
    /// `stale_cache on|off`.
    pub enabled: Unset<isize>,
    /// `stale_cache_memo on|off`.
    pub memo: Unset<isize>,
    /// `stale_cache_skip_header NAME`: the skip header hidden from clients' requests.
    pub skip_header: Option<Vec<u8>>,
    /// `stale_cache_refresh_address`: where refresh requests go instead of the listener the
    /// client came in on.
    pub refresh_target: Option<RefreshTarget>,
    /// `stale_cache_use_stale`: which refresh failures the error grace band answers with the
    /// stored copy (None: unset, merged to the default).
    pub use_stale: Option<UseStale>,
    /// `stale_cache_refresh_backoff BASE [CAP]` in ms (None: unset).
    pub refresh_backoff: Option<(u64, u64)>,
    /// `stale_cache_refresh_credentials on|off`: replay Cookie and Authorization.
    pub refresh_credentials: Unset<isize>,
    /// `stale_cache_refresh_limit N`: refreshes in flight per worker (read as a number by
    /// `refresh`; unset is nginx's marker, as in `Unset`).
    pub refresh_limit: usize,
    /// `stale_cache_purge`: the methods that purge the URL's entry (empty: `off`).
    pub purge_methods: Option<Vec<Vec<u8>>>,
    /// `stale_cache_hot on|off`: fresh hits may be answered from the hot zone.
    pub hot: Unset<isize>,
    /// `stale_cache_hot_max_age TIME` in ms.
    pub hot_max_age_ms: Unset<ngx_msec_t>,
    /// `stale_cache_hot_max_size SIZE`: the largest stored response kept.
    pub hot_max_size: Unset<usize>,
    /// `stale_cache_role`: this location's role for srcache (not inherited).
    pub role: crate::stale::role::Declared,
    /// `stale_cache_http on ...`: HTTP caching semantics and the mode's limits (None: off or
    /// unset; see `crate::http`).
    pub http: Option<Option<crate::http::Limits>>,
    /// `stale_cache_http ... invalidate=URI`: the location that deletes the entries an unsafe
    /// request invalidates.
    pub http_invalidate: Option<Vec<u8>>,
    /// The file and line where this location's block opened (not inherited): `nginx -t`
    /// errors about its literal `$cache_*` values cite their `set` line (`checks`).
    pub opened_at: Option<(Vec<u8>, usize)>,
    /// The literal `set $cache_* ...` values its requests run (its own, then its server's),
    /// those of its server alone, and the settings they give, worked out at merge; see
    /// `crate::preset`.
    pub literals: crate::preset::Literals,
    pub server_literals: crate::preset::Literals,
    pub preset: Option<crate::stale::preset::PresetSlots>,
}

/// A hot copy is served for at most this long after it was copied from Redis.
pub const DEFAULT_HOT_MAX_AGE_MS: u64 = 1000;
/// The largest stored response (status line, headers and body) the hot tier keeps.
pub const DEFAULT_HOT_MAX_SIZE: usize = 256 * 1024;

impl Default for StaleCacheConf {
    fn default() -> Self {
        StaleCacheConf {
            enabled: Unset::default(),
            memo: Unset::default(),
            skip_header: None,
            refresh_target: None,
            use_stale: None,
            refresh_backoff: None,
            refresh_credentials: Unset::default(),
            refresh_limit: Marker::UNSET,
            purge_methods: None,
            hot: Unset::default(),
            hot_max_age_ms: Unset::default(),
            hot_max_size: Unset::default(),
            role: Default::default(),
            http: None,
            http_invalidate: None,
            opened_at: None,
            literals: Default::default(),
            server_literals: Default::default(),
            preset: None,
        }
    }
}

/// Refreshes in flight per worker unless `stale_cache_refresh_limit` says otherwise. Each
/// costs up to four connections of the worker (to the listener, the request it becomes, the
/// backend, Redis), so 32 stay far below the usual 768-1024 `worker_connections`.
pub const DEFAULT_REFRESH_LIMIT: usize = 32;

impl StaleCacheConf {
    pub fn replays_credentials(&self) -> bool {
        self.refresh_credentials.get() == Some(1)
    }

    pub fn enabled(&self) -> bool {
        self.enabled.get() == Some(1)
    }

    pub fn memo_enabled(&self) -> bool {
        self.memo.or(1) != 0
    }

    pub fn refresh_backoff(&self) -> (u64, u64) {
        self.refresh_backoff
            .unwrap_or((BACKOFF_BASE_MS, BACKOFF_CAP_MS))
    }

    pub fn use_stale(&self) -> UseStale {
        self.use_stale.unwrap_or(UseStale::DEFAULT)
    }

    pub fn hot_enabled(&self) -> bool {
        self.hot.get() == Some(1)
    }

    pub fn hot_max_age_ms(&self) -> u64 {
        self.hot_max_age_ms.or(DEFAULT_HOT_MAX_AGE_MS as ngx_msec_t) as u64
    }

    pub fn hot_max_size(&self) -> usize {
        self.hot_max_size.or(DEFAULT_HOT_MAX_SIZE)
    }

    /// The `stale_cache_http` mode's limits, when the mode is on.
    pub fn http(&self) -> Option<&crate::http::Limits> {
        self.http.as_ref().and_then(Option::as_ref)
    }

    /// Whether the `stale_cache_http` mode is on in `r`'s location.
    pub fn http_mode_in(r: &ngx_http_request_t) -> bool {
        StaleCacheModule::location_conf(r).is_some_and(|c| c.http().is_some())
    }

    pub fn skip_header_name(&self) -> &[u8] {
        self.skip_header.as_deref().unwrap_or(DEFAULT_SKIP_FETCH)
    }
}

impl Merge for StaleCacheConf {
    fn merge(&mut self, prev: &Self) -> Result<(), MergeConfigError> {
        self.enabled.merge(prev.enabled, 0);
        self.memo.merge(prev.memo, 1);
        inherit(&mut self.skip_header, &prev.skip_header);
        inherit(&mut self.refresh_target, &prev.refresh_target);
        inherit(&mut self.refresh_backoff, &prev.refresh_backoff);
        inherit(&mut self.use_stale, &prev.use_stale);
        self.use_stale.get_or_insert(UseStale::DEFAULT);
        self.refresh_credentials.merge(prev.refresh_credentials, 0);
        merge(
            &mut self.refresh_limit,
            prev.refresh_limit,
            DEFAULT_REFRESH_LIMIT,
        );
        inherit(&mut self.purge_methods, &prev.purge_methods);
        if self.http.is_none() {
            self.http_invalidate.clone_from(&prev.http_invalidate);
        }
        inherit(&mut self.http, &prev.http);
        self.hot.merge(prev.hot, 0);
        let age = DEFAULT_HOT_MAX_AGE_MS as ngx_msec_t;
        self.hot_max_age_ms.merge(prev.hot_max_age_ms, age);
        self.hot_max_size
            .merge(prev.hot_max_size, DEFAULT_HOT_MAX_SIZE);
        Ok(())
    }
}

/// Creates a location's settings (HttpModule's default), noting where its block opens: nginx
/// calls this while parsing the `location ... {` line (also `server`, `http` and `if`).
pub unsafe extern "C" fn create_loc_conf(cf: *mut ngx_conf_t) -> *mut core::ffi::c_void {
    use ngx::http::HttpModule;
    // SAFETY: nginx passes its live configuration context.
    let conf = unsafe { <StaleCacheModule as HttpModule>::create_loc_conf(cf) };
    if conf.is_null() {
        return conf;
    }
    // SAFETY: cf is live; conf_file, when set, is the file being parsed (its name is nginx's
    // string for the whole cycle); conf was just allocated as a StaleCacheConf.
    unsafe {
        let file = (*cf).conf_file;
        if !file.is_null() && !(*file).file.name.data.is_null() {
            let name = &(*file).file.name;
            let name = core::slice::from_raw_parts(name.data, name.len).to_vec();
            (*(conf as *mut StaleCacheConf)).opened_at = Some((name, (*file).line));
        }
    }
    conf
}

// SAFETY: create_loc_conf (HttpModule's default, called above) allocates exactly this type for
// this module.
unsafe impl HttpModuleLocationConf for StaleCacheModule {
    type LocationConf = StaleCacheConf;
}
