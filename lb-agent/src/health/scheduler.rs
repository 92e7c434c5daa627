//! Runs one check loop per checked backend: the first check at a random
//! point of the first interval, then every interval ± jitter, at most
//! `max_concurrent` probes at once across all backends. Results go to the
//! agent over a channel; the agent owns all health state.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    sync::{mpsc, Semaphore},
    task::JoinHandle,
};
use tracing::warn;

use super::probe::{CheckOutcome, Probe};
use crate::config::HealthCheckConfig;

/// One backend to check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckTarget {
    pub service: String,
    pub addr: Ipv4Addr,
    /// The backend's service port (identifies the backend).
    pub port: u16,
    pub config: HealthCheckConfig,
}

impl CheckTarget {
    fn key(&self) -> (String, Ipv4Addr, u16) {
        (self.service.clone(), self.addr, self.port)
    }
}

/// A finished check.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub service: String,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub outcome: CheckOutcome,
    pub at: Instant,
}

pub struct HealthScheduler {
    source: Ipv4Addr,
    permits: Arc<Semaphore>,
    reports: mpsc::UnboundedSender<CheckReport>,
    running: HashMap<(String, Ipv4Addr, u16), (CheckTarget, JoinHandle<()>)>,
}

/// `interval` stretched or shrunk at random by up to `jitter` (a fraction).
pub fn jittered(interval: Duration, jitter: f64) -> Duration {
    let factor = 1.0 + jitter.clamp(0.0, 0.5) * (fastrand::f64() * 2.0 - 1.0);
    interval.mul_f64(factor)
}

impl HealthScheduler {
    pub fn new(
        source: Ipv4Addr,
        max_concurrent: usize,
        reports: mpsc::UnboundedSender<CheckReport>,
    ) -> Self {
        Self {
            source,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            reports,
            running: HashMap::new(),
        }
    }

    /// Makes the running loops match `targets`: starts new ones, stops
    /// those no longer wanted, restarts those whose check changed.
    pub fn sync(&mut self, targets: &[CheckTarget]) {
        let wanted: HashMap<_, _> = targets.iter().map(|t| (t.key(), t)).collect();
        self.running.retain(|key, (running, handle)| {
            let keep = wanted.get(key).is_some_and(|t| *t == running);
            if !keep {
                handle.abort();
            }
            keep
        });
        for (key, target) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let probe = match Probe::new(&target.config, &target.service, self.source) {
                Ok(Some(probe)) => probe,
                Ok(None) => continue,
                Err(error) => {
                    warn!(service = %target.service, addr = %target.addr, %error, "cannot build the health check");
                    continue;
                }
            };
            let handle = tokio::spawn(check_loop(
                target.clone(),
                probe,
                self.source,
                self.permits.clone(),
                self.reports.clone(),
            ));
            self.running.insert(key, (target.clone(), handle));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.running.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

impl Drop for HealthScheduler {
    fn drop(&mut self) {
        for (_, handle) in self.running.values() {
            handle.abort();
        }
    }
}

async fn check_loop(
    target: CheckTarget,
    probe: Probe,
    source: Ipv4Addr,
    permits: Arc<Semaphore>,
    reports: mpsc::UnboundedSender<CheckReport>,
) {
    let config = &target.config;
    let check_at = SocketAddrV4::new(target.addr, config.port.unwrap_or(target.port));
    tokio::time::sleep(config.interval.mul_f64(fastrand::f64())).await;
    loop {
        let outcome = {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            probe.run(source, check_at, config.timeout).await
        };
        let report = CheckReport {
            service: target.service.clone(),
            addr: target.addr,
            port: target.port,
            outcome,
            at: Instant::now(),
        };
        if reports.send(report).is_err() {
            return;
        }
        tokio::time::sleep(jittered(config.interval, config.jitter.get())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_bounds() {
        let interval = Duration::from_secs(2);
        for _ in 0..1000 {
            let d = jittered(interval, 0.1);
            assert!(
                d >= Duration::from_millis(1800) && d <= Duration::from_millis(2200),
                "{d:?}"
            );
        }
        assert_eq!(jittered(interval, 0.0), interval);
    }

    #[tokio::test]
    async fn loops_report_and_follow_sync() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut scheduler = HealthScheduler::new(Ipv4Addr::LOCALHOST, 4, tx);
        let config: HealthCheckConfig =
            toml::from_str("type = \"tcp\"\ninterval = \"50ms\"\ntimeout = \"50ms\"")
                .expect("config");
        let target = CheckTarget {
            service: "www".into(),
            addr: Ipv4Addr::LOCALHOST,
            port,
            config,
        };
        scheduler.sync(std::slice::from_ref(&target));
        assert_eq!(scheduler.len(), 1);
        for _ in 0..3 {
            let report = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("a report within 5 s")
                .expect("channel open");
            assert!(report.outcome.ok, "{report:?}");
            assert_eq!((report.service.as_str(), report.port), ("www", port));
        }
        scheduler.sync(&[]);
        assert!(scheduler.is_empty());
    }
}
