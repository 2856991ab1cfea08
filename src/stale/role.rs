//! `stale_cache_role fetch | store | off;` and how the layer knows srcache's subrequests.
//!
//! srcache makes two subrequests the layer must recognise: its fetch (the hot tier answers or
//! fills it) and its store (a fill counts only when its store answered 2xx). They are known
//! by the location they go to:
//! - a native Redis location knows its role from its command (`crate::redis::role`): GET is
//!   the fetch, SET the store;
//! - any other location (redis2, HttpRedis, memc...) says it with `stale_cache_role`, which
//!   also overrides a native location's (`off`: none). It is not inherited.
//!
//! Legacy fallback, for configurations written before roles existed (the redis2/HttpRedis
//! drop-in changes only two lines of lua-resty-cache's configuration, and its users should
//! not lose the fill accounting by upgrading): when no location of the configuration has a
//! role at all (neither `stale_cache_role` nor a native GET/SET location), the layer keeps
//! the old recognition, said once at startup (notice): the store is the subrequest that
//! carries a body and starts after the main response's header went out, the fetch the one
//! whose arguments are the cache key, raw or escaped. As soon as one location has a role
//! (or `stale_cache_role`, even `off`), roles alone count: a location without one is
//! neither fetch nor store. (A store subrequest sent elsewhere by `error_page` is then not
//! counted: the fill ends "not stored", the safe side.)

use core::cell::Cell;
use core::ffi::{c_char, c_void};

use ngx::ffi::{ngx_command_t, ngx_conf_t, ngx_http_request_t, NGX_LOG_NOTICE, NGX_LOG_WARN};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};

use crate::nginx::bits;
use crate::nginx::role::Role;
use crate::nginx::util::{conf_args, conf_error, str_bytes, CONF_OK};
use crate::replay::contains_escaped_key;
use crate::resp::Escaped;

/// What `stale_cache_role` says in a location (the `role` field of its configuration).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Declared {
    /// Not written: a native Redis location's own role, if any.
    #[default]
    Unset,
    Role(Role),
    /// `off`: no role, whatever the location's command.
    Off,
}

/// Whether any location of the configuration has a role (the http-level `roles` field);
/// set while the locations are merged.
#[derive(Default)]
pub struct Roles {
    seen: Cell<bool>,
}

/// `stale_cache_role fetch | store | off;` (location level), stored at the command's offset.
pub unsafe extern "C" fn set_role(
    cf: *mut ngx_conf_t,
    cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes the configuration being parsed, the command, and this module's
    // location configuration, all valid during the call.
    let (cfr, cmd) = unsafe { (&*cf, &*cmd) };
    // SAFETY: the command table declares this directive with the offset of a `Declared`
    // field of the location configuration `conf` points at.
    let field = unsafe { &mut *(conf.cast::<u8>().add(cmd.offset).cast::<Declared>()) };
    if *field != Declared::Unset {
        return conf_error(cf, cmd, "is duplicate");
    }
    *field = match str_bytes(&conf_args(cfr)[1]) {
        b"fetch" => Declared::Role(Role::Fetch),
        b"store" => Declared::Role(Role::Store),
        b"off" => Declared::Off,
        _ => return conf_error(cf, cmd, "expected \"fetch\", \"store\" or \"off\""),
    };
    CONF_OK
}

/// Called as each location's configuration is merged (`cf`'s context is that location):
/// notes whether it has a role.
pub fn merged(cf: &ngx_conf_t, declared: Declared, roles: &Roles) {
    let has_role = match declared {
        Declared::Unset => crate::redis::role::of_location(cf).is_some(),
        Declared::Role(_) | Declared::Off => true,
    };
    if has_role {
        roles.seen.set(true);
    }
    let role = match declared {
        Declared::Unset => crate::redis::role::of_location(cf),
        Declared::Role(role) => Some(role),
        Declared::Off => None,
    };
    if role == Some(Role::Store) && crate::redis::role::sets_then_expires(cf) {
        let location =
            NgxHttpCoreModule::location_conf(cf).map_or(&b""[..], |c| str_bytes(&c.name));
        ngx::ngx_conf_log_error!(
            NGX_LOG_WARN,
            cf as *const ngx_conf_t as *mut ngx_conf_t,
            "stale_cache: location \"{}\" stores srcache's entries with SET and then a \
             separate EXPIRE: when Redis refuses the SET (e.g. -OOM when it is full), the \
             EXPIRE still renews the old body, which is then served as fresh again; store \
             with one command: \"stale_cache_redis_command SET key body EX ttl;\"",
            Escaped(location)
        );
    }
}

/// Postconfiguration: says once that a configuration using the layer without any role
/// gets the legacy recognition.
pub fn check(cf: *mut ngx_conf_t, in_use: bool, roles: &Roles) {
    if !in_use || roles.seen.get() {
        return;
    }
    ngx::ngx_conf_log_error!(
        NGX_LOG_NOTICE,
        cf,
        "stale_cache: no location has a role: srcache's fetch and store subrequests are \
         recognised by their arguments and timing (legacy); add \"stale_cache_role fetch;\" \
         to srcache_fetch's location and \"stale_cache_role store;\" to srcache_store's"
    );
}

/// The role of subrequest `sr` for srcache. `declared` is `stale_cache_role` of `sr`'s
/// location, `roles` the http-level record, `key` the request's cache key (for the legacy
/// recognition of the fetch).
pub fn of_subrequest(
    sr: &ngx_http_request_t,
    declared: Declared,
    roles: &Roles,
    key: Option<&[u8]>,
) -> Option<Role> {
    match declared {
        Declared::Role(role) => return Some(role),
        Declared::Off => return None,
        Declared::Unset => {}
    }
    if let Some(role) = crate::redis::role::of_request(sr) {
        return Some(role);
    }
    if roles.seen.get() {
        return None;
    }
    legacy(sr, key)
}

/// The recognition of configurations without roles (see the top of this file).
fn legacy(sr: &ngx_http_request_t, key: Option<&[u8]>) -> Option<Role> {
    // SAFETY: a live subrequest's main request is live.
    let main = unsafe { &*sr.main };
    if bits::header_sent(main) {
        // (A subrequest shares its main request's body; srcache's store, which has one,
        // starts only after the header went out, and its fetch before.)
        return (!sr.request_body.is_null()).then_some(Role::Store);
    }
    let key = key?;
    let args = str_bytes(&sr.args);
    (args == key || contains_escaped_key(args, key)).then_some(Role::Fetch)
}
