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

/// A command's name, upper case, when it is literal.
fn name(command: &[RedisArg]) -> Option<Vec<u8>> {
    match command.first() {
        Some(RedisArg::Literal(name)) => Some(name.to_ascii_uppercase()),
        _ => None,
    }
}

/// Whether the location being configured stores with a SET and sets the expiry with a later,
/// separate command (EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT): Redis runs each on its own, so
/// when it refuses the SET (`-OOM` when full) the EXPIRE still renews the old body's life.
pub fn sets_then_expires(cf: &ngx_conf_t) -> bool {
    let Some(rcf) = RedisModule::location_conf(cf) else {
        return false;
    };
    let mut set = false;
    for command in &rcf.commands {
        match name(command).as_deref() {
            Some(b"SET") => set = true,
            Some(b"EXPIRE" | b"PEXPIRE" | b"EXPIREAT" | b"PEXPIREAT") if set => return true,
            _ => {}
        }
    }
    false
}

fn of_conf(rcf: &RedisConf) -> Option<Role> {
    match rcf.commands.as_slice() {
        [only] if name(only).as_deref() == Some(b"GET") => Some(Role::Fetch),
        [first, ..] if matches!(name(first).as_deref(), Some(b"SET" | b"SETEX" | b"PSETEX")) => {
            Some(Role::Store)
        }
        _ => None,
    }
}
