//! Keeping the agent standing when something hogs its resources: the open
//! file limit, caps on the connections its servers take (so idle clients
//! cannot use up the descriptors health probes need), backoff when
//! accepting fails, and log lines that repeat at most once an interval.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

/// How often a repeated warning (accept errors, refused connections,
/// unreachable next hops) is logged at most.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft
/// limit in force afterwards. systemd starts services with a soft limit of
/// 1,024 whatever `LimitNOFILE` allows; descriptors are what idle clients
/// and health probes compete for. A failure keeps the old limit.
pub fn raise_nofile_limit() -> u64 {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(error) => {
            warn!(%error, "cannot read the open file limit; assuming 1024");
            return 1024;
        }
    };
    if soft >= hard {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => hard,
        Err(error) => {
            warn!(%error, soft, hard, "cannot raise the open file limit");
            soft
        }
    }
}

/// How many connections the control socket and the metrics port serve at
/// once. Sized from the open file limit so that both together take at most
/// 3/16 of it: the rest stays for the maps, netlink and VRRP sockets, and
/// up to 64 health probes in flight (an exec probe holds three
/// descriptors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    pub control: usize,
    pub metrics: usize,
}

impl ConnectionCaps {
    pub fn for_limit(nofile: u64) -> Self {
        let share = |divisor: u64, max: u64| (nofile / divisor).clamp(4, max) as usize;
        Self {
            control: share(8, 128),
            metrics: share(16, 64),
        }
    }
}

/// Allows one line per `interval` and counts what it held back, so a
/// condition that repeats thousands of times a second costs one line.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)`: log now, mentioning the `n` lines held back since the
    /// last one. `None`: stay quiet (counted).
    pub fn ready(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Growing, bounded pauses after consecutive failures.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// The pause after one more failure: doubles up to `max`.
    pub fn failed(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn succeeded(&mut self) {
        self.next = self.min;
    }
}

/// What an accept loop needs to survive pressure: a cap on connections
/// served at once, a backoff when accepting fails (EMFILE would otherwise
/// make it spin) and throttled warnings for both.
pub struct AcceptGate {
    what: &'static str,
    permits: Arc<Semaphore>,
    cap: usize,
    backoff: Backoff,
    errors: Throttle,
    refusals: Throttle,
}

impl AcceptGate {
    /// `what` names the server in logs ("control", "metrics").
    pub fn new(what: &'static str, cap: usize) -> Self {
        let cap = cap.max(1);
        Self {
            what,
            permits: Arc::new(Semaphore::new(cap)),
            cap,
            backoff: Backoff::new(Duration::from_millis(10), Duration::from_secs(1)),
            errors: Throttle::new(LOG_INTERVAL),
            refusals: Throttle::new(LOG_INTERVAL),
        }
    }

    /// A connection was accepted: its permit, or `None` when `cap` are
    /// served already (the caller closes it at once).
    pub fn admit(&mut self) -> Option<OwnedSemaphorePermit> {
        self.backoff.succeeded();
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                if let Some(suppressed) = self.refusals.ready(Instant::now()) {
                    warn!(
                        server = self.what,
                        cap = self.cap,
                        suppressed,
                        "too many connections: refusing new ones until some close"
                    );
                }
                None
            }
        }
    }

    /// Accepting failed: how long to pause before trying again.
    pub fn failed(&mut self, error: &std::io::Error) -> Duration {
        let delay = self.backoff.failed();
        if let Some(suppressed) = self.errors.ready(Instant::now()) {
            warn!(server = self.what, %error, ?delay, suppressed, "accepting a connection failed; backing off");
        }
        delay
    }

    /// Accepting failed: pauses before the next try (EMFILE and friends
    /// fail again at once, so a loop would spin). False when `stop`
    /// completed during the pause: the server is to stop.
    pub async fn back_off<F>(&mut self, error: &std::io::Error, stop: &mut F) -> bool
    where
        F: std::future::Future + Unpin,
    {
        let delay = self.failed(error);
        tokio::select! {
            _ = stop => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Connections being served now.
    #[cfg(test)]
    fn in_use(&self) -> usize {
        self.cap - self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_leave_most_descriptors_to_the_rest() {
        let systemd_default = ConnectionCaps::for_limit(1024);
        assert_eq!(
            systemd_default,
            ConnectionCaps {
                control: 128,
                metrics: 64
            }
        );
        for limit in [16, 64, 256, 1024, 4096, 65536, 1 << 20] {
            let caps = ConnectionCaps::for_limit(limit);
            assert!(caps.control >= 4 && caps.metrics >= 4, "{limit}: {caps:?}");
            if limit >= 256 {
                let taken = (caps.control + caps.metrics) as u64;
                assert!(taken * 16 <= limit * 3, "{limit}: {caps:?}");
            }
        }
        assert_eq!(ConnectionCaps::for_limit(1 << 20).control, 128);
    }

    #[test]
    fn throttle_allows_one_line_per_interval_and_counts_the_rest() {
        let start = Instant::now();
        let mut throttle = Throttle::new(Duration::from_secs(10));
        assert_eq!(throttle.ready(start), Some(0));
        for ms in 1..=1000 {
            assert_eq!(throttle.ready(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(throttle.ready(start + Duration::from_secs(10)), Some(1000));
        assert_eq!(throttle.ready(start + Duration::from_secs(11)), None);
    }

    #[test]
    fn backoff_grows_to_its_bound_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        let delays: Vec<u64> = (0..10)
            .map(|_| backoff.failed().as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000],
            "{delays:?}"
        );
        backoff.succeeded();
        assert_eq!(backoff.failed(), Duration::from_millis(10));
    }

    #[test]
    fn the_gate_refuses_beyond_its_cap_and_frees_on_close() {
        let mut gate = AcceptGate::new("test", 2);
        let first = gate.admit().expect("first");
        let _second = gate.admit().expect("second");
        assert!(gate.admit().is_none(), "a third is refused");
        assert_eq!(gate.in_use(), 2);
        drop(first);
        assert!(gate.admit().is_some(), "room again once one closed");
    }
}
