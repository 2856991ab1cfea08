//! ngx_http_stale_cache_module: request collapsing and stale-while-revalidate in front of
//! srcache + Redis, plus native Redis locations for stock distro nginx.
//!
//! The pure parts (RESP codec, settings parsing, policy, lock table) have no nginx symbols so
//! `cargo test` links and runs them without nginx; everything that touches nginx lives under
//! `nginx` (shared plumbing), `stale` (the stale/collapse layer) and `redis` (the Redis
//! locations), left out of test builds.

pub mod cache_key;
pub mod cache_status;
pub mod cluster;
pub mod collapse;
pub mod confscan;
pub mod flow;
pub mod hotcache;
pub mod http;
pub mod keyderive;
pub mod lease;
pub mod locktable;
pub mod memocache;
pub mod metrics;
pub mod phase;
pub mod policy;
pub mod preset;
pub mod purge_script;
pub mod replay;
pub mod resp;
pub mod settings;

#[cfg(not(test))]
mod nginx;
#[cfg(not(test))]
mod redis;
#[cfg(not(test))]
mod stale;
