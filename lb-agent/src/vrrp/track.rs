//! Tracking, after keepalived's `track_interface`, `track_script` and
//! process tracking: what makes this node unfit to be master. A failure
//! puts the router in FAULT (it stops advertising and releases the floating
//! IP) or changes its priority by a script's weight.

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkXdp, XdpAttached};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    agent::Agent,
    config::{TrackScript, VrrpConfig},
    health::{CheckOutcome, HealthTracker, Probe},
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

struct Script {
    config: TrackScript,
    probe: Probe,
    tracker: HealthTracker,
    next_run: Instant,
    last: Option<CheckOutcome>,
}

pub struct Tracking {
    handle: rtnetlink::Handle,
    interfaces: Vec<String>,
    program_interfaces: Vec<String>,
    services: Vec<String>,
    scripts: Vec<Script>,
    base_priority: u8,
    agent: Arc<Mutex<Agent>>,
}

impl Tracking {
    pub fn new(
        config: &VrrpConfig,
        node_interfaces: &[String],
        agent: Arc<Mutex<Agent>>,
    ) -> anyhow::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        let now = Instant::now();
        let scripts = config
            .track_script
            .iter()
            .map(|s| {
                let check = crate::config::HealthCheckConfig {
                    kind: crate::config::CheckKind::Exec,
                    command: Some(s.command.clone()),
                    timeout: s.timeout,
                    ..toml::from_str("").map_err(|e| anyhow::anyhow!("check defaults: {e}"))?
                };
                let probe = Probe::new(&check, &s.name, Ipv4Addr::UNSPECIFIED)
                    .map_err(|e| anyhow::anyhow!(e))?
                    .ok_or_else(|| anyhow::anyhow!("track script {} has no command", s.name))?;
                Ok(Script {
                    config: s.clone(),
                    probe,
                    // A script counts as passing until it has failed `fall` times.
                    tracker: HealthTracker::new(true, s.rise, s.fall, now),
                    next_run: now,
                    last: None,
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
            base_priority: config.priority,
            agent,
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

    async fn evaluate(&mut self) -> Verdict {
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
        if let Ok(agent) = self.agent.lock() {
            for service in &self.services {
                if !agent.service_has_backend_up(service) {
                    fault = fault.or(Some(format!("service {service} has no backend up")));
                }
            }
        }
        let now = Instant::now();
        let mut priority = i32::from(self.base_priority);
        for script in &mut self.scripts {
            if now >= script.next_run {
                let outcome = script
                    .probe
                    .run(
                        Ipv4Addr::UNSPECIFIED,
                        std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
                        script.config.timeout,
                    )
                    .await;
                if let Some(t) = script.tracker.observe(outcome.ok, now) {
                    info!(script = %script.config.name, ok = t.up, detail = %outcome.detail, "track script changed");
                }
                script.last = Some(outcome);
                script.next_run = now + script.config.interval;
            }
            let passing = script.tracker.is_up();
            match script.config.weight {
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

    /// Evaluates every 500 ms and publishes changes until `stop` flips.
    pub async fn run(mut self, verdicts: watch::Sender<Verdict>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TRACK_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => {
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
    }
}
