//! One running VRRP instance: the runner (election, floating IP) and its
//! tracking, started together and stopped together, either for good
//! (`shutdown`: resign, release) or to be replaced by one with reloaded
//! settings (`handover`: silent, the floating IP stays, the successor
//! resumes).
//!
//! The runner has an OS thread and a single-threaded runtime of its own:
//! whatever keeps the agent's main runtime busy (flow-table sweeps of a
//! million entries, health checks, control requests, metrics scrapes)
//! cannot delay an advert or the master-down timer. It talks to the rest
//! of the agent only through channels (stop, tracking verdicts, provider
//! wishes) and published snapshots (its status, the provider's), none of
//! which makes it wait. Tracking reads the agent's state under its lock, so
//! it stays on the main runtime and only sends verdicts.

use std::net::Ipv4Addr;

use anyhow::{anyhow, Context as _, Result};
use tokio::{
    runtime::Handle,
    sync::{oneshot, watch},
    task::JoinHandle,
};
use tracing::{error, warn};

use super::{
    runner::{PreparedRunner, RunnerInputs, SharedStatus, Stop},
    track::{ServiceState, Tracking, Verdict},
};
use crate::{config::VrrpConfig, dataplane::liveness::Heartbeat, floating_ip::Holder};

/// The name of the runner's thread (`top -H`, `perf`).
pub const THREAD_NAME: &str = "lb-vrrp";

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
    /// Whether a tracked service has a backend up.
    pub services: ServiceState,
    pub status: SharedStatus,
    /// False while flow sync waits for the peer's table: preemption waits
    /// with it. Always true without flow sync.
    pub may_lead: watch::Receiver<bool>,
    /// Where the program's maps are pinned: the VRRP thread writes the
    /// agent's heartbeat there (`dataplane::liveness`).
    pub pin_dir: std::path::PathBuf,
}

/// Built (socket open, settings checked) but not running yet.
pub struct PreparedVrrp {
    config: VrrpConfig,
    runner: PreparedRunner,
    tracking: Tracking,
    status: SharedStatus,
    may_lead: watch::Receiver<bool>,
}

/// A running instance.
pub struct VrrpInstance {
    pub config: VrrpConfig,
    stop: watch::Sender<Stop>,
    tracking_stop: watch::Sender<bool>,
    /// Resolves when the runner's thread has finished (its runtime and
    /// socket are gone by then).
    runner_done: oneshot::Receiver<()>,
    tracking: JoinHandle<()>,
}

impl PreparedVrrp {
    /// Opens what the instance needs; an error changes nothing.
    pub fn new(context: &VrrpContext, vrrp: &VrrpConfig) -> Result<Self> {
        let mut addresses = vrrp.virtual_addresses.clone();
        if addresses.is_empty() {
            addresses = context.vips.clone();
        }
        let holder = Holder::from_config(
            vrrp,
            &context.public_interface,
            &context.private_interface,
            addresses.clone(),
            &context.instance,
        )
        .context("starting VRRP's floating IP provider")?;
        let runner = PreparedRunner::new(
            vrrp,
            &context.instance,
            vrrp.unicast_src.unwrap_or(context.private_address),
            vrrp.interface
                .as_deref()
                .unwrap_or(&context.private_interface),
            holder,
            addresses,
            heartbeat(&context.pin_dir),
        )
        .context("starting VRRP")?;
        let tracking = Tracking::new(vrrp, &context.interfaces, context.services.clone())
            .context("starting VRRP tracking")?;
        Ok(Self {
            config: vrrp.clone(),
            runner,
            tracking,
            status: context.status.clone(),
            may_lead: context.may_lead.clone(),
        })
    }

    /// Starts the runner on its thread, then tracking on the main runtime
    /// (the caller's).
    pub async fn start(self) -> Result<VrrpInstance> {
        let (verdict_tx, verdict_rx) = watch::channel(Verdict {
            fault: None,
            priority: self.config.priority.get(),
        });
        let (stop, stop_rx) = watch::channel(Stop::Run);
        let inputs = RunnerInputs {
            stop: stop_rx,
            verdicts: verdict_rx,
            may_lead: self.may_lead,
        };
        let runner_done = spawn_runner(self.runner, self.status, inputs).await?;
        let (tracking_stop, tracking_stop_rx) = watch::channel(false);
        let tracking = tokio::spawn(self.tracking.run(verdict_tx, tracking_stop_rx));
        Ok(VrrpInstance {
            config: self.config,
            stop,
            tracking_stop,
            runner_done,
            tracking,
        })
    }
}

/// The agent's heartbeat for the program, if its map can be opened (an
/// older program has none: its node then keeps the addresses as before).
fn heartbeat(pin_dir: &std::path::Path) -> Option<Heartbeat> {
    Heartbeat::open(pin_dir)
        .map_err(|error| warn!(%error, "no heartbeat for the XDP program: a node whose agent dies will keep answering ARP for the floating addresses"))
        .ok()
}

/// Starts `runner` on a thread of its own with a current-thread runtime,
/// registers its socket there, and returns once it runs (or why it could
/// not); the receiver resolves when the thread is done.
async fn spawn_runner(
    runner: PreparedRunner,
    status: SharedStatus,
    inputs: RunnerInputs,
) -> Result<oneshot::Receiver<()>> {
    let main = Handle::current();
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || {
            super::realtime::raise_this_thread();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready_tx.send(Err(format!("building its runtime: {error}")));
                    return;
                }
            };
            let registered = {
                let _inside = runtime.enter();
                runner.register(main, status)
            };
            match registered {
                Ok(runner) => {
                    let _ = ready_tx.send(Ok(()));
                    runtime.block_on(runner.run(inputs));
                }
                Err(error) => {
                    let _ = ready_tx.send(Err(format!("registering its socket: {error}")));
                }
            }
            // The socket goes with the runtime, before the successor of a
            // reload is told it may start.
            drop(runtime);
            let _ = done_tx.send(());
        })
        .context("starting the VRRP thread")?;
    match ready_rx.await {
        Ok(Ok(())) => Ok(done_rx),
        Ok(Err(why)) => Err(anyhow!("starting the VRRP thread: {why}")),
        Err(_) => Err(anyhow!("the VRRP thread ended while starting")),
    }
}

impl VrrpInstance {
    async fn stop(self, how: Stop) {
        let _ = self.tracking_stop.send(true);
        let _ = self.stop.send(how);
        if self.runner_done.await.is_err() {
            error!("the VRRP thread ended abnormally (a panic; see above)");
        }
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
