//! Configuration of the stale-cache layer: the http-level zones and secret (`main`), the
//! per-location switches (`location`), the directives that set them (`directives`, with the
//! zone directives in `main`) and the checks of a merged location (`checks`). Bad literal
//! `$cache_*` values fail `nginx -t` in `checks`.

mod checks;
mod directives;
mod location;
mod main;

pub use checks::merge_loc_conf;
pub use directives::{
    set_refresh_address, set_refresh_backoff, set_skip_header, set_stale_cache, set_use_stale,
    HOT_MAX_AGE, HOT_MAX_SIZE, REFRESH_LIMIT,
};
pub use location::{create_loc_conf, StaleCacheConf};
pub use main::{
    add_default_local_zone, check_refresh_addresses, set_hot_zone, set_local_zone, set_zone,
    MainConf,
};
