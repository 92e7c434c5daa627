//! One running VRRP instance: the runner (election, floating IP) and its
//! tracking, started together and stopped together, either for good
//! (`shutdown`: resign, release) or to be replaced by one with reloaded
//! settings (`handover`: silent, the floating IP stays, the successor
//! resumes).

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use tokio::{sync::watch, task::JoinHandle};

use super::{
    runner::{SharedStatus, Stop, VrrpRunner},
    track::{agent_services, Tracking, Verdict},
};
use crate::{agent::Agent, config::VrrpConfig};

/// What an instance needs from the node, besides its `[vrrp]` settings.
#[derive(Clone)]
pub struct VrrpContext {
    pub instance: String,
    pub private_address: Ipv4Addr,
    pub private_interface: String,
    pub public_interface: String,
    /// The node's interfaces (tracked by default).
    pub interfaces: Vec<String>,
    /// Service VIPs: the floating addresses unless `virtual_addresses`.
    pub vips: Vec<Ipv4Addr>,
    pub agent: Arc<Mutex<Agent>>,
    pub status: SharedStatus,
}

/// Built (sockets open, settings checked) but not running yet.
pub struct PreparedVrrp {
    config: VrrpConfig,
    runner: VrrpRunner,
    tracking: Tracking,
}

/// A running instance.
pub struct VrrpInstance {
    pub config: VrrpConfig,
    stop: watch::Sender<Stop>,
    tracking_stop: watch::Sender<bool>,
    runner: JoinHandle<()>,
    tracking: JoinHandle<()>,
}

impl PreparedVrrp {
    /// Opens what the instance needs; an error changes nothing.
    pub fn new(context: &VrrpContext, vrrp: &VrrpConfig) -> Result<Self> {
        let mut addresses = vrrp.virtual_addresses.clone();
        if addresses.is_empty() {
            addresses = context.vips.clone();
        }
        let runner = VrrpRunner::new(
            vrrp,
            &context.instance,
            vrrp.unicast_src.unwrap_or(context.private_address),
            vrrp.interface
                .as_deref()
                .unwrap_or(&context.private_interface),
            &context.public_interface,
            addresses,
            context.status.clone(),
        )
        .context("starting VRRP")?;
        let tracking = Tracking::new(
            vrrp,
            &context.interfaces,
            agent_services(context.agent.clone()),
        )
        .context("starting VRRP tracking")?;
        Ok(Self {
            config: vrrp.clone(),
            runner,
            tracking,
        })
    }

    pub fn start(self) -> VrrpInstance {
        let (verdict_tx, verdict_rx) = watch::channel(Verdict {
            fault: None,
            priority: self.config.priority,
        });
        let (tracking_stop, tracking_stop_rx) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(Stop::Run);
        let tracking = tokio::spawn(self.tracking.run(verdict_tx, tracking_stop_rx));
        let runner = tokio::spawn(self.runner.run(stop_rx, verdict_rx));
        VrrpInstance {
            config: self.config,
            stop,
            tracking_stop,
            runner,
            tracking,
        }
    }
}

impl VrrpInstance {
    async fn stop(self, how: Stop) {
        let _ = self.tracking_stop.send(true);
        let _ = self.stop.send(how);
        let _ = self.runner.await;
        let _ = self.tracking.await;
    }

    /// Resigns (priority 0) and releases the floating IP.
    pub async fn shutdown(self) {
        self.stop(Stop::Shutdown).await;
    }

    /// Stops silently, leaving the floating IP for the successor.
    pub async fn handover(self) {
        self.stop(Stop::Handover).await;
    }
}
