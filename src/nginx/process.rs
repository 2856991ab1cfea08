//! Other nginx processes, as lock and pin owners see them.

use crate::nginx::util::worker_pid;

/// Whether the process `pid` (a worker that holds a lock or a pin) still runs. Asked with a
/// zone's mutex held, so it is one `kill(pid, 0)`; in doubt (a pid of another user: EPERM)
/// it is alive.
pub fn owner_alive(pid: u32) -> bool {
    if u64::from(pid) == worker_pid() {
        return true;
    }
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}
