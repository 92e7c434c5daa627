//! Tracking, after keepalived's `track_interface`, `track_script` and
//! process tracking: what makes this node unfit to be master. A failure
//! puts the router in FAULT (it stops advertising and releases the floating
//! IP) or changes its priority by a script's weight.

use std::{
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkXdp, XdpAttached};
use tokio::{
    sync::{watch, Notify},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{
    config::{TrackScript, VrrpConfig},
    health::{HealthTracker, Probe},
};

/// What tracking says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Why the node must be in FAULT, if it must.
    pub fault: Option<String>,
    /// Priority after script weights.
    pub priority: u8,
}

/// How often tracked things are looked at.
const TRACK_INTERVAL: Duration = Duration::from_millis(500);
/// Longest a track script may run, whatever its `timeout` says: a script
/// that hangs must turn into a failure while it still means something.
const MAX_SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether the named service has a backend up (tracked services).
pub type ServiceState = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A track script's settings and what its own task last concluded.
struct Script {
    config: TrackScript,
    probe: Probe,
    /// Passing (after rise/fall), as last published by the script's task.
    passing: watch::Receiver<bool>,
    /// The task's side, until `run` starts it.
    publish: Option<watch::Sender<bool>>,
}

/// Aborts a task when dropped: a stopped tracking leaves no script
/// running (aborting the task kills the script's process group).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct Tracking {
    handle: rtnetlink::Handle,
    interfaces: Vec<String>,
    program_interfaces: Vec<String>,
    services: Vec<String>,
    scripts: Vec<Script>,
    base_priority: u8,
    service_state: ServiceState,
}

/// Runs one track script every `interval`, each run bounded by its
/// timeout (a timeout counts as a failure), and publishes whether it
/// passes. Tracking reads the latest value and never waits for a run.
async fn script_loop(
    config: TrackScript,
    probe: Probe,
    publish: watch::Sender<bool>,
    changed: Arc<Notify>,
) {
    // A script counts as passing until it has failed `fall` times.
    let mut tracker =
        HealthTracker::new(true, config.rise.get(), config.fall.get(), Instant::now());
    let timeout = config.timeout.min(MAX_SCRIPT_TIMEOUT);
    loop {
        let outcome = probe
            .run(
                Ipv4Addr::UNSPECIFIED,
                std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
                timeout,
            )
            .await;
        if let Some(t) = tracker.observe(outcome.ok, Instant::now()) {
            info!(script = %config.name, ok = t.up, detail = %outcome.detail, "track script changed");
            publish.send_replace(t.up);
            changed.notify_one();
        }
        tokio::time::sleep(config.interval).await;
    }
}

