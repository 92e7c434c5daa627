//! What the VRRP thread asks of the scheduler. With adverts every 20 ms a
//! backup declares the master dead after about 70 ms of silence, so an
//! advert the master's thread sends a few tens of milliseconds late (both
//! CPUs busy with forwarding, health checks, a flow-table sweep) is a
//! spurious failover. The thread therefore runs with a real-time policy
//! (`SCHED_FIFO`, a low priority: it sleeps almost all the time and yields
//! to the kernel's own real-time threads) and the smallest timer slack.
//! Both need CAP_SYS_NICE (root, or the systemd unit's capability); without
//! it the thread runs as before and the agent says so once.
//!
//! A real-time thread still waits for a page fault: under memory reclaim
//! (the kernel paging out the agent's cold code, heavy writeback) a fault
//! on a page of the VRRP path stalled the thread past the master-down
//! interval in the lab. So the agent's pages stay resident once touched
//! (`mlockall` with `MCL_ONFAULT`: nothing is faulted in ahead, so memory
//! use does not grow); that needs `LimitMEMLOCK=infinity` (the unit sets
//! it) or CAP_IPC_LOCK.

use tracing::{info, warn};

/// `SCHED_FIFO` priority of the VRRP thread: above every normal thread,
/// below the kernel's threaded interrupts and watchdogs (50 and up).
const PRIORITY: i32 = 10;

/// Raises the calling thread (the VRRP thread) to `SCHED_FIFO` and sets its
/// timer slack to 1 ns; logs what it could not do.
pub(crate) fn raise_this_thread() {
    let param = libc::sched_param {
        sched_priority: PRIORITY,
    };
    // SAFETY: plain system calls on the calling thread with valid arguments.
    let policy =
        unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    // SAFETY: as above; PR_SET_TIMERSLACK takes the slack in ns.
    let slack = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    if policy == 0 {
        info!(priority = PRIORITY, "the VRRP thread runs SCHED_FIFO");
    } else {
        warn!(
            error = %std::io::Error::from_raw_os_error(policy),
            "the VRRP thread could not get SCHED_FIFO (needs CAP_SYS_NICE): under CPU load its adverts may come late, \
             and with short advert intervals the peer may take over spuriously"
        );
    }
    if slack != 0 {
        warn!(error = %std::io::Error::last_os_error(), "setting the VRRP thread's timer slack");
    }
    // SAFETY: a plain system call; it only changes how pages are kept.
    let locked =
        unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    if locked != 0 {
        warn!(
            error = %std::io::Error::last_os_error(),
            "could not keep the agent's memory resident (needs LimitMEMLOCK=infinity or CAP_IPC_LOCK): \
             under memory pressure a page fault may delay VRRP adverts"
        );
    }
}
