//! The role a location plays for srcache: where its fetch and store subrequests go. The
//! stale layer knows srcache's subrequests by it (never by their arguments or timing); a
//! location gets it from `stale_cache_role` (`crate::stale::role`) or, for a native Redis
//! location, from its command (`crate::redis::role`).

/// What srcache's subrequest to a location does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `srcache_fetch`'s location: answers the stored response (HttpRedis's GET).
    Fetch,
    /// `srcache_store`'s location: stores the response it is sent (redis2's SET).
    Store,
}
