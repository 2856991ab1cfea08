//! The role of a native Redis location for srcache, read from its commands: a location whose
//! only command is GET is a fetch location, one whose first command is SET (SETEX, PSETEX)
//! a store location. `stale_cache_role` overrides it (`crate::stale::role`).

use ngx::ffi::{ngx_conf_t, ngx_http_request_t};
use ngx::http::HttpModuleLocationConf;

use super::conf::RedisModule;
use super::conf::{RedisArg, RedisConf};
use crate::nginx::role::Role;

/// The role of the Redis location `r` is in (`None`: not a Redis location, or another
/// command).
pub fn of_request(r: &ngx_http_request_t) -> Option<Role> {
    of_conf(RedisModule::location_conf(r)?)
}

/// The role of the location being configured (`cf`'s context, e.g. while it is merged).
pub fn of_location(cf: &ngx_conf_t) -> Option<Role> {
    of_conf(RedisModule::location_conf(cf)?)
}

fn of_conf(rcf: &RedisConf) -> Option<Role> {
    let name = |command: &[RedisArg]| match command.first() {
        Some(RedisArg::Literal(name)) => Some(name.to_ascii_uppercase()),
        _ => None,
    };
    match rcf.commands.as_slice() {
        [only] if name(only).as_deref() == Some(b"GET") => Some(Role::Fetch),
        [first, ..] if matches!(name(first).as_deref(), Some(b"SET" | b"SETEX" | b"PSETEX")) => {
            Some(Role::Store)
        }
        _ => None,
    }
}
