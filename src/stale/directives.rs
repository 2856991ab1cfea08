//! The directive table of `ngx_http_stale_cache_module` (the setters live in `conf`,
//! `metrics` and `purge`; bounded numbers through `crate::nginx::conf`'s setters).

use core::mem::offset_of;

use ngx::ffi::ngx_conf_set_flag_slot;
use ngx::ngx_string;

use super::conf::{
    set_hot_zone, set_local_zone, set_refresh_address, set_refresh_backoff, set_skip_header,
    set_stale_cache, set_use_stale, set_zone, StaleCacheConf, HOT_MAX_AGE, HOT_MAX_SIZE,
    REFRESH_LIMIT,
};
use super::{metrics, purge};
use crate::directive_table;
use crate::nginx::conf::{
    set_msec_bounded, set_number_bounded, set_size_bounded, Directive, ANY_LEVEL, FLAG, HTTP,
    LOCATION, NOARGS, ONE_OR_MORE, TAKE1, TAKE12, TAKE2,
};

directive_table! {
    pub static mut COMMANDS = [
        Directive::new(ngx_string!("stale_cache_zone"), HTTP | TAKE2, set_zone).main_conf(),
        Directive::new(ngx_string!("stale_cache"), ANY_LEVEL | TAKE1, set_stale_cache),
        Directive::new(
            ngx_string!("stale_cache_memo"),
            ANY_LEVEL | FLAG,
            ngx_conf_set_flag_slot,
        )
        .offset(offset_of!(StaleCacheConf, memo)),
        Directive::new(
            ngx_string!("stale_cache_skip_header"),
            ANY_LEVEL | TAKE1,
            set_skip_header,
        ),
        Directive::new(
            ngx_string!("stale_cache_refresh_address"),
            ANY_LEVEL | TAKE1,
            set_refresh_address,
        ),
        Directive::new(
            ngx_string!("stale_cache_use_stale"),
            ANY_LEVEL | ONE_OR_MORE,
            set_use_stale,
        ),
        Directive::new(
            ngx_string!("stale_cache_refresh_credentials"),
            ANY_LEVEL | FLAG,
            ngx_conf_set_flag_slot,
        )
        .offset(offset_of!(StaleCacheConf, refresh_credentials)),
        Directive::new(
            ngx_string!("stale_cache_refresh_limit"),
            ANY_LEVEL | TAKE1,
            set_number_bounded,
        )
        .offset(offset_of!(StaleCacheConf, refresh_limit))
        .bounds(&REFRESH_LIMIT),
        Directive::new(
            ngx_string!("stale_cache_refresh_backoff"),
            ANY_LEVEL | TAKE12,
            set_refresh_backoff,
        ),
        Directive::new(
            ngx_string!("stale_cache_metrics"),
            LOCATION | NOARGS,
            metrics::set_metrics,
        ),
        Directive::new(
            ngx_string!("stale_cache_purge"),
            ANY_LEVEL | ONE_OR_MORE,
            purge::set_purge,
        ),
        Directive::new(ngx_string!("stale_cache_hot_zone"), HTTP | TAKE2, set_hot_zone)
            .main_conf(),
        Directive::new(
            ngx_string!("stale_cache_local_zone"),
            HTTP | TAKE12,
            set_local_zone
        )
        .main_conf(),
        Directive::new(
            ngx_string!("stale_cache_hot"),
            ANY_LEVEL | FLAG,
            ngx_conf_set_flag_slot,
        )
        .offset(offset_of!(StaleCacheConf, hot)),
        Directive::new(
            ngx_string!("stale_cache_hot_max_age"),
            ANY_LEVEL | TAKE1,
            set_msec_bounded,
        )
        .offset(offset_of!(StaleCacheConf, hot_max_age_ms))
        .bounds(&HOT_MAX_AGE),
        Directive::new(
            ngx_string!("stale_cache_hot_max_size"),
            ANY_LEVEL | TAKE1,
            set_size_bounded,
        )
        .offset(offset_of!(StaleCacheConf, hot_max_size))
        .bounds(&HOT_MAX_SIZE),
        Directive::new(
            ngx_string!("stale_cache_role"),
            LOCATION | TAKE1,
            super::role::set_role,
        )
        .offset(offset_of!(StaleCacheConf, role)),
        Directive::new(
            ngx_string!("stale_cache_http"),
            ANY_LEVEL | ONE_OR_MORE,
            super::http_mode::set_http,
        ),
    ];
}
