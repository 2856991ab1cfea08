//! Redis Cluster state, a leaf of the folder: a request's part (`ClusterReq`: its slot,
//! where its next try goes, the replies its own commands are preceded by) and each worker's
//! slot map per cluster, refreshed by one request at a time (see `redis::cluster`).

use std::cell::RefCell;
use std::collections::HashMap;

use ngx::ffi::ngx_chain_t;

use super::pause::Pause;
pub use crate::cluster::Cluster;
use crate::cluster::NodeAddr;

/// Redirections one request follows before it fails open like any Redis error.
pub const REDIRECT_LIMIT: u8 = 5;
/// Tries again after `-TRYAGAIN` or `-CLUSTERDOWN`, waiting 10, 20, then 40 ms before each
/// (a timer on the request: `pause`).
pub const RETRY_LIMIT: u8 = 3;
pub const RETRY_FIRST_DELAY_MS: u32 = 10;

/// A request's part of cluster mode (all off for a plain upstream).
pub struct ClusterReq {
    /// The location's upstream is a cluster (set when its balancer starts the request).
    pub on: bool,
    /// The cluster's server group: the key of the worker's map.
    pub group: usize,
    /// The slot of the request's first key (`None`: no key).
    pub slot: Option<u16>,
    /// The request's own commands, which the prefix (ASKING, CLUSTER SLOTS) goes before.
    pub commands: *mut ngx_chain_t,
    /// Where the next try goes (from a `-MOVED` or `-ASK`).
    pub next: Option<NodeAddr>,
    /// The next try starts with ASKING (after `-ASK`).
    pub asking: bool,
    /// The current try's prefix: replies before the map (READONLY's) and after it (ASKING's).
    pub skip_before: u8,
    pub skip_after: u8,
    /// The pause before a try (after `-TRYAGAIN`/`-CLUSTERDOWN`).
    pub pause: Pause,
    /// `-TRYAGAIN`/`-CLUSTERDOWN` retries so far.
    pub retries: u8,
    /// This request holds the worker's refresh of the map.
    pub refresh: bool,
    /// The current try's first reply is CLUSTER SLOTS's.
    pub expect_slots: bool,
    /// CLUSTER SLOTS's reply, gathered across reads.
    pub slots_buf: Vec<u8>,
    /// The first reply of the request's own commands was looked at for a redirection.
    pub peeked: bool,
    pub redirects: u8,
    /// The current try ended in a redirection: not a failure of the server.
    pub redirected: bool,
    /// The current try's peer came from the round robin over the seed nodes.
    pub used_rr: bool,
    /// `replica_reads` and a location that only reads: the first try may go to a replica.
    pub replica_ok: bool,
}

impl Default for ClusterReq {
    fn default() -> Self {
        ClusterReq {
            on: false,
            group: 0,
            slot: None,
            commands: core::ptr::null_mut(),
            next: None,
            asking: false,
            skip_before: 0,
            skip_after: 0,
            pause: Pause::default(),
            retries: 0,
            refresh: false,
            expect_slots: false,
            slots_buf: Vec::new(),
            peeked: false,
            redirects: 0,
            redirected: false,
            used_rr: false,
            replica_ok: false,
        }
    }
}

thread_local! {
    /// Per worker, per cluster (its server group's address): the slot map. Per worker, not
    /// in shared memory: a map is small (16384 slots), a refresh costs one CLUSTER SLOTS per
    /// worker per topology change, and nothing needs locking.
    static CLUSTERS: RefCell<HashMap<usize, Cluster>> = RefCell::new(HashMap::new());
}

/// Runs `f` on the worker's state of cluster `group`.
pub fn with<R>(group: usize, f: impl FnOnce(&mut Cluster) -> R) -> R {
    CLUSTERS.with(|c| f(c.borrow_mut().entry(group).or_default()))
}