impl Tracking {
    pub fn new(
        config: &VrrpConfig,
        node_interfaces: &[String],
        service_state: ServiceState,
    ) -> anyhow::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        let scripts = config
            .track_script
            .iter()
            .map(|s| {
                let check = crate::config::HealthCheckConfig {
                    kind: crate::config::CheckKind::Exec,
                    command: Some(s.command.clone()),
                    timeout: s.timeout,
                    ..crate::config::HealthCheckConfig::default()
                };
                let probe = Probe::new(&check, &s.name, Ipv4Addr::UNSPECIFIED)
                    .map_err(|e| anyhow::anyhow!(e))?
                    .ok_or_else(|| anyhow::anyhow!("track script {} has no command", s.name))?;
                if s.timeout > MAX_SCRIPT_TIMEOUT {
                    warn!(script = %s.name, timeout = ?s.timeout, limit = ?MAX_SCRIPT_TIMEOUT, "track script timeout capped");
                }
                let (publish, passing) = watch::channel(true);
                Ok(Script {
                    config: s.clone(),
                    probe,
                    passing,
                    publish: Some(publish),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            handle,
            interfaces: config
                .track_interfaces
                .clone()
                .unwrap_or_else(|| node_interfaces.to_vec()),
            program_interfaces: if config.track_program {
                node_interfaces.to_vec()
            } else {
                Vec::new()
            },
            services: config.track_services.clone(),
            scripts,
            base_priority: config.priority.get(),
            service_state,
        })
    }

    /// Up and running, and whether an XDP program is attached.
    async fn link(&self, name: &str) -> Option<(bool, bool)> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        let link = links.try_next().await.ok()??;
        let flags = link.header.flags;
        let up = flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::Running);
        let xdp = link.attributes.iter().any(|a| match a {
            LinkAttribute::Xdp(nlas) => nlas.iter().any(|n| match n {
                LinkXdp::ProgId(id) | LinkXdp::SkbProgId(id) | LinkXdp::DrvProgId(id) => *id != 0,
                LinkXdp::Attached(attached) => *attached != XdpAttached::None,
                _ => false,
            }),
            _ => false,
        });
        Some((up, xdp))
    }

    /// The first tracked service with no backend up. Asked on a blocking
    /// thread: the answer waits for the agent's lock, which a read of a
    /// large flow table may hold for a while, and a runtime worker must
    /// not wait with it.
    async fn service_without_backend(&self) -> Option<String> {
        if self.services.is_empty() {
            return None;
        }
        let (services, state) = (self.services.clone(), self.service_state.clone());
        tokio::task::spawn_blocking(move || services.into_iter().find(|s| !state(s)))
            .await
            .unwrap_or_default()
    }

    async fn evaluate(&self) -> Verdict {
        let mut fault = None;
        for name in &self.interfaces {
            match self.link(name).await {
                Some((true, _)) => {}
                Some((false, _)) => fault = fault.or(Some(format!("interface {name} is down"))),
                None => fault = fault.or(Some(format!("interface {name} is missing"))),
            }
        }
        for name in &self.program_interfaces {
            if !matches!(self.link(name).await, Some((_, true))) {
                fault = fault.or(Some(format!("no XDP program attached to {name}")));
            }
        }
        if let Some(service) = self.service_without_backend().await {
            fault = fault.or(Some(format!("service {service} has no backend up")));
        }
        let mut priority = i32::from(self.base_priority);
        for script in &self.scripts {
            let passing = *script.passing.borrow();
            match script.config.weight.get() {
                0 if !passing => {
                    fault = fault.or(Some(format!("track script {} fails", script.config.name)))
                }
                w if w > 0 && passing => priority += w,
                w if w < 0 && !passing => priority += w,
                _ => {}
            }
        }
        let priority = if self.base_priority == 255 {
            255
        } else {
            priority.clamp(1, 254) as u8
        };
        Verdict { fault, priority }
    }

    /// Starts each script's task, then evaluates every 500 ms (and as
    /// soon as a script changes) and publishes changes until `stop` flips.
    pub async fn run(mut self, verdicts: watch::Sender<Verdict>, mut stop: watch::Receiver<bool>) {
        let changed = Arc::new(Notify::new());
        let _scripts: Vec<AbortOnDrop> = self
            .scripts
            .iter_mut()
            .filter_map(|script| {
                let publish = script.publish.take()?;
                Some(AbortOnDrop(tokio::spawn(script_loop(
                    script.config.clone(),
                    script.probe.clone(),
                    publish,
                    changed.clone(),
                ))))
            })
            .collect();
        let mut tick = tokio::time::interval(TRACK_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = changed.notified() => {}
                _ = tick.tick() => {}
            }
            let verdict = self.evaluate().await;
            if *verdicts.borrow() != verdict {
                if let Some(reason) = &verdict.fault {
                    warn!(reason, "tracking: this node is not fit to be master");
                }
                let _ = verdicts.send(verdict);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Tracking of one service ("www", up while `up` is) and `scripts`
    /// (TOML `[[track_script]]` tables), nothing else.
    fn tracking(scripts: &str, up: Arc<AtomicBool>) -> Tracking {
        let config: VrrpConfig = toml::from_str(&format!(
            "vrid = 1\npriority = 100\ntrack_services = [\"www\"]\ntrack_interfaces = []\ntrack_program = false\n{scripts}"
        ))
        .expect("vrrp config");
        Tracking::new(
            &config,
            &[],
            Arc::new(move |_: &str| up.load(Ordering::SeqCst)),
        )
        .expect("tracking")
    }

    /// Waits (at most `limit`) for a verdict `want` accepts.
    async fn verdict_within(
        verdicts: &mut watch::Receiver<Verdict>,
        limit: Duration,
        want: impl Fn(&Verdict) -> bool,
    ) -> Option<Duration> {
        let started = Instant::now();
        tokio::time::timeout(limit, verdicts.wait_for(|v| want(v)))
            .await
            .ok()?
            .ok()?;
        Some(started.elapsed())
    }

    #[tokio::test]
    async fn a_slow_script_does_not_hold_back_service_tracking() {
        let up = Arc::new(AtomicBool::new(true));
        let slow = "[[track_script]]\nname = \"slow\"\ncommand = \"sleep 15\"\ninterval = \"1s\"\ntimeout = \"10s\"\nweight = 5\n";
        let (tx, mut rx) = watch::channel(Verdict {
            fault: None,
            priority: 100,
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(tracking(slow, up.clone()).run(tx, stop_rx));
        // The script passes until it has failed: +5 at once, while it sleeps.
        assert!(
            verdict_within(&mut rx, Duration::from_secs(2), |v| v.priority == 105)
                .await
                .is_some(),
            "the first verdict waits for no script: {:?}",
            *rx.borrow()
        );
        up.store(false, Ordering::SeqCst);
        let took = verdict_within(&mut rx, Duration::from_secs(5), |v| {
            v.fault.as_deref() == Some("service www has no backend up")
        })
        .await;
        assert!(
            took.is_some_and(|t| t < Duration::from_secs(2)),
            "FAULT {took:?} after the service went down, although a script sleeps"
        );
        let _ = stop.send(true);
        task.await.expect("tracking stops");
    }

    #[tokio::test]
    async fn a_script_past_its_timeout_fails_and_is_killed() {
        let up = Arc::new(AtomicBool::new(true));
        let dir = std::env::temp_dir().join(format!("lb-track-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let pids = dir.join("pids");
        let hung = format!(
            "[[track_script]]\nname = \"hung\"\ncommand = \"sleep 30 & echo $! >> {}; wait\"\ninterval = \"200ms\"\ntimeout = \"300ms\"\nweight = 0\n",
            pids.display()
        );
        let (tx, mut rx) = watch::channel(Verdict {
            fault: None,
            priority: 100,
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(tracking(&hung, up).run(tx, stop_rx));
        let took = verdict_within(&mut rx, Duration::from_secs(3), |v| {
            v.fault.as_deref() == Some("track script hung fails")
        })
        .await;
        assert!(took.is_some(), "a timed-out script counts as failing");
        let _ = stop.send(true);
        task.await.expect("tracking stops");
        let started: Vec<u32> = std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!started.is_empty(), "the script ran");
        // Each run's `sleep 30` died with its process group (a zombie
        // awaiting init counts as dead).
        tokio::time::sleep(Duration::from_millis(300)).await;
        for pid in started {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let alive = state
                .rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim().is_empty() && !rest.trim().starts_with('Z'));
            assert!(!alive, "sleep {pid} of a timed-out run is still running");
        }
    }
}
